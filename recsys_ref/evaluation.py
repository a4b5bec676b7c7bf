"""Evaluation protocols, written once for every model of the book.

* :func:`evaluate_ranking` - full ranking (the default): every item the user has not
  interacted with in the excluded frames is a candidate; metrics are averaged over users with
  at least one test item.
* :func:`evaluate_sampled` - the NCF protocol (He et al. 2017): the test item is ranked
  against ``n_negatives`` sampled unseen items. Use it only to compare with papers that did.
  Krichene and Rendle (2020) show that sampled metrics are inconsistent with full ranking:
  they can reverse the order of two models, so never choose a model by them.
* :func:`evaluate_ratings` and :func:`cross_validate` - RMSE/MAE of rating prediction, the
  latter over the canonical MovieLens-100K folds u1..u5 (mean and std over folds).

See the chapter "Introduction and data".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from recsys_ref import metrics
from recsys_ref.checks import check_frame, check_index, check_k, check_positive_int
from recsys_ref.matrix import UserItems, column
from recsys_ref.models.base import Recommender
from recsys_ref.splits import k_fold, u_fold


def _model_name(model) -> str:
    return type(model).__name__


def _scores(model, users: torch.Tensor) -> torch.Tensor:
    """``model.score(users)`` checked: shape ``(len(users), n_items)``, finite floats."""
    scores = model.score(users)
    if not isinstance(scores, torch.Tensor) or scores.shape != (len(users), model.n_items):
        got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"{_model_name(model)}.score must return ({len(users)}, "
                         f"{model.n_items}) scores, got {got}")
    metrics.check_scores(scores, f"{_model_name(model)}.score")
    return scores.float()


def evaluate_ranking(
    model: Recommender,
    test: pd.DataFrame,
    exclude: pd.DataFrame | Sequence[pd.DataFrame],
    ks: Iterable[int] = (10,),
    batch_size: int = 512,
    per_user: bool = False,
):
    """Full-ranking top-K evaluation.

    Protocol: for each user with at least one item in ``test``, rank *all* items except those
    in ``exclude`` (the training interactions, plus the validation ones when testing), and
    compare the top K with the user's test items. Metrics are averaged over those users.
    Ties follow the book's one rule (:func:`recsys_ref.metrics.rank_order`): a test item tied
    with other candidates is ranked after them, so a constant or broken scorer cannot look
    good; non-finite scores raise ``ValueError`` naming the model.

    Args:
        model: a fitted model with ``score``.
        test: frame with ``user_idx, item_idx`` of the held-out interactions.
        exclude: frame(s) of interactions the user already had; masked before ranking.
        ks: list lengths; each gives ``HR@k, Precision@k, Recall@k, NDCG@k, MAP@k`` and
            ``Coverage@k`` (fraction of the catalogue recommended to anyone, from the lists
            a user would see: ties by item index).
        batch_size: users scored at once; memory is ``O(batch_size x n_items)`` plus the
            interactions themselves (no ``(n_users, n_items)`` array is built): a few
            float32 and bool ``(batch_size, n_items)`` blocks, about
            ``12 x batch_size x n_items`` bytes (0.3 GB for 512 users x 50,000 items).
        per_user: also return a frame with one row per evaluated user.

    Returns:
        A dict ``{"HR@10": ..., "NDCG@10": ..., "MRR": ..., ...}`` of floats (and the per-user
        frame if ``per_user``). ``MRR`` is over the full ranking.
    """
    n_users, n_items = model.n_users, model.n_items
    ks = [check_k(k, n_items, "ks") for k in ks]
    if not ks:
        raise ValueError("ks must name at least one list length")
    batch_size = check_positive_int(batch_size, "batch_size")
    check_frame(test, "test", ["user_idx", "item_idx"])
    relevant = UserItems(test, n_users, n_items, "test")
    seen = UserItems(exclude, n_users, n_items, "exclude")
    users = torch.nonzero(relevant.counts() > 0).squeeze(1)
    kmax = max(ks)
    # outputs allocated once, before the loop: small per-batch results kept alive between
    # the large transient blocks would fragment the heap and grow memory with every batch
    n_eval = len(users)
    hits_all = torch.zeros(n_eval, kmax, dtype=torch.bool)  # hits in rank order
    top = torch.zeros(n_eval, kmax, dtype=torch.long)  # the lists users would see
    first_rank = torch.zeros(n_eval, dtype=torch.long)  # 1-based rank of the first hit
    n_rel = torch.zeros(n_eval, dtype=torch.long)
    test_rows, test_items = relevant.entries(users)  # (n_test,) each
    if seen.contains(users[test_rows], test_items).any():
        raise ValueError("test shares (user, item) pairs with exclude: they would be masked")
    minus_inf = torch.tensor(float("-inf"))
    # per batch, a few passes over the (b, n_items) scores and the rest on the sparse entries
    # (the passes, not the arithmetic, are what evaluation costs on large catalogues)
    for start in range(0, n_eval, batch_size):
        u = users[start:start + batch_size]
        out_rows = slice(start, start + len(u))
        rel = relevant.rows(u)  # (b, n_items) bool
        # a copy of the model's scores with the excluded items at -inf
        scores = _scores(model, u).index_put(seen.entries(u), minus_inf)  # (b, n_items)
        # the two lists (ties against relevance for the metrics, by item index as a user
        # would see them) from one top-k selection, not a sort
        ranked, top[out_rows] = metrics.top_k_lists(scores, (rel, None), kmax)  # (b, kmax)
        hits_all[out_rows] = rel.gather(1, ranked)
        # rank of the first hit under the tie rule: items scoring above the best relevant
        # item, plus the non-relevant ones tied with it, come first
        r_rel, c_rel = relevant.entries(u)  # repeated test pairs count once:
        keys = torch.unique(r_rel * n_items + c_rel)
        r_rel, c_rel = keys // n_items, keys % n_items  # (nnz_b,) distinct relevant pairs
        s_rel = scores[r_rel, c_rel]  # (nnz_b,)
        best = torch.full((len(u),), float("-inf")).scatter_reduce(0, r_rel, s_rel, "amax")
        tied_relevant = torch.bincount(r_rel[s_rel == best[r_rel]], minlength=len(u))  # (b,)
        # (bool -> float32 sums: exact below 2**24 items, and far faster than bool sums)
        at_least = (scores >= best[:, None]).float().sum(1)  # (b,)
        first_rank[out_rows] = 1 + at_least.long() - tied_relevant
        n_rel[out_rows] = torch.bincount(r_rel, minlength=len(u))
        del scores, rel, ranked, best, at_least
    rows = {"user_idx": users.numpy(), "MRR": (1.0 / first_rank.float()).numpy()}
    out = {}
    for k in ks:
        hits = hits_all[:, :k]
        rows[f"HR@{k}"] = metrics.hit_rate(hits).numpy()
        rows[f"Precision@{k}"] = metrics.precision(hits).numpy()
        rows[f"Recall@{k}"] = metrics.recall(hits, n_rel).numpy()
        rows[f"NDCG@{k}"] = metrics.ndcg(hits, n_rel).numpy()
        rows[f"MAP@{k}"] = metrics.average_precision(hits, n_rel).numpy()
        out[f"Coverage@{k}"] = metrics.coverage(top[:, :k], n_items)
    frame = pd.DataFrame(rows)
    out = {c: float(frame[c].mean()) for c in frame.columns if c != "user_idx"} | out
    out["n_users"] = len(users)
    return (out, frame) if per_user else out


def evaluate_sampled(
    model: Recommender,
    test: pd.DataFrame,
    exclude: pd.DataFrame | Sequence[pd.DataFrame],
    n_negatives: int = 100,
    ks: Iterable[int] = (10,),
    seed: int = 0,
    batch_size: int = 512,
):
    """Sampled-negatives evaluation (the NCF protocol), for comparison with papers only.

    Each test pair ``(u, i)`` is ranked against ``n_negatives`` items drawn uniformly, without
    replacement, from the items ``u`` never interacted with (in ``exclude`` or ``test``).
    Krichene and Rendle (2020), "On sampled metrics for item recommendation": these metrics
    are biased estimates of their full-ranking versions and can change which model wins.
    Ties follow the book's rule (:func:`recsys_ref.metrics.rank_order`): a negative tied with
    the test item is ranked before it.

    Returns:
        ``{"HR@k": ..., "NDCG@k": ...}`` averaged over test pairs.
    """
    n_users, n_items = model.n_users, model.n_items
    n_negatives = check_positive_int(n_negatives, "n_negatives")
    batch_size = check_positive_int(batch_size, "batch_size")
    ks = [check_k(k, n_negatives + 1, "ks") for k in ks]
    check_frame(test, "test", ["user_idx", "item_idx"])
    known = UserItems([*([exclude] if isinstance(exclude, pd.DataFrame) else exclude), test],
                      n_users, n_items, "exclude and test")
    u, i = column(test, "user_idx"), column(test, "item_idx")
    gen = torch.Generator().manual_seed(seed)
    ranks = []
    for s in range(0, len(u), batch_size):
        ub, ib = u[s:s + batch_size], i[s:s + batch_size]
        # random keys; seen items get +inf so the n_negatives smallest keys are unseen items
        mask = known.rows(ub)  # (b, n_items)
        if int((~mask).sum(1).min()) < n_negatives:
            raise ValueError(f"n_negatives={n_negatives} exceeds the "
                             f"{int((~mask).sum(1).min())} unseen items of some test user")
        keys = torch.rand(len(ub), n_items, generator=gen).masked_fill(mask, float("inf"))
        negatives = keys.topk(n_negatives, dim=1, largest=False).indices  # (b, n_neg)
        candidates = torch.cat([ib[:, None], negatives], dim=1)  # test item in column 0
        scores = _scores(model, ub).gather(1, candidates)  # (b, 1 + n_neg)
        # the tie rule: negatives tied with the test item are ranked before it
        ranks.append(1 + (scores[:, 1:] >= scores[:, :1]).sum(1))
    rank = torch.cat(ranks)  # (n_test,)
    out = {}
    for k in ks:
        hits = torch.arange(1, k + 1)[None, :] == rank[:, None]  # (n_test, k)
        ones = torch.ones(len(u), dtype=torch.long)
        out[f"HR@{k}"] = float(metrics.hit_rate(hits).mean())
        out[f"NDCG@{k}"] = float(metrics.ndcg(hits, ones).mean())
    return out


def evaluate_ratings(model: Recommender, test: pd.DataFrame) -> dict[str, float]:
    """RMSE and MAE of ``model.predict`` on the ``(user_idx, item_idx, rating)`` rows."""
    check_frame(test, "test", ["user_idx", "item_idx", "rating"])
    check_index(test["user_idx"].to_numpy(), "test.user_idx", model.n_users)
    check_index(test["item_idx"].to_numpy(), "test.item_idx", model.n_items)
    pred = model.predict(column(test, "user_idx"), column(test, "item_idx"))
    metrics.check_scores(pred, f"{_model_name(model)}.predict")
    target = column(test, "rating", torch.float32)
    return {"RMSE": metrics.rmse(pred, target), "MAE": metrics.mae(pred, target)}


def cross_validate(
    make_model: Callable[[], Recommender],
    ratings: pd.DataFrame,
    folds: Iterable[int] = (1, 2, 3, 4, 5),
    k: int | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Rating prediction over the canonical folds u1..u5 of MovieLens-100K, or over seeded
    k folds of any ratings frame (:func:`recsys_ref.splits.k_fold`).

    Args:
        make_model: returns a fresh, unfitted model (called once per fold).
        ratings: the 100,000 ratings in ``u.data`` order (u-folds), or any frame (``k``).
        folds: which of u1..u5 to run (ignored when ``k`` is given).
        k: run ``k`` seeded random folds instead of the u-folds.
        seed: the seed of the k folds.

    Returns:
        A frame with one row per fold (``fold, RMSE, MAE``); ``summarize_folds`` adds mean/std.
    """
    if k is not None:
        splits = [(f"k{j + 1}", *pair) for j, pair in enumerate(k_fold(ratings, k, seed))]
    else:
        splits = [(f"u{fold}", *u_fold(ratings, fold)) for fold in folds]
    rows = []
    for name, train, test in splits:
        model = make_model().fit(train)
        rows.append({"fold": name} | evaluate_ratings(model, test))
    return pd.DataFrame(rows)


def summarize_folds(frame: pd.DataFrame) -> dict[str, float]:
    """Mean and (sample) standard deviation of each metric column of a ``cross_validate`` frame."""
    cols = [c for c in frame.columns if c != "fold"]
    out = {f"{c} mean": float(frame[c].mean()) for c in cols}
    out |= {f"{c} std": float(frame[c].std(ddof=1)) if len(frame) > 1 else float("nan")
            for c in cols}
    return out



def bootstrap_ci(values, n_resamples: int = 1000, alpha: float = 0.05, seed: int = 0):
    """Percentile bootstrap confidence interval of a mean (e.g. of per-user NDCG).

    Args:
        values: 1-D array-like of per-unit values (users, rounds, impressions).
        n_resamples: bootstrap resamples.
        alpha: 1 - confidence level.
        seed: seed of the resampling.

    Returns:
        ``(mean, low, high)`` as floats.
    """
    x = torch.as_tensor(np.asarray(values, dtype=np.float64))
    if x.dim() != 1 or len(x) == 0:
        raise ValueError(f"values must be a non-empty 1-D array, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("values must be finite (no NaN or inf)")
    n_resamples = check_positive_int(n_resamples, "n_resamples")
    seed = check_positive_int(seed, "seed", minimum=0)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(x), (n_resamples, len(x)), generator=gen)
    means = x[idx].mean(1)  # (n_resamples,)
    low, high = torch.quantile(means, torch.tensor([alpha / 2, 1 - alpha / 2], dtype=x.dtype))
    return float(x.mean()), float(low), float(high)


def t_interval(values, alpha: float = 0.05):
    """Mean and Student-t confidence interval of a mean, e.g. of paired differences over a
    few seeds (where a bootstrap over 5 values would be too coarse).

    Args:
        values: 1-D array-like with at least 2 finite values.
        alpha: 1 - confidence level.

    Returns:
        ``(mean, low, high)`` as floats. See the chapter "The unified loop".
    """
    from scipy import stats  # the standard t quantiles

    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or len(x) < 2 or not np.isfinite(x).all():
        raise ValueError(f"values must be a 1-D array of >= 2 finite numbers, got {x.shape}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    half = stats.t.ppf(1 - alpha / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return float(x.mean()), float(x.mean() - half), float(x.mean() + half)


def bootstrap_p_value(resampled) -> float:
    """Two-sided bootstrap p-value of "the statistic is 0" from its resampled values.

    ``2 min(P(stat <= 0), P(stat >= 0))`` over the resamples, capped at 1; its resolution is
    ``1 / len(resampled)``, so use enough resamples for the smallest level you test (e.g. a
    Holm correction over 8 comparisons tests at 0.05 / 8).

    Args:
        resampled: 1-D array-like of the statistic over bootstrap resamples.
    """
    x = np.asarray(resampled, dtype=np.float64)
    if x.ndim != 1 or len(x) == 0 or not np.isfinite(x).all():
        raise ValueError("resampled must be a non-empty 1-D array of finite values")
    return float(min(1.0, 2 * min((x <= 0).mean(), (x >= 0).mean())))


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values, for several comparisons made at once.

    The comparison with the ``j``-th smallest of ``m`` p-values is significant at level
    ``alpha`` when every adjusted value up to it is ``<= alpha``; this controls the chance of
    any false "beats" among the ``m`` at ``alpha`` (Holm 1979).

    Args:
        p_values: 1-D array-like of p-values in [0, 1].

    Returns:
        ``(m,)`` adjusted p-values in the input order. See the chapter "Active selection".
    """
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1 or len(p) == 0 or not ((p >= 0) & (p <= 1)).all():
        raise ValueError("p_values must be a non-empty 1-D array of values in [0, 1]")
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out


def _paired_gap(a, b, n, groups, root, n_resamples, alpha, seed):
    """Mean over groups of stat(a) - stat(b), stat = (sum x / sum n) ** (1/2 if root else 1)
    over a group's units; the interval resamples units within each group."""
    a, b, m = (np.asarray(x, dtype=np.float64) for x in (a, b, n))
    g = np.asarray(groups)
    if not (a.shape == b.shape == m.shape == g.shape) or a.ndim != 1 or len(a) == 0:
        raise ValueError("the per-unit values, weights and groups must be 1-D arrays of one "
                         "length")
    if not (np.isfinite(a).all() and np.isfinite(b).all() and (m > 0).all()):
        raise ValueError("the per-unit values must be finite and the weights positive")
    n_resamples = check_positive_int(n_resamples, "n_resamples")
    rng = np.random.default_rng(check_positive_int(seed, "seed", minimum=0))
    stat = np.sqrt if root else (lambda x: x)
    point, boot = [], np.zeros(n_resamples)
    labels = np.unique(g)
    for label in labels:
        ga, gb, gm = a[g == label], b[g == label], m[g == label]
        point.append(stat(ga.sum() / gm.sum()) - stat(gb.sum() / gm.sum()))
        idx = rng.integers(0, len(ga), (n_resamples, len(ga)))  # (B, units in the group)
        boot += stat(ga[idx].sum(1) / gm[idx].sum(1)) - stat(gb[idx].sum(1) / gm[idx].sum(1))
    boot /= len(labels)
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return float(np.mean(point)), float(low), float(high)


def paired_rmse_gap(sse_a, sse_b, n, groups, n_resamples: int = 1000, alpha: float = 0.05,
                    seed: int = 0):
    """RMSE(a) - RMSE(b) averaged over groups (e.g. seeds), with a bootstrap interval that
    resamples the units (e.g. users) within each group.

    Per group the RMSE of each model is ``sqrt(sum sse / sum n)`` over its units; the point
    estimate is the mean over groups of the per-group difference, and each resample draws
    every group's units with replacement, so the interval pools the evidence of all groups
    instead of reading a sign off a handful of group means.

    Args:
        sse_a, sse_b: ``(units,)`` sums of squared errors of the two models per unit.
        n: ``(units,)`` number of ratings per unit (the same for both models).
        groups: ``(units,)`` group label of each unit.
        n_resamples, alpha, seed: as for :func:`bootstrap_ci`.

    Returns:
        ``(gap, low, high)`` as floats; negative means ``a`` has the lower error.
        See the chapter "Few-shot recommendation".
    """
    return _paired_gap(sse_a, sse_b, n, groups, True, n_resamples, alpha, seed)


def paired_mean_gap(a, b, groups, n_resamples: int = 1000, alpha: float = 0.05,
                    seed: int = 0):
    """Like :func:`paired_rmse_gap` for a per-unit metric (e.g. a user's NDCG): the mean over
    groups of ``mean(a) - mean(b)``, units resampled within each group.

    Returns:
        ``(gap, low, high)`` as floats. See the chapter "Few-shot recommendation".
    """
    ones = np.ones(len(np.asarray(a)))
    return _paired_gap(a, b, ones, groups, False, n_resamples, alpha, seed)
