"""The two-tower model's validation search of the chapter "Deep recommenders", callable by
later chapters (as :mod:`recsys_ref.mf_tuning` is for the matrix factorization chapter).

Protocol: leave-last-out (:func:`recsys_ref.splits.leave_last_out`); :data:`N_CONFIGS`
seeded random settings of :data:`SPACE`, each fitted on the training interactions and
stopped early on the validation item (full ranking, training items excluded, NDCG@10); the
winner refitted on training plus validation interactions for its best epoch
(:func:`recsys_ref.tuning.search_then_refit`). Every fit goes through the model cache (feature
tables are keyed by their contents), so the pretraining chapter, which compares its encoders
with this model, reads the deep chapter's fits back, or fits them first when it runs first.
"""

from __future__ import annotations

import pandas as pd

from recsys_ref.evaluation import evaluate_ranking
from recsys_ref.features import item_features, user_features
from recsys_ref.models.two_tower import TwoTower
from recsys_ref.splits import leave_last_out
from recsys_ref.tuning import SearchRefit, random_configs, search_then_refit

N_CONFIGS = 2  # settings per search; each is a full fit with early stopping (the main cost)
SPACE = dict(temperature=(0.05, 0.1, 0.2), lr=(1e-3, 3e-3), weight_decay=(0.0, 1e-4))


def two_tower_size(smoke: bool) -> dict:
    """The fixed sizes (the library's defaults at full size: ``d = 32``, id and feature
    embeddings of 32 and 16); a small network and 3 epochs under ``smoke``."""
    return dict(dim=16, dim_id=16, dim_feature=8, n_epochs=3) if smoke else {}


def two_tower_search(ratings: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame, *,
                     features: bool = True, smoke: bool = False, seed: int = 0) -> SearchRefit:
    """Search and refit :class:`recsys_ref.models.two_tower.TwoTower` on MovieLens-style
    frames (see the module's protocol).

    Args:
        ratings: the interactions (``user_idx, item_idx, timestamp``).
        users, items: the user and item tables (one row per index) the features come from.
        features: ids and features (default) or ids only.
        smoke: the tests' small networks. seed: of the sample of settings and every fit.

    Returns:
        A :class:`recsys_ref.tuning.SearchRefit`; ``final`` is fitted on training plus
        validation interactions and ranks the test item.
    """
    train, valid, _ = leave_last_out(ratings)
    history = pd.concat([train, valid])
    uf, itf = (user_features(users), item_features(items)) if features else (None, None)

    def make(**kw):
        return TwoTower(len(users), len(items), uf, itf, seed=seed,
                        **(two_tower_size(smoke) | kw))

    return search_then_refit(make, random_configs(SPACE, N_CONFIGS, seed=seed), train, valid,
                             history, lambda m: evaluate_ranking(m, valid, train))
