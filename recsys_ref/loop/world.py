r"""The world of the unified loop: who visits on which day, and the clicks they make.

The world owns the ground truth, a ``(n_users, n_items)`` matrix of click probabilities
:math:`p(u, i)` the system never sees (:func:`truth_from_ratings` builds the exploration
chapter's: a biased MF on every rating, Platt-scaled to "rated 4 stars or more", with the
number of factors :func:`world_factors` chooses by held-out RMSE). Time runs
in days. A share of the users is held out as *new*: each arrives on a day of the horizon with
no history and visits on ``new_user_visits`` consecutive days, then joins the pool of
existing users, of whom ``visits_per_day`` visit each day. A visit shows a slate of ``k``
items; position :math:`j` is examined with probability :math:`(j + 1)^{-\eta}` and an
examined item is clicked with probability :math:`p(u, i)`:

.. math:: P(\text{click at } j) = (j + 1)^{-\eta}\, p(u, i_j).

Visitors and the uniform click coins of a day depend on ``(seed, day)`` only, so every system
run in the same world meets the same users with the same coins (common random numbers) and
differs only by what it shows. See the chapter "The unified loop".
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from recsys_ref.bandits.simulator import check_probabilities, click_probabilities_from_scores
from recsys_ref.checks import check_config, check_k
from recsys_ref.evaluation import evaluate_ratings
from recsys_ref.models.mf import BiasedMF
from recsys_ref.tuning import best_config, grid, search


@dataclass
class WorldConfig:
    """The world's calendar and click model."""

    n_days: int = 30  # the horizon
    visits_per_day: int = 100  # existing users visiting each day (uniform, no repeats)
    new_frac: float = 0.2  # share of users held out as new, arriving over the horizon
    new_user_visits: int = 3  # a new user visits on this many consecutive days from arrival
    slate_size: int = 10  # k, items per visit
    position_bias: float = 0.0  # eta: position j is examined with probability (j+1)^-eta
    seed: int = 0  # seed of the users' split, arrivals, visitors and coins

    def __post_init__(self):
        check_config(self, positive_ints=("n_days", "visits_per_day", "new_user_visits",
                                          "slate_size"), nonnegative=("position_bias",))
        if not 0 <= self.new_frac < 1:
            raise ValueError(f"new_frac must be in [0, 1), got {self.new_frac}")
        if self.new_user_visits > self.n_days:
            raise ValueError(f"new_user_visits ({self.new_user_visits}) must be <= n_days "
                             f"({self.n_days})")


def world_factors(ratings: pd.DataFrame, n_users: int, n_items: int, *, smoke: bool = False,
                  seed: int = 0) -> tuple[int, pd.DataFrame]:
    """The click model's number of factors, which defines the simulated world: of BiasedMF
    (ALS, ten sweeps) with 4, 8, 16 or 32 factors (8 or 16 under ``smoke``), the one with
    the lowest RMSE on a seeded random tenth of ``ratings`` held out from its fit.

    The fits go through :func:`recsys_ref.model_cache.cached_fit`, so the exploration chapter
    and the unified loop, which both call this, fit each model once.

    Returns:
        ``(n_factors, table)``: the choice and the search table (``n_factors``, ``RMSE``).
    """
    held = ratings.sample(frac=0.1, random_state=seed)
    table = search(lambda n_factors: BiasedMF(n_users, n_items, n_factors=n_factors,
                                              solver="als", n_epochs=10, seed=seed),
                   grid(n_factors=(8, 16) if smoke else (4, 8, 16, 32)),
                   ratings.drop(held.index), lambda m: evaluate_ratings(m, held),
                   metric="RMSE", higher_is_better=False)
    return int(best_config(table)["n_factors"]), table


def truth_from_ratings(ratings: pd.DataFrame, n_users: int, n_items: int, n_factors: int = 16,
                       n_epochs: int = 10, seed: int = 0) -> tuple[torch.Tensor, dict]:
    """The exploration chapter's click model: BiasedMF (ALS) on all ratings, Platt-scaled.

    Returns:
        ``(click_prob (n_users, n_items) float32, platt {"slope", "intercept"})``.
        See the chapters "Exploration" and "The unified loop".
    """
    mf = BiasedMF(n_users, n_items, n_factors=n_factors, solver="als", n_epochs=n_epochs,
                  seed=seed).fit(ratings)
    liked = (ratings["rating"] >= 4).astype(float).to_numpy()
    prob, platt = click_probabilities_from_scores(
        mf.score(torch.arange(n_users)), ratings["user_idx"].to_numpy(),
        ratings["item_idx"].to_numpy(), liked)
    return prob.float(), platt


class World:
    """Ground truth, calendar and clicks (see the module docstring).

    Args:
        click_prob: ``(n_users, n_items)`` true click probabilities in [0, 1].
        config: a :class:`WorldConfig`.

    Attributes:
        new_users: ``(n_new,)`` the held-out users; ``arrival``: ``(n_new,)`` their first day.
        existing_users: ``(n_existing,)`` the others (the system may know their history).
    """

    def __init__(self, click_prob, config: WorldConfig | None = None):
        self.config = cfg = config or WorldConfig()
        self.click_prob = check_probabilities(click_prob, "click_prob").float()
        if self.click_prob.dim() != 2:
            raise ValueError(f"click_prob must be (n_users, n_items), got shape "
                             f"{tuple(self.click_prob.shape)}")
        self.n_users, self.n_items = self.click_prob.shape
        self.slate_size = check_k(cfg.slate_size, self.n_items, "slate_size")
        gen = torch.Generator().manual_seed(cfg.seed)
        perm = torch.randperm(self.n_users, generator=gen)
        n_new = round(cfg.new_frac * self.n_users)
        self.new_users = perm[:n_new].sort().values  # (n_new,)
        self.existing_users = perm[n_new:].sort().values  # (n_existing,)
        if len(self.existing_users) < cfg.visits_per_day:
            raise ValueError(f"visits_per_day ({cfg.visits_per_day}) exceeds the "
                             f"{len(self.existing_users)} existing users")
        last = cfg.n_days - cfg.new_user_visits  # a new user's first visits fit the horizon
        self.arrival = torch.randint(last + 1, (n_new,), generator=gen)  # (n_new,)
        # examination probability of each position: (k,)
        self.examination = (torch.arange(1, self.slate_size + 1, dtype=torch.float32)
                            ** -cfg.position_bias)

    def _gen(self, day: int, stream: int) -> torch.Generator:
        # one generator per (seed, day, stream): the same draws whatever the system did
        return torch.Generator().manual_seed(self.config.seed * 1_000_003 + day * 7 + stream)

    def visitors(self, day: int) -> pd.DataFrame:
        """Who visits on ``day``: ``user, new_visit`` (-1 for a returning visit, else the
        0-based index of a new user's first visits), new users first."""
        cfg = self.config
        since = day - self.arrival  # (n_new,) days since arrival
        first = (since >= 0) & (since < cfg.new_user_visits)
        graduated = self.new_users[since >= cfg.new_user_visits]
        pool = torch.cat([self.existing_users, graduated])
        pick = torch.randperm(len(pool), generator=self._gen(day, 0))[:cfg.visits_per_day]
        users = torch.cat([self.new_users[first], pool[pick].sort().values])
        new_visit = torch.cat([since[first], torch.full((cfg.visits_per_day,), -1)])
        return pd.DataFrame({"user": users.numpy(), "new_visit": new_visit.numpy()})

    def expected(self, users: torch.Tensor, slates: torch.Tensor) -> torch.Tensor:
        """``(b, k)`` click probabilities of the shown items, position bias included."""
        return self.click_prob[users[:, None], slates] * self.examination[:slates.shape[1]]

    def click(self, day: int, users: torch.Tensor, slates: torch.Tensor) -> torch.Tensor:
        """``(b, k)`` 0/1 clicks of the day's visitors (rows in :meth:`visitors` order)."""
        coins = torch.rand(slates.shape, generator=self._gen(day, 1))  # (b, k)
        return (coins < self.expected(users, slates)).float()

    def answer(self, day: int, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``(b, m)`` 0/1 answers to "do you like item i?", drawn as unbiased clicks."""
        coins = torch.rand(items.shape, generator=self._gen(day, 2))
        return (coins < self.click_prob[users[:, None], items]).float()

    def oracle(self, users: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
        """``(b,)`` expected clicks of the best slate of available items (the most probable
        items in the most examined positions)."""
        p = self.click_prob[users].masked_fill(~available, 0.0)  # (b, n_items)
        return (p.topk(self.slate_size, dim=1).values * self.examination).sum(1)
