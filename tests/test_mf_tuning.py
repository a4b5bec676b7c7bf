"""The matrix-factorization chapter's searches (recsys_ref.mf_tuning): the spaces, and the
setting read from a search table."""

import pandas as pd
import pytest

from recsys_ref.mf_tuning import IMPLICIT_MODELS, chosen, explicit_space, implicit_space


def table_of(configs, values, epochs=None, higher_is_better=True):
    frame = pd.DataFrame([c | {"NDCG@10": v} for c, v in zip(configs, values, strict=True)])
    if epochs is not None:
        frame["best_epoch_"] = epochs
    frame.attrs.update(configs=configs, metric="NDCG@10", higher_is_better=higher_is_better)
    return frame


def test_chosen_reads_the_best_row_and_its_epoch():
    configs = [{"lr": 0.1, "reg": 0.0}, {"lr": 0.2, "reg": 0.0}, {"lr": 0.3, "reg": 0.0}]
    fixed = {"n_factors": 8, "n_epochs": 60, "patience": 5, "eval_every": 1}
    got = chosen(table_of(configs, [0.1, 0.3, 0.2], epochs=[4, 7, 9]), fixed)
    assert got == {"n_factors": 8, "n_epochs": 7, "lr": 0.2, "reg": 0.0}
    # lower is better (RMSE): the first row
    got = chosen(table_of(configs, [0.1, 0.3, 0.2], epochs=[4, 7, 9],
                          higher_is_better=False), fixed)
    assert got["lr"] == 0.1 and got["n_epochs"] == 4
    # no early stopping: no epoch count, the shared settings kept
    assert chosen(table_of(configs[:1], [0.5]), {"k": 3}) == {"k": 3, "lr": 0.1, "reg": 0.0}


def test_chosen_needs_the_search_table():
    with pytest.raises(ValueError, match="unfiltered"):
        chosen(pd.DataFrame({"NDCG@10": [0.1]}), {})


@pytest.mark.parametrize("smoke", [True, False])
def test_spaces(smoke):
    configs, fixed = explicit_space(smoke)
    assert {c["nu"] for c in configs} == {0.0, 0.5, 1.0}  # the chapter quotes each exponent
    assert fixed["solver"] == "als" and fixed["patience"] >= 1
    for name in IMPLICIT_MODELS:
        configs, fixed = implicit_space(name, smoke, seed=0)
        assert configs and len({tuple(sorted(c.items())) for c in configs}) == len(configs)
        assert configs == implicit_space(name, smoke, seed=0)[0]  # seeded
    bpr = implicit_space("BPR", smoke)[0]
    assert {c["optimizer"] for c in bpr} == {"adam", "adagrad", "sgd"}


def test_unknown_model():
    with pytest.raises(ValueError, match="name must be one of"):
        implicit_space("SVD++")
