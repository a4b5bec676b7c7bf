"""Few-shot recommendation: cold-start users and items from a handful of ratings.

Protocols and metrics (:mod:`~recsys_ref.few_shot.protocol`), the few-shot interface and
baselines (:mod:`~recsys_ref.few_shot.base`), fold-in of a trained BiasedMF
(:mod:`~recsys_ref.few_shot.fold_in`), fine-tuning (:mod:`~recsys_ref.few_shot.fine_tune`),
fold-in over a pretrained sequence encoder's item embeddings
(:mod:`~recsys_ref.few_shot.backbone`), MAML and MeLU (:mod:`~recsys_ref.few_shot.maml`,
:mod:`~recsys_ref.few_shot.melu`), and cold items scored from content
(:mod:`~recsys_ref.few_shot.content`).
See the chapter "Few-shot recommendation".
"""

from recsys_ref.few_shot.backbone import BackboneFoldIn, item_embeddings
from recsys_ref.few_shot.base import (
    FewShotRecommender,
    ItemMean,
    Popularity,
    evaluate_metarec,
    evaluate_new_users,
)
from recsys_ref.few_shot.content import (
    ColdItemMF,
    ContentMap,
    cold_item_split,
    content_features,
    evaluate_cold_items,
)
from recsys_ref.few_shot.fine_tune import FineTuneConfig, FineTuneMF
from recsys_ref.few_shot.fold_in import (
    FoldInMF,
    GaussianPosterior,
    fold_in_items,
    fold_in_users,
    gaussian_posterior,
    residual_variance,
)
from recsys_ref.few_shot.maml import MAML, MAMLConfig, inner_adapt
from recsys_ref.few_shot.melu import MeLU
from recsys_ref.few_shot.paired import paired_rmse_by
from recsys_ref.few_shot.protocol import (
    FewShotSplit,
    cold_user_split,
    full_ranking_ndcg,
    metarec_metrics,
    metarec_split,
    query_ndcg,
)
from recsys_ref.few_shot.rating_net import RatingNet
from recsys_ref.few_shot.validation import search_new_users

__all__ = [
    "BackboneFoldIn", "item_embeddings",
    "ColdItemMF", "ContentMap", "cold_item_split", "content_features", "evaluate_cold_items",
    "MAML", "FewShotRecommender", "FewShotSplit", "FineTuneConfig", "FineTuneMF", "FoldInMF",
    "GaussianPosterior", "ItemMean", "MAMLConfig", "MeLU", "Popularity", "RatingNet",
    "cold_user_split", "evaluate_metarec", "evaluate_new_users", "fold_in_items",
    "fold_in_users", "full_ranking_ndcg", "gaussian_posterior", "inner_adapt",
    "metarec_metrics", "metarec_split", "paired_rmse_by", "query_ndcg", "residual_variance",
    "search_new_users",
]
