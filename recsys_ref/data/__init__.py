"""Data sets of the book (MovieLens-100K, the Open Bandit Dataset sample) and the reader's own:
any frame (:func:`~recsys_ref.data.frame.from_frame`) or file
(:func:`~recsys_ref.data.readers.read_movielens`,
:func:`~recsys_ref.data.readers.read_interactions`).

See the chapter "Introduction and data".
"""

from recsys_ref.data.cache import DataUnavailableError, data_home
from recsys_ref.data.frame import Interactions, from_frame
from recsys_ref.data.movielens import GENRES, MovieLens, load_movielens100k
from recsys_ref.data.open_bandit import load_open_bandit
from recsys_ref.data.readers import read_interactions, read_movielens

__all__ = [
    "GENRES", "DataUnavailableError", "Interactions", "MovieLens", "data_home", "from_frame",
    "load_movielens100k", "load_open_bandit", "read_interactions", "read_movielens",
]
