"""Paired comparisons of two few-shot methods at every support size, pooled over seeds.

The chapter "Few-shot recommendation" compares methods on the same held-out users: per
support size K, the difference of their RMSE, averaged over seeds, with an interval that
resamples the users within each seed (:func:`recsys_ref.evaluation.paired_rmse_gap`).
"""

from __future__ import annotations

import pandas as pd

from recsys_ref.checks import check_frame
from recsys_ref.evaluation import paired_rmse_gap


def paired_rmse_by(per_unit: pd.DataFrame, a: str, b: str, *, method: str = "method",
                   by: str = "K", group: str = "seed", unit: str = "user_idx",
                   n_resamples: int = 1000, alpha: float = 0.05, seed: int = 0) -> pd.DataFrame:
    """RMSE(a) - RMSE(b) for every value of ``by``, with a paired bootstrap interval.

    Args:
        per_unit: one row per (``group``, ``method``, ``by``, ``unit``) with the unit's sum of
            squared errors ``sse`` and its number of ratings ``n`` (e.g. the per-user frames
            of :func:`recsys_ref.few_shot.base.evaluate_new_users`, stacked over seeds, methods
            and K).
        a, b: the two values of the ``method`` column to compare.
        method, by, group, unit: the column names.
        n_resamples, alpha, seed: as for :func:`recsys_ref.evaluation.paired_rmse_gap`.

    Returns:
        A frame indexed by the values of ``by`` (sorted) with columns ``gap`` (the mean over
        groups of the per-group RMSE difference; negative: ``a`` has the lower error),
        ``low`` and ``high`` (the ``1 - alpha`` interval). See the chapter "Few-shot
        recommendation".

    Raises:
        ValueError: a missing column, or ``a`` or ``b`` without ratings (or with NaN ones)
            at some ``by``.
    """
    if method not in per_unit:
        raise ValueError(f"per_unit has no column {method!r}")
    per_unit = per_unit[per_unit[method].isin([a, b])]  # others may predict no ratings (NaN)
    check_frame(per_unit, "per_unit", [by, group, unit, "sse", "n"])
    out = {}
    for key, frame in per_unit.groupby(by, sort=True):
        sse = frame.pivot_table(index=[group, unit], columns=method, values="sse")  # (units, m)
        missing = [m for m in (a, b) if m not in sse.columns]
        if missing:
            raise ValueError(f"per_unit has no sse of {missing} at {by}={key}")
        n = frame.groupby([group, unit])["n"].first().loc[sse.index]
        out[key] = paired_rmse_gap(sse[a], sse[b], n, sse.index.get_level_values(group),
                                   n_resamples, alpha, seed)
    return pd.DataFrame(out, index=["gap", "low", "high"]).T.rename_axis(by)
