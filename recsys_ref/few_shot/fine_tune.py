r"""Fine-tuning a trained BiasedMF on new users' support ratings by gradient steps.

The new users' rows :math:`(p_u, b_u)` start at zero (the model's prediction for a user it
knows nothing about is :math:`\mu + b_i`) and a few full-batch Adam steps minimise
:func:`recsys_ref.models.mf.mf_objective` on the support ratings, optionally moving the
item factors too. Early stopping by the number of steps is the only regulariser beyond the
MF penalty: it is the iterative cousin of the closed-form fold-in
(:mod:`recsys_ref.few_shot.fold_in`). See the chapter "Few-shot recommendation".
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import pandas as pd
import torch

from recsys_ref.checks import check_positive_int
from recsys_ref.few_shot.base import FewShotRecommender
from recsys_ref.matrix import column
from recsys_ref.models.mf import BiasedMF, MFConfig, mf_objective, rating_counts
from recsys_ref.training import fit_epochs, gradient_step


@dataclass
class FineTuneConfig:
    """Hyperparameters of :class:`FineTuneMF`; the chapter "Few-shot recommendation" chooses
    ``n_steps`` and ``lr`` on validation users (:mod:`recsys_ref.tuning`)."""

    n_steps: int = 30  # full-batch steps on the support set (one "epoch" of fit_epochs each)
    lr: float = 0.01  # Adam step size (small: few steps of it regularise like a prior)
    train_items: bool = False  # also update the item factors and biases
    progress: bool = False  # tqdm progress bar

    def __post_init__(self):
        self.n_steps = check_positive_int(self.n_steps, "n_steps")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


class FineTuneMF(FewShotRecommender):
    """A BiasedMF fitted on the meta-train users, fine-tuned on each batch of new users.

    Args:
        n_users, n_items: table sizes.
        config: a :class:`FineTuneConfig`; keyword arguments override its fields.
        mf_config: the :class:`~recsys_ref.models.mf.MFConfig` of the model :meth:`fit` trains.
        model: an already fitted BiasedMF to start from (never modified: a copy is tuned).
    """

    def __init__(self, n_users: int, n_items: int, config: FineTuneConfig | None = None,
                 mf_config: MFConfig | None = None, model: BiasedMF | None = None,
                 **overrides):
        super().__init__(n_users, n_items)
        self.config = replace(config or FineTuneConfig(), **overrides)  # validates
        self.mf_config, self.model = mf_config or MFConfig(), model

    def fit(self, train: pd.DataFrame, valid=None) -> FineTuneMF:
        if self.model is None:
            self.model = BiasedMF(self.n_users, self.n_items, self.mf_config).fit(train)
        return self

    def tune(self, support: pd.DataFrame, users) -> BiasedMF:
        """A copy of the model with ``users``' rows fitted to ``support`` (``users`` reset)."""
        users = self._new_users(support, users)
        cfg, mf = self.config, copy.deepcopy(self.model)
        f = mf.factors_
        with torch.no_grad():
            f.P[users], f.b_u[users] = 0.0, 0.0
        u, i = column(support, "user_idx"), column(support, "item_idx")
        r = column(support, "rating", torch.float32)  # (n,)
        counts = rating_counts(u, i, self.n_users, self.n_items)
        params = [f.P, f.b_u] + ([f.Q, f.b_i] if cfg.train_items else [])
        opt = torch.optim.Adam(params, lr=cfg.lr)
        mc = mf.config

        def step(_):
            loss = mf_objective(f, u, i, r, mf.mu_, mc.reg, mc.reg_bias, mc.nu,
                                counts) / len(r)
            return gradient_step(opt, loss)

        if len(r):
            fit_epochs(step, cfg.n_steps, progress=cfg.progress, desc="fine-tune")
        return mf

    def score_new_users(self, support: pd.DataFrame, users) -> torch.Tensor:
        mf = self.tune(support, users)
        return mf.score(self._new_users(support, users))  # (m, n_items), no_grad inside
