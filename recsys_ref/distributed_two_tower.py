"""Data-parallel two-tower training: :meth:`recsys_ref.models.two_tower.TwoTower.fit`'s loop
as a task of the :mod:`recsys_ref.distributed` loop (DDP on gloo, users sharded, the same
global batches on every process).

The three losses shard differently. The full softmax (``"softmax"``) and BPR (``"bpr"``)
score each row of a batch on its own, so a process needs only its rows (and, for BPR, their
negatives, drawn for the global batch). The in-batch softmax (``"inbatch"``) uses the other
rows' items as each row's negatives: every process receives the whole batch's items
(*shared* tensors, see :class:`recsys_ref.distributed.Task`), encodes them all with the item
tower, and scores only its own rows against them; the item tower's gradient then sums the
processes' rows, as one process's would. Id dropout masks are drawn for the global batch, in
the order ``TwoTower.fit`` draws them, and sharded with it, so dropout does not break the
equality. Every loss is a mean over the batch's rows: a shard contributes its summed loss,
divided by the global batch size. Two processes then reproduce one up to float rounding in
every parameter but one: the item tower's output bias shifts every item's embedding alike,
which none of the losses can see, so its exact gradient is zero and Adam turns the rounding
noise of that zero into full-size steps; it changes no user's ranking (NCF's Adam shows the
same effect, see :mod:`recsys_ref.distributed_models`). See the appendix "Your own data, at
scale".
"""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from recsys_ref.distributed import PairsTask, distinct_pairs, fit_distributed, zero_loss
from recsys_ref.features import Features
from recsys_ref.models.bpr import sample_negatives
from recsys_ref.models.two_tower import (
    Tower,
    TwoTower,
    TwoTowerConfig,
    softmax_loss,
)
from recsys_ref.training import minibatches, minus_inf_mask


class _TwoTowerObjective(nn.Module):
    """The summed loss of a shard of rows; ``forward(users, items, keep_u, keep_i, extra,
    *shared)`` with ``(b_r,)`` tensors (``keep_*`` all True without id dropout)."""

    def __init__(self, user: Tower, item: Tower, cfg: TwoTowerConfig, n_items: int, seen,
                 log_q: torch.Tensor):
        super().__init__()
        self.towers = nn.ModuleDict({"user": user, "item": item})
        self.cfg, self.n_items, self.seen, self.log_q = cfg, n_items, seen, log_q

    def forward(self, u, i, keep_u, keep_i, extra, *shared):
        if len(u) == 0:
            return zero_loss(self)
        cfg = self.cfg
        f_u = self.towers["user"](u, keep_u)  # (b_r, d)
        if cfg.loss == "softmax":
            g = self.towers["item"](torch.arange(self.n_items))  # (n_items, d)
            seen = self.seen.rows(u)  # (b_r, n_items) the rows' training items
            return softmax_loss(f_u, g, i, cfg.temperature, seen) * len(u)
        if cfg.loss == "bpr":
            j, keep_j = extra[:, 0], extra[:, 1].bool()  # (b_r,) negatives and their masks
            g = self.towers["item"](torch.cat([i, j]), torch.cat([keep_i, keep_j]))
            diff = (f_u * (g[:len(i)] - g[len(i):])).sum(-1)  # (b_r,)
            return -F.logsigmoid(diff).sum()
        # in-batch: the rows' positions ``extra`` among the whole batch's items
        items, keep_items = shared  # (b,) each
        g = self.towers["item"](items, keep_items)  # (b, d)
        # (b_r, b): each row's training items among the batch's, read from the rows' CSR
        # block (O(b_r x n_items), as in evaluation; on MovieLens 10x faster than searching
        # the b_r x b pairs one by one)
        other = self.seen.block(u, items)
        other[torch.arange(len(u)), extra] = False  # column extra[k] holds row k's target
        logits = (f_u / cfg.temperature) @ g.T  # (b_r, b)
        logits = logits + (-self.log_q[items] + minus_inf_mask(other, logits.dtype))
        return F.cross_entropy(logits, extra, reduction="sum")


class TwoTowerTask(PairsTask):
    """:meth:`recsys_ref.models.two_tower.TwoTower.fit`'s loop (no validation) as a
    :class:`~recsys_ref.distributed.Task`, for id and feature towers and the three losses."""

    def __init__(self, users, items, n_users, n_items, cfg, user_features=None,
                 item_features=None, use_ids=True):
        super().__init__(users, items, n_users, n_items, cfg)
        self.features, self.use_ids = (user_features, item_features), use_ids
        self.log_q = torch.log(torch.bincount(items, minlength=n_items).clamp(min=1)
                               / len(items))  # (n_items,) logQ of in-batch sampling

    def _towers(self, generator=None):
        cfg = self.cfg
        return [Tower(n if self.use_ids else 0, f, cfg.dim_id, cfg.dim_feature, cfg.hidden,
                      cfg.dim, cfg.init_std, generator)
                for n, f in zip((self.n_users, self.n_items), self.features, strict=True)]

    def build(self, generator):
        return _TwoTowerObjective(*self._towers(generator), self.cfg, self.n_items,
                                  self.seen, self.log_q)

    def optimizer(self, objective):
        return torch.optim.AdamW(objective.parameters(), lr=self.cfg.lr,
                                 weight_decay=self.cfg.weight_decay)

    def batches(self, generator):
        cfg = self.cfg

        def keep(n):  # (n,) bool, drawn as TwoTower.fit draws it (all True: no dropout)
            if not cfg.id_dropout:
                return torch.ones(n, dtype=torch.bool)
            return torch.rand(n, generator=generator) >= cfg.id_dropout

        for u, i in minibatches(self.users, self.items, batch_size=cfg.batch_size,
                                generator=generator):
            b = len(u)
            keep_u = keep(b)  # TwoTower.fit draws the users' mask first
            if cfg.loss == "bpr":  # then the negatives, then one mask for (i, j)
                j = sample_negatives(u, self.n_items, 1, self.seen, generator)[:, 0]
                keep_ij = keep(2 * b)
                extra = torch.stack([j, keep_ij[b:].long()], 1)  # (b, 2)
                yield u, (u, i, keep_u, keep_ij[:b], extra), float(b), b
            elif cfg.loss == "softmax":
                yield u, (u, i, keep_u, keep_u, torch.zeros(b, dtype=torch.long)), float(b), b
            else:
                keep_i = keep(b)
                yield u, (u, i, keep_u, keep_i, torch.arange(b)), float(b), b, (i, keep_i)

    def result(self, state, history):
        model = TwoTower(self.n_users, self.n_items, *self.features, use_ids=self.use_ids,
                         config=self.cfg)
        model.net_ = nn.ModuleDict(dict(zip(("user", "item"), self._towers(), strict=True)))
        model.net_.load_state_dict({k.removeprefix("towers."): v for k, v in state.items()})
        model.net_.requires_grad_(False)
        model.history_, model.best_epoch_ = pd.DataFrame(history), self.cfg.n_epochs
        return model


def two_tower_task(train: pd.DataFrame, n_users: int, n_items: int,
                   user_features: Features | None = None,
                   item_features: Features | None = None, use_ids: bool = True,
                   config: TwoTowerConfig | None = None, **overrides) -> TwoTowerTask:
    """The :class:`TwoTowerTask` of :func:`fit_two_tower_distributed` (same arguments), for
    :func:`recsys_ref.distributed.fit_distributed`."""
    cfg = replace(config or TwoTowerConfig(), **overrides)
    TwoTower(n_users, n_items, user_features, item_features, use_ids, cfg)  # checks them
    users, items = distinct_pairs(train, n_users, n_items)
    return TwoTowerTask(users, items, n_users, n_items, cfg, user_features, item_features,
                        use_ids)


def fit_two_tower_distributed(train: pd.DataFrame, n_users: int, n_items: int,
                              world_size: int = 2, **kwargs) -> TwoTower:
    """Fit :class:`~recsys_ref.models.two_tower.TwoTower` data-parallel.

    ``config.batch_size`` is the *global* batch of pairs; every epoch runs (no early
    stopping). With ``world_size=1`` the loop runs in this process: the reference.

    Args:
        train: ``user_idx, item_idx`` training pairs (distinct).
        n_users, n_items: sizes.
        world_size: number of processes (gloo on CPU, one thread each).
        kwargs: ``user_features``, ``item_features``, ``use_ids``, ``config`` and config
            overrides, as for :class:`~recsys_ref.models.two_tower.TwoTower`.

    Returns:
        A fitted :class:`~recsys_ref.models.two_tower.TwoTower`.
    """
    return fit_distributed(two_tower_task(train, n_users, n_items, **kwargs), world_size)
