r"""Reading bandit runs: how fast regret grows, validation searches of a policy's settings,
and the pretrained encoder's embeddings as a bandit's representation.

A regret curve that grows like :math:`R_t \approx c\, t^{\beta}` is a straight line of slope
:math:`\beta` on log-log axes: :math:`\beta = 1` is linear regret (a fixed loss per round,
for ever), :math:`\beta < 1` sublinear (the loss per round shrinks).
:func:`recsys_ref.bandits.analysis.loglog_slope` fits :math:`\beta` by least squares on
log-spaced rounds of the tail of a run, and :func:`recsys_ref.bandits.analysis.slope_interval`
turns one slope per seed into a Student-t interval, so that "sublinear" is a measured claim
rather than a hope. See the chapter "Exploration".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from recsys_ref.checks import check_frame, check_positive_int
from recsys_ref.sequences import PAD, mask_token, user_sequences


def loglog_slope(cumulative, start: float = 0.1, n_points: int = 50) -> float:
    r"""Slope :math:`\beta` of :math:`\log R_t` against :math:`\log t` over the tail of a run.

    Args:
        cumulative: ``(T,)`` cumulative regret :math:`R_1, \dots, R_T` (non-decreasing for
            expected regret; must be > 0 over the fitted range).
        start: the fit uses rounds from ``start * T`` to ``T`` (early rounds are transients),
            a fraction in (0, 1).
        n_points: log-spaced rounds in the fit (so late rounds do not outnumber early ones).

    Returns:
        The least-squares slope (1 for linear growth, below 1 for sublinear).
    """
    r = torch.as_tensor(np.asarray(cumulative, dtype=np.float64)).double()
    if r.dim() != 1 or len(r) < 10:
        raise ValueError(f"cumulative must be 1-D with at least 10 rounds, got shape "
                         f"{tuple(r.shape)}")
    if not 0 < start < 1:
        raise ValueError(f"start must be in (0, 1), got {start}")
    n_points = check_positive_int(n_points, "n_points", minimum=2)
    T = len(r)
    t = np.unique(np.geomspace(max(1, int(start * T)), T, n_points).round().astype(int))
    y = r[t - 1].numpy()
    if not (np.isfinite(y).all() and (y > 0).all()):
        raise ValueError("cumulative must be finite and > 0 over the fitted rounds")
    return float(np.polyfit(np.log(t), np.log(y), 1)[0])


def slope_interval(slopes: Sequence[float], alpha: float = 0.05) -> tuple[float, float, float]:
    """Mean and Student-t ``1 - alpha`` interval of per-seed slopes (NaN bounds for one seed),
    as Python floats.

    Seeds are independent replications (their arrivals, clicks and policy draws differ), so
    the t interval over seeds is honest, if wide with few seeds.
    """
    from scipy import stats  # imported here: only this helper needs scipy

    s = np.asarray(slopes, dtype=np.float64)
    if s.ndim != 1 or len(s) == 0 or not np.isfinite(s).all():
        raise ValueError("slopes must be a non-empty 1-D array of finite numbers")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    m = float(s.mean())
    if len(s) == 1:
        return m, math.nan, math.nan
    half = float(stats.t.ppf(1 - alpha / 2, len(s) - 1) * s.std(ddof=1) / math.sqrt(len(s)))
    return m, m - half, m + half


def search_policy(make: Callable[..., object], configs: Sequence[Mapping], simulator,
                  n_rounds: int) -> pd.DataFrame:
    """Run ``make(**config)`` for each configuration on one simulator; rank by final regret.

    The simulator should be a *validation* one (a seed the reported runs do not use), so the
    chosen setting is not tuned on the runs that report it. The table works with
    :func:`recsys_ref.tuning.best_config` (lowest ``regret`` wins).

    Args:
        make: builds a fresh policy from one configuration's keyword arguments.
        configs: the configurations (e.g. from :func:`recsys_ref.tuning.grid`).
        simulator: a :class:`recsys_ref.bandits.simulator.BanditSimulator`.
        n_rounds: the horizon, the same as the reported runs' (the best setting depends on it).

    Returns:
        One row per configuration with its values, ``regret``, ``ctr`` and ``seconds``.
    """
    configs = [dict(c) for c in configs]
    if not configs:
        raise ValueError("search_policy needs at least one configuration")
    rows = []
    for config in configs:
        s = simulator.run(make(**config), n_rounds).summary()
        if not math.isfinite(s["regret"]):
            raise ValueError(f"regret is {s['regret']} with {config}")
        rows.append(config | {"regret": s["regret"], "ctr": s["ctr"], "seconds": s["seconds"]})
    table = pd.DataFrame(rows)
    table.attrs.update(configs=configs, metric="regret", higher_is_better=False)
    return table


@torch.no_grad()
def encoder_embeddings(backbone, frame: pd.DataFrame, n_users: int,
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """A pretrained sequence encoder's user and item embeddings, for a bandit's features.

    The item embedding is the encoder's token row of the item. The user embedding is the
    encoder's output for the user's history (the last ``max_len - 1`` items of ``frame`` in
    time order) followed by a ``[MASK]`` token, read at the ``[MASK]``, with the encoder's own
    attention (bidirectional after cloze pretraining): the vector whose dot product with the
    item embeddings is the encoder's prediction of the next item. Users without history get
    the output for ``[MASK]`` alone.

    Args:
        backbone: a :class:`recsys_ref.models.sasrec.SeqTransformer` (e.g. from
            :func:`recsys_ref.pretraining.cached_backbone`).
        frame: ``user_idx, item_idx, timestamp`` of the histories.
        n_users: number of users.

    Returns:
        ``(n_users, dim)`` and ``(n_items, dim)`` float32 tensors.
    """
    from recsys_ref.models.sasrec import SeqTransformer

    if not isinstance(backbone, SeqTransformer):
        raise TypeError(f"backbone must be a SeqTransformer, got {type(backbone).__name__}")
    check_frame(frame, "frame", ["user_idx", "item_idx", "timestamp"])
    n_items = backbone.n_items
    seqs = user_sequences(frame, n_users, backbone.max_len - 1, n_items)  # (n_users, L-1)
    seqs = torch.cat([seqs, torch.full((n_users, 1), mask_token(n_items))], 1)  # (n_users, L)
    was_training = backbone.training
    backbone.eval()
    users = torch.cat([backbone.last(seqs[b:b + 256]) for b in range(0, n_users, 256)])
    backbone.train(was_training)
    items = backbone.tokens.weight[PAD + 1:n_items + 1]  # (n_items, dim)
    return users.float().clone(), items.detach().float().clone()
