"""Collaborative-filtering models against slow, loop-based references on tiny synthetic data."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_ref.matrix import as_pattern, interaction_mask, rating_matrix
from recsys_ref.models.baselines import (
    BiasBaseline,
    GlobalMean,
    Popularity,
    bias_objective,
    fit_biases,
)
from recsys_ref.models.ease import EASE, ease_weights
from recsys_ref.models.knn_top_n import ItemKNN, UserKNN, _top_k_entries, knn_cosine
from recsys_ref.models.neighborhood import KINDS, KNNRating, similarity_matrix, support

N_USERS, N_ITEMS = 14, 11


def ratings_frame(seed=0, density=0.7, integer=False):
    """Random ratings on a N_USERS x N_ITEMS grid, each cell observed with prob ``density``."""
    rng = np.random.default_rng(seed)
    u, i = np.nonzero(rng.random((N_USERS, N_ITEMS)) < density)
    r = rng.integers(1, 6, len(u)) if integer else rng.uniform(1, 5, len(u))
    return pd.DataFrame({"user_idx": u, "item_idx": i, "rating": r.astype(np.float32),
                         "timestamp": np.arange(len(u))})


def matrices(df):
    return rating_matrix(df, N_USERS, N_ITEMS).double(), interaction_mask(df, N_USERS, N_ITEMS)


# ----------------------------------------------------------------------------- similarities


def slow_similarity(R, M, kind, shrinkage=0.0, baseline=None, min_support=1):
    """Double loop over row pairs, straight from the formulas."""
    R, M = R.numpy(), M.numpy()
    n = R.shape[0]
    col_mean = np.array([R[M[:, c], c].mean() if M[:, c].any() else 0.0
                         for c in range(R.shape[1])])
    S = np.zeros((n, n))
    for x in range(n):
        for y in range(n):
            if x == y:
                S[x, y] = 1.0
                continue
            common = np.nonzero(M[x] & M[y])[0]
            if len(common) < max(min_support, 1):
                continue
            a, b = R[x, common].astype(float), R[y, common].astype(float)
            if kind == "pearson":
                a, b = a - a.mean(), b - b.mean()
            elif kind == "adjusted_cosine":
                a, b = a - col_mean[common], b - col_mean[common]
            elif kind == "pearson_baseline":
                a, b = a - baseline[x, common].numpy(), b - baseline[y, common].numpy()
            den = math.sqrt((a * a).sum() * (b * b).sum())
            s = (a * b).sum() / den if den > 1e-12 else 0.0
            nc = len(common)
            dof = nc - 1 if kind in ("pearson", "pearson_baseline") else nc
            if shrinkage > 0:
                s *= dof / (dof + shrinkage)
            S[x, y] = s
    return S


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shrinkage", [0.0, 3.0])
@pytest.mark.parametrize("items", [False, True])
def test_similarity_matches_double_loop(kind, shrinkage, items):
    R, M = matrices(ratings_frame(seed=1, density=0.5))
    if items:
        R, M = R.T, M.T
    R = torch.where(M, R, 123.0)  # values off the mask must be ignored
    rng = np.random.default_rng(2)
    baseline = torch.as_tensor(rng.uniform(2, 4, R.shape))
    got = similarity_matrix(R, M, kind, shrinkage, baseline=baseline, min_support=2)
    want = slow_similarity(R, M, kind, shrinkage, baseline, min_support=2)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-10)
    assert torch.equal(got, got.T)


def test_similarity_zero_variance_and_support():
    R = torch.tensor([[3.0, 3.0, 3.0, 0.0], [1.0, 2.0, 5.0, 4.0], [2.0, 0.0, 4.0, 1.0]])
    M = torch.tensor([[True, True, True, False], [True, True, True, True],
                      [True, False, True, True]])
    S = similarity_matrix(R, M, "pearson")
    assert S[0, 1] == 0 and S[1, 0] == 0  # a constant row has no correlation
    assert torch.equal(support(M), torch.tensor([[3, 3, 2], [3, 4, 3], [2, 3, 3]]))
    assert torch.equal(S.diagonal(), torch.ones(3))


def test_pearson_of_uncorrelated_rows_is_exactly_zero():
    """A pair whose exact numerator n sum(xy) - sum(x) sum(y) is 0 (integers, computed exactly)
    gets similarity 0, not the +-1e-17 that cancellation leaves: KNNWithMeans would count a
    1e-17 neighbour as positive and predict from it alone (Surprise's prediction, which has
    exact 0, differed by 0.64 on MovieLens)."""
    gen = np.random.default_rng(0)
    R = gen.integers(1, 6, size=(300, 12)).astype(np.float64)  # (rows, columns) ratings 1-5
    M = gen.random((300, 12)) < 0.7
    R[:, 0], M[:, :2] = 3.0, True  # every pair co-rates columns 0 and 1
    R[:, 1] = gen.integers(1, 6, size=300)
    got = similarity_matrix(torch.as_tensor(R), torch.as_tensor(M), "pearson").numpy()
    X = np.where(M, R, 0).astype(np.int64)
    Mi = M.astype(np.int64)
    n, s, dot = Mi @ Mi.T, X @ Mi.T, X @ X.T  # exact integer sums over the co-rated columns
    numerator = n * dot - s * s.T  # (rows, rows) exactly 0 for uncorrelated pairs
    zero = (numerator == 0) & ~np.eye(len(R), dtype=bool)
    assert zero.sum() > 50
    assert (got[zero] == 0).all()
    assert (got[~zero & (n > 1)] != 0).sum() > 0.5 * (~zero & (n > 1)).sum()


# ----------------------------------------------------------------------------- baselines


def slow_biases(df, reg_u, reg_i, n_iters):
    """Surprise-style ALS: loops over items then users."""
    mu = df["rating"].astype(float).mean()
    by_item = {i: g for i, g in df.groupby("item_idx")}
    by_user = {u: g for u, g in df.groupby("user_idx")}
    b_u, b_i = np.zeros(N_USERS), np.zeros(N_ITEMS)
    for _ in range(n_iters):
        for i, g in by_item.items():
            dev = sum(r - mu - b_u[u] for u, r in zip(g["user_idx"], g["rating"], strict=True))
            b_i[i] = dev / (reg_i + len(g))
        for u, g in by_user.items():
            dev = sum(r - mu - b_i[i] for i, r in zip(g["item_idx"], g["rating"], strict=True))
            b_u[u] = dev / (reg_u + len(g))
    return mu, b_u, b_i


def test_bias_baseline_matches_loop_and_objective_decreases():
    df = ratings_frame(seed=3)
    R, M = matrices(df)
    mu, b_u, b_i = fit_biases(R, M, reg_u=2.0, reg_i=1.5, n_iters=4)
    mu2, b_u2, b_i2 = slow_biases(df, 2.0, 1.5, 4)
    assert mu == pytest.approx(mu2, abs=1e-6)
    np.testing.assert_allclose(b_u.numpy(), b_u2, atol=1e-6)
    np.testing.assert_allclose(b_i.numpy(), b_i2, atol=1e-6)
    objs = [bias_objective(R, M, *fit_biases(R, M, 2.0, 1.5, t), 2.0, 1.5) for t in range(1, 8)]
    assert all(a >= b - 1e-9 for a, b in zip(objs, objs[1:], strict=False))
    assert objs[0] > objs[-1]

    model = BiasBaseline(N_USERS, N_ITEMS, reg_i=1.5, reg_u=2.0, n_iters=4,
                         rating_range=None).fit(df)
    u, i = torch.tensor([0, 5, 13]), torch.tensor([10, 2, 0])
    want = mu2 + b_u2[u.numpy()] + b_i2[i.numpy()]
    np.testing.assert_allclose(model.predict(u, i).numpy(), want, atol=1e-5)
    np.testing.assert_allclose(model.score(u).gather(1, i[:, None])[:, 0].numpy(), want, atol=1e-5)


def test_global_mean_and_popularity():
    df = ratings_frame(seed=4)
    gm = GlobalMean(N_USERS, N_ITEMS).fit(df)
    assert torch.allclose(gm.predict([0, 1], [2, 3]), torch.full((2,), df["rating"].mean()))
    pop = Popularity(N_USERS, N_ITEMS).fit(df)
    counts = np.bincount(df["item_idx"], minlength=N_ITEMS)
    assert np.array_equal(pop.score(torch.tensor([0, 7])).numpy(), np.tile(counts, (2, 1)))


# ----------------------------------------------------------------------------- k-NN ratings


def slow_knn(df, pairs, k, min_k, kind, shrinkage, user_based, baseline):
    """Per-pair reference: sort the rated neighbours by similarity, keep k positive ones."""
    R, M = matrices(df)
    mu, b_u, b_i = fit_biases(R, M, 15.0, 10.0, 10)
    bias = (mu + b_u[:, None] + b_i[None, :]).numpy()
    R, M = R.numpy(), M.numpy()
    if not user_based:  # rows of A are the target entity x (the item), columns y (users)
        A, B, bias = R.T, M.T, bias.T
    else:
        A, B = R, M
    S = similarity_matrix(torch.as_tensor(A), torch.as_tensor(B), kind, shrinkage,
                          baseline=torch.as_tensor(bias)).numpy()
    mean = np.array([A[z, B[z]].mean() if B[z].any() else mu for z in range(len(A))])

    def base(xx, yy):
        return {"bias": bias[xx, yy], "mean": mean[xx], None: 0.0}[baseline]

    out = []
    for u, i in pairs:
        x, y = (u, i) if user_based else (i, u)
        neigh = [(S[x, z], z) for z in range(len(A)) if B[z, y] and S[x, z] > 0]
        neigh = sorted(neigh, reverse=True)[:k]
        num = sum(s * (A[z, y] - base(z, y)) for s, z in neigh)
        den = sum(abs(s) for s, _ in neigh)
        if len(neigh) < min_k or den == 0:
            est = base(x, y) if baseline is not None else mu
        else:
            est = base(x, y) + num / den
        # clipped to the training ratings' range (the models' default rating_range="train")
        out.append(min(max(est, float(df["rating"].min())), float(df["rating"].max())))
    return out


@pytest.mark.parametrize("baseline", [None, "mean", "bias"])
@pytest.mark.parametrize("user_based", [False, True])
@pytest.mark.parametrize("kind", ["pearson_baseline", "cosine"])
def test_knn_rating_matches_per_pair_loop(baseline, user_based, kind):
    df = ratings_frame(seed=5, density=0.6)
    model = KNNRating(N_USERS, N_ITEMS, k=3, min_k=2, kind=kind, shrinkage=2.0,
                      user_based=user_based, baseline=baseline).fit(df)
    u, i = np.meshgrid(np.arange(N_USERS), np.arange(N_ITEMS), indexing="ij")
    u, i = u.ravel(), i.ravel()
    got = model.predict(torch.as_tensor(u), torch.as_tensor(i)).numpy()
    want = slow_knn(df, zip(u, i, strict=True), 3, 2, kind, 2.0, user_based, baseline)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(model.score(torch.arange(N_USERS)).numpy().ravel(), got)


# ----------------------------------------------------------------------------- top-N models


def test_item_and_user_knn_match_loops():
    df = ratings_frame(seed=6, density=0.4)
    X = interaction_mask(df, N_USERS, N_ITEMS).double().numpy()
    h, k = 1.5, 3

    def cos(A):  # columns of A
        n = A.shape[1]
        S = np.zeros((n, n))
        for a in range(n):
            for b in range(n):
                if a != b:
                    S[a, b] = (A[:, a] @ A[:, b]) / (math.sqrt(A[:, a].sum() * A[:, b].sum()) + h)
        return S

    S = cos(X)
    want = np.zeros((N_USERS, N_ITEMS))
    for u in range(N_USERS):
        for i in range(N_ITEMS):
            nbrs = np.argsort(-S[i], kind="stable")[:k]
            want[u, i] = sum(S[i, j] for j in nbrs if X[u, j])
    got = ItemKNN(N_USERS, N_ITEMS, k=k, shrinkage=h).fit(df).score(torch.arange(N_USERS))
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)

    S = cos(X.T)
    want = np.zeros((N_USERS, N_ITEMS))
    for u in range(N_USERS):
        nbrs = np.argsort(-S[u], kind="stable")[:k]
        want[u] = sum(S[u, v] * X[v] for v in nbrs)
    got = UserKNN(N_USERS, N_ITEMS, k=k, shrinkage=h).fit(df).score(torch.arange(N_USERS))
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)


def stable_top_k(sim, k):
    """Reference: zero all but the first k entries of a stable descending sort of each row."""
    if k is None:
        return sim.clone()
    idx = sim.sort(dim=1, descending=True, stable=True).indices[:, :k]
    return torch.zeros_like(sim).scatter_(1, idx, sim.gather(1, idx))


def test_top_k_entries_are_a_stable_sort_cut_at_k():
    # rows full of ties and zeros: kept entries must be those of a stable descending sort
    gen = torch.Generator().manual_seed(0)
    sim = torch.randint(0, 4, (50, 30), generator=gen).double()
    for k in (1, 3, 10, 29, 30, None):
        for s in (sim, sim + 1):
            r, c = _top_k_entries(s, k)
            got = torch.zeros_like(s)
            got[r, c] = s[r, c]
            assert torch.equal(got, stable_top_k(s, k)) and (s[r, c] != 0).all()
        if k is not None:  # exactly k when there are no zeros, ties or not
            assert len(_top_k_entries(sim + 1, k)[0]) == k * len(sim)


@pytest.mark.parametrize("block_size", [1, 4, None])
def test_knn_cosine_blocks_match_dense(block_size):
    df = ratings_frame(seed=8, density=0.5)
    X = interaction_mask(df, N_USERS, N_ITEMS).double()
    co = X.T @ X
    cnt = co.diagonal()
    sim = co / ((cnt[:, None] * cnt[None, :]).sqrt() + 1.0)
    sim.fill_diagonal_(0.0)
    for k in (1, 2, 5, None):
        want = stable_top_k(sim, k).float()
        got = knn_cosine(X, 1.0, k, block_size=block_size)
        assert got.layout == torch.sparse_csr and torch.equal(got.to_dense(), want)
        assert torch.equal(knn_cosine(as_pattern(X > 0), 1.0, k).to_dense(), want)


def test_item_and_user_knn_score_as_the_dense_products():
    df = ratings_frame(seed=9, density=0.3)
    X = interaction_mask(df, N_USERS, N_ITEMS).float()
    users = torch.tensor([4, 0, 4, N_USERS - 1])
    item, user = ItemKNN(N_USERS, N_ITEMS, k=3).fit(df), UserKNN(N_USERS, N_ITEMS, k=3).fit(df)
    W, S = item.S_.to_dense().T, user.S_.to_dense()  # W[j, i] = s_ij; S[u, v] = s_uv
    torch.testing.assert_close(item.score(users), X[users] @ W)
    torch.testing.assert_close(item.W_.to_dense(), W)
    torch.testing.assert_close(user.score(users), S[users] @ X)
    assert ((item.S_.to_dense() != 0).sum(1) <= 3).all()  # k per row, stored sparse


def test_ease_matches_numpy():
    df = ratings_frame(seed=7, density=0.4)
    X = interaction_mask(df, N_USERS, N_ITEMS).double().numpy()
    P = np.linalg.inv(X.T @ X + 3.0 * np.eye(N_ITEMS))
    want = np.eye(N_ITEMS) - P / np.diag(P)[None, :]
    B = ease_weights(torch.as_tensor(X), 3.0).numpy()
    np.testing.assert_allclose(B, want, atol=1e-10)
    assert np.all(np.diag(B) == 0)
    model = EASE(N_USERS, N_ITEMS, lam=3.0).fit(df)
    np.testing.assert_allclose(model.score(torch.arange(N_USERS)).numpy(), X @ want, atol=1e-5)


# ----------------------------------------------------------------------------- errors, determinism


def test_bad_inputs():
    df = ratings_frame(seed=8)
    R, M = matrices(df)
    with pytest.raises(ValueError, match="kind"):
        similarity_matrix(R, M, "jaccard")
    with pytest.raises(ValueError, match="shrinkage"):
        similarity_matrix(R, M, "cosine", shrinkage=-1)
    with pytest.raises(ValueError, match="baseline"):
        similarity_matrix(R, M, "pearson_baseline")
    with pytest.raises(ValueError, match="kind"):
        KNNRating(N_USERS, N_ITEMS, kind="msd")
    with pytest.raises(ValueError, match="baseline"):
        KNNRating(N_USERS, N_ITEMS, baseline="zscore")
    for cls in (KNNRating, ItemKNN, UserKNN):
        with pytest.raises(ValueError, match="k"):
            cls(N_USERS, N_ITEMS, k=0)
        with pytest.raises(ValueError, match="shrinkage"):
            cls(N_USERS, N_ITEMS, shrinkage=-0.5)
    with pytest.raises(ValueError, match="reg_i"):
        BiasBaseline(N_USERS, N_ITEMS, reg_i=-1)
    with pytest.raises(ValueError, match="lam"):
        EASE(N_USERS, N_ITEMS, lam=0)
    for model in (GlobalMean(N_USERS, N_ITEMS), BiasBaseline(N_USERS, N_ITEMS),
                  KNNRating(N_USERS, N_ITEMS)):
        with pytest.raises(ValueError, match="rating"):
            model.fit(df.drop(columns="rating"))
    for model in (Popularity(N_USERS, N_ITEMS), ItemKNN(N_USERS, N_ITEMS),
                  UserKNN(N_USERS, N_ITEMS), EASE(N_USERS, N_ITEMS)):
        with pytest.raises(ValueError, match="item_idx"):
            model.fit(df.drop(columns="item_idx"))


def test_deterministic():
    df = ratings_frame(seed=9)
    users = torch.arange(N_USERS)
    for make in (lambda: KNNRating(N_USERS, N_ITEMS), lambda: BiasBaseline(N_USERS, N_ITEMS),
                 lambda: ItemKNN(N_USERS, N_ITEMS, k=4), lambda: EASE(N_USERS, N_ITEMS)):
        assert torch.equal(make().fit(df).score(users), make().fit(df).score(users))
