"""The interface every model of the book implements (after Cornac's ``score``).

A model is fitted on a ratings frame (``user_idx, item_idx, rating, timestamp``) and then
scores all items for a batch of users. Ranking, masking of seen items and top-k live here,
once; metrics live in :mod:`recsys_ref.metrics`. See the chapter "Collaborative filtering".
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from recsys_ref.checks import check_index, check_interactions, check_k
from recsys_ref.matrix import UserItems
from recsys_ref.metrics import rank_order


def _tensor(x) -> torch.Tensor:
    """Indices as a tensor; array-likes are copied (pandas hands out read-only arrays)."""
    return x if isinstance(x, torch.Tensor) else torch.tensor(np.asarray(x))


class NotFittedError(AttributeError, ValueError):
    """Raised when a model is used (``score``, ``predict``) before ``fit``."""


class RequiresFit:
    """Mixin: reading a fitted attribute (a trailing underscore, as in scikit-learn) before
    ``fit`` raises :class:`NotFittedError` saying so, not a bare ``AttributeError``."""

    def __getattr__(self, name: str):
        # only reached when normal lookup fails
        if name.endswith("_") and not name.startswith("__"):
            raise NotFittedError(f"{type(self).__name__} is not fitted yet: call fit() first "
                                 f"(missing {name})")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


class Recommender(RequiresFit):
    """Base class: subclasses implement ``fit`` and ``score``; rating models also ``predict``.

    Args:
        n_users: number of users (indices ``0..n_users-1``).
        n_items: number of items (indices ``0..n_items-1``).
    """

    def __init__(self, n_users: int, n_items: int):
        if n_users <= 0 or n_items <= 0:
            raise ValueError(f"n_users and n_items must be positive, got {n_users}, {n_items}")
        self.n_users, self.n_items = int(n_users), int(n_items)

    def fit(self, train: pd.DataFrame) -> Recommender:
        """Fit on a ratings frame; returns ``self``."""
        raise NotImplementedError

    def _check_train(self, train: pd.DataFrame, columns=("user_idx", "item_idx"), *,
                     rating_range=None, unique: bool = True) -> pd.DataFrame:
        """Check a training frame against this model's sizes (see
        :func:`recsys_ref.checks.check_interactions`)."""
        return check_interactions(train, "train", self.n_users, self.n_items, columns,
                                  rating_range=rating_range, unique=unique)

    def score(self, user_idx: torch.Tensor) -> torch.Tensor:
        """Scores of every item per user, ``(batch,) -> (batch, n_items)``; higher is better."""
        raise NotImplementedError

    def predict(self, user_idx, item_idx) -> torch.Tensor:
        """Predicted rating (or score) of each (user, item) pair: ``(n,), (n,) -> (n,)``.

        The default gathers from :meth:`score`; rating models override it with a direct formula.
        """
        user_idx, item_idx = self._pairs(user_idx, item_idx)
        out = torch.empty(len(user_idx))
        for start in range(0, len(user_idx), 4096):  # bounded memory: (4096, n_items) at most
            u, i = user_idx[start:start + 4096], item_idx[start:start + 4096]
            out[start:start + 4096] = self.score(u).gather(1, i[:, None])[:, 0]
        return out

    def recommend(self, user_idx, k: int, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """Top-``k`` items per user, best first: ``(batch,) -> (batch, k)`` item indices.

        Args:
            user_idx: users to recommend for.
            k: list length, ``1 <= k <= n_items``.
            exclude: optional items never to recommend (usually the training interactions):
                a :class:`recsys_ref.matrix.UserItems` (sparse: only this batch's rows are
                built), or a ``(n_users, n_items)`` bool mask
                (:func:`recsys_ref.matrix.interaction_mask`).
        """
        k = check_k(k, self.n_items)
        user_idx = self._users(user_idx)
        scores = self.score(user_idx)  # (batch, n_items)
        if isinstance(exclude, UserItems):
            if (exclude.n_users, exclude.n_items) != (self.n_users, self.n_items):
                raise ValueError(f"exclude has sizes ({exclude.n_users}, {exclude.n_items}), "
                                 f"the model ({self.n_users}, {self.n_items})")
            scores = scores.masked_fill(exclude.rows(user_idx), float("-inf"))
        elif exclude is not None:
            if exclude.shape != (self.n_users, self.n_items) or exclude.dtype != torch.bool:
                raise ValueError(f"exclude must be a bool tensor of shape "
                                 f"({self.n_users}, {self.n_items}), got {tuple(exclude.shape)}")
            scores = scores.masked_fill(exclude[user_idx], float("-inf"))
        # ties go to the lower item index (:func:`recsys_ref.metrics.rank_order`), not to
        # whatever order ``topk`` happens to return
        return rank_order(scores.float(), k=k)

    def _users(self, user_idx) -> torch.Tensor:
        user_idx = _tensor(user_idx)
        if user_idx.dim() != 1:
            raise ValueError(f"user_idx must be 1-D, got shape {tuple(user_idx.shape)}")
        check_index(user_idx, "user_idx", self.n_users)
        return user_idx.long()

    def _pairs(self, user_idx, item_idx) -> tuple[torch.Tensor, torch.Tensor]:
        user_idx, item_idx = self._users(user_idx), _tensor(item_idx)
        if item_idx.shape != user_idx.shape:
            raise ValueError(f"user_idx and item_idx must have the same shape, got "
                             f"{tuple(user_idx.shape)} and {tuple(item_idx.shape)}")
        check_index(item_idx, "item_idx", self.n_items)
        return user_idx, item_idx.long()


class ConfiguredRecommender(Recommender):
    """A recommender whose hyperparameters live in a config dataclass, ``config_class``.

    ``Model(n_users, n_items, config=None, **overrides)`` keeps ``config`` (default: the
    class's defaults) with the keyword arguments replaced; the dataclass's ``__post_init__``
    validates the result. See the chapter "Matrix factorization".
    """

    config_class: type

    def __init__(self, n_users: int, n_items: int, config=None, **overrides):
        super().__init__(n_users, n_items)
        self.config = replace(config or self.config_class(), **overrides)  # validates


class ScoreTable(Recommender):
    """A "model" whose scores were computed elsewhere: a ``(n_users, n_items)`` tensor.

    Lets a table of scores (e.g. a transformation of another model's scores) go through the
    shared evaluation code. See the chapter "Deep recommenders".

    Args:
        scores: float ``(n_users, n_items)``.
    """

    def __init__(self, scores: torch.Tensor):
        if not isinstance(scores, torch.Tensor) or scores.dim() != 2:
            raise ValueError("scores must be a (n_users, n_items) tensor")
        super().__init__(*scores.shape)
        self.scores_ = scores

    def fit(self, train: pd.DataFrame | None = None) -> ScoreTable:
        """Nothing to fit; returns ``self``."""
        return self

    def score(self, user_idx) -> torch.Tensor:
        """``(batch,) -> (batch, n_items)``: the given rows."""
        return self.scores_[self._users(user_idx)]
