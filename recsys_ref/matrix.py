"""User-item matrices built from a ratings frame: dense ones, and per-user item sets that
give a batch of users' rows on demand.

MovieLens-100K's 943 x 1,682 matrix has 1.6M cells, so dense tensors are both the simplest
and the fastest representation on a CPU for a model's own training; evaluation builds only a
batch of users' rows at a time from :class:`UserItems`, so its memory does not grow with the
number of users.
"""

from __future__ import annotations

import pandas as pd
import torch

from recsys_ref.checks import check_frame, check_index


def column(df: pd.DataFrame, name: str, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """A frame column as a tensor (a copy: pandas hands out read-only arrays)."""
    return torch.tensor(df[name].to_numpy(), dtype=dtype)


def interaction_mask(df: pd.DataFrame, n_users: int, n_items: int) -> torch.Tensor:
    """``(n_users, n_items)`` bool tensor, True where the user interacted with the item."""
    check_frame(df, "df", ["user_idx", "item_idx"])
    check_index(df["user_idx"].to_numpy(), "df.user_idx", n_users)
    check_index(df["item_idx"].to_numpy(), "df.item_idx", n_items)
    mask = torch.zeros(n_users, n_items, dtype=torch.bool)
    mask[column(df, "user_idx"), column(df, "item_idx")] = True
    return mask


def rating_matrix(df: pd.DataFrame, n_users: int, n_items: int) -> torch.Tensor:
    """``(n_users, n_items)`` float tensor of ratings, 0 where unrated (see ``interaction_mask``).

    A repeated (user, item) pair keeps its last rating in frame order.
    """
    check_frame(df, "df", ["user_idx", "item_idx", "rating"])
    check_index(df["user_idx"].to_numpy(), "df.user_idx", n_users)
    check_index(df["item_idx"].to_numpy(), "df.item_idx", n_items)
    r = torch.zeros(n_users, n_items)
    r[column(df, "user_idx"), column(df, "item_idx")] = column(df, "rating", torch.float32)
    return r


class UserItems:
    """Each user's items in compressed sparse row form; ``rows(users)`` gives a dense batch.

    Memory is ``O(n_interactions)``; ``rows`` allocates ``(len(users), n_items)`` bools only.

    Args:
        frames: one frame or several (their pairs are united) with ``user_idx, item_idx``.
        n_users, n_items: the sizes ids are checked against.
        name: what to call ``frames`` in error messages.
    """

    def __init__(self, frames, n_users: int, n_items: int, name: str = "frames"):
        single = isinstance(frames, pd.DataFrame)
        frames = [frames] if single else list(frames)
        users, items = [], []
        for j, df in enumerate(frames):
            label = name if single else f"{name}[{j}]"
            if not isinstance(df, pd.DataFrame):
                raise TypeError(f"{label} must be a DataFrame, got {type(df).__name__}")
            if len(df) == 0:
                continue
            check_frame(df, label, ["user_idx", "item_idx"])
            check_index(df["user_idx"].to_numpy(), f"{label}.user_idx", n_users)
            check_index(df["item_idx"].to_numpy(), f"{label}.item_idx", n_items)
            users.append(column(df, "user_idx"))
            items.append(column(df, "item_idx"))
        u = torch.cat(users) if users else torch.zeros(0, dtype=torch.long)
        i = torch.cat(items) if items else torch.zeros(0, dtype=torch.long)
        self._build(u, i, n_users, n_items)

    @classmethod
    def from_pairs(cls, users: torch.Tensor, items: torch.Tensor, n_users: int,
                   n_items: int) -> UserItems:
        """From ``(nnz,)`` long tensors of users and items (already checked)."""
        out = cls.__new__(cls)
        out._build(users, items, n_users, n_items)
        return out

    def _build(self, u, i, n_users, n_items):
        order = torch.argsort(u, stable=True)
        self.n_users, self.n_items, self._keys = n_users, n_items, None
        self.items = i[order]  # (nnz,) items grouped by user
        counts = torch.bincount(u, minlength=n_users)  # (n_users,)
        self.indptr = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])

    def keys(self) -> torch.Tensor:
        """``(nnz,)`` sorted ``user * n_items + item`` of every stored pair (computed once)."""
        if self._keys is None:
            user = torch.repeat_interleave(torch.arange(self.n_users), self.counts())  # (nnz,)
            self._keys = torch.sort(user * self.n_items + self.items).values
        return self._keys

    def contains(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """bool of ``items``' shape: whether ``users`` (broadcast against ``items``) have
        them; a binary search among the stored pairs, ``O(log nnz)`` per query and no
        ``(n_users, n_items)`` mask."""
        keys = self.keys()
        if len(keys) == 0:
            return torch.zeros(items.shape, dtype=torch.bool)
        q = users * self.n_items + items  # broadcast: the queried pairs' keys
        pos = torch.searchsorted(keys, q.reshape(-1)).clamp(max=len(keys) - 1)
        return (keys[pos] == q.reshape(-1)).reshape(q.shape)

    def counts(self) -> torch.Tensor:
        """``(n_users,)`` number of (possibly repeated) pairs per user."""
        return self.indptr[1:] - self.indptr[:-1]

    def rows(self, users: torch.Tensor) -> torch.Tensor:
        """``(len(users), n_items)`` bool: True where the user has the item."""
        start, n = self.indptr[users], self.counts()[users]  # (b,)
        row = torch.repeat_interleave(torch.arange(len(users)), n)  # (nnz_b,)
        # position of each entry inside its user's slice: 0, 1, ..., n_u - 1
        offset = torch.arange(int(n.sum())) - torch.repeat_interleave(n.cumsum(0) - n, n)
        out = torch.zeros(len(users), self.n_items, dtype=torch.bool)
        out[row, self.items[torch.repeat_interleave(start, n) + offset]] = True
        return out
