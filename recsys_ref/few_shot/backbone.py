r"""Few-shot users on a pretrained sequence encoder: fold-in over its item embeddings.

The encoder of the chapter "Self-supervised pretraining" learns an embedding :math:`e_i` of
every item from interaction sequences alone (no ratings). Used as fixed item features, it
turns a new user's support ratings into the same Bayesian linear regression as the BiasedMF
fold-in (:mod:`recsys_ref.few_shot.fold_in`):

.. math::

    \hat r_{ui} = \mu + b_i + b_u + p_u^\top e_i,

with :math:`(p_u, b_u)` folded in from the support set under an empirical-Bayes prior. The
item biases :math:`b_i` and the prior are fitted on the meta-train users by alternating
ridge solves with :math:`E` frozen; the encoder is pretrained on the meta-train users'
sequences only (:func:`recsys_ref.pretraining.cached_backbone`), so it never sees a new user.
See the chapter "Few-shot recommendation".
"""

from __future__ import annotations

import pandas as pd
import torch

from recsys_ref.checks import check_frame, check_nonnegative, check_positive_int
from recsys_ref.few_shot.base import FewShotRecommender
from recsys_ref.few_shot.fold_in import GaussianPosterior, gaussian_posterior
from recsys_ref.matrix import column
from recsys_ref.models.sasrec import SASRecConfig, SeqTransformer
from recsys_ref.pretraining import PretrainConfig, cached_backbone


def item_embeddings(backbone: SeqTransformer) -> torch.Tensor:
    """``(n_items, dim)`` float64: the encoder's token table without PAD and [MASK]."""
    if not isinstance(backbone, SeqTransformer):
        raise TypeError("backbone must be a SeqTransformer")
    return backbone.tokens.weight[1:backbone.n_items + 1].detach().double()


class BackboneFoldIn(FewShotRecommender):
    """Empirical-Bayes fold-in of new users over a pretrained encoder's item embeddings.

    Args:
        n_users: number of users.
        n_items: number of items.
        backbone: a pretrained :class:`.SeqTransformer`; ``None`` pretrains one on the
            meta-train users in :meth:`fit` (cached on disk).
        backbone_config: the encoder's architecture when ``backbone`` is ``None``.
        pretrain_config: its pretraining settings when ``backbone`` is ``None``.
        reg: ridge penalty of the meta-train users' :math:`(p_u, b_u)`.
        reg_bias: ridge penalty of the item biases.
        n_sweeps: alternating solves (users, then item biases) when fitting.
        rating_range: predictions are clipped to it (``None``: no clipping).

    See the chapter "Few-shot recommendation".
    """

    def __init__(self, n_users: int, n_items: int, backbone: SeqTransformer | None = None,
                 backbone_config: SASRecConfig | None = None,
                 pretrain_config: PretrainConfig | None = None, reg: float = 5.0,
                 reg_bias: float = 5.0, n_sweeps: int = 6,
                 rating_range: tuple[float, float] | None = (1.0, 5.0)):
        super().__init__(n_users, n_items)
        if backbone is not None and backbone.n_items != n_items:
            raise ValueError(f"backbone has {backbone.n_items} items, expected {n_items}")
        self.backbone, self.backbone_config = backbone, backbone_config or SASRecConfig()
        self.pretrain_config = pretrain_config or PretrainConfig()
        self.reg, self.reg_bias = check_nonnegative(reg, "reg"), check_nonnegative(reg_bias,
                                                                                  "reg_bias")
        self.n_sweeps = check_positive_int(n_sweeps, "n_sweeps")
        self.rating_range = rating_range

    def _features(self, items: torch.Tensor) -> torch.Tensor:
        """``(n, dim+1)``: :math:`x_i = (e_i, 1)` of each item."""
        return torch.cat([self.E_[items], self.E_.new_ones(len(items), 1)], 1)

    def fit(self, train: pd.DataFrame, valid=None) -> BackboneFoldIn:
        check_frame(train, "train", ["user_idx", "item_idx", "rating", "timestamp"])
        if self.backbone is None:
            self.backbone = cached_backbone(self.backbone_config, train, self.n_items,
                                            self.pretrain_config)
        self.E_ = item_embeddings(self.backbone)  # (n_items, d)
        u, i = column(train, "user_idx"), column(train, "item_idx")  # (n,), (n,)
        r = column(train, "rating", torch.float64)
        users, rows = torch.unique(u, return_inverse=True)  # rows: (n,) in 0..len(users)-1
        X = self._features(i)  # (n, d+1)
        d1 = X.shape[1]
        self.mu_ = float(r.mean())
        b_i = torch.zeros(self.n_items, dtype=torch.float64)
        n_i = torch.bincount(i, minlength=self.n_items).double()
        prior_precision = self.reg * torch.eye(d1, dtype=torch.float64)
        for _ in range(self.n_sweeps):  # users given the biases, then biases given the users
            theta = gaussian_posterior(rows, X, r - self.mu_ - b_i[i], len(users),
                                       torch.zeros(d1, dtype=torch.float64),
                                       prior_precision).mean  # (n_users_train, d+1)
            residual = r - self.mu_ - (X * theta[rows]).sum(1)  # (n,)
            b_i = torch.zeros_like(b_i).index_add_(0, i, residual) / (n_i + self.reg_bias)
        self.b_i_ = b_i
        fitted = self.mu_ + b_i[i] + (X * theta[rows]).sum(1)
        self.noise_var_ = float(((r - fitted) ** 2).mean())
        self.prior_mean_ = theta.mean(0)  # the typical user
        self.prior_cov_ = torch.cov(theta.T) + 1e-6 * torch.eye(d1, dtype=torch.float64)
        return self

    def fold_in(self, support: pd.DataFrame, users) -> GaussianPosterior:
        """The posterior of each of ``users``' ``(p_u, b_u)`` (rows in ``users`` order)."""
        users = self._new_users(support, users)
        pos = {int(v): j for j, v in enumerate(users)}
        rows = torch.tensor([pos[int(v)] for v in support["user_idx"]], dtype=torch.long)
        items = column(support, "item_idx")
        y = column(support, "rating", torch.float64) - self.mu_ - self.b_i_[items]
        return gaussian_posterior(rows, self._features(items), y, len(users), self.prior_mean_,
                                  torch.linalg.inv(self.prior_cov_), self.noise_var_)

    @torch.no_grad()
    def score_new_users(self, support: pd.DataFrame, users) -> torch.Tensor:
        theta = self.fold_in(support, users).mean  # (m, d+1)
        all_items = self._features(torch.arange(self.n_items))  # (n_items, d+1)
        scores = (self.mu_ + self.b_i_[None, :] + theta @ all_items.T).float()  # (m, n_items)
        return scores if self.rating_range is None else scores.clamp(*self.rating_range)
