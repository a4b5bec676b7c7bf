r"""Cold-start user protocols: meta-train/meta-test users, K-shot support and query sets, and
the metrics computed on the query set.

Two protocols (see the chapter "Few-shot recommendation"):

* :func:`cold_user_split` (the book's): users are split at random (seeded) into meta-train
  and meta-test users. A meta-test user's first ``k`` ratings *in time* are the support set
  (what the system has seen of the new user) and the later ones the query set. Passing
  ``query_start`` (e.g. the largest K of a curve) keeps the query set the same for every K.
* :func:`metarec_split` (RecBole-MetaRec's ML-100K setting): users with 13 to 100 ratings,
  split 8:1:1 into train/valid/test tasks; per test user 10 random ratings are the query set
  and all the others the support set. Its :func:`metarec_metrics` rank the 10 query items.

Metrics on the query set: RMSE/MAE, :func:`query_ndcg` (the query items ranked by predicted
rating, graded by the true rating), and :func:`full_ranking_ndcg` (every item not in the
support set ranked; relevant = query items rated ``>= threshold``, 4 by default).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from recsys_ref import metrics
from recsys_ref.checks import check_frame, check_k, check_positive_int, index_tensor
from recsys_ref.matrix import column

COLUMNS = ["user_idx", "item_idx", "rating", "timestamp"]


@dataclass
class FewShotSplit:
    """Ratings of meta-train users, and support/query sets of meta-test (and valid) users.

    Attributes:
        train: every rating of the meta-train users (the data a model is fitted on).
        support: the meta-test users' support ratings.
        query: the meta-test users' query ratings.
        valid_support: the validation users' support ratings (``None`` without them).
        valid_query: the validation users' query ratings (``None`` without them).
    """

    train: pd.DataFrame
    support: pd.DataFrame
    query: pd.DataFrame
    valid_support: pd.DataFrame | None = None
    valid_query: pd.DataFrame | None = None

    @property
    def test_users(self) -> np.ndarray:
        """Sorted meta-test users (those with a query set)."""
        return np.unique(self.query["user_idx"].to_numpy())


def _partition(users: np.ndarray, fractions, seed: int) -> list[np.ndarray]:
    """Shuffle ``users`` (seeded) and cut them by ``fractions`` (train last takes the rest)."""
    perm = np.random.default_rng(seed).permutation(users)
    sizes = [round(f * len(users)) for f in fractions]
    cuts = np.cumsum(sizes)
    return [np.sort(part) for part in np.split(perm, cuts)]


def _check_fraction(value, name: str, allow_zero: bool = False) -> float:
    if not (0 <= value < 1 if allow_zero else 0 < value < 1):
        raise ValueError(f"{name} must be in {'[0' if allow_zero else '(0'}, 1), got {value}")
    return float(value)


def cold_user_split(ratings: pd.DataFrame, k: int, test_frac: float = 0.2,
                    valid_frac: float = 0.0, seed: int = 0, query_start: int | None = None,
                    ) -> FewShotSplit:
    """Meta-train/meta-test users; each meta-test user's first ``k`` ratings in time as support.

    The user partition depends on ``seed``, ``test_frac`` and ``valid_frac`` only, so every
    ``k`` sees the same meta-test users. Ratings with equal timestamps keep their frame order
    (a stable sort, as in :func:`recsys_ref.splits.leave_last_out`).

    Args:
        ratings: ``user_idx, item_idx, rating, timestamp``.
        k: support size K, ``>= 1``.
        test_frac, valid_frac: fractions of users held out as meta-test and validation users.
        seed: seeds the user partition.
        query_start: the query set is each user's ratings from position ``query_start`` on
            (0-based, in time); ``None`` means ``k``. Users with ``query_start`` ratings or
            fewer have no query set and are left out of meta-test and validation.

    Returns:
        A :class:`FewShotSplit`. See the chapter "Few-shot recommendation".
    """
    check_frame(ratings, "ratings", COLUMNS)
    k = check_positive_int(k, "k")
    query_start = k if query_start is None else check_positive_int(query_start, "query_start")
    if query_start < k:
        raise ValueError(f"query_start must be >= k ({k}), got {query_start}")
    test_frac = _check_fraction(test_frac, "test_frac")
    valid_frac = _check_fraction(valid_frac, "valid_frac", allow_zero=True)
    if test_frac + valid_frac >= 1:
        raise ValueError("test_frac + valid_frac must be < 1: no meta-train users left")
    test, valid, train = _partition(ratings["user_idx"].unique(), (test_frac, valid_frac), seed)
    order = ratings.sort_values(["user_idx", "timestamp"], kind="stable")
    pos = order.groupby("user_idx").cumcount().to_numpy()  # position in time, per user
    n = order.groupby("user_idx")["item_idx"].transform("size").to_numpy()
    has_query = n > query_start

    def support_query(users):
        rows = order["user_idx"].isin(users).to_numpy() & has_query
        return order[rows & (pos < k)], order[rows & (pos >= query_start)]

    support, query = support_query(test)
    v_support, v_query = support_query(valid) if len(valid) else (None, None)
    if len(train) == 0 or len(query) == 0:
        raise ValueError(f"cold_user_split(k={k}, query_start={query_start}, test_frac="
                         f"{test_frac}) leaves {len(train)} meta-train users and {len(query)} "
                         f"query ratings: lower k or query_start, or raise test_frac")
    return FewShotSplit(ratings[ratings["user_idx"].isin(train)], support, query,
                        v_support, v_query)


def metarec_split(ratings: pd.DataFrame, n_query: int = 10, min_ratings: int = 13,
                  max_ratings: int = 100, fractions: tuple[float, float] = (0.1, 0.1),
                  seed: int = 0) -> FewShotSplit:
    """RecBole-MetaRec's task split of MovieLens-100K (``user_inter_num_interval: [13,100]``,
    ``split RS [0.8,0.1,0.1]`` by task, ``query_num: 10``, ``support_num: none``).

    Users with ``min_ratings`` to ``max_ratings`` ratings (inclusive) are kept and split into
    test, valid and train users (``fractions`` gives the first two). For every test and valid
    user, ``n_query`` ratings drawn uniformly at random (seeded) form the query set, *in the
    drawn order*, and all the others the support set. The query order breaks ties in
    :func:`metarec_metrics`, as the order of RecBole's draw does.

    Returns:
        A :class:`FewShotSplit` whose ``train`` holds every rating of the train users.
        See the chapter "Few-shot recommendation".
    """
    check_frame(ratings, "ratings", ["user_idx", "item_idx", "rating"])
    n_query = check_positive_int(n_query, "n_query")
    min_ratings = check_positive_int(min_ratings, "min_ratings", minimum=n_query + 1)
    max_ratings = check_positive_int(max_ratings, "max_ratings", minimum=min_ratings)
    for j, f in enumerate(fractions):
        _check_fraction(f, f"fractions[{j}]")
    if len(fractions) != 2 or sum(fractions) >= 1:
        raise ValueError(f"fractions must be (test, valid) summing to < 1, got {fractions}")
    counts = ratings.groupby("user_idx").size()
    kept = counts.index[(counts >= min_ratings) & (counts <= max_ratings)].to_numpy()
    if len(kept) < 3:
        raise ValueError(f"only {len(kept)} users have {min_ratings}..{max_ratings} ratings")
    test, valid, train = _partition(kept, fractions, seed)
    rng = np.random.default_rng(seed + 1)

    def support_query(users):
        sup, qry = [], []
        for _, g in ratings[ratings["user_idx"].isin(users)].groupby("user_idx", sort=True):
            perm = rng.permutation(len(g))
            qry.append(g.iloc[perm[:n_query]])
            sup.append(g.iloc[np.sort(perm[n_query:])])
        return pd.concat(sup), pd.concat(qry)

    support, query = support_query(test)
    v_support, v_query = support_query(valid)
    return FewShotSplit(ratings[ratings["user_idx"].isin(train)], support, query,
                        v_support, v_query)


# ----------------------------------------------------------------------------- metrics


def pad_by_user(users: np.ndarray, *columns: np.ndarray):
    """Group rows by user (first appearance order within a user kept) into padded matrices.

    Returns:
        ``(user_ids (m,), mask (m, L), col1 (m, L), ...)`` as tensors; padding is 0/False.
    """
    users = np.asarray(users)
    order = np.argsort(users, kind="stable")
    ids, counts = np.unique(users, return_counts=True)
    pos = np.arange(len(users)) - np.repeat(np.cumsum(counts) - counts, counts)  # in-group
    row = np.repeat(np.arange(len(ids)), counts)
    mask = torch.zeros(len(ids), int(counts.max()), dtype=torch.bool)
    mask[row, pos] = True
    out = []
    for c in columns:
        m = torch.zeros(mask.shape, dtype=torch.float64)
        m[row, pos] = torch.as_tensor(np.asarray(c, dtype=np.float64)[order])
        out.append(m)
    return (torch.as_tensor(ids), mask, *out)


def _discount(n: int) -> torch.Tensor:
    return 1.0 / torch.log2(torch.arange(2, n + 2, dtype=torch.float64))  # (n,)


def _by_user(query: pd.DataFrame, prediction, k: int):
    """Checked ``k`` and the ``(m, L)`` mask, predictions and true ratings, one row per user."""
    check_frame(query, "query", ["user_idx", "rating"])
    k = check_positive_int(k, "k")
    prediction = np.asarray(prediction, dtype=np.float64)
    if prediction.shape != (len(query),):
        raise ValueError(f"prediction must have shape ({len(query)},), got {prediction.shape}")
    if not np.isfinite(prediction).all():
        raise ValueError("prediction has non-finite values: the model diverged or was not "
                         "trained")
    _, mask, pred, label = pad_by_user(query["user_idx"].to_numpy(), prediction,
                                       query["rating"].to_numpy())
    return k, mask, pred, label


def query_ndcg(query: pd.DataFrame, prediction, k: int = 10) -> torch.Tensor:
    r"""Per-user NDCG@k of the query items ranked by predicted rating, graded by true rating.

    .. math::
        \mathrm{NDCG@}k = \frac{\sum_{j=1}^{k} r_{u,\pi(j)} / \log_2(j + 1)}
        {\sum_{j=1}^{k} r_{u,\pi^*(j)} / \log_2(j + 1)}

    with :math:`\pi` the order by prediction, :math:`\pi^*` the order by true rating and the
    rating itself as the gain (scikit-learn's ``ndcg_score`` convention). Ties between
    predictions follow the book's rule (:func:`recsys_ref.metrics.rank_order`): the lower true
    rating first, so a constant predictor gets the worst order, never a lucky one.

    Args:
        query: ``user_idx, rating`` of the query rows.
        prediction: ``(n,)`` predicted ratings (or scores) of the rows, finite.
        k: cut-off.

    Returns:
        ``(n_users,)`` float, users in sorted order. See the chapter "Few-shot recommendation".
    """
    k, mask, pred, gain = _by_user(query, prediction, k)
    pred = pred.masked_fill(~mask, float("-inf"))  # (m, L) padding ranks last
    kk = min(k, mask.shape[1])
    top = metrics.rank_order(pred, gain)[:, :kk]  # (m, kk)
    disc = _discount(kk)
    dcg = (gain.gather(1, top) * disc).sum(1)
    idcg = (gain.sort(dim=1, descending=True).values[:, :kk] * disc).sum(1)
    return (dcg / idcg).float()


def full_ranking_ndcg(scores: torch.Tensor, users, support: pd.DataFrame, query: pd.DataFrame,
                      k: int = 10, threshold: float | None = 4.0) -> torch.Tensor:
    """Per-user NDCG@k over every item the user has not rated in the support set.

    Ties between scores follow the book's rule (:func:`recsys_ref.metrics.rank_order`): a
    relevant item tied with others is ranked after them.

    Args:
        scores: ``(m, n_items)`` scores of the users ``users`` (``(m,)``); ``-inf`` marks
            items that are not candidates, NaN and ``+inf`` are errors.
        support: the users' support ratings (masked before ranking).
        query: the users' query ratings; the relevant items are those rated
            ``>= threshold`` (``None``: every query item).
        k: cut-off, ``1 <= k <= n_items``.

    Returns:
        ``(m_eval,)`` binary-gain NDCG of the users with at least one relevant item (in
        ``users`` order). See the chapter "Few-shot recommendation".
    """
    check_frame(query, "query", ["user_idx", "item_idx", "rating"])
    users = index_tensor(users, "users", np.iinfo(np.int64).max)
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2 or len(scores) != len(users):
        raise ValueError(f"scores must be ({len(users)}, n_items), got "
                         f"{tuple(getattr(scores, 'shape', ()))}")
    k = check_k(k, scores.shape[1])
    metrics.check_scores(scores, "scores", allow_minus_inf=True)
    row = {int(u): j for j, u in enumerate(users)}
    relevant = torch.zeros(scores.shape, dtype=torch.bool)
    rel = query if threshold is None else query[query["rating"] >= threshold]
    if not set(query["user_idx"].unique()) <= set(row):
        raise ValueError("query has users that are not in users")
    relevant[[row[u] for u in rel["user_idx"]], column(rel, "item_idx")] = True
    scores = scores.float().clone()
    sup = support[support["user_idx"].isin(row)]
    scores[[row[u] for u in sup["user_idx"]], column(sup, "item_idx")] = float("-inf")
    keep = relevant.any(1)
    top = metrics.rank_order(scores[keep], relevant[keep], k=k)  # (m_eval, k) item indices
    hits = relevant[keep].gather(1, top)
    return metrics.ndcg(hits, relevant[keep].sum(1))


def metarec_metrics(query: pd.DataFrame, prediction, k: int = 5) -> dict[str, float]:
    """RecBole-MetaRec's Precision@k and nDCG@k within each user's query items.

    Its ``MetaCollector.eval_collect`` marks as relevant the ``k`` query items with the
    highest *true* rating (``torch.topk`` of the labels), ranks the query items by
    prediction and scores the top ``k`` with binary gains and ``k`` relevant items. With 10
    query items and ``k = 5`` half the items are relevant, so a random ranking scores 0.5 on
    both metrics in expectation (and Recall@5 equals Precision@5, HR@5 is always 1). Ties
    between true ratings (integers) are broken by query order, i.e. at random; ties between
    predictions follow the book's rule (:func:`recsys_ref.metrics.rank_order`: relevant items
    last), so a tied predictor (popularity counts, ratings clipped at 5) never gains from a
    tie.

    Args:
        query: ``user_idx, rating`` of the query rows, in the drawn order.
        prediction: ``(n,)`` predicted ratings, finite.
        k: the cut-off and the number of relevant items per user.

    Returns:
        ``{"Precision@k": ..., "NDCG@k": ..., "n_users": ...}``, averaged over users.
        See the chapter "Few-shot recommendation".
    """
    k, mask, pred, label = _by_user(query, prediction, k)
    if (mask.sum(1) < k).any():
        raise ValueError(f"every user needs at least k={k} query items")
    inf = torch.tensor(float("-inf"), dtype=torch.float64)
    rel_idx = torch.sort(torch.where(mask, label, inf), dim=1, descending=True,
                         stable=True).indices[:, :k]
    relevant = torch.zeros(mask.shape, dtype=torch.bool).scatter(1, rel_idx, True)
    top = metrics.rank_order(torch.where(mask, pred, inf), relevant)[:, :k]  # (m, k)
    hits = relevant.gather(1, top)  # (m, k)
    n_rel = torch.full((len(hits),), k)
    return {f"Precision@{k}": float(metrics.precision(hits).mean()),
            f"NDCG@{k}": float(metrics.ndcg(hits, n_rel).mean()), "n_users": len(hits)}
