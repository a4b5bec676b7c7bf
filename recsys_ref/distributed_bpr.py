"""Data-parallel BPR: :class:`~recsys_ref.models.bpr.BPR`'s training loop as a task of the
:mod:`recsys_ref.distributed` loop (DDP on gloo, users sharded, the same global batches and
negatives on every process), and the ``torchrun`` entry point
(``python -m torch.distributed.run --nproc-per-node 2 -m recsys_ref.distributed_bpr PAIRS
OUT``). See the appendix "Your own data, at scale".
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import pandas as pd
import torch
import torch.distributed as dist
from torch import nn

from recsys_ref.distributed import (
    PairsTask,
    distinct_pairs,
    fit_distributed,
    train_shard,
    zero_loss,
)
from recsys_ref.models.bpr import BPR, OPTIMIZERS, BPRConfig, bpr_loss, sample_negatives
from recsys_ref.models.mf import Factors
from recsys_ref.training import minibatches


class _BPRObjective(nn.Module):
    """The BPR loss as a module: DDP synchronises gradients of what its ``forward`` computes."""

    def __init__(self, factors: Factors, reg: float):
        super().__init__()
        self.factors, self.reg = factors, reg

    def forward(self, users, pos, neg):
        if len(users) == 0:
            return zero_loss(self)
        return bpr_loss(self.factors, users, pos, neg, self.reg)


class BPRTask(PairsTask):
    """:class:`~recsys_ref.models.bpr.BPR`'s training loop as a
    :class:`recsys_ref.distributed.Task`: minibatches of the shuffled distinct pairs,
    ``n_negatives`` negatives each drawn by
    :func:`recsys_ref.models.bpr.sample_negatives` from the sparse seen-item set, the summed
    BPR loss, and ``cfg.optimizer`` (Adam, Adagrad or plain SGD, as in ``BPR.fit``)."""

    def build(self, generator):
        cfg = self.cfg
        factors = Factors(self.n_users, self.n_items, cfg.n_factors, user_bias=False,
                          item_bias=cfg.item_bias, init_std=cfg.init_std, generator=generator)
        return _BPRObjective(factors, cfg.reg)

    def optimizer(self, objective):
        return OPTIMIZERS[self.cfg.optimizer](objective.parameters(), self.cfg.lr)

    def batches(self, generator):
        k = self.cfg.n_negatives
        for u, i in minibatches(self.users, self.items, batch_size=self.cfg.batch_size,
                                generator=generator):
            j = sample_negatives(u, self.n_items, k, self.seen, generator)  # (b, k)
            yield u, (u, i, j), 1.0, len(u) * k  # the BPR loss is a sum over triples

    def result(self, state, history):
        cfg = self.cfg
        model = BPR(self.n_users, self.n_items, cfg)
        model.factors_ = Factors(self.n_users, self.n_items, cfg.n_factors, user_bias=False,
                                 item_bias=cfg.item_bias)
        model.factors_.load_state_dict({k.removeprefix("factors."): v
                                        for k, v in state.items()})
        model.factors_.requires_grad_(False)
        model.history_, model.best_epoch_ = pd.DataFrame(history), cfg.n_epochs
        return model


def bpr_task(train: pd.DataFrame, n_users: int, n_items: int,
             config: BPRConfig | None = None, valid: pd.DataFrame | None = None,
             **overrides) -> BPRTask:
    """The :class:`BPRTask` of :func:`fit_bpr_distributed` (same arguments), for
    :func:`recsys_ref.distributed.fit_distributed`."""
    cfg = replace(config or BPRConfig(), **overrides)
    users, items = distinct_pairs(train, n_users, n_items)
    return BPRTask(users, items, n_users, n_items, cfg, valid)


def fit_bpr_distributed(train: pd.DataFrame, n_users: int, n_items: int,
                        world_size: int = 2, config: BPRConfig | None = None,
                        valid: pd.DataFrame | None = None, **overrides) -> BPR:
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
        valid: optional validation interactions: ``config.metric`` on them (full ranking,
            training pairs excluded) is recorded after every epoch, to choose the number of
            epochs (no early stopping).

    Returns:
        A fitted :class:`~recsys_ref.models.bpr.BPR` (``history_`` has each epoch's loss,
        seconds and, with ``valid``, validation metric on process 0).
    """
    return fit_distributed(bpr_task(train, n_users, n_items, config, valid, **overrides),
                           world_size)


def main(argv=None) -> None:
    """``torchrun`` entry point: ``PAIRS`` is a ``torch.save``d dict with ``users, items``
    tensors (distinct pairs sorted by user, item) and ``n_users, n_items``; process 0 saves
    the parameters and the history to ``OUT``. Options set
    :class:`~recsys_ref.models.bpr.BPRConfig` fields."""
    parser = argparse.ArgumentParser(prog="python -m recsys_ref.distributed_bpr")
    parser.add_argument("pairs")
    parser.add_argument("out")
    for name in ("n_factors", "n_epochs", "batch_size", "n_negatives", "seed"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int)
    for name in ("lr", "reg"):
        parser.add_argument(f"--{name}", type=float)
    parser.add_argument("--optimizer", choices=tuple(OPTIMIZERS))
    args = vars(parser.parse_args(argv))
    pairs, out = torch.load(args.pop("pairs")), args.pop("out")
    cfg = replace(BPRConfig(), **{k: v for k, v in args.items() if v is not None})
    task = BPRTask(pairs["users"], pairs["items"], pairs["n_users"], pairs["n_items"], cfg)
    torch.set_num_threads(1)
    dist.init_process_group("gloo")  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR/PORT
    try:
        state, history = train_shard(task, dist.get_rank(), dist.get_world_size())
        if dist.get_rank() == 0:
            torch.save({"state": state, "history": history}, out)  # one task: a dict
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
