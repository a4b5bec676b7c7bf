"""Data-parallel BPR with ``torch.distributed``: DistributedDataParallel on the gloo backend
(CPU), users sharded across processes.

Every process holds the whole model. For each *global* minibatch (the same on every process:
they share the seed), process ``r`` computes the BPR loss of the pairs whose user satisfies
``user % world_size == r``; DDP all-reduces (averages) the gradients, and every process takes
the same Adam step. The loss is scaled by ``world_size``, so the averaged gradient is the
gradient of the whole global batch's loss: the same step a single process takes on the same
batch, up to the order of floating-point additions. Negatives are drawn for the global batch
from a sparse per-user item set (:meth:`recsys_ref.matrix.UserItems.contains`), never from a
dense ``(n_users, n_items)`` mask.

Launch with :func:`fit_bpr_distributed` (``torch.multiprocessing.spawn``) or with ``torchrun``
(``python -m torch.distributed.run --nproc-per-node 2 -m recsys_ref.distributed PAIRS OUT``).
See the appendix "Your own data, at scale".
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from recsys_ref.checks import check_interactions, check_positive_int
from recsys_ref.matrix import UserItems, column
from recsys_ref.models.bpr import BPR, BPRConfig, bpr_loss
from recsys_ref.models.mf import Factors
from recsys_ref.training import gradient_step, minibatches, seed_everything


class _BPRObjective(nn.Module):
    """The BPR loss as a module: DDP synchronises gradients of what its ``forward`` computes."""

    def __init__(self, factors: Factors, reg: float):
        super().__init__()
        self.factors, self.reg = factors, reg

    def forward(self, users, pos, neg):
        return bpr_loss(self.factors, users, pos, neg, self.reg)


def sample_negatives_sparse(users: torch.Tensor, n_items: int, n_negatives: int,
                            seen: UserItems, generator: torch.Generator) -> torch.Tensor:
    """``(n, n_negatives)`` items drawn uniformly among those each user has not seen.

    The same rejection scheme as :func:`recsys_ref.models.bpr.sample_negatives` (draw for
    everyone, redraw the collisions), with membership looked up in the sparse ``seen``.
    """
    neg = torch.randint(n_items, (len(users), n_negatives), generator=generator)
    bad = seen.contains(users[:, None], neg)  # (n, n_negatives)
    while bad.any():
        neg[bad] = torch.randint(n_items, (int(bad.sum()),), generator=generator)
        bad = seen.contains(users[:, None], neg)
    return neg


def _train(rank: int, world_size: int, users: torch.Tensor, items: torch.Tensor,
           n_users: int, n_items: int, cfg: BPRConfig):
    """The training loop one process runs; returns ``(state_dict, history)``."""
    gen = seed_everything(cfg.seed)
    factors = Factors(n_users, n_items, cfg.n_factors, user_bias=False,
                      item_bias=cfg.item_bias, init_std=cfg.init_std, generator=gen)
    objective = _BPRObjective(factors, cfg.reg)
    # DDP broadcasts rank 0's parameters once (they are equal already: same seed), then
    # all-reduces gradients during backward
    net = objective if world_size == 1 else DistributedDataParallel(objective)
    opt = torch.optim.Adam(factors.parameters(), lr=cfg.lr)
    seen = UserItems.from_pairs(users, items, n_users, n_items)
    history = []
    for _ in range(cfg.n_epochs):
        start, total = time.perf_counter(), torch.zeros(1, dtype=torch.float64)
        for u, i in minibatches(users, items, batch_size=cfg.batch_size, generator=gen):
            j = sample_negatives_sparse(u, n_items, cfg.n_negatives, seen, gen)  # (b, k)
            mine = u % world_size == rank  # this process's users
            # x world_size: DDP averages the gradients, we want the global batch's sum
            loss = net(u[mine], i[mine], j[mine]) * world_size
            total += gradient_step(opt, loss) / world_size
        if world_size > 1:
            dist.all_reduce(total)  # the global batch's loss, summed over processes
        history.append({"loss": float(total) / (len(users) * cfg.n_negatives),
                        "seconds": time.perf_counter() - start})
    return factors.state_dict(), history


def _worker(rank, world_size, port, users, items, n_users, n_items, cfg, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size)
    try:
        state, history = _train(rank, world_size, users, items, n_users, n_items, cfg)
        if rank == 0:
            torch.save({"state": state, "history": history}, out)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pairs(train: pd.DataFrame, n_users: int, n_items: int):
    """Distinct training pairs sorted by (user, item), as :class:`BPR` orders them."""
    check_interactions(train, "train", n_users, n_items)
    keys = torch.sort(column(train, "user_idx") * n_items + column(train, "item_idx")).values
    return keys // n_items, keys % n_items


def _model(n_users, n_items, cfg, state, history) -> BPR:
    model = BPR(n_users, n_items, cfg)
    model.factors_ = Factors(n_users, n_items, cfg.n_factors, user_bias=False,
                             item_bias=cfg.item_bias)
    model.factors_.load_state_dict(state)
    model.factors_.requires_grad_(False)
    model.history_, model.best_epoch_ = pd.DataFrame(history), cfg.n_epochs
    return model


def fit_bpr_distributed(train: pd.DataFrame, n_users: int, n_items: int,
                        world_size: int = 2, config: BPRConfig | None = None,
                        **overrides) -> BPR:
    """Fit :class:`~recsys_ref.models.bpr.BPR` data-parallel on ``world_size`` processes.

    ``config.batch_size`` is the *global* batch (each process computes about
    ``batch_size / world_size`` of it). Every epoch runs (no early stopping: validation
    would have to be sharded too). With ``world_size=1`` the loop runs in this process,
    without a process group: the reference the distributed result is compared with.

    Args:
        train: ``user_idx, item_idx`` training pairs (distinct).
        n_users, n_items: sizes.
        world_size: number of processes (gloo on CPU, one thread each).
        config: a :class:`~recsys_ref.models.bpr.BPRConfig`; keyword arguments override it.

    Returns:
        A fitted :class:`~recsys_ref.models.bpr.BPR` (``history_`` has each epoch's loss and
        seconds on process 0).
    """
    world_size = check_positive_int(world_size, "world_size")
    cfg = replace(config or BPRConfig(), **overrides)
    users, items = _pairs(train, n_users, n_items)
    if world_size == 1:
        state, history = _train(0, 1, users, items, n_users, n_items, cfg)
        return _model(n_users, n_items, cfg, state, history)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rank0.pt"
        mp.spawn(_worker, args=(world_size, _free_port(), users, items, n_users, n_items, cfg,
                                out), nprocs=world_size, join=True)
        result = torch.load(out, weights_only=False)
    return _model(n_users, n_items, cfg, result["state"], result["history"])


def main(argv=None) -> None:
    """``torchrun`` entry point: ``PAIRS`` is a ``torch.save``d dict with ``users, items``
    tensors (distinct pairs sorted by user, item) and ``n_users, n_items``; process 0 saves
    the factors and the history to ``OUT``. Options set
    :class:`~recsys_ref.models.bpr.BPRConfig` fields."""
    parser = argparse.ArgumentParser(prog="python -m recsys_ref.distributed")
    parser.add_argument("pairs")
    parser.add_argument("out")
    for name in ("n_factors", "n_epochs", "batch_size", "n_negatives", "seed"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int)
    for name in ("lr", "reg"):
        parser.add_argument(f"--{name}", type=float)
    args = vars(parser.parse_args(argv))
    pairs, out = torch.load(args.pop("pairs")), args.pop("out")
    cfg = replace(BPRConfig(), **{k: v for k, v in args.items() if v is not None})
    torch.set_num_threads(1)
    dist.init_process_group("gloo")  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR/PORT
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        state, history = _train(rank, world, pairs["users"], pairs["items"], pairs["n_users"],
                                pairs["n_items"], cfg)
        if rank == 0:
            torch.save({"state": state, "history": history}, out)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
