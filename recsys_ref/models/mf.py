r"""Biased matrix factorization for explicit ratings, by minibatch SGD/Adam or by ALS.

Both optimisers minimise the same objective, :func:`mf_objective`, so the chapter can compare
them on equal terms. The factor parameters (:class:`Factors`) are shared with BPR and iALS,
the batched ridge solver of ALS (:func:`recsys_ref.training.ridge_solve`) with iALS.
See the chapter "Matrix factorization".
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from recsys_ref.checks import check_config, check_rating_range, resolve_rating_range
from recsys_ref.matrix import column
from recsys_ref.models.base import ConfiguredRecommender
from recsys_ref.models.baselines import RATING_COLUMNS
from recsys_ref.training import (
    fit_epochs,
    gather_rows,
    gradient_step,
    minibatches,
    ridge_solve,
    rmse_eval_fn,
    row_blocks,
    seed_everything,
)

SOLVERS = ("sgd", "adam", "als")


class Factors(nn.Module):
    """User and item factors with optional biases: the parameters of every MF model here.

    Args:
        n_users, n_items: table sizes.
        n_factors: the dimension ``d``.
        user_bias, item_bias: whether to learn ``b_u`` / ``b_i`` (zeros if not).
        init_std: factors start as ``N(0, init_std^2)``; biases start at 0.
        generator: the source of the initial values.
    """

    def __init__(self, n_users: int, n_items: int, n_factors: int, user_bias: bool = True,
                 item_bias: bool = True, init_std: float = 0.1,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.P = nn.Parameter(init_std * torch.randn(n_users, n_factors, generator=generator))
        self.Q = nn.Parameter(init_std * torch.randn(n_items, n_factors, generator=generator))
        # a disabled bias is a zero buffer: same formulas, nothing to train
        for name, n, on in (("b_u", n_users, user_bias), ("b_i", n_items, item_bias)):
            if on:
                setattr(self, name, nn.Parameter(torch.zeros(n)))
            else:
                self.register_buffer(name, torch.zeros(n))

    def rows(self, users: torch.Tensor, items: torch.Tensor):
        """Gather ``p_u (n, d), q_i (n, d), b_u (n,), b_i (n,)`` once per batch
        (:func:`~recsys_ref.training.gather_rows`: the fastest backward)."""
        return (gather_rows(self.P, users), gather_rows(self.Q, items),
                gather_rows(self.b_u, users), gather_rows(self.b_i, items))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``(n,), (n,) -> (n,)``: ``b_u + b_i + p_u . q_i``."""
        p, q, b_u, b_i = self.rows(users, items)
        return b_u + b_i + (p * q).sum(-1)

    def score(self, users: torch.Tensor) -> torch.Tensor:
        """``(batch,) -> (batch, n_items)``: ``b_u + b_i + p_u Q^T`` for every item."""
        return self.b_u[users, None] + self.b_i[None, :] + self.P[users] @ self.Q.T


def mf_objective(factors: Factors, users, items, ratings, mu: float, reg: float,
                 reg_bias: float, nu: float = 1.0, counts=None) -> torch.Tensor:
    r"""The regularised squared error of biased MF, summed over the given ratings.

    .. math::
        L = \frac12 \sum_{(u,i) \in \mathcal{D}} (r_{ui} - \mu - b_u - b_i
            - p_u^\top q_i)^2
          + \frac12 \sum_u n_u^\nu (\lambda \|p_u\|^2 + \lambda_b b_u^2)
          + \frac12 \sum_i n_i^\nu (\lambda \|q_i\|^2 + \lambda_b b_i^2)

    with :math:`n_u, n_i` the training counts. Each rating carries its share
    :math:`n_u^{\nu - 1}` of the user's penalty (and :math:`n_i^{\nu - 1}` of the item's), so
    the objective is a sum over ratings and a minibatch's loss is the same sum over its
    ratings. :math:`\nu = 1` (the default) charges the penalty per rating, as Funk's SGD
    (2006) does: the batch's gradient step is then exactly Funk's update
    :math:`p_u \leftarrow p_u + \gamma (e_{ui} q_i - \lambda p_u)` summed over the batch
    (and the "weighted-lambda" ALS of Zhou et al. 2008); :math:`\nu = 0` is the plain ridge.

    Args:
        factors: the parameters.
        users, items, ratings: ``(n,)`` tensors of the rating triples.
        mu: the global mean (fixed, not learned).
        reg, reg_bias: :math:`\lambda` and :math:`\lambda_b`.
        nu: the frequency exponent :math:`\nu`.
        counts: ``(n_u (n_users,), n_i (n_items,))`` counts over the *whole* training set
            (:func:`rating_counts`); needed when ``nu != 1``.

    Returns:
        A scalar tensor (differentiable). See the chapter "Matrix factorization".
    """
    p, q, b_u, b_i = factors.rows(users, items)  # (n, d), (n, d), (n,), (n,)
    err = ratings - mu - b_u - b_i - (p * q).sum(-1)  # (n,)
    pen_u = reg * (p * p).sum(-1) + reg_bias * b_u * b_u  # (n,)
    pen_i = reg * (q * q).sum(-1) + reg_bias * b_i * b_i  # (n,)
    if nu != 1:
        if counts is None:
            raise ValueError("counts must be given when nu != 1")
        pen_u = pen_u * counts[0][users].to(err.dtype) ** (nu - 1)  # this rating's share
        pen_i = pen_i * counts[1][items].to(err.dtype) ** (nu - 1)
    return 0.5 * (err * err + pen_u + pen_i).sum()


@torch.no_grad()
def sgd_step(factors: Factors, users, items, ratings, mu: float, reg: float, reg_bias: float,
             lr: float, nu: float = 1.0, counts=None) -> float:
    r"""One minibatch step of plain SGD on :func:`mf_objective`, with the gradient written out.

    The same step as ``torch.optim.SGD`` on the autograd gradient of :func:`mf_objective`
    (Funk's update summed over the batch), without building a graph or a dense gradient:
    with :math:`e_{ui}` the error and :math:`w_u = n_u^{\nu - 1}` the rating's share of the
    penalty,

    .. math::
        p_u \leftarrow p_u + \gamma \sum_{i} (e_{ui} q_i - \lambda w_u p_u), \qquad
        b_u \leftarrow b_u + \gamma \sum_{i} (e_{ui} - \lambda_b w_u b_u)

    (items alike), scattered into the touched rows only.

    Args:
        factors, users, items, ratings, mu, reg, reg_bias, nu, counts: as in
            :func:`mf_objective`.
        lr: the step size :math:`\gamma`.

    Returns:
        The batch's :func:`mf_objective` before the step, as a float.

    Raises:
        FloatingPointError: the loss is NaN or infinite (nothing is updated).
    """
    f = factors
    p, q, b_u, b_i = f.rows(users, items)  # (n, d), (n, d), (n,), (n,)
    err = ratings - mu - b_u - b_i - (p * q).sum(-1)  # (n,)
    w_u = w_i = 1.0
    if nu != 1:
        if counts is None:
            raise ValueError("counts must be given when nu != 1")
        w_u = counts[0][users].to(err.dtype) ** (nu - 1)  # (n,) this rating's share
        w_i = counts[1][items].to(err.dtype) ** (nu - 1)
    pen_u = w_u * (reg * (p * p).sum(-1) + reg_bias * b_u * b_u)  # (n,)
    pen_i = w_i * (reg * (q * q).sum(-1) + reg_bias * b_i * b_i)
    loss = 0.5 * (err * err + pen_u + pen_i).sum()
    if not torch.isfinite(loss):
        raise FloatingPointError(f"the training loss is {loss.item()} (diverged); lower the "
                                 f"learning rate or raise the regularisation")
    w_u = torch.as_tensor(w_u, dtype=err.dtype)
    w_i = torch.as_tensor(w_i, dtype=err.dtype)
    e = err[:, None]  # (n, 1)
    # minus the gradient of each rating's term, times lr; index_add_ sums repeated rows
    f.P.index_add_(0, users, lr * (e * q - reg * w_u[..., None] * p))
    f.Q.index_add_(0, items, lr * (e * p - reg * w_i[..., None] * q))
    if isinstance(f.b_u, torch.nn.Parameter):
        f.b_u.index_add_(0, users, lr * (err - reg_bias * w_u * b_u))
    if isinstance(f.b_i, torch.nn.Parameter):
        f.b_i.index_add_(0, items, lr * (err - reg_bias * w_i * b_i))
    return loss.item()


def rating_counts(users, items, n_users: int, n_items: int):
    """``(n_u (n_users,), n_i (n_items,))``: ratings per user and per item (float)."""
    return (torch.bincount(users, minlength=n_users).float(),
            torch.bincount(items, minlength=n_items).float())


def als_step(factors: Factors, users, items, ratings, mu: float, reg: float, reg_bias: float,
             side: str, nu: float = 1.0, blocks=None) -> None:
    r"""Minimise :func:`mf_objective` exactly over one side's factors and biases, in place.

    For ``side="users"`` each :math:`(p_u, b_u)` is a ridge regression of
    :math:`r_{ui} - \mu - b_i` on the features :math:`(q_i, 1)` with penalty
    :math:`n_u^\nu \, \mathrm{diag}(\lambda, \dots, \lambda, \lambda_b)`; ``"items"`` swaps
    roles.

    Args:
        factors, users, items, ratings, mu, reg, reg_bias, nu: as in :func:`mf_objective`
            (``factors`` with both biases; the counts are those of ``users`` and ``items``).
        side: ``"users"`` or ``"items"``.
        blocks: :func:`~recsys_ref.training.row_blocks` of that side (computed here if ``None``).
    """
    if side not in ("users", "items"):
        raise ValueError(f"side must be 'users' or 'items', got {side!r}")
    f = factors
    rows, cols, (own, own_b), (other, other_b) = (
        (users, items, (f.P, f.b_u), (f.Q, f.b_i)) if side == "users"
        else (items, users, (f.Q, f.b_i), (f.P, f.b_u)))
    n_rows, d = own.shape
    with torch.no_grad():
        blocks = row_blocks(rows, cols, n_rows) if blocks is None else blocks
        X = torch.cat([other, other.new_ones(len(other), 1)], 1)  # (n_cols, d + 1): (q_i, 1)
        counts = torch.bincount(rows, minlength=n_rows).to(X.dtype)  # (n_rows,) n_u
        penalty = torch.tensor([reg] * d + [reg_bias], dtype=X.dtype)  # (d + 1,)
        theta = ridge_solve(blocks, X, ratings - mu - other_b[cols],
                            counts[:, None] ** nu * penalty, n_rows)  # (n_rows, d + 1)
        own.copy_(theta[:, :d])  # p_u
        own_b.copy_(theta[:, d])  # b_u


# per-solver (n_epochs, lr) defaults; n_epochs: the mean best epoch on u1..u5 validation
SOLVER_DEFAULTS = {"sgd": (100, 0.005), "adam": (45, 0.002), "als": (6, None)}


@dataclass
class MFConfig:
    """Hyperparameters of :class:`BiasedMF`.

    The defaults are the values that the validation search of the chapter "Matrix
    factorization" (:func:`recsys_ref.mf_tuning.explicit_search`, on 10% of u1's training
    data) chooses for ``nu``, ``reg`` and ``reg_bias`` at ``n_factors=100``; chapters that fit
    BiasedMF on the u-folds read each fold's own choice from
    :func:`recsys_ref.mf_tuning.mf_settings`.
    """

    n_factors: int = 100  # d
    solver: str = "adam"  # "sgd" (Funk), "adam", or "als" (alternating least squares)
    n_epochs: int | None = None  # maximum epochs (ALS: sweeps); None: the solver's default
    lr: float | None = None  # step size (sgd, adam); None: 0.005 for sgd, 0.002 for adam
    reg: float = 1.25  # lambda on the factors
    reg_bias: float = 0.5  # lambda_b on the biases
    nu: float = 0.5  # penalty of a user (item) grows as n_u ** nu: 1 per rating, 0 plain
    batch_size: int = 1024  # ratings per minibatch (sgd, adam)
    init_std: float = 0.1  # factors start as N(0, init_std^2)
    patience: int | None = 5  # evaluations without improvement before stopping (with valid)
    eval_every: int = 1  # epochs between validation evaluations
    # clip predictions: "train" = the training ratings' min..max; (low, high); None: no clip
    rating_range: tuple[float, float] | str | None = "train"
    seed: int = 0
    progress: bool = False  # tqdm progress bar

    def __post_init__(self):
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        # n_epochs and lr may be None: the solver's defaults (see schedule)
        check_config(self, positive_ints=("n_factors", "batch_size", "eval_every", "n_epochs"),
                     positive=("lr", "init_std"), nonnegative=("reg", "reg_bias", "nu"),
                     optional=("n_epochs", "lr"))
        self.rating_range = check_rating_range(self.rating_range)

    def schedule(self) -> tuple[int, float | None]:
        """``(n_epochs, lr)``, with the solver's defaults where they are ``None``."""
        n_epochs, lr = SOLVER_DEFAULTS[self.solver]
        return (n_epochs if self.n_epochs is None else self.n_epochs,
                lr if self.lr is None else self.lr)


class BiasedMF(ConfiguredRecommender):
    r"""Biased matrix factorization of explicit ratings (Koren, Bell and Volinsky 2009).

    .. math:: \hat r_{ui} = \mu + b_u + b_i + p_u^\top q_i

    fitted by minimising :func:`mf_objective` with minibatch SGD, Adam, or ALS
    (:func:`als_step`, alternating exact ridge solves). With ``valid`` given to :meth:`fit`,
    training stops when the validation RMSE has not improved for ``patience`` evaluations
    and the best epoch's parameters are kept (``best_epoch_``, ``history_``).

    Args:
        n_users, n_items: table sizes.
        config: an :class:`MFConfig`; keyword arguments override its fields,
            e.g. ``BiasedMF(n_users, n_items, solver="als", reg=0.1)``.

    See the chapter "Matrix factorization".
    """

    config_class = MFConfig

    def fit(self, train: pd.DataFrame, valid: pd.DataFrame | None = None) -> BiasedMF:
        """Fit on ``train``; early-stop on the RMSE of ``valid`` if given."""
        cfg = self.config
        n_epochs, lr = cfg.schedule()
        self._check_train(train, RATING_COLUMNS, rating_range=self.config.rating_range)
        self.rating_range_ = resolve_rating_range(self.config.rating_range, train["rating"])
        u, i = self._pairs(column(train, "user_idx"), column(train, "item_idx"))
        r = column(train, "rating", torch.float32)  # (n,)
        gen = seed_everything(cfg.seed)
        self.mu_ = float(r.double().mean())
        self.factors_ = Factors(self.n_users, self.n_items, cfg.n_factors,
                                init_std=cfg.init_std, generator=gen)
        counts = rating_counts(u, i, self.n_users, self.n_items)
        hyper = dict(mu=self.mu_, reg=cfg.reg, reg_bias=cfg.reg_bias, nu=cfg.nu)
        if cfg.solver == "als":
            blocks = {"users": row_blocks(u, i, self.n_users),
                      "items": row_blocks(i, u, self.n_items)}  # fixed for the whole fit

            def epoch(_):
                for side in ("users", "items"):
                    als_step(self.factors_, u, i, r, **hyper, side=side, blocks=blocks[side])
                with torch.no_grad():
                    loss = mf_objective(self.factors_, u, i, r, **hyper, counts=counts)
                return loss.item() / len(r)
        else:
            # fused Adam: one kernel for all parameters, 40% of an epoch's time saved on CPU;
            # plain SGD needs no optimizer state: its step is written out (sgd_step)
            opt = None if cfg.solver == "sgd" else \
                torch.optim.Adam(self.factors_.parameters(), lr=lr, fused=True)

            def epoch(_):
                total = 0.0
                for ub, ib, rb in minibatches(u, i, r, batch_size=cfg.batch_size, generator=gen):
                    if opt is None:
                        total += sgd_step(self.factors_, ub, ib, rb, **hyper, lr=lr,
                                          counts=counts)
                        continue
                    total += gradient_step(
                        opt, mf_objective(self.factors_, ub, ib, rb, **hyper, counts=counts))
                return total / len(r)

        eval_fn = None if valid is None else rmse_eval_fn(self, valid)
        result = fit_epochs(epoch, n_epochs, eval_fn=eval_fn, module=self.factors_,
                            higher_is_better=False, patience=cfg.patience,
                            eval_every=cfg.eval_every, progress=cfg.progress,
                            desc=f"BiasedMF ({cfg.solver})")
        self.history_, self.best_epoch_ = result.history, result.best_epoch
        return self

    def _clip(self, x: torch.Tensor) -> torch.Tensor:
        rr = self.rating_range_
        return x if rr is None else x.clamp(*rr)

    @torch.no_grad()
    def score(self, user_idx) -> torch.Tensor:
        """``(batch,) -> (batch, n_items)`` predicted ratings."""
        return self._clip(self.mu_ + self.factors_.score(self._users(user_idx)))

    @torch.no_grad()
    def predict(self, user_idx, item_idx) -> torch.Tensor:
        """``(n,), (n,) -> (n,)`` predicted ratings ``mu + b_u + b_i + p_u . q_i``."""
        user_idx, item_idx = self._pairs(user_idx, item_idx)
        return self._clip(self.mu_ + self.factors_(user_idx, item_idx))
