"""Readers for interaction files on disk: the MovieLens releases and plain
"user item [rating] [timestamp]" files, each returning an
:class:`~recsys_ref.data.frame.Interactions`.

MovieLens formats (GroupLens, https://grouplens.org/datasets/movielens/):

* 100K: ``u.data`` (tab-separated ``user item rating timestamp``, no header), ``u.item``
  (``|``-separated, latin-1, the title second);
* 1M (and 10M): ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``), ``movies.dat``
  (``MovieID::Title::Genres``, latin-1);
* latest-small, 20M, 25M, 32M: ``ratings.csv`` (header ``userId,movieId,rating,timestamp``,
  half-star ratings 0.5-5), ``movies.csv`` (``movieId,title,genres``, quoted titles).

See the appendix "Your own data, at scale".
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from recsys_ref.data.frame import Interactions, from_frame

COLUMNS = ("user", "item", "rating", "timestamp")
# dtypes that keep a 25-million-row ratings.csv to about 0.6 GB in memory
_CSV_DTYPES = {"userId": "int32", "movieId": "int32", "rating": "float32", "timestamp": "int64"}


def movielens_format(folder) -> str:
    """Which MovieLens layout ``folder`` holds: ``"100k"``, ``"1m"`` or ``"csv"``."""
    folder = Path(folder)
    if (folder / "u.data").is_file():
        return "100k"
    if (folder / "ratings.dat").is_file():
        return "1m"
    if (folder / "ratings.csv").is_file():
        return "csv"
    raise FileNotFoundError(f"{folder} holds no MovieLens ratings file (u.data, ratings.dat or "
                            f"ratings.csv): unpack the GroupLens zip there first")


def read_movielens(folder) -> Interactions:
    """Read an unpacked MovieLens release (100K, 1M, 10M, latest-small, 20M, 25M, 32M).

    Args:
        folder: the folder the GroupLens zip unpacked to (``ml-100k/``, ``ml-1m/``,
            ``ml-latest-small/``, ``ml-25m/``, ...).

    Returns:
        An :class:`~recsys_ref.data.frame.Interactions` with ``rating`` and ``timestamp``
        (seconds), raw ids as the files give them (integers), and ``items`` with ``title``
        (and ``genres`` where the release has them) when the movies file is present.
    """
    folder = Path(folder)
    fmt = movielens_format(folder)
    movies = None
    if fmt == "100k":
        df = pd.read_csv(folder / "u.data", sep="\t", header=None, names=list(COLUMNS))
        if (folder / "u.item").is_file():
            raw = pd.read_csv(folder / "u.item", sep="|", header=None, encoding="latin-1",
                              quoting=3, keep_default_na=False)
            movies = pd.DataFrame({"item": raw[0], "title": raw[1]})
    elif fmt == "1m":
        # "::" is a multi-character separator: split each line in Python, not with a regex
        # engine per field
        df = _read_double_colon(folder / "ratings.dat", list(COLUMNS))
        for c in COLUMNS:
            df[c] = pd.to_numeric(df[c])
        if (folder / "movies.dat").is_file():
            movies = _read_double_colon(folder / "movies.dat", ["item", "title", "genres"])
            movies["item"] = pd.to_numeric(movies["item"])
    else:
        df = pd.read_csv(folder / "ratings.csv", dtype=_CSV_DTYPES)
        df = df.rename(columns={"userId": "user", "movieId": "item"})
        if (folder / "movies.csv").is_file():
            movies = pd.read_csv(folder / "movies.csv").rename(columns={"movieId": "item"})
    return from_frame(df, "user", "item", "rating", "timestamp", items=movies)


def _read_double_colon(path: Path, names: list[str]) -> pd.DataFrame:
    with open(path, encoding="latin-1") as f:
        rows = [line.rstrip("\r\n").split("::", len(names) - 1) for line in f if line.strip()]
    bad = [i for i, r in enumerate(rows) if len(r) != len(names)]
    if bad:
        raise ValueError(f"{path.name} line {bad[0] + 1}: expected {len(names)} '::'-separated "
                         f"fields ({', '.join(names)})")
    return pd.DataFrame(rows, columns=names)


def read_interactions(path, sep: str | None = None, comment: str = "#",
                      timestamp: str | None = None, duplicates: str = "raise") -> Interactions:
    """Read a plain "user item [rating] [timestamp]" file, one interaction per line.

    Ids are kept as the exact strings of the file (``"007"`` stays ``"007"``); a third
    column is the rating and a fourth the timestamp (both numeric). Lines starting with
    ``comment`` are skipped.

    Args:
        path: the file.
        sep: the field separator (default: any run of whitespace).
        comment: comment prefix.
        timestamp: ``None`` uses the fourth column when there is one; ``"row"`` declares the
            file's line order to be the time order (see :func:`~recsys_ref.data.frame.from_frame`).
        duplicates: as in :func:`~recsys_ref.data.frame.from_frame`.

    Returns:
        An :class:`~recsys_ref.data.frame.Interactions` in file order.
    """
    path = Path(path)
    df = pd.read_csv(path, sep=r"\s+" if sep is None else sep, header=None, comment=comment,
                     dtype=str, keep_default_na=False)
    if not 2 <= df.shape[1] <= 4:
        raise ValueError(f"{path.name} must have 2 to 4 columns (user item [rating] "
                         f"[timestamp]), got {df.shape[1]}")
    df.columns = list(COLUMNS[:df.shape[1]])
    for c in df.columns[2:]:
        try:
            df[c] = pd.to_numeric(df[c])
        except ValueError as e:
            raise ValueError(f"{path.name}: column {c} must be numeric ({e})") from None
    has_time = "timestamp" in df.columns
    if timestamp == "row" and has_time:
        raise ValueError(f"{path.name} has a timestamp column: timestamp='row' would ignore it")
    return from_frame(df, "user", "item", "rating" if df.shape[1] >= 3 else None,
                      "timestamp" if has_time else timestamp, duplicates=duplicates)
