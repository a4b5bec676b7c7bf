r"""Repeated off-policy evaluation experiments: where the truth is known, and refitted bootstraps.

:func:`recsys_ref.bandits.ope_experiments.simulated_ope` replicates an off-policy experiment in
the click simulator: each replication logs ``n_log`` i.i.d. rounds of a logging policy
:math:`\pi_b`, fits a reward model on them and estimates the exact value :math:`V(\pi_e)` with
IPS, SNIPS, DM and DR; an on-policy log of :math:`\pi_e` of the same size gives the kind of
noisy truth real logs have. :func:`recsys_ref.bandits.ope_experiments.bias_table` summarises
the replications against the exact value.
:func:`recsys_ref.bandits.ope_experiments.refit_bootstrap` is the Open Bandit Pipeline's
protocol on real logs: bootstrap samples of the logs, the reward model refitted on each, the
mean relative error per estimator. See the chapter "Exploration".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd
import torch

from recsys_ref.bandits.analysis import slope_interval
from recsys_ref.bandits.logged import log_policy
from recsys_ref.bandits.reward_model import cross_fit_rewards
from recsys_ref.checks import check_positive_int
from recsys_ref.off_policy import estimate_policy_value

ESTIMATORS = ("IPS", "SNIPS", "DM", "DR")


def simulated_ope(click_prob, pi_b, pi_e, n_log: int, n_reps: int,
                  reward_model: Callable[[dict, int], torch.Tensor],
                  seed: int = 1000) -> pd.DataFrame:
    """One row per replication: the four estimates, the on-policy click rate and the ESS.

    Args:
        click_prob: ``(n_users, n_items)`` the simulator's click probabilities.
        pi_b, pi_e: ``(n_users, n_items)`` the logging and evaluation policies.
        n_log: logged rounds per replication.
        n_reps: replications.
        reward_model: ``(logs, seed) -> (n_log, n_items)`` cross-fitted click predictions
            for the logged users (the DM/DR reward model).
        seed: replication ``r`` logs with ``seed + r`` and runs :math:`\\pi_e` on-policy with
            ``seed + 1000 + r``.

    Returns:
        Columns ``IPS, SNIPS, DM, DR, on-policy, ESS`` (the effective sample size
        :math:`(\\sum w)^2 / \\sum w^2` of the importance weights).
    """
    n_reps = check_positive_int(n_reps, "n_reps")
    rows = []
    for rep in range(n_reps):
        logs = log_policy(click_prob, pi_b, n_log, seed=seed + rep)
        u = logs["users"]
        res = estimate_policy_value(logs["rewards"], logs["actions"], logs["propensities"],
                                    pi_e[u], q_hat=reward_model(logs, seed + rep),
                                    n_bootstrap=1, seed=rep)
        w = pi_e[u, logs["actions"]] / logs["propensities"]  # (n_log,) importance weights
        on_policy = log_policy(click_prob, pi_e, n_log, seed=seed + 1000 + rep)["rewards"]
        rows.append(res["estimate"].to_dict() | {"on-policy": float(on_policy.mean()),
                                                 "ESS": float(w.sum() ** 2 / (w ** 2).sum())})
    return pd.DataFrame(rows)


def bias_table(runs: pd.DataFrame, true_value: float) -> pd.DataFrame:
    """Per estimator (the columns of
    :func:`recsys_ref.bandits.ope_experiments.simulated_ope` but ESS): mean estimate, bias
    with a 95% t interval over the replications, standard deviation and RMSE / V."""
    table = {}
    for est in (*ESTIMATORS, "on-policy"):
        errors = runs[est].to_numpy() - true_value  # (n_reps,)
        bias, low, high = slope_interval(errors)  # a t interval of any per-replication numbers
        table[est] = {"mean estimate": runs[est].mean(), "bias": bias, "bias low": low,
                      "bias high": high, "sd": errors.std(ddof=1),
                      "RMSE / V": float(np.sqrt((errors ** 2).mean()) / true_value)}
    return pd.DataFrame(table).T


def refit_bootstrap(arrays: Mapping, policies: Mapping[str, torch.Tensor], true_value: float,
                    n_samples: int, l2: float, seed: int = 12345) -> pd.DataFrame:
    """Mean relative error of each estimator over bootstrap samples of real logs, with the
    reward model (:func:`recsys_ref.bandits.reward_model.cross_fit_rewards`) refitted on each.

    Args:
        arrays: the logs as :func:`recsys_ref.bandits.reward_model.open_bandit_arrays` gives
            them.
        policies: name -> ``(n_items, n_positions)`` evaluation policy.
        true_value: the evaluation policy's value.
        n_samples: bootstrap samples.
        l2: the reward model's penalty.
        seed: seed of the resampling (sample ``b`` cross-fits with seed ``b``).

    Returns:
        A frame indexed by estimator with one column per policy.
    """
    n_samples = check_positive_int(n_samples, "n_samples")
    n = len(arrays["rewards"])
    gen = torch.Generator().manual_seed(seed)
    errors = {name: [] for name in policies}
    for b in range(n_samples):
        idx = torch.randint(n, (n,), generator=gen)  # (n,) rows of this sample
        arr = {k: v[idx] if isinstance(v, torch.Tensor) and k != "action_features" else v
               for k, v in arrays.items()}
        q_b = cross_fit_rewards(arr["context"], arr["actions"], arr["positions"],
                                arr["rewards"], arr["action_features"], arr["n_positions"],
                                arr["pair_features"], l2=l2, seed=b)
        for name, dist in policies.items():
            errors[name].append(estimate_policy_value(
                arr["rewards"], arr["actions"], arr["propensities"],
                dist[None].expand(n, -1, -1), q_hat=q_b, positions=arr["positions"],
                true_value=true_value, n_bootstrap=1)["relative_error"])
    return pd.DataFrame({name: pd.DataFrame(e).mean() for name, e in errors.items()})
