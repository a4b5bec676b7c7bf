"""Working at scale on one machine: a seeded synthetic power-law interaction log, iALS fitted
from the sparse pairs alone, and timing and peak-memory measurement of a piece of work.

See the appendix "Your own data, at scale".
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from recsys_ref.checks import check_interactions, check_positive_int
from recsys_ref.models.ials import IALS, IALSConfig


def power_law_log(n_users: int, n_items: int, n_interactions: int, n_clusters: int = 50,
                  activity: float = 0.5, popularity: float = 0.8, in_cluster: float = 0.7,
                  seed: int = 0) -> pd.DataFrame:
    """A synthetic implicit-feedback log with power-law activity and popularity and taste.

    User activity and item popularity follow Zipf laws (the r-th most active user draws with
    weight ``r ** -activity``, the r-th most popular item ``r ** -popularity``: a long
    tail, as in real logs). Items fall into ``n_clusters`` equal taste clusters and each user
    has one favourite cluster: with probability ``in_cluster`` an interaction picks an item
    of that cluster (by popularity within it), otherwise any item by global popularity. So
    there is structure a model can learn, and popularity is a real baseline. Draws are
    repeated until there are enough distinct pairs; a random ``n_interactions`` of them are
    kept, in a random order that serves as time.

    Args:
        n_users, n_items: sizes (every index may or may not occur).
        n_interactions: distinct (user, item) pairs to return.
        n_clusters: taste clusters (``n_items`` must be a multiple of it).
        activity, popularity: the Zipf exponents.
        in_cluster: probability that an interaction follows the user's taste.
        seed: the seed.

    Returns:
        A frame ``user_idx, item_idx, timestamp`` (``timestamp`` = 0, 1, ...: row order).
    """
    n_users = check_positive_int(n_users, "n_users")
    n_items = check_positive_int(n_items, "n_items")
    n = check_positive_int(n_interactions, "n_interactions")
    n_clusters = check_positive_int(n_clusters, "n_clusters")
    if n_items % n_clusters:
        raise ValueError(f"n_items ({n_items}) must be a multiple of n_clusters ({n_clusters})")
    if n > 0.2 * n_users * n_items:
        raise ValueError(f"n_interactions={n} exceeds a fifth of the {n_users} x {n_items} "
                         f"cells: the log would not be sparse")
    if not 0 <= in_cluster <= 1:
        raise ValueError(f"in_cluster must be in [0, 1], got {in_cluster}")
    rng = np.random.default_rng(seed)
    per = n_items // n_clusters

    def zipf_cdf(m, exponent):
        w = np.arange(1, m + 1, dtype=np.float64) ** -exponent
        return np.cumsum(w) / w.sum()

    def draw(cdf, m):  # m indices 0..len(cdf)-1 distributed by cdf
        return np.minimum(np.searchsorted(cdf, rng.random(m)), len(cdf) - 1)

    user_rank = rng.permutation(n_users)  # which user is the r-th most active
    taste = rng.integers(n_clusters, size=n_users)  # (n_users,) favourite cluster
    # item id = cluster * per + rank within its cluster; the global popularity order
    # interleaves the clusters so that every cluster has popular items
    global_order = (np.arange(n_items) % n_clusters) * per + np.arange(n_items) // n_clusters
    cdf_u, cdf_c = zipf_cdf(n_users, activity), zipf_cdf(per, popularity)
    cdf_i = zipf_cdf(n_items, popularity)
    pairs, m = np.zeros(0, dtype=np.int64), int(1.2 * n) + 1000
    while len(pairs) < n:
        u = user_rank[draw(cdf_u, m)]
        own = rng.random(m) < in_cluster
        i = np.where(own, taste[u] * per + draw(cdf_c, m), global_order[draw(cdf_i, m)])
        pairs = np.sort(np.concatenate([pairs, u.astype(np.int64) * n_items + i]))
        pairs = pairs[np.r_[True, pairs[1:] != pairs[:-1]]]  # distinct pairs, sorted
        m = int(1.5 * (n - len(pairs))) + 1000
    pairs = pairs[rng.permutation(len(pairs))[:n]]  # a random n of them, in random order
    return pd.DataFrame({"user_idx": pairs // n_items, "item_idx": pairs % n_items,
                         "timestamp": np.arange(n, dtype=np.int64)})


def fit_ials_sparse(train: pd.DataFrame, n_users: int, n_items: int,
                    config: IALSConfig | None = None, **overrides) -> IALS:
    """:class:`~recsys_ref.models.ials.IALS` fitted from the sparse training pairs alone.

    ``IALS.fit`` itself is sparse (CSR patterns and padded row blocks, no
    ``(n_users, n_items)`` tensor); this wrapper keeps the appendix's contract: the exact
    Cholesky solver, every sweep run (no early stopping) and ``history_`` as a frame with
    each sweep's ``seconds``. Memory is ``O(nnz + (n_users + n_items) d)``.

    Args:
        train: ``user_idx, item_idx`` pairs (distinct; ratings are ignored).
        n_users, n_items: sizes.
        config: an :class:`~recsys_ref.models.ials.IALSConfig` (``solver="cholesky"``);
            keyword arguments override it.

    Returns:
        A fitted :class:`~recsys_ref.models.ials.IALS`.
    """
    model = IALS(n_users, n_items, config, **overrides)
    if model.config.solver != "cholesky":
        raise ValueError(f"fit_ials_sparse solves exactly: solver must be 'cholesky', "
                         f"got {model.config.solver!r}")
    check_interactions(train, "train", n_users, n_items)
    model.fit(train[["user_idx", "item_idx"]])
    model.history_ = pd.DataFrame(model.history_)
    return model


def _status(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", text).group(1)) * 1024


def _release_free_memory() -> None:
    """Hand the heap's free pages back to the system (glibc's ``malloc_trim``), so the
    resident memory is what the process holds. ``make`` keeps freed memory in the process
    (``MALLOC_TRIM_THRESHOLD_``, faster), which would otherwise count as held."""
    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc: nothing kept to release
        pass


def measure(fn: Callable[[], object]) -> tuple[object, float, int]:
    """Run ``fn()``; return ``(result, seconds, peak_bytes)``.

    ``peak_bytes`` is the growth of the process's peak resident memory over what it held
    before the call (Linux: freed heap pages are released and the high-water mark is reset
    through ``/proc/self/clear_refs`` first), so it counts every allocation ``fn`` made,
    torch's and NumPy's alike. Elsewhere it is ``-1``.
    """
    _release_free_memory()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        before = _status("VmRSS")
    except OSError:
        before = None
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    peak = -1 if before is None else _status("VmHWM") - before
    return result, seconds, peak
