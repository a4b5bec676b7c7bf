"""recsys_ref.tuning: grids, seeded random configurations, searches and their winner."""

import pandas as pd
import pytest
import torch

from recsys_ref.evaluation import evaluate_ranking
from recsys_ref.models.baselines import Popularity
from recsys_ref.models.bpr import BPR
from recsys_ref.models.ease import EASE
from recsys_ref.tuning import best_config, grid, random_configs, search, search_then_refit


def test_grid_is_the_cartesian_product_first_axis_slowest():
    assert grid(a=(1, 2), b=("x", "y")) == [
        {"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]
    with pytest.raises(ValueError, match="axis 'b' has no values"):
        grid(a=(1,), b=())
    with pytest.raises(TypeError, match="axis 'a'"):
        grid(a=3)


def test_random_configs_are_seeded_distinct_and_capped():
    space = dict(a=range(10), b=range(10))
    one, two = random_configs(space, 5, seed=1), random_configs(space, 5, seed=1)
    assert one == two and len({tuple(c.values()) for c in one}) == 5
    assert random_configs(space, 5, seed=2) != one
    assert len(random_configs(dict(a=(1, 2)), 5, seed=0)) == 2


def _planted(n_users=60, n_items=30, seed=0):
    """Users like the items of their own block of 10: EASE with light regularisation learns
    the blocks; heavy regularisation ranks like popularity, which ignores them."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for u in range(n_users):
        block = u % 3
        items = torch.randperm(10, generator=g)[:6] + 10 * block
        rows += [(u, int(i)) for i in items]
    df = pd.DataFrame(rows, columns=["user_idx", "item_idx"])
    last = df.groupby("user_idx").tail(1)
    return df.drop(last.index), last, n_users, n_items


def test_search_ranks_configurations_by_validation_metric(tmp_path, monkeypatch):
    monkeypatch.setenv("RECSYS_REF_DATA", str(tmp_path))
    train, valid, n_users, n_items = _planted()
    configs = grid(lam=(1e6, 1.0))
    table = search(lambda lam: EASE(n_users, n_items, lam=lam), configs, train,
                   lambda m: evaluate_ranking(m, valid, train, ks=(5,)), metric="NDCG@5")
    assert list(table["lam"]) == [1e6, 1.0] and "fit_seconds" in table
    assert table["NDCG@5"].iloc[1] > table["NDCG@5"].iloc[0]
    assert best_config(table) == {"lam": 1.0}
    # lower is better flips the winner
    flipped = search(lambda lam: EASE(n_users, n_items, lam=lam), configs, train,
                     lambda m: evaluate_ranking(m, valid, train, ks=(5,)), metric="NDCG@5",
                     higher_is_better=False)
    assert best_config(flipped) == {"lam": 1e6}


def test_search_rejects_missing_and_non_finite_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("RECSYS_REF_DATA", str(tmp_path))
    train, valid, n_users, n_items = _planted()
    make = lambda: Popularity(n_users, n_items)  # noqa: E731
    with pytest.raises(ValueError, match="not the metric 'NDCG@10'"):
        search(make, [{}], train, lambda m: {"HR@10": 0.1}, metric="NDCG@10")
    with pytest.raises(ValueError, match="is nan"):
        search(make, [{}], train, lambda m: {"RMSE": float("nan")}, metric="RMSE")
    with pytest.raises(ValueError, match="at least one configuration"):
        search(make, [], train, lambda m: {"RMSE": 1.0}, metric="RMSE")


class _Shifted:
    """A scorer whose fit takes an extra argument: popularity plus a planted item bonus."""

    def __init__(self, n_users, n_items):
        self.n_users, self.n_items = n_users, n_items

    def fit(self, train, valid=None, bonus=None):
        self.pop_ = Popularity(self.n_users, self.n_items).fit(train)
        self.bonus_ = bonus
        return self

    def score(self, user_idx):
        s = self.pop_.score(user_idx)
        return s if self.bonus_ is None else s + self.bonus_[user_idx]


def test_search_passes_fit_kwargs_uncached(tmp_path, monkeypatch):
    monkeypatch.setenv("RECSYS_REF_DATA", str(tmp_path))
    train, valid, n_users, n_items = _planted()
    oracle = torch.zeros(n_users, n_items)  # a bonus on each user's validation item
    vu, vi = (torch.tensor(valid[c].to_numpy()) for c in ("user_idx", "item_idx"))
    oracle[vu, vi] = 1e6

    def run(bonus, **kw):
        return search(lambda: _Shifted(n_users, n_items), [{}], train,
                      lambda m: evaluate_ranking(m, valid, train, ks=(5,)), metric="NDCG@5",
                      fit_kwargs={"bonus": bonus}, **kw)

    with pytest.raises(ValueError, match="cache=False"):
        run(oracle)
    # the argument reached fit: the planted bonus puts every validation item first
    assert run(oracle, cache=False)["NDCG@5"].iloc[0] == pytest.approx(1.0)
    assert run(None, cache=False)["NDCG@5"].iloc[0] < 0.9
    kept = []
    assert run(oracle, cache=False, keep=kept)["fit_seconds"].iloc[0] >= 0
    assert len(kept) == 1 and kept[0].bonus_ is oracle


def test_search_then_refit_refits_the_winner_for_its_best_epoch_on_history(tmp_path,
                                                                          monkeypatch):
    monkeypatch.setenv("RECSYS_REF_DATA", str(tmp_path))
    train, valid, n_users, n_items = _planted()
    history = pd.concat([train, valid])

    def make(**kw):
        return BPR(n_users, n_items, n_factors=8, batch_size=64, seed=0,
                   **({"n_epochs": 15, "patience": 2} | kw))

    configs = [{"lr": 1e-5}, {"lr": 0.05}]  # a step too small to learn, and one that learns
    out = search_then_refit(make, configs, train, valid, history,
                            lambda m: evaluate_ranking(m, valid, train, ks=(5,)),
                            metric="NDCG@5")
    assert out.best == {"lr": 0.05} and list(out.table["lr"]) == [1e-5, 0.05]
    assert out.tuned.config.lr == 0.05 and out.tuned.config.patience == 2
    # the refit: the winner's settings, its best epoch, no early stopping, on history
    assert out.final.config.lr == 0.05 and out.final.config.patience is None
    assert out.final.config.n_epochs == out.tuned.best_epoch_ >= 1
    again = make(lr=0.05, n_epochs=out.tuned.best_epoch_, patience=None).fit(history)
    users = torch.arange(n_users)
    assert torch.allclose(again.score(users), out.final.score(users))
    # a second call reads every fit back from the cache: the same models
    second = search_then_refit(make, configs, train, valid, history,
                               lambda m: evaluate_ranking(m, valid, train, ks=(5,)),
                               metric="NDCG@5")
    assert second.final is not out.final
    assert torch.equal(second.final.score(users), out.final.score(users))
