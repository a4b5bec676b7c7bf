"""Choosing a few-shot method's settings on validation users, never on meta-test users.

See the chapter "Few-shot recommendation".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import pandas as pd

from recsys_ref.few_shot.base import evaluate_new_users
from recsys_ref.few_shot.protocol import FewShotSplit
from recsys_ref.tuning import best_config, search


def search_new_users(make: Callable[..., object], configs: Sequence[Mapping],
                     split: FewShotSplit) -> tuple[object, pd.DataFrame]:
    """Fit ``make(**config)`` on ``split.train`` for every configuration and keep the one
    whose query RMSE on the validation users is lowest.

    Each fit receives ``(split.valid_support, split.valid_query)`` as its validation data (for
    early stopping, where the method has it); each fitted model is scored by
    :func:`recsys_ref.few_shot.base.evaluate_new_users` on the same validation users
    (:func:`recsys_ref.tuning.search`, uncached).

    Returns:
        ``(model, table)``: the winning fitted model (not refitted) and the search table.

    Raises:
        ValueError: the split has no validation users.
    """
    if split.valid_support is None or split.valid_query is None:
        raise ValueError("split has no validation users (valid_support / valid_query)")
    configs = [dict(c) for c in configs]
    kept, valid = [], (split.valid_support, split.valid_query)
    table = search(make, configs, split.train, lambda m: evaluate_new_users(m, *valid),
                   metric="RMSE", higher_is_better=False, valid=valid, cache=False, keep=kept)
    return kept[configs.index(best_config(table))], table
