"""Data sets of the book: MovieLens-100K and the Open Bandit Dataset sample.

See the chapter "Introduction and data".
"""

from recsys_ref.data.cache import DataUnavailableError, data_home
from recsys_ref.data.movielens import GENRES, MovieLens, load_movielens100k
from recsys_ref.data.open_bandit import load_open_bandit

__all__ = [
    "GENRES", "DataUnavailableError", "MovieLens", "data_home", "load_movielens100k",
    "load_open_bandit",
]
