r"""What the strategies read: popularity, rating entropy, density in an embedding space,
and the predictive variance and expected model change of a Bayesian posterior.

Each is a small pure function of the training ratings or of a posterior; the caller puts the
results into a :class:`~recsys_ref.active.strategies.SelectionState`.
See the chapter "Active selection".
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from recsys_ref.checks import check_frame, check_index
from recsys_ref.matrix import column


def item_counts(train: pd.DataFrame, n_items: int) -> torch.Tensor:
    """``(n_items,)`` float: ratings per item in ``train``."""
    check_frame(train, "train", ["item_idx"])
    check_index(train["item_idx"].to_numpy(), "train.item_idx", n_items)
    return torch.bincount(column(train, "item_idx"), minlength=n_items).double()


def rating_entropy(train: pd.DataFrame, n_items: int,
                   levels=(1.0, 2.0, 3.0, 4.0, 5.0)) -> torch.Tensor:
    r"""``(n_items,)`` :math:`H_i = -\sum_r p_{ir} \ln p_{ir}` over the rating ``levels``
    (nats; 0 for an unrated item). See the chapter "Active selection"."""
    check_frame(train, "train", ["item_idx", "rating"])
    check_index(train["item_idx"].to_numpy(), "train.item_idx", n_items)
    levels = np.asarray(levels, dtype=np.float64)
    level = np.searchsorted(levels, train["rating"].to_numpy())
    if (level >= len(levels)).any() or not np.isin(train["rating"].to_numpy(), levels).all():
        raise ValueError(f"ratings must be one of {levels.tolist()}")
    hist = torch.zeros(n_items, len(levels), dtype=torch.float64)
    hist.index_put_((column(train, "item_idx"), torch.as_tensor(level)),
                    torch.ones(len(train), dtype=torch.float64), accumulate=True)
    p = hist / hist.sum(1, keepdim=True).clamp(min=1)  # (n_items, levels)
    return -(p * torch.log(p.clamp(min=1e-300))).sum(1)


def cosine_density(features: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    r"""``(n,)`` mean cosine similarity of each row of ``features`` to all rows, rescaled to
    :math:`[0, 1]`: :math:`\mathrm{dens}(x_i) = \tfrac12 (1 + \hat x_i^\top \bar c)`, with
    :math:`\hat x` the unit vectors and :math:`\bar c` their (weighted) mean, which is
    exactly :math:`\tfrac12(1 + \frac{1}{n}\sum_j \cos(x_i, x_j))` in :math:`O(nk)`.

    Args:
        features: ``(n, k)``.
        weights: optional ``(n,)`` non-negative weights of the rows in the mean.

    See the chapter "Active selection".
    """
    if not isinstance(features, torch.Tensor) or features.dim() != 2 or len(features) == 0:
        raise ValueError("features must be a non-empty (n, k) tensor")
    unit = torch.nn.functional.normalize(features.double(), dim=1)  # (n, k)
    if weights is None:
        centre = unit.mean(0)
    else:
        w = torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (len(features),) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights must be ({len(features)},), >= 0, not all 0")
        centre = (w[:, None] * unit).sum(0) / w.sum()
    return 0.5 * (1 + unit @ centre)


def posterior_scores(cov: torch.Tensor, X: torch.Tensor, noise_var: float,
                     mask: torch.Tensor | None = None,
                     chunk: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Predictive variance and expected model change of every (row, candidate) pair.

    For a Bayesian linear model with posterior covariance :math:`\Sigma_u` and noise
    :math:`\sigma^2`: :math:`v_{ui} = x_i^\top \Sigma_u x_i + \sigma^2` and
    :math:`\mathrm{E}\|\Delta m_u\|^2 = \|\Sigma_u x_i\|^2 / v_{ui}`.

    Args:
        cov: ``(m, k, k)`` posterior covariances (:class:`.GaussianPosterior`'s ``cov``).
        X: ``(n, k)`` candidate features (items: ``(q_i, 1)``).
        noise_var: :math:`\sigma^2 > 0`.
        mask: optional ``(m, n)`` bool; only these pairs are computed (the others are NaN),
            which is much faster when each row has few candidates.
        chunk: rows per batched product.

    Returns:
        ``(variance (m, n), change (m, n))`` in float64. See the chapter "Active selection".
    """
    if cov.dim() != 3 or cov.shape[1] != cov.shape[2]:
        raise ValueError(f"cov must be (m, k, k), got {tuple(cov.shape)}")
    if X.dim() != 2 or X.shape[1] != cov.shape[1]:
        raise ValueError(f"X must be (n, {cov.shape[1]}), got {tuple(X.shape)}")
    if not noise_var > 0:
        raise ValueError(f"noise_var must be > 0, got {noise_var}")
    m, n = len(cov), len(X)
    if mask is None:
        mask = torch.ones(m, n, dtype=torch.bool)
    if mask.shape != (m, n) or mask.dtype != torch.bool:
        raise ValueError(f"mask must be an ({m}, {n}) bool tensor")
    X, cov = X.double(), cov.double()
    var = torch.full((m, n), float("nan"), dtype=torch.float64)
    change = var.clone()
    order = torch.argsort(mask.sum(1), stable=True)  # similar candidate counts per chunk
    for s in range(0, m, chunk):
        rows = order[s:s + chunk]  # (c,)
        sub = mask[rows]  # (c, n)
        L = int(sub.sum(1).max())
        if L == 0:
            continue
        # each row's candidates first (a stable sort of the mask), padded to L
        idx = torch.argsort((~sub).to(torch.int8), dim=1, stable=True)[:, :L]  # (c, L)
        Xc = X[idx]  # (c, L, k)
        SX = Xc @ cov[rows]  # (c, L, k): (Sigma_u x_i)^T, Sigma symmetric
        v = (SX * Xc).sum(-1) + noise_var  # (c, L)
        ok = sub.gather(1, idx)  # (c, L) False on padding
        r = rows[:, None].expand_as(idx)
        var[r[ok], idx[ok]] = v[ok]
        change[r[ok], idx[ok]] = ((SX * SX).sum(-1) / v)[ok]
    return var, change
