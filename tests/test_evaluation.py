import math

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_ref.evaluation import (
    bootstrap_ci,
    cross_validate,
    evaluate_ranking,
    evaluate_ratings,
    evaluate_sampled,
    summarize_folds,
)
from recsys_ref.matrix import interaction_mask, rating_matrix
from recsys_ref.models.base import Recommender


class FixedScores(Recommender):
    """A model whose scores are a given (n_users, n_items) tensor."""

    def __init__(self, scores):
        super().__init__(*scores.shape)
        self.scores = scores

    def fit(self, train):
        return self

    def score(self, user_idx):
        return self.scores[self._users(user_idx)]

    def predict(self, user_idx, item_idx):
        u, i = self._pairs(user_idx, item_idx)
        return self.scores[u, i]


def _random_setup(seed=0, n_users=30, n_items=40):
    rng = np.random.default_rng(seed)
    rows, test_rows = [], []
    for u in range(n_users):
        items = rng.permutation(n_items)
        rows += [(u, int(i)) for i in items[:8]]
        if u % 7:  # some users have no test item and must not be averaged
            test_rows += [(u, int(i)) for i in items[8:8 + 1 + u % 3]]
    train = pd.DataFrame(rows, columns=["user_idx", "item_idx"])
    test = pd.DataFrame(test_rows, columns=["user_idx", "item_idx"])
    scores = torch.as_tensor(rng.standard_normal((n_users, n_items)), dtype=torch.float32)
    return train, test, FixedScores(scores)


def _slow_ranking(model, train, test, k):
    seen = train.groupby("user_idx")["item_idx"].apply(set)
    out = {"HR": [], "NDCG": [], "Recall": [], "MRR": []}
    for u, rel in test.groupby("user_idx")["item_idx"].apply(set).items():
        s = model.scores[u].tolist()
        ranked = sorted((i for i in range(model.n_items) if i not in seen.get(u, set())),
                        key=lambda i: -s[i])
        top = ranked[:k]
        dcg = sum(1 / math.log2(j + 2) for j, i in enumerate(top) if i in rel)
        idcg = sum(1 / math.log2(j + 2) for j in range(min(len(rel), k)))
        out["HR"].append(float(any(i in rel for i in top)))
        out["NDCG"].append(dcg / idcg)
        out["Recall"].append(sum(i in rel for i in top) / len(rel))
        out["MRR"].append(1 / (1 + next(j for j, i in enumerate(ranked) if i in rel)))
    return {m: float(np.mean(v)) for m, v in out.items()}, len(out["HR"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_full_ranking_matches_slow_loop(seed):
    train, test, model = _random_setup(seed)
    got = evaluate_ranking(model, test, exclude=train, ks=(5,))
    want, n = _slow_ranking(model, train, test, 5)
    assert got["n_users"] == n
    for m in ("HR", "NDCG", "Recall"):
        assert got[f"{m}@5"] == pytest.approx(want[m], abs=1e-6)
    assert got["MRR"] == pytest.approx(want["MRR"], abs=1e-6)


def test_full_ranking_masks_seen_items():
    # the model loves the items the user has seen; masking must hide them
    train, test, model = _random_setup(3)
    model.scores = model.scores + 100 * interaction_mask(train, model.n_users, model.n_items)
    got = evaluate_ranking(model, test, exclude=[train], ks=(5,))
    want, _ = _slow_ranking(model, train, test, 5)
    assert got["NDCG@5"] == pytest.approx(want["NDCG"], abs=1e-6)


def test_perfect_and_sampled_models():
    train, test, model = _random_setup(4)
    oracle = FixedScores(interaction_mask(test, model.n_users, model.n_items).float())
    assert evaluate_ranking(oracle, test, train, ks=(3,))["HR@3"] == 1.0
    sampled = evaluate_sampled(oracle, test, train, n_negatives=20, ks=(1,))
    # ties count against the test item: with several test items per user, other test items
    # are never sampled as negatives, so the oracle ranks first
    assert sampled["HR@1"] == 1.0
    constant = FixedScores(torch.zeros(model.n_users, model.n_items))
    assert evaluate_sampled(constant, test, train, n_negatives=20, ks=(10,))["HR@10"] == 0.0
    # sampled negatives are never items the user interacted with
    bad = FixedScores(100 * interaction_mask(train, model.n_users, model.n_items).float())
    assert evaluate_sampled(bad, test, train, n_negatives=20, ks=(10,))["HR@10"] == 0.0


def test_ranking_bad_input():
    train, test, model = _random_setup(5)
    with pytest.raises(ValueError, match="ks"):
        evaluate_ranking(model, test, train, ks=(0,))
    with pytest.raises(ValueError, match="ks"):
        evaluate_ranking(model, test, train, ks=(model.n_items + 1,))
    with pytest.raises(ValueError, match="test shares"):
        evaluate_ranking(model, train, train)
    with pytest.raises(ValueError, match="test is empty"):
        evaluate_ranking(model, test.iloc[:0], train)
    with pytest.raises(ValueError, match="test is missing"):
        evaluate_ranking(model, test.drop(columns="item_idx"), train)
    with pytest.raises(TypeError, match="exclude"):
        evaluate_ranking(model, test, [train.to_numpy()])
    with pytest.raises(ValueError, match="n_negatives"):
        evaluate_sampled(model, test, train, n_negatives=39)


def test_rating_evaluation_and_folds(ml):
    class Mean(Recommender):
        def fit(self, train):
            self.mu = float(train["rating"].mean())
            return self

        def predict(self, user_idx, item_idx):
            user_idx, _ = self._pairs(user_idx, item_idx)
            return torch.full((len(user_idx),), self.mu)

    folds = cross_validate(lambda: Mean(ml.n_users, ml.n_items), ml.ratings, folds=(1, 2))
    train = ml.ratings.iloc[20_000:]
    test = ml.ratings.iloc[:20_000]
    expected = float(np.sqrt(((test["rating"] - train["rating"].mean()) ** 2).mean()))
    assert folds.loc[0, "RMSE"] == pytest.approx(expected, rel=1e-5)
    summary = summarize_folds(folds)
    assert summary["RMSE mean"] == pytest.approx(folds["RMSE"].mean())
    assert summary["RMSE std"] == pytest.approx(folds["RMSE"].std())
    with pytest.raises(ValueError, match="test.item_idx"):
        bad = test.assign(item_idx=5000)
        evaluate_ratings(Mean(ml.n_users, ml.n_items).fit(train), bad)


def test_recommend_and_predict():
    train, test, model = _random_setup(6)
    exclude = interaction_mask(train, model.n_users, model.n_items)
    top = model.recommend(torch.arange(model.n_users), 5, exclude=exclude)
    assert top.shape == (model.n_users, 5)
    assert not exclude.gather(1, top).any()
    assert (model.scores.masked_fill(exclude, -1e9).topk(5).indices == top).all()
    u, i = torch.tensor([0, 3, 3]), torch.tensor([1, 2, 39])
    assert torch.equal(model.predict(u, i), model.scores[u, i])
    with pytest.raises(ValueError, match="k must be in 1..n_items"):
        model.recommend(torch.arange(2), 0)
    with pytest.raises(ValueError, match="user_idx must lie in"):
        model.recommend(torch.tensor([model.n_users]), 3)
    with pytest.raises(ValueError, match="same shape"):
        model.predict(torch.tensor([0, 1]), torch.tensor([1]))
    with pytest.raises(ValueError, match="exclude must be"):
        model.recommend(torch.arange(2), 3, exclude=exclude[:2])


def test_matrices(tiny_ratings):
    R = rating_matrix(tiny_ratings, 6, 8)
    M = interaction_mask(tiny_ratings, 6, 8)
    assert int(M.sum()) == len(tiny_ratings) and torch.equal(R > 0, M)
    with pytest.raises(ValueError, match="df.item_idx must lie in 0..6"):
        interaction_mask(tiny_ratings, 6, 7)


def test_bootstrap_ci():
    x = np.random.default_rng(0).normal(1.0, 1.0, size=500)
    mean, low, high = bootstrap_ci(x, n_resamples=500, seed=0)
    assert low < mean < high and mean == pytest.approx(x.mean())
    assert (high - low) == pytest.approx(2 * 1.96 / np.sqrt(500), rel=0.25)
    assert bootstrap_ci(x, 200, seed=1) == bootstrap_ci(x, 200, seed=1)
    with pytest.raises(ValueError, match="values"):
        bootstrap_ci([])


def test_score_table_evaluates_like_a_model():
    from recsys_ref.models import ScoreTable

    train, test, model = _random_setup(3)
    table = ScoreTable(model.scores).fit()
    assert evaluate_ranking(table, test, train) == evaluate_ranking(model, test, train)
    with pytest.raises(ValueError, match="n_users, n_items"):
        ScoreTable(torch.zeros(3))


def test_t_interval_matches_the_formula():
    from recsys_ref.evaluation import t_interval

    x = [1.0, 2.0, 4.0, 7.0, 6.0]
    mean, low, high = t_interval(x)
    half = 2.7764451051977987 * np.std(x, ddof=1) / np.sqrt(5)  # t(0.975, 4)
    assert mean == pytest.approx(4.0) and (low, high) == pytest.approx((4 - half, 4 + half))
    with pytest.raises(ValueError, match=">= 2 finite"):
        t_interval([1.0])


def test_holm_matches_the_step_down_rule():
    from recsys_ref.evaluation import bootstrap_p_value, holm

    # p sorted: 0.01*4=0.04, 0.02*3=0.06, 0.03*2=0.06 (running max), 0.5*1=0.5
    np.testing.assert_allclose(holm([0.03, 0.01, 0.5, 0.02]), [0.06, 0.04, 0.5, 0.06])
    assert holm([0.9, 0.8]).max() == 1.0  # capped
    with pytest.raises(ValueError, match="p_values"):
        holm([1.2])
    assert bootstrap_p_value(np.arange(1, 101)) == 0.0  # every resample above 0
    assert bootstrap_p_value(np.arange(-49, 51)) == pytest.approx(1.0)


def test_paired_rmse_gap_is_the_mean_of_group_gaps():
    from recsys_ref.evaluation import paired_rmse_gap

    rng = np.random.default_rng(0)
    n = rng.integers(1, 5, 60).astype(float)
    sse_b = rng.uniform(0, 2, 60) * n
    sse_a = 0.5 * sse_b  # a is better everywhere
    groups = np.repeat([0, 1, 2], 20)
    gap, low, high = paired_rmse_gap(sse_a, sse_b, n, groups)
    per_group = [np.sqrt(sse_a[groups == s].sum() / n[groups == s].sum())
                 - np.sqrt(sse_b[groups == s].sum() / n[groups == s].sum()) for s in range(3)]
    assert gap == pytest.approx(np.mean(per_group)) and low <= gap <= high < 0
    # identical models: the interval is the single point 0
    assert paired_rmse_gap(sse_b, sse_b, n, groups) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="finite"):
        paired_rmse_gap(sse_a * np.nan, sse_b, n, groups)


def test_paired_mean_gap_resamples_within_groups():
    from recsys_ref.evaluation import paired_mean_gap

    a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.0, 1.0, 1.0, 2.0])
    gap, low, high = paired_mean_gap(a, b, [0, 0, 1, 1])
    assert gap == pytest.approx(np.mean([1.5 - 0.5, 3.5 - 1.5])) and low <= gap <= high


def test_repeated_test_pairs_count_once():
    train = pd.DataFrame({"user_idx": [0, 1], "item_idx": [0, 1]})
    test = pd.DataFrame({"user_idx": [0, 0, 1], "item_idx": [2, 3, 2]})
    model = FixedScores(torch.tensor([[0.0, 0.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 2.0, 2.0]]))
    once = evaluate_ranking(model, test, train, ks=(2,), per_user=True)[1]
    twice = evaluate_ranking(model, pd.concat([test, test]), train, ks=(2,), per_user=True)[1]
    pd.testing.assert_frame_equal(once, twice)
    # user 0: items 2, 3 relevant, tied with item 4 (ranked first); user 1: item 2 after
    # items 3 and 4 and after item 0, tied with it
    assert once["MRR"].tolist() == [0.5, 0.25]
