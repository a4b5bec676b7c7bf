"""Item and user k-NN for top-N recommendation from implicit feedback.

The models are sparse: their similarities keep ``k`` entries per row (computed by column
blocks), and scores are sparse-dense products for a batch of users, so memory is
``O(n_items x k + batch_size x n_items)``. See the chapter "Top-N recommendation with
item-item models".
"""

from __future__ import annotations

import pandas as pd
import torch

from recsys_ref.checks import check_nonnegative, check_positive_int
from recsys_ref.matrix import as_pattern, csr_pattern, csr_rows, pattern_rows, sorted_pairs
from recsys_ref.models.base import Recommender


def _top_k_entries(sim: torch.Tensor, k: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, cols)`` of each row's ``k`` largest non-zero entries of ``sim`` ``(b, c)``.

    Ties at the k-th place keep the lower column index: the result of a stable descending
    sort cut at ``k`` (the documented tie rule: binary co-occurrence counts tie often),
    without sorting whole rows. ``topk`` finds each row's k-th largest value; every entry
    above it is kept, and of the entries equal to it the lowest-indexed fill the remaining
    places. Zeros are never returned (a row may have fewer than ``k`` entries).
    """
    if k is None or k >= sim.shape[1]:
        return sim.nonzero(as_tuple=True)
    vals, idx = sim.topk(k, dim=1)  # (b, k)
    kth = vals[:, -1:]  # (b, 1) the k-th largest value of each row
    above = vals > kth  # (b, k) certainly kept
    room = k - above.sum(1)  # (b,) places left for entries equal to the k-th value
    above &= vals != 0
    tr, tc = ((sim == kth) & (kth != 0)).nonzero(as_tuple=True)  # ties, by row then column
    n_tied = torch.bincount(tr, minlength=len(sim))  # (b,)
    rank = torch.arange(len(tr)) - (n_tied.cumsum(0) - n_tied)[tr]  # position in its row
    first = rank < room[tr]  # the lowest-indexed ties fill the room
    rows = torch.arange(len(sim))[:, None].expand_as(idx)[above]
    return torch.cat([rows, tr[first]]), torch.cat([idx[above], tc[first]])


def knn_cosine(X: torch.Tensor, shrinkage: float, k: int | None,
               block_size: int | None = None) -> torch.Tensor:
    """Binary cosine between the columns of a 0/1 matrix, each row pruned to its ``k`` best.

    .. math:: s_{ij} = \\frac{|U_i \\cap U_j|}{\\sqrt{|U_i|\\,|U_j|} + h}, \\quad s_{ii} = 0

    Sparse: by blocks of ``block_size`` columns :math:`j`, the co-occurrence counts of every
    :math:`i` with the block are one sparse-dense product ``X^T X[:, block]`` (``O(nnz x
    block)``, exact in float32), the ratios are taken in float64 and each row keeps its ``k``
    largest entries (ties: lower index); only the kept entries are
    stored. Memory is ``O(nnz + n k + n x block)``.

    Args:
        X: ``(m, n)`` 0/1 matrix, dense or a sparse CSR pattern
            (:func:`recsys_ref.matrix.csr_pattern`; users x items for item similarities).
        shrinkage: ``h >= 0``.
        k: neighbours kept per row, or ``None``.
        block_size: columns per block; default: about 2**22 entries per ``(n, block)`` block.

    Returns:
        ``(n, n)`` sparse CSR float32; row ``i`` holds the non-zero :math:`s_{ij}` for
        :math:`j \\in N^k(i)`. See the chapter "Top-N recommendation with item-item models".
    """
    M = as_pattern(X if X.layout == torch.sparse_csr else X != 0)  # (m, n) CSR 0/1
    m, n = M.shape
    users, items = pattern_rows(M), M.col_indices()  # (nnz,)
    ones = torch.ones(len(items))
    XT = torch.sparse_coo_tensor(torch.stack([items, users]), ones, (n, m),
                                 check_invariants=False).coalesce()  # (n, m) X^T
    cnt = torch.bincount(items, minlength=n).double()  # (n,) column counts |U_i|
    by_item = torch.argsort(items, stable=True)
    items_s, users_s = items[by_item], users[by_item]  # entries grouped by column
    ptr = torch.searchsorted(items_s, torch.arange(n + 1))  # (n + 1,) each column's start
    block_size = block_size or max(1, 2**22 // n)
    rows, cols, vals = [], [], []
    for s in range(0, n, block_size):
        e = min(s + block_size, n)
        lo, hi = int(ptr[s]), int(ptr[e])
        Xb = torch.zeros(m, e - s)  # (m, b) the block's columns, dense
        Xb[users_s[lo:hi], items_s[lo:hi] - s] = 1.0
        co = torch.sparse.mm(XT, Xb).T  # (b, n) counts |U_j cap U_i|, j in the block
        # the ratio in float64, exactly as (c_ij / (sqrt(c_i c_j) + h)): values that are equal
        # there are equal here, and the tie rule decides which neighbours are kept
        den = (cnt[s:e, None] * cnt[None, :]).sqrt_().add_(shrinkage).clamp_(min=1e-12)
        sim = co.double().div_(den)  # (b, n)
        sim[torch.arange(e - s), torch.arange(s, e)] = 0.0  # not its own neighbour
        r, c = _top_k_entries(sim, k)
        rows.append(r + s)
        cols.append(c)
        vals.append(sim[r, c].float())
    return csr_pattern(torch.cat(rows), torch.cat(cols), n, n, torch.cat(vals))


def check_knn(k: int | None, shrinkage: float) -> tuple[int | None, float]:
    """Validated ``(k, shrinkage)`` of a k-NN model: ``k`` a positive int or ``None`` (keep
    all), ``shrinkage >= 0``."""
    return (None if k is None else check_positive_int(k, "k"),
            check_nonnegative(shrinkage, "shrinkage"))


class ItemKNN(Recommender):
    """Item-based k-NN for top-N recommendation from implicit (binary) feedback.

    Each interaction counts as 1 whatever its rating. With :math:`U_i` the users of item
    :math:`i`, the similarity is the binary cosine with shrinkage :math:`h` in the
    denominator (which damps pairs of rare items), each item keeps its ``k`` most similar
    items :math:`N^k(i)`, and a user's score of an item sums its similarities to the user's
    items (Deshpande & Karypis 2004; the ItemKNN-CF of Dacrema et al. 2019):

    .. math::
        s_{ij} = \\frac{|U_i \\cap U_j|}{\\sqrt{|U_i|\\,|U_j|} + h}, \\qquad
        \\text{score}(u, i) = \\sum_{j \\in I_u \\cap N^k(i)} s_{ij}

    Sparse: ``S_`` holds the ``k`` kept similarities of each item as a CSR matrix
    (:func:`knn_cosine`), the training pairs are a CSR pattern, and :meth:`score` is a
    sparse-dense product, so memory is ``O(nnz + n_items k)`` plus ``O(batch x n_items)`` per
    scored batch.

    Args:
        n_users: number of users.
        n_items: number of items.
        k: neighbours kept per item (default 10); ``None`` keeps all. Ties at the k-th place
            keep the lower item index.
        shrinkage: ``h >= 0`` (default 0). The chapter chooses ``k`` and ``h`` by a
            validation search on MovieLens-100K's leave-last-out split.

    See the chapter "Top-N recommendation with item-item models".
    """

    def __init__(self, n_users: int, n_items: int, k: int | None = 10, shrinkage: float = 0.0):
        super().__init__(n_users, n_items)
        self.k, self.shrinkage = check_knn(k, shrinkage)

    def fit(self, train: pd.DataFrame) -> ItemKNN:
        """Binarise ``train`` and build the pruned item-item similarity (sparse)."""
        self._check_train(train)
        users, items = sorted_pairs(train, self.n_items)
        self.X_ = csr_pattern(users, items, self.n_users, self.n_items)  # (users, items) CSR
        self.S_ = knn_cosine(self.X_, self.shrinkage, self.k)  # (items, items) CSR, N^k(i)
        return self

    @property
    def W_(self) -> torch.Tensor:
        """``(n_items, n_items)`` sparse CSR weights, ``W[j, i] = s_ij`` for
        :math:`j \\in N^k(i)`: the scores are ``x_u W`` for a 0/1 row ``x_u``."""
        return csr_pattern(self.S_.col_indices(), pattern_rows(self.S_), self.n_items,
                           self.n_items, self.S_.values())

    def score(self, user_idx) -> torch.Tensor:
        """``(batch,) -> (batch, n_items)``: ``x_u W``, computed as ``(S x_u^T)^T`` with the
        sparse ``S`` (``O(n_items k batch)``); memory ``O(batch x n_items)``."""
        user_idx = self._users(user_idx)
        Xb = csr_rows(self.X_, user_idx)  # (batch, n_items) 0/1
        return (self.S_ @ Xb.T).T


class UserKNN(Recommender):
    """User-based k-NN for top-N recommendation from implicit (binary) feedback.

    With :math:`I_u` the items of user :math:`u` and :math:`N^k(u)` the ``k`` users most
    similar to :math:`u`:

    .. math::
        s_{uv} = \\frac{|I_u \\cap I_v|}{\\sqrt{|I_u|\\,|I_v|} + h}, \\qquad
        \\text{score}(u, i) = \\sum_{v \\in N^k(u)} s_{uv}\\, x_{vi}

    Sparse like :class:`ItemKNN`: ``S_`` is a CSR ``(n_users, n_users)`` matrix with ``k``
    entries per row; memory is ``O(nnz + n_users k)`` plus ``O(batch x (n_users + n_items))``
    per scored batch.

    The arguments are :class:`ItemKNN`'s, with ``k`` (default 20) the neighbours kept per
    user (ties keep the lower user index). See the chapter "Top-N recommendation with
    item-item models".
    """

    def __init__(self, n_users: int, n_items: int, k: int | None = 20, shrinkage: float = 0.0):
        super().__init__(n_users, n_items)
        self.k, self.shrinkage = check_knn(k, shrinkage)

    def fit(self, train: pd.DataFrame) -> UserKNN:
        """Binarise ``train`` and build the pruned user-user similarity (sparse)."""
        self._check_train(train)
        users, items = sorted_pairs(train, self.n_items)
        # items x users: its columns are the users, whose cosines knn_cosine computes
        self.XT_ = csr_pattern(items, users, self.n_items, self.n_users)  # CSR
        self.S_ = knn_cosine(self.XT_, self.shrinkage, self.k)  # (users, users) CSR, N^k(u)
        return self

    def score(self, user_idx) -> torch.Tensor:
        """``(batch,) -> (batch, n_items)``: ``S_u X``, computed as ``(X^T S_u^T)^T`` with the
        sparse ``X^T`` (``O(nnz x batch)``); memory ``O(batch x (n_users + n_items))``."""
        user_idx = self._users(user_idx)
        Sb = csr_rows(self.S_, user_idx)  # (batch, n_users) dense rows of the similarity
        return (self.XT_ @ Sb.T).T
