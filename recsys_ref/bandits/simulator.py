r"""A click simulator for bandit policies, fitted to MovieLens-100K (or any preference model).

The simulator owns a ``(n_users, n_items)`` matrix of click probabilities :math:`p(u, i)`.
Each round a user drawn uniformly at random arrives, the policy shows one item (or a slate of
``slate_size`` distinct items), each shown item is clicked independently with probability
:math:`p(u, i)`, and the policy learns the clicks. Items a user has clicked (or, optionally,
been shown) are consumed: neither the policy nor the oracle may show them to that user again.

The regret of round :math:`t` is *expected* regret against the oracle that knows :math:`p`
and faces the same available items :math:`\mathcal{A}_t` (those not yet consumed by the user
on the policy's own trajectory):

.. math::
    \mathrm{regret}_t = \max_{S \subseteq \mathcal{A}_t, |S| = k} \sum_{i \in S} p(u_t, i)
        - \sum_{i \in S_t} p(u_t, i),
    \qquad R_T = \sum_{t=1}^T \mathrm{regret}_t .

See the chapter "Exploration".
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from recsys_ref.checks import check_index, check_k, check_positive_int
from recsys_ref.progress import progress_bar

CONSUME_ON = ("click", "show")


@dataclass
class Context:
    """What a policy sees before it chooses: the round, the user and the available items.

    Attributes:
        t: the round, 1-based.
        user: the arriving user's index.
        available: ``(n_items,)`` bool, True where the item may be shown to this user (a
            view into the simulator's state: read it during the round, do not keep or edit it).
        slate_size: how many distinct items to show.
        user_features: the user's ``(d,)`` feature vector if the simulator has one, else None.
    """

    t: int
    user: int
    available: torch.Tensor
    slate_size: int = 1
    user_features: torch.Tensor | None = None


@dataclass
class SimulationResult:
    """Per-round records of one :meth:`BanditSimulator.run` (all tensors have ``n_rounds`` rows).

    Attributes:
        users: ``(T,)`` arriving users.
        items: ``(T, k)`` shown items.
        rewards: ``(T, k)`` clicks (0/1).
        expected: ``(T, k)`` click probabilities of the shown items.
        oracle: ``(T,)`` the oracle's expected clicks (sum of the k best available p).
        regret: ``(T,)`` expected regret, ``oracle - expected.sum(1)``.
        n_items: catalogue size (for coverage).
        seconds: wall time of the run.
    """

    users: torch.Tensor
    items: torch.Tensor
    rewards: torch.Tensor
    expected: torch.Tensor
    oracle: torch.Tensor
    regret: torch.Tensor
    n_items: int
    seconds: float

    def cumulative_regret(self) -> torch.Tensor:
        """``(T,)`` expected cumulative regret :math:`R_t` after each round."""
        return self.regret.cumsum(0)

    def summary(self) -> dict[str, float]:
        """Final expected cumulative regret, CTR (clicks per impression), coverage, seconds."""
        return {"regret": float(self.regret.sum()), "ctr": float(self.rewards.mean()),
                "coverage": len(torch.unique(self.items)) / self.n_items,
                "seconds": self.seconds}

    def to_frame(self) -> pd.DataFrame:
        """One row per round: ``round, user, item, reward, expected_reward, oracle_reward,
        regret, cumulative_regret``; slates give ``item_0..``, ``reward_0..`` and the sums."""
        k = self.items.shape[1]
        out = {"round": torch.arange(1, len(self.users) + 1).numpy(), "user": self.users.numpy()}
        if k == 1:
            out |= {"item": self.items[:, 0].numpy(), "reward": self.rewards[:, 0].numpy()}
        else:
            out |= {f"item_{j}": self.items[:, j].numpy() for j in range(k)}
            out |= {f"reward_{j}": self.rewards[:, j].numpy() for j in range(k)}
            out["reward"] = self.rewards.sum(1).numpy()
        out |= {"expected_reward": self.expected.sum(1).numpy(),
                "oracle_reward": self.oracle.numpy(), "regret": self.regret.numpy(),
                "cumulative_regret": self.cumulative_regret().numpy()}
        return pd.DataFrame(out)


def check_probabilities(p, name: str) -> torch.Tensor:
    """A float64 tensor of probabilities, or a ValueError naming ``name``."""
    p = torch.as_tensor(p)
    if not p.is_floating_point():
        raise TypeError(f"{name} must be a float tensor, got dtype {p.dtype}")
    if p.numel() == 0 or not bool(((p >= 0) & (p <= 1)).all()):  # also rejects NaN
        raise ValueError(f"{name} must be non-empty with every value in [0, 1]")
    return p.double()


class BanditSimulator:
    r"""Random users arrive; a policy shows items; Bernoulli clicks with known probabilities.

    Runs are reproducible and comparable: every :meth:`run` restarts from the same state
    and draws the same users and the same uniform click coins (:math:`c_{t,j} \sim U(0, 1)`,
    click iff :math:`c_{t,j} < p(u_t, i_{t,j})`), so two policies face identical arrivals
    (common random numbers) and differ only through their choices.

    Args:
        click_prob: ``(n_users, n_items)`` probabilities of a click, in [0, 1].
        seed: seed of the arrivals and clicks.
        exclude_consumed: never show a user an item they consumed.
        slate_size: items shown per round ``k`` (clicks are independent across the slate).
        consume_on: ``"click"`` (default; a clicked movie is watched) or ``"show"`` (every
            shown item is consumed).
        user_features: optional ``(n_users, d)`` features handed to the policy in the context.
        initially_consumed: optional ``(n_users, n_items)`` bool mask of items consumed before
            round 1 (e.g. the training interactions); ignored if ``exclude_consumed=False``.

    Each round costs a few torch calls; the bookkeeping (consumed sets, the oracle's best
    items, the clicks) is plain Python on per-user lists, so 20,000 rounds take seconds.

    See the chapter "Exploration".
    """

    def __init__(self, click_prob, seed: int = 0, exclude_consumed: bool = True,
                 slate_size: int = 1, consume_on: str = "click", user_features=None,
                 initially_consumed: torch.Tensor | None = None):
        self.click_prob = check_probabilities(click_prob, "click_prob")
        if self.click_prob.dim() != 2:
            raise ValueError(f"click_prob must be (n_users, n_items), got shape "
                             f"{tuple(self.click_prob.shape)}")
        self.n_users, self.n_items = self.click_prob.shape
        self.seed = check_positive_int(seed, "seed", minimum=0)
        self.exclude_consumed = bool(exclude_consumed)
        self.slate_size = check_k(slate_size, self.n_items, "slate_size")
        if consume_on not in CONSUME_ON:
            raise ValueError(f"consume_on must be one of {CONSUME_ON}, got {consume_on!r}")
        self.consume_on = consume_on
        if user_features is not None:
            user_features = torch.as_tensor(user_features)
            if user_features.dim() != 2 or len(user_features) != self.n_users:
                raise ValueError(f"user_features must be (n_users={self.n_users}, d), got "
                                 f"shape {tuple(user_features.shape)}")
        self.user_features = user_features
        if initially_consumed is not None:  # None: nothing consumed (no dense mask kept)
            shape = (self.n_users, self.n_items)
            if (tuple(initially_consumed.shape) != shape
                    or initially_consumed.dtype != torch.bool):
                raise ValueError(f"initially_consumed must be a bool tensor of shape "
                                 f"{shape}, got {initially_consumed.dtype} "
                                 f"{tuple(initially_consumed.shape)}")
            initially_consumed = initially_consumed.clone()
        self.initially_consumed = initially_consumed
        self._p_rows, self._orders = {}, {}  # per-user Python lists, built on first arrival

    def _draws(self, n_rounds: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed)
        users = torch.randint(self.n_users, (n_rounds,), generator=gen)  # (T,)
        coins = torch.rand(n_rounds, self.slate_size, generator=gen, dtype=torch.float64)
        if self.exclude_consumed and self.consume_on == "show":
            # every shown item is consumed: check up front that no user runs out
            need = torch.bincount(users, minlength=self.n_users) * self.slate_size
            room = torch.full((self.n_users,), self.n_items)  # (n_users,) unconsumed items
            if self.initially_consumed is not None:
                room = room - self.initially_consumed.sum(1)
            if bool((need > room).any()):
                u = int((need - room).argmax())
                raise ValueError(f"n_rounds={n_rounds} is too large: user {u} arrives "
                                 f"{int(need[u]) // self.slate_size} times and could run out "
                                 f"of its {int(room[u])} available items")
        return users, coins

    def run(self, policy, n_rounds: int, progress: bool = False) -> SimulationResult:
        """Play ``n_rounds`` rounds of ``policy``; return the per-round records.

        Args:
            policy: has ``select(context) -> (k,) item indices`` (an int is accepted when
                ``k = 1``) and ``update(context, items (k,), rewards (k,))``.
            n_rounds: number of rounds ``T``.
            progress: show a tqdm progress bar.

        Returns:
            A :class:`SimulationResult`.
        """
        n_rounds = check_positive_int(n_rounds, "n_rounds")
        k, n_items = self.slate_size, self.n_items
        users, coins = self._draws(n_rounds)
        # Per-round work is plain Python on small lists (a torch call costs microseconds):
        # each user's probabilities and items sorted by probability are materialised on first
        # arrival, consumed items are a set per user, and the policy sees a bool row view.
        available = {}  # user -> (n_items,) bool row, True = may be shown; on first arrival
        available_np = {}  # user -> a NumPy view of that row
        everything = torch.ones(n_items, dtype=torch.bool)
        consumed = [set() for _ in range(self.n_users)]
        first = {}  # user -> round of first arrival
        for t, u in enumerate(users.tolist()):
            first.setdefault(u, t)
        p_rows, orders = self._p_rows, self._orders  # user -> p as floats / items by p, desc
        coin_rows = coins.tolist()
        chosen_list, oracle_list = [], []
        start = time.perf_counter()
        for t, u in enumerate(progress_bar(users.tolist(), progress, desc="rounds",
                                           leave=False)):
            if u not in p_rows:  # first arrival in any run: kept for later runs
                p_rows[u] = self.click_prob[u].tolist()
                orders[u] = torch.argsort(self.click_prob[u], descending=True, stable=True
                                          ).tolist()
            if t == first[u]:  # first arrival in this run
                available[u] = (torch.ones(n_items, dtype=torch.bool)
                                if self.initially_consumed is None
                                else ~self.initially_consumed[u])
                available_np[u] = available[u].numpy()  # a view: 20x faster to write to
                consumed[u] = set(torch.nonzero(~available[u])[:, 0].tolist())
            if self.exclude_consumed and len(consumed[u]) > n_items - k:
                raise ValueError(f"n_rounds={n_rounds} is too large: user {u} has fewer than "
                                 f"{k} unconsumed items left in round {t + 1}")
            row = available[u] if self.exclude_consumed else everything  # (n_items,) view
            feats = None if self.user_features is None else self.user_features[u]
            ctx = Context(t + 1, u, row, k, feats)
            chosen = policy.select(ctx)
            if not (isinstance(chosen, torch.Tensor) and chosen.dtype == torch.long):
                chosen = torch.as_tensor(chosen, dtype=torch.long)
            ids = chosen.reshape(-1).tolist()
            gone = consumed[u] if self.exclude_consumed else ()
            if (len(ids) != k or len(set(ids)) != k
                    or not all(0 <= i < n_items and i not in gone for i in ids)):
                raise ValueError(f"policy.select must return {k} distinct available item(s) "
                                 f"in 0..{n_items - 1}, got {ids} in round {t + 1}")
            p_u = p_rows[u]
            clicks = [1.0 if c < p_u[i] else 0.0 for c, i in zip(coin_rows[t], ids, strict=True)]
            policy.update(ctx, chosen.reshape(-1), torch.tensor(clicks, dtype=torch.float64))
            # the oracle: the k most probable items this user has not consumed
            best = _first_not_in(orders[u], gone, k)
            oracle_list.append(sum(p_u[i] for i in best))
            chosen_list.append(ids)
            if self.exclude_consumed:
                for i, clicked in zip(ids, clicks, strict=True):
                    if clicked or self.consume_on == "show":
                        consumed[u].add(i)
                        available_np[u][i] = False  # row[i] = False, through the view
        seconds = time.perf_counter() - start
        items = torch.tensor(chosen_list, dtype=torch.long)  # (T, k)
        oracle = torch.tensor(oracle_list, dtype=torch.float64)  # (T,)
        expected = self.click_prob[users[:, None], items]  # (T, k)
        rewards = (coins < expected).double()  # the same draws as inside the loop
        regret = oracle - expected.sum(1)
        return SimulationResult(users, items, rewards, expected, oracle, regret,
                                self.n_items, seconds)


def _first_not_in(order: list[int], excluded, k: int) -> list[int]:
    """The first ``k`` entries of ``order`` not in ``excluded``."""
    out = []
    for i in order:
        if i not in excluded:
            out.append(i)
            if len(out) == k:
                break
    return out


def click_probabilities_from_scores(scores, users, items, clicks, n_iters: int = 50,
                                    ) -> tuple[torch.Tensor, dict[str, float]]:
    r"""Turn any model's scores into calibrated click probabilities (Platt scaling).

    Fits the two numbers :math:`a, c` of

    .. math:: p(u, i) = \sigma(a \, s_{ui} + c)

    by maximum likelihood (Newton's method) on observed pairs with 0/1 labels (e.g.
    ``rating >= 4`` among all ratings), then applies it to every pair. The ranking of each
    user's items is the model's; only the scale is learned.

    Args:
        scores: ``(n_users, n_items)`` model scores (e.g. predicted ratings).
        users, items: ``(n,)`` indices of the observed pairs.
        clicks: ``(n,)`` 0/1 labels of those pairs.
        n_iters: Newton iterations (it converges in about 10).

    Returns:
        ``(click_prob (n_users, n_items) float64, {"slope": a, "intercept": c})``.
        See the chapter "Exploration".
    """
    scores = torch.as_tensor(scores).double()
    if scores.dim() != 2:
        raise ValueError(f"scores must be (n_users, n_items), got {tuple(scores.shape)}")

    def tensor(x, dtype):  # np.array copies: pandas' to_numpy() is read-only, torch warns on it
        x = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.array(x))
        return x.to(dtype)

    users, items = tensor(users, torch.long), tensor(items, torch.long)
    y = tensor(clicks, torch.double)
    if not users.shape == items.shape == y.shape or users.dim() != 1:
        raise ValueError(f"users, items and clicks must be 1-D of one length, got shapes "
                         f"{tuple(users.shape)}, {tuple(items.shape)}, {tuple(y.shape)}")
    check_index(users, "users", scores.shape[0])
    check_index(items, "items", scores.shape[1])
    if not bool(((y == 0) | (y == 1)).all()):
        raise ValueError("clicks must be 0/1")
    s = scores[users, items]
    X = torch.stack([s, torch.ones_like(s)], 1)  # (n, 2)
    w = torch.zeros(2, dtype=torch.float64)
    for _ in range(n_iters):
        q = torch.sigmoid(X @ w)
        H = X.T @ (X * (q * (1 - q))[:, None]) + 1e-9 * torch.eye(2, dtype=torch.float64)
        step = torch.linalg.solve(H, X.T @ (y - q))
        w = w + step
        if float(step.abs().max()) < 1e-10:
            break
    return torch.sigmoid(w[0] * scores + w[1]), {"slope": float(w[0]), "intercept": float(w[1])}
