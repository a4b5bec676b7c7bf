"""Evaluation metrics for recommenders: top-K lists, ROC AUC, catalogue-level and rating metrics.

Every per-user metric is vectorised over users and returns a (n_users,) float tensor, so callers
can average it, bucket it by user activity, or run significance tests on it.
See the chapter 'Introduction and data'.
"""

import math

import torch

# ----------------------------------------------------------------------------- input checks


# dtype requirement (as it reads in error messages) -> test on the dtype
_DTYPES = {
    "a bool": lambda d: d == torch.bool,
    "a long (int64)": lambda d: d == torch.long,
    "an integer": lambda d: not (d.is_floating_point or d.is_complex or d == torch.bool),
    "a floating-point": lambda d: d.is_floating_point,
}


def _check(x, name, kind, dims):
    """Raise unless x is a tensor with dtype kind (a key of _DTYPES) and len(dims) dimensions."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not _DTYPES[kind](x.dtype):
        raise TypeError(f"{name} must have {kind} dtype, got {x.dtype}")
    if x.dim() != len(dims):
        shape = "(" + ", ".join(dims) + (",)" if len(dims) == 1 else ")")
        raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}")


def _check_hits(hits, n_relevant=None):
    _check(hits, "hits", "a bool", ("n_users", "k"))
    if hits.shape[1] < 1:
        raise ValueError(f"k (hits.shape[1]) must be >= 1, got {hits.shape[1]}")
    if n_relevant is None:
        return
    _check(n_relevant, "n_relevant", "an integer", ("n_users",))
    if n_relevant.shape != hits.shape[:1]:
        raise ValueError(f"n_relevant must have shape ({len(hits)},), got {list(n_relevant.shape)}")
    if (n_relevant < 1).any():
        # recall/nDCG/AP are undefined without relevant items: the caller must drop such users
        raise ValueError(f"n_relevant must be >= 1 for every user, got min {n_relevant.min()}")
    if (hits.sum(1) > n_relevant).any():
        raise ValueError("n_relevant must be >= the number of hits of each user")


def _check_topk_items(topk_items, n_items):
    _check(topk_items, "topk_items", "a long (int64)", ("n_users", "k"))
    if topk_items.numel() and (topk_items.min() < 0 or topk_items.max() >= n_items):
        lo, hi = topk_items.min().item(), topk_items.max().item()
        raise ValueError(f"topk_items must be item ids in 0..{n_items - 1}, got {lo}..{hi}")


# ----------------------------------------------------------------------------- the tie rule


def check_scores(scores, name="scores", allow_minus_inf=False):
    """Raise ``ValueError`` unless ``scores`` is a floating-point tensor of finite numbers.

    A model that diverged (NaN) or overflowed (inf) must never be ranked: NaN compares false
    with everything, so a NaN model would otherwise look perfect under some rank formulas.

    Args:
        scores: float tensor, any shape.
        name: what to call it in the error (e.g. the model's name).
        allow_minus_inf: accept ``-inf``, the mark of items that are not candidates (the tie
            rule ranks a relevant item scored ``-inf`` after every candidate).
    """
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(scores).__name__}")
    if not scores.dtype.is_floating_point:
        raise TypeError(f"{name} must have a floating-point dtype, got {scores.dtype}")
    if scores.numel() and torch.isfinite(torch.stack(torch.aminmax(scores))).all():
        return  # NaN propagates into min and max: one pass, no (n_users, n_items) bool
    bad = ~torch.isfinite(scores)
    if allow_minus_inf:
        bad &= scores != float("-inf")
    if bad.any():
        n_nan = int(scores.isnan().sum())
        raise ValueError(f"{name} has {int(bad.sum())} non-finite value(s) ({n_nan} NaN) out of "
                         f"{scores.numel()}: the model diverged or was not trained")


def rank_order(scores, relevance=None, k=None):
    """Items in rank order under the book's one tie rule: best first, ties against relevance.

    Items are sorted by decreasing score. Among items with *equal* scores the less relevant
    come first: a relevant item tied with non-relevant ones is ranked after all of them (the
    pessimistic rank), and with graded relevance lower gains come first. Remaining ties go to
    the lower item index. So a constant scorer gets the worst ranking its scores allow, never
    a lucky one, and the result never depends on ``torch.topk``'s internal order. Without
    ``relevance`` (a list shown to a user, coverage) ties go to the lower item index.

    Args:
        scores: float (n_users, n_items); ``-inf`` marks items that are not candidates.
        relevance: optional bool or float (n_users, n_items), the relevance (gain) of items.
        k: return only the first ``k`` columns, found by a top-k selection and a sort of a
            few candidates (``_top_k``) instead of a sort of every item: the same
            items, much faster on large catalogues.
    Returns:
        long (n_users, n_items), or (n_users, k) with ``k``, item indices, best first. See
        the chapter 'Introduction and data'.
    """
    _check(scores, "scores", "a floating-point", ("n_users", "n_items"))
    if scores.numel() and scores.amax().isnan():  # NaN propagates into the max
        raise ValueError("scores must not contain NaN")
    if relevance is not None and (not isinstance(relevance, torch.Tensor)
                                  or relevance.shape != scores.shape):
        raise ValueError(f"relevance must be a tensor of shape {tuple(scores.shape)}")
    if k is not None and k < scores.shape[1]:
        return _top_k(scores, relevance, int(k))
    if relevance is None:
        return torch.sort(scores, dim=1, descending=True, stable=True).indices
    # a stable sort by increasing relevance, then a stable sort by decreasing score: within
    # a group of equal scores the first sort's order (least relevant first) survives
    first = torch.sort(relevance.to(torch.float64), dim=1, stable=True).indices
    second = torch.sort(scores.gather(1, first), dim=1, descending=True, stable=True).indices
    return first.gather(1, second)


def _top_k(scores, relevance, k):
    """The first ``k`` columns of :func:`rank_order` without sorting all items."""
    return top_k_lists(scores, (relevance,), k)[0]


def top_k_lists(scores, relevances, k):
    """The first ``k`` columns of :func:`rank_order` under each of ``relevances`` (``None``
    for a list as shown to a user), from one top-k selection of ``scores``.

    ``topk`` picks the ``m = 4k`` (at least ``k + 16``) best scores; when the k-th best score
    is strictly above the m-th, every item that can reach the top k is among those m, so
    sorting them by item index and applying the full rule to the ``(b, m)`` block is exact.
    Rows where ties reach past the m-th place (a constant scorer) take the full sort. The
    evaluator needs two orders of the same scores (ties against relevance for the metrics, by
    item index for coverage): one selection serves both.

    Returns:
        A list of long ``(b, k)`` item indices, one per entry of ``relevances``.
    """
    n = scores.shape[1]
    m = min(n, max(4 * k, k + 16))
    values, idx = scores.topk(m, dim=1)  # (b, m), best first in some tie order
    idx = idx.sort(dim=1).values  # (b, m) ascending item index: the rule's last tie-break
    candidates = scores.gather(1, idx)  # (b, m)
    tied = (values[:, k - 1] <= values[:, m - 1]) if m < n else None  # (b,) ties cross m
    rows = tied.nonzero().squeeze(1) if tied is not None and tied.any() else None
    out = []
    for relevance in relevances:
        rel = None if relevance is None else relevance.gather(1, idx)
        top = idx.gather(1, rank_order(candidates, rel)[:, :k])  # (b, k)
        if rows is not None:
            full = rank_order(scores[rows], None if relevance is None else relevance[rows])
            top[rows] = full[:, :k]
        out.append(top)
    return out


# ----------------------------------------------------------------------------- top-K list metrics


def hit_rate(hits):
    """Per-user hit rate@k: 1.0 if at least one of the top k items is relevant, else 0.0.

    Args:
        hits: bool (n_users, k), hits[u, j] is True if the j-th recommendation of u is relevant.
    Returns:
        float (n_users,). See the chapter 'Introduction and data'.
    """
    _check_hits(hits)
    return hits.any(1).float()


def precision(hits):
    """Per-user precision@k: fraction of the k recommended items that are relevant.

    Args:
        hits: bool (n_users, k).
    Returns:
        float (n_users,). See the chapter 'Introduction and data'.
    """
    _check_hits(hits)
    return hits.float().mean(1)


def recall(hits, n_relevant):
    """Per-user recall@k: hits in the top k divided by the user's number of relevant items.

    This is the plain definition, hits / n_relevant, so a user with more than k relevant items
    cannot reach 1.0. Some papers divide by min(n_relevant, k) instead; we do not.

    Args:
        hits: bool (n_users, k).
        n_relevant: int (n_users,), number of relevant items of each user, all >= 1.
    Returns:
        float (n_users,). See the chapter 'Introduction and data'.
    """
    _check_hits(hits, n_relevant)
    return hits.sum(1).float() / n_relevant.float()


def ndcg(hits, n_relevant):
    """Per-user nDCG@k with binary gains and discount 1 / log2(rank + 1), rank 1-based.

    The ideal DCG puts min(n_relevant, k) hits at the top, so a perfect list scores 1.

    Args:
        hits: bool (n_users, k).
        n_relevant: int (n_users,), all >= 1.
    Returns:
        float (n_users,). See the chapter 'Introduction and data'.
    """
    _check_hits(hits, n_relevant)
    k = hits.shape[1]
    disc = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float64))  # (k,)
    dcg = (hits.double() * disc).sum(1)  # (n_users,)
    # cumsum(disc)[m - 1] is the DCG of m hits at ranks 1..m
    idcg = disc.cumsum(0)[n_relevant.clamp(max=k) - 1]  # (n_users,)
    return (dcg / idcg).float()


def mrr(hits):
    """Per-user reciprocal rank of the first hit (0 if there is none).

    Given the top k this is MRR@k; given the full ranking (k = n_items) it is the full MRR.

    Args:
        hits: bool (n_users, k).
    Returns:
        float (n_users,). See the chapter 'Introduction and data'.
    """
    _check_hits(hits)
    first = hits.int().argmax(1)  # (n_users,) argmax returns the first True (0 if none)
    rr = 1.0 / (first + 1).float()
    return torch.where(hits.any(1), rr, torch.zeros_like(rr))


def average_precision(hits, n_relevant):
    """Per-user AP@k = sum_j P@j * hits_j / min(n_relevant, k).

    Dividing by min(n_relevant, k) lets a perfect top-k list score 1 even when the user has more
    than k relevant items; with k = n_items it is the usual full-ranking average precision.

    Args:
        hits: bool (n_users, k).
        n_relevant: int (n_users,), all >= 1.
    Returns:
        float (n_users,). See the chapter 'Introduction and data'.
    """
    _check_hits(hits, n_relevant)
    k = hits.shape[1]
    h = hits.double()  # (n_users, k)
    prec_at_j = h.cumsum(1) / torch.arange(1, k + 1, dtype=torch.float64)  # (n_users, k)
    return ((prec_at_j * h).sum(1) / n_relevant.clamp(max=k).double()).float()


def auc(scores, relevant, candidates):
    """Per-user ROC AUC: P(a random relevant candidate outscores a random non-relevant one).

    Ties count 1/2 (the Mann-Whitney U statistic). For every relevant item one batched
    searchsorted counts the non-relevant candidates scoring below it and those tying with it.

    Args:
        scores: float (n_users, n_items), finite on candidates (others, e.g. -inf, are ignored).
        relevant: bool (n_users, n_items), must be a subset of candidates.
        candidates: bool (n_users, n_items), items eligible for ranking (not seen in training).
    Returns:
        float (n_users,). Raises ValueError if a user has no relevant or no non-relevant
        candidate. See the chapter 'Introduction and data'.
    """
    _check(scores, "scores", "a floating-point", ("n_users", "n_items"))
    for name, m in (("relevant", relevant), ("candidates", candidates)):
        _check(m, name, "a bool", ("n_users", "n_items"))
        if m.shape != scores.shape:
            raise ValueError(f"{name} must have shape {tuple(scores.shape)}, got {tuple(m.shape)}")
    if (relevant & ~candidates).any():
        raise ValueError("relevant must be a subset of candidates")
    if not torch.isfinite(scores[candidates]).all():
        raise ValueError("scores must be finite on candidates")
    negative = candidates & ~relevant  # (n_users, n_items)
    n_pos, n_neg = relevant.sum(1), negative.sum(1)  # (n_users,)
    bad = ((n_pos == 0) | (n_neg == 0)).sum().item()
    if bad:
        msg = "every user needs >= 1 relevant and >= 1 non-relevant candidate"
        raise ValueError(f"relevant: {msg}, {bad} users do not (drop them first)")
    # pad non-negatives with +inf: they sort last and are never <= a finite relevant score
    neg = torch.where(negative, scores, math.inf).sort(1).values  # (n_users, n_items)
    below = torch.searchsorted(neg, scores, side="left")  # (n_users, n_items) #neg < s
    below_or_tie = torch.searchsorted(neg, scores, side="right")  # #neg <= s
    wins = (below + below_or_tie).double() / 2  # #neg < s + 0.5 * #neg == s
    wins = torch.where(relevant, wins, 0.0)
    return (wins.sum(1) / (n_pos * n_neg).double()).float()


# ----------------------------------------------------------------------------- catalogue metrics


def coverage(topk_items, n_items):
    """Catalogue coverage: fraction of the n_items items that appear in at least one list.

    Args:
        topk_items: long (n_users, k), recommended item ids.
        n_items: int, catalogue size.
    Returns:
        python float in [0, 1]. See the chapter 'Introduction and data'.
    """
    if isinstance(n_items, bool) or not isinstance(n_items, int):
        raise TypeError(f"n_items must be an int, got {type(n_items).__name__}")
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    _check_topk_items(topk_items, n_items)
    seen = torch.zeros(n_items, dtype=torch.bool)
    seen[topk_items.flatten()] = True
    return seen.double().mean().item()


def novelty(topk_items, item_popularity, *, eps=1e-6):
    """Per-user novelty: mean self-information -log2(p_i) of the recommended items, in bits.

    Args:
        topk_items: long (n_users, k).
        item_popularity: float (n_items,), p_i = fraction of users who interacted with item i.
        eps: p_i below eps (e.g. p_i = 0 for items unseen in training) is clamped to eps, so such
            items score -log2(1e-6) ~ 19.9 bits instead of infinity.
    Returns:
        float (n_users,). See the chapter 'Introduction and data'.
    """
    _check(item_popularity, "item_popularity", "a floating-point", ("n_items",))
    if not ((item_popularity >= 0) & (item_popularity <= 1)).all():
        raise ValueError("item_popularity must hold probabilities in [0, 1]")
    _check_topk_items(topk_items, item_popularity.shape[0])
    p = item_popularity.clamp(min=eps)[topk_items]  # (n_users, k)
    return -torch.log2(p).mean(1)


def intra_list_diversity(topk_items, item_vectors):
    """Per-user intra-list diversity: mean of 1 - cosine similarity over pairs of listed items.

    An item with a zero vector (e.g. no genre) has cosine 0 with every item, i.e. distance 1.

    Args:
        topk_items: long (n_users, k), k >= 2.
        item_vectors: float (n_items, d), e.g. one-hot genres.
    Returns:
        float (n_users,). See the chapter 'Introduction and data'.
    """
    _check(item_vectors, "item_vectors", "a floating-point", ("n_items", "d"))
    _check_topk_items(topk_items, item_vectors.shape[0])
    k = topk_items.shape[1]
    if k < 2:
        raise ValueError(f"k (topk_items.shape[1]) must be >= 2 to form pairs, got {k}")
    norm = item_vectors.norm(dim=1, keepdim=True)  # (n_items, 1)
    # zero vectors stay zero after "normalising", which gives them cosine 0 with everything
    unit = item_vectors / torch.where(norm > 0, norm, 1.0)  # (n_items, d)
    v = unit[topk_items]  # (n_users, k, d)
    sim = (v @ v.transpose(1, 2)).clamp(-1, 1)  # (n_users, k, k)
    off_diag = ~torch.eye(k, dtype=torch.bool)  # (k, k), each unordered pair counted twice
    return ((1 - sim) * off_diag).sum((1, 2)) / (k * (k - 1))


# ----------------------------------------------------------------------------- rating metrics


def _check_ratings(pred, target):
    for name, x in (("pred", pred), ("target", target)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if pred.shape != target.shape:
        shapes = f"{tuple(pred.shape)} and {tuple(target.shape)}"
        raise ValueError(f"pred and target must have the same shape, got {shapes}")
    if pred.numel() == 0:
        raise ValueError("pred and target must not be empty")
    if pred.double().isnan().any() or target.double().isnan().any():
        raise ValueError("pred and target must not contain NaN")


def rmse(pred, target):
    """Root mean squared error between predicted and true ratings.

    Args:
        pred: tensor of predicted ratings, any shape.
        target: tensor of true ratings, same shape as pred.
    Returns:
        python float. See the chapter 'Introduction and data'.
    """
    _check_ratings(pred, target)
    return (pred.double() - target.double()).pow(2).mean().sqrt().item()


def mae(pred, target):
    """Mean absolute error between predicted and true ratings.

    Args:
        pred: tensor of predicted ratings, any shape.
        target: tensor of true ratings, same shape as pred.
    Returns:
        python float. See the chapter 'Introduction and data'.
    """
    _check_ratings(pred, target)
    return (pred.double() - target.double()).abs().mean().item()
