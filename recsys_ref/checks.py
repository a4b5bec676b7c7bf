"""Input checks shared by the package: clear errors that name the argument."""

from __future__ import annotations

from collections.abc import Iterable
from numbers import Integral, Real

import numpy as np
import pandas as pd
import torch


def check_frame(df, name: str, columns: Iterable[str]) -> pd.DataFrame:
    """Check that ``df`` is a non-empty DataFrame with ``columns`` and no NaN in them."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame, got {type(df).__name__}")
    columns = list(columns)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{name} is missing column(s) {missing}; it has {list(df.columns)}")
    if len(df) == 0:
        raise ValueError(f"{name} is empty")
    bad = [c for c in columns if df[c].isna().any()]
    if bad:
        raise ValueError(f"{name} has NaN values in column(s) {bad}")
    for c in columns:
        kind = df[c].dtype.kind
        if c in ID_COLUMNS and kind not in "iu":
            # a float id such as 3.7 would be silently truncated by every tensor conversion
            raise TypeError(f"{name}.{c} must hold integer indices, got dtype {df[c].dtype}")
        if c == "timestamp" and kind not in "iufM":
            # strings sort as text ("10" before "9"): time order needs numbers or datetimes
            raise TypeError(f"{name}.timestamp must be numeric or datetime, got dtype "
                            f"{df[c].dtype}")
        if kind == "f" and not np.isfinite(df[c].to_numpy()).all():
            raise ValueError(f"{name}.{c} has non-finite values (inf)")
    return df


ID_COLUMNS = ("user_idx", "item_idx")


def check_interactions(df, name: str, n_users: int, n_items: int,
                       columns: Iterable[str] = ("user_idx", "item_idx"),
                       rating_range: tuple[float, float] | None = None,
                       unique: bool = True) -> pd.DataFrame:
    """Check a frame of interactions a model is fitted on; return it.

    On top of :func:`check_frame` (columns present, no NaN or inf, integer ids, numeric
    timestamps): ids lie in ``0..n_users-1`` / ``0..n_items-1``; ratings (if ``rating`` is
    among ``columns`` and ``rating_range`` is given) lie in the data set's scale; and no
    ``(user_idx, item_idx)`` pair appears twice. The book's one rule for duplicates is to
    reject them: a model cannot know whether the last, the first or the mean rating is meant,
    so aggregate them first (e.g. ``df.drop_duplicates(["user_idx", "item_idx"],
    keep="last")``).

    Args:
        df: the frame.
        name: its name in error messages.
        n_users, n_items: the model's sizes.
        columns: the columns the model reads (``user_idx`` and ``item_idx`` always).
        rating_range: the ``(low, high)`` scale ratings must lie in (``None`` or ``"train"``,
            a range taken from the data itself: not checked).
        unique: reject repeated pairs; sequence models pass ``False``, since a repeated item
            in a history is a second event, not a second rating of the same thing.
    """
    columns = list(dict.fromkeys(["user_idx", "item_idx", *columns]))
    check_frame(df, name, columns)
    check_index(df["user_idx"].to_numpy(), f"{name}.user_idx", n_users)
    check_index(df["item_idx"].to_numpy(), f"{name}.item_idx", n_items)
    if rating_range not in (None, TRAIN_RANGE) and "rating" in columns:
        low, high = rating_range
        r = df["rating"].to_numpy()
        if r.min() < low or r.max() > high:
            raise ValueError(f"{name}.rating must lie in the rating scale {low:g}..{high:g} "
                             f"(rating_range), got values in {r.min():g}..{r.max():g}")
    dup = repeated_pairs(df["user_idx"].to_numpy(), df["item_idx"].to_numpy(), n_items) \
        if unique else 0
    if dup:
        raise ValueError(f"{name} has {dup} duplicate (user_idx, item_idx) pair(s): aggregate "
                         f"them first, e.g. {name}.drop_duplicates(['user_idx', 'item_idx'], "
                         f"keep='last')")
    return df


def repeated_pairs(users: np.ndarray, items: np.ndarray, n_items: int) -> int:
    """How many ``(user, item)`` pairs repeat an earlier one (``duplicated().sum()``).

    Ids already checked to lie in ``0..n-1``: each pair is one integer ``user * n_items +
    item``, and equal pairs are neighbours once sorted. 10x faster than
    ``DataFrame.duplicated`` on two columns (0.03 against 0.34 s at 2M pairs); every fit
    checks its training frame.
    """
    key = np.sort(users.astype(np.int64) * n_items + items.astype(np.int64))  # (n,)
    return int((key[1:] == key[:-1]).sum())


def check_index(values, name: str, n: int) -> None:
    """Check that integer ids lie in ``0..n-1`` (ids are mapped once by the data module)."""
    arr = values.numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if arr.size == 0:
        return
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must hold integer indices, got dtype {arr.dtype}")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= n:
        raise ValueError(f"{name} must lie in 0..{n - 1}, got values in {lo}..{hi}")


def index_tensor(values, name: str, n: int) -> torch.Tensor:
    """Ids as a long tensor, after checking they are integers in ``0..n-1`` (a float id such as
    ``3.7`` or a negative one would otherwise be truncated or wrap around to the last row)."""
    arr = values if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))
    check_index(arr, name, n)
    return arr.long()


def check_k(k, n_items: int, name: str = "k") -> int:
    """Check a list length: an integer with ``1 <= k <= n_items``."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise TypeError(f"{name} must be an int, got {type(k).__name__}")
    if not 1 <= k <= n_items:
        raise ValueError(f"{name} must be in 1..n_items ({n_items}), got {k}")
    return int(k)


TRAIN_RANGE = "train"


def check_rating_range(rating_range) -> tuple[float, float] | str | None:
    """Check a clipping range: ``(low, high)`` with ``low <= high``, ``None`` (no clipping) or
    ``"train"`` (the training ratings' own min and max, see :func:`resolve_rating_range`)."""
    if rating_range is None or (isinstance(rating_range, str) and rating_range == TRAIN_RANGE):
        return rating_range
    try:
        low, high = (float(v) for v in rating_range)
    except (TypeError, ValueError):
        raise ValueError(f"rating_range must be None or a (low, high) pair, "
                         f"got {rating_range!r}") from None
    if not low <= high:
        raise ValueError(f"rating_range must have low <= high, got {rating_range!r}")
    return low, high


def resolve_rating_range(rating_range, ratings) -> tuple[float, float] | None:
    """The clipping range a model fitted on ``ratings`` uses: their ``(min, max)`` for
    ``"train"`` (a 0.5-5 half-star scale stays 0.5-5, MovieLens-100K's stays 1-5), otherwise
    ``rating_range`` itself (checked against the data by :func:`check_interactions`)."""
    if isinstance(rating_range, str) and rating_range == TRAIN_RANGE:
        r = np.asarray(ratings, dtype=np.float64)
        return float(r.min()), float(r.max())
    return rating_range


def check_nonnegative(value, name: str) -> float:
    """Check a real hyperparameter that must be ``>= 0`` (a regulariser, a shrinkage)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"{name} must be >= 0, got {value}")
    return float(value)


def check_positive_int(value, name: str, minimum: int = 1) -> int:
    """Check an integer hyperparameter that must be ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_config(config, *, positive_ints: Iterable[str] = (), positive: Iterable[str] = (),
                 nonnegative: Iterable[str] = (), fractions: Iterable[str] = (),
                 optional: Iterable[str] = ()) -> None:
    """Validate the fields of a model's config dataclass, in place (from ``__post_init__``).

    Integer fields are normalised to ``int``. The fields every trained model has are always
    checked when present: ``seed`` (``>= 0``) and ``patience`` (``>= 1``, or ``None``: never
    stop early).

    Args:
        config: the dataclass instance.
        positive_ints: fields that must be integers ``>= 1`` (sizes, epochs, batch sizes).
        positive: fields that must be ``> 0`` (step sizes, temperatures, init scales).
        nonnegative: fields that must be ``>= 0`` (penalties, weight decay).
        fractions: fields that must lie in ``[0, 1)`` (dropout probabilities).
        optional: fields that may also be ``None`` (meaning "the default"); they are skipped
            then.
    """
    optional = set(optional)

    def present(names):
        return [n for n in names if not (n in optional and getattr(config, n) is None)]

    for name in present(positive_ints):
        setattr(config, name, check_positive_int(getattr(config, name), name))
    if getattr(config, "seed", None) is not None:
        config.seed = check_positive_int(config.seed, "seed", minimum=0)
    if getattr(config, "patience", None) is not None:
        config.patience = check_positive_int(config.patience, "patience")
    for name in present(positive):
        if not getattr(config, name) > 0:
            raise ValueError(f"{name} must be > 0, got {getattr(config, name)}")
    for name in present(nonnegative):
        if not getattr(config, name) >= 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(config, name)}")
    for name in present(fractions):
        if not 0 <= getattr(config, name) < 1:
            raise ValueError(f"{name} must be in [0, 1), got {getattr(config, name)}")
