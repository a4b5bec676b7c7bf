"""Validation searches that the chapters run in front of the reader.

Every setting a chapter uses is chosen by a search the book itself runs: a grid
(:func:`grid`) or a seeded random sample of one (:func:`random_configs`), each configuration
fitted on training data and scored on validation data that the test data never touches
(:func:`search`), the winner read from the table (:func:`best_config`) rather than typed.

Fits go through :func:`recsys_ref.model_cache.cached_fit`, so a later chapter that runs
the same search on the same data (to use the setting an earlier chapter chose) re-fits
nothing and gets the same table. See the chapter "Matrix factorization".
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd

from recsys_ref.model_cache import cached_fit
from recsys_ref.progress import progress_bar


def grid(**axes: Sequence) -> list[dict]:
    """Every combination of the values of ``axes``, the first axis varying slowest.

    ``grid(lr=(0.1, 0.01), reg=(0, 1))`` gives four configurations. Raises ``ValueError``
    for an axis with no values.
    """
    for name, values in axes.items():
        if isinstance(values, str) or not isinstance(values, Iterable):
            raise TypeError(f"grid axis {name!r} must be a sequence of values, "
                            f"got {type(values).__name__}")
        if len(list(values)) == 0:
            raise ValueError(f"grid axis {name!r} has no values")
    names = list(axes)
    return [dict(zip(names, combo, strict=True))
            for combo in itertools.product(*(list(axes[n]) for n in names))]


def random_configs(space: Mapping[str, Sequence], n: int, seed: int) -> list[dict]:
    """``n`` distinct configurations drawn uniformly (seeded) from the grid of ``space``,
    in the grid's order; all of them if the grid has at most ``n``."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    full = grid(**space)
    if len(full) <= n:
        return full
    picked = np.random.default_rng(seed).choice(len(full), size=n, replace=False)
    return [full[j] for j in sorted(picked)]


def search(make: Callable[..., object], configs: Sequence[Mapping], train: pd.DataFrame,
           evaluate: Callable[[object], Mapping[str, float]], *, metric: str,
           higher_is_better: bool = True, valid: pd.DataFrame | None = None,
           record: Sequence[str] = (), cache: bool = True, progress: bool = False,
           desc: str = "search", fit_kwargs: Mapping | None = None,
           keep: list | None = None) -> pd.DataFrame:
    """Fit ``make(**config)`` on ``train`` for each configuration and score it.

    Args:
        make: builds an unfitted model from one configuration's keyword arguments.
        configs: the configurations (e.g. from :func:`grid`), at least one.
        train: the training rows; ``valid``: optional rows passed to ``fit`` for early
            stopping (they must not be the rows ``evaluate`` scores on if the table is to
            be an honest estimate; the chapters say which they use).
        evaluate: scores a fitted model on validation data, returning a mapping of
            metric name to value (e.g. a row of :func:`recsys_ref.evaluation.evaluate_ranking`).
        metric: the mapping's key that ranks the configurations.
        higher_is_better: False for errors such as RMSE.
        record: fitted-model attributes to copy into the table (e.g. ``"best_epoch_"``).
        cache: fit through :func:`recsys_ref.model_cache.cached_fit` (default) or plainly.
        progress: a progress bar over the configurations (interactive sessions only).
        fit_kwargs: further keyword arguments of ``fit`` (e.g. the pretrained networks a
            NeuMF starts from); such fits are never cached, so ``cache`` must be False.
        keep: a list to which every fitted model is appended, in the table's order (so the
            winner, ``keep[configs.index(best_config(table))]``, need not be fitted again).

    Returns:
        A frame with one row per configuration (in the given order) holding the
        configuration's values, every metric ``evaluate`` returned, the recorded attributes
        and ``fit_seconds``. The
        frame's ``attrs`` keep the configurations and the ranking rule for
        :func:`best_config`.

    Raises:
        ValueError: no configurations, a metric missing from ``evaluate``'s result, or a
            non-finite value of ``metric`` (a diverged fit is an error, not a loser).
    """
    configs = [dict(c) for c in configs]
    if not configs:
        raise ValueError("search needs at least one configuration")
    fit_kwargs = dict(fit_kwargs or {})
    if fit_kwargs and cache:
        raise ValueError("fit_kwargs cannot be cached (a fitted model is no cache key): "
                         "pass cache=False")
    names = list(dict.fromkeys(k for c in configs for k in c))
    rows = []
    for config in progress_bar(configs, progress, desc=desc):
        model = make(**config)
        t0 = time.perf_counter()
        if cache:
            fitted = cached_fit(model, train, valid)
        else:
            args = (train,) if valid is None else (train, valid)
            fitted = model.fit(*args, **fit_kwargs)
            fitted.fit_seconds_ = time.perf_counter() - t0
        if keep is not None:
            keep.append(fitted)
        scores = dict(evaluate(fitted))
        if metric not in scores:
            raise ValueError(f"evaluate returned {sorted(scores)}, not the metric {metric!r}")
        value = float(scores[metric])
        if not math.isfinite(value):
            raise ValueError(f"{type(model).__name__} with {config}: validation {metric} is "
                             f"{value} (diverged?)")
        row = {k: config.get(k) for k in names} | scores
        row |= {a: getattr(fitted, a) for a in record}
        row["fit_seconds"] = getattr(fitted, "fit_seconds_", float("nan"))
        rows.append(row)
    table = pd.DataFrame(rows)
    table.attrs.update(configs=configs, metric=metric, higher_is_better=higher_is_better)
    return table


def best_config(table: pd.DataFrame) -> dict:
    """The configuration of the best row of a :func:`search` table (the first of equal
    ones), exactly as it was passed to the search (Python values, so it can key a cache)."""
    if "configs" not in table.attrs or len(table.attrs["configs"]) != len(table):
        raise ValueError("best_config needs the unfiltered table that search returned")
    values = table[table.attrs["metric"]].to_numpy(dtype=float)
    j = int(np.argmax(values) if table.attrs["higher_is_better"] else np.argmin(values))
    return dict(table.attrs["configs"][j])


class SearchRefit(NamedTuple):
    """What :func:`search_then_refit` returns: the searched winner (fitted on the training
    rows), the winner refitted for its best epoch, the wall time, the table and the setting."""

    tuned: object
    final: object
    seconds: float
    table: pd.DataFrame
    best: dict


def search_then_refit(make: Callable[..., object], configs: Sequence[Mapping],
                      train: pd.DataFrame, valid: pd.DataFrame, history: pd.DataFrame,
                      evaluate: Callable[[object], Mapping[str, float]], *,
                      metric: str = "NDCG@10", cache: bool = True,
                      fit_kwargs: Mapping | None = None,
                      refit_kwargs: Mapping | None = None) -> SearchRefit:
    """A :func:`search` with early stopping on ``valid``, then the winner refitted on
    ``history`` (training plus validation rows) for the epochs early stopping chose.

    The protocol of the top-N chapters: every configuration is fitted on ``train``, stopped
    on ``valid`` and scored by ``evaluate`` (on ``valid``); the refit has no validation data,
    so it runs exactly the winner's ``best_epoch_`` epochs (``patience=None``). With
    ``cache``, both the searched fits and the refit go through
    :func:`recsys_ref.model_cache.cached_fit`, so a later chapter that needs the same model
    reads it back. ``fit_kwargs`` / ``refit_kwargs`` are further ``fit`` arguments of the
    search and of the refit (e.g. pretrained networks); they disable the cache.
    See the chapter "Deep recommenders".
    """
    t0, fitted, configs = time.perf_counter(), [], [dict(c) for c in configs]
    cache = cache and not fit_kwargs and not refit_kwargs
    table = search(make, configs, train, evaluate, metric=metric, valid=valid,
                   record=("best_epoch_",), cache=cache, fit_kwargs=fit_kwargs, keep=fitted)
    best = best_config(table)
    tuned = fitted[configs.index(best)]
    final = make(**best, n_epochs=tuned.best_epoch_, patience=None)
    final = cached_fit(final, history) if cache else final.fit(history, **(refit_kwargs or {}))
    return SearchRefit(tuned, final, time.perf_counter() - t0, table, best)
