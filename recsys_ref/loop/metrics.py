r"""Measures of a feedback loop over time: exposure concentration and homogenisation.

Per day, from the logged slates: the Gini coefficient of the items' impression counts over
the whole catalogue (0: every item shown equally, 1: one item gets everything), the share of
impressions on a fixed set of popular items (e.g. the 10% most interacted-with in the
history), the catalogue coverage (share of items shown at least once), and the mean Jaccard
overlap :math:`|S_a \cap S_b| / |S_a \cup S_b|` of the slates of every pair of that day's
visitors (Chaney et al. 2018's homogenisation). The ``cum_`` columns measure the Gini and
coverage of all impressions up to and including the day. See the chapter "The unified loop".
"""

from __future__ import annotations

import pandas as pd
import torch


def gini(counts: torch.Tensor) -> float:
    r"""Gini coefficient of non-negative ``counts`` ``(n,)``:
    :math:`G = \frac{\sum_i (2i - n - 1) c_{(i)}}{n \sum_i c_i}` with :math:`c_{(i)}` sorted
    ascending (0 for equal counts, :math:`1 - 1/n` when one item has everything)."""
    c = torch.as_tensor(counts, dtype=torch.float64).sort().values
    n = len(c)
    if n == 0 or bool((c < 0).any()) or float(c.sum()) == 0:
        raise ValueError("counts must be non-empty, non-negative and not all zero")
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return float(((2 * i - n - 1) * c).sum() / (n * c.sum()))


def mean_jaccard(slates: torch.Tensor, n_items: int) -> float:
    """Mean Jaccard overlap of the slates ``(b, k)`` over all pairs of rows (b >= 2)."""
    b, k = slates.shape
    if b < 2:
        raise ValueError("mean_jaccard needs at least two slates")
    M = torch.zeros(b, n_items)
    M[torch.arange(b)[:, None], slates] = 1.0  # (b, n_items) incidence
    inter = M @ M.T  # (b, b) shared items
    union = M.sum(1)[:, None] + M.sum(1)[None, :] - inter
    off = ~torch.eye(b, dtype=torch.bool)
    return float((inter / union)[off].mean())


def exposure_by_day(log: pd.DataFrame, n_items: int, popular: torch.Tensor) -> pd.DataFrame:
    """One row per day: ``gini, popular_share, coverage, jaccard, cum_gini, cum_coverage``.

    Args:
        log: a loop log (slate rows are used).
        n_items: catalogue size.
        popular: ``(m,)`` indices of the popular items.
    """
    slates = log[log["kind"] == "slate"]
    k = int(slates["position"].max()) + 1
    is_pop = torch.zeros(n_items, dtype=torch.bool)
    is_pop[torch.as_tensor(popular)] = True
    rows, total = [], torch.zeros(n_items, dtype=torch.long)
    for day, block in slates.groupby("day", sort=True):
        items = torch.tensor(block["item_idx"].to_numpy())
        counts = torch.bincount(items, minlength=n_items)
        total += counts
        rows.append({"day": day, "gini": gini(counts),
                     "popular_share": float(is_pop[items].double().mean()),
                     "coverage": float((counts > 0).double().mean()),
                     "jaccard": mean_jaccard(items.reshape(-1, k), n_items),
                     "cum_gini": gini(total), "cum_coverage": float((total > 0).double().mean())})
    return pd.DataFrame(rows)
