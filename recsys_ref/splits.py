"""Train/test splits of a ratings frame (columns ``user_idx, item_idx, rating, timestamp``).

See the chapter "Introduction and data" for when to use which.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from recsys_ref.checks import check_frame, check_positive_int

FOLD_SIZE = 20_000


def u_fold(ratings: pd.DataFrame, fold: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The canonical MovieLens-100K fold ``u<fold>`` (``u1.base``/``u1.test`` ... ``u5``).

    The dataset's own ``mku.sh`` builds fold k's test set from rows ``20,000(k-1)`` to
    ``20,000k`` of ``u.data`` (then sorts it by user and item, which does not change the
    set) and its base set from the other 80,000 rows. ``ratings`` must therefore be the full
    100,000 ratings in ``u.data`` order, as :func:`recsys_ref.data.movielens.load_movielens100k`
    returns them.

    Args:
        ratings: all 100,000 ratings in file order.
        fold: 1..5.

    Returns:
        ``(train, test)`` frames, each in file order with the original index.
    """
    check_frame(ratings, "ratings", ["user_idx", "item_idx", "rating"])
    if isinstance(fold, bool) or not isinstance(fold, int | np.integer) or not 1 <= fold <= 5:
        raise ValueError(f"fold must be an int in 1..5, got {fold!r}")
    if len(ratings) != 5 * FOLD_SIZE:
        raise ValueError(f"ratings must be the 100,000 MovieLens-100K ratings in u.data order, "
                         f"got {len(ratings)} rows: for other data use k_fold(ratings, k, seed)")
    is_test = np.zeros(len(ratings), dtype=bool)
    is_test[FOLD_SIZE * (fold - 1): FOLD_SIZE * fold] = True
    return ratings[~is_test], ratings[is_test]


def random_split(ratings: pd.DataFrame, test_size: float = 0.2, seed: int = 0):
    """A seeded uniformly random split of the rows.

    Returns:
        ``(train, test)`` frames in the original row order.
    """
    check_frame(ratings, "ratings", ["user_idx", "item_idx"])
    if not 0 < test_size < 1:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    seed = check_positive_int(seed, "seed", minimum=0)
    n_test = round(test_size * len(ratings))
    if not 0 < n_test < len(ratings):
        raise ValueError(f"test_size={test_size} of {len(ratings)} rows gives {n_test} test rows: "
                         f"both sides of the split must be non-empty")
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(ratings), dtype=bool)
    is_test[rng.permutation(len(ratings))[:n_test]] = True
    return ratings[~is_test], ratings[is_test]


def leave_last_out(ratings: pd.DataFrame, order_by: str = "timestamp"):
    """Per user, the last interaction is the test item and the one before it the validation
    item; everything earlier is training data.

    "Last" is in time (``order_by="timestamp"``) or in the frame's row order
    (``order_by="row"``, for a log written in time order without times). The sort by
    timestamp is stable, so ratings with equal timestamps keep their row order (the rule
    RecBole's time ordering uses). Users with one interaction keep it in train; users with
    two have no validation item.

    Returns:
        ``(train, valid, test)`` frames; ``test`` has one row per user with >= 2 ratings.
    """
    if order_by not in ("timestamp", "row"):
        raise ValueError(f"order_by must be 'timestamp' or 'row', got {order_by!r}")
    if order_by == "timestamp" and isinstance(ratings, pd.DataFrame) \
            and "timestamp" not in ratings.columns:
        raise ValueError("ratings has no timestamp column: pass order_by='row' if its rows are "
                         "in time order")
    keys = ["user_idx", "timestamp"] if order_by == "timestamp" else ["user_idx"]
    check_frame(ratings, "ratings", ["user_idx", "item_idx", *keys[1:]])
    order = ratings.sort_values(keys, kind="stable")
    # position from the end within each user: 0 = last, 1 = second to last
    from_end = order.groupby("user_idx").cumcount(ascending=False).to_numpy()
    n = order.groupby("user_idx")["item_idx"].transform("size").to_numpy()
    test = (from_end == 0) & (n >= 2)
    valid = (from_end == 1) & (n >= 3)
    return order[~test & ~valid], order[valid], order[test]


def k_fold(ratings: pd.DataFrame, k: int = 5, seed: int = 0):
    """Seeded k-fold cross-validation over rows: each row is in exactly one test fold.

    Works for any ratings frame (the MovieLens-100K folds u1..u5 are :func:`u_fold`). Fold
    sizes differ by at most one row. A user or item may then appear only in a test fold
    (cold start); models predict their fallback for those.

    Returns:
        A list of ``k`` ``(train, test)`` pairs, each in the original row order.
    """
    check_frame(ratings, "ratings", ["user_idx", "item_idx"])
    k = check_positive_int(k, "k", minimum=2)
    seed = check_positive_int(seed, "seed", minimum=0)
    if k > len(ratings):
        raise ValueError(f"k={k} folds need at least k rows, got {len(ratings)}")
    fold = np.empty(len(ratings), dtype=np.int64)
    fold[np.random.default_rng(seed).permutation(len(ratings))] = np.arange(len(ratings)) % k
    return [(ratings[fold != f], ratings[fold == f]) for f in range(k)]


def k_core(ratings: pd.DataFrame, k: int = 5, user: str = "user_idx", item: str = "item_idx",
           item_k: int | None = None) -> pd.DataFrame:
    """The k-core: repeatedly drop users with fewer than ``k`` and items with fewer than
    ``item_k`` (default ``k``) interactions, until none is left.

    Dropping an item can push a user under ``k`` and vice versa, hence the loop. Indices
    are not renumbered: with an :class:`~recsys_ref.data.frame.Interactions`, pass the result
    to its ``subset`` to get contiguous indices again.

    Returns:
        The remaining rows, in the original order (possibly empty).
    """
    check_frame(ratings, "ratings", [user, item])
    k = check_positive_int(k, "k")
    item_k = k if item_k is None else check_positive_int(item_k, "item_k")
    keep = np.ones(len(ratings), dtype=bool)
    u, i = pd.factorize(ratings[user])[0], pd.factorize(ratings[item])[0]
    while True:
        nu = np.bincount(u[keep], minlength=u.max() + 1)
        ni = np.bincount(i[keep], minlength=i.max() + 1)
        drop = keep & ((nu[u] < k) | (ni[i] < item_k))
        if not drop.any():
            return ratings[keep]
        keep &= ~drop


def temporal_split(ratings: pd.DataFrame, test_size: float = 0.2):
    """A global temporal split: the latest ``test_size`` fraction of ratings is the test set.

    Every training rating is older than (or as old as) every test rating; ties at the cut
    are broken by file order. Test users may be absent from training (cold start).

    Returns:
        ``(train, test)`` frames in time order.
    """
    check_frame(ratings, "ratings", ["user_idx", "item_idx", "timestamp"])
    if not 0 < test_size < 1:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    order = ratings.sort_values("timestamp", kind="stable")
    cut = len(order) - round(test_size * len(order))
    return order.iloc[:cut], order.iloc[cut:]
