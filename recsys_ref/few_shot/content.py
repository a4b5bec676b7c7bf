r"""Cold-start items: factors predicted from content, then folded in as ratings arrive.

A new item has no ratings, so a BiasedMF has no :math:`(q_i, b_i)` for it. A ridge
regression fitted on the warm items maps content (genres, year, a title embedding) to the
factors,

.. math::
    :label: content-map

    (q_i, b_i) \approx W^\top (x_i - \bar x) + \bar t, \qquad
    W = \arg\min_W \sum_{i\ \mathrm{warm}} \|t_i - \bar t - W^\top (x_i - \bar x)\|^2
        + \lambda \|W\|_F^2

which scores the item zero-shot. When the first :math:`K` ratings arrive, the item is folded
in (:func:`~recsys_ref.few_shot.fold_in.fold_in_items`) with the Gaussian prior centred on
the content prediction, whose covariance :math:`\Sigma_0` is that of the map's residuals on
the warm items: content is the prior, ratings the evidence.
See the chapter "Few-shot recommendation".
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from recsys_ref import metrics
from recsys_ref.checks import check_frame, check_nonnegative, check_positive_int, index_tensor
from recsys_ref.features import item_features
from recsys_ref.few_shot.fold_in import GaussianPosterior, fold_in_items, residual_variance
from recsys_ref.few_shot.protocol import FewShotSplit, full_ranking_ndcg
from recsys_ref.matrix import column
from recsys_ref.models.mf import BiasedMF

PARTS = ("year", "genres", "text")


def content_features(items: pd.DataFrame, text: torch.Tensor | None = None,
                     parts: tuple[str, ...] = ("year", "genres")) -> torch.Tensor:
    """``(n_items, f)`` content: year bucket one-hot, genres multi-hot, title embedding.

    Args:
        items: ``load_movielens100k().items``.
        text: ``(n_items, m)`` title embeddings (:mod:`recsys_ref.text_embeddings`), needed
            when ``"text"`` is in ``parts``.
        parts: which of :data:`PARTS` to include, in that order.
    """
    if not parts or not set(parts) <= set(PARTS):
        raise ValueError(f"parts must be a non-empty subset of {PARTS}, got {parts}")
    if "text" in parts and text is None:
        raise ValueError("parts includes 'text' but no text embedding was given")
    f = item_features(items)
    out = []
    if "year" in parts:
        out.append(torch.nn.functional.one_hot(f.categorical["year"],
                                               f.cardinality["year"]).float())
    if "genres" in parts:
        out.append(f.dense)
    if "text" in parts:
        out.append(torch.as_tensor(text, dtype=torch.float32))
    return torch.cat(out, 1)


class ContentMap:
    """Ridge regression :eq:`content-map` from content features to targets, with intercept.

    Args:
        reg: :math:`\\lambda` (the intercept is not penalised), or several candidates: the
            fit keeps the one with the lowest leave-one-out error ``loo_mse_`` (ties: the
            first), as ``reg_``, and every candidate's error in ``loo_by_reg_``.
    """

    def __init__(self, reg: float | tuple[float, ...] = 1.0):
        regs = tuple(reg) if isinstance(reg, tuple | list) else (reg,)
        if not regs:
            raise ValueError("reg must be a penalty or a non-empty sequence of them")
        self.reg = tuple(check_nonnegative(r, "reg") for r in regs)

    def fit(self, X: torch.Tensor, T: torch.Tensor) -> ContentMap:
        """Fit on ``X`` ``(n, f)`` and ``T`` ``(n, k)``; sets ``residual_cov_`` ``(k, k)``
        and ``loo_mse_``.

        ``residual_cov_`` is the covariance of the *leave-one-out* residuals
        :math:`e_i / (1 - h_{ii})` (:math:`h_{ii}` the leverage of row :math:`i`): in-sample
        residuals of a map with many features (384 for a title embedding) are too small, and
        a prior built on them would be overconfident about a new item. ``loo_mse_``, their
        mean squared norm, is the leave-one-out error that chooses ``reg`` in the chapter.
        """
        X, T = torch.as_tensor(X).double(), torch.as_tensor(T).double()
        if X.dim() != 2 or T.dim() != 2 or len(X) != len(T) or len(X) < 2:
            raise ValueError(f"X and T must be (n, f) and (n, k) with n >= 2, got "
                             f"{tuple(X.shape)} and {tuple(T.shape)}")
        self.loo_by_reg_ = {}
        for reg in self.reg:  # each candidate's leave-one-out error, then the best one refitted
            self._fit_one(X, T, reg)
            self.loo_by_reg_[reg] = self.loo_mse_
        self.reg_ = min(self.reg, key=self.loo_by_reg_.get)
        if len(self.reg) > 1:
            self._fit_one(X, T, self.reg_)
        return self

    def _fit_one(self, X: torch.Tensor, T: torch.Tensor, reg: float) -> None:
        self.x_mean_, self.t_mean_ = X.mean(0), T.mean(0)
        Xc, Tc = X - self.x_mean_, T - self.t_mean_
        A = Xc.T @ Xc + reg * torch.eye(X.shape[1], dtype=torch.float64)  # (f, f)
        self.W_ = torch.linalg.lstsq(A, Xc.T @ Tc).solution  # (f, k); lstsq: A may be singular
        # (n,) leverages h_ii of the fit with its intercept (1/n: the column of ones)
        hat = 1 / len(X) + (Xc * torch.linalg.lstsq(A, Xc.T).solution.T).sum(1)
        resid = (Tc - Xc @ self.W_) / (1 - hat.clamp(max=1 - 1e-6))[:, None]  # LOO residuals
        self.residual_cov_ = resid.T @ resid / len(X)  # (k, k)
        self.loo_mse_ = float(resid.square().sum(1).mean())

    def predict(self, X: torch.Tensor) -> torch.Tensor:
        """``(m, f) -> (m, k)`` float64 predictions."""
        return (torch.as_tensor(X).double() - self.x_mean_) @ self.W_ + self.t_mean_


class ColdItemMF:
    """A BiasedMF fitted on warm items, extended to cold items through a :class:`ContentMap`.

    Args:
        model: a BiasedMF fitted on the training ratings (cold items have no ratings there).
        content: ``(n_items, f)`` content features (:func:`content_features`).
        reg: the content map's ridge penalty, or candidates to choose from by leave-one-out
            error (:class:`ContentMap`).
        min_ratings: warm items need this many training ratings to train the map (items
            with fewer have poorly estimated factors).
    """

    def __init__(self, model: BiasedMF, content: torch.Tensor,
                 reg: float | tuple[float, ...] = 10.0,
                 min_ratings: int = 5):
        if not hasattr(model, "factors_"):
            raise ValueError("model must be a fitted BiasedMF")
        if content.dim() != 2 or len(content) != model.n_items:
            raise ValueError(f"content must be ({model.n_items}, f), got {tuple(content.shape)}")
        self.model, self.content = model, content
        self.map = ContentMap(reg)
        self.min_ratings = check_positive_int(min_ratings, "min_ratings")

    def fit(self, train: pd.DataFrame) -> ColdItemMF:
        """Fit the content map on the items with ``min_ratings`` ratings in ``train``."""
        check_frame(train, "train", ["user_idx", "item_idx", "rating"])
        counts = torch.bincount(column(train, "item_idx"), minlength=self.model.n_items)
        warm = torch.nonzero(counts >= self.min_ratings).squeeze(1)
        f = self.model.factors_
        T = torch.cat([f.Q[warm], f.b_i[warm, None]], 1).detach()  # (n_warm, d+1)
        self.map.fit(self.content[warm], T)
        self.noise_var_ = residual_variance(self.model, train)
        return self

    def item_prior(self, items) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean (m, d+1), cov (d+1, d+1))``: the content prediction and its residual cov."""
        items = index_tensor(items, "items", len(self.content))
        k = self.map.residual_cov_.shape[0]
        return self.map.predict(self.content[items]), self.map.residual_cov_ + 1e-6 * torch.eye(
            k, dtype=torch.float64)

    def adapt_items(self, support: pd.DataFrame, items) -> GaussianPosterior:
        """Posterior of ``items``' ``(q_i, b_i)`` given their ``support`` ratings (K-shot);
        with no ratings it is the content prior (zero-shot)."""
        mean, cov = self.item_prior(items)
        return fold_in_items(self.model, support, items, mean, cov, self.noise_var_)

    @torch.no_grad()
    def score_items(self, users, items, support: pd.DataFrame | None = None) -> torch.Tensor:
        """``(n_u, m)`` predicted ratings of ``users`` for the cold ``items``.

        Args:
            users: ``(n_u,)`` known users. items: ``(m,)`` cold items.
            support: ratings of the cold items seen so far (``None``: zero-shot).
        """
        users = index_tensor(users, "users", self.model.n_users)
        if support is None or len(support) == 0:
            theta = self.item_prior(items)[0]
        else:
            theta = self.adapt_items(support, items).mean
        f, d = self.model.factors_, self.model.factors_.P.shape[1]
        theta = theta.float()  # (m, d+1)
        out = self.model.mu_ + f.b_u[users, None] + theta[None, :, d] + f.P[users] @ theta[:, :d].T
        return self.model._clip(out)


def cold_item_split(ratings: pd.DataFrame, k: int = 0, test_frac: float = 0.1,
                    min_ratings: int = 20, seed: int = 0, query_start: int | None = None,
                    ) -> FewShotSplit:
    """Hold out items with all their ratings; the first ``k`` ratings of each (in time) are
    its support set (what has arrived so far), the later ones its query set.

    Args:
        ratings: ``user_idx, item_idx, rating, timestamp``.
        k: support ratings per cold item (0: zero-shot).
        test_frac: fraction of the eligible items held out.
        min_ratings: only items with more than ``max(k, min_ratings, query_start)`` ratings
            are eligible, so each cold item has a query set.
        seed: seeds the choice of items.
        query_start: the query set is each item's ratings from position ``query_start`` on
            (``None``: ``k``); pass the largest K of a curve to keep the same query set and
            the same items for every K.

    Returns:
        A :class:`~recsys_ref.few_shot.protocol.FewShotSplit` (``train``: the other items'
        ratings). See the chapter "Few-shot recommendation".
    """
    check_frame(ratings, "ratings", ["user_idx", "item_idx", "rating", "timestamp"])
    k = check_positive_int(k, "k", minimum=0)
    query_start = k if query_start is None else check_positive_int(query_start, "query_start",
                                                                   minimum=k)
    if not 0 < test_frac < 1:
        raise ValueError(f"test_frac must be in (0, 1), got {test_frac}")
    counts = ratings.groupby("item_idx").size()
    eligible = counts.index[counts > max(query_start, min_ratings)].to_numpy()
    rng = np.random.default_rng(seed)
    cold = np.sort(rng.choice(eligible, round(test_frac * len(eligible)), replace=False))
    order = ratings.sort_values(["item_idx", "timestamp"], kind="stable")
    pos = order.groupby("item_idx").cumcount().to_numpy()
    is_cold = order["item_idx"].isin(cold).to_numpy()
    return FewShotSplit(ratings[~ratings["item_idx"].isin(cold)], order[is_cold & (pos < k)],
                        order[is_cold & (pos >= query_start)])


def evaluate_cold_items(model: ColdItemMF, split: FewShotSplit, k: int = 10,
                        threshold: float = 4.0, exclude: pd.DataFrame | None = None,
                        per_user: bool = False):
    """RMSE on the cold items' query ratings, and NDCG@k ranking *the cold items only*.

    Each user with a query rating ``>= threshold`` ranks every cold item they have not rated
    in ``exclude`` (``None``: the support set; pass every rating before the query set, the
    same frame for every K, so that all K rank the same candidates); relevant: their query
    items rated ``>= threshold``.

    Returns:
        ``{"RMSE", "NDCG@k", "n_users"}`` (and, if ``per_user``, a frame with one row per
        user of the query set: ``user_idx``, ``sse`` and ``n`` of their query ratings, the
        units of :func:`recsys_ref.evaluation.paired_rmse_gap`, and ``ndcg``, NaN for a user
        without a relevant item). See the chapter "Few-shot recommendation".
    """
    check_frame(split.query, "split.query", ["user_idx", "item_idx", "rating"])
    cold = np.unique(split.query["item_idx"].to_numpy())
    users = np.unique(split.query["user_idx"].to_numpy())
    support = split.support if len(split.support) else None
    s = model.score_items(users, cold, support)  # (n_u, n_cold)
    scores = torch.full((len(users), model.model.n_items), -math.inf)
    scores[:, torch.as_tensor(cold)] = s
    row = torch.as_tensor(np.searchsorted(users, split.query["user_idx"].to_numpy()))
    pred = scores[row, column(split.query, "item_idx")]
    rmse = metrics.rmse(pred, column(split.query, "rating", torch.float32))
    sup = split.support if exclude is None else exclude
    sup = sup[sup["user_idx"].isin(users)]
    ndcg = full_ranking_ndcg(scores, users, sup, split.query, k, threshold)
    out = {"RMSE": rmse, f"NDCG@{k}": float(ndcg.mean()), "n_users": len(ndcg)}
    if not per_user:
        return out
    rel = split.query[split.query["rating"] >= threshold]
    err2 = (pred.double() - column(split.query, "rating", torch.float64)).square().numpy()
    frame = pd.DataFrame({"user_idx": users,  # (n_u,) sums over each user's query ratings
                          "sse": np.bincount(row.numpy(), err2, len(users)),
                          "n": np.bincount(row.numpy(), minlength=len(users))})
    evaluated = np.isin(users, rel["user_idx"].to_numpy())  # full_ranking_ndcg's users
    frame["ndcg"] = np.nan
    frame.loc[evaluated, "ndcg"] = ndcg.numpy()
    return out, frame
