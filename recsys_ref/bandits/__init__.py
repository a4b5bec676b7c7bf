"""Exploration: a click simulator and bandit policies, from random to neural-linear Thompson.

See the chapter "Exploration".
"""

from recsys_ref.bandits.linear import (
    KINDS,
    LinearPolicy,
    LinearTS,
    LinUCB,
    NeuralLinearTS,
    RidgeStatistics,
    pair_features,
    sherman_morrison,
)
from recsys_ref.bandits.policies import (
    UCB1,
    BernoulliTS,
    EpsilonGreedy,
    Greedy,
    OraclePolicy,
    Policy,
    RandomPolicy,
    top_available,
)
from recsys_ref.bandits.simulator import (
    BanditSimulator,
    Context,
    SimulationResult,
    click_probabilities_from_scores,
)

__all__ = [
    "KINDS", "UCB1", "BanditSimulator", "BernoulliTS", "Context", "EpsilonGreedy", "Greedy",
    "LinUCB", "LinearPolicy", "LinearTS", "NeuralLinearTS", "OraclePolicy", "Policy",
    "RandomPolicy", "RidgeStatistics", "SimulationResult", "click_probabilities_from_scores",
    "pair_features", "sherman_morrison", "top_available",
]
