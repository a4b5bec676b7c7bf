r"""Implicit ALS: weighted matrix factorization (Hu, Koren and Volinsky 2008) with the
frequency-scaled regularisation of Rendle et al. (2022), "Revisiting the performance of iALS
on item recommendation benchmarks".

See the chapter "Matrix factorization".
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from recsys_ref.checks import check_config, check_positive_int
from recsys_ref.matrix import as_pattern, csr_pattern, pattern_rows, sorted_pairs
from recsys_ref.models.base import ConfiguredRecommender
from recsys_ref.models.mf import Factors
from recsys_ref.training import (
    fit_from_config,
    gather_rows,
    ranking_eval_fn,
    ridge_dual_block,
    ridge_solve,
    row_blocks,
    seed_everything,
)

SOLVERS = ("cholesky", "cg")


def ials_penalty(counts: torch.Tensor, n_other: int, alpha0: float, reg: float,
                 nu: float) -> torch.Tensor:
    r"""Per-row ridge weights :math:`\lambda (|I_u| + \alpha_0 |I|)^\nu`, ``(n_rows,)``."""
    return reg * (counts + alpha0 * n_other) ** nu


def ials_objective(W: torch.Tensor, H: torch.Tensor, mask: torch.Tensor, alpha0: float,
                   reg: float, nu: float = 1.0) -> torch.Tensor:
    r"""The iALS loss of Rendle et al. (2022), computed densely (a reference, for tests).

    .. math::
        L = \sum_{(u,i) \in S} (1 - w_u^\top h_i)^2 + \alpha_0 \sum_{u, i} (w_u^\top h_i)^2
          + \lambda \Big( \sum_u (|I_u| + \alpha_0 |I|)^\nu \|w_u\|^2
          + \sum_i (|U_i| + \alpha_0 |U|)^\nu \|h_i\|^2 \Big)

    Args:
        W: ``(n_users, d)`` user factors; H: ``(n_items, d)`` item factors.
        mask: ``(n_users, n_items)`` bool, the observed set :math:`S`.
        alpha0: the unobserved weight :math:`\alpha_0`; reg: :math:`\lambda`;
        nu: the frequency exponent :math:`\nu` (1: scale by frequency, 0: plain ridge).

    Returns:
        A scalar tensor. See the chapter "Matrix factorization".
    """
    S = W @ H.T  # (n_users, n_items)
    m = mask.to(S.dtype)
    fit = (m * (1 - S) ** 2).sum() + alpha0 * (S * S).sum()
    pen_u = ials_penalty(m.sum(1), mask.shape[1], alpha0, reg, nu)  # (n_users,)
    pen_i = ials_penalty(m.sum(0), mask.shape[0], alpha0, reg, nu)  # (n_items,)
    return fit + (pen_u * (W * W).sum(1)).sum() + (pen_i * (H * H).sum(1)).sum()


def observed_scores(W: torch.Tensor, H: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """``(nnz,)`` scores :math:`w_u^\\top h_i` of the stored entries of the CSR pattern ``M``
    (``(n_rows, n_cols)``), in its order: ``O(nnz d)`` work, no ``(nnz, d)`` gather."""
    return torch.sparse.sampled_addmm(M, W, H.T, beta=0.0).values()


def ials_loss(W: torch.Tensor, H: torch.Tensor, mask: torch.Tensor, alpha0: float, reg: float,
              nu: float = 1.0) -> torch.Tensor:
    r""":func:`ials_objective` without the dense ``(n_users, n_items)`` score matrix.

    The unobserved term is a trace of two ``(d, d)`` Gramians,
    :math:`\sum_{u,i} (w_u^\top h_i)^2 = \mathrm{tr}(W^\top W \, H^\top H)`, and the
    observed term needs the scores of the observed pairs only: ``O((|S| + n) d)`` work.

    Args:
        W, H: as in :func:`ials_objective`.
        mask: the observed set, a ``(n_users, n_items)`` sparse CSR pattern
            (:func:`recsys_ref.matrix.csr_pattern`) or dense bool tensor.
        alpha0, reg, nu: as in :func:`ials_objective`.

    Returns:
        A scalar tensor, equal to :func:`ials_objective` up to rounding.
        See the chapter "Matrix factorization".
    """
    M = _pattern(mask, W.dtype)
    s = observed_scores(W, H, M)  # (|S|,) observed scores
    fit = ((1 - s) ** 2).sum() + alpha0 * ((W.T @ W) * (H.T @ H)).sum()
    n_u = M.crow_indices().diff().to(W.dtype)  # (n_users,) |I_u|
    n_i = torch.bincount(M.col_indices(), minlength=len(H)).to(W.dtype)  # (n_items,) |U_i|
    pen_u = ials_penalty(n_u, len(H), alpha0, reg, nu)  # (n_users,)
    pen_i = ials_penalty(n_i, len(W), alpha0, reg, nu)  # (n_items,)
    return fit + (pen_u * (W * W).sum(1)).sum() + (pen_i * (H * H).sum(1)).sum()


def _pattern(mask, dtype: torch.dtype) -> torch.Tensor:
    M = as_pattern(mask)
    return M if M.dtype == dtype else M.to(dtype)


def ials_step(W: torch.Tensor, H: torch.Tensor, mask: torch.Tensor, alpha0: float, reg: float,
              nu: float = 1.0, solver: str = "cholesky", cg_steps: int = 3, blocks=None,
              ) -> torch.Tensor:
    r"""New user factors: :func:`ials_objective` minimised over ``W`` with ``H`` fixed.

    Each user's problem is a ridge regression whose Gram matrix splits into a part shared by
    every user and a part over the user's own items only (the "Gramian trick"):

    .. math::
        w_u = \Big( \alpha_0 H^\top H + \sum_{i \in I_u} h_i h_i^\top
              + \lambda (|I_u| + \alpha_0 |I|)^\nu \, I \Big)^{-1} \sum_{i \in I_u} h_i

    ``"cholesky"`` solves it exactly, all users batched
    (:func:`~recsys_ref.training.ridge_solve`; a user with fewer than ``d`` items by the
    equivalent ``(|I_u|, |I_u|)`` system of the Woodbury identity); ``"cg"`` runs
    ``cg_steps`` conjugate-gradient steps from the current ``W`` (Takacs et al. 2011),
    whose products :math:`A_u v` need no per-user matrix: their sparse part is a sampled
    product on the observed entries (``torch.sparse.sampled_addmm``) followed by a
    sparse-dense product, ``O(|S| d)``. For the items, pass ``(H, W, mask.T)``. Memory is
    ``O(|S| + (n_users + n_items) d)`` plus, for ``"cholesky"``, one block of 32 users'
    ``(d, d)`` matrices at a time.

    Args:
        W: ``(n_users, d)`` current user factors (the CG starting point).
        H: ``(n_items, d)`` fixed item factors.
        mask: the observed set: a ``(n_users, n_items)`` sparse CSR pattern
            (:func:`recsys_ref.matrix.csr_pattern`) or a dense bool tensor.
        alpha0, reg, nu: as in :func:`ials_objective`.
        solver: ``"cholesky"`` or ``"cg"``.
        cg_steps: conjugate-gradient steps (``"cg"`` only).
        blocks: :func:`~recsys_ref.training.row_blocks` of ``mask`` (``"cholesky"`` only;
            computed if ``None``).

    Returns:
        ``(n_users, d)`` new user factors. See the chapter "Matrix factorization".
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    M = _pattern(mask, H.dtype)  # (n_users, n_items) CSR, 1 on the observed set
    n_rows, d = W.shape
    gram = alpha0 * (H.T @ H)  # (d, d), shared by every user
    counts = M.crow_indices().diff().to(H.dtype)  # (n_users,) |I_u|
    penalty = ials_penalty(counts, M.shape[1], alpha0, reg, nu)  # (n_users,)
    if solver == "cholesky":
        if blocks is None:
            blocks = row_blocks(pattern_rows(M), M.col_indices(), n_rows)
        # rows with fewer entries than d: a smaller system (Woodbury); needs penalty > 0
        short = [b for b in blocks if b[1].shape[1] < d] if reg > 0 else []
        y = H.new_ones(M._nnz())  # target 1 on every observed entry
        out = ridge_solve(blocks[len(short):] if short else blocks, H, y,
                          penalty[:, None].expand(n_rows, d), n_rows, gram)
        return _solve_short_rows(short, H, penalty, gram, out)

    def A(V):  # (n_users, d) -> (n_users, d): A_u v_u for every user at once
        S = torch.sparse.sampled_addmm(M, V, H.T, beta=0.0)  # CSR: v_u^T h_i on the pattern
        return S @ H + V @ gram + penalty[:, None] * V

    X = W.clone()
    R = M @ H - A(X)  # (n_users, d) residuals b - A x
    P, rs = R.clone(), (R * R).sum(1)  # search directions, squared residual norms
    for _ in range(check_positive_int(cg_steps, "cg_steps")):
        AP = A(P)
        den = (P * AP).sum(1)
        alpha = torch.where(den > 0, rs / den.clamp(min=1e-30), 0.0)[:, None]  # (n_users, 1)
        X, R = X + alpha * P, R - alpha * AP
        rs_new = (R * R).sum(1)
        P = R + torch.where(rs > 0, rs_new / rs.clamp(min=1e-30), 0.0)[:, None] * P
        rs = rs_new
    return X


def _solve_short_rows(blocks, H: torch.Tensor, penalty: torch.Tensor, gram: torch.Tensor,
                      out: torch.Tensor) -> torch.Tensor:
    r""":func:`ials_step`'s exact solve for rows with ``L < d`` entries, written into ``out``.

    With :math:`G = Q \Lambda Q^\top` (one eigendecomposition per half-sweep) the shared
    part :math:`B_u = G + p_u I = Q (\Lambda + p_u I) Q^\top` is diagonal in the rotated
    basis :math:`Z = H Q`, and the Woodbury identity gives, with :math:`Z_u` the user's
    ``(L, d)`` rows and :math:`D_u = (\Lambda + p_u I)^{-1}`,

    .. math::
        w_u = (B_u + H_u^\top H_u)^{-1} H_u^\top 1
            = Q D_u Z_u^\top (I_L + Z_u D_u Z_u^\top)^{-1} 1:

    an ``(L, L)`` Cholesky factorisation instead of a ``(d, d)`` one, ``O(L^2 d)`` work
    instead of ``O(L d^2 + d^3)``. Blocks come from :func:`~recsys_ref.training.row_blocks`
    (padding: a zero row of ``Z`` and a zero target).
    """
    if not blocks:
        return out
    lam, Q = torch.linalg.eigh(gram.double())  # (d,), (d, d): gram = Q diag(lam) Q^T
    lam, Q = lam.clamp(min=0).to(H.dtype), Q.to(H.dtype)
    Z = torch.cat([H @ Q, H.new_zeros(1, H.shape[1])])  # (n_cols + 1, d); index -1: padding
    for r, c, _ in blocks:  # the dual ridge solve in the rotated basis, rotated back
        Zb = gather_rows(Z, c % len(Z))  # (g, L, d); column -1 is the zero row
        out.index_copy_(0, r, ridge_dual_block(Zb, (c >= 0).to(H.dtype), lam + penalty[r, None])
                        @ Q.T)
    return out


@dataclass
class IALSConfig:
    """Hyperparameters of :class:`IALS`.

    The defaults are starting values. The chapters fit iALS with the setting that the
    validation search of the chapter "Matrix factorization" chooses
    (:func:`recsys_ref.mf_tuning.implicit_settings`), never with settings tuned elsewhere.
    """

    n_factors: int = 128  # d
    n_epochs: int = 15  # maximum sweeps (users, then items)
    reg: float = 0.003  # lambda, scaled per row by (count + alpha0 * n_other) ** nu
    alpha0: float = 0.5  # weight of every (user, item) cell pushed towards 0
    nu: float = 1.0  # frequency-scaling exponent (0: the same lambda for every row)
    solver: str = "cholesky"  # "cholesky" (exact) or "cg" (cg_steps conjugate-gradient steps)
    cg_steps: int = 3
    init_std: float = 0.1  # factors start as N(0, init_std^2 / d)
    patience: int | None = 5  # evaluations without improvement before stopping (with valid)
    eval_every: int = 1  # sweeps between validation evaluations
    metric: str = "NDCG@10"  # validation metric for early stopping
    seed: int = 0
    progress: bool = False  # tqdm progress bar

    def __post_init__(self):
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        check_config(self, positive_ints=("n_factors", "n_epochs", "cg_steps", "eval_every"),
                     positive=("init_std",), nonnegative=("reg", "alpha0", "nu"))
        if self.reg == 0 and self.alpha0 == 0:
            raise ValueError("reg and alpha0 cannot both be 0 (the ridge problems are singular)")


class IALS(ConfiguredRecommender):
    r"""Implicit alternating least squares with frequency-scaled regularisation.

    Scores :math:`\hat y_{ui} = w_u^\top h_i`; every training pair is a 1 (ratings are
    ignored), every cell is pulled towards 0 with weight :math:`\alpha_0`, and alternating
    exact solves (:func:`ials_step`) minimise :func:`ials_objective`. With ``valid`` given to
    :meth:`fit`, the sweep with the best validation ``metric`` is kept.

    :meth:`fit` is sparse: the observed set is held as CSR patterns and padded row blocks,
    the per-sweep loss uses :func:`ials_loss`, so fitting takes ``O(nnz + (n_users +
    n_items) d)`` memory and nothing of size ``(n_users, n_items)``; :meth:`score` allocates
    ``(batch, n_items)`` only.

    Args:
        n_users, n_items: table sizes.
        config: an :class:`IALSConfig`; keyword arguments override its fields.

    See the chapter "Matrix factorization".
    """

    config_class = IALSConfig

    def fit(self, train: pd.DataFrame, valid: pd.DataFrame | None = None) -> IALS:
        """Fit on the (distinct) pairs of ``train``; early-stop on ``valid`` if given."""
        cfg = self.config
        self._check_train(train)
        users, items = sorted_pairs(train, self.n_items)  # (n_pairs,) the observed set
        # the observed set as sparse CSR patterns, one per side: nothing (n_users, n_items)
        M = {"users": csr_pattern(users, items, self.n_users, self.n_items),
             "items": csr_pattern(items, users, self.n_items, self.n_users)}
        n_pairs = len(users)
        gen = seed_everything(cfg.seed)
        self.factors_ = Factors(self.n_users, self.n_items, cfg.n_factors, user_bias=False,
                                item_bias=False, init_std=cfg.init_std / cfg.n_factors ** 0.5,
                                generator=gen)
        f = self.factors_
        f.requires_grad_(False)  # closed-form updates only
        # the sparsity pattern is fixed: build the padded blocks once per side
        blocks = {"users": None, "items": None}
        if cfg.solver == "cholesky":
            blocks = {"users": row_blocks(users, items, self.n_users),
                      "items": row_blocks(items, users, self.n_items)}
        hyper = dict(alpha0=cfg.alpha0, reg=cfg.reg, nu=cfg.nu, solver=cfg.solver,
                     cg_steps=cfg.cg_steps)

        def epoch(_):
            f.P.copy_(ials_step(f.P, f.Q, M["users"], **hyper, blocks=blocks["users"]))
            f.Q.copy_(ials_step(f.Q, f.P, M["items"], **hyper, blocks=blocks["items"]))
            return ials_loss(f.P, f.Q, M["users"], cfg.alpha0, cfg.reg, cfg.nu).item() / n_pairs

        eval_fn = None if valid is None else ranking_eval_fn(self, valid, train, cfg.metric)
        result = fit_from_config(epoch, cfg, module=f, eval_fn=eval_fn, desc="iALS")
        self.history_, self.best_epoch_ = result.history, result.best_epoch
        return self

    @torch.no_grad()
    def score(self, user_idx) -> torch.Tensor:
        """``(batch,) -> (batch, n_items)``: ``w_u H^T``."""
        return self.factors_.score(self._users(user_idx))
