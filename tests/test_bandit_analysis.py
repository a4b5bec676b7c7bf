"""Regret growth, policy searches, encoder embeddings and the simulator's logged feedback."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from recsys_ref.bandits import BanditSimulator, EpsilonGreedy, OraclePolicy, RandomPolicy
from recsys_ref.bandits.analysis import (
    encoder_embeddings,
    loglog_slope,
    search_policy,
    slope_interval,
)
from recsys_ref.bandits.logged import log_policy, policy_value, softmax_policy
from recsys_ref.bandits.reward_model import log_loss
from recsys_ref.models.sasrec import SASRecConfig
from recsys_ref.off_policy import ips
from recsys_ref.sequences import mask_token, user_sequences
from recsys_ref.tuning import best_config, grid


def problem(n_users=8, n_items=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.sigmoid(torch.randn(n_users, n_items, generator=g) - 0.5).double()


# ----------------------------------------------------------------------------- regret growth


@pytest.mark.parametrize("beta", [0.5, 1.0])
def test_loglog_slope_recovers_a_power_law(beta):
    t = np.arange(1, 5001)
    assert loglog_slope(3.0 * t ** beta) == pytest.approx(beta, abs=1e-9)


def test_loglog_slope_separates_linear_from_sublinear_runs():
    # random play has a fixed expected loss per round: slope near 1; a sqrt curve is not
    p = problem()
    sim = BanditSimulator(p, seed=0, exclude_consumed=False)
    run = sim.run(RandomPolicy(p.shape[1], seed=0), 3000)
    assert loglog_slope(run.cumulative_regret()) == pytest.approx(1.0, abs=0.05)
    assert loglog_slope(np.sqrt(np.arange(1, 3001))) < 0.6


def test_loglog_slope_bad_input():
    with pytest.raises(ValueError, match="cumulative"):
        loglog_slope(np.zeros(100))  # log of 0
    with pytest.raises(ValueError, match="start"):
        loglog_slope(np.arange(1, 100), start=1.5)
    with pytest.raises(ValueError, match="cumulative"):
        loglog_slope(np.ones((5, 5)))


def test_slope_interval_is_a_student_t_interval():
    s = [0.9, 1.0, 1.1, 0.95]
    m, lo, hi = slope_interval(s)
    half = stats.t.ppf(0.975, 3) * np.std(s, ddof=1) / 2
    assert m == pytest.approx(0.9875) and lo == pytest.approx(m - half)
    assert hi == pytest.approx(m + half)
    assert all(type(v) is float for v in (m, lo, hi))  # glued as numbers, not numpy reprs
    one = slope_interval([0.7])
    assert one[0] == 0.7 and math.isnan(one[1]) and math.isnan(one[2])
    with pytest.raises(ValueError, match="slopes"):
        slope_interval([])
    with pytest.raises(ValueError, match="alpha"):
        slope_interval(s, alpha=2)


# ----------------------------------------------------------------------------- searches


def test_search_policy_ranks_by_regret_and_feeds_best_config():
    p = problem()
    sim = BanditSimulator(p, seed=0)
    table = search_policy(lambda epsilon: EpsilonGreedy(p.shape[1], epsilon, seed=0),
                          grid(epsilon=(0.0, 1.0)), sim, 200)
    assert list(table.columns[:2]) == ["epsilon", "regret"]
    # epsilon = 1 is random play; the direct runs reproduce the table (same simulator seed)
    direct = sim.run(EpsilonGreedy(p.shape[1], 1.0, seed=0), 200).summary()["regret"]
    assert table.loc[1, "regret"] == pytest.approx(direct)
    best = best_config(table)
    assert best["epsilon"] == table.loc[table["regret"].idxmin(), "epsilon"]
    with pytest.raises(ValueError, match="configuration"):
        search_policy(lambda: OraclePolicy(p), [], sim, 10)


# ----------------------------------------------------------------------------- encoder


def test_encoder_embeddings_are_the_encoders_next_item_vectors():
    n_users, n_items = 5, 12
    enc = SASRecConfig(max_len=6, dim=8, n_layers=1, n_heads=2, dropout=0.0).backbone(
        n_items, torch.Generator().manual_seed(0), causal=False)
    rows = [(u, (3 * u + j) % n_items, j) for u in range(4) for j in range(u + 2)]  # user 4: none
    frame = pd.DataFrame(rows, columns=["user_idx", "item_idx", "timestamp"])
    users, items = encoder_embeddings(enc, frame, n_users)
    assert users.shape == (n_users, 8) and items.shape == (n_items, 8)
    assert torch.equal(items, enc.tokens.weight[1:n_items + 1].detach())
    # by hand: history (last max_len - 1 items) + [MASK], the output at the [MASK]
    seqs = user_sequences(frame, n_users, 5, n_items)
    seqs = torch.cat([seqs, torch.full((n_users, 1), mask_token(n_items))], 1)
    with torch.no_grad():
        by_hand = enc(seqs)[:, -1]
    assert torch.allclose(users, by_hand, atol=1e-6)
    assert not torch.allclose(users[0], users[1])  # histories differ, so do the users
    with pytest.raises(TypeError, match="backbone"):
        encoder_embeddings(torch.nn.Linear(2, 2), frame, n_users)


# ----------------------------------------------------------------------------- logged data


def test_softmax_policy_and_exact_value():
    p = problem()
    scores = torch.randn(p.shape, generator=torch.Generator().manual_seed(1))
    pi = softmax_policy(scores, 0.5)
    assert torch.allclose(pi.sum(1), torch.ones(len(p), dtype=torch.float64))
    assert torch.allclose(pi, torch.softmax(scores.double() * 2, 1))
    # by hand: a greedy-like policy on p approaches the mean over users of max p
    by_hand = float(np.mean([(pi[u] * p[u]).sum() for u in range(len(p))]))
    assert policy_value(p, pi) == pytest.approx(by_hand)
    sharp = softmax_policy(p * 1e5, 1.0)
    assert policy_value(p, sharp) == pytest.approx(float(p.max(1).values.mean()), abs=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        softmax_policy(scores, 0.0)
    with pytest.raises(ValueError, match="policy_probs"):
        policy_value(p, pi[:, :-1])
    with pytest.raises(ValueError, match="policy_probs"):
        policy_value(p, pi * 0.5)


def test_logged_rounds_are_drawn_from_the_policy_and_ips_is_unbiased():
    p = problem()
    pi = softmax_policy(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)), 1.0)
    logs = log_policy(p, pi, 40_000, seed=3)
    u, a = logs["users"], logs["actions"]
    assert torch.equal(logs["propensities"], pi[u, a]) and torch.equal(logs["expected"], p[u, a])
    assert set(logs["rewards"].unique().tolist()) <= {0.0, 1.0}
    # on-policy click rate and IPS of another policy both match the exact values
    assert float(logs["rewards"].mean()) == pytest.approx(policy_value(p, pi), abs=0.01)
    pi_e = softmax_policy(p, 0.1)
    est = ips(logs["rewards"], a, logs["propensities"], pi_e[u])
    assert est == pytest.approx(policy_value(p, pi_e), abs=0.015)
    # seeded: the same logs again
    again = log_policy(p, pi, 40_000, seed=3)
    assert torch.equal(again["actions"], a) and torch.equal(again["rewards"], logs["rewards"])
    with pytest.raises(ValueError, match="n_rounds"):
        log_policy(p, pi, 0)


def test_log_loss_by_hand_and_bad_input():
    q = torch.tensor([[0.2, 0.9], [0.5, 0.1], [0.7, 0.3]], dtype=torch.float64)
    actions, rewards = torch.tensor([1, 0, 1]), torch.tensor([1.0, 0.0, 0.0])
    by_hand = -(math.log(0.9) + math.log(0.5) + math.log(0.7)) / 3
    assert log_loss(q, actions, rewards) == pytest.approx(by_hand)
    # a constant prediction at the click rate beats a confident wrong one
    assert log_loss(torch.full((3, 2), 1 / 3), actions, rewards) < log_loss(1 - q, actions,
                                                                            rewards)
    with pytest.raises(ValueError, match="actions"):
        log_loss(q, torch.tensor([0, 2, 1]), rewards)
    with pytest.raises(ValueError, match="rewards"):
        log_loss(q, actions, rewards[:2])
