r"""The deployment gate of the unified loop: off-policy evaluation of a retrained candidate.

Before a retrained model replaces the deployed one, the gate estimates both policies' values
on the impressions logged in the last ``window_days`` days (which the candidate was not
trained on) with the estimators of :mod:`recsys_ref.off_policy` (IPS, SNIPS, DR), each row
one impression at one position, as in the Open Bandit Dataset. The candidate is deployed only
if the percentile-bootstrap interval of the *paired* difference
:math:`\hat V(\pi_{\text{cand}}) - \hat V(\pi_{\text{cur}})` (the same resampled rows for
both) lies above zero (``rule="better"``), or, more leniently, only if it does not lie below
zero (``rule="not worse"``: deploy unless the candidate is worse by its interval). Identical
policies give a difference of exactly zero on every resample, so neither rule deploys them.
See the chapter "The unified loop".
"""

from __future__ import annotations

import pandas as pd
import torch

from recsys_ref.checks import check_positive_int
from recsys_ref.off_policy import _estimates, _terms

GATE_ESTIMATORS = ("IPS", "SNIPS", "DR")
RULES = ("better", "not worse")


class OPEGate:
    """Deploy a candidate only if it beats the current policy by its interval.

    Args:
        estimator: ``"IPS"``, ``"SNIPS"`` or ``"DR"``, the one that decides.
        window_days: days of logs held out from the candidate's training and evaluated on.
        alpha: 1 - confidence level of the intervals.
        n_bootstrap: resamples of the logged rows.
        seed: seed of the resampling.
        rule: ``"better"`` (the interval of the difference above zero) or ``"not worse"``
            (its upper end above zero).
        refit: once a candidate is approved, deploy the same recipe refitted on every day
            including the window (True), or the evaluated candidate itself (False).
    """

    def __init__(self, estimator: str = "DR", window_days: int = 2, alpha: float = 0.05,
                 n_bootstrap: int = 500, seed: int = 0, rule: str = "better",
                 refit: bool = True):
        if estimator not in GATE_ESTIMATORS:
            raise ValueError(f"estimator must be one of {GATE_ESTIMATORS}, got {estimator!r}")
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        self.rule, self.refit = rule, bool(refit)
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        self.estimator, self.alpha, self.seed = estimator, float(alpha), int(seed)
        self.window_days = check_positive_int(window_days, "window_days")
        self.n_bootstrap = check_positive_int(n_bootstrap, "n_bootstrap")

    def evaluate(self, rewards, actions, propensities, dists: dict[str, torch.Tensor],
                 q_hat: torch.Tensor) -> pd.DataFrame:
        """Every estimator of every policy, and the paired difference of the last two.

        Args:
            rewards, actions, propensities: ``(n,)`` the logged rows.
            dists: ``{name: (n, n_items)}`` each policy's distribution at each row's position
                (the current policy first, the candidate second).
            q_hat: ``(n, n_items)`` a reward model's predicted click of every item per row.

        Returns:
            A frame indexed by ``(policy, estimator)`` with ``estimate, ci_low, ci_high``; the
            policy ``"difference"`` is the candidate's minus the current one's.
        """
        if len(dists) != 2:
            raise ValueError("dists must hold two policies: the current one, then the candidate")
        p = torch.as_tensor(propensities, dtype=torch.float64)
        if not bool(torch.isfinite(p).all()):
            raise ValueError("propensities must be logged (finite) for an off-policy gate")
        terms = {name: _terms(rewards, actions, p, d, q_hat=q_hat) for name, d in dists.items()}
        n = len(p)
        gen = torch.Generator().manual_seed(self.seed)
        idx = torch.randint(n, (self.n_bootstrap, n), generator=gen)  # shared: paired
        rows, reps = {}, {}
        for name, t in terms.items():
            point = _estimates(*t)
            reps[name] = _estimates(*(x[idx] for x in t))  # (n_bootstrap,) each
            for est in GATE_ESTIMATORS:
                rows[(name, est)] = float(point[est])
        names = list(terms)
        for est in GATE_ESTIMATORS:
            rows[("difference", est)] = rows[(names[1], est)] - rows[(names[0], est)]
            reps["difference"] = reps.get("difference", {}) | {
                est: reps[names[1]][est] - reps[names[0]][est]}
        q = torch.tensor([self.alpha / 2, 1 - self.alpha / 2], dtype=torch.float64)
        out = []
        for (name, est), value in rows.items():
            low, high = torch.quantile(reps[name][est], q).tolist()
            out.append({"policy": name, "estimator": est, "estimate": value,
                        "ci_low": low, "ci_high": high})
        return pd.DataFrame(out).set_index(["policy", "estimator"])

    def decide(self, table: pd.DataFrame) -> bool:
        """Deploy iff the decisive estimator's difference interval lies above zero
        (``"better"``), or its upper end does (``"not worse"``)."""
        row = table.loc[("difference", self.estimator)]
        return bool(row["ci_low"] > 0 if self.rule == "better" else row["ci_high"] > 0)
