"""Models of the book; each implements :class:`recsys_ref.models.base.Recommender`."""

from recsys_ref.models.base import Recommender
from recsys_ref.models.baselines import BiasBaseline, GlobalMean, Popularity
from recsys_ref.models.ease import EASE
from recsys_ref.models.neighborhood import ItemKNN, KNNRating, UserKNN, similarity_matrix

__all__ = [
    "EASE", "BiasBaseline", "GlobalMean", "ItemKNN", "KNNRating", "Popularity", "Recommender",
    "UserKNN", "similarity_matrix",
]
