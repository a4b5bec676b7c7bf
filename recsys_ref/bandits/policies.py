r"""Non-contextual bandit policies: random, oracle, greedy, epsilon-greedy, UCB1, Thompson.

Every policy has the same two methods, used by
:class:`recsys_ref.bandits.simulator.BanditSimulator`:

* ``select(context) -> (k,)`` long tensor of distinct available items, best first;
* ``update(context, items (k,), rewards (k,))`` after the clicks are seen.

Scores are computed for the whole catalogue at once (no Python loop over items) and the
unavailable items are masked before the top-k. The policies here learn one click rate per item,
shared by all users: they can find what is popular, not what suits this user (for that, see
:mod:`recsys_ref.bandits.linear`). Each policy owns its seeded generator, so a run depends on
its seed alone. See the chapter "Exploration".
"""

from __future__ import annotations

import math

import numpy as np
import torch

from recsys_ref.bandits.simulator import Context, check_probabilities
from recsys_ref.checks import check_nonnegative, check_positive_int

# a 0-d tensor per dtype: torch.where with a Python float allocates one every call
_NEG_INF = {dt: torch.tensor(float("-inf"), dtype=dt) for dt in (torch.float32, torch.float64)}


def top_available(scores: torch.Tensor, context: Context,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """The ``k`` highest-scoring available items, ``(n_items,) -> (k,)``, best first.

    With a ``generator``, ties are broken uniformly at random; without one, the lowest index
    wins. Greedy rules need the random tie-break: with all means 0 they would otherwise show
    item 0 forever.
    """
    if context.slate_size == 1:
        # one round costs a few calls on 1,682 numbers, where torch's per-call overhead
        # dominates: NumPy on the same memory (.numpy() is a view), the same values and
        # draws (argmax takes the first maximal score in both)
        s = np.where(context.available.numpy(), scores.numpy(), -np.inf)  # (n_items,)
        best = int(s.argmax())
        if generator is not None:
            ties = np.flatnonzero(s == s[best])  # usually just `best`
            if len(ties) > 1:
                best = int(ties[int(torch.randint(len(ties), (), generator=generator))])
        return torch.tensor([best])
    scores = torch.where(context.available, scores, _NEG_INF[scores.dtype])  # (n_items,)
    if generator is None:
        return scores.topk(context.slate_size).indices
    # a random permutation first: topk then keeps the first of equal scores, a random one
    order = torch.randperm(len(scores), generator=generator)  # (n_items,)
    return order[scores[order].topk(context.slate_size).indices]


class Policy:
    """Base class: counts per item and the shared top-k; subclasses define ``scores``.

    Args:
        n_items: catalogue size.
        seed: seed of the policy's own random numbers.
    """

    tie_break = True  # break ties at random (False where scores are continuous samples)

    def __init__(self, n_items: int, seed: int = 0):
        self.n_items = check_positive_int(n_items, "n_items")
        self.seed = check_positive_int(seed, "seed", minimum=0)
        self.gen = torch.Generator().manual_seed(self.seed)
        self.pulls = torch.zeros(self.n_items, dtype=torch.float64)  # (n_items,) impressions
        self.clicks = torch.zeros(self.n_items, dtype=torch.float64)  # (n_items,) clicks
        self.n_pulls = 0  # total impressions
        # NumPy views of the same memory, for the per-round updates (see top_available)
        self._pulls, self._clicks = self.pulls.numpy(), self.clicks.numpy()

    def scores(self, context: Context) -> torch.Tensor:
        """``(n_items,)`` scores; the top ``k`` available items are shown."""
        raise NotImplementedError

    def select(self, context: Context) -> torch.Tensor:
        """``(k,)`` items to show, best first."""
        return top_available(self.scores(context), context,
                             self.gen if self.tie_break else None)

    def update(self, context: Context, items: torch.Tensor, rewards: torch.Tensor) -> None:
        """Count the impressions and clicks of the shown items."""
        ids = items.numpy()  # (k,); add.at adds repeated items in order, as index_add_
        np.add.at(self._pulls, ids, 1.0)
        np.add.at(self._clicks, ids, rewards.double().numpy())  # no copy when float64
        self.n_pulls += len(items)

    @property
    def name(self) -> str:
        return type(self).__name__


class RandomPolicy(Policy):
    """Shows available items uniformly at random: the floor every policy must beat."""

    tie_break = False  # continuous random keys

    def scores(self, context: Context) -> torch.Tensor:
        """Uniform random keys, ``(n_items,)``; their top k is a uniform random slate."""
        return torch.rand(self.n_items, generator=self.gen)


class OraclePolicy(Policy):
    """Knows the click probabilities and shows the best available items (zero regret).

    Args:
        click_prob: ``(n_users, n_items)`` the simulator's probabilities.
    """

    tie_break = False  # ties in p are broken like the simulator's oracle (lowest index)

    def __init__(self, click_prob, seed: int = 0):
        p = check_probabilities(click_prob, "click_prob")
        super().__init__(p.shape[-1], seed)
        self.click_prob = p

    def scores(self, context: Context) -> torch.Tensor:
        return self.click_prob[context.user]


class Greedy(Policy):
    r"""Shows the items with the highest empirical click rate (no deliberate exploration).

    .. math::
        \hat\mu_i = \frac{\text{clicks}_i}{n_i} \text{ if } n_i > 0,
        \quad \hat\mu_i = \mu_0 \text{ otherwise}

    ``initial_value`` :math:`\mu_0 = 0` (the default, "zero init") makes greedy lock onto the
    first items that are clicked: everything unseen looks worse. :math:`\mu_0 = 1`
    ("optimistic init") makes every unseen item look perfect, so each item is tried once
    before greedy settles: exploration by optimism, paid for once per item.

    Args:
        n_items: catalogue size.
        initial_value: :math:`\mu_0`, the value of an item never shown, in [0, 1].
        seed: seed of the random tie-breaking.
    """

    def __init__(self, n_items: int, initial_value: float = 0.0, seed: int = 0):
        super().__init__(n_items, seed)
        if not 0 <= initial_value <= 1:
            raise ValueError(f"initial_value must be in [0, 1], got {initial_value}")
        self.initial_value = float(initial_value)
        # (n_items,) kept up to date in update(): only the k shown items change per round
        self._means = torch.full((self.n_items,), self.initial_value, dtype=torch.float64)

    def update(self, context: Context, items: torch.Tensor, rewards: torch.Tensor) -> None:
        super().update(context, items, rewards)
        ids = items.numpy()
        self._means.numpy()[ids] = self._clicks[ids] / self._pulls[ids]

    def means(self) -> torch.Tensor:
        """``(n_items,)`` empirical click rates, ``initial_value`` for unseen items."""
        return self._means

    def scores(self, context: Context) -> torch.Tensor:
        return self.means()


class EpsilonGreedy(Greedy):
    r"""Greedy, except that with probability :math:`\varepsilon_t` the slate is uniform random.

    .. math::
        \varepsilon_t = \varepsilon \ \text{(fixed)} \quad\text{or}\quad
        \varepsilon_t = \min(1, c / t) \ \text{(decaying; Auer et al. 2002)}

    A fixed :math:`\varepsilon` keeps paying for exploration forever (linear regret); the
    decaying schedule explores a lot early and then less, for a total of about
    :math:`c \log T` random rounds.

    Args:
        n_items: catalogue size.
        epsilon: the fixed exploration probability, in [0, 1] (ignored when ``decay`` is set).
        decay: :math:`c` of the decaying schedule, ``> 0``; ``None`` for a fixed epsilon.
        initial_value: :math:`\mu_0` of unseen items (see :class:`Greedy`).
        seed: seed of the coin, the random slates and the tie-breaking.
    """

    def __init__(self, n_items: int, epsilon: float = 0.1, decay: float | None = None,
                 initial_value: float = 0.0, seed: int = 0):
        super().__init__(n_items, initial_value, seed)
        if not 0 <= epsilon <= 1:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        if decay is not None and not decay > 0:
            raise ValueError(f"decay must be > 0 or None, got {decay}")
        self.epsilon, self.decay = float(epsilon), decay

    def epsilon_at(self, t: int) -> float:
        r""":math:`\varepsilon_t` of round ``t`` (1-based)."""
        return self.epsilon if self.decay is None else min(1.0, self.decay / t)

    def scores(self, context: Context) -> torch.Tensor:
        # one coin per round: explore -> random keys (a uniform random slate)
        if float(torch.rand((), generator=self.gen)) < self.epsilon_at(context.t):
            return torch.rand(self.n_items, generator=self.gen)
        return self.means()


class UCB1(Policy):
    r"""Upper confidence bound (Auer, Cesa-Bianchi and Fischer 2002).

    .. math::
        \mathrm{UCB}_i = \hat\mu_i + \alpha \sqrt{\frac{2 \ln n}{n_i}}, \qquad
        \mathrm{UCB}_i = +\infty \text{ if } n_i = 0,

    where :math:`n` is the total number of impressions so far. :math:`\alpha = 1` is UCB1;
    a smaller :math:`\alpha` explores less (no guarantee, often better in practice). With
    1,682 items every item is shown once before any is shown twice.

    Args:
        n_items: catalogue size.
        alpha: width multiplier :math:`\alpha \ge 0`.
        seed: seed of the tie-breaking among untried items.
    """

    def __init__(self, n_items: int, alpha: float = 1.0, seed: int = 0):
        super().__init__(n_items, seed)
        self.alpha = check_nonnegative(alpha, "alpha")

    def scores(self, context: Context) -> torch.Tensor:
        n = max(self.n_pulls, 1)
        pulls = np.maximum(self._pulls, 1.0)  # (n_items,)
        # (1 / n_i) * c: torch's ``c / tensor`` is this product, and the scores stay the same
        bonus = self.alpha * np.sqrt(np.reciprocal(pulls) * (2 * math.log(n)))
        return torch.from_numpy(np.where(self._pulls > 0, self._clicks / pulls + bonus, np.inf))


class BernoulliTS(Policy):
    r"""Bernoulli Thompson sampling with a Beta prior per item (Thompson 1933).

    Each round every item's click rate is drawn from its posterior and the top draws are shown:

    .. math::
        \tilde\theta_i \sim \mathrm{Beta}(a_0 + \text{clicks}_i,\; b_0 + n_i - \text{clicks}_i)

    Args:
        n_items: catalogue size.
        prior: :math:`(a_0, b_0)`, both ``> 0``; ``(1, 1)`` is uniform.
        seed: seed of the posterior draws (a NumPy generator: torch has no seeded Beta).
    """

    tie_break = False  # continuous draws: ties have probability 0

    def __init__(self, n_items: int, prior: tuple[float, float] = (1.0, 1.0), seed: int = 0):
        super().__init__(n_items, seed)
        a0, b0 = (float(v) for v in prior)
        if not (a0 > 0 and b0 > 0):
            raise ValueError(f"prior must be two numbers > 0, got {prior}")
        self.prior = (a0, b0)
        self.rng = np.random.default_rng(self.seed)

    def scores(self, context: Context) -> torch.Tensor:
        a = self.prior[0] + self._clicks  # (n_items,)
        b = self.prior[1] + (self._pulls - self._clicks)
        return torch.from_numpy(self.rng.beta(a, b))
