"""Data-parallel training with ``torch.distributed``: the loop every model shares.
DistributedDataParallel on the gloo backend (CPU), users sharded across processes. BPR's task
is in :mod:`recsys_ref.distributed_bpr`, NCF's and SASRec's in
:mod:`recsys_ref.distributed_models`.

Every process holds the whole model. For each *global* minibatch (the same on every process:
they share the seed, so they shuffle, draw negatives and order batches alike), process ``r``
computes the loss of the examples whose user satisfies ``user % world_size == r``; DDP
all-reduces (averages) the gradients, and every process takes the same optimizer step. The
shard's loss is scaled by ``world_size`` and divided by the global batch's normaliser (1 for
a summed loss such as BPR's, the number of terms for a mean), so the averaged gradient is the
gradient of the whole global batch's loss: the same step a single process takes on the same
batch, up to the order of floating-point additions. Negatives are drawn for the global batch
from a sparse per-user item set (:class:`recsys_ref.matrix.UserItems`), never from a dense
``(n_users, n_items)`` mask.

Launch with :func:`fit_distributed` (``torch.multiprocessing.spawn``) or with ``torchrun``
(``python -m torch.distributed.run --nproc-per-node 2 -m recsys_ref.distributed_bpr PAIRS
OUT``). See the appendix "Your own data, at scale".
"""

from __future__ import annotations

import socket
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from recsys_ref.checks import check_interactions, check_positive_int
from recsys_ref.matrix import UserItems, column
from recsys_ref.training import gradient_step, seed_everything


class Task:
    """What the data-parallel loop needs of a model (subclasses:
    :class:`recsys_ref.distributed_bpr.BPRTask`,
    :class:`recsys_ref.distributed_models.NCFTask`,
    :class:`recsys_ref.distributed_models.SASRecTask`,
    :class:`recsys_ref.distributed_two_tower.TwoTowerTask`).

    ``build(generator)`` returns the *objective*, an ``nn.Module`` holding the parameters
    whose ``forward(*shard)`` returns the summed loss of a shard of a batch;
    ``optimizer(objective)`` its optimizer; ``batches(generator)`` one epoch of global batches
    ``(users, tensors, normaliser, n_terms)``: ``users`` ``(b,)`` shards the rows of every
    tensor in ``tensors``, the batch's loss is the sum over its rows divided by
    ``normaliser``, and ``n_terms`` counts its loss terms (for the reported mean loss); a
    fifth element, if present, is a tuple of *shared* tensors that every process receives
    whole, after its shard (e.g. the whole batch's items, the negatives of an in-batch
    softmax); ``result(state, history)`` the fitted model. Attributes ``n_epochs`` and ``seed``.
    """

    n_epochs: int
    seed: int

    def build(self, generator: torch.Generator) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def optimizer(self, objective: nn.Module) -> torch.optim.Optimizer:  # pragma: no cover
        raise NotImplementedError

    def batches(self, generator: torch.Generator):  # pragma: no cover - abstract
        raise NotImplementedError

    def result(self, state: dict, history: list[dict]):  # pragma: no cover - abstract
        raise NotImplementedError

    def validate(self, objective: nn.Module) -> float | None:
        """The validation metric of the current parameters (process 0, after every epoch);
        ``None``: no validation."""
        return None


def zero_loss(module: nn.Module) -> torch.Tensor:
    """A zero that depends on every parameter: the loss of an empty shard, whose (zero)
    gradients still join the all-reduce (objectives return it from ``forward``)."""
    return sum(p.sum() for p in module.parameters()) * 0.0


def train_shard(task: Task, rank: int = 0, world_size: int = 1):
    """The training loop one process runs; returns ``(state_dict, history)``.

    With ``world_size=1`` no process group is needed (the single-process reference).
    """
    gen = seed_everything(task.seed)
    objective = task.build(gen)
    # DDP broadcasts rank 0's parameters once (they are equal already: same seed), then
    # all-reduces gradients during backward
    net = objective if world_size == 1 else DistributedDataParallel(objective)
    opt = task.optimizer(objective)
    history = []
    for _ in range(task.n_epochs):
        objective.train()
        start = time.perf_counter()
        total, n_total = torch.zeros(1, dtype=torch.float64), 0  # summed loss, loss terms
        for users, tensors, normaliser, n_terms, *shared in task.batches(gen):
            mine = users % world_size == rank  # this process's users (maybe none)
            # always through net: DDP's forward prepares the all-reduce of the backward pass
            loss = net(*(t[mine] for t in tensors), *(shared[0] if shared else ()))
            # x world_size / normaliser: DDP averages the gradients over the processes,
            # we want the gradient of the global batch's loss
            total += gradient_step(opt, loss * (world_size / normaliser)) * (
                normaliser / world_size)
            n_total += n_terms
        if world_size > 1:
            dist.all_reduce(total)  # the global loss, summed over processes
        objective.eval()
        row = {"loss": float(total) / max(n_total, 1), "seconds": time.perf_counter() - start}
        if rank == 0 and (value := task.validate(objective)) is not None:
            row["valid"] = value  # recorded only: every epoch runs (the others wait)
        history.append(row)
    return objective.state_dict(), history


def _worker(rank, world_size, port, tasks, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size)
    try:
        results = [train_shard(task, rank, world_size) for task in tasks]
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fit_distributed(task: Task | list[Task], world_size: int = 2):
    """Run ``task``'s training loop on ``world_size`` processes; return its fitted model.

    With ``world_size=1`` the loop runs in this process, without a process group: the
    reference the distributed result is compared with. Otherwise ``world_size`` processes
    are spawned (gloo on CPU, one thread each) and process 0's parameters are returned
    (every process holds the same ones). A list of tasks is trained one after the other by
    the same processes (started once) and gives a list of models.
    """
    world_size = check_positive_int(world_size, "world_size")
    tasks = list(task) if isinstance(task, list | tuple) else [task]
    if world_size == 1:
        results = [train_shard(t) for t in tasks]
    else:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "rank0.pt"
            mp.spawn(_worker, args=(world_size, _free_port(), tasks, out),
                     nprocs=world_size, join=True)
            results = torch.load(out, weights_only=False)
    models = [t.result(state, history) for t, (state, history) in zip(tasks, results,
                                                                       strict=True)]
    return models if isinstance(task, list | tuple) else models[0]


def distinct_pairs(train: pd.DataFrame, n_users: int, n_items: int):
    """Distinct training pairs sorted by (user, item), as
    :class:`recsys_ref.models.bpr.BPR` orders them."""
    check_interactions(train, "train", n_users, n_items)
    keys = torch.sort(column(train, "user_idx") * n_items + column(train, "item_idx")).values
    return keys // n_items, keys % n_items


class PairsTask(Task):
    """A :class:`Task` over distinct ``(users, items)`` pairs (sorted by user, item) with a
    sparse seen-item set for negative sampling; ``cfg`` is the model's config."""

    def __init__(self, users, items, n_users: int, n_items: int, cfg,
                 valid: pd.DataFrame | None = None):
        self.users, self.items, self.n_users, self.n_items = users, items, n_users, n_items
        self.cfg, self.n_epochs, self.seed, self.valid = cfg, cfg.n_epochs, cfg.seed, valid
        self.seen = UserItems.from_pairs(users, items, n_users, n_items)
        self.seen.filter()  # its keys and filter built once here, not in every process

    def validate(self, objective):
        """``cfg.metric`` of full-ranking evaluation on ``valid``, training pairs excluded."""
        if self.valid is None:
            return None
        from recsys_ref.evaluation import evaluate_ranking  # evaluation imports the models

        train = pd.DataFrame({"user_idx": self.users.numpy(), "item_idx": self.items.numpy()})
        model = self.result(objective.state_dict(), [])
        return evaluate_ranking(model, self.valid, train)[self.cfg.metric]
