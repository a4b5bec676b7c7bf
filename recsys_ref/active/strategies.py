r"""Selection strategies: which items to ask a new user about, or which samples to label.

Every strategy answers one question behind one interface, :meth:`Strategy.select`: given a
:class:`SelectionState` (the candidates of each row, what is already known, and whatever
the strategy reads: item statistics, features, the model's predictive variance) and a
budget, return the chosen candidates of each row. A *row* is a new user in the elicitation
simulator (:mod:`~recsys_ref.active.elicitation`, candidates: items) and the single pool in
pool-based learning (:mod:`~recsys_ref.active.pool`, candidates: unlabelled samples).

Most strategies rank the candidates by a score :math:`s_{ui}` and take the ``budget`` best
(ties broken at random, seeded); :class:`KCenter` chooses greedily. The formulas are in each
class's docstring. See the chapter "Active selection".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from recsys_ref.checks import check_nonnegative, check_positive_int


@dataclass
class SelectionState:
    """What a strategy may look at; ``m`` rows (users or one pool), ``n`` candidates.

    Attributes:
        candidates: ``(m, n)`` bool, True where a candidate may be chosen.
        known: ``(m, n)`` bool, already labelled (the centres of :class:`KCenter`).
        features: ``(n, k)`` float, a candidate's embedding (items: ``q_i``).
        counts: ``(n,)`` number of training ratings of each candidate (popularity).
        entropy: ``(n,)`` entropy of each candidate's training rating distribution.
        density: ``(n,)`` representativeness of each candidate
            (:func:`~recsys_ref.active.signals.cosine_density`).
        variance: ``(m, n)`` predictive variance of the answer
            (:func:`~recsys_ref.active.signals.posterior_scores`).
        change: ``(m, n)`` expected squared norm of the model update
            (:func:`~recsys_ref.active.signals.posterior_scores`).
        noise_var: the noise :math:`\\sigma^2` included in ``variance`` (its epistemic part is
            ``variance - noise_var``).
    """

    candidates: torch.Tensor
    known: torch.Tensor | None = None
    features: torch.Tensor | None = None
    counts: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    density: torch.Tensor | None = None
    variance: torch.Tensor | None = None
    change: torch.Tensor | None = None
    noise_var: float | None = None

    def __post_init__(self):
        c = self.candidates
        if not isinstance(c, torch.Tensor) or c.dtype != torch.bool or c.dim() != 2:
            raise ValueError("candidates must be an (m, n) bool tensor")
        m, n = c.shape
        shapes = {"known": (m, n), "counts": (n,), "entropy": (n,), "density": (n,),
                  "variance": (m, n), "change": (m, n)}
        for name, shape in shapes.items():
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != shape:
                raise ValueError(f"{name} must have shape {shape}, got {tuple(value.shape)}")
        if self.features is not None and (self.features.dim() != 2 or len(self.features) != n):
            raise ValueError(f"features must be ({n}, k), got {tuple(self.features.shape)}")


class Strategy:
    """Base class: ``select(state, budget, generator) -> (m, budget)`` candidate indices.

    ``needs`` names the :class:`SelectionState` fields a strategy reads; a caller computes
    only those (the predictive variance costs a batched matrix product per round).
    See the chapter "Active selection".
    """

    name = "strategy"
    needs: tuple[str, ...] = ()

    def scores(self, state: SelectionState, generator: torch.Generator) -> torch.Tensor:
        """``(m, n)`` float: higher is chosen first."""
        raise NotImplementedError

    def _check(self, state: SelectionState, budget: int) -> int:
        if not isinstance(state, SelectionState):
            raise TypeError(f"state must be a SelectionState, got {type(state).__name__}")
        missing = [f for f in self.needs if getattr(state, f) is None]
        if missing:
            raise ValueError(f"{self.name} needs state field(s) {missing}")
        return check_positive_int(budget, "budget")

    def select(self, state: SelectionState, budget: int,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Choose up to ``budget`` candidates per row.

        Args:
            state: the candidates and what the strategy reads.
            budget: how many to choose per row.
            generator: breaks ties (and draws, for :class:`RandomSelection`); seed 0 if None.

        Returns:
            ``(m, budget)`` long candidate indices, best first; ``-1`` pads rows with fewer
            than ``budget`` candidates. See the chapter "Active selection".
        """
        budget = self._check(state, budget)
        gen = generator or torch.Generator().manual_seed(0)
        s = self.scores(state, gen).double()  # (m, n)
        if s[state.candidates].isnan().any():
            # NaN compares false with everything: topk would silently pick nothing
            raise ValueError(f"{self.name}: the scores of some candidates are NaN (is a state "
                             f"field such as the variance NaN?)")
        n = s.shape[1]
        perm = torch.randperm(n, generator=gen)  # random tie-breaking
        s = s[:, perm].masked_fill(~state.candidates[:, perm], float("-inf"))
        kk = min(budget, n)
        val, idx = s.topk(kk, dim=1)  # topk on a permutation: ties at random
        out = torch.full((len(s), budget), -1, dtype=torch.long)
        out[:, :kk] = torch.where(val > float("-inf"), perm[idx], -1)
        return out


class RandomSelection(Strategy):
    """Uniformly at random among the candidates: :math:`s_{ui} \\sim U(0, 1)`.

    See the chapter "Active selection".
    """

    name = "random"

    def scores(self, state, generator):
        return torch.rand(state.candidates.shape, generator=generator, dtype=torch.float64)


class FieldScore(Strategy):
    """The score is one field of the state, ``needs[0]`` (or ``field_scores``):
    ``(n,)`` per candidate, broadcast to every row, or ``(m, n)`` per row and candidate.

    See the chapter "Active selection".
    """

    def field_scores(self, state) -> torch.Tensor:
        """``(n,)`` or ``(m, n)`` the score of each candidate."""
        return getattr(state, self.needs[0])

    def scores(self, state, generator):
        return self.field_scores(state).double().expand(state.candidates.shape)


class Popularity(FieldScore):
    r"""The most rated items first: :math:`s_i = |R(i)|`. Easy to answer, tells little.

    See the chapter "Active selection".
    """

    name = "popularity"
    needs = ("counts",)


class Entropy(FieldScore):
    r"""The most controversial items first: :math:`s_i = -\sum_{r} p_{ir} \log p_{ir}`,
    :math:`p_{ir}` the share of item :math:`i`'s training ratings equal to :math:`r`.

    See the chapter "Active selection".
    """

    name = "entropy"
    needs = ("entropy",)


class LogPopEntropy(FieldScore):
    r"""Rashid et al. (2002): :math:`s_i = \log(1 + |R(i)|)\, H_i`, popular *and* divisive.

    See the chapter "Active selection".
    """

    name = "log-pop x entropy"
    needs = ("counts", "entropy")

    def field_scores(self, state):
        return torch.log1p(state.counts.double()) * state.entropy.double()  # (n,)


class Uncertainty(FieldScore):
    r"""The largest predictive variance of the answer under the Bayesian posterior:
    :math:`s_{ui} = x_i^\top \Sigma_u x_i + \sigma^2`
    (:func:`~recsys_ref.active.signals.posterior_scores`).

    See the chapter "Active selection".
    """

    name = "uncertainty"
    needs = ("variance",)


class ProportionalUncertainty(Strategy):
    r"""Uncertainty *sampling*: the batch is drawn without replacement with probability
    :math:`p_{ui} \propto (\mathrm{Var}_{ui} - \sigma^2)^{\gamma}`, the epistemic part of
    the predictive variance.

    Top-k :class:`Uncertainty` spends a whole batch on the largest variances, the rarest
    users and items; sampling keeps the preference for uncertain candidates and still covers
    the bulk of the distribution a test set is drawn from.

    Args:
        power: the exponent :math:`\gamma \ge 0` (0: uniform among the candidates; large:
            close to top-k :class:`Uncertainty`).

    See the chapter "Active selection".
    """

    name = "sampled uncertainty"
    needs = ("variance",)

    def __init__(self, power: float = 1.0):
        self.power = check_nonnegative(power, "power")

    def select(self, state, budget, generator=None):
        budget = self._check(state, budget)
        gen = generator or torch.Generator().manual_seed(0)
        noise = state.noise_var or 0.0
        w = (state.variance.double() - noise).clamp(min=0) ** self.power  # (m, n)
        w = (w + 1e-12).masked_fill(~state.candidates, 0.0)  # every candidate can be drawn
        out = torch.full((len(w), budget), -1, dtype=torch.long)
        for r in range(len(w)):  # rows are few: new users, or the one pool
            kk = min(budget, int(state.candidates[r].sum()))
            if kk:
                out[r, :kk] = torch.multinomial(w[r], kk, replacement=False, generator=gen)
        return out


class Density(FieldScore):
    r"""The most representative candidates: :math:`s_i = \mathrm{dens}(x_i)`, the mean
    cosine similarity to all candidates
    (:func:`~recsys_ref.active.signals.cosine_density`).

    See the chapter "Active selection".
    """

    name = "density"
    needs = ("density",)


class DensityWeightedUncertainty(Strategy):
    r"""Settles and Craven's information density:
    :math:`s_{ui} = \mathrm{Var}_{ui} \cdot \mathrm{dens}(x_i)^\beta`, uncertain *and*
    typical (an outlier is uncertain but teaches little about the rest).

    Args:
        beta: the weight :math:`\beta \ge 0` of density (0: plain uncertainty).

    See the chapter "Active selection".
    """

    name = "density x uncertainty"
    needs = ("variance", "density")

    def __init__(self, beta: float = 1.0):
        self.beta = check_nonnegative(beta, "beta")

    def scores(self, state, generator):
        return state.variance.double() * state.density.double().clamp(min=0) ** self.beta


class ExpectedModelChange(FieldScore):
    r"""The largest expected change of the posterior mean (Settles 2009, "EGL" for a
    Bayesian linear model): with :math:`y \sim N(x_i^\top m_u, v_{ui})`,
    :math:`v_{ui} = \sigma^2 + x_i^\top \Sigma_u x_i`, the update
    :math:`\Delta m_u = \Sigma_u x_i (y - x_i^\top m_u) / v_{ui}` has
    :math:`s_{ui} = \mathrm{E}\|\Delta m_u\|^2 = \|\Sigma_u x_i\|^2 / v_{ui}`.

    See the chapter "Active selection".
    """

    name = "expected change"
    needs = ("change",)


class KCenter(Strategy):
    r"""Diversity by greedy k-center (Sener and Savarese 2018): repeatedly take the
    candidate farthest from everything known or already chosen,
    :math:`i^\star = \arg\max_{i} \min_{j \in \mathcal{K}} \|x_i - x_j\|`. With nothing
    known the first centre is the mean of the features (the prior's "typical" point).

    See the chapter "Active selection".
    """

    name = "diversity (k-center)"
    needs = ("features",)

    def select(self, state, budget, generator=None):
        budget = self._check(state, budget)
        gen = generator or torch.Generator().manual_seed(0)
        X = state.features.double()  # (n, k)
        m, n = state.candidates.shape
        sq = (X * X).sum(1)  # (n,) squared norms: d^2(a, b) = |a|^2 + |b|^2 - 2 a.b

        def sq_dist(centres):  # (c, k) -> (c, n) squared distances to every candidate
            return ((centres * centres).sum(1)[:, None] + sq[None, :]
                    - 2 * centres @ X.T).clamp(min=0)

        # min squared distance of every candidate to the known set, per row: (m, n)
        dist = sq_dist(X.mean(0, keepdim=True)).expand(m, n).clone()
        if state.known is not None and state.known.any():
            for r in range(m):  # rows are few (users) or one (a pool)
                if state.known[r].any():
                    dist[r] = sq_dist(X[state.known[r]]).min(0).values
        dist += 1e-9 * torch.rand(m, n, generator=gen, dtype=torch.float64)  # tie-breaking
        dist.masked_fill_(~state.candidates, float("-inf"))
        out = torch.full((m, budget), -1, dtype=torch.long)
        rows = torch.arange(m)
        for b in range(min(budget, n)):
            val, pick = dist.max(1)  # (m,)
            out[:, b] = torch.where(val > float("-inf"), pick, -1)
            torch.minimum(dist, sq_dist(X[pick]), out=dist)  # distance to the new centre
            dist[rows, pick] = float("-inf")  # chosen: no longer a candidate
        return out


# every strategy of this module by name
STRATEGIES = {cls.name: cls for cls in (RandomSelection, Popularity, Entropy, LogPopEntropy,
                                        Uncertainty, ProportionalUncertainty, Density,
                                        DensityWeightedUncertainty,
                                        ExpectedModelChange, KCenter)}
