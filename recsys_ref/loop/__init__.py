"""The unified loop: a simulated world and a system built from the book's parts.

The world and its ground truth (:mod:`~recsys_ref.loop.world`), the system's model with a
fold-in posterior (:mod:`~recsys_ref.loop.model`), slate policies with propensities
(:mod:`~recsys_ref.loop.policies`), the logger (:mod:`~recsys_ref.loop.logger`), the
retrainer (:mod:`~recsys_ref.loop.retrainer`), the off-policy deployment gate
(:mod:`~recsys_ref.loop.gate`), the runner (:mod:`~recsys_ref.loop.runner`) and the
measures of a feedback loop (:mod:`~recsys_ref.loop.metrics`).
See the chapter "The unified loop".
"""

from recsys_ref.loop.gate import OPEGate
from recsys_ref.loop.logger import Logger
from recsys_ref.loop.metrics import exposure_by_day, gini, mean_jaccard
from recsys_ref.loop.model import EmbeddingConfig, EmbeddingModel, LoopModel, PopularityModel
from recsys_ref.loop.policies import (
    POLICIES,
    EpsilonGreedy,
    Greedy,
    SlatePolicy,
    Softmax,
    Thompson,
)
from recsys_ref.loop.retrainer import Retrainer, positives
from recsys_ref.loop.runner import LoopResult, LoopSystem, feedback_since, run_loop, window_values
from recsys_ref.loop.world import World, WorldConfig, truth_from_ratings, world_factors

__all__ = [
    "POLICIES", "EmbeddingConfig", "EmbeddingModel", "EpsilonGreedy", "Greedy", "Logger",
    "LoopModel", "LoopResult", "LoopSystem", "OPEGate", "PopularityModel", "Retrainer",
    "SlatePolicy", "Softmax", "Thompson", "World", "WorldConfig", "exposure_by_day",
    "feedback_since", "gini", "mean_jaccard", "positives", "run_loop", "truth_from_ratings",
    "window_values", "world_factors",
]
