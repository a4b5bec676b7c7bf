r"""Features for the contextual bandits, computed from sparse ratings (no dense rating matrix).

:class:`recsys_ref.bandits.features.CentredSVD` is the truncated SVD of the user-centred
rating matrix :math:`C_{ui} = r_{ui} - \bar r_u` on observed pairs and 0 elsewhere,
:math:`C \approx U_k S_k V_k^\top`, with user factors :math:`U_k S_k^{1/2}` and item factors
:math:`V_k S_k^{1/2}`. :math:`C` is kept as a sparse tensor and its top singular vectors are
found by randomized subspace iteration (:func:`torch.svd_lowrank`): with enough power
iterations it agrees with the dense SVD's leading factors (up to each factor's sign, which a
product :math:`e_u \odot e_i` does not see) without building the ``(n_users, n_items)`` matrix.

:func:`recsys_ref.bandits.features.shrunk_item_means` is each item's mean rating shrunk toward
the global mean by ``strength`` pseudo-ratings. See the chapter "Exploration".
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from recsys_ref.checks import check_positive_int
from recsys_ref.models.base import Recommender


def _columns(frame: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(user_idx, item_idx, rating)`` of a frame as tensors (long, long, float64)."""
    users = torch.from_numpy(np.array(frame["user_idx"], dtype=np.int64))
    items = torch.from_numpy(np.array(frame["item_idx"], dtype=np.int64))
    r = torch.from_numpy(np.array(frame["rating"], dtype=np.float64))
    return users, items, r


class CentredSVD(Recommender):
    """Rank-``rank`` SVD of the user-centred sparse rating matrix.

    Args:
        n_users, n_items: sizes of the index spaces.
        rank: number of singular triplets kept, ``k``.
        n_iter: power iterations of the randomized SVD (more: closer to the exact one).
        oversample: extra columns of the random subspace (``q = rank + oversample``).
        seed: seed of the random starting subspace (the result is deterministic on CPU).

    After fitting: ``user_factors_`` ``(n_users, k)``, ``item_factors_`` ``(n_items, k)``,
    ``singular_values_`` ``(k,)`` and ``user_means_`` ``(n_users,)`` (0 for a user without
    ratings). Predictions are ``user_mean + e_u . e_i``, in stars.
    """

    def __init__(self, n_users: int, n_items: int, rank: int = 16, n_iter: int = 32,
                 oversample: int = 16, seed: int = 0):
        super().__init__(n_users, n_items)
        self.rank = check_positive_int(rank, "rank")
        if self.rank > min(self.n_users, self.n_items):
            raise ValueError(f"rank must be at most min(n_users, n_items) = "
                             f"{min(self.n_users, self.n_items)}, got {rank}")
        self.n_iter = check_positive_int(n_iter, "n_iter", minimum=0)
        self.oversample = check_positive_int(oversample, "oversample", minimum=0)
        self.seed = check_positive_int(seed, "seed", minimum=0)

    def centred_matrix(self, train: pd.DataFrame) -> torch.Tensor:
        """The sparse ``(n_users, n_items)`` float64 COO tensor of user-centred ratings."""
        train = self._check_train(train, ("user_idx", "item_idx", "rating"))
        users, items, r = _columns(train)
        if not bool(torch.isfinite(r).all()):
            raise ValueError("train.rating must be finite")
        count = torch.bincount(users, minlength=self.n_users).double()  # (n_users,)
        total = torch.zeros(self.n_users, dtype=torch.float64).index_add_(0, users, r)
        self.user_means_ = total / count.clamp(min=1)  # (n_users,), 0 without ratings
        values = r - self.user_means_[users]  # (n,)
        return torch.sparse_coo_tensor(torch.stack([users, items]), values,
                                       (self.n_users, self.n_items),
                                       check_invariants=True).coalesce()

    def fit(self, train: pd.DataFrame) -> CentredSVD:
        """Centre each user's ratings and keep the ``rank`` leading singular triplets."""
        C = self.centred_matrix(train)
        q = min(self.rank + self.oversample, self.n_users, self.n_items)
        with torch.random.fork_rng():  # svd_lowrank draws from the global generator
            torch.manual_seed(self.seed)
            U, S, V = torch.svd_lowrank(C, q=q, niter=self.n_iter)  # (m, q), (q,), (n, q)
        k = self.rank
        root = S[:k].sqrt()
        self.singular_values_ = S[:k].float()
        self.user_factors_ = (U[:, :k] * root).float()  # (n_users, k)
        self.item_factors_ = (V[:, :k] * root).float()  # (n_items, k)
        self.user_means_ = self.user_means_.float()
        return self

    def score(self, user_idx) -> torch.Tensor:
        """Predicted stars of every item for a batch of users, ``(batch, n_items)``."""
        u = torch.as_tensor(user_idx, dtype=torch.long)
        return self.user_means_[u, None] + self.user_factors_[u] @ self.item_factors_.T

    def predict(self, user_idx, item_idx) -> torch.Tensor:
        """Predicted stars of each (user, item) pair, ``(n,), (n,) -> (n,)``."""
        u = torch.as_tensor(np.asarray(user_idx), dtype=torch.long)
        i = torch.as_tensor(np.asarray(item_idx), dtype=torch.long)
        return self.user_means_[u] + (self.user_factors_[u] * self.item_factors_[i]).sum(1)


def shrunk_item_means(train: pd.DataFrame, n_items: int, strength: float,
                      centre: bool = True) -> torch.Tensor:
    r"""``(n_items,)`` mean rating of each item shrunk toward the global mean :math:`\mu`:
    :math:`(\sum_{u} r_{ui} + \lambda \mu) / (n_i + \lambda)`, minus :math:`\mu` if
    ``centre`` (an item without ratings gets :math:`\mu`, or 0 centred)."""
    if not strength >= 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    _, items, r = _columns(train)
    if len(r) == 0 or (len(items) and int(items.max()) >= n_items) or bool((items < 0).any()):
        raise ValueError(f"train must be non-empty with item_idx in 0..{n_items - 1}")
    mu = float(r.mean())
    total = torch.zeros(n_items, dtype=torch.float64).index_add_(0, items, r)
    count = torch.bincount(items, minlength=n_items).double()
    means = (total + strength * mu) / (count + strength)
    return (means - mu if centre else means).float()


class ShrunkItemMean(Recommender):
    """Predicts every user's rating of an item by the item's shrunk mean
    (:func:`recsys_ref.bandits.features.shrunk_item_means` with ``centre=False``), so the
    strength can be chosen by a validation search. After fitting: ``means_``
    ``(n_items,)``."""

    def __init__(self, n_users: int, n_items: int, strength: float = 10.0):
        super().__init__(n_users, n_items)
        if not float(strength) >= 0:
            raise ValueError(f"strength must be >= 0, got {strength}")
        self.strength = float(strength)

    def fit(self, train: pd.DataFrame) -> ShrunkItemMean:
        """Each item's mean rating in ``train``, shrunk toward the global mean."""
        train = self._check_train(train, ("user_idx", "item_idx", "rating"))
        self.means_ = shrunk_item_means(train, self.n_items, self.strength, centre=False)
        return self

    def score(self, user_idx) -> torch.Tensor:
        """The same ``(n_items,)`` means for every user of the batch, ``(batch, n_items)``."""
        u = torch.as_tensor(user_idx, dtype=torch.long)
        return self.means_[None].expand(len(u), -1)

    def predict(self, user_idx, item_idx) -> torch.Tensor:
        """The item's shrunk mean for each pair, ``(n,), (n,) -> (n,)``."""
        return self.means_[torch.as_tensor(np.asarray(item_idx), dtype=torch.long)]
