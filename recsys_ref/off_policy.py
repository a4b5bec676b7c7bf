r"""Off-policy evaluation: the value of a new policy from another policy's logs.

A log holds rounds :math:`t = 1..n` with a context :math:`x_t`, a position :math:`k_t`, the
item (action) :math:`a_t` the logging policy :math:`\pi_b` showed there, its propensity
:math:`\pi_b(a_t \mid x_t, k_t)`, and the click :math:`r_t`, as in the Open Bandit Dataset
(Saito et al. 2021), where each row is one impression of a 3-item slate. The value of an
evaluation policy :math:`\pi_e` is its expected click per impression,
:math:`V(\pi_e) = \mathbb{E}_x \mathbb{E}_{a \sim \pi_e(\cdot \mid x, k)} [r]`. With the
importance weight :math:`w_t = \pi_e(a_t \mid x_t, k_t) / \pi_b(a_t \mid x_t, k_t)` and a reward
model :math:`\hat q(x, a, k)`:

.. math::
    \hat V_{\mathrm{IPS}} = \frac1n \sum_t w_t r_t, \qquad
    \hat V_{\mathrm{SNIPS}} = \frac{\sum_t w_t r_t}{\sum_t w_t}, \qquad
    \hat V_{\mathrm{DM}} = \frac1n \sum_t \sum_a \pi_e(a \mid x_t, k_t) \hat q(x_t, a, k_t),

.. math::
    \hat V_{\mathrm{DR}} = \hat V_{\mathrm{DM}}
        + \frac1n \sum_t w_t \big(r_t - \hat q(x_t, a_t, k_t)\big).

IPS is unbiased when :math:`\pi_b > 0` wherever :math:`\pi_e > 0`; DR is unbiased if either
the propensities or the reward model are right (Dudik, Langford and Li 2011). The reward model
and the Open Bandit Dataset's arrays live in :mod:`recsys_ref.bandits.reward_model`
(``LogisticRewardModel``, ``cross_fit_rewards``, ``open_bandit_arrays``).
See the chapter "Exploration".
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from recsys_ref.bandits.reward_model import (
    LogisticRewardModel,
    cross_fit_rewards,
    open_bandit_arrays,
)
from recsys_ref.checks import check_index, check_positive_int

ESTIMATORS = ("IPS", "SNIPS", "DM", "DR")
METHODS = ("mean", "harmonic", "frequency")


def _vector(x, name: str, dtype=torch.float64) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if x.dim() != 1 or len(x) == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {tuple(x.shape)}")
    if dtype == torch.long and (x.dtype.is_floating_point or x.dtype.is_complex
                                or x.dtype == torch.bool):
        # a float id such as 3.7 would be truncated to item 3
        raise TypeError(f"{name} must hold integer indices, got dtype {x.dtype}")
    if dtype != torch.long and not torch.isfinite(x.to(dtype)).all():
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    return x.to(dtype)


def _policy_rows(action_dist, positions, n: int) -> torch.Tensor:
    """``pi_e(. | x_t, k_t)`` per row: ``(n, n_items)`` from ``(n, n_items[, n_positions])``."""
    pe = torch.as_tensor(action_dist).double()
    if pe.dim() == 3:
        if positions is None:
            raise ValueError("positions must be given with a 3-D action_dist")
        k = _vector(positions, "positions", torch.long)
        if len(k) != n:
            raise ValueError(f"positions has {len(k)} rows, expected {n}")
        check_index(k, "positions", pe.shape[2])
        pe = pe[torch.arange(n), :, k]  # (n, n_items): the logged position selects
    if pe.dim() != 2 or len(pe) != n:
        raise ValueError(f"action_dist must be (n_rounds={n}, n_items) or (n_rounds, n_items, "
                         f"n_positions), got shape {tuple(pe.shape)}")
    if not bool((pe >= 0).all()) or not torch.allclose(pe.sum(1), pe.new_ones(n), atol=1e-4):
        raise ValueError("action_dist must be >= 0 and sum to 1 over items in every row")
    return pe


def _terms(rewards, actions, propensities, action_dist, positions=None, q_hat=None):
    """Per-row quantities of every estimator: ``w, r, dm, q_a`` (each ``(n,)``)."""
    r = _vector(rewards, "rewards")
    n = len(r)
    a = _vector(actions, "actions", torch.long)
    pb = _vector(propensities, "propensities")
    if not len(a) == len(pb) == n:
        raise ValueError(f"rewards, actions and propensities must have one length, got "
                         f"{n}, {len(a)}, {len(pb)}")
    if not bool(((pb > 0) & (pb <= 1)).all()):  # also rejects NaN
        raise ValueError("propensities must be in (0, 1]: a zero propensity means the logging "
                         "policy could not have shown the item, and its weight is undefined")
    pe = _policy_rows(action_dist, positions, n)  # (n, n_items)
    check_index(a, "actions", pe.shape[1])
    w = pe[torch.arange(n), a] / pb  # (n,) importance weights
    if q_hat is None:
        return w, r, None, None
    q = torch.as_tensor(q_hat).double()
    if q.shape != pe.shape:
        raise ValueError(f"q_hat must have the shape of the evaluation policy's rows "
                         f"{tuple(pe.shape)}, got {tuple(q.shape)}")
    return w, r, (pe * q).sum(1), q[torch.arange(n), a]


def importance_weights(actions, propensities, action_dist, positions=None) -> torch.Tensor:
    r"""``(n,)`` weights :math:`w_t = \pi_e(a_t \mid x_t, k_t) / \pi_b(a_t \mid x_t, k_t)`."""
    n = len(_vector(actions, "actions", torch.long))
    return _terms(torch.zeros(n), actions, propensities, action_dist, positions)[0]


def ips(rewards, actions, propensities, action_dist, positions=None) -> float:
    r"""Inverse propensity scoring, :math:`\frac1n \sum_t w_t r_t`.

    Args:
        rewards: ``(n,)`` clicks.
        actions: ``(n,)`` logged items.
        propensities: ``(n,)`` :math:`\pi_b(a_t \mid x_t, k_t) \in (0, 1]`.
        action_dist: :math:`\pi_e`, ``(n, n_items)`` per row, or ``(n, n_items, n_positions)``
            with ``positions`` selecting the logged one.
        positions: ``(n,)`` zero-based positions (only with a 3-D ``action_dist``).
    """
    w, r, _, _ = _terms(rewards, actions, propensities, action_dist, positions)
    return float((w * r).mean())


def snips(rewards, actions, propensities, action_dist, positions=None) -> float:
    r"""Self-normalised IPS, :math:`\sum_t w_t r_t / \sum_t w_t` (arguments as :func:`ips`)."""
    w, r, _, _ = _terms(rewards, actions, propensities, action_dist, positions)
    if not w.sum() > 0:
        raise ValueError("snips: the evaluation policy gives zero probability to every logged "
                         "action (the importance weights sum to 0), so its value is undefined")
    return float((w * r).sum() / w.sum())


def direct_method(action_dist, q_hat, positions=None) -> float:
    r"""Direct method, :math:`\frac1n \sum_t \sum_a \pi_e(a \mid x_t, k_t) \hat q(x_t, a, k_t)`.

    Args:
        action_dist: as in :func:`ips`.
        q_hat: ``(n, n_items)`` predicted click of every item at the logged position.
        positions: as in :func:`ips`.
    """
    q = torch.as_tensor(q_hat).double()
    return float((_policy_rows(action_dist, positions, len(q)) * q).sum(1).mean())


def doubly_robust(rewards, actions, propensities, action_dist, q_hat, positions=None) -> float:
    r"""Doubly robust: the direct method plus an importance-weighted correction.

    .. math:: \hat V_{\mathrm{DR}} = \hat V_{\mathrm{DM}} + \frac1n \sum_t w_t
        (r_t - \hat q(x_t, a_t, k_t))

    Arguments as :func:`ips` and :func:`direct_method`.
    """
    w, r, dm, q_a = _terms(rewards, actions, propensities, action_dist, positions, q_hat)
    return float((dm + w * (r - q_a)).mean())


def _estimates(w, r, dm, q_a) -> dict[str, torch.Tensor]:
    """Every estimator from (possibly batched, ``(..., n)``) per-row quantities."""
    out = {"IPS": (w * r).mean(-1), "SNIPS": (w * r).sum(-1) / w.sum(-1)}
    if dm is not None:
        out |= {"DM": dm.mean(-1), "DR": (dm + w * (r - q_a)).mean(-1)}
    return out


def estimate_policy_value(rewards, actions, propensities, action_dist, q_hat=None,
                          positions=None, true_value=None, n_bootstrap: int = 1000,
                          alpha: float = 0.05, seed: int = 0) -> pd.DataFrame:
    r"""All four estimators with percentile bootstrap intervals (rows resampled).

    The reward model ``q_hat`` is held fixed across resamples (fit it once, cross-fitted:
    :func:`~recsys_ref.bandits.reward_model.cross_fit_rewards`), so the intervals leave out
    its own fitting noise.

    Args:
        rewards, actions, propensities, action_dist, positions: as in :func:`ips`.
        q_hat: as in :func:`direct_method`; without it only IPS and SNIPS are computed.
        true_value: the policy's true value ``V`` (a float), or the rewards of its own logs
            (an array, resampled independently, since an on-policy ``V`` is itself noisy);
            adds the relative error :math:`|\hat V - V| / V` and its interval.
        n_bootstrap: resamples.
        alpha: 1 - confidence level.
        seed: seed of the resampling.

    Returns:
        A frame indexed by estimator with ``estimate, ci_low, ci_high`` (and ``true_value,
        relative_error, rel_err_low, rel_err_high``).
    """
    n_bootstrap = check_positive_int(n_bootstrap, "n_bootstrap")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    terms = _terms(rewards, actions, propensities, action_dist, positions, q_hat)
    n = len(terms[0])
    point = {k: float(v) for k, v in _estimates(*terms).items()}
    gen = torch.Generator().manual_seed(seed)
    reps = {k: [] for k in point}
    for start in range(0, n_bootstrap, 100):  # chunks bound memory to (100, n) indices
        idx = torch.randint(n, (min(100, n_bootstrap - start), n), generator=gen)
        for k, v in _estimates(*(None if x is None else x[idx] for x in terms)).items():
            reps[k].append(v)
    reps = {k: torch.cat(v) for k, v in reps.items()}  # (n_bootstrap,) each
    qs = torch.tensor([alpha / 2, 1 - alpha / 2], dtype=torch.float64)
    rows = {k: {"estimate": point[k], "ci_low": float(torch.quantile(reps[k], qs[0])),
                "ci_high": float(torch.quantile(reps[k], qs[1]))} for k in point}
    if true_value is not None:
        if np.ndim(true_value) == 0:
            v_point = float(true_value)
            v_reps = torch.full((n_bootstrap,), v_point, dtype=torch.float64)
        else:
            on = _vector(true_value, "true_value")
            v_point = float(on.mean())
            v_reps = on[torch.randint(len(on), (n_bootstrap, len(on)), generator=gen)].mean(1)
        if not v_point > 0:
            raise ValueError(f"true_value must be > 0 for a relative error, got {v_point}")
        for k, row in rows.items():
            err = (reps[k] - v_reps).abs() / v_reps
            row |= {"true_value": v_point, "relative_error": abs(point[k] - v_point) / v_point,
                    "rel_err_low": float(torch.quantile(err, qs[0])),
                    "rel_err_high": float(torch.quantile(err, qs[1]))}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("estimator")


def policy_from_propensities(items, positions, propensities, n_items: int, n_positions: int,
                             method: str = "harmonic", unseen: float = 0.0) -> torch.Tensor:
    r"""A context-free policy's action distribution per position, from its own logs.

    A logged propensity :math:`p_t = \pi_t(a_t \mid k_t)` is only seen for the item that was
    shown, and a time-varying policy (Thompson sampling, updated in batches) shows an item
    more often when its probability is high. So the plain mean of the logged propensities of
    item :math:`a` at position :math:`k` (``"mean"``) estimates
    :math:`\mathbb{E}_t[\pi_t^2] / \mathbb{E}_t[\pi_t]`, not the time average
    :math:`\mathbb{E}_t[\pi_t(a \mid k)]`. The harmonic mean (``"harmonic"``, the default) is
    consistent for the time average, since
    :math:`\mathbb{E}[\sum_{t: a_t = a} 1/p_t] = n_k`, the number of rounds at position
    :math:`k`; ``"frequency"`` is the share of those rounds that showed :math:`a` (no
    propensities needed). Pairs never logged get ``unseen``; each position's column is then
    normalised to sum to 1.

    Args:
        items, positions, propensities: ``(n,)`` logged items, zero-based positions and
            propensities of the policy to reconstruct.
        n_items, n_positions: table sizes.
        method: ``"harmonic"``, ``"mean"`` or ``"frequency"``.
        unseen: value of never-logged (item, position) pairs before normalising, ``>= 0``.

    Returns:
        ``(n_items, n_positions)`` float64, every column summing to 1.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not unseen >= 0:
        raise ValueError(f"unseen must be >= 0, got {unseen}")
    a = _vector(items, "items", torch.long)
    k = _vector(positions, "positions", torch.long)
    p = _vector(propensities, "propensities")
    if not len(a) == len(k) == len(p):
        raise ValueError("items, positions and propensities must have one length")
    check_index(a, "items", n_items)
    check_index(k, "positions", n_positions)
    if not bool(((p > 0) & (p <= 1)).all()):
        raise ValueError("propensities must be in (0, 1]")
    cell = a * n_positions + k  # (n,) flat (item, position) index
    size = n_items * n_positions
    count = torch.bincount(cell, minlength=size).double()  # (n_items * n_positions,)
    if method == "mean":
        value = torch.zeros(size, dtype=torch.float64).index_add_(0, cell, p) / count
    elif method == "harmonic":
        value = count / torch.zeros(size, dtype=torch.float64).index_add_(0, cell, 1 / p)
    else:  # share of the position's rounds
        value = count / torch.bincount(k, minlength=n_positions).double().repeat(n_items)
    dist = torch.where(count > 0, value, unseen).reshape(n_items, n_positions)
    total = dist.sum(0)
    if not bool((total > 0).all()):
        raise ValueError("a position has no logged rounds (and unseen = 0)")
    return dist / total


__all__ = [
    "ESTIMATORS", "METHODS", "LogisticRewardModel", "cross_fit_rewards", "direct_method",
    "doubly_robust", "estimate_policy_value", "importance_weights", "ips", "open_bandit_arrays",
    "policy_from_propensities", "snips",
]
