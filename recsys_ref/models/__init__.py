"""Models of the book; each implements :class:`recsys_ref.models.base.Recommender`."""

from recsys_ref.models.autorec import AutoRec, AutoRecConfig
from recsys_ref.models.base import Recommender, ScoreTable
from recsys_ref.models.baselines import BiasBaseline, GlobalMean, Popularity
from recsys_ref.models.bpr import BPR, BPRConfig
from recsys_ref.models.ease import EASE
from recsys_ref.models.ials import IALS, IALSConfig
from recsys_ref.models.knn_top_n import ItemKNN, UserKNN
from recsys_ref.models.mf import BiasedMF, MFConfig
from recsys_ref.models.ncf import NCF, NCFConfig
from recsys_ref.models.neighborhood import KNNRating, similarity_matrix
from recsys_ref.models.sasrec import SASRec, SASRecConfig
from recsys_ref.models.two_tower import TwoTower, TwoTowerConfig

__all__ = [
    "BPR", "EASE", "IALS", "NCF", "AutoRec", "AutoRecConfig", "BPRConfig", "BiasBaseline",
    "BiasedMF", "GlobalMean", "IALSConfig", "ItemKNN", "KNNRating", "MFConfig", "NCFConfig",
    "Popularity", "Recommender", "SASRec", "SASRecConfig", "ScoreTable", "TwoTower",
    "TwoTowerConfig", "UserKNN", "similarity_matrix",
]
