r"""The interface of few-shot (cold-start user) recommenders, two baselines, and the evaluation
of a recommender on a :class:`~recsys_ref.few_shot.protocol.FewShotSplit`.

A few-shot recommender is fitted on the meta-train users' ratings and then, given a new
user's support ratings, scores every item for that user
(:meth:`FewShotRecommender.score_new_users`); a user without support ratings gets the
model's prior (:math:`K = 0`). Any user model with such an
adaptation step plugs in here: the hook for a pretrained sequence backbone is a subclass
whose ``score_new_users`` encodes the support sequence, or regresses the support ratings on
the backbone's item embeddings with :func:`recsys_ref.few_shot.fold_in.gaussian_posterior`
(rows: users, ``X``: the rated items' embeddings), as
:class:`~recsys_ref.few_shot.fold_in.FoldInMF` does on BiasedMF's item factors.
See the chapter "Few-shot recommendation".
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from recsys_ref import metrics
from recsys_ref.checks import (
    check_frame,
    check_index,
    check_interactions,
    check_nonnegative,
    index_tensor,
)
from recsys_ref.few_shot.protocol import full_ranking_ndcg, metarec_metrics, query_ndcg
from recsys_ref.matrix import column
from recsys_ref.models.base import RequiresFit


def check_support(support, name: str = "support") -> pd.DataFrame:
    """Like :func:`~recsys_ref.checks.check_frame` for ratings, but an empty frame (no
    support ratings at all: :math:`K = 0`) is allowed."""
    columns = ["user_idx", "item_idx", "rating"]
    if isinstance(support, pd.DataFrame) and len(support) == 0:
        missing = [c for c in columns if c not in support.columns]
        if missing:
            raise ValueError(f"{name} is missing column(s) {missing}")
        return support
    return check_frame(support, name, columns)


class FewShotRecommender(RequiresFit):
    """Base class: ``fit(train)`` on meta-train users, ``score_new_users(support, users)``.

    Args:
        n_users, n_items: table sizes (new users keep their ``user_idx``).

    Attributes:
        predicts_ratings: ``False`` for models whose scores are not ratings (no RMSE).

    See the chapter "Few-shot recommendation".
    """

    predicts_ratings = True

    def __init__(self, n_users: int, n_items: int):
        if n_users <= 0 or n_items <= 0:
            raise ValueError(f"n_users and n_items must be positive, got {n_users}, {n_items}")
        self.n_users, self.n_items = int(n_users), int(n_items)

    def fit(self, train: pd.DataFrame, valid=None) -> FewShotRecommender:
        """Fit on the meta-train users' ratings; returns ``self``."""
        raise NotImplementedError

    def score_new_users(self, support: pd.DataFrame, users) -> torch.Tensor:
        """``(m, n_items)`` scores of ``users`` (``(m,)``) after adapting to ``support``."""
        raise NotImplementedError

    def _new_users(self, support: pd.DataFrame, users) -> torch.Tensor:
        """Check ``support`` and ``users``; return ``users`` as a long tensor."""
        check_support(support)
        users = index_tensor(users, "users", self.n_users)
        if users.dim() != 1:
            raise ValueError(f"users must be 1-D, got shape {tuple(users.shape)}")
        check_index(support["item_idx"].to_numpy(), "support.item_idx", self.n_items)
        if not set(support["user_idx"].unique()) <= set(users.tolist()):
            raise ValueError("support has ratings of users that are not in users")
        return users


class ItemMean(FewShotRecommender):
    r"""Predicts an item's mean training rating, the same for every user (support ignored).

    .. math:: \hat r_{ui} = \frac{\sum_{v \in R(i)} r_{vi} + \beta \mu}{|R(i)| + \beta}

    with :math:`\beta` = ``shrinkage`` (0: the plain mean); unrated items get :math:`\mu`.
    See the chapter "Few-shot recommendation".
    """

    def __init__(self, n_users: int, n_items: int, shrinkage: float = 0.0):
        super().__init__(n_users, n_items)
        self.shrinkage = check_nonnegative(shrinkage, "shrinkage")

    def fit(self, train: pd.DataFrame, valid=None) -> ItemMean:
        check_interactions(train, "train", self.n_users, self.n_items, ["rating"])
        items, r = column(train, "item_idx"), column(train, "rating", torch.float64)
        mu = float(r.mean())
        total = torch.zeros(self.n_items, dtype=torch.float64).index_add_(0, items, r)
        count = torch.bincount(items, minlength=self.n_items).double()
        beta = self.shrinkage
        self.means_ = torch.where(count + beta > 0, (total + beta * mu) / (count + beta).clamp(
            min=1e-12), mu).float()  # (n_items,)
        return self

    def score_new_users(self, support: pd.DataFrame, users) -> torch.Tensor:
        users = self._new_users(support, users)
        return self.means_.expand(len(users), -1).clone()


class Popularity(FewShotRecommender):
    """Ranks items by their number of training ratings (support ignored; not a rating).

    See the chapter "Few-shot recommendation".
    """

    predicts_ratings = False

    def fit(self, train: pd.DataFrame, valid=None) -> Popularity:
        check_interactions(train, "train", self.n_users, self.n_items)
        self.counts_ = torch.bincount(column(train, "item_idx"),
                                      minlength=self.n_items).float()  # (n_items,)
        return self

    def score_new_users(self, support: pd.DataFrame, users) -> torch.Tensor:
        users = self._new_users(support, users)
        return self.counts_.expand(len(users), -1).clone()


def _predictions(model, support, query):
    users = np.unique(query["user_idx"].to_numpy())
    scores = model.score_new_users(support[support["user_idx"].isin(users)], users)
    row = np.searchsorted(users, query["user_idx"].to_numpy())
    pred = scores[torch.as_tensor(row), column(query, "item_idx")]  # (n_query,)
    return users, scores, pred


def evaluate_new_users(model: FewShotRecommender, support: pd.DataFrame, query: pd.DataFrame,
                       k: int = 10, threshold: float | None = 4.0,
                       exclude: pd.DataFrame | None = None, per_user: bool = False):
    """RMSE, MAE and NDCG@k of a few-shot recommender on new users' query sets.

    ``NDCG@k`` ranks each user's query items by predicted rating (graded by the true rating,
    :func:`~recsys_ref.few_shot.protocol.query_ndcg`); ``FullNDCG@k`` ranks every item not in
    the user's support set, the query items rated ``>= threshold`` being the relevant ones
    (:func:`~recsys_ref.few_shot.protocol.full_ranking_ndcg`). RMSE/MAE are NaN for models
    whose scores are not ratings. Metrics are averaged over users (RMSE over ratings).

    Args:
        model: a fitted few-shot recommender.
        support, query: the new users' support and query ratings (a
            :class:`~recsys_ref.few_shot.protocol.FewShotSplit`'s).
        k: the cut-off of both NDCGs.
        threshold: the rating from which a query item is relevant in ``FullNDCG@k``.
        exclude: ratings whose items are removed from the full ranking (``None``: the
            support set). Pass the same frame for every K, e.g. every rating before the
            query set, so that all K rank the same candidate items.

        per_user: also return a frame with one row per user: ``user_idx, sse`` (the sum of
            squared errors of the user's query ratings, NaN for models that predict no
            ratings) and ``n`` (their number), for paired comparisons
            (:func:`recsys_ref.evaluation.paired_rmse_gap`).

    Returns:
        ``{"RMSE", "MAE", "NDCG@k", "FullNDCG@k", "n_users"}`` (and the per-user frame if
        ``per_user``). See the chapter "Few-shot recommendation".
    """
    check_frame(query, "query", ["user_idx", "item_idx", "rating"])
    users, scores, pred = _predictions(model, support, query)
    target = column(query, "rating", torch.float32)
    ok = model.predicts_ratings
    out = {"RMSE": metrics.rmse(pred, target) if ok else math.nan,
           "MAE": metrics.mae(pred, target) if ok else math.nan,
           f"NDCG@{k}": float(query_ndcg(query, pred.numpy(), k).mean()),
           f"FullNDCG@{k}": float(full_ranking_ndcg(
               scores, users, support if exclude is None else exclude, query, k,
               threshold).mean()),
           "n_users": len(users)}
    if not per_user:
        return out
    err2 = ((pred.double() - target.double()) ** 2).numpy() if ok else np.full(len(query), np.nan)
    frame = (pd.DataFrame({"user_idx": query["user_idx"].to_numpy(), "sse": err2, "n": 1})
             .groupby("user_idx", sort=True, as_index=False).sum(min_count=1))
    return out, frame


def evaluate_metarec(model: FewShotRecommender, support: pd.DataFrame, query: pd.DataFrame,
                     k: int = 5) -> dict:
    """RecBole-MetaRec's Precision@k and nDCG@k within the query items (and RMSE, MAE).

    See :func:`~recsys_ref.few_shot.protocol.metarec_metrics` for how relevance is defined
    there. See the chapter "Few-shot recommendation".
    """
    check_frame(query, "query", ["user_idx", "item_idx", "rating"])
    _, _, pred = _predictions(model, support, query)
    target = column(query, "rating", torch.float32)
    ok = model.predicts_ratings
    return metarec_metrics(query, pred.numpy(), k) | {
        "RMSE": metrics.rmse(pred, target) if ok else math.nan,
        "MAE": metrics.mae(pred, target) if ok else math.nan}
