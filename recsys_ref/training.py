"""The one training loop of the book: seeding, minibatches, epochs, early stopping, history;
and the batched ridge solves that alternating-least-squares sweeps are made of.

Every trained model of ``recsys_ref`` goes through :func:`fit_epochs`, whether an epoch is a
pass of minibatch SGD or one sweep of alternating least squares: the model supplies what one
epoch does and how to score the validation data, and the loop does the rest (progress bar,
evaluation every ``eval_every`` epochs, patience, restoring the best parameters, a history the
chapters plot). See the chapter "Matrix factorization".
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from recsys_ref import metrics
from recsys_ref.checks import check_frame, check_positive_int
from recsys_ref.matrix import column
from recsys_ref.progress import progress_bar


def gather_rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]``: the rows of an ``(n, d)`` table (or the entries of an ``(n,)``
    vector) for an index of any shape, ``index.shape + table.shape[1:]``.

    The same values and, bit for bit, the same gradient as ``F.embedding(index, table)`` and
    ``table[index]`` (all three add the rows' gradients in index order), but faster to
    back-propagate: the backward of ``index_select`` is one ``index_add_``, where the
    embedding's adds one row at a time (4x faster with 16,384 indices into a 100,000 x 32
    table). Embedding lookups of the models here go through it.
    """
    return table.index_select(0, index.reshape(-1)).view(*index.shape, *table.shape[1:])


def minus_inf_mask(mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``-inf`` where ``mask`` is True, ``0.0`` elsewhere: an additive logit mask, built
    outside autograd and without branches.

    The values of ``torch.where(mask, -inf, 0.0)``, 10x faster on masks that are True at
    random a good share of the time, such as the two-tower's in-batch masks (``where`` then
    runs at the speed of the processor's branch mispredictions, 3 ms per million entries
    here): the 0/1 mask times the bit pattern of ``-inf``, read as floats. ``dtype``:
    float32 or float64.
    """
    if dtype not in _MINUS_INF_BITS:
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    int_dtype, bits = _MINUS_INF_BITS[dtype]
    return (mask.to(int_dtype) * bits).view(dtype)


# the integer type of each float type's width, and -inf's bit pattern in it (0xFF800000 and
# 0xFFF0000000000000 as signed integers)
_MINUS_INF_BITS = {torch.float32: (torch.int32, -0x800000),
                   torch.float64: (torch.int64, -0x10000000000000)}


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python's, NumPy's and torch's global generators; return a fresh seeded generator.

    Models draw every random number (initialisation, shuffling, negative samples) from the
    returned :class:`torch.Generator`, so a fit depends on ``seed`` alone and not on what ran
    before it; the global seeds only cover code that ignores the generator.

    Args:
        seed: a non-negative integer.

    Returns:
        A ``torch.Generator`` (CPU) seeded with ``seed``.
    """
    seed = check_positive_int(seed, "seed", minimum=0)
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - seeding the legacy global state is the point here
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def minibatches(*tensors: torch.Tensor, batch_size: int, shuffle: bool = True,
                generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, ...]]:
    """Yield aligned minibatches of rows of ``tensors``, in a seeded random order.

    The permutation is applied once per call (one gather per tensor), and each batch is then a
    contiguous slice: no per-example Python work.

    Args:
        tensors: tensors with the same first dimension ``n`` (e.g. users, items, ratings).
        batch_size: rows per batch; the last batch may be smaller.
        shuffle: permute the rows first (with ``generator``).
        generator: the source of the permutation (see :func:`seed_everything`).

    Returns:
        An iterator of tuples ``(t1[batch], t2[batch], ...)``.
    """
    batch_size = check_positive_int(batch_size, "batch_size")
    if not tensors:
        raise ValueError("minibatches needs at least one tensor")
    n = len(tensors[0])
    if any(len(t) != n for t in tensors):
        raise ValueError(f"tensors must have the same length, got {[len(t) for t in tensors]}")
    if shuffle:
        order = torch.randperm(n, generator=generator)  # (n,)
        tensors = tuple(t[order] for t in tensors)
    for start in range(0, n, batch_size):
        yield tuple(t[start:start + batch_size] for t in tensors)


def rmse_eval_fn(model, valid: pd.DataFrame) -> Callable[[], float]:
    """A validation function for :func:`fit_epochs`: RMSE of ``model.predict`` on ``valid``.

    Lower is better (pass ``higher_is_better=False``). The frame is read once, here.
    """
    check_frame(valid, "valid", ["user_idx", "item_idx", "rating"])
    users, items = column(valid, "user_idx"), column(valid, "item_idx")  # (n,)
    ratings = column(valid, "rating", torch.float32)  # (n,)
    return lambda: metrics.rmse(model.predict(users, items), ratings)


def ranking_eval_fn(model, valid: pd.DataFrame, exclude, metric: str = "NDCG@10",
                    ) -> Callable[[], float]:
    """A validation function for :func:`fit_epochs`: a full-ranking metric on ``valid``.

    Args:
        model: the model being trained (scored through its ``score``).
        valid: the validation interactions (``user_idx, item_idx``).
        exclude: frame(s) masked before ranking, usually the training frame.
        metric: a key of :func:`recsys_ref.evaluation.evaluate_ranking`'s result, e.g.
            ``"NDCG@10"``, ``"Recall@20"``.
    """
    # imported here: recsys_ref.evaluation imports the models package, whose models import
    # this module, so a top-level import would be circular
    from recsys_ref.evaluation import evaluate_ranking

    check_frame(valid, "valid", ["user_idx", "item_idx"])
    name, _, k = metric.partition("@")
    if name not in ("HR", "Precision", "Recall", "NDCG", "MAP", "Coverage") or not k.isdigit():
        raise ValueError(f"metric must look like 'NDCG@10' or 'Recall@20', got {metric!r}")
    return lambda: evaluate_ranking(model, valid, exclude, ks=(int(k),))[metric]


@dataclass
class FitResult:
    """What :func:`fit_epochs` returns.

    ``history`` has one dict per epoch: ``epoch`` (1-based), ``loss`` (what ``epoch_fn``
    returned), ``valid`` (the validation metric, NaN when not evaluated that epoch),
    ``seconds`` (that epoch's training time, evaluation excluded) and ``elapsed`` (wall time
    since the start, evaluation included); ``pandas.DataFrame(history)`` is ready to plot.
    """

    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None  # epoch whose parameters were kept (None: no validation)
    best_valid: float | None = None  # its validation metric
    stopped_early: bool = False  # True if patience ran out before n_epochs


def fit_epochs(
    epoch_fn: Callable[[int], float | None],
    n_epochs: int,
    *,
    eval_fn: Callable[[], float] | None = None,
    module: torch.nn.Module | None = None,
    higher_is_better: bool = True,
    patience: int | None = None,
    eval_every: int = 1,
    progress: bool = False,
    desc: str | None = None,
) -> FitResult:
    """Run ``n_epochs`` epochs with optional validation, early stopping and best-state restore.

    After every ``eval_every``-th epoch (and the last one) ``eval_fn()`` scores the model on
    validation data. The parameters of the best evaluation so far are copied from
    ``module.state_dict()``; after ``patience`` evaluations in a row without improvement the
    loop stops, and in any case the best copy is loaded back at the end, so the model leaves
    the loop in its best validated state.

    Args:
        epoch_fn: ``epoch_fn(epoch)`` trains one epoch (``epoch`` is 1-based) and returns its
            training loss (or ``None``).
        n_epochs: maximum number of epochs.
        eval_fn: returns the validation metric of the current parameters; ``None`` trains for
            exactly ``n_epochs`` with no evaluation.
        module: holds the parameters to keep and restore (anything with ``state_dict`` and
            ``load_state_dict``); required with ``eval_fn``.
        higher_is_better: ``True`` for NDCG-like metrics, ``False`` for RMSE-like ones.
        patience: evaluations without improvement before stopping; ``None`` never stops early.
        eval_every: evaluate every this many epochs (evaluation can cost more than an epoch).
        progress: show a tqdm progress bar.
        desc: the progress bar's label.

    Returns:
        A :class:`FitResult`. See the chapter "Matrix factorization".

    Raises:
        FloatingPointError: an epoch's loss or a validation metric is NaN or infinite (the
            message names the epoch and the value): a diverged model is never kept.
    """
    n_epochs = check_positive_int(n_epochs, "n_epochs")
    eval_every = check_positive_int(eval_every, "eval_every")
    if patience is not None:
        patience = check_positive_int(patience, "patience")
    if eval_fn is not None and module is None:
        raise ValueError("module must be given with eval_fn (its best state is restored)")
    result, best_state, bad_evals = FitResult(), None, 0
    start = time.perf_counter()
    bar = progress_bar(range(1, n_epochs + 1), progress, desc=desc, leave=False)
    for epoch in bar:
        t0 = time.perf_counter()
        try:
            loss = epoch_fn(epoch)
        except FloatingPointError as e:  # from gradient_step: say which epoch
            bar.close()
            raise FloatingPointError(f"{desc or 'training'}, epoch {epoch}: {e}") from None
        row = {"epoch": epoch, "loss": math.nan if loss is None else float(loss),
               "valid": math.nan, "seconds": time.perf_counter() - t0}
        if loss is not None and not math.isfinite(row["loss"]):
            bar.close()
            raise FloatingPointError(
                f"{desc or 'training'}: the training loss of epoch {epoch} is {row['loss']} "
                f"(diverged); lower the learning rate or raise the regularisation")
        if eval_fn is not None and (epoch % eval_every == 0 or epoch == n_epochs):
            value = float(eval_fn())
            if not math.isfinite(value):
                bar.close()
                raise FloatingPointError(f"{desc or 'training'}: the validation metric of epoch "
                                         f"{epoch} is {value}")
            row["valid"] = value
            improved = result.best_valid is None or (
                value > result.best_valid if higher_is_better else value < result.best_valid)
            if improved:
                result.best_epoch, result.best_valid, bad_evals = epoch, value, 0
                # deepcopy: state_dict() returns references that later epochs would overwrite
                best_state = copy.deepcopy(module.state_dict())
            else:
                bad_evals += 1
        row["elapsed"] = time.perf_counter() - start
        result.history.append(row)
        bar.set_postfix(loss=row["loss"], valid=row["valid"], refresh=False)
        if patience is not None and bad_evals >= patience:
            result.stopped_early = epoch < n_epochs
            break
    bar.close()
    if best_state is not None:
        module.load_state_dict(best_state)
    return result


def fit_from_config(epoch_fn: Callable[[int], float | None], config, *,
                    module: torch.nn.Module, eval_fn: Callable[[], float] | None = None,
                    higher_is_better: bool = True, desc: str | None = None) -> FitResult:
    """:func:`fit_epochs` with ``n_epochs``, ``patience``, ``eval_every`` and ``progress`` read
    from a model's config (every trained model's config has these four fields)."""
    return fit_epochs(epoch_fn, config.n_epochs, eval_fn=eval_fn, module=module,
                      higher_is_better=higher_is_better, patience=config.patience,
                      eval_every=config.eval_every, progress=config.progress, desc=desc)


def gradient_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> float:
    """Zero the gradients, back-propagate ``loss`` and take one optimizer step.

    Returns:
        ``loss`` as a float, for the epoch's running total.

    Raises:
        FloatingPointError: ``loss`` is NaN or infinite (nothing is updated).
    """
    if not torch.isfinite(loss).all():
        raise FloatingPointError(f"the training loss is {loss.item()} (diverged); lower the "
                                 f"learning rate or raise the regularisation")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


# ----------------------------------------------------------------------------- ALS sweeps


def row_blocks(rows: torch.Tensor, cols: torch.Tensor, n_rows: int, block_size: int = 32):
    """Group the entries of a sparse matrix by row, in padded blocks of similar-length rows.

    Rows are sorted by their number of entries and cut into blocks of ``block_size``; within a
    block every row is padded to the longest one, so a block is one batched matrix product
    (padding wastes about 10% on MovieLens, where a dense mask would waste 94%).

    Args:
        rows, cols: ``(n,)`` coordinates of the entries (e.g. users and items of ratings).
        n_rows: number of rows; rows without entries appear in no block.
        block_size: rows per block.

    Returns:
        A list of ``(row_ids (g,), col_ids (g, L), entry_ids (g, L))``; padded cells hold
        column ``-1`` and entry ``n`` (one past the last entry), which :func:`ridge_solve`
        maps to a zero feature row and a zero target.
    """
    counts = torch.bincount(rows, minlength=n_rows)  # (n_rows,)
    order = torch.argsort(rows, stable=True)  # entries grouped by row, in frame order
    starts = torch.cumsum(counts, 0) - counts  # (n_rows,) first position of each row
    by_len = torch.argsort(counts, stable=True)
    by_len = by_len[counts[by_len] > 0]
    blocks = []
    for s in range(0, len(by_len), block_size):
        r = by_len[s:s + block_size]  # (g,)
        pos = torch.arange(int(counts[r].max()))  # (L,)
        pad = pos[None, :] >= counts[r][:, None]  # (g, L) True on padding
        entry = gather_rows(order, (starts[r][:, None] + pos).clamp(max=len(rows) - 1))
        entry = entry.masked_fill(pad, len(rows))  # (g, L)
        col = gather_rows(cols, entry.clamp(max=len(rows) - 1)).masked_fill(pad, -1)
        blocks.append((r, col, entry))
    return blocks


def ridge_solve(blocks, X: torch.Tensor, y: torch.Tensor, reg: torch.Tensor, n_rows: int,
                gram: torch.Tensor | None = None) -> torch.Tensor:
    r"""Solve one ridge regression per row, batched by blocks (Cholesky).

    For every row :math:`r` with entries :math:`e \in E_r` in columns :math:`c(e)`:

    .. math::
        \theta_r = \arg\min_\theta \sum_{e \in E_r} (y_e - \theta^\top x_{c(e)})^2
            + \theta^\top (G + \mathrm{diag}(\rho_r)) \theta
        = \Big(\sum_{e} x_{c(e)} x_{c(e)}^\top + G + \mathrm{diag}(\rho_r)\Big)^{-1}
          \sum_{e} y_e x_{c(e)}

    Args:
        blocks: from :func:`row_blocks`.
        X: ``(n_cols, k)`` column features (the fixed side).
        y: ``(n,)`` targets of the entries.
        reg: ``(n_rows, k)`` diagonal penalties :math:`\rho_r`.
        n_rows: rows of the output.
        gram: optional ``(k, k)`` matrix :math:`G` shared by every row (iALS's
            :math:`\alpha_0 H^\top H`).

    Without ``G``, a block whose rows have fewer entries than features (``L < k``) and
    positive penalties is solved in its dual form (Woodbury), with :math:`X_r` the row's
    ``(L, k)`` features and :math:`D_r = \mathrm{diag}(\rho_r)`:

    .. math::
        \theta_r = D_r^{-1} X_r^\top (I_L + X_r D_r^{-1} X_r^\top)^{-1} y_r,

    an ``(L, L)`` Cholesky factorisation instead of a ``(k, k)`` one (the same minimiser; on
    MovieLens-100K's u1.base 69% of the users and 84% of the items have fewer than 101
    ratings, BiasedMF's ``k`` at 100 factors).

    Returns:
        ``(n_rows, k)``; rows without entries are 0. See the chapter "Matrix factorization".
    """
    X = torch.cat([X, X.new_zeros(1, X.shape[1])])  # (n_cols + 1, k): index -1 is a zero row
    y = torch.cat([y, y.new_zeros(1)])  # (n + 1,): entry n is padding
    out = X.new_zeros(n_rows, X.shape[1])
    # one Cholesky call per block of 32 rows: its (32, k, k) matrices stay in the cache
    # (calls over 1,000 rows at once ran 1.5-2x slower here)
    # gathers by gather_rows and index_copy_: the values of X[c] and out[r] = ..., 2-6x faster
    # (padding column -1 is the zero row n_cols: index_select takes no negative index)
    for r, c, e in blocks:
        Xb, yb = gather_rows(X, c % len(X)), gather_rows(y, e)  # (g, L, k), (g, L)
        reg_b = gather_rows(reg, r)  # (g, k)
        if gram is None and c.shape[1] < X.shape[1] and bool((reg_b > 0).all()):
            out.index_copy_(0, r, ridge_dual_block(Xb, yb, reg_b))
            continue
        A = Xb.mT @ Xb  # (g, k, k)
        A.diagonal(dim1=-2, dim2=-1).add_(reg_b)  # in place: no (g, k, k) diagonal matrix
        if gram is not None:
            A += gram
        b = (Xb * yb[:, :, None]).sum(1)[:, :, None]  # (g, k, 1); bmm with one column
        # ran 10x slower than this product and sum
        L, info = torch.linalg.cholesky_ex(A)  # info: no per-call error check
        if info.any():
            raise ValueError("ridge_solve: a row's system is not positive definite "
                             "(raise reg or gram)")
        out.index_copy_(0, r, torch.cholesky_solve(b, L)[:, :, 0])
    return out


def ridge_dual_block(Xb: torch.Tensor, yb: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    """The dual ridge solve of one block (see :func:`ridge_solve`; iALS's short rows use it in
    a rotated basis): ``Xb`` ``(g, L, k)`` with zero rows on padding, ``yb`` ``(g, L)`` with
    zero targets there, ``reg`` ``(g, k)`` positive; returns ``(g, k)``. A padded entry gives
    a decoupled unit row of the ``(L, L)`` system and a zero coefficient."""
    XD = Xb / reg[:, None, :]  # (g, L, k) rows of X_r D_r^{-1}
    K = XD @ Xb.mT  # (g, L, L)
    K.diagonal(dim1=-2, dim2=-1).add_(1.0)  # I_L + X_r D_r^{-1} X_r^T: eigenvalues >= 1
    L, info = torch.linalg.cholesky_ex(K)
    if info.any():
        raise ValueError("ridge_solve: a row's system is not positive definite")
    a = torch.cholesky_solve(yb[:, :, None], L)  # (g, L, 1)
    return (XD * a).sum(1)  # (g, k): D_r^{-1} X_r^T a, without a one-column bmm
