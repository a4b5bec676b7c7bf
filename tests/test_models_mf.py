"""Matrix factorization (BiasedMF, BPR, iALS) against autograd and slow per-row references."""

import time

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from recsys_ref.matrix import UserItems, as_pattern, column
from recsys_ref.metrics import rmse
from recsys_ref.models.baselines import BiasBaseline
from recsys_ref.models.bpr import BPR, _draw_unseen, bpr_loss, sample_negatives
from recsys_ref.models.ials import IALS, ials_loss, ials_objective, ials_step
from recsys_ref.models.mf import (
    BiasedMF,
    Factors,
    als_step,
    mf_objective,
    rating_counts,
    sgd_step,
)
from recsys_ref.training import ridge_solve, row_blocks

N_USERS, N_ITEMS, D = 12, 9, 3
REG, REG_B, MU = 0.3, 0.1, 3.0


def low_rank_ratings(seed=0, density=0.6, n_users=N_USERS, n_items=N_ITEMS):
    """Ratings ``3 + rank-2 signal + noise`` on a random subset of the grid."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=(n_users, 2)) @ rng.normal(size=(2, n_items))
    u, i = np.nonzero(rng.random((n_users, n_items)) < density)
    r = np.clip(3 + signal[u, i] + 0.1 * rng.normal(size=len(u)), 1, 5)
    return pd.DataFrame({"user_idx": u, "item_idx": i, "rating": r.astype(np.float32),
                         "timestamp": np.arange(len(u))})


def triples(df, dtype=torch.float64):
    return column(df, "user_idx"), column(df, "item_idx"), column(df, "rating", dtype)


def factors(seed=0, user_bias=True, item_bias=True):
    f = Factors(N_USERS, N_ITEMS, D, user_bias, item_bias, 0.5,
                torch.Generator().manual_seed(seed)).double()
    with torch.no_grad():  # non-zero biases, so their terms are exercised
        f.b_u.normal_(generator=torch.Generator().manual_seed(seed + 1))
        f.b_i.normal_(generator=torch.Generator().manual_seed(seed + 2))
    return f


# ----------------------------------------------------------------------------- BiasedMF


@pytest.mark.parametrize("nu", [1.0, 0.5, 0.0])
def test_mf_objective_matches_loop_and_closed_form_gradient(nu):
    u, i, r = triples(low_rank_ratings())
    f = factors()
    counts = rating_counts(u, i, N_USERS, N_ITEMS)
    loss = mf_objective(f, u, i, r, MU, REG, REG_B, nu, counts)
    P, Q, bu, bi = (t.detach() for t in (f.P, f.Q, f.b_u, f.b_i))
    n_u, n_i = (c.double() ** nu for c in counts)  # penalty multipliers n^nu
    slow = 0.5 * sum(n_u[x] * (REG * P[x] @ P[x] + REG_B * bu[x]**2) for x in range(N_USERS))
    slow += 0.5 * sum(n_i[x] * (REG * Q[x] @ Q[x] + REG_B * bi[x]**2) for x in range(N_ITEMS))
    # the penalties' gradients, then each rating's error term (Funk's update is minus these)
    grads = [REG * n_u[:, None] * P, REG * n_i[:, None] * Q, REG_B * n_u * bu, REG_B * n_i * bi]
    for uu, ii, rr in zip(u.tolist(), i.tolist(), r.tolist(), strict=True):
        e = rr - MU - bu[uu] - bi[ii] - P[uu] @ Q[ii]
        slow += 0.5 * e**2
        grads[0][uu] += -e * Q[ii]
        grads[1][ii] += -e * P[uu]
        grads[2][uu] += -e
        grads[3][ii] += -e
    assert loss.item() == pytest.approx(float(slow), rel=1e-12)
    loss.backward()
    for param, expected in zip((f.P, f.Q, f.b_u, f.b_i), grads, strict=True):
        torch.testing.assert_close(param.grad, expected)
    with pytest.raises(ValueError, match="counts"):
        mf_objective(f, u, i, r, MU, REG, REG_B, nu=0.5)


def slow_als_users(f, u, i, r, nu):
    """Per-user ``torch.linalg.solve`` of the user block of mf_objective."""
    theta = torch.zeros(N_USERS, D + 1, dtype=torch.float64)
    for user in range(N_USERS):
        items, ratings = i[u == user], r[u == user]
        if len(items) == 0:
            continue
        X = torch.cat([f.Q.detach()[items], torch.ones(len(items), 1, dtype=torch.float64)], 1)
        penalty = torch.tensor([REG] * D + [REG_B], dtype=torch.float64) * len(items) ** nu
        A = X.T @ X + torch.diag(penalty)
        theta[user] = torch.linalg.solve(A, X.T @ (ratings - MU - f.b_i.detach()[items]))
    return theta


@pytest.mark.parametrize("side, nu", [("users", 1.0), ("users", 0.5), ("items", 0.0)])
def test_als_step_is_the_exact_block_minimiser(side, nu):
    u, i, r = triples(low_rank_ratings())
    f = factors()
    counts = rating_counts(u, i, N_USERS, N_ITEMS)
    before = mf_objective(f, u, i, r, MU, REG, REG_B, nu, counts).item()
    als_step(f, u, i, r, MU, REG, REG_B, side=side, nu=nu)
    if side == "users":
        theta = slow_als_users(f, u, i, r, nu)
        torch.testing.assert_close(f.P.detach(), theta[:, :D])
        torch.testing.assert_close(f.b_u.detach(), theta[:, D])
    loss = mf_objective(f, u, i, r, MU, REG, REG_B, nu, counts)
    assert loss.item() < before
    loss.backward()  # the gradient in the solved block vanishes at its minimiser
    block = (f.P, f.b_u) if side == "users" else (f.Q, f.b_i)
    for param in block:
        torch.testing.assert_close(param.grad, torch.zeros_like(param), atol=1e-10, rtol=0)


def test_row_blocks_hold_every_entry_once_and_ridge_solve_matches_loop():
    rows, cols = torch.tensor([0, 2, 2, 0, 3, 2]), torch.tensor([1, 0, 2, 2, 1, 3])
    blocks = row_blocks(rows, cols, n_rows=5, block_size=2)
    seen = sorted(int(e) for _, _, entry in blocks for e in entry.flatten() if e < len(rows))
    assert seen == list(range(len(rows)))
    for r, c, e in blocks:
        real = e < len(rows)
        assert torch.equal(rows[e[real]], r[:, None].expand_as(e)[real])
        assert torch.equal(cols[e[real]], c[real]) and (c[~real] == -1).all()
    gen = torch.Generator().manual_seed(0)
    X, y = torch.randn(4, 2, generator=gen, dtype=torch.float64), torch.randn(6).double()
    reg, gram = torch.rand(5, 2, dtype=torch.float64) + 0.1, torch.eye(2).double() * 0.3
    out = ridge_solve(blocks, X, y, reg, 5, gram)
    for row in range(5):
        Xr, yr = X[cols[rows == row]], y[rows == row]
        expected = torch.linalg.solve(Xr.T @ Xr + gram + torch.diag(reg[row]), Xr.T @ yr)
        torch.testing.assert_close(out[row], expected if len(yr) else torch.zeros(2).double())


@pytest.mark.parametrize("zero_penalty", [False, True])
def test_ridge_solve_dual_form_of_short_rows_matches_the_normal_equations(zero_penalty):
    """Rows with fewer entries than features take the dual (Woodbury) solve when every
    penalty is positive, the normal equations otherwise: both give each row's minimiser."""
    gen = torch.Generator().manual_seed(1)
    n_rows, n_cols, k = 40, 30, 8
    counts = torch.randint(0, 14, (n_rows,), generator=gen)  # rows of 0-13 entries, k = 8
    rows = torch.repeat_interleave(torch.arange(n_rows), counts)
    cols = torch.cat([torch.randperm(n_cols, generator=gen)[:n] for n in counts.tolist()])
    X = torch.randn(n_cols, k, generator=gen, dtype=torch.float64)
    y = torch.randn(len(rows), generator=gen, dtype=torch.float64)
    reg = torch.rand(n_rows, k, generator=gen, dtype=torch.float64) + 0.05
    if zero_penalty:
        reg[:, -1] = 0.0  # an unpenalised feature (a bias with reg_bias = 0): primal only
        reg[counts == 0] = 1.0  # rows without entries stay 0 either way
    blocks = row_blocks(rows, cols, n_rows, block_size=4)
    widths = [c.shape[1] for _, c, _ in blocks]  # both kinds of block: dual and primal
    assert min(widths) < k <= max(widths)
    out = ridge_solve(blocks, X, y, reg, n_rows)
    for row in range(n_rows):
        Xr, yr = X[cols[rows == row]], y[rows == row]
        if len(yr) == 0:
            assert (out[row] == 0).all()
            continue
        expected = torch.linalg.lstsq(Xr.T @ Xr + torch.diag(reg[row]), Xr.T @ yr).solution
        torch.testing.assert_close(out[row], expected, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("solver", ["sgd", "adam", "als"])
def test_biased_mf_is_deterministic_and_early_stops_on_validation(solver):
    df = low_rank_ratings(density=0.8)
    train, valid = df.iloc[::2].iloc[:-5], df.iloc[1::2]
    kw = dict(solver=solver, n_factors=4, n_epochs=30, lr=0.05, reg=0.01, batch_size=16)
    a = BiasedMF(N_USERS, N_ITEMS, **kw).fit(train, valid)
    b = BiasedMF(N_USERS, N_ITEMS, **kw).fit(train, valid)
    for key, value in a.factors_.state_dict().items():
        assert torch.equal(value, b.factors_.state_dict()[key])
    best = min(h["valid"] for h in a.history_)
    assert a.history_[a.best_epoch_ - 1]["valid"] == best
    u, i, r = triples(valid, torch.float32)
    assert rmse(a.predict(u, i), r) == pytest.approx(best, abs=1e-6)  # best state restored
    baseline = BiasBaseline(N_USERS, N_ITEMS, reg_i=1, reg_u=1).fit(train)
    assert best < rmse(baseline.predict(u, i), r)  # the factors learn the rank-2 signal
    scores = a.score(torch.arange(N_USERS))  # (n_users, n_items), same formula as predict
    torch.testing.assert_close(scores[u, i], a.predict(u, i))
    assert scores.min() >= 1 and scores.max() <= 5


def test_sgd_step_is_funks_update():
    u, i, r = triples(low_rank_ratings().iloc[:7], torch.float32)
    f = factors().float()
    old = [t.detach().clone() for t in (f.P, f.Q, f.b_u, f.b_i)]
    loss = mf_objective(f, u, i, r, MU, REG, REG_B)
    opt = torch.optim.SGD(f.parameters(), lr=0.01)
    loss.backward()
    opt.step()
    P, Q, bu, bi = (t.clone() for t in old)
    for uu, ii, rr in zip(u.tolist(), i.tolist(), r.tolist(), strict=True):  # summed over batch
        e = rr - MU - old[2][uu] - old[3][ii] - old[0][uu] @ old[1][ii]
        P[uu] = P[uu] + 0.01 * (e * old[1][ii] - REG * old[0][uu])
        Q[ii] = Q[ii] + 0.01 * (e * old[0][uu] - REG * old[1][ii])
        bu[uu], bi[ii] = bu[uu] + 0.01 * (e - REG_B * old[2][uu]), bi[ii] + 0.01 * (
            e - REG_B * old[3][ii])
    for param, expected in zip((f.P, f.Q, f.b_u, f.b_i), (P, Q, bu, bi), strict=True):
        torch.testing.assert_close(param.detach(), expected)


@pytest.mark.parametrize("nu", [1.0, 0.5])
def test_written_out_sgd_step_is_torch_sgd_on_the_objective(nu):
    df = low_rank_ratings()
    u, i, r = triples(df, torch.float32)
    counts = rating_counts(u, i, N_USERS, N_ITEMS)
    a, b = factors().float(), factors().float()
    with torch.no_grad():
        for f in (a, b):
            f.b_u.normal_(generator=torch.Generator().manual_seed(3))
            f.b_i.normal_(generator=torch.Generator().manual_seed(4))
    opt = torch.optim.SGD(a.parameters(), lr=0.01)
    for batch in (slice(0, 20), slice(20, 50)):  # repeated users and items within a batch
        args = (u[batch], i[batch], r[batch], MU, REG, REG_B)
        loss = mf_objective(a, *args, nu=nu, counts=counts)
        opt.zero_grad()
        loss.backward()
        opt.step()
        got = sgd_step(b, *args, lr=0.01, nu=nu, counts=counts)
        assert got == pytest.approx(loss.item(), rel=1e-6)
    for x, y in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(x.detach(), y.detach())
    b.P.data[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="diverged"):
        sgd_step(b, u, i, r, MU, REG, REG_B, lr=0.01)


@pytest.mark.parametrize("kwargs, match", [
    ({"n_factors": 0}, "n_factors"), ({"solver": "newton"}, "solver"), ({"lr": 0.0}, "lr"),
    ({"reg": -1.0}, "reg"), ({"batch_size": 0}, "batch_size"), ({"patience": 0}, "patience"),
])
def test_biased_mf_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BiasedMF(N_USERS, N_ITEMS, **kwargs)


def test_biased_mf_solver_defaults():
    assert BiasedMF(N_USERS, N_ITEMS).config.schedule() == (45, 0.002)
    assert BiasedMF(N_USERS, N_ITEMS, solver="sgd").config.schedule() == (100, 0.005)
    assert BiasedMF(N_USERS, N_ITEMS, solver="als", n_epochs=3).config.schedule()[0] == 3


def test_models_reject_frames_missing_columns():
    df = low_rank_ratings()
    for model in (BiasedMF(N_USERS, N_ITEMS), BPR(N_USERS, N_ITEMS), IALS(N_USERS, N_ITEMS)):
        with pytest.raises(ValueError, match="train is missing"):
            model.fit(df.drop(columns=["item_idx"]))
    with pytest.raises(ValueError, match="train is missing.*rating"):
        BiasedMF(N_USERS, N_ITEMS).fit(df.drop(columns=["rating"]))
    with pytest.raises(ValueError, match="user_idx"):
        BiasedMF(N_USERS - 5, N_ITEMS).fit(df)


# ----------------------------------------------------------------------------- BPR


def test_bpr_loss_matches_loop_and_rendles_gradient():
    df = low_rank_ratings()
    u, pos = column(df, "user_idx"), column(df, "item_idx")
    neg = torch.randint(N_ITEMS, (len(u), 2), generator=torch.Generator().manual_seed(0))
    f = factors(user_bias=False)
    loss = bpr_loss(f, u, pos, neg, REG)
    P, Q, bi = (t.detach() for t in (f.P, f.Q, f.b_i))
    slow, grads = 0.0, [torch.zeros_like(t) for t in (P, Q, bi)]
    for uu, ii, jj in zip(u.tolist(), pos.tolist(), neg.tolist(), strict=True):
        for j in jj:
            x = P[uu] @ (Q[ii] - Q[j]) + bi[ii] - bi[j]
            slow += -F.logsigmoid(x) + REG / 2 * (P[uu] @ P[uu] + Q[ii] @ Q[ii] + Q[j] @ Q[j]
                                                  + bi[ii]**2 + bi[j]**2)
            g = torch.sigmoid(-x)  # LearnBPR: theta += lr (g dx/dtheta - reg theta)
            grads[0][uu] += -g * (Q[ii] - Q[j]) + REG * P[uu]
            grads[1][ii] += -g * P[uu] + REG * Q[ii]
            grads[1][j] += g * P[uu] + REG * Q[j]
            grads[2][ii] += -g + REG * bi[ii]
            grads[2][j] += g + REG * bi[j]
    assert loss.item() == pytest.approx(float(slow), rel=1e-12)
    loss.backward()
    for param, expected in zip((f.P, f.Q, f.b_i), grads, strict=True):
        torch.testing.assert_close(param.grad, expected)


def test_sample_negatives_avoids_positives_and_is_seeded():
    mask = torch.rand(5, 7, generator=torch.Generator().manual_seed(1)) < 0.7
    mask[:, 3] = False  # every user keeps at least one candidate
    users = torch.arange(5).repeat(200)
    draw = lambda: sample_negatives(users, 7, 3, mask, torch.Generator().manual_seed(2))  # noqa: E731
    neg = draw()
    assert neg.shape == (1000, 3) and not mask[users[:, None], neg].any()
    assert torch.equal(neg, draw())
    for user in range(5):  # every allowed item does get drawn
        assert set(neg[users == user].flatten().tolist()) == set(
            torch.nonzero(~mask[user]).flatten().tolist())
    mask[2] = True
    with pytest.raises(ValueError, match="no item"):
        sample_negatives(users, 7, 1, mask, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="n_negatives"):
        sample_negatives(users, 7, 0)


def test_sample_negatives_is_uniform_and_fast_for_a_user_who_has_seen_almost_everything():
    n_items = 1682
    mask = torch.ones(2, n_items, dtype=torch.bool)
    mask[0, [5, 900]] = False  # user 0: two unseen items; user 1: most items unseen
    mask[1, ::3] = False
    users = torch.zeros(4000, dtype=torch.long)
    t0 = time.perf_counter()
    neg = sample_negatives(users, n_items, 1, mask, torch.Generator().manual_seed(0))[:, 0]
    assert time.perf_counter() - t0 < 1.0  # plain rejection takes ~30 s for these draws
    assert set(neg.tolist()) == {5, 900}
    share = (neg == 5).float().mean().item()
    assert abs(share - 0.5) < 4 * (0.25 / 4000) ** 0.5  # uniform among the unseen, 4 sigma
    # the exact draw on its own: uniform over the free items of each row
    rows = mask[1].expand(30000, n_items)
    got = _draw_unseen(rows, torch.Generator().manual_seed(1))
    assert not rows[0, got].any()
    counts = torch.bincount(got, minlength=n_items)[~mask[1]].float()  # (561,) ~53 each
    assert counts.min() > 20 and counts.max() < 100


def test_sample_negatives_from_sparse_user_items_equals_the_dense_mask():
    n_items = 50
    mask = torch.rand(6, n_items, generator=torch.Generator().manual_seed(4)) < 0.5
    mask[5] = True
    mask[5, [7, 31]] = False  # a user left with two items: the exact draw runs too
    rows, cols = mask.nonzero(as_tuple=True)
    seen = UserItems.from_pairs(rows, cols, 6, n_items)
    users = torch.arange(6).repeat(300)
    for k in (1, 4):
        want = sample_negatives(users, n_items, k, mask, torch.Generator().manual_seed(5))
        got = sample_negatives(users, n_items, k, seen, torch.Generator().manual_seed(5))
        assert torch.equal(got, want) and not mask[users[:, None], got].any()
    with pytest.raises(ValueError, match="exclude must cover"):
        sample_negatives(users, n_items + 1, 1, seen)


def test_bpr_is_deterministic_and_restores_its_best_epoch():
    df = low_rank_ratings(density=0.5)
    df = df[df["rating"] >= 3]  # implicit positives
    train, valid = df.iloc[:-N_USERS], df.iloc[-N_USERS:].drop_duplicates("user_idx")
    kw = dict(n_factors=4, n_epochs=20, lr=0.05, batch_size=8, n_negatives=2, eval_every=1,
              metric="Recall@3")
    a = BPR(N_USERS, N_ITEMS, **kw).fit(train, valid)
    b = BPR(N_USERS, N_ITEMS, **kw).fit(train, valid)
    for key, value in a.factors_.state_dict().items():
        assert torch.equal(value, b.factors_.state_dict()[key])
    from recsys_ref.evaluation import evaluate_ranking

    final = evaluate_ranking(a, valid, train, ks=(3,))["Recall@3"]
    assert final == max(h["valid"] for h in a.history_)
    assert a.score(torch.tensor([0, 1])).shape == (2, N_ITEMS)
    with pytest.raises(ValueError, match="n_negatives"):
        BPR(N_USERS, N_ITEMS, n_negatives=0)


# ----------------------------------------------------------------------------- iALS

ALPHA0, LAM = 0.2, 0.05


def ials_problem(seed=0):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(N_USERS, N_ITEMS, generator=gen) < 0.3
    mask[0] = False  # a user without items
    W = torch.randn(N_USERS, D, generator=gen, dtype=torch.float64)
    H = torch.randn(N_ITEMS, D, generator=gen, dtype=torch.float64)
    return mask, W, H


def test_ials_step_matches_hu_et_al_weighted_ridge_per_user():
    mask, W, H = ials_problem()
    new = ials_step(W, H, mask, ALPHA0, LAM)
    for u in range(N_USERS):  # Hu et al.'s form: confidence c_ui, preference p_ui
        obs = mask[u].double()
        c = ALPHA0 + obs  # observed cells weigh 1 + alpha0, the others alpha0
        p = obs / c  # (1 - s)^2 + alpha0 s^2 = (1 + alpha0)(s - 1 / (1 + alpha0))^2 + const
        lam_u = LAM * (obs.sum() + ALPHA0 * N_ITEMS)
        A = H.T @ (c[:, None] * H) + lam_u * torch.eye(D, dtype=torch.float64)
        torch.testing.assert_close(new[u], torch.linalg.solve(A, H.T @ (c * p)))
    W.requires_grad_(True)
    before = ials_objective(W, H, mask, ALPHA0, LAM).item()
    W_new = new.clone().requires_grad_(True)
    loss = ials_objective(W_new, H, mask, ALPHA0, LAM)
    assert loss.item() < before
    loss.backward()
    torch.testing.assert_close(W_new.grad, torch.zeros_like(W_new), atol=1e-10, rtol=0)


def test_ials_step_short_rows_by_woodbury_equal_the_direct_solve():
    # 300 users, d = 16: blocks of short rows (L < d) take the Woodbury path, long ones not
    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(300, 200, generator=gen) < 0.06
    mask[0], mask[1, :150] = False, True  # a user without items, a long row
    W = torch.randn(300, 16, generator=gen, dtype=torch.float64) * 0.3
    H = torch.randn(200, 16, generator=gen, dtype=torch.float64) * 0.3
    want = torch.zeros_like(W)
    for u in range(1, 300):
        items = mask[u].nonzero()[:, 0]
        A = ALPHA0 * H.T @ H + H[items].T @ H[items]
        A += LAM * (len(items) + ALPHA0 * 200) * torch.eye(16, dtype=torch.float64)
        want[u] = torch.linalg.solve(A, H[items].sum(0))
    got = ials_step(W, H, mask, ALPHA0, LAM)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ials_step(W, H, as_pattern(mask), ALPHA0, LAM), got)
    lengths = mask.sum(1)
    assert (lengths[lengths > 0] < 16).sum() > 32 and (lengths >= 16).sum() >= 1  # both paths


def test_ials_and_bpr_fit_where_a_dense_user_item_matrix_could_not_exist():
    # 200,000 x 200,000 cells: a dense bool mask alone would take 40 GB
    n = 200_000
    gen = torch.Generator().manual_seed(1)
    df = pd.DataFrame({"user_idx": torch.randint(n, (3000,), generator=gen).numpy(),
                       "item_idx": torch.randint(n, (3000,), generator=gen).numpy()})
    df = df.drop_duplicates(["user_idx", "item_idx"])
    for solver in ("cholesky", "cg"):
        model = IALS(n, n, n_factors=4, n_epochs=2, solver=solver).fit(df)
        assert torch.isfinite(model.score(torch.tensor([int(df.user_idx.iloc[0])]))).all()
    model = BPR(n, n, n_factors=4, n_epochs=1).fit(df)
    assert torch.isfinite(model.factors_.P).all()


def test_ials_loss_is_the_dense_objective():
    mask, W, H = ials_problem(2)
    for nu in (0.0, 1.0):
        want = ials_objective(W, H, mask, ALPHA0, LAM, nu)
        torch.testing.assert_close(ials_loss(W, H, mask, ALPHA0, LAM, nu), want)
        torch.testing.assert_close(ials_loss(W, H, as_pattern(mask), ALPHA0, LAM, nu), want)


def test_ials_conjugate_gradient_converges_to_cholesky():
    mask, W, H = ials_problem(1)
    exact = ials_step(H, W, mask.T, ALPHA0, LAM)  # the item side
    approx = ials_step(H, W, mask.T, ALPHA0, LAM, solver="cg", cg_steps=D)
    torch.testing.assert_close(approx, exact)  # CG is exact after d steps (in exact arithmetic)
    one = ials_step(H, W, mask.T, ALPHA0, LAM, solver="cg", cg_steps=1)
    obj = [ials_objective(W, h, mask, ALPHA0, LAM).item() for h in (H, one, exact)]
    assert obj[0] > obj[1] > obj[2]


@pytest.mark.parametrize("solver", ["cholesky", "cg"])
def test_ials_fit_decreases_objective_is_deterministic_and_validates(solver):
    df = low_rank_ratings(density=0.5)
    train, valid = df.iloc[:-N_USERS], df.iloc[-N_USERS:].drop_duplicates("user_idx")
    kw = dict(n_factors=3, n_epochs=6, reg=0.01, alpha0=0.1, patience=None, metric="NDCG@5",
              solver=solver)
    a = IALS(N_USERS, N_ITEMS, **kw).fit(train)
    losses = [h["loss"] for h in a.history_]
    assert all(x >= y - 1e-6 for x, y in zip(losses, losses[1:], strict=False))
    b = IALS(N_USERS, N_ITEMS, **kw).fit(train)
    assert torch.equal(a.factors_.P, b.factors_.P) and torch.equal(a.factors_.Q, b.factors_.Q)
    c = IALS(N_USERS, N_ITEMS, **kw).fit(train, valid)
    assert c.best_epoch_ is not None
    for kwargs, match in [({"n_factors": 0}, "n_factors"), ({"solver": "lu"}, "solver"),
                          ({"alpha0": -1.0}, "alpha0"), ({"reg": 0.0, "alpha0": 0.0}, "both")]:
        with pytest.raises(ValueError, match=match):
            IALS(N_USERS, N_ITEMS, **kwargs)



def test_bpr_bad_optimizer():
    with pytest.raises(ValueError, match="optimizer"):
        BPR(N_USERS, N_ITEMS, optimizer="lbfgs")
