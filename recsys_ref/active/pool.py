r"""Pool-based active learning for training a rating model, and the seed article's leak.

The loop (see the chapter "Active selection"): a small labelled seed set, an unlabelled
pool whose ratings stay with a :class:`LabelOracle` until a strategy chooses them, and a
fixed test set that selection never sees. Each round a strategy chooses ``batch_size``
pool samples (from a random subsample of ``n_candidates``, the same for every strategy),
the oracle reveals their ratings, the model is refitted from scratch on everything
labelled so far, and its test RMSE is recorded.

A sample is a (user, item) pair. Its features are the fitted model's ``(p_u, q_i)``; its
predictive variance combines the two ridge posteriors of ALS (each side's factors given
the other's, :func:`.fold_in_users` and :func:`.fold_in_items`):
:math:`v_{ui} = x_i^\top \Sigma_u x_i + x_u^\top \Sigma_i x_u + \sigma^2` with
:math:`x_i = (q_i, 1)`, :math:`x_u = (p_u, 1)` (the product of the two uncertainties is
ignored).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from recsys_ref import metrics
from recsys_ref.active.signals import cosine_density
from recsys_ref.active.strategies import SelectionState, Strategy
from recsys_ref.checks import check_config, check_frame, check_positive_int
from recsys_ref.few_shot.fold_in import fold_in_items, fold_in_users, residual_variance
from recsys_ref.matrix import column
from recsys_ref.progress import progress_bar

COLUMNS = ["user_idx", "item_idx", "rating"]
PAIR_FIELDS = {"features", "density", "variance"}  # what pair_state computes for a strategy


@dataclass
class PoolConfig:
    """Sizes of the pool-based loop."""

    n_seed: int = 5_000  # labelled ratings at the start
    batch_size: int = 2_500  # labels bought per round
    n_rounds: int = 10  # rounds of select -> label -> train -> evaluate
    n_candidates: int = 10_000  # unlabelled samples scored per round (random subsample)
    n_reference: int = 1_000  # labelled samples used as the known centres of k-center
    test_frac: float = 0.1  # share of the ratings in the fixed test set
    seed: int = 0
    # the test set's seed (None: ``seed``): runs that share it share their test set, so a
    # setting chosen on one run's other ratings never saw another run's test ratings
    test_seed: int | None = None
    progress: bool = False  # tqdm progress bar

    def __post_init__(self):
        check_config(self, positive_ints=("n_seed", "batch_size", "n_rounds", "n_candidates",
                                          "n_reference"), fractions=("test_frac",))
        if self.test_frac == 0:
            raise ValueError("test_frac must be > 0")
        if self.test_seed is not None:
            self.test_seed = check_positive_int(self.test_seed, "test_seed", minimum=0)
        if self.batch_size > self.n_candidates:
            raise ValueError(f"batch_size ({self.batch_size}) must be <= n_candidates "
                             f"({self.n_candidates})")


class LabelOracle:
    """Holds the pool's ratings; reveals a rating only when its sample is chosen.

    Args:
        labels: ``(n_pool,)`` the hidden ratings, in pool-row order.

    See the chapter "Active selection".
    """

    def __init__(self, labels):
        self._labels = np.asarray(labels, dtype=np.float64).copy()
        self.revealed = np.zeros(len(self._labels), dtype=bool)

    def label(self, rows) -> np.ndarray:
        """Reveal and return the ratings of pool rows ``rows`` (each at most once)."""
        rows = np.asarray(rows)
        if rows.dtype.kind not in "iu":
            raise TypeError(f"rows must be integer pool rows, got dtype {rows.dtype}")
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self._labels)):
            raise ValueError(f"rows must lie in 0..{len(self._labels) - 1}")
        if len(np.unique(rows)) != len(rows) or self.revealed[rows].any():
            raise ValueError("a pool row was asked for twice")
        self.revealed[rows] = True
        return self._labels[rows].copy()

    def bought(self, pool: pd.DataFrame) -> pd.DataFrame:
        """The revealed rows of ``pool`` (``user_idx, item_idx``) with their ratings."""
        if len(pool) != len(self._labels):
            raise ValueError(f"pool must have {len(self._labels)} rows, got {len(pool)}")
        return pool[self.revealed].assign(rating=self._labels[self.revealed])


@dataclass
class PoolSplit:
    """The labelled seed set, the unlabelled pool (no ``rating`` column) and the test set."""

    labelled: pd.DataFrame
    pool: pd.DataFrame
    test: pd.DataFrame


def pool_split(ratings: pd.DataFrame, config: PoolConfig) -> tuple[PoolSplit, LabelOracle]:
    """Random (seeded) test set, seed set and pool; the pool's ratings go to an oracle.

    The test set is drawn with ``config.test_seed`` (default ``config.seed``); with another
    ``seed`` the remaining ratings are shuffled again, so runs that share ``test_seed`` share
    the test set and differ in their seed set, pool and oracle.

    Returns:
        ``(split, oracle)``. See the chapter "Active selection".
    """
    check_frame(ratings, "ratings", COLUMNS)
    test_seed = config.seed if config.test_seed is None else config.test_seed
    perm = np.random.default_rng(test_seed).permutation(len(ratings))
    n_test = round(config.test_frac * len(ratings))
    if n_test + config.n_seed >= len(ratings):
        raise ValueError("test set and seed set leave no pool")
    if config.seed != test_seed:  # the same test set, the rest in another order
        rest = perm[n_test:]
        perm[n_test:] = rest[np.random.default_rng(config.seed).permutation(len(rest))]
    df = ratings[COLUMNS].iloc[perm].reset_index(drop=True)
    test, seed_set = df.iloc[:n_test], df.iloc[n_test:n_test + config.n_seed]
    pool = df.iloc[n_test + config.n_seed:].reset_index(drop=True)
    oracle = LabelOracle(pool["rating"].to_numpy())
    return PoolSplit(seed_set.reset_index(drop=True), pool[["user_idx", "item_idx"]],
                     test.reset_index(drop=True)), oracle


def test_rmse(model, test: pd.DataFrame) -> float:
    """RMSE of ``model.predict`` on ``test`` (clipped predictions)."""
    pred = model.predict(column(test, "user_idx"), column(test, "item_idx"))
    return metrics.rmse(pred, column(test, "rating", torch.float32))


def pair_state(model, labelled: pd.DataFrame, pairs: pd.DataFrame, n_candidates: int,
               needs) -> SelectionState:
    """The :class:`.SelectionState` of (user, item) samples for a fitted BiasedMF.

    Args:
        model: the fitted :class:`.BiasedMF`.
        labelled: the ratings it was fitted on (for the two ridge posteriors).
        pairs: ``user_idx, item_idx`` of the rows: the first ``n_candidates`` are
            candidates, the others known (labelled) references.
        n_candidates: how many of ``pairs`` are candidates.
        needs: the fields the strategy reads (others are left ``None``).

    Returns:
        A one-row state over ``len(pairs)`` samples. See the chapter "Active selection".
    """
    n = len(pairs)
    cand = torch.zeros(1, n, dtype=torch.bool)
    cand[0, :n_candidates] = True
    state = SelectionState(cand, known=~cand)
    f = model.factors_
    u, i = column(pairs, "user_idx"), column(pairs, "item_idx")
    with torch.no_grad():
        feats = torch.cat([f.P[u], f.Q[i]], 1).double()  # (n, 2d)
    if "features" in needs:
        state.features = feats
    if "density" in needs:
        dens = torch.zeros(n, dtype=torch.float64)
        dens[:n_candidates] = cosine_density(feats[:n_candidates])
        state.density = dens
    if "variance" in needs:
        noise = residual_variance(model, labelled)
        cov_u = fold_in_users(model, labelled, torch.arange(len(f.P)), noise_var=noise).cov
        cov_i = fold_in_items(model, labelled, torch.arange(len(f.Q)), noise_var=noise).cov
        with torch.no_grad():
            ones = torch.ones(n, 1, dtype=torch.float64)
            xi = torch.cat([f.Q[i].double(), ones], 1)  # (n, d+1)
            xu = torch.cat([f.P[u].double(), ones], 1)  # (n, d+1)
        var = (torch.einsum("nk,nkl,nl->n", xi, cov_u[u], xi)
               + torch.einsum("nk,nkl,nl->n", xu, cov_i[i], xu) + noise)  # (n,)
        state.variance = var[None, :]
        state.noise_var = noise
    return state


def run_pool(strategy: Strategy, split: PoolSplit, oracle: LabelOracle,
             fit: Callable[[pd.DataFrame], object], config: PoolConfig) -> pd.DataFrame:
    """Run ``n_rounds`` rounds of select -> label -> train -> evaluate.

    Args:
        strategy: chooses ``batch_size`` samples per round.
        split: from :func:`pool_split`.
        oracle: the pool's :class:`LabelOracle` (use a fresh one per run).
        fit: ``labelled frame -> fitted model`` with ``predict`` (and ``factors_`` for the
            strategies that read features or variance); called once per round.
        config: the :class:`PoolConfig`.

    Returns:
        A frame with one row per round (round 0 is the seed set) and columns ``round,
        n_labels, test_rmse, select_seconds, fit_seconds``. See the chapter "Active
        selection".
    """
    if not isinstance(strategy, Strategy):
        raise TypeError(f"strategy must be a Strategy, got {type(strategy).__name__}")
    unsupported = set(strategy.needs) - PAIR_FIELDS
    if unsupported:
        raise ValueError(f"{strategy.name} needs {sorted(unsupported)}, which pool samples "
                         f"do not have (they have {sorted(PAIR_FIELDS)})")
    if oracle.revealed.any():
        raise ValueError("oracle has already revealed labels: use a fresh one per run")
    if "rating" in split.pool.columns:
        raise ValueError("split.pool must not carry ratings: they belong to the oracle")
    rng = np.random.default_rng(config.seed + 1)
    gen = torch.Generator().manual_seed(config.seed)
    labelled = split.labelled.copy()
    unlabelled = np.arange(len(split.pool))  # pool rows still hidden
    t0 = time.perf_counter()
    model = fit(labelled)
    history = [dict(round=0, n_labels=len(labelled), test_rmse=test_rmse(model, split.test),
                    select_seconds=0.0, fit_seconds=time.perf_counter() - t0)]
    for rnd in progress_bar(range(1, config.n_rounds + 1), config.progress,
                            desc=strategy.name):
        if len(unlabelled) < config.batch_size:
            break
        t0 = time.perf_counter()
        cand = rng.choice(unlabelled, min(config.n_candidates, len(unlabelled)),
                          replace=False)  # pool rows scored this round
        ref = rng.choice(len(labelled), min(config.n_reference, len(labelled)), replace=False)
        pairs = pd.concat([split.pool.iloc[cand][["user_idx", "item_idx"]],
                           labelled.iloc[ref][["user_idx", "item_idx"]]], ignore_index=True)
        state = pair_state(model, labelled, pairs, len(cand), strategy.needs)
        pick = strategy.select(state, config.batch_size, gen)[0]  # (batch,)
        chosen = cand[pick[pick >= 0].numpy()]
        select_seconds = time.perf_counter() - t0
        new = split.pool.iloc[chosen][["user_idx", "item_idx"]].assign(
            rating=oracle.label(chosen))
        labelled = pd.concat([labelled, new], ignore_index=True)
        unlabelled = np.setdiff1d(unlabelled, chosen)
        t0 = time.perf_counter()
        model = fit(labelled)
        history.append(dict(round=rnd, n_labels=len(labelled),
                            test_rmse=test_rmse(model, split.test),
                            select_seconds=select_seconds,
                            fit_seconds=time.perf_counter() - t0))
    return pd.DataFrame(history)


def search_pool_strategy(make: Callable[..., Strategy], configs, ratings: pd.DataFrame,
                         fit: Callable[[pd.DataFrame], object], config: PoolConfig
                         ) -> pd.DataFrame:
    """Run the pool loop with ``make(**c)`` for each configuration ``c`` on ``ratings`` (which
    must leave out the reported test set: the loop's own test split is then a *validation*
    set); rank by the RMSE after the last round.

    Every configuration meets the same split, seed set and candidates (a fresh
    :func:`pool_split` of ``config`` per run). Returns one row per configuration with its
    values and ``rmse``; it works with :func:`recsys_ref.tuning.best_config` (lowest wins).
    See the chapter "Active selection".
    """
    configs = [dict(c) for c in configs]
    if not configs:
        raise ValueError("search_pool_strategy needs at least one configuration")
    rows = []
    for c in configs:
        split, oracle = pool_split(ratings, config)
        rmse = float(run_pool(make(**c), split, oracle, fit, config)["test_rmse"].iloc[-1])
        if not np.isfinite(rmse):
            raise ValueError(f"validation RMSE is {rmse} with {c}")
        rows.append(c | {"rmse": rmse})
    table = pd.DataFrame(rows)
    table.attrs.update(configs=configs, metric="rmse", higher_is_better=False)
    return table


def labels_to_reach(history: pd.DataFrame, target_rmse: float) -> float:
    """Labels needed to reach ``target_rmse``, linearly interpolated between rounds.

    Returns:
        The (fractional) number of labels; NaN if the curve never gets there.
        See the chapter "Active selection".
    """
    check_frame(history, "history", ["n_labels", "test_rmse"])
    n, r = history["n_labels"].to_numpy(float), history["test_rmse"].to_numpy(float)
    below = np.nonzero(r <= target_rmse)[0]
    if len(below) == 0:
        return float("nan")
    j = below[0]
    if j == 0:
        return float(n[0])
    # between round j-1 (above the target) and round j (at or below it)
    frac = (r[j - 1] - target_rmse) / (r[j - 1] - r[j])
    return float(n[j - 1] + frac * (n[j] - n[j - 1]))


def leaky_selection(split: PoolSplit, fit: Callable[[pd.DataFrame], object], n_select: int,
                    seed: int = 0) -> dict:
    """The seed article's mistake, measured: choose samples by their true test error.

    The test set is cut in two halves (seeded). The *leaked* half plays the seed article's
    test set: the ``n_select`` of its samples with the largest true error of the seed-set
    model are added, with their ratings, to the training data. The control adds
    ``n_select`` random samples of the same half instead. Both models are scored on the
    leaked half (what the article reports) and on the untouched half.

    Returns:
        ``{"rmse_leaked_error", "rmse_leaked_random", "rmse_untouched_error",
        "rmse_untouched_random", "gain_leaked", "gain_untouched"}``, gains being the RMSE of
        the control minus that of error selection (positive: error selection looks better).
        See the chapter "Active selection".
    """
    if not 0 < n_select <= len(split.test) // 2:
        raise ValueError(f"n_select must be in 1..{len(split.test) // 2}, got {n_select}")
    perm = np.random.default_rng(seed).permutation(len(split.test))
    leaked = split.test.iloc[perm[:len(perm) // 2]].reset_index(drop=True)
    untouched = split.test.iloc[perm[len(perm) // 2:]].reset_index(drop=True)
    base = fit(split.labelled)
    err = (base.predict(column(leaked, "user_idx"), column(leaked, "item_idx"))
           - column(leaked, "rating", torch.float32)).abs()  # (n_leaked,) true errors
    by_error = torch.argsort(err, descending=True, stable=True)[:n_select].numpy()
    at_random = np.random.default_rng(seed + 1).choice(len(leaked), n_select, replace=False)
    out = {}
    for name, rows in (("error", by_error), ("random", at_random)):
        model = fit(pd.concat([split.labelled, leaked.iloc[rows]], ignore_index=True))
        out[f"rmse_leaked_{name}"] = test_rmse(model, leaked)
        out[f"rmse_untouched_{name}"] = test_rmse(model, untouched)
    out["gain_leaked"] = out["rmse_leaked_random"] - out["rmse_leaked_error"]
    out["gain_untouched"] = out["rmse_untouched_random"] - out["rmse_untouched_error"]
    return out
