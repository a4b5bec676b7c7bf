"""Repeated off-policy experiments: the simulator's replications, the bias table, refits."""

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_ref.bandits.logged import policy_value, softmax_policy
from recsys_ref.bandits.ope_experiments import bias_table, refit_bootstrap, simulated_ope
from recsys_ref.bandits.reward_model import open_bandit_arrays
from recsys_ref.data import load_open_bandit


def world(seed=0, n_users=30, n_items=12):
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(n_users, n_items, generator=g, dtype=torch.float64)
    scores = 4 * p + torch.randn(n_users, n_items, generator=g, dtype=torch.float64)
    return p, softmax_policy(torch.zeros(n_users, n_items), 1.0), softmax_policy(scores, 0.5)


def test_simulated_ope_is_unbiased_and_a_constant_model_makes_dm_wrong():
    p, pi_b, pi_e = world()
    v_b, v_e = policy_value(p, pi_b), policy_value(p, pi_e)
    constant = lambda logs, seed: torch.full((len(logs["users"]), p.shape[1]), 0.5,  # noqa: E731
                                             dtype=torch.float64)
    runs = simulated_ope(p, pi_b, pi_e, 2000, 20, constant, seed=3)
    assert list(runs.columns) == ["IPS", "SNIPS", "DM", "DR", "on-policy", "ESS"]
    table = bias_table(runs, v_e)
    # IPS and DR are unbiased whatever the reward model; DM with a constant 0.5 is not
    for est in ("IPS", "DR", "on-policy"):
        assert table.loc[est, "bias low"] < 0 < table.loc[est, "bias high"], est
    assert abs(table.loc["DM", "bias"] - (0.5 - v_e)) < 1e-9
    assert v_e - v_b > 0.1  # so an estimator that ignored the weights would miss by far
    assert ((runs["ESS"] > 0) & (runs["ESS"] <= 2000)).all()


def test_bias_table_by_hand():
    runs = pd.DataFrame({k: [1.0, 2.0, 3.0] for k in ("IPS", "SNIPS", "DM", "DR", "on-policy")})
    table = bias_table(runs, 1.5)
    assert table.loc["IPS", "bias"] == pytest.approx(0.5)
    assert table.loc["IPS", "sd"] == pytest.approx(1.0)
    assert table.loc["IPS", "RMSE / V"] == pytest.approx(np.sqrt((0.25 + 0.25 + 2.25) / 3) / 1.5)
    assert table.loc["IPS", "bias low"] < 0.5 < table.loc["IPS", "bias high"]


def test_refit_bootstrap_on_the_open_bandit_sample():
    rnd = open_bandit_arrays(*load_open_bandit("random", "all"))
    n_items, n_pos = rnd["n_items"], rnd["n_positions"]
    uniform = torch.full((n_items, n_pos), 1.0 / n_items, dtype=torch.float64)
    v = float(rnd["rewards"].mean())
    table = refit_bootstrap(rnd, {"uniform": uniform}, v, n_samples=2, l2=10000.0)
    assert list(table.index) == ["IPS", "SNIPS", "DM", "DR"] and list(table.columns) == ["uniform"]
    # evaluating the logging policy itself: IPS is the sample's click rate, so its error is
    # the bootstrap's noise alone, and every error is finite and non-negative
    assert (table["uniform"] >= 0).all() and np.isfinite(table["uniform"]).all()
    assert table.loc["SNIPS", "uniform"] == pytest.approx(table.loc["IPS", "uniform"])
