"""Models of the book; each implements :class:`recsys_ref.models.base.Recommender`."""

from recsys_ref.models.base import Recommender
from recsys_ref.models.baselines import BiasBaseline, GlobalMean, Popularity
from recsys_ref.models.bpr import BPR, BPRConfig
from recsys_ref.models.ease import EASE
from recsys_ref.models.ials import IALS, IALSConfig
from recsys_ref.models.mf import BiasedMF, MFConfig
from recsys_ref.models.neighborhood import ItemKNN, KNNRating, UserKNN, similarity_matrix

__all__ = [
    "BPR", "EASE", "IALS", "BPRConfig", "BiasBaseline", "BiasedMF", "GlobalMean", "IALSConfig",
    "ItemKNN", "KNNRating", "MFConfig", "Popularity", "Recommender", "UserKNN",
    "similarity_matrix",
]
