"""User-item matrices built from a ratings frame: dense ones, per-user item sets that give a
batch of users' rows on demand, and sparse CSR patterns for sparse products.

MovieLens-100K's 943 x 1,682 matrix has 1.6M cells, so dense tensors are the simplest
representation for small models; evaluation builds only a batch of users' rows at a time from
:class:`UserItems`, and iALS, BPR and the neighbourhood models train and score from sparse
structures (:func:`csr_pattern`), so their memory does not grow with ``n_users x n_items``.
"""

from __future__ import annotations

import warnings

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
        self.n_users, self.n_items, self._keys, self._filter = n_users, n_items, None, None
        self.items = i[order]  # (nnz,) items grouped by user
        counts = torch.bincount(u, minlength=n_users)  # (n_users,)
        self.indptr = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])

    def keys(self) -> torch.Tensor:
        """``(nnz,)`` sorted ``user * n_items + item`` of every stored pair (computed once)."""
        if self._keys is None:
            user = torch.repeat_interleave(torch.arange(self.n_users), self.counts())  # (nnz,)
            self._keys = torch.sort(user * self.n_items + self.items).values
        return self._keys

    def filter(self) -> tuple[int, torch.Tensor]:
        """``(P, words)``: a one-hash Bloom filter of the stored pairs (computed once), bit
        ``key % P`` of the int64 ``words`` set for every key, ``P`` a prime near 16 bits per
        pair (20 MB at 10 million pairs). A pair whose bit is clear is not stored; of the
        pairs that are not stored, about 1 in 16 has its bit set (a false positive). It costs
        0.45 s at 10 million pairs and pays for itself over a few hundred queries of
        :meth:`contains`."""
        if self._filter is None:
            keys = self.keys()
            P = _prime_at_least(max(64, 16 * len(keys)))
            words = torch.zeros((P + 63) // 64, dtype=torch.long)  # (ceil(P / 64),)
            for s in range(0, len(keys), 1 << 20):  # by chunks: no (nnz,) temporaries
                h = torch.unique(keys[s:s + (1 << 20)] % P)  # distinct bits: a sum is an OR
                part = torch.zeros_like(words)
                part.index_add_(0, h >> 6, torch.ones(1, dtype=torch.long) << (h & 63))
                words.bitwise_or_(part)
            self._filter = P, words
        return self._filter

    def contains(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """bool of ``items``' shape: whether ``users`` (broadcast against ``items``) have
        them, with no ``(n_users, n_items)`` mask: a binary search among the stored pairs,
        ``O(log nnz)`` per query. Once :meth:`filter` has been built (callers that query many
        times build it first, as negative sampling does), it clears most pairs that are not
        stored and the search decides only the rest; the answers are the same."""
        keys = self.keys()
        q = (users * self.n_items + items).reshape(-1)  # broadcast: the queried pairs' keys
        found = torch.zeros(len(q), dtype=torch.bool)
        if len(keys) and len(q):
            maybe = None  # the queries the search decides (all of them without a filter)
            if self._filter is not None:
                P, words = self._filter
                h = q % P  # (m,)
                maybe = ((words.index_select(0, h >> 6) >> (h & 63)) & 1).nonzero().squeeze(1)
            # the candidates sorted first: neighbouring binary searches then walk the same
            # cache lines of the (nnz,) keys (3-4x faster at 10 million pairs); with the
            # filter the whole check is 4-5x faster there (20 -> 4 ms for 65,536 queries)
            q_sorted, order = torch.sort(q if maybe is None else q.index_select(0, maybe))
            pos = torch.searchsorted(keys, q_sorted).clamp(max=len(keys) - 1)
            where = order if maybe is None else maybe.index_select(0, order)
            found[where] = keys.index_select(0, pos) == q_sorted
        return found.reshape(torch.broadcast_shapes(users.shape, items.shape))

    def counts(self) -> torch.Tensor:
        """``(n_users,)`` number of (possibly repeated) pairs per user."""
        return self.indptr[1:] - self.indptr[:-1]

    def entries(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(row, item)``, ``(nnz_b,)`` long each: the stored pairs of ``users``, ``row``
        indexing into ``users`` (a batch's pattern without its ``(len(users), n_items)``
        mask; repeated pairs stay repeated)."""
        start = self.indptr.index_select(0, users)  # (b,) first stored pair of each user
        n = self.counts().index_select(0, users)  # (b,)
        row = torch.repeat_interleave(torch.arange(len(users)), n)  # (nnz_b,)
        # entry j of the output (row r) is stored pair start_r + (j - first_r), where first_r
        # is row r's first output position: one repeat_interleave of start_r - first_r
        first = n.cumsum(0) - n  # (b,)
        pos = torch.arange(len(row)) + torch.repeat_interleave(start - first, n)  # (nnz_b,)
        return row, self.items.index_select(0, pos)

    def rows(self, users: torch.Tensor) -> torch.Tensor:
        """``(len(users), n_items)`` bool: True where the user has the item."""
        out = torch.zeros(len(users), self.n_items, dtype=torch.bool)
        row, item = self.entries(users)
        out.view(-1).index_fill_(0, row * self.n_items + item, True)  # 2x out[row, item]
        return out

    def block(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``(len(users), len(items))`` bool: True where user ``k`` has item ``l`` (the
        in-batch negatives' mask): a gather from :meth:`rows`, faster than ``[:, items]``."""
        return self.rows(users).gather(1, items.expand(len(users), -1))


def _prime_at_least(n: int) -> int:
    """The smallest prime ``>= n`` (trial division: ``O(sqrt(n))`` per candidate)."""
    n = max(n, 2)
    while any(n % d == 0 for d in range(2, int(n ** 0.5) + 1)):
        n += 1
    return n


def sorted_pairs(df: pd.DataFrame, n_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(users, items)``, the distinct pairs of ``df`` sorted by user, then item (the order of
    ``interaction_mask(df, ...).nonzero()``, without the mask)."""
    keys = torch.unique(column(df, "user_idx") * n_items + column(df, "item_idx"))  # sorted
    return keys // n_items, keys % n_items


def csr_pattern(rows: torch.Tensor, cols: torch.Tensor, n_rows: int, n_cols: int,
                values: torch.Tensor | None = None) -> torch.Tensor:
    """A sparse CSR ``(n_rows, n_cols)`` float32 tensor with ``values`` (default 1) at the
    distinct ``(rows, cols)`` entries: the interaction matrix without its zeros.

    Memory is ``O(nnz + n_rows)``. ``A @ dense`` and ``torch.sparse.sampled_addmm`` on it cost
    ``O(nnz x d)``, which is how iALS and the neighbourhood models stay sparse.

    Args:
        rows, cols: ``(nnz,)`` long coordinates, distinct pairs (any order).
        n_rows, n_cols: the shape.
        values: optional ``(nnz,)`` values in the order of ``rows``.
    """
    order = torch.argsort(rows * n_cols + cols)
    counts = torch.bincount(rows, minlength=n_rows)  # (n_rows,)
    crow = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    vals = torch.ones(len(rows)) if values is None else values[order].float()
    with warnings.catch_warnings():  # torch warns once that CSR support is "beta"
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support")
        return torch.sparse_csr_tensor(crow, cols[order], vals, size=(n_rows, n_cols),
                                       check_invariants=False)


def as_pattern(mask: torch.Tensor) -> torch.Tensor:
    """A 0/1 CSR pattern from a dense ``(n_rows, n_cols)`` bool ``mask``, or a CSR tensor
    passed through (see :func:`csr_pattern`)."""
    if isinstance(mask, torch.Tensor) and mask.layout == torch.sparse_csr and mask.dim() == 2:
        return mask
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() != 2:
        raise ValueError("mask must be a 2-D bool tensor or a sparse CSR tensor")
    rows, cols = mask.nonzero(as_tuple=True)
    return csr_pattern(rows, cols, *mask.shape)


def pattern_rows(M: torch.Tensor) -> torch.Tensor:
    """``(nnz,)`` row index of every stored entry of the CSR tensor ``M``."""
    crow = M.crow_indices()
    return torch.repeat_interleave(torch.arange(len(crow) - 1), crow[1:] - crow[:-1])


def csr_rows(M: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``(len(rows), n_cols)`` dense rows of the CSR tensor ``M``: a batch, never all of it."""
    crow = M.crow_indices()
    start, n = crow[rows], crow[rows + 1] - crow[rows]  # (b,)
    row = torch.repeat_interleave(torch.arange(len(rows)), n)  # (nnz_b,)
    # position of each entry in M's arrays: its row's start plus its offset in the row
    pos = torch.arange(int(n.sum())) + torch.repeat_interleave(start - (n.cumsum(0) - n), n)
    out = torch.zeros(len(rows), M.shape[1], dtype=M.dtype)
    out[row, M.col_indices()[pos]] = M.values()[pos]
    return out
