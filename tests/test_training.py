"""The shared training loop: seeding, minibatches, early stopping with best-state restore."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_ref.evaluation import evaluate_ranking, evaluate_ratings
from recsys_ref.models.baselines import BiasBaseline, Popularity
from recsys_ref.training import (
    fit_epochs,
    gather_rows,
    minibatches,
    minus_inf_mask,
    ranking_eval_fn,
    rmse_eval_fn,
    seed_everything,
)


def test_seed_everything_seeds_generator_and_globals():
    g1 = seed_everything(3)
    a, ga = torch.rand(4), torch.rand(4, generator=g1)
    g2 = seed_everything(3)
    assert torch.equal(a, torch.rand(4)) and torch.equal(ga, torch.rand(4, generator=g2))
    with pytest.raises(ValueError, match="seed"):
        seed_everything(-1)


def test_gather_rows_equals_the_embedding_lookup_in_values_and_gradients():
    """Bit for bit, with repeated indices (their gradients add up in the same order)."""
    g = torch.Generator().manual_seed(0)
    for shape in ((500, 16), (500,)):
        table = torch.randn(*shape, generator=g, requires_grad=True)
        index = torch.randint(500, (300, 4), generator=g)  # repeats: 1,200 draws of 500
        upstream = torch.randn(300, 4, *shape[1:], generator=g)
        ours = gather_rows(table, index)
        (g_ours,) = torch.autograd.grad(ours, table, upstream)
        ref = torch.nn.functional.embedding(index, table[:, None] if len(shape) == 1 else table)
        ref = ref[..., 0] if len(shape) == 1 else ref
        (g_ref,) = torch.autograd.grad(ref, table, upstream)
        assert ours.shape == (300, 4, *shape[1:])
        assert torch.equal(ours, ref) and torch.equal(g_ours, g_ref)
        (g_index,) = torch.autograd.grad(table[index], table, upstream)
        assert torch.equal(g_ours, g_index)


def test_minibatches_cover_every_row_once_aligned_and_seeded():
    x, y = torch.arange(10), torch.arange(10) * 10
    batches = list(minibatches(x, y, batch_size=4, generator=torch.Generator().manual_seed(0)))
    assert [len(b[0]) for b in batches] == [4, 4, 2]
    xs, ys = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    assert torch.equal(xs.sort().values, x) and torch.equal(ys, xs * 10)  # aligned
    again = list(minibatches(x, y, batch_size=4, generator=torch.Generator().manual_seed(0)))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))
    ordered = torch.cat([b[0] for b in minibatches(x, batch_size=3, shuffle=False)])
    assert torch.equal(ordered, x)


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": 2, "extra": torch.arange(3)}, "same length"),
])
def test_minibatches_bad_input(kwargs, match):
    extra = kwargs.pop("extra", None)
    tensors = (torch.arange(4),) + (() if extra is None else (extra,))
    with pytest.raises(ValueError, match=match):
        next(minibatches(*tensors, **kwargs))


class Fake(torch.nn.Module):
    """A 'model' whose parameter records the epoch that last trained it."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2))


def run_fake(curve, **kwargs):
    model = Fake()

    def epoch(e):
        with torch.no_grad():
            model.w.fill_(e)
        return 1.0 / e

    result = fit_epochs(epoch, len(curve), eval_fn=lambda: curve[int(model.w[0]) - 1],
                        module=model, **kwargs)
    return model, result


def test_early_stopping_restores_the_best_epoch():
    curve = [0.1, 0.5, 0.3, 0.2, 0.9, 1.0]
    model, result = run_fake(curve, patience=2)
    assert result.best_epoch == 2 and result.best_valid == 0.5 and result.stopped_early
    assert len(result.history) == 4  # epochs 3 and 4 did not improve: stop after epoch 4
    assert torch.equal(model.w, torch.full((2,), 2.0))  # the best epoch's parameters are back
    h = result.history[0]
    assert set(h) == {"epoch", "loss", "valid", "seconds", "elapsed"}
    assert h["epoch"] == 1 and h["loss"] == 1.0 and h["valid"] == 0.1


def test_lower_is_better_and_eval_every():
    curve = [0.9, 0.8, 0.7, 0.75, 0.6, 0.65, 0.7]
    model, result = run_fake(curve, higher_is_better=False, eval_every=2)
    evaluated = [h["epoch"] for h in result.history if not math.isnan(h["valid"])]
    assert evaluated == [2, 4, 6, 7]  # every second epoch, and the last one
    assert result.best_epoch == 6 and not result.stopped_early
    assert torch.equal(model.w, torch.full((2,), 6.0))


def test_without_validation_all_epochs_run_and_nothing_is_restored():
    model, calls = Fake(), []
    result = fit_epochs(lambda e: calls.append(e), 3, module=model)
    assert calls == [1, 2, 3] and result.best_epoch is None
    assert all(math.isnan(h["loss"]) and math.isnan(h["valid"]) for h in result.history)


def test_fit_epochs_bad_input():
    with pytest.raises(ValueError, match="n_epochs"):
        fit_epochs(lambda e: 0.0, 0)
    with pytest.raises(ValueError, match="module"):
        fit_epochs(lambda e: 0.0, 2, eval_fn=lambda: 0.0)
    with pytest.raises(ValueError, match="patience"):
        fit_epochs(lambda e: 0.0, 2, patience=0)


def test_eval_fns_match_evaluation(tiny_ratings):
    train, valid = tiny_ratings.iloc[:30], tiny_ratings.iloc[30:]
    model = BiasBaseline(6, 8).fit(train)
    assert rmse_eval_fn(model, valid)() == pytest.approx(evaluate_ratings(model, valid)["RMSE"])
    valid = valid.merge(train[["user_idx", "item_idx"]], how="left", indicator=True)
    valid = valid[valid["_merge"] == "left_only"]
    pop = Popularity(6, 8).fit(train)
    expected = evaluate_ranking(pop, valid, train, ks=(3,))["Recall@3"]
    assert ranking_eval_fn(pop, valid, train, "Recall@3")() == expected
    with pytest.raises(ValueError, match="metric"):
        ranking_eval_fn(pop, valid, train, "ndcg10")
    with pytest.raises(ValueError, match="missing"):
        rmse_eval_fn(model, pd.DataFrame({"user_idx": np.zeros(2, int)}))


def test_check_config_validates_and_normalises_fields():
    from dataclasses import dataclass

    import numpy as np

    from recsys_ref.checks import check_config

    @dataclass
    class Config:
        n_epochs: object = 3
        lr: object = 0.1
        reg: object = 0.0
        dropout: object = 0.5
        seed: object = 0
        patience: object = None

    def checked(**fields):
        cfg = Config(**fields)
        check_config(cfg, positive_ints=("n_epochs",), positive=("lr",), nonnegative=("reg",),
                     fractions=("dropout",), optional=("lr",))
        return cfg

    cfg = checked(n_epochs=np.int64(4), lr=None)  # lr is optional: None is left alone
    assert type(cfg.n_epochs) is int and cfg.n_epochs == 4 and cfg.lr is None
    for bad, match in ((dict(n_epochs=0), "n_epochs"), (dict(lr=0), "lr"),
                       (dict(reg=-1e-9), "reg"), (dict(dropout=1.0), "dropout"),
                       (dict(seed=-1), "seed"), (dict(patience=0), "patience")):
        with pytest.raises(ValueError, match=match):
            checked(**bad)
    with pytest.raises(TypeError, match="n_epochs"):
        checked(n_epochs=None)  # not optional


def test_minus_inf_mask_is_torch_where_of_minus_inf_and_zero():
    gen = torch.Generator().manual_seed(1)
    mask = torch.rand(40, 30, generator=gen) < 0.3
    for dtype in (torch.float32, torch.float64):
        fast = minus_inf_mask(mask, dtype)
        assert fast.dtype == dtype
        assert torch.equal(fast, torch.where(mask, float("-inf"), torch.zeros((), dtype=dtype)))
        assert not torch.signbit(fast[~mask]).any()  # +0.0: adding it changes no logit
    with pytest.raises(ValueError, match="float32 or float64"):
        minus_inf_mask(mask, torch.float16)
