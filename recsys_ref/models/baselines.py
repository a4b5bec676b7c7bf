"""Non-personalised and bias baselines: the numbers every collaborative filter must beat.

See the chapter "Collaborative filtering".
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
from recsys_ref.matrix import column, interaction_mask, rating_matrix
from recsys_ref.models.base import Recommender

RATING_COLUMNS = ["user_idx", "item_idx", "rating"]


def fit_biases(R: torch.Tensor, mask: torch.Tensor, reg_u: float, reg_i: float, n_iters: int,
               ) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Koren's regularised baseline ``mu + b_u + b_i`` by alternating closed-form updates.

    Each half-step minimises the objective exactly in one block of variables (the others
    fixed), so the objective never increases:

    .. math::
        b_i \\leftarrow \\frac{\\sum_{u \\in R(i)} (r_{ui} - \\mu - b_u)}{\\lambda_i + |R(i)|},
        \\qquad
        b_u \\leftarrow \\frac{\\sum_{i \\in R(u)} (r_{ui} - \\mu - b_i)}{\\lambda_u + |R(u)|}.

    Args:
        R: ``(n_users, n_items)`` ratings, any value where unrated.
        mask: ``(n_users, n_items)`` bool, True where rated.
        reg_u, reg_i: the ridge penalties ``lambda_u`` and ``lambda_i``.
        n_iters: number of (items, then users) sweeps, starting from ``b = 0``.

    Returns:
        ``(mu, b_u (n_users,), b_i (n_items,))`` in float64.
        See the chapter "Collaborative filtering".
    """
    m = mask.double()  # (n_users, n_items) 0/1
    r = torch.where(mask, R.double(), 0.0)  # zero where unrated so sums skip those cells
    mu = float(r.sum() / m.sum())
    n_u, n_i = m.sum(1), m.sum(0)  # (n_users,), (n_items,) rating counts
    dev = (r - mu) * m  # (n_users, n_items) r_ui - mu on rated cells
    b_u = torch.zeros(R.shape[0], dtype=torch.float64)
    b_i = torch.zeros(R.shape[1], dtype=torch.float64)
    for _ in range(n_iters):
        # sum over the raters of i of (r - mu - b_u): column sums of dev minus b_u over raters
        b_i = (dev.sum(0) - b_u @ m) / (reg_i + n_i)
        b_u = (dev.sum(1) - m @ b_i) / (reg_u + n_u)
    return mu, b_u, b_i


def bias_objective(R, mask, mu: float, b_u, b_i, reg_u: float, reg_i: float) -> float:
    """Regularised squared error ``sum (r - mu - b_u - b_i)^2 + reg_u |b_u|^2 + reg_i |b_i|^2``."""
    err = torch.where(mask, R.double() - mu - b_u.double()[:, None] - b_i.double()[None, :], 0.0)
    return float((err**2).sum() + reg_u * (b_u.double()**2).sum() + reg_i * (b_i.double()**2).sum())


class GlobalMean(Recommender):
    """Predicts the mean training rating for every pair.

    .. math:: \\hat r_{ui} = \\mu

    Args:
        n_users: number of users.
        n_items: number of items.

    See the chapter "Collaborative filtering".
    """

    def fit(self, train: pd.DataFrame) -> GlobalMean:
        """Store the mean of ``train.rating``."""
        self._check_train(train, RATING_COLUMNS)
        self.mu_ = float(train["rating"].to_numpy(dtype="float64").mean())
        return self

    def score(self, user_idx) -> torch.Tensor:
        """``(batch,) -> (batch, n_items)``, every entry ``mu``."""
        user_idx = self._users(user_idx)
        return torch.full((len(user_idx), self.n_items), self.mu_)

    def predict(self, user_idx, item_idx) -> torch.Tensor:
        """``(n,), (n,) -> (n,)``, every entry ``mu``."""
        user_idx, _ = self._pairs(user_idx, item_idx)
        return torch.full((len(user_idx),), self.mu_)


class Popularity(Recommender):
    """Ranks items by their number of training interactions (the same list for every user).

    .. math:: s_{ui} = |\\{v : (v, i) \\in \\mathcal{D}_{train}\\}|

    Rating values are ignored: every (user, item) row counts once, whatever its rating.

    Args:
        n_users: number of users.
        n_items: number of items.

    See the chapter "Collaborative filtering".
    """

    def fit(self, train: pd.DataFrame) -> Popularity:
        """Count the distinct users of each item."""
        self._check_train(train)
        # pairs are distinct (checked), so the rows of an item are its distinct users
        self.counts_ = torch.bincount(column(train, "item_idx"), minlength=self.n_items).float()
        return self

    def score(self, user_idx) -> torch.Tensor:
        """``(batch,) -> (batch, n_items)``: the item counts, repeated for every user."""
        user_idx = self._users(user_idx)
        return self.counts_.expand(len(user_idx), -1).clone()


class BiasBaseline(Recommender):
    """Koren's baseline estimates: global mean plus a user bias and an item bias.

    .. math::
        \\hat r_{ui} = \\mu + b_u + b_i, \\qquad
        \\min_{b} \\sum_{(u,i)} (r_{ui} - \\mu - b_u - b_i)^2
        + \\lambda_u \\sum_u b_u^2 + \\lambda_i \\sum_i b_i^2,

    fitted by ``n_iters`` alternating closed-form sweeps (see :func:`fit_biases`). The
    defaults are those of Surprise's ``BaselineOnly`` with ALS. A user or item absent from
    training keeps a zero bias.

    Args:
        n_users: number of users.
        n_items: number of items.
        reg_i: item-bias penalty ``lambda_i`` (default 10).
        reg_u: user-bias penalty ``lambda_u`` (default 15).
        n_iters: number of alternating sweeps (default 10).
        rating_range: predictions are clipped to this ``(low, high)`` range; ``"train"``
            (default) takes the training ratings' min and max; ``None`` disables clipping.

    See the chapter "Collaborative filtering".
    """

    def __init__(self, n_users: int, n_items: int, reg_i: float = 10.0, reg_u: float = 15.0,
                 n_iters: int = 10, rating_range: tuple[float, float] | str | None = "train"):
        super().__init__(n_users, n_items)
        self.reg_i = check_nonnegative(reg_i, "reg_i")
        self.reg_u = check_nonnegative(reg_u, "reg_u")
        self.n_iters = check_positive_int(n_iters, "n_iters")
        self.rating_range = check_rating_range(rating_range)

    def fit(self, train: pd.DataFrame) -> BiasBaseline:
        """Fit ``mu``, ``b_u`` and ``b_i`` on the ratings of ``train``."""
        self._check_train(train, RATING_COLUMNS, rating_range=self.rating_range)
        self.rating_range_ = resolve_rating_range(self.rating_range, train["rating"])
        R = rating_matrix(train, self.n_users, self.n_items)  # (n_users, n_items)
        mask = interaction_mask(train, self.n_users, self.n_items)  # (n_users, n_items)
        mu, b_u, b_i = fit_biases(R, mask, self.reg_u, self.reg_i, self.n_iters)
        self.mu_, self.b_u_, self.b_i_ = mu, b_u.float(), b_i.float()
        return self

    def _clip(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.rating_range_ is None else x.clamp(*self.rating_range_)

    def score(self, user_idx) -> torch.Tensor:
        """``(batch,) -> (batch, n_items)`` predicted ratings ``mu + b_u + b_i``."""
        user_idx = self._users(user_idx)
        return self._clip(self.mu_ + self.b_u_[user_idx, None] + self.b_i_[None, :])

    def predict(self, user_idx, item_idx) -> torch.Tensor:
        """``(n,), (n,) -> (n,)`` predicted ratings ``mu + b_u + b_i``."""
        user_idx, item_idx = self._pairs(user_idx, item_idx)
        return self._clip(self.mu_ + self.b_u_[user_idx] + self.b_i_[item_idx])
