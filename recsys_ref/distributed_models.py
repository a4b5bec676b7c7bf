"""Data-parallel NCF and SASRec: the :mod:`recsys_ref.distributed` loop (DDP on gloo, users
sharded, the same global batches on every process) for the deep models.

Each task reproduces its model's own training loop: :class:`NCFTask` that of
:meth:`recsys_ref.models.ncf.NCF.fit` (fresh negatives every epoch, shuffled minibatches of
positives and negatives, the mean log loss), :class:`SASRecTask` that of
:meth:`recsys_ref.models.sasrec.SASRec.fit` (length-bucketed minibatches of user sequences,
the full-softmax next-item loss averaged over target positions). Both losses are means, so a
process's shard contributes its summed loss divided by the *global* batch's number of terms.

Dropout is the one thing that does not shard exactly: each process draws masks for its own
rows from its own generator, so with ``dropout > 0`` two processes train as well as one but
not bit for bit alike; with ``dropout=0`` they agree up to float rounding.
See the appendix "Your own data, at scale".
"""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import torch
from torch import nn

from recsys_ref.checks import check_frame, check_interactions
from recsys_ref.distributed import PairsTask, Task, distinct_pairs, fit_distributed, zero_loss
from recsys_ref.models.bpr import sample_negatives
from recsys_ref.models.ncf import NCF, NCFConfig, NCFNet, ncf_loss
from recsys_ref.models.sasrec import SASRec, SASRecConfig, next_item_loss
from recsys_ref.sequences import (
    PAD,
    bucket_order,
    next_item_examples,
    trim_padding,
    user_sequences,
)
from recsys_ref.training import minibatches


class _SumOfMean(nn.Module):
    """``forward`` = a mean loss times the number of terms it averaged: the shard's sum."""

    def __init__(self, net: nn.Module, loss, count, **kwargs):
        super().__init__()
        self.net, self.loss, self.count, self.kwargs = net, loss, count, kwargs

    def forward(self, *shard):
        count = self.count(*shard)
        if count == 0:  # an empty shard (a mean over nothing would be NaN)
            return zero_loss(self)
        return self.loss(self.net, *shard, **self.kwargs) * count


def _n_rows(*shard) -> int:
    return len(shard[0])


def _n_targets(inputs, targets) -> int:
    return int((targets != PAD).sum())


class NCFTask(PairsTask):
    """:meth:`recsys_ref.models.ncf.NCF.fit`'s loop (no validation, no pretraining) as a
    :class:`~recsys_ref.distributed.Task`; the pairs sorted by (user, item), as ``NCF.fit``
    orders them."""

    def build(self, generator):
        cfg = self.cfg
        net = NCFNet(self.n_users, self.n_items, cfg.model, cfg.n_factors, cfg.layers,
                     cfg.init_std, generator)
        return _SumOfMean(net, ncf_loss, _n_rows, reg=cfg.reg)

    def optimizer(self, objective):
        if self.cfg.optimizer == "sgd":
            return torch.optim.SGD(objective.parameters(), lr=self.cfg.lr)
        return torch.optim.Adam(objective.parameters(), lr=self.cfg.lr, fused=True)

    def batches(self, generator):
        cfg, k = self.cfg, self.cfg.n_negatives
        # the examples of recsys_ref.models.ncf.training_examples: positives, then negatives
        neg = sample_negatives(self.users, self.n_items, k, self.seen, generator)
        u = torch.cat([self.users, self.users.repeat_interleave(k)])
        i = torch.cat([self.items, neg.reshape(-1)])
        y = torch.cat([torch.ones(len(self.users)), torch.zeros(neg.numel())])
        for ub, ib, yb in minibatches(u, i, y, batch_size=cfg.batch_size, generator=generator):
            yield ub, (ub, ib, yb), float(len(ub)), len(ub)

    def result(self, state, history):
        cfg = self.cfg
        model = NCF(self.n_users, self.n_items, cfg)
        model.net_ = NCFNet(self.n_users, self.n_items, cfg.model, cfg.n_factors, cfg.layers,
                            cfg.init_std)
        model.net_.load_state_dict({k.removeprefix("net."): v for k, v in state.items()})
        model.net_.requires_grad_(False)
        model.history_, model.best_epoch_ = pd.DataFrame(history), cfg.n_epochs
        return model


class SASRecTask(Task):
    """:meth:`recsys_ref.models.sasrec.SASRec.fit`'s loop (no validation) as a
    :class:`~recsys_ref.distributed.Task`; a batch's rows are users' sequences, sharded by
    user."""

    def __init__(self, train: pd.DataFrame, n_users: int, n_items: int, cfg: SASRecConfig):
        self.n_users, self.n_items = n_users, n_items
        self.cfg, self.n_epochs, self.seed = cfg, cfg.n_epochs, cfg.seed
        seqs = user_sequences(train, n_users, cfg.max_len + 1, n_items)  # (n_users, L + 1)
        self.inputs, self.targets = next_item_examples(seqs)  # (n, L) each
        if len(self.inputs) == 0:
            raise ValueError("train has no user with 2 or more interactions: there is no next "
                             "item to learn from")
        # the users next_item_examples kept (it drops rows without a target), in its order
        has_target = (seqs[:, 1:].masked_fill(seqs[:, :-1] == PAD, PAD) != PAD).any(1)
        self.row_users = has_target.nonzero().squeeze(1)  # (n,)
        self.sequences = seqs[:, 1:]  # (n_users, L): the history score() reads

    def build(self, generator):
        return _SumOfMean(self.cfg.backbone(self.n_items, generator), next_item_loss,
                          _n_targets)

    def optimizer(self, objective):
        return torch.optim.AdamW(objective.parameters(), lr=self.cfg.lr,
                                 weight_decay=self.cfg.weight_decay)

    def batches(self, generator):
        bs = self.cfg.batch_size
        order = bucket_order(self.inputs, bs, generator)  # similar lengths together
        for users, x, y in minibatches(self.row_users[order], self.inputs[order],
                                       self.targets[order], batch_size=bs, shuffle=False):
            x, y = trim_padding(x, y)  # (b, <= max_len): the global batch's width
            m = _n_targets(x, y)
            yield users, (x, y), float(max(m, 1)), m

    def result(self, state, history):
        cfg = self.cfg
        model = SASRec(self.n_users, self.n_items, cfg)
        model.net_ = cfg.backbone(self.n_items)
        model.net_.load_state_dict({k.removeprefix("net."): v for k, v in state.items()})
        model.net_.requires_grad_(False).eval()
        model.sequences_ = self.sequences
        model.history_, model.best_epoch_ = pd.DataFrame(history), cfg.n_epochs
        return model


def ncf_task(train: pd.DataFrame, n_users: int, n_items: int,
             config: NCFConfig | None = None, **overrides) -> NCFTask:
    """The :class:`NCFTask` of :func:`fit_ncf_distributed` (same arguments), for
    :func:`recsys_ref.distributed.fit_distributed`."""
    cfg = replace(config or NCFConfig(), **overrides)
    users, items = distinct_pairs(train, n_users, n_items)
    return NCFTask(users, items, n_users, n_items, cfg)


def sasrec_task(train: pd.DataFrame, n_users: int, n_items: int,
                config: SASRecConfig | None = None, **overrides) -> SASRecTask:
    """The :class:`SASRecTask` of :func:`fit_sasrec_distributed` (same arguments), for
    :func:`recsys_ref.distributed.fit_distributed`."""
    check_frame(train, "train", ["user_idx", "item_idx", "timestamp"])
    check_interactions(train, "train", n_users, n_items, unique=False)
    cfg = replace(config or SASRecConfig(), **overrides)
    return SASRecTask(train, n_users, n_items, cfg)


def fit_ncf_distributed(train: pd.DataFrame, n_users: int, n_items: int,
                        world_size: int = 2, config: NCFConfig | None = None,
                        **overrides) -> NCF:
    """Fit :class:`~recsys_ref.models.ncf.NCF` (GMF, MLP or NeuMF) data-parallel.

    ``config.batch_size`` is the *global* batch of examples; every epoch runs (no early
    stopping). With ``world_size=1`` the loop runs in this process: the reference.

    Args:
        train: ``user_idx, item_idx`` training pairs (distinct).
        n_users, n_items: sizes.
        world_size: number of processes (gloo on CPU, one thread each).
        config: an :class:`~recsys_ref.models.ncf.NCFConfig`; keyword arguments override it.

    Returns:
        A fitted :class:`~recsys_ref.models.ncf.NCF` (``history_``: each epoch's mean loss
        and seconds on process 0).
    """
    return fit_distributed(ncf_task(train, n_users, n_items, config, **overrides), world_size)


def fit_sasrec_distributed(train: pd.DataFrame, n_users: int, n_items: int,
                           world_size: int = 2, config: SASRecConfig | None = None,
                           **overrides) -> SASRec:
    """Fit :class:`~recsys_ref.models.sasrec.SASRec` data-parallel.

    ``config.batch_size`` is the *global* batch of user sequences; every epoch runs (no early
    stopping). Equal to one process up to rounding only with ``dropout=0`` (see the module's
    docstring). With ``world_size=1`` the loop runs in this process: the reference.

    Args:
        train: ``user_idx, item_idx, timestamp`` of the interactions.
        n_users, n_items: sizes.
        world_size: number of processes (gloo on CPU, one thread each).
        config: a :class:`~recsys_ref.models.sasrec.SASRecConfig`; keyword arguments
            override it.

    Returns:
        A fitted :class:`~recsys_ref.models.sasrec.SASRec`.
    """
    return fit_distributed(sasrec_task(train, n_users, n_items, config, **overrides),
                           world_size)
