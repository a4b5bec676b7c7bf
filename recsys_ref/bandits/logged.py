r"""Logged bandit feedback from the click simulator, where every policy's true value is known.

On real logs (the Open Bandit Dataset) the truth of an off-policy estimate is itself a noisy
on-policy log. In the simulator it is exact: for a stationary stochastic policy
:math:`\pi(\cdot \mid u)` and users arriving uniformly at random,

.. math::
    V(\pi) = \frac{1}{|U|} \sum_{u} \sum_{i} \pi(i \mid u)\, p(u, i).

:func:`recsys_ref.bandits.logged.log_policy` draws ``n`` logged rounds of a policy (user,
item, propensity, click) with the simulator's click probabilities :math:`p`;
:func:`recsys_ref.bandits.logged.policy_value` is the exact :math:`V(\pi)`;
:func:`recsys_ref.bandits.logged.softmax_policy` turns any scores into a stochastic policy
with full support (every propensity > 0, as importance weighting needs). Rounds are
independent: unlike :class:`recsys_ref.bandits.simulator.BanditSimulator`, nothing is
consumed, which is the i.i.d. setting the estimators of :mod:`recsys_ref.off_policy` assume.
See the chapter "Exploration".
"""

from __future__ import annotations

import torch

from recsys_ref.bandits.simulator import check_probabilities
from recsys_ref.checks import check_positive_int


def softmax_policy(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    r"""``(batch, n_items)`` probabilities :math:`\pi(i \mid u) \propto \exp(s_{ui} / \tau)`.

    Args:
        scores: ``(batch, n_items)`` finite scores.
        temperature: :math:`\tau > 0`; small is nearly greedy, large nearly uniform.
    """
    s = torch.as_tensor(scores).double()
    if s.dim() != 2 or not bool(torch.isfinite(s).all()):
        raise ValueError(f"scores must be a finite (batch, n_items) tensor, got shape "
                         f"{tuple(s.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return torch.softmax(s / temperature, dim=1)


def _check_policy(click_prob, policy_probs) -> tuple[torch.Tensor, torch.Tensor]:
    p = check_probabilities(click_prob, "click_prob")
    pi = check_probabilities(policy_probs, "policy_probs")
    if p.dim() != 2 or pi.shape != p.shape:
        raise ValueError(f"policy_probs must have click_prob's shape {tuple(p.shape)}, got "
                         f"{tuple(pi.shape)}")
    if not torch.allclose(pi.sum(1), pi.new_ones(len(pi)), atol=1e-6):
        raise ValueError("policy_probs must sum to 1 over items in every row")
    return p, pi


def policy_value(click_prob, policy_probs) -> float:
    r"""The exact value :math:`V(\pi)`, clicks per round, users arriving uniformly.

    Args:
        click_prob: ``(n_users, n_items)`` the simulator's click probabilities.
        policy_probs: ``(n_users, n_items)`` :math:`\pi(i \mid u)`, rows summing to 1.
    """
    p, pi = _check_policy(click_prob, policy_probs)
    return float((p * pi).sum(1).mean())


def log_policy(click_prob, policy_probs, n_rounds: int, seed: int = 0) -> dict:
    """``n_rounds`` independent logged rounds of a stochastic policy in the simulator.

    Args:
        click_prob: ``(n_users, n_items)`` click probabilities.
        policy_probs: ``(n_users, n_items)`` the logging policy, rows summing to 1.
        n_rounds: rounds to log.
        seed: seed of the arrivals, the policy's draws and the clicks.

    Returns:
        A dict of ``(n_rounds,)`` tensors, ``users`` (long), ``actions`` (long),
        ``propensities`` (the logging policy's probability of the logged item) and
        ``rewards`` (0/1 clicks), and ``expected`` (the click probability of each logged
        item, which no estimator may use: it is there to check the logs).
    """
    p, pi = _check_policy(click_prob, policy_probs)
    n_rounds = check_positive_int(n_rounds, "n_rounds")
    gen = torch.Generator().manual_seed(check_positive_int(seed, "seed", minimum=0))
    users = torch.randint(len(p), (n_rounds,), generator=gen)  # (n,)
    # chunks of users' rows: (2048, n_items) at a time, never (n_rounds, n_items)
    actions = torch.cat([torch.multinomial(pi[users[b:b + 2048]], 1, generator=gen)[:, 0]
                         for b in range(0, n_rounds, 2048)])  # (n,)
    expected = p[users, actions]  # (n,)
    rewards = (torch.rand(n_rounds, generator=gen, dtype=torch.float64) < expected).double()
    return {"users": users, "actions": actions, "propensities": pi[users, actions],
            "rewards": rewards, "expected": expected}
