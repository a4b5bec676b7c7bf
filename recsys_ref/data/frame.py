"""Any interaction log as a data set: raw ids of any type mapped once to contiguous indices.

``from_frame(df, user=, item=, rating=None, timestamp=None)`` is how a reader brings their own
data (after Surprise's ``Dataset.load_from_df``): it validates the frame, maps raw user and item
ids (strings, sparse integers, anything hashable) to ``user_idx``/``item_idx`` in ``0..n-1``,
keeps both maps, infers the rating scale and hands recommendations back as raw ids.
See the appendix "Your own data, at scale".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from recsys_ref.checks import check_k
from recsys_ref.matrix import UserItems
from recsys_ref.metrics import rank_order

DUPLICATES = ("raise", "first", "last", "keep")


@dataclass(frozen=True)
class Interactions:
    """An interaction log with contiguous indices and the maps back to raw ids.

    Attributes:
        ratings: ``user_idx, item_idx`` (+ ``rating``, ``timestamp`` when given) and the raw
            ``user_id, item_id``, in the original row order.
        user_ids: raw id of each ``user_idx`` (an Index: ``user_ids[u]``).
        item_ids: raw id of each ``item_idx``.
        rating_scale: ``(min, max)`` of the ratings, or ``None`` for implicit feedback.
        rating_step: the smallest gap between distinct rating values (0.5 for half stars).
        items: optional item metadata, one row per ``item_idx`` (titles for MovieLens).
    """

    ratings: pd.DataFrame
    user_ids: pd.Index
    item_ids: pd.Index
    rating_scale: tuple[float, float] | None = None
    rating_step: float | None = None
    items: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def user_index(self, raw) -> np.ndarray:
        """``user_idx`` of raw user ids; an unknown id raises ``KeyError`` naming it."""
        return _lookup(self.user_ids, raw, "user")

    def item_index(self, raw) -> np.ndarray:
        """``item_idx`` of raw item ids; an unknown id raises ``KeyError`` naming it."""
        return _lookup(self.item_ids, raw, "item")

    def encode(self, df: pd.DataFrame, user: str = "user_id", item: str = "item_id"):
        """Another frame with raw ids (a test file) in this data set's indices: a copy with
        ``user_idx, item_idx`` added. Ids the data set has never seen raise ``KeyError``."""
        out = df.copy()
        out["user_idx"] = self.user_index(df[user].to_numpy())
        out["item_idx"] = self.item_index(df[item].to_numpy())
        return out

    def subset(self, rows: pd.DataFrame) -> Interactions:
        """A data set of some of ``ratings``' rows (e.g. after
        :func:`recsys_ref.splits.k_core`), re-indexed so indices stay contiguous."""
        cols = [c for c in ("rating", "timestamp") if c in self.ratings.columns]
        items = None
        if self.items is not None:
            items = self.items.drop(columns="item_idx").rename(columns={"item_id": "item"})
        return from_frame(rows[["user_id", "item_id", *cols]].rename(
            columns={"user_id": "user", "item_id": "item"}), "user", "item",
            "rating" if "rating" in cols else None, "timestamp" if "timestamp" in cols else None,
            duplicates="keep", items=items)

    def recommend(self, model, users, k: int = 10, exclude=None) -> pd.DataFrame:
        """Top-``k`` raw item ids for raw user ids, best first.

        Args:
            model: a fitted model of this data set's sizes.
            users: raw user ids.
            k: list length.
            exclude: frame(s) with ``user_idx, item_idx`` never to recommend (the training
                interactions); ``None``: this data set's own interactions.

        Returns:
            A frame ``user_id, rank, item_id, score`` (``rank`` from 1), ``k`` rows per user.
        """
        k = check_k(k, self.n_items)
        u = torch.as_tensor(self.user_index(users), dtype=torch.long)
        seen = UserItems(self.ratings if exclude is None else exclude, self.n_users,
                         self.n_items, "exclude")
        scores = model.score(u).float().masked_fill(seen.rows(u), float("-inf"))  # (b, n_items)
        top = rank_order(scores, k=k)  # (b, k), the one tie rule: ties by item index
        return pd.DataFrame({
            "user_id": np.repeat(np.asarray(self.user_ids[u.numpy()]), k),
            "rank": np.tile(np.arange(1, k + 1), len(u)),
            "item_id": np.asarray(self.item_ids[top.reshape(-1).numpy()]),
            "score": scores.gather(1, top).reshape(-1).numpy(),
        })


def _lookup(index: pd.Index, raw, what: str) -> np.ndarray:
    raw = pd.Index(np.atleast_1d(np.asarray(raw)))
    pos = index.get_indexer(raw)
    if (pos < 0).any():
        unknown = raw[pos < 0][:5].tolist()
        raise KeyError(f"{(pos < 0).sum()} {what} id(s) not in the data set, e.g. {unknown}")
    return pos


def _factorize(values: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """Codes ``0..n-1`` and the raw id of each code, sorted by raw id when ids are orderable."""
    try:
        codes, uniques = pd.factorize(values, sort=True)
    except TypeError:  # mixed types (e.g. ints and strings) cannot be sorted
        codes, uniques = pd.factorize(values, sort=False)
    return codes.astype(np.int64), pd.Index(uniques)


def from_frame(df: pd.DataFrame, user: str, item: str, rating: str | None = None,
               timestamp: str | None = None, duplicates: str = "raise",
               items: pd.DataFrame | None = None) -> Interactions:
    """Build an :class:`Interactions` data set from any frame of (user, item) events.

    Args:
        df: one row per interaction.
        user, item: column names of the raw ids (any hashable type).
        rating: column of numeric ratings, or ``None`` for implicit feedback.
        timestamp: column of numeric or datetime times; ``"row"`` declares that the row order
            *is* the time order (a sequence file without times): ``timestamp`` becomes the
            row position, which time-ordered splits and sequence models then use.
        duplicates: a repeated (user, item) pair: ``"raise"`` (default), keep the
            ``"first"`` or ``"last"`` row, or ``"keep"`` them all (repeat events, for
            sequence models only: rating models reject repeated pairs).
        items: optional item metadata with an ``item`` column of raw ids; reordered to one
            row per ``item_idx`` (items without metadata get NaN).

    Returns:
        An :class:`Interactions` in the frame's row order.
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"df must be a pandas DataFrame, got {type(df).__name__}")
    if duplicates not in DUPLICATES:
        raise ValueError(f"duplicates must be one of {DUPLICATES}, got {duplicates!r}")
    named = {"user": user, "item": item, "rating": rating}
    if timestamp != "row":
        named["timestamp"] = timestamp
    cols = [c for c in named.values() if c is not None]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"df has no column(s) {missing}; it has {list(df.columns)}")
    if len(df) == 0:
        raise ValueError("df is empty: a data set needs at least one interaction")
    nan = {c: int(df[c].isna().sum()) for c in cols if df[c].isna().any()}
    if nan:
        raise ValueError(f"df has missing values (NaN/None) in {nan}: drop or fill them first")
    out = pd.DataFrame(index=df.index)
    if rating is not None:
        if df[rating].dtype.kind not in "iuf":
            raise TypeError(f"df.{rating} (rating) must be numeric, got dtype {df[rating].dtype}")
        r = df[rating].to_numpy(dtype=np.float64)
        if not np.isfinite(r).all():
            raise ValueError(f"df.{rating} (rating) has non-finite values (inf)")
    if timestamp == "row":
        t = np.arange(len(df), dtype=np.int64)  # row position stands for time
    elif timestamp is not None:
        kind = df[timestamp].dtype.kind
        if kind not in "iufM":
            raise TypeError(f"df.{timestamp} (timestamp) must be numeric or datetime, got dtype"
                            f" {df[timestamp].dtype}: parse it with pd.to_datetime first, or "
                            f"pass timestamp='row' if the rows are in time order")
        t = df[timestamp].to_numpy()
        if kind == "f" and not np.isfinite(t).all():
            raise ValueError(f"df.{timestamp} (timestamp) has non-finite values (inf)")
    uc, user_ids = _factorize(df[user])
    ic, item_ids = _factorize(df[item])
    out["user_idx"], out["item_idx"] = uc, ic
    if rating is not None:
        out["rating"] = r.astype(np.float32)
    if timestamp is not None:
        out["timestamp"] = t
    out["user_id"], out["item_id"] = df[user].to_numpy(), df[item].to_numpy()
    out = out.reset_index(drop=True)
    dup = out.duplicated(["user_idx", "item_idx"], keep=False)
    if dup.any() and duplicates == "raise":
        ex = out.loc[dup, ["user_id", "item_id"]].iloc[0].tolist()
        raise ValueError(f"df has {int(out.duplicated(['user_idx', 'item_idx']).sum())} repeated"
                         f" (user, item) pair(s), e.g. {ex}: pass duplicates='last' or 'first'"
                         f" to keep one, or 'keep' for repeat events of a sequence model")
    if dup.any() and duplicates in ("first", "last"):
        out = out[~out.duplicated(["user_idx", "item_idx"], keep=duplicates)]
        # a user or item may have lost nothing: indices stay contiguous since every id keeps
        # at least one row
        out = out.reset_index(drop=True)
    scale = step = None
    if rating is not None:
        values = np.unique(out["rating"].to_numpy(dtype=np.float64))
        scale = float(values[0]), float(values[-1])
        step = float(np.diff(values).min()) if len(values) > 1 else None
    if items is not None:
        if item not in items.columns:
            raise ValueError(f"items must have the item id column {item!r}")
        items = items.drop_duplicates(item).set_index(item).reindex(item_ids)
        items = items.rename_axis("item_id").reset_index()
        items.insert(0, "item_idx", np.arange(len(items)))
    return Interactions(out, user_ids, item_ids, scale, step, items)
