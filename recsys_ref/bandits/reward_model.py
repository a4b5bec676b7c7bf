r"""A click model for logged bandit feedback: the reward model of the direct and DR estimators.

:class:`LogisticRewardModel` is an L2-penalised logistic regression, additive in the context,
the item, the position and optional (context, item) features, fitted by Newton's method (exact
and deterministic). :func:`cross_fit_rewards` predicts each fold's rows with a model trained on
the other folds, so no row's prediction has seen its own click (Chernozhukov et al. 2018).
:func:`open_bandit_arrays` turns the Open Bandit Dataset's frames into these inputs.
See the chapter "Exploration".
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from recsys_ref.checks import check_frame, check_index, check_nonnegative, check_positive_int


def _matrix(x, name: str, n: int | None = None, dim: int = 2) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(x, dtype=np.float64) if not isinstance(x, torch.Tensor)
                        else x).double()
    if x.dim() != dim or (n is not None and len(x) != n):
        raise ValueError(f"{name} must be {dim}-D with {n if n is not None else 'n'} rows, "
                         f"got shape {tuple(x.shape)}")
    return x


class LogisticRewardModel:
    r"""Logistic regression of a click on context, item, position and pair features.

    .. math::
        \hat q(x, a, k) = \sigma\big(c + x^\top w_x + f_a^\top w_f + w_k + z_{x,a}^\top w_z\big),
        \qquad \min_w \sum_t \ell(r_t, \hat q_t) + \frac{\lambda}{2} \|w\|^2

    (:math:`\ell` the log loss; the intercept :math:`c` is not penalised). The logit is
    additive, so all items are scored at once by broadcasting: ``(n, 1) + (1, n_items)``.

    Args:
        l2: :math:`\lambda \ge 0` (with rare clicks keep it > 0: a separable item has no
            finite maximum-likelihood weight).
        n_iters: maximum Newton steps (about 10 are needed).
    """

    def __init__(self, l2: float = 1.0, n_iters: int = 50):
        self.l2 = check_nonnegative(l2, "l2")
        self.n_iters = check_positive_int(n_iters, "n_iters")

    def _split(self, w: torch.Tensor):
        d = np.cumsum([1, self.d_x, self.d_f, self.n_positions])
        return w[0], w[1:d[1]], w[d[1]:d[2]], w[d[2]:d[3]], w[d[3]:]

    def fit(self, context, actions, positions, rewards, action_features, n_positions: int,
            pair_features=None) -> LogisticRewardModel:
        """Fit on logged rows.

        Args:
            context: ``(n, d_x)`` context features (e.g. one-hot user features).
            actions: ``(n,)`` logged items.
            positions: ``(n,)`` zero-based positions.
            rewards: ``(n,)`` clicks (0/1).
            action_features: ``(n_items, d_f)`` item features (an identity gives one weight
                per item).
            n_positions: number of positions.
            pair_features: optional ``(n, n_items, d_z)`` features of each row with each item.
        """
        X = _matrix(context, "context")
        n = len(X)
        a = torch.as_tensor(np.asarray(actions)).long()
        k = torch.as_tensor(np.asarray(positions)).long()
        y = _matrix(rewards, "rewards", n, dim=1)
        if a.shape != (n,) or k.shape != (n,):
            raise ValueError(f"actions and positions must be ({n},), got {tuple(a.shape)}, "
                             f"{tuple(k.shape)}")
        if not bool(((y == 0) | (y == 1)).all()):
            raise ValueError("rewards must be 0/1 for a logistic model")
        self.F = _matrix(action_features, "action_features")  # (n_items, d_f)
        self.n_positions = check_positive_int(n_positions, "n_positions")
        check_index(a, "actions", len(self.F))
        check_index(k, "positions", self.n_positions)
        Z = None if pair_features is None else _matrix(pair_features, "pair_features", n, 3)
        self.d_x, self.d_f = X.shape[1], self.F.shape[1]
        rows = torch.arange(n)
        parts = [torch.ones(n, 1, dtype=torch.float64), X, self.F[a],
                 torch.nn.functional.one_hot(k, self.n_positions).double()]
        if Z is not None:
            parts.append(Z[rows, a])
        D = torch.cat(parts, 1)  # (n, p) design matrix of the logged (x, a, k)
        penalty = torch.full((D.shape[1],), self.l2, dtype=torch.float64)
        penalty[0] = 0.0  # the intercept is free

        def objective(w):
            z = D @ w
            return float(torch.nn.functional.softplus(z).sum() - y @ z
                         + 0.5 * (penalty * w * w).sum())

        w = torch.zeros(D.shape[1], dtype=torch.float64)
        # start the intercept at the log-odds of the click rate: fewer steps with rare clicks
        rate = float(y.mean().clamp(1e-6, 1 - 1e-6))
        w[0] = np.log(rate / (1 - rate))
        for _ in range(self.n_iters):
            q = torch.sigmoid(D @ w)
            grad = D.T @ (q - y) + penalty * w
            H = D.T @ (D * (q * (1 - q))[:, None]) + torch.diag(penalty + 1e-10)
            step = torch.linalg.solve(H, grad)
            f0, t = objective(w), 1.0
            while objective(w - t * step) > f0 and t > 1e-8:  # backtracking: never go uphill
                t /= 2
            w = w - t * step
            if float((t * step).abs().max()) < 1e-9:
                break
        self.w = w
        return self

    def predict(self, context, positions, pair_features=None) -> torch.Tensor:
        """``(n, n_items)`` click probability of every item for each row, at its position."""
        X = _matrix(context, "context")
        k = torch.as_tensor(np.asarray(positions)).long()
        check_index(k, "positions", self.n_positions)
        c, w_x, w_f, w_k, w_z = self._split(self.w)
        logit = c + (X @ w_x)[:, None] + (self.F @ w_f)[None, :] + w_k[k][:, None]
        if len(w_z):
            if pair_features is None:
                raise ValueError("pair_features were used in fit and must be given to predict")
            logit = logit + _matrix(pair_features, "pair_features", len(X), 3) @ w_z
        return torch.sigmoid(logit)


def cross_fit_rewards(context, actions, positions, rewards, action_features, n_positions: int,
                      pair_features=None, n_folds: int = 3, l2: float = 1.0,
                      seed: int = 0) -> torch.Tensor:
    """Out-of-fold predictions ``(n, n_items)`` of a :class:`LogisticRewardModel`.

    Rows are split into ``n_folds`` random folds (seeded); each fold is predicted by a model
    fitted on the others, so an estimator that uses the predictions never evaluates a model
    on its own training clicks.

    Args:
        context, actions, positions, rewards, action_features, n_positions, pair_features:
            as in :meth:`LogisticRewardModel.fit`.
        n_folds: number of folds, ``>= 2``.
        l2: the penalty of each model.
        seed: seed of the fold assignment.
    """
    n_folds = check_positive_int(n_folds, "n_folds", minimum=2)
    X = _matrix(context, "context")
    n = len(X)
    a, k = np.asarray(actions), np.asarray(positions)
    r = np.asarray(rewards, dtype=np.float64)
    Z = None if pair_features is None else _matrix(pair_features, "pair_features", n, 3)
    fold = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) % n_folds  # (n,)
    out = torch.empty(n, len(torch.as_tensor(np.asarray(action_features))),
                      dtype=torch.float64)
    for f in range(n_folds):
        test, train = (fold == f).numpy(), (fold != f).numpy()
        model = LogisticRewardModel(l2).fit(
            X[train], a[train], k[train], r[train], action_features, n_positions,
            None if Z is None else Z[train])
        out[test] = model.predict(X[test], k[test], None if Z is None else Z[test])
    return out


def log_loss(q_hat, actions, rewards) -> float:
    r"""Mean log loss of predicted clicks at the logged items, for choosing a reward model.

    .. math::
        -\frac1n \sum_t \big[r_t \ln \hat q(x_t, a_t) + (1 - r_t) \ln (1 - \hat q(x_t, a_t))\big]

    Args:
        q_hat: ``(n, n_items)`` predictions (e.g. from
            :func:`recsys_ref.bandits.reward_model.cross_fit_rewards`, so that no
            row is scored by a model trained on it), clipped to ``[1e-9, 1 - 1e-9]``.
        actions: ``(n,)`` logged items.
        rewards: ``(n,)`` clicks (0/1).
    """
    q = _matrix(q_hat, "q_hat")
    a = torch.as_tensor(np.asarray(actions)).long()
    y = _matrix(rewards, "rewards", len(q), dim=1)
    if a.shape != (len(q),):
        raise ValueError(f"actions must be ({len(q)},), got {tuple(a.shape)}")
    check_index(a, "actions", q.shape[1])
    qa = q[torch.arange(len(q)), a].clamp(1e-9, 1 - 1e-9)  # (n,)
    return float(-(y * qa.log() + (1 - y) * (1 - qa).log()).mean())


def open_bandit_arrays(logs: pd.DataFrame, item_context: pd.DataFrame) -> dict:
    """The Open Bandit Dataset's frames as the arrays of :mod:`recsys_ref.off_policy`.

    Args:
        logs, item_context: from :func:`recsys_ref.data.open_bandit.load_open_bandit`.

    Returns:
        A dict of tensors, ``rewards, actions, positions`` (zero-based: the file's 1..3
        minus 1), ``propensities`` (each ``(n,)``), ``context`` (``(n, d_x)`` one-hot of
        ``user_feature_0..3``), ``action_features`` (``(n_items, n_items + d)``: an item
        identity, the standardised ``item_feature_0`` and one-hot ``item_feature_1..3``),
        ``pair_features`` (``(n, n_items, 1)``: the ``user-item_affinity_<item>`` columns),
        and the ints ``n_items, n_positions``.
    """
    users = [c for c in logs.columns if c.startswith("user_feature_")]
    check_frame(logs, "logs", ["item_id", "position", "click", "propensity_score", *users])
    check_frame(item_context, "item_context", ["item_id", "item_feature_0"])
    ic = item_context.sort_values("item_id").reset_index(drop=True)
    n_items = len(ic)
    if not (ic["item_id"].to_numpy() == np.arange(n_items)).all():
        raise ValueError("item_context.item_id must be 0..n_items-1")
    n_positions = int(logs["position"].max())
    x0 = ic["item_feature_0"].to_numpy(dtype=np.float64)
    cats = [c for c in ic.columns if c.startswith("item_feature_") and c != "item_feature_0"]
    F = np.concatenate([np.eye(n_items), ((x0 - x0.mean()) / (x0.std() + 1e-12))[:, None],
                        pd.get_dummies(ic[cats].astype(str)).to_numpy(np.float64)], axis=1)
    affinity = logs[[f"user-item_affinity_{i}" for i in range(n_items)]].to_numpy(np.float64)

    def col(name, dtype):
        return torch.tensor(logs[name].to_numpy(), dtype=dtype)

    return {
        "rewards": col("click", torch.float64), "actions": col("item_id", torch.long),
        "positions": col("position", torch.long) - 1,
        "propensities": col("propensity_score", torch.float64),
        "context": torch.tensor(pd.get_dummies(logs[users].astype(str)).to_numpy(np.float64)),
        "action_features": torch.tensor(F), "pair_features": torch.tensor(affinity[:, :, None]),
        "n_items": n_items, "n_positions": n_positions,
    }
