r"""Fold-in: the closed-form Bayesian-ridge estimate of a new user's (or item's) factors with
the other side of a trained :class:`~recsys_ref.models.mf.BiasedMF` held fixed.

With the item side fixed, a user's ratings are a linear regression on the features
:math:`x_i = (q_i, 1)` with target :math:`r_{ui} - \mu - b_i` and weights
:math:`\theta_u = (p_u, b_u)`. A Gaussian prior :math:`\theta_u \sim N(m_0, \Sigma_0)` and
Gaussian noise :math:`N(0, \sigma^2)` give the posterior

.. math::
    :label: fold-in-posterior

    \Sigma_u = \Big(\Sigma_0^{-1} + \tfrac{1}{\sigma^2} X_u^\top X_u\Big)^{-1}, \qquad
    m_u = \Sigma_u \Big(\Sigma_0^{-1} m_0 + \tfrac{1}{\sigma^2} X_u^\top y_u\Big)

whose mean is the ridge solve of ALS (:func:`recsys_ref.models.mf.als_step`) when
:math:`m_0 = 0` and :math:`\Sigma_0^{-1} = n_u^\nu \mathrm{diag}(\lambda, \dots, \lambda_b)
/ \sigma^2`, and whose covariance gives the predictive variance
:math:`x_i^\top \Sigma_u x_i + \sigma^2` of a rating. Items fold in the same way with the
user side fixed. See the chapter "Few-shot recommendation".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from recsys_ref.checks import check_frame, check_index, index_tensor
from recsys_ref.few_shot.base import FewShotRecommender, check_support
from recsys_ref.matrix import column
from recsys_ref.models.mf import BiasedMF, MFConfig
from recsys_ref.training import gather_rows, row_blocks

PRIORS = ("ridge", "empirical")


@dataclass
class GaussianPosterior:
    """Posterior ``N(mean[r], cov[r])`` of the weights of each of ``n`` rows.

    Attributes:
        mean: ``(n, k)``; cov: ``(n, k, k)``; noise_var: :math:`\\sigma^2`.
    """

    mean: torch.Tensor
    cov: torch.Tensor
    noise_var: float

    def predictive_variance(self, rows: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """``(n,)`` variance :math:`x^\\top \\Sigma_r x + \\sigma^2` of a new observation
        with features ``X`` ``(n, k)`` of row ``rows`` ``(n,)``."""
        X = X.to(self.cov.dtype)
        out = torch.empty(len(X), dtype=self.cov.dtype)
        for r in torch.unique(rows):  # one row's covariance at a time: never (n, k, k)
            at = rows == r
            out[at] = ((X[at] @ self.cov[r]) * X[at]).sum(1)
        return out + self.noise_var


def gaussian_posterior(rows: torch.Tensor, X: torch.Tensor, y: torch.Tensor, n_rows: int,
                       prior_mean: torch.Tensor, prior_precision: torch.Tensor,
                       noise_var: float = 1.0) -> GaussianPosterior:
    """Posterior :eq:`fold-in-posterior` of one Bayesian linear regression per row, batched.

    Args:
        rows: ``(n,)`` the row (user or item) of each observation, in ``0..n_rows-1``.
        X: ``(n, k)`` features of each observation; y: ``(n,)`` targets.
        n_rows: number of rows; a row without observations keeps its prior.
        prior_mean: ``(k,)`` or ``(n_rows, k)`` :math:`m_0`.
        prior_precision: ``(k, k)`` or ``(n_rows, k, k)`` :math:`\\Sigma_0^{-1}`.
        noise_var: :math:`\\sigma^2`.

    Returns:
        A :class:`GaussianPosterior` in float64. See the chapter "Few-shot recommendation".
    """
    n, k = X.shape
    if rows.shape != (n,) or y.shape != (n,):
        raise ValueError(f"rows and y must have shape ({n},), got {tuple(rows.shape)}, "
                         f"{tuple(y.shape)}")
    check_index(rows, "rows", n_rows)
    if not noise_var > 0:
        raise ValueError(f"noise_var must be > 0, got {noise_var}")
    m0 = prior_mean.double().expand(n_rows, k)  # (n_rows, k)
    P0 = prior_precision.double().expand(n_rows, k, k)  # (n_rows, k, k)
    mean, cov = m0.clone(), torch.linalg.inv(P0)
    Xp = torch.cat([X.double(), X.new_zeros(1, k, dtype=torch.float64)])  # row n: padding
    yp = torch.cat([y.double(), y.new_zeros(1, dtype=torch.float64)])
    if n:
        for r, _, e in row_blocks(rows, torch.arange(n), n_rows):
            Xb, yb = gather_rows(Xp, e), gather_rows(yp, e)  # (g, L, k), zero rows on padding
            P0b = gather_rows(P0, r)  # (g, k, k)
            A = P0b + Xb.mT @ Xb / noise_var  # (g, k, k) posterior precision
            b = P0b @ gather_rows(m0, r)[:, :, None] + Xb.mT @ yb[:, :, None] / noise_var
            L = torch.linalg.cholesky(A)
            mean.index_copy_(0, r, torch.cholesky_solve(b, L)[:, :, 0])  # (g, k)
            cov.index_copy_(0, r, torch.cholesky_inverse(L))
    return GaussianPosterior(mean, cov, float(noise_var))


def _fold_in(model: BiasedMF, ratings: pd.DataFrame, ids, side: str, prior_mean, prior_cov,
             noise_var) -> GaussianPosterior:
    if not hasattr(model, "factors_"):
        raise ValueError("model must be a fitted BiasedMF")
    check_support(ratings, "ratings")
    f, cfg = model.factors_, model.config
    own, other = ("user_idx", "item_idx") if side == "users" else ("item_idx", "user_idx")
    other_f, other_b = (f.Q, f.b_i) if side == "users" else (f.P, f.b_u)
    ids = index_tensor(ids, side, len(f.P) if side == "users" else len(f.Q))
    pos = {int(u): j for j, u in enumerate(ids)}
    if not set(ratings[own].unique()) <= set(pos):
        raise ValueError(f"ratings has {side} that are not in the ids to fold in")
    check_index(ratings[other].to_numpy(), f"ratings.{other}", len(other_f))
    rows = torch.tensor([pos[int(v)] for v in ratings[own]], dtype=torch.long)  # (n,)
    cols = column(ratings, other)
    with torch.no_grad():
        X = torch.cat([other_f[cols], other_f.new_ones(len(cols), 1)], 1).double()  # (n, d+1)
        y = column(ratings, "rating", torch.float64) - model.mu_ - other_b[cols].double()
    d1, m = X.shape[1], len(ids)
    noise_var = 1.0 if noise_var is None else float(noise_var)
    if prior_mean is None:
        prior_mean = torch.zeros(d1, dtype=torch.float64)
    if prior_cov is None:  # the MF penalty n^nu diag(lambda, ..., lambda_b), scaled by 1/sigma^2
        n = torch.bincount(rows, minlength=m).double().clamp(min=1)  # (m,)
        penalty = torch.tensor([cfg.reg] * (d1 - 1) + [cfg.reg_bias], dtype=torch.float64)
        prior_precision = torch.diag_embed(n[:, None] ** cfg.nu * penalty) / noise_var
    else:
        prior_precision = torch.linalg.inv(torch.as_tensor(prior_cov).double())
    return gaussian_posterior(rows, X, y, m, torch.as_tensor(prior_mean), prior_precision,
                              noise_var)


def fold_in_users(model: BiasedMF, ratings: pd.DataFrame, users, prior_mean=None,
                  prior_cov=None, noise_var: float | None = None) -> GaussianPosterior:
    """Posterior of the new users' ``(p_u, b_u)`` given their ratings, items fixed.

    Args:
        model: a fitted :class:`~recsys_ref.models.mf.BiasedMF` (its ``Q``, ``b_i``, ``mu``).
        ratings: the new users' ratings (``user_idx, item_idx, rating``).
        users: ``(m,)`` the users to fold in (row ``j`` of the result is ``users[j]``).
        prior_mean: ``(d+1,)`` or ``(m, d+1)``; ``None``: zero.
        prior_cov: ``(d+1, d+1)`` or ``(m, d+1, d+1)``; ``None``: the model's own penalty
            (then the mean is exactly the ALS user step).
        noise_var: :math:`\\sigma^2`; ``None``: 1.

    Returns:
        A :class:`GaussianPosterior` with rows in ``users`` order.
        See the chapter "Few-shot recommendation".
    """
    return _fold_in(model, ratings, users, "users", prior_mean, prior_cov, noise_var)


def fold_in_items(model: BiasedMF, ratings: pd.DataFrame, items, prior_mean=None,
                  prior_cov=None, noise_var: float | None = None) -> GaussianPosterior:
    """Posterior of new items' ``(q_i, b_i)`` given their ratings by known users (users fixed).

    Arguments as in :func:`fold_in_users`, with items for users; a prior centred on the
    factors predicted from content (:class:`recsys_ref.few_shot.content.ContentMap`) gives
    the K-shot item adaptation. See the chapter "Few-shot recommendation".
    """
    return _fold_in(model, ratings, items, "items", prior_mean, prior_cov, noise_var)


def residual_variance(model: BiasedMF, ratings: pd.DataFrame) -> float:
    """Mean squared error of ``model`` (unclipped) on ``ratings``: an estimate of sigma^2."""
    check_frame(ratings, "ratings", ["user_idx", "item_idx", "rating"])
    with torch.no_grad():
        pred = model.mu_ + model.factors_(column(ratings, "user_idx"),
                                          column(ratings, "item_idx"))
    return float(((column(ratings, "rating", torch.float32) - pred) ** 2).mean())


class FoldInMF(FewShotRecommender):
    r"""A BiasedMF fitted on the meta-train users; new users folded in by :func:`fold_in_users`.

    Priors: ``"ridge"`` is the MF penalty (the ALS user step; with no support the user is
    :math:`\mu + b_i`), ``"empirical"`` a Gaussian fitted to the meta-train users'
    :math:`(p_u, b_u)` (mean and covariance, :math:`\sigma^2` the training residual
    variance): the empirical-Bayes estimate, which shrinks a new user towards the typical
    user rather than towards zero. Given ``user_features``, the empirical prior's mean is
    predicted from them (a :class:`~recsys_ref.few_shot.content.ContentMap` fitted on the
    meta-train users) and its covariance is that of the map's residuals: a new user is
    shrunk towards users like them.

    Args:
        n_users, n_items: table sizes.
        config: the :class:`~recsys_ref.models.mf.MFConfig` of the model fitted by :meth:`fit`.
        prior: ``"ridge"`` or ``"empirical"``.
        model: an already fitted BiasedMF to use instead (``fit`` then only sets the prior).
        user_features: optional ``(n_users, f)`` float features of every user (e.g.
            ``user_features(ml.users).one_hot()``), for the empirical prior.
        feature_reg: the ridge penalty of the features-to-prior map.

    See the chapter "Few-shot recommendation".
    """

    def __init__(self, n_users: int, n_items: int, config: MFConfig | None = None,
                 prior: str = "empirical", model: BiasedMF | None = None,
                 user_features: torch.Tensor | None = None, feature_reg: float = 10.0):
        super().__init__(n_users, n_items)
        if prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}, got {prior!r}")
        if user_features is not None and (prior != "empirical" or user_features.dim() != 2
                                          or len(user_features) != n_users):
            raise ValueError(f"user_features must be ({n_users}, f) and go with the "
                             f"empirical prior")
        self.config, self.prior, self.model = config or MFConfig(), prior, model
        self.user_features, self.feature_reg = user_features, feature_reg

    def fit(self, train: pd.DataFrame, valid=None) -> FoldInMF:
        if self.model is None:
            self.model = BiasedMF(self.n_users, self.n_items, self.config).fit(train)
        f = self.model.factors_
        self.noise_var_ = residual_variance(self.model, train)
        users = torch.as_tensor(np.unique(train["user_idx"].to_numpy()))
        theta = torch.cat([f.P[users], f.b_u[users, None]], 1).detach().double()  # (n, d+1)
        self.prior_mean_ = theta.mean(0)
        self.prior_cov_ = torch.cov(theta.T) + 1e-6 * torch.eye(theta.shape[1])
        if self.user_features is not None:
            # imported here: content imports this module
            from recsys_ref.few_shot.content import ContentMap

            self.feature_map_ = ContentMap(self.feature_reg).fit(self.user_features[users],
                                                                 theta)
            self.prior_cov_ = self.feature_map_.residual_cov_ + 1e-6 * torch.eye(
                theta.shape[1])
        return self

    def prior_means(self, users: torch.Tensor) -> torch.Tensor:
        """``(m, d+1)`` the empirical prior mean of each of ``users``."""
        if self.user_features is None:
            return self.prior_mean_.expand(len(users), -1)
        return self.feature_map_.predict(self.user_features[users])

    def fold_in(self, support: pd.DataFrame, users) -> GaussianPosterior:
        """The posterior of each of ``users``' ``(p_u, b_u)`` (rows in ``users`` order)."""
        users = self._new_users(support, users)
        if self.prior == "ridge":
            return fold_in_users(self.model, support, users, noise_var=self.noise_var_)
        return fold_in_users(self.model, support, users, self.prior_means(users),
                             self.prior_cov_, self.noise_var_)

    @torch.no_grad()
    def score_new_users(self, support: pd.DataFrame, users) -> torch.Tensor:
        theta = self.fold_in(support, users).mean.float()  # (m, d+1)
        f, d = self.model.factors_, self.model.factors_.P.shape[1]
        scores = self.model.mu_ + f.b_i[None, :] + theta[:, d:] + theta[:, :d] @ f.Q.T
        return self.model._clip(scores)  # (m, n_items)
