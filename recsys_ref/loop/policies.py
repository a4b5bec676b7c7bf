r"""Serving policies of the unified loop: slates filled position by position, with propensities.

A slate of ``k`` items is filled one position at a time. At position :math:`j` a policy has a
distribution :math:`\pi(\cdot \mid u, R_j)` over the items :math:`R_j` still available (not
consumed by the user, not already in the slate); it draws the item there and the logger
records the probability of that draw, the *propensity*. For every position the
distribution sums to one over :math:`R_j`, so importance weights
:math:`\pi_e / \pi_b` of another policy are defined wherever :math:`\pi_b > 0`:

.. math::
    \pi_\varepsilon(i \mid u, R_j) = (1 - \varepsilon)\, \mathbb{1}[i = \arg\max_{i' \in R_j}
        s_{u i'}] + \frac{\varepsilon}{|R_j|}, \qquad i \in R_j .

* :class:`Greedy` is :math:`\varepsilon = 0`: deterministic, every propensity is 1, and no
  other policy can be evaluated from its logs.
* :class:`EpsilonGreedy` mixes in a uniform draw with probability :math:`\varepsilon`
  (as :class:`recsys_ref.bandits.policies.EpsilonGreedy`, but over a model's scores for one user).
* :class:`Softmax` (Boltzmann exploration) draws position :math:`j` from
  :math:`\pi(i \mid u, R_j) \propto \exp(s_{ui} / \tau)` over :math:`R_j` (a Plackett-Luce
  slate): every item keeps a probability that falls smoothly with its score, so a successor
  with similar scores has moderate importance weights on its logs.
* :class:`Thompson` ranks by scores drawn from the model's posterior (one draw per visit, as
  the neural-linear Thompson sampling of the exploration chapter, with a per-user linear head
  from the fold-in posterior) and keeps a small uniform floor :math:`\varepsilon`. Its
  logged propensities are conditional on the visit's draw; since the draw is independent of
  the clicks, importance weights with them are still unbiased.

See the chapter "The unified loop".
"""

from __future__ import annotations

import torch

from recsys_ref.checks import check_k


class SlatePolicy:
    """``epsilon``-mixed argmax over ``scores``, position by position (see the module)."""

    name = "epsilon-greedy"
    sample_scores = False  # True: the scores are a posterior draw (needs a model posterior)

    def __init__(self, epsilon: float = 0.1):
        if not 0 <= epsilon <= 1:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        self.epsilon = float(epsilon)

    @property
    def stochastic(self) -> bool:
        """Whether every available item has a positive propensity (needed by a gate)."""
        return self.epsilon > 0

    def distribution(self, scores: torch.Tensor, remaining: torch.Tensor) -> torch.Tensor:
        """``(b, n)`` probabilities of the next position over the ``remaining`` items."""
        masked = scores.masked_fill(~remaining, float("-inf"))  # (b, n)
        best = masked.argmax(1)  # (b,) ties: the lowest index
        n_left = remaining.sum(1, keepdim=True).double()  # (b, 1)
        dist = remaining.double() * (self.epsilon / n_left)
        dist[torch.arange(len(dist)), best] += 1 - self.epsilon
        return dist

    def sample(self, scores: torch.Tensor, available: torch.Tensor, k: int,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Fill ``(b, k)`` slates; return ``(slates (b, k) long, propensities (b, k))``.

        Args:
            scores: ``(b, n_items)`` the model's (or a drawn) score of every item.
            available: ``(b, n_items)`` bool, items that may be shown to each user.
            k: slate size.
            generator: the policy's random numbers.
        """
        if scores.shape != available.shape or available.dtype != torch.bool:
            raise ValueError(f"scores and available must have one shape (b, n_items), got "
                             f"{tuple(scores.shape)} and {tuple(available.shape)} "
                             f"{available.dtype}")
        k = check_k(k, scores.shape[1], "slate_size")
        short = available.sum(1) < k
        if bool(short.any()):
            raise ValueError(f"a user has fewer than slate_size={k} available items")
        remaining = available.clone()
        rows = torch.arange(len(scores))
        slates = torch.empty(len(scores), k, dtype=torch.long)
        props = torch.empty(len(scores), k, dtype=torch.float64)
        for j in range(k):
            dist = self.distribution(scores, remaining)  # (b, n)
            # inverse-CDF draw (torch.multinomial is ten times slower on 1,682 columns)
            cdf = dist.cumsum(1)  # (b, n)
            u = torch.rand(len(dist), 1, generator=generator, dtype=cdf.dtype) * cdf[:, -1:]
            item = torch.searchsorted(cdf, u, right=True)[:, 0].clamp(max=dist.shape[1] - 1)
            slates[:, j], props[:, j] = item, dist[rows, item]
            remaining[rows, item] = False
        return slates, props

    def logged_distributions(self, scores: torch.Tensor, available: torch.Tensor,
                             slates: torch.Tensor) -> torch.Tensor:
        """``(b, k, n)``: this policy's distribution at each position of logged ``slates``,
        given the logged items before it (what off-policy estimators need)."""
        remaining = available.clone()
        rows = torch.arange(len(scores))
        out = []
        for j in range(slates.shape[1]):
            out.append(self.distribution(scores, remaining))
            remaining[rows, slates[:, j]] = False
        return torch.stack(out, 1)


class Greedy(SlatePolicy):
    """The ``k`` highest scores, deterministically (every propensity is 1)."""

    name = "greedy"

    def __init__(self):
        super().__init__(0.0)


class EpsilonGreedy(SlatePolicy):
    """Each position: the best remaining item, or with probability ``epsilon`` a uniform one."""

    name = "epsilon-greedy"


class Softmax(SlatePolicy):
    """Each position: a draw from ``softmax(scores / temperature)`` over the remaining items.

    Args:
        temperature: :math:`\tau > 0`; small is nearly greedy, large nearly uniform.
    """

    name = "softmax"

    def __init__(self, temperature: float = 0.1):
        super().__init__(0.0)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    @property
    def stochastic(self) -> bool:
        return True

    def distribution(self, scores, remaining):
        logits = (scores.double() / self.temperature).masked_fill(~remaining, float("-inf"))
        return torch.softmax(logits, 1)  # (b, n), 0 on the items already used


class Thompson(SlatePolicy):
    """Rank by one posterior draw of the scores per visit, with a uniform floor ``epsilon``."""

    name = "thompson"
    sample_scores = True

    def __init__(self, epsilon: float = 0.02):
        super().__init__(epsilon)


POLICIES = {cls.name: cls for cls in (Greedy, EpsilonGreedy, Softmax, Thompson)}
