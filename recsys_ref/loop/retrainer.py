"""The retrainer of the unified loop: refit the model on everything logged so far.

Every ``every`` days the retrainer fits a new model (a fresh one from ``make_model``) on the
system's history plus every positive it logged before a cut-off day (clicks, and "yes"
answers to onboarding questions), and gives it every logged label of those days (clicks and
skips) for what implicit positives cannot say: which shown items were *not* liked.
See the chapter "The unified loop".
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from recsys_ref.checks import check_positive_int
from recsys_ref.loop.model import LoopModel


def positives(history: pd.DataFrame, log: pd.DataFrame, until: int) -> pd.DataFrame:
    """``user_idx, item_idx`` of the history and of the log's positive rows before ``until``."""
    logged = log[(log["day"] < until) & (log["label"] > 0)]
    pairs = pd.concat([history[["user_idx", "item_idx"]],
                       logged[["user_idx", "item_idx"]].astype("int64")], ignore_index=True)
    # implicit positives are a set: a pair already in the history, or clicked twice, counts
    # once (the models reject repeated pairs)
    return pairs.drop_duplicates(["user_idx", "item_idx"], ignore_index=True)


class Retrainer:
    """Refit every ``every`` days.

    Args:
        make_model: returns a new, unfitted :class:`~recsys_ref.loop.model.LoopModel`.
        every: days between retrainings (after days ``every - 1``, ``2 every - 1``, ...).
    """

    def __init__(self, make_model: Callable[[], LoopModel], every: int = 5):
        self.make_model = make_model
        self.every = check_positive_int(every, "every")

    def due(self, day: int) -> bool:
        """Whether the retrainer runs at the end of ``day`` (0-based)."""
        return (day + 1) % self.every == 0

    def train(self, history: pd.DataFrame, log: pd.DataFrame, until: int) -> LoopModel:
        """A new model fitted on the history and the log's positives of days ``< until``."""
        model = self.make_model()
        if not isinstance(model, LoopModel):
            raise TypeError(f"make_model must return a LoopModel, got {type(model).__name__}")
        model.fit(positives(history, log, until), log[log["day"] < until])
        model.trained_until = until
        return model
