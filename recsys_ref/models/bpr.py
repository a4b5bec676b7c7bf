r"""Bayesian personalised ranking (Rendle et al. 2009) for implicit feedback.

See the chapter "Matrix factorization".
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F

from recsys_ref.checks import check_config, check_positive_int
from recsys_ref.matrix import UserItems, sorted_pairs
from recsys_ref.models.base import ConfiguredRecommender
from recsys_ref.models.mf import Factors
from recsys_ref.training import (
    fit_from_config,
    gather_rows,
    gradient_step,
    minibatches,
    ranking_eval_fn,
    seed_everything,
)


def sample_negatives(users: torch.Tensor, n_items: int, n_negatives: int = 1,
                     exclude: torch.Tensor | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw items uniformly for each user, optionally never one of the user's positives.

    Rejection sampling, vectorised: draw for everyone, then redraw only the collisions. On
    MovieLens a user has seen 6% of the items on average (at most 44%), so a round or two
    suffices; a collision still left after 30 rounds (a user who has seen nearly every
    item) is drawn exactly, uniformly among that user's remaining items.

    Args:
        users: ``(n,)`` user indices.
        n_items: items are drawn from ``0..n_items-1``.
        n_negatives: draws per user.
        exclude: optional items never to return (the user's training positives): a
            :class:`recsys_ref.matrix.UserItems` (sparse: membership by binary search) or a
            ``(n_users, n_items)`` bool mask; both give the same draws.
        generator: the source of randomness (see :func:`recsys_ref.training.seed_everything`).

    Returns:
        ``(n, n_negatives)`` item indices. See the chapter "Matrix factorization".
    """
    n_negatives = check_positive_int(n_negatives, "n_negatives")
    neg = torch.randint(n_items, (len(users), n_negatives), generator=generator)
    if exclude is None:
        return neg
    if isinstance(exclude, UserItems):
        if exclude.n_items != n_items:
            raise ValueError(f"exclude must cover {n_items} items, got {exclude.n_items}")
        exclude.filter()  # built once per exclude: it spares most draws the binary search
        has, rows = exclude.contains, exclude.rows  # binary search; no (n_users, n_items)
    elif exclude.dtype != torch.bool or exclude.dim() != 2 or exclude.shape[1] != n_items:
        raise ValueError(f"exclude must be a (n_users, {n_items}) bool tensor or UserItems, "
                         f"got {exclude.dtype} of shape {tuple(exclude.shape)}")
    else:
        def has(u, i):
            return exclude[u, i]

        def rows(u):
            return exclude[u]
    users = users[:, None].expand_as(neg)  # (n, n_negatives)
    bad = has(users, neg)  # (n, n_negatives) True on a positive
    for _ in range(_REJECTION_ROUNDS):
        if not bad.any():
            return neg
        redo = bad.nonzero(as_tuple=True)  # only the collisions are redrawn and re-checked
        neg[redo] = torch.randint(n_items, (len(redo[0]),), generator=generator)
        bad[redo] = has(users[redo], neg[redo])
    if bad.any():  # users who have seen almost everything: draw from their complement
        neg[bad] = _draw_unseen(rows(users[bad]), generator)
    return neg


# rejection rounds before the exact draw: on MovieLens (at most 44% of the items seen) a
# draw survives 30 rounds with probability 0.44**30 < 1e-10, so the exact draw never runs
# there and the random stream is that of plain rejection; for a user who has seen all but
# one item rejection would need ~n_items rounds (7 s per 1,000 draws), the exact draw one
_REJECTION_ROUNDS = 30


def _draw_unseen(rows: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One uniform draw among the False entries of each row of a ``(m, n_items)`` bool
    matrix, by inverting the row's cumulative count of unseen items."""
    free = (~rows).cumsum(1)  # (m, n_items) unseen items up to and including each position
    n_free = free[:, -1]  # (m,)
    if (n_free == 0).any():
        raise ValueError("exclude leaves some user no item to sample")
    r = (torch.rand(len(rows), generator=generator) * n_free).long().clamp(max=n_free - 1)
    return torch.searchsorted(free, (r + 1)[:, None])[:, 0]  # (m,) the (r+1)-th free item


def bpr_loss(factors: Factors, users, pos, neg, reg: float) -> torch.Tensor:
    r"""The BPR objective summed over the triples of a batch (one per negative).

    With :math:`\hat x_{ui} = p_u^\top q_i + b_i` and :math:`\sigma` the logistic function:

    .. math::
        L = \sum_{(u, i, j)} \Big[ -\ln \sigma(\hat x_{ui} - \hat x_{uj})
            + \frac{\lambda}{2} (\|p_u\|^2 + \|q_i\|^2 + \|q_j\|^2 + b_i^2 + b_j^2) \Big]

    The penalty is charged per triple, on the parameters the triple touches, as in
    LearnBPR's update :math:`\theta \leftarrow \theta + \gamma (\sigma(-\hat x_{uij})
    \partial \hat x_{uij} / \partial\theta - \lambda \theta)`.

    Args:
        factors: the parameters (``b_u`` is ignored: it cancels in every difference).
        users, pos: ``(n,)`` users and their positive items.
        neg: ``(n, k)`` negative items.
        reg: :math:`\lambda`.

    Returns:
        A scalar tensor. See the chapter "Matrix factorization".
    """
    p, q_i = gather_rows(factors.P, users), gather_rows(factors.Q, pos)  # (n, d)
    q_j = gather_rows(factors.Q, neg)  # (n, k, d)
    b_i, b_j = gather_rows(factors.b_i, pos), gather_rows(factors.b_i, neg)  # (n,), (n, k)
    x_ui = (p * q_i).sum(-1) + b_i  # (n,)
    x_uj = (p[:, None, :] * q_j).sum(-1) + b_j  # (n, k)
    k = neg.shape[1]
    penalty = k * ((p * p).sum(-1) + (q_i * q_i).sum(-1) + b_i * b_i) \
        + (q_j * q_j).sum((-1, -2)) + (b_j * b_j).sum(-1)  # (n,): the k triples of a positive
    return -F.logsigmoid(x_ui[:, None] - x_uj).sum() + 0.5 * reg * penalty.sum()


# the optimizers BPR can be trained with. The loss is a sum over the batch's triples, so
# SGD's step per triple is lr times that triple's gradient, as in LearnBPR and in implicit's
# BPR (which takes one triple per step); Adam and Adagrad rescale the step per parameter
OPTIMIZERS = {
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr, fused=True),
    "adagrad": lambda params, lr: torch.optim.Adagrad(params, lr=lr),
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr),
}


@dataclass
class BPRConfig:
    """Hyperparameters of :class:`BPR`.

    The defaults are a starting point; the chapter "Matrix factorization" chooses the
    optimizer, step size, penalty and number of epochs it uses by the validation search of
    :func:`recsys_ref.mf_tuning.implicit_search`.
    """

    n_factors: int = 64  # d
    n_epochs: int = 75  # maximum epochs (one epoch: every training pair once)
    lr: float = 0.001  # step size of the optimizer
    optimizer: str = "adam"  # "adam", "adagrad" or "sgd" (plain, on the summed loss)
    reg: float = 0.001  # lambda, per triple
    n_negatives: int = 4  # negatives per positive pair
    batch_size: int = 1024  # positive pairs per minibatch
    init_std: float = 0.1  # factors start as N(0, init_std^2)
    item_bias: bool = True  # learn b_i (item popularity); False: Rendle's plain BPR-MF
    patience: int | None = 6  # evaluations without improvement before stopping (with valid)
    eval_every: int = 5  # epochs between validation evaluations
    metric: str = "NDCG@10"  # validation metric for early stopping
    seed: int = 0
    progress: bool = False  # tqdm progress bar

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {tuple(OPTIMIZERS)}, "
                             f"got {self.optimizer!r}")
        check_config(self, positive_ints=("n_factors", "n_epochs", "n_negatives", "batch_size",
                                          "eval_every"),
                     positive=("lr", "init_std"), nonnegative=("reg",))


class BPR(ConfiguredRecommender):
    r"""Matrix factorization trained with the BPR pairwise loss (Rendle et al. 2009).

    Scores :math:`\hat x_{ui} = p_u^\top q_i + b_i`; minimises :func:`bpr_loss` with Adam
    (or Adagrad, or plain SGD: ``optimizer``) over
    minibatches of training pairs, each with ``n_negatives`` items sampled uniformly among
    those the user has not interacted with (:func:`sample_negatives`). Ratings are ignored:
    every training pair is a positive. With ``valid`` given to :meth:`fit`, training stops
    when the validation ``metric`` (full ranking, training items excluded) has not improved
    for ``patience`` evaluations and the best parameters are kept.

    Args:
        n_users, n_items: table sizes.
        config: a :class:`BPRConfig`; keyword arguments override its fields.

    See the chapter "Matrix factorization".
    """

    config_class = BPRConfig

    def fit(self, train: pd.DataFrame, valid: pd.DataFrame | None = None) -> BPR:
        """Fit on the (distinct) pairs of ``train``; early-stop on ``valid`` if given."""
        cfg = self.config
        self._check_train(train)
        # sparse: the positives per user (CSR) and the distinct pairs sorted by user
        seen = UserItems(train, self.n_users, self.n_items, name="train")
        users, items = sorted_pairs(train, self.n_items)  # (n,) distinct pairs
        gen = seed_everything(cfg.seed)
        self.factors_ = Factors(self.n_users, self.n_items, cfg.n_factors, user_bias=False,
                                item_bias=cfg.item_bias, init_std=cfg.init_std, generator=gen)
        opt = OPTIMIZERS[cfg.optimizer](self.factors_.parameters(), cfg.lr)

        def epoch(_):
            total = 0.0
            for u, i in minibatches(users, items, batch_size=cfg.batch_size, generator=gen):
                j = sample_negatives(u, self.n_items, cfg.n_negatives, seen, gen)  # (b, k)
                total += gradient_step(opt, bpr_loss(self.factors_, u, i, j, cfg.reg))
            return total / (len(users) * cfg.n_negatives)

        eval_fn = None if valid is None else ranking_eval_fn(self, valid, train, cfg.metric)
        result = fit_from_config(epoch, cfg, module=self.factors_, eval_fn=eval_fn, desc="BPR")
        self.history_, self.best_epoch_ = result.history, result.best_epoch
        return self

    @torch.no_grad()
    def score(self, user_idx) -> torch.Tensor:
        """``(batch,) -> (batch, n_items)``: ``p_u Q^T + b_i``."""
        return self.factors_.score(self._users(user_idx))
