"""Side features of MovieLens-100K users and items as tensors, for feature-aware models.

A :class:`Features` holds, for ``n`` entities (users or items) in index order, categorical
columns as integer codes (to be looked up in embedding tables, or expanded to one-hot by
:meth:`Features.one_hot`) and dense columns as floats (multi-hot genres, text embeddings).

* Users (:func:`user_features`): ``age`` in the 7 MovieLens-1M age buckets (:data:`AGE_EDGES`:
  under 18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+), ``gender`` (M=0, F=1), ``occupation``
  (the 21 values of ``u.occupation``, alphabetical, :data:`OCCUPATIONS`). The zip code is left
  out: 795 distinct values for 943 users would be a second user id.
* Items (:func:`item_features`): ``year`` in buckets (:data:`YEAR_EDGES`: code 0 for an
  unknown year, then before 1950, the 1950s to 1980s by decade, 1990-92, and one bucket per
  year from 1993 to 1998, where 80% of the movies are); dense ``genres`` (19 multi-hot
  columns, :data:`recsys_ref.data.movielens.GENRES`), plus any item embedding passed as ``text``.

See the chapter "Deep recommenders".
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from recsys_ref.checks import check_frame
from recsys_ref.data import GENRES

AGE_EDGES = (18, 25, 35, 45, 50, 56)  # bucket b holds ages in [AGE_EDGES[b-1], AGE_EDGES[b])
GENDERS = ("M", "F")
OCCUPATIONS = (
    "administrator", "artist", "doctor", "educator", "engineer", "entertainment", "executive",
    "healthcare", "homemaker", "lawyer", "librarian", "marketing", "none", "other",
    "programmer", "retired", "salesman", "scientist", "student", "technician", "writer",
)
YEAR_EDGES = (1950, 1960, 1970, 1980, 1990, 1993, 1994, 1995, 1996, 1997, 1998)


@dataclass(frozen=True)
class Features:
    """Features of ``n`` entities; row ``r`` belongs to the entity with index ``r``.

    Attributes:
        categorical: name -> ``(n,)`` long codes in ``0..cardinality[name]-1``.
        cardinality: name -> number of codes.
        dense: ``(n, k)`` float features (``k`` may be 0).
        dense_names: the ``k`` column names of ``dense``.
    """

    categorical: dict[str, torch.Tensor]
    cardinality: dict[str, int]
    dense: torch.Tensor
    dense_names: tuple[str, ...]

    def __post_init__(self):
        n = len(self.dense)
        if self.dense.dim() != 2 or self.dense.shape[1] != len(self.dense_names):
            raise ValueError(f"dense must be (n, {len(self.dense_names)}), "
                             f"got {tuple(self.dense.shape)}")
        for name, codes in self.categorical.items():
            if codes.shape != (n,) or codes.dtype != torch.long:
                raise ValueError(f"categorical[{name!r}] must be a ({n},) long tensor, got "
                                 f"{codes.dtype} of shape {tuple(codes.shape)}")
            if n and not 0 <= int(codes.min()) <= int(codes.max()) < self.cardinality[name]:
                raise ValueError(f"categorical[{name!r}] must lie in "
                                 f"0..{self.cardinality[name] - 1}")

    def __len__(self) -> int:
        return len(self.dense)

    def digest(self) -> str:
        """sha256 of the table's contents (names, codes, cardinalities, dense values): what
        :func:`recsys_ref.model_cache.model_key` keys a model built with these features by."""
        h = hashlib.sha256(repr((sorted(self.cardinality.items()), self.dense_names,
                                 tuple(self.dense.shape))).encode())
        for name in sorted(self.categorical):
            h.update(name.encode())
            h.update(self.categorical[name].contiguous().numpy().tobytes())
        h.update(self.dense.contiguous().numpy().tobytes())
        return h.hexdigest()

    def take(self, idx: torch.Tensor) -> Features:
        """The rows ``idx`` (``(m,)`` long) as a new :class:`Features`."""
        return Features({k: v[idx] for k, v in self.categorical.items()}, self.cardinality,
                        self.dense[idx], self.dense_names)

    def with_dense(self, extra: torch.Tensor, prefix: str = "text") -> Features:
        """Append ``(n, m)`` float columns named ``prefix0..prefix{m-1}`` (e.g. text embeddings)."""
        extra = torch.as_tensor(extra, dtype=torch.float32)
        if extra.dim() != 2 or len(extra) != len(self):
            raise ValueError(f"extra must be ({len(self)}, m), got {tuple(extra.shape)}")
        names = self.dense_names + tuple(f"{prefix}{j}" for j in range(extra.shape[1]))
        return Features(self.categorical, self.cardinality, torch.cat([self.dense, extra], 1),
                        names)

    def one_hot(self) -> torch.Tensor:
        """``(n, sum(cardinality) + k)`` float: every categorical one-hot, then ``dense``."""
        parts = [torch.nn.functional.one_hot(v, self.cardinality[k]).float()
                 for k, v in self.categorical.items()]
        return torch.cat(parts + [self.dense], 1)


def _codes(values: pd.Series, vocabulary: tuple[str, ...], name: str) -> torch.Tensor:
    lookup = {v: j for j, v in enumerate(vocabulary)}
    unknown = sorted(set(values) - set(lookup))
    if unknown:
        raise ValueError(f"{name} has values outside {vocabulary}: {unknown[:5]}")
    return torch.tensor([lookup[v] for v in values], dtype=torch.long)


def _sorted_by(frame: pd.DataFrame, index: str) -> pd.DataFrame:
    frame = frame.sort_values(index)
    if not (frame[index].to_numpy() == np.arange(len(frame))).all():
        raise ValueError(f"{index} must hold 0..n-1 exactly once each")
    return frame


def age_bucket(age) -> torch.Tensor:
    """``(n,)`` long: the bucket of each age in :data:`AGE_EDGES` (0: under 18, 6: 56+)."""
    return torch.as_tensor(np.searchsorted(AGE_EDGES, np.asarray(age), side="right"))


def year_bucket(year) -> torch.Tensor:
    """``(n,)`` long: 0 for a missing year, else one plus its bucket in :data:`YEAR_EDGES`."""
    y = np.asarray(pd.array(year, dtype="Float64").to_numpy(dtype=float, na_value=np.nan))
    b = 1 + np.searchsorted(YEAR_EDGES, np.nan_to_num(y, nan=0.0), side="right")
    return torch.as_tensor(np.where(np.isnan(y), 0, b), dtype=torch.long)


def user_features(users: pd.DataFrame) -> Features:
    """User features ``age``, ``gender``, ``occupation`` (categorical, no dense columns).

    Args:
        users: ``user_idx, age, gender, occupation`` (e.g. ``load_movielens100k().users``,
            or a frame describing new users, numbered ``0..m-1``).

    Returns:
        A :class:`Features` with rows in ``user_idx`` order.
    """
    check_frame(users, "users", ["user_idx", "age", "gender", "occupation"])
    users = _sorted_by(users, "user_idx")
    categorical = {"age": age_bucket(users["age"]),
                   "gender": _codes(users["gender"], GENDERS, "users.gender"),
                   "occupation": _codes(users["occupation"], OCCUPATIONS, "users.occupation")}
    cardinality = {"age": len(AGE_EDGES) + 1, "gender": len(GENDERS),
                   "occupation": len(OCCUPATIONS)}
    return Features(categorical, cardinality, torch.zeros(len(users), 0), ())


def item_features(items: pd.DataFrame, text: torch.Tensor | None = None) -> Features:
    """Item features: ``year`` bucket (categorical), genres multi-hot and ``text`` (dense).

    Args:
        items: ``item_idx, year`` and one bool column per genre of
            :data:`recsys_ref.data.movielens.GENRES` (e.g. ``load_movielens100k().items``).
        text: optional ``(n_items, m)`` item embedding (e.g. of the titles), in ``item_idx``
            order; appended to the dense columns as ``text0..text{m-1}``.

    Returns:
        A :class:`Features` with rows in ``item_idx`` order.
    """
    check_frame(items, "items", ["item_idx", *GENRES])
    if "year" not in items.columns:
        raise ValueError("items is missing column 'year'")
    items = _sorted_by(items, "item_idx")
    genres = torch.tensor(items[GENRES].to_numpy(dtype=np.float32))  # (n_items, 19)
    out = Features({"year": year_bucket(items["year"])}, {"year": len(YEAR_EDGES) + 2}, genres,
                   tuple(GENRES))
    return out if text is None else out.with_dense(text)
