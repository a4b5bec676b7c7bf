r"""The elicitation simulator: ask new users about items, fold in each answer, evaluate.

Protocol (see the chapter "Active selection"):

* New users are held-out users (a seeded split, as in :func:`.cold_user_split`); the model
  is fitted on the other users' ratings only.
* Each new user's ratings are split at random (seeded) into an *askable pool* and a fixed
  *evaluation set*. The system may only ask about pool items: a simulated user can answer
  only about movies they actually rated. That is a bias in every offline elicitation study:
  a real user asked about an obscure movie often cannot answer, so offline results
  flatter strategies that pick rare items, and popularity's advantage of being answerable
  is invisible here.
* After each batch of answers the user is folded in (:class:`.FoldInMF`) and scored on the
  evaluation set, which no strategy can ask about, so every strategy and every budget is
  scored on the same items: RMSE over the evaluation ratings, and full-ranking NDCG@k with
  relevant = evaluation items rated ``>= threshold``, ranking every item outside the
  user's askable pool (the same candidate list at every budget: removing answered items
  instead would reward a strategy for asking about items the model ranks first).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from recsys_ref.active.signals import (
    cosine_density,
    item_counts,
    posterior_scores,
    rating_entropy,
)
from recsys_ref.active.strategies import SelectionState, Strategy
from recsys_ref.checks import check_frame, check_positive_int
from recsys_ref.few_shot.protocol import full_ranking_ndcg
from recsys_ref.progress import progress_bar

COLUMNS = ["user_idx", "item_idx", "rating"]


@dataclass
class ElicitationSplit:
    """Training users' ratings, and each new user's askable pool and evaluation set.

    Attributes:
        train: every rating of the training users.
        pool: the new users' askable ratings (answers are read from here only).
        evaluation: the new users' evaluation ratings (never askable).
    """

    train: pd.DataFrame
    pool: pd.DataFrame
    evaluation: pd.DataFrame

    @property
    def users(self) -> np.ndarray:
        """Sorted new users."""
        return np.unique(self.evaluation["user_idx"].to_numpy())


def elicitation_split(ratings: pd.DataFrame, test_frac: float = 0.2, eval_frac: float = 0.3,
                      seed: int = 0) -> ElicitationSplit:
    """Hold out ``test_frac`` of the users; split each one's ratings into pool and evaluation.

    Args:
        ratings: ``user_idx, item_idx, rating``.
        test_frac: the share of users held out as new users (seeded, as
            :func:`.cold_user_split` with the same ``seed`` and ``test_frac``).
        eval_frac: the share of each new user's ratings in the evaluation set (at least one
            rating each side).
        seed: seeds both splits.

    Returns:
        An :class:`ElicitationSplit`. See the chapter "Active selection".
    """
    check_frame(ratings, "ratings", COLUMNS)
    for name, v in (("test_frac", test_frac), ("eval_frac", eval_frac)):
        if not 0 < v < 1:
            raise ValueError(f"{name} must be in (0, 1), got {v}")
    users = ratings["user_idx"].unique()
    perm = np.random.default_rng(seed).permutation(users)
    test = np.sort(perm[:round(test_frac * len(users))])
    if len(test) == 0 or len(test) == len(users):
        raise ValueError("test_frac leaves no new users or no training users")
    new = ratings[ratings["user_idx"].isin(test)].sort_values(["user_idx", "item_idx"])
    rng = np.random.default_rng(seed + 1)
    key = rng.random(len(new))  # a random rank of each rating within its user
    rank = pd.Series(key, index=new.index).groupby(new["user_idx"].to_numpy()).rank(
        method="first").to_numpy()
    size = new.groupby("user_idx")["item_idx"].transform("size").to_numpy()
    n_eval = np.clip(np.round(eval_frac * size), 1, size - 1)
    is_eval = rank <= n_eval
    return ElicitationSplit(ratings[~ratings["user_idx"].isin(test)], new[~is_eval],
                            new[is_eval])


class ElicitationSimulator:
    """Runs a :class:`~recsys_ref.active.strategies.Strategy` against simulated new users.

    Args:
        model: a fitted :class:`.FoldInMF` (fitted on ``split.train``).
        split: the :class:`ElicitationSplit`.
        k: the NDCG cut-off.
        threshold: evaluation items rated ``>= threshold`` are relevant.
        seed: seeds strategies' draws (ranking ties follow :func:`recsys_ref.metrics.rank_order`).

    See the chapter "Active selection".
    """

    def __init__(self, model, split: ElicitationSplit, k: int = 10, threshold: float = 4.0,
                 seed: int = 0):
        if not hasattr(model, "model") or not hasattr(model, "fold_in"):
            raise TypeError("model must be a fitted FoldInMF")
        if not isinstance(split, ElicitationSplit):
            raise TypeError(f"split must be an ElicitationSplit, got {type(split).__name__}")
        self.model, self.split, self.seed = model, split, int(seed)
        self.k, self.threshold = check_positive_int(k, "k"), float(threshold)
        mf = model.model
        n_items = mf.n_items
        self.users = torch.tensor(split.users)  # (m,)
        row = {int(u): j for j, u in enumerate(split.users)}
        m = len(self.users)
        pool_rows = torch.as_tensor([row[u] for u in split.pool["user_idx"]], dtype=torch.long)
        pool_items = torch.tensor(split.pool["item_idx"].to_numpy(), dtype=torch.long)
        self.pool_mask = torch.zeros(m, n_items, dtype=torch.bool)  # (m, n_items) askable
        self.pool_mask[pool_rows, pool_items] = True
        self.answers = torch.zeros(m, n_items)  # (m, n_items) hidden until asked
        self.answers[pool_rows, pool_items] = torch.tensor(
            split.pool["rating"].to_numpy(), dtype=torch.float32)
        ev = split.evaluation
        self.eval_rows = torch.as_tensor([row[u] for u in ev["user_idx"]], dtype=torch.long)
        self.eval_items = torch.tensor(ev["item_idx"].to_numpy(), dtype=torch.long)
        self.eval_y = torch.tensor(ev["rating"].to_numpy(), dtype=torch.float64)
        if (self.pool_mask[self.eval_rows, self.eval_items]).any():
            raise ValueError("an evaluation item is also in the askable pool")
        with torch.no_grad():
            f = mf.factors_
            self.Q = f.Q.detach().double()  # (n_items, d)
            self.X = torch.cat([self.Q, torch.ones(n_items, 1, dtype=torch.float64)], 1)
        train = split.train
        self.base_state = dict(counts=item_counts(train, n_items),
                               entropy=rating_entropy(train, n_items),
                               density=cosine_density(self.Q), features=self.Q.float())

    def _fold(self, asked_frame: pd.DataFrame):
        post = self.model.fold_in(asked_frame, self.users)  # rows in self.users order
        mf, d = self.model.model, self.Q.shape[1]
        theta = post.mean  # (m, d+1)
        scores = mf.mu_ + mf.factors_.b_i.detach().double()[None, :] + theta[:, d:] \
            + theta[:, :d] @ self.Q.T  # (m, n_items)
        return post, mf._clip(scores)

    def _evaluate(self, scores: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        m = len(self.users)
        err2 = (scores[self.eval_rows, self.eval_items] - self.eval_y) ** 2  # (n_eval,)
        sse = torch.zeros(m, dtype=torch.float64).index_add_(0, self.eval_rows, err2)
        n = torch.bincount(self.eval_rows, minlength=m)
        ndcg = np.full(m, np.nan)
        ev = self.split.evaluation
        rel_users = np.unique(ev.loc[ev["rating"] >= self.threshold, "user_idx"].to_numpy())
        ndcg_vals = full_ranking_ndcg(scores.float(), self.users.numpy(), self.split.pool,
                                      ev, self.k, self.threshold)
        ndcg[np.isin(self.users.numpy(), rel_users)] = ndcg_vals.numpy()
        return sse.numpy(), n.numpy(), ndcg

    def run(self, strategy: Strategy, budget: int = 20, batch: int = 1,
            progress: bool = False) -> pd.DataFrame:
        """Ask every new user ``budget`` questions, ``batch`` at a time; evaluate after each.

        A user whose askable pool runs out simply stops answering.

        Args:
            strategy: the selection strategy.
            budget: questions per user (the curve runs over 0..budget).
            batch: questions per round (the fold-in and evaluation happen once per round).
            progress: show a tqdm progress bar.

        Returns:
            A frame with one row per round and user, with columns ``n_asked`` (the
            budget so far), ``user_idx``, ``n_answered``, ``sse`` and ``n_eval``
            (squared error over the evaluation ratings, and their number), ``ndcg``
            (NaN for a user without a relevant evaluation item) and ``seconds`` (the
            time the strategy took to choose the questions that led to this row, every
            user together; 0 at first).
            See the chapter "Active selection".
        """
        if not isinstance(strategy, Strategy):
            raise TypeError(f"strategy must be a Strategy, got {type(strategy).__name__}")
        budget = check_positive_int(budget, "budget")
        batch = check_positive_int(batch, "batch")
        gen = torch.Generator().manual_seed(self.seed)
        asked = torch.zeros_like(self.pool_mask)  # (m, n_items)
        rows_all, items_all = [], []
        frames = []
        empty = pd.DataFrame({c: pd.Series(dtype=t) for c, t in
                              zip(COLUMNS, ("int64", "int64", "float64"), strict=True)})
        post, scores = self._fold(empty)
        n_asked, seconds = 0, 0.0
        steps = range(0, budget + 1, batch)
        for _ in progress_bar(steps, progress, desc=strategy.name):
            sse, n, ndcg = self._evaluate(scores)
            frames.append(pd.DataFrame({
                "n_asked": n_asked, "user_idx": self.users.numpy(),
                "n_answered": asked.sum(1).numpy(), "sse": sse, "n_eval": n, "ndcg": ndcg,
                "seconds": seconds}))
            if n_asked >= budget:
                break
            size = min(batch, budget - n_asked)
            t0 = time.perf_counter()
            state = SelectionState(self.pool_mask & ~asked, known=asked,
                                   **{k: v for k, v in self.base_state.items()
                                      if k in strategy.needs})
            if {"variance", "change"} & set(strategy.needs):
                state.variance, state.change = posterior_scores(
                    post.cov, self.X, post.noise_var, mask=state.candidates)
                state.noise_var = post.noise_var
            pick = strategy.select(state, size, gen)  # (m, size), -1: nothing left
            seconds = time.perf_counter() - t0
            r, j = torch.nonzero(pick >= 0, as_tuple=True)
            items = pick[r, j]
            if not self.pool_mask[r, items].all():  # the interface's promise, checked
                raise RuntimeError(f"{strategy.name} chose an item outside the pool")
            asked[r, items] = True
            rows_all.append(r)
            items_all.append(items)
            n_asked += size
            rr, ii = torch.cat(rows_all), torch.cat(items_all)
            asked_frame = pd.DataFrame({"user_idx": self.users[rr].numpy(),
                                        "item_idx": ii.numpy(),
                                        "rating": self.answers[rr, ii].double().numpy()})
            post, scores = self._fold(asked_frame)
        return pd.concat(frames, ignore_index=True)


def summarize_curve(curve: pd.DataFrame, n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """RMSE and mean NDCG per budget with 95% bootstrap bands (users resampled).

    Args:
        curve: :meth:`ElicitationSimulator.run`'s output.
        n_boot: bootstrap resamples of the users.
        seed: seeds the resampling (the same users are drawn for every budget).

    Returns:
        A frame indexed by ``n_asked`` with columns ``rmse, rmse_low, rmse_high, ndcg,
        ndcg_low, ndcg_high, seconds``. See the chapter "Active selection".
    """
    check_frame(curve, "curve", ["n_asked", "user_idx", "sse", "n_eval"])
    if "ndcg" not in curve.columns:
        raise ValueError("curve is missing column 'ndcg'")
    n_boot = check_positive_int(n_boot, "n_boot")
    out = []
    users = np.unique(curve["user_idx"].to_numpy())
    idx = np.random.default_rng(seed).integers(0, len(users), (n_boot, len(users)))
    for b, g in curve.groupby("n_asked", sort=True):
        g = g.sort_values("user_idx")
        sse, n, nd = g["sse"].to_numpy(), g["n_eval"].to_numpy(), g["ndcg"].to_numpy()
        boot_rmse = np.sqrt(sse[idx].sum(1) / n[idx].sum(1))
        boot_ndcg = np.nanmean(nd[idx], axis=1)
        out.append({"n_asked": b, "rmse": np.sqrt(sse.sum() / n.sum()),
                    "rmse_low": np.quantile(boot_rmse, 0.025),
                    "rmse_high": np.quantile(boot_rmse, 0.975),
                    "ndcg": np.nanmean(nd), "ndcg_low": np.quantile(boot_ndcg, 0.025),
                    "ndcg_high": np.quantile(boot_ndcg, 0.975),
                    "seconds": float(g["seconds"].iloc[0])})
    return pd.DataFrame(out).set_index("n_asked")


def search_strategy(make, configs, simulator: ElicitationSimulator, budget: int,
                    k_eval: int | None = None) -> pd.DataFrame:
    """Run ``make(**config)`` for each configuration on a *validation* simulator (validation
    users drawn from the training users, never the new users); rank by mean NDCG@k after
    ``k_eval`` questions (default ``budget``).

    Returns:
        One row per configuration with its values, ``ndcg`` and ``rmse``; it works with
        :func:`recsys_ref.tuning.best_config` (highest ``ndcg`` wins).
        See the chapter "Active selection".
    """
    configs = [dict(c) for c in configs]
    if not configs:
        raise ValueError("search_strategy needs at least one configuration")
    k_eval = budget if k_eval is None else k_eval
    rows = []
    for config in configs:
        s = summarize_curve(simulator.run(make(**config), budget), n_boot=1).loc[k_eval]
        if not np.isfinite(s["ndcg"]):
            raise ValueError(f"validation NDCG is {s['ndcg']} with {config}")
        rows.append(config | {"ndcg": float(s["ndcg"]), "rmse": float(s["rmse"])})
    table = pd.DataFrame(rows)
    table.attrs.update(configs=configs, metric="ndcg", higher_is_better=True)
    return table
