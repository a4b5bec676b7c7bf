"""Neighbourhood collaborative filtering for rating prediction: similarity matrices and
k-NN rating prediction (the top-N item/user k-NN models live in
:mod:`recsys_ref.models.knn_top_n`).

The rating models are dense: MovieLens-100K's item-item matrix is 1,682 x 1,682 (11 MB in
float32), and every similarity is a handful of matrix products over the co-rated entries.
See the chapter "Collaborative filtering: rating prediction with neighbourhoods".
"""

from __future__ import annotations

import pandas as pd
import torch

from recsys_ref.checks import (
    check_nonnegative,
    check_positive_int,
    check_rating_range,
    resolve_rating_range,
)
from recsys_ref.matrix import (
    interaction_mask,
    rating_matrix,
)
from recsys_ref.models.base import Recommender
from recsys_ref.models.baselines import RATING_COLUMNS, fit_biases
from recsys_ref.training import gather_rows, minus_inf_mask

KINDS = ("cosine", "pearson", "adjusted_cosine", "pearson_baseline")
BASELINES = (None, "bias", "mean")
_CHUNK = 2048  # (user, item) pairs scored at once: a few (2048, n_items) tensors, ~14 MB each


def support(mask: torch.Tensor) -> torch.Tensor:
    """Number of co-rated entries between every pair of rows of ``mask``.

    .. math:: n_{xy} = |\\{c : m_{xc} = m_{yc} = 1\\}|

    Args:
        mask: ``(n_rows, n_cols)`` bool, True where observed (pass ``mask.T`` for items).

    Returns:
        ``(n_rows, n_rows)`` int64 counts. See the chapter "Collaborative filtering".
    """
    _check_mask(mask)
    m = mask.double()  # counts up to 2**53 are exact in float64; matmul has no int kernel
    return (m @ m.T).round().long()


def similarity_matrix(R: torch.Tensor, mask: torch.Tensor, kind: str = "cosine",
                      shrinkage: float = 0.0, baseline: torch.Tensor | None = None,
                      min_support: int = 1) -> torch.Tensor:
    """Similarity between every pair of rows of ``R``, over their co-rated entries only.

    With :math:`C_{xy}` the columns observed in both rows :math:`x` and :math:`y`:

    .. math::
        \\text{cosine:}\\quad s_{xy} = \\frac{\\sum_{c \\in C_{xy}} r_{xc} r_{yc}}
            {\\sqrt{\\sum_{c \\in C_{xy}} r_{xc}^2}\\sqrt{\\sum_{c \\in C_{xy}} r_{yc}^2}}

    and the other kinds apply the same formula to centred values:

    * ``"pearson"``: :math:`r_{xc} - \\bar r_x^{(xy)}`, centred by each row's mean *over*
      :math:`C_{xy}` (so the mean differs per pair). This is the textbook sample correlation
      of the paired co-rated values (and what Surprise's ``pearson`` computes): two rows
      that agree up to an offset on their common columns get 1, whereas centring by each
      row's overall mean would count that offset as disagreement whenever a row's other
      ratings (which the other row never saw) move its mean.
    * ``"adjusted_cosine"``: :math:`r_{xc} - \\bar r_c`, centred by the mean of the *column*
      (Sarwar et al. 2001: for item rows, ``R.T``, the column is the user, so each user's
      rating scale is removed).
    * ``"pearson_baseline"``: :math:`r_{xc} - b_{xc}`, the residuals from a baseline
      (Koren 2010), with no further centring.

    Shrinkage pulls similarities supported by few co-rated entries towards 0:
    :math:`s_{xy} \\cdot \\frac{n_{xy} - 1}{n_{xy} - 1 + s}` for ``"pearson"`` and
    ``"pearson_baseline"`` (Koren 2010; a correlation of one pair carries no information)
    and :math:`s_{xy} \\cdot \\frac{n_{xy}}{n_{xy} + s}` for the cosines.
    A pair with fewer than ``min_support`` co-rated entries, or a zero norm, gets 0; the
    diagonal is 1 (each row is its own perfect neighbour, as in Surprise).

    Args:
        R: ``(n_rows, n_cols)`` ratings between rows (pass ``R.T`` for item rows); unobserved
            cells are ignored whatever their value.
        mask: ``(n_rows, n_cols)`` bool, True where observed.
        kind: one of ``"cosine"``, ``"pearson"``, ``"adjusted_cosine"``, ``"pearson_baseline"``.
        shrinkage: ``s >= 0`` (default 0: no shrinkage).
        baseline: ``(n_rows, n_cols)`` baseline predictions ``b``; required for
            ``"pearson_baseline"`` only (e.g. ``mu + b_u + b_i`` from
            :func:`recsys_ref.models.baselines.fit_biases`, transposed for item rows).
        min_support: minimum number of co-rated entries for a non-zero similarity (default 1).

    Returns:
        ``(n_rows, n_rows)`` symmetric similarities, computed in float64 and returned in
        ``R``'s floating dtype. See the chapter "Collaborative filtering".
    """
    _check_mask(mask)
    if not isinstance(R, torch.Tensor) or R.shape != mask.shape:
        raise ValueError(f"R must be a tensor of the mask's shape {tuple(mask.shape)}, got "
                         f"{tuple(R.shape) if isinstance(R, torch.Tensor) else type(R).__name__}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    shrinkage = check_nonnegative(shrinkage, "shrinkage")
    min_support = check_positive_int(min_support, "min_support", minimum=0)
    if kind == "pearson_baseline":
        if baseline is None:
            raise ValueError("baseline must be given for kind='pearson_baseline'")
        if not isinstance(baseline, torch.Tensor) or baseline.shape != mask.shape:
            raise ValueError(f"baseline must be a tensor of shape {tuple(mask.shape)}")

    m = mask.double()  # (n, c) 0/1
    r = torch.where(mask, R.double(), 0.0)  # (n, c), exactly 0 off the mask
    if kind == "adjusted_cosine":
        col_mean = r.sum(0) / m.sum(0).clamp(min=1)  # (c,) mean of each column's observed cells
        r = (r - col_mean) * m
    elif kind == "pearson_baseline":
        r = (r - baseline.double()) * m  # (n, c) residuals on observed cells
    elif kind == "pearson":
        # shift each row by its own mean first: pearson over C_xy is shift-invariant, and
        # smaller values make the sums-of-products formula below lose fewer digits
        r = (r - r.sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp(min=1)) * m

    n = m @ m.T  # (n, n) co-rated counts n_xy
    dot = r @ r.T  # (n, n) sum over C_xy of r_x r_y (zeros off the mask drop the rest)
    sq = (r * r) @ m.T  # (n, n) [x, y] = sum over C_xy of r_x^2; its transpose is r_y^2
    if kind == "pearson":
        # centre by the means over C_xy: sum (r_x - a)(r_y - b) = dot - s_x s_y / n, etc.
        s = r @ m.T  # (n, n) [x, y] = sum over C_xy of r_x
        n_safe = n.clamp(min=1)
        scale = (sq * sq.T).sqrt()  # (n, n) bounds |dot| and |s s^T / n| (Cauchy-Schwarz)
        dot = dot - s * s.T / n_safe
        # an uncorrelated pair's numerator is 0, but the subtraction leaves ~1e-16 * scale of
        # either sign, and a neighbour of similarity 1e-17 counts as positive (a prediction
        # of Surprise's differed by 0.64 for this). With 1-5 stars a nonzero numerator is at
        # least 1 / n_xy and scale at most 16 n_xy (half stars: a quarter of that), so below
        # 1e-10 * scale is rounding for any pair with fewer than ~10,000 co-ratings
        dot = torch.where(dot.abs() > 1e-10 * scale, dot, 0.0)
        centred = sq - s * s / n_safe
        # a constant co-rated vector has variance 0 but cancellation leaves ~1e-16 * sq:
        # treat relative variances below 1e-10 as 0 (a non-constant vector of 1-5 ratings
        # has one above 1e-8 even with 1,000 co-rated entries)
        sq = torch.where(centred > 1e-10 * sq, centred, 0.0)
    den = (sq * sq.T).sqrt()
    sim = torch.where(den > 0, dot / den.clamp(min=1e-300), 0.0)
    sim = sim.clamp(-1.0, 1.0)  # rounding only; Cauchy-Schwarz bounds the exact value
    if shrinkage > 0:
        dof = (n - 1).clamp(min=0) if kind in ("pearson", "pearson_baseline") else n
        sim = sim * dof / (dof + shrinkage)
    sim = torch.where(n >= max(min_support, 1), sim, 0.0)
    sim = (sim + sim.T) / 2  # exactly symmetric (the two halves of r @ r.T round differently)
    sim.fill_diagonal_(1.0)
    return sim.to(R.dtype if R.is_floating_point() else torch.get_default_dtype())


def _check_mask(mask) -> None:
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() != 2:
        raise ValueError("mask must be a 2-D bool tensor")


class KNNRating(Recommender):
    """k-nearest-neighbour rating prediction with an optional baseline (Koren 2010).

    Item-based (the default), for a user :math:`u` and an item :math:`i`, with
    :math:`N^k_i(u)` the ``k`` items rated by :math:`u` that are most similar to :math:`i`
    among those with a *positive* similarity:

    .. math::
        \\hat r_{ui} = b_{ui} + \\frac{\\sum_{j \\in N^k_i(u)} s_{ij} (r_{uj} - b_{uj})}
                                     {\\sum_{j \\in N^k_i(u)} |s_{ij}|}

    Negative similarities are dropped: a disliked-alike item would pull the prediction by a
    residual of the wrong sign, and Surprise's k-NN algorithms do the same, so with
    ``baseline="bias"`` this is ``KNNBaseline``, with ``"mean"`` ``KNNWithMeans`` and with
    ``None`` ``KNNBasic``. With fewer than ``min_k`` such neighbours the prediction is the
    baseline alone. User-based swaps the roles of users and items.

    Baselines :math:`b_{ui}`: ``"bias"`` is :math:`\\mu + b_u + b_i` of
    :class:`~recsys_ref.models.baselines.BiasBaseline`; ``"mean"`` is the mean rating of the
    *target* entity (the item :math:`i` when item-based, the user :math:`u` when user-based,
    with neighbours centred by their own means); ``None`` is :math:`b = 0` and falls back to
    the global mean. Predictions are clipped to ``rating_range``.

    Args:
        n_users: number of users.
        n_items: number of items.
        k: maximum number of neighbours (default 40).
        min_k: minimum number of neighbours to use them at all (default 1).
        kind: similarity, see :func:`similarity_matrix` (default ``"pearson_baseline"``).
        shrinkage: similarity shrinkage ``s`` (default 100).
        user_based: neighbours are users instead of items (default False).
        baseline: ``"bias"`` (default), ``"mean"`` or ``None``.
        reg_i, reg_u, n_iters: the bias baseline's penalties and sweeps (defaults 10, 15, 10),
            used by ``baseline="bias"`` and by ``kind="pearson_baseline"``.
        min_support: minimum co-rated count for a non-zero similarity (default 1).
        rating_range: clip predictions to ``(low, high)``; ``"train"`` (default) takes the
            training ratings' min and max; ``None`` disables clipping.

    See the chapter "Collaborative filtering".
    """

    def __init__(self, n_users: int, n_items: int, k: int = 40, min_k: int = 1,
                 kind: str = "pearson_baseline", shrinkage: float = 100.0,
                 user_based: bool = False, baseline: str | None = "bias",
                 reg_i: float = 10.0, reg_u: float = 15.0, n_iters: int = 10,
                 min_support: int = 1,
                 rating_range: tuple[float, float] | str | None = "train"):
        super().__init__(n_users, n_items)
        self.k = check_positive_int(k, "k")
        self.min_k = check_positive_int(min_k, "min_k", minimum=0)
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
        self.kind, self.baseline, self.user_based = kind, baseline, bool(user_based)
        self.shrinkage = check_nonnegative(shrinkage, "shrinkage")
        self.reg_i = check_nonnegative(reg_i, "reg_i")
        self.reg_u = check_nonnegative(reg_u, "reg_u")
        self.n_iters = check_positive_int(n_iters, "n_iters")
        self.min_support = check_positive_int(min_support, "min_support", minimum=0)
        self.rating_range = check_rating_range(rating_range)

    def fit(self, train: pd.DataFrame) -> KNNRating:
        """Build the rating matrix, the baselines and the similarity matrix."""
        self._check_train(train, RATING_COLUMNS, rating_range=self.rating_range)
        self.rating_range_ = resolve_rating_range(self.rating_range, train["rating"])
        R = rating_matrix(train, self.n_users, self.n_items).double()  # (n_users, n_items)
        mask = interaction_mask(train, self.n_users, self.n_items)  # (n_users, n_items)
        mu, b_u, b_i = fit_biases(R, mask, self.reg_u, self.reg_i, self.n_iters)
        bias = mu + b_u[:, None] + b_i[None, :]  # (n_users, n_items) mu + b_u + b_i
        # "y-major" layout: row = the entity whose ratings the neighbours share (the user when
        # item-based), column = the neighbour entity x; for a pair (x, y) the neighbours are
        # the x' with mask_yx[y, x'] and the target row of the similarity is x
        R_yx, m_yx, bias_yx = (R.T, mask.T, bias.T) if self.user_based else (R, mask, bias)
        self.mu_ = mu
        if self.baseline == "bias":
            base_yx = bias_yx  # (n_y, n_x) b_xy for every cell
            self.fallback_ = base_yx
        elif self.baseline == "mean":
            cnt = m_yx.sum(0)  # (n_x,) ratings of each x; unrated x gets the global mean
            mean_x = torch.where(cnt > 0, (R_yx * m_yx).sum(0) / cnt.clamp(min=1), mu)
            base_yx = mean_x.expand_as(R_yx)  # (n_y, n_x) b_xy = mean of x
            self.fallback_ = base_yx
        else:
            base_yx = torch.zeros_like(R_yx)  # KNNBasic: plain weighted mean of ratings
            self.fallback_ = torch.full_like(R_yx, mu)
        self.base_yx_ = base_yx
        self.mask_yx_ = m_yx
        self.resid_yx_ = torch.where(m_yx, R_yx - base_yx, 0.0)  # (n_y, n_x) r - b, 0 unrated
        # similarity between the x entities: rows of the x-major matrices
        self.sim_ = similarity_matrix(R_yx.T, m_yx.T, self.kind, self.shrinkage,
                                      baseline=bias_yx.T, min_support=self.min_support)
        return self

    def predict(self, user_idx, item_idx) -> torch.Tensor:
        """``(n,), (n,) -> (n,)`` predicted ratings, in fixed-size chunks of pairs."""
        user_idx, item_idx = self._pairs(user_idx, item_idx)
        x_all, y_all = (user_idx, item_idx) if self.user_based else (item_idx, user_idx)
        out = torch.empty(len(x_all), dtype=torch.float64)
        for start in range(0, len(x_all), _CHUNK):
            x, y = x_all[start:start + _CHUNK], y_all[start:start + _CHUNK]
            # (c, n_x) rows gathered by index_select (the values of sim_[x], 4x faster)
            sim = gather_rows(self.sim_, x).double()  # similarities of each target to all x'
            out[start:start + _CHUNK] = self._average(
                sim, gather_rows(self.mask_yx_, y) & (sim > 0), gather_rows(self.resid_yx_, y),
                self.base_yx_[y, x], self.fallback_[y, x])
        return self._clip(out)

    def score(self, user_idx) -> torch.Tensor:
        """``(batch,) -> (batch, n_items)`` predicted ratings of every item.

        :meth:`predict` on every pair, one user at a time: the k-NN queries of a user share
        either their candidate neighbours (item-based: only the user's rated items are
        ranked) or their similarity row (user-based: sorted once, ties by index). The
        numbers are :meth:`predict`'s except where neighbours tie exactly at the k-th place,
        which both break by a deterministic but unspecified rule.
        """
        users = self._users(user_idx)
        out = torch.empty(len(users), self.n_items, dtype=torch.float64)
        for b, u in enumerate(users.tolist()):
            if self.user_based:
                out[b] = self._score_user_based(u)
                continue
            # item-based: the neighbours of every item are among the user's rated items
            cand = self.mask_yx_[u].nonzero()[:, 0]  # (L,)
            sim = self.sim_[:, cand].double()  # (n_items, L)
            resid = self.resid_yx_[u, cand].expand(self.n_items, len(cand))
            out[b] = self._average(sim, sim > 0, resid, self.base_yx_[u], self.fallback_[u])
        return self._clip(out)

    def _score_user_based(self, u: int) -> torch.Tensor:
        """``(n_items,)`` float64 predictions for user ``u``, user-based: the neighbours
        v with ``s_uv > 0`` sorted once (similarity down, ties by index), then each item's
        first ``k`` raters in that order."""
        s = self.sim_[u].double()  # (n_users,)
        pos = (s > 0).nonzero()[:, 0]
        order = pos[s[pos].sort(descending=True, stable=True).indices]  # (P,)
        rated = self.mask_yx_[:, order]  # (n_items, P) the item is rated by the neighbour
        used = rated & (rated.cumsum(1) <= self.k)  # (n_items, P) its first k raters
        w = used * s[order]  # (n_items, P)
        num, den = (w * self.resid_yx_[:, order]).sum(1), w.sum(1)  # (n_items,)
        enough = (used.sum(1) >= self.min_k) & (den > 0)
        return torch.where(enough, self.base_yx_[:, u] + num / den.clamp(min=1e-300),
                           self.fallback_[:, u]).double()

    def _average(self, sim, ok, resid, base, fallback) -> torch.Tensor:
        """The k-NN prediction of each row: ``(c, L)`` similarities of the candidate
        neighbours, ``ok`` marking the usable ones, their residuals ``r - b``; ``(c,)``
        baselines and fallbacks. Returns ``(c,)`` float64."""
        k = min(self.k, sim.shape[1])
        if k == 0:
            return fallback.double()
        # topk, not a stable sort (7x slower): an exact tie at the k-th place is broken
        # by topk's deterministic but unspecified rule
        # sim + (-inf where not ok): torch.where's values without its mispredicted branches
        top = (sim + minus_inf_mask(~ok, sim.dtype)).topk(k, dim=1)  # (c, k) best first
        w = top.values.clamp(min=0)  # (c, k), 0 for missing neighbours (-inf -> 0)
        used = top.values > 0  # (c, k) real neighbours
        num, den = (w * resid.gather(1, top.indices)).sum(1), w.sum(1)  # (c,)
        enough = (used.sum(1) >= self.min_k) & (den > 0)
        return torch.where(enough, base + num / den.clamp(min=1e-300), fallback).double()

    def _clip(self, out: torch.Tensor) -> torch.Tensor:
        if self.rating_range_ is not None:  # the range resolved at fit time
            out = out.clamp(*self.rating_range_)
        return out.float()
