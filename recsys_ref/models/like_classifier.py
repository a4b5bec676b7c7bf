r"""A downstream task for a sequence encoder: does user :math:`u` like item :math:`i`?

The user's *interactions* (which items, in time order) are always visible; only some of the
ratings are labelled, and a label is 1 when the rating is at least ``threshold`` (4 of 5).
:class:`LikeClassifier` encodes the user's whole interaction sequence with a
:class:`recsys_ref.models.sasrec.SeqTransformer`, takes the item's embedding from the same
encoder, and scores the pair with a small MLP:

.. math::
    h_u = \mathrm{Enc}(s_u)_{\mathrm{last}}, \qquad e_i = E[i + 1], \qquad
    P(\mathrm{like}_{ui}) = \sigma\big(w_2^\top \mathrm{ReLU}(W_1 [h_u; e_i; h_u \odot e_i]
        + b_1) + b_2\big)

Started from a pretrained backbone this is fine-tuning; started from random weights of the
same sizes it is the from-scratch baseline; nothing else differs. See the chapter
"Self-supervised pretraining".
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from recsys_ref import metrics
from recsys_ref.checks import check_config, check_frame, check_index
from recsys_ref.matrix import column
from recsys_ref.models.base import _tensor
from recsys_ref.models.sasrec import SeqTransformer
from recsys_ref.sequences import check_sequences, trim_padding
from recsys_ref.training import (
    fit_from_config,
    gather_rows,
    gradient_step,
    minibatches,
    seed_everything,
)


@dataclass
class LikeConfig:
    """Hyperparameters of :class:`LikeClassifier`."""

    hidden: int = 64  # units of the MLP's hidden layer
    n_epochs: int = 30  # maximum epochs (one epoch: every labelled user once)
    lr: float = 1e-3  # AdamW step size, encoder and head alike
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    batch_size: int = 64  # users per minibatch, each with all of their labelled pairs
    threshold: float = 4.0  # a rating >= threshold is a "like"
    patience: int | None = 3  # evaluations without improvement before stopping (with valid)
    eval_every: int = 1  # epochs between validation evaluations (ROC AUC)
    seed: int = 0
    progress: bool = False  # tqdm progress bar

    def __post_init__(self):
        check_config(self, positive_ints=("hidden", "n_epochs", "batch_size", "eval_every"),
                     positive=("lr",), nonnegative=("weight_decay",))


class LikeNet(nn.Module):
    """The encoder plus the pair-scoring MLP (see the module's equation).

    Args:
        encoder: the sequence encoder (trained along with the head).
        hidden: the MLP's hidden units.
        generator: the source of the head's initial weights.
    """

    def __init__(self, encoder: SeqTransformer, hidden: int,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.encoder = encoder
        d = encoder.arch["dim"]
        self.head = nn.Sequential(nn.Linear(3 * d, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        with torch.no_grad():  # Glorot-uniform weights, zero biases, from our generator
            for layer in (self.head[0], self.head[2]):
                bound = (6 / (layer.in_features + layer.out_features)) ** 0.5
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.zero_()

    def forward(self, seqs: torch.Tensor, rows: torch.Tensor, items: torch.Tensor):
        """Logits of pairs: ``seqs`` ``(b, L)`` user sequences, ``rows`` ``(n,)`` the row of
        ``seqs`` of each pair's user, ``items`` ``(n,)`` item indices -> ``(n,)``."""
        h = self.encoder.last(seqs)[rows]  # (n, d)
        e = gather_rows(self.encoder.tokens.weight, items + 1)  # (n, d): token of item i is i + 1
        return self.head(torch.cat([h, e, h * e], -1))[:, 0]


def like_labels(frame: pd.DataFrame, threshold: float = 4.0) -> torch.Tensor:
    """``(n,)`` float: 1.0 where ``rating >= threshold``, else 0.0."""
    check_frame(frame, "frame", ["rating"])
    return (column(frame, "rating", torch.float32) >= threshold).float()


class LikeClassifier:
    r"""Predicts :math:`P(\mathrm{rating}_{ui} \ge 4)` from the user's interaction sequence.

    Minibatches are groups of users: each user's sequence is encoded once and all of the
    user's labelled pairs in ``train`` are scored from it; the loss is the mean binary
    cross-entropy over those pairs. With ``valid``, training stops when the validation ROC
    AUC has not improved for ``patience`` evaluations, and the best parameters are kept.

    Args:
        sequences: ``(n_users, L)`` left-padded tokens of every user's interactions
            (:func:`recsys_ref.sequences.user_sequences`), visible whether labelled or not.
        backbone: a (pretrained) :class:`.SeqTransformer` whose weights are copied to start
            from, or the ``arch`` dictionary of one (``backbone.arch``) for a fresh encoder
            of the same sizes with random weights (the from-scratch baseline).
        config: a :class:`LikeConfig`; keyword arguments override its fields.

    See the chapter "Self-supervised pretraining".
    """

    def __init__(self, sequences: torch.Tensor, backbone: SeqTransformer | dict,
                 config: LikeConfig | None = None, **overrides):
        self.sequences = check_sequences(sequences, "sequences")
        if not isinstance(backbone, SeqTransformer | dict):
            raise ValueError("backbone must be a SeqTransformer or its arch dictionary")
        arch = backbone.arch if isinstance(backbone, SeqTransformer) else dict(backbone)
        if self.sequences.shape[1] > arch["max_len"]:
            raise ValueError(f"sequences have {self.sequences.shape[1]} columns, more than "
                             f"the backbone's max_len {arch['max_len']}")
        self.backbone, self.arch = backbone, arch
        self.n_users, self.n_items = len(self.sequences), arch["n_items"]
        self.config = replace(config or LikeConfig(), **overrides)  # validates

    def _pairs(self, frame: pd.DataFrame, name: str):
        check_frame(frame, name, ["user_idx", "item_idx", "rating"])
        users, items = column(frame, "user_idx"), column(frame, "item_idx")  # (n,)
        check_index(users, f"{name}.user_idx", self.n_users)
        check_index(items, f"{name}.item_idx", self.n_items)
        return users, items, like_labels(frame, self.config.threshold)

    def _logits(self, users: torch.Tensor, items: torch.Tensor, batch: torch.Tensor):
        """Logits of the pairs whose user is in ``batch`` (``(b,)`` distinct users)."""
        slot = torch.full((self.n_users,), -1, dtype=torch.long)
        slot[batch] = torch.arange(len(batch))  # user -> row of the batch
        (seqs,) = trim_padding(self.sequences[batch])  # (b, <= L)
        return self.net_(seqs, slot[users], items)

    def fit(self, train: pd.DataFrame, valid: pd.DataFrame | None = None) -> LikeClassifier:
        """Fit on the labelled pairs ``train`` (``user_idx, item_idx, rating``)."""
        cfg = self.config
        users, items, labels = self._pairs(train, "train")
        gen = seed_everything(cfg.seed)
        encoder = copy.deepcopy(self.backbone) if isinstance(self.backbone, SeqTransformer) \
            else SeqTransformer(**self.arch, generator=gen)
        self.net_ = LikeNet(encoder, cfg.hidden, gen)
        opt = torch.optim.AdamW(self.net_.parameters(), lr=cfg.lr,
                                weight_decay=cfg.weight_decay)
        labelled_users = torch.unique(users)  # (m,)

        def epoch(_):
            self.net_.train()
            total = 0.0
            for (batch,) in minibatches(labelled_users, batch_size=cfg.batch_size,
                                        generator=gen):
                pick = torch.isin(users, batch)  # (n,) the batch's labelled pairs
                logits = self._logits(users[pick], items[pick], batch)
                loss = F.binary_cross_entropy_with_logits(logits, labels[pick])
                total += gradient_step(opt, loss) * int(pick.sum())
            self.net_.eval()
            return total / len(users)

        eval_fn = None
        if valid is not None:
            v_users, v_items, v_labels = self._pairs(valid, "valid")
            eval_fn = lambda: roc_auc(self.predict(v_users, v_items), v_labels)  # noqa: E731
        result = fit_from_config(epoch, cfg, module=self.net_, eval_fn=eval_fn,
                                 desc="LikeClassifier")
        self.net_.eval()
        self.history_, self.best_epoch_ = result.history, result.best_epoch
        return self

    @torch.no_grad()
    def predict(self, users, items) -> torch.Tensor:
        """``(n,), (n,) -> (n,)`` probabilities of a like."""
        users, items = _tensor(users).long(), _tensor(items).long()
        check_index(users, "users", self.n_users)
        check_index(items, "items", self.n_items)
        if users.shape != items.shape or users.dim() != 1:
            raise ValueError("users and items must be 1-D of the same length")
        self.net_.eval()
        out = torch.empty(len(users))
        distinct = torch.unique(users)
        for s in range(0, len(distinct), 256):  # bounded memory: 256 sequences at a time
            batch = distinct[s:s + 256]
            pick = torch.isin(users, batch)
            out[pick] = torch.sigmoid(self._logits(users[pick], items[pick], batch))
        return out


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Global ROC AUC of ``(n,)`` scores against ``(n,)`` 0/1 labels (ties count 1/2)."""
    labels = torch.as_tensor(labels).bool()
    ones = torch.ones(1, len(scores), dtype=torch.bool)
    return float(metrics.auc(torch.as_tensor(scores, dtype=torch.float32)[None], labels[None],
                             ones)[0])


def user_auc(scores: torch.Tensor, labels: torch.Tensor, users) -> pd.Series:
    """Each user's ROC AUC over their own pairs (ties count 1/2), for the users who have at
    least one positive and one negative pair.

    Averaged over users this is the "user-averaged AUC" (GAUC) of the chapter "Self-supervised
    pretraining": it asks whether the classifier orders *each user's* items, and it is a mean
    over users, so two classifiers can be compared by a per-user paired bootstrap
    (:func:`recsys_ref.evaluation.paired_mean_gap`).

    Args:
        scores, labels: ``(n,)`` scores and 0/1 labels of the pairs.
        users: ``(n,)`` the pairs' ``user_idx``.

    Returns:
        AUC per ``user_idx`` (sorted), users without both classes left out.
    """
    scores = torch.as_tensor(scores, dtype=torch.float32)
    labels, users = torch.as_tensor(labels).bool(), torch.as_tensor(users, dtype=torch.long)
    if not (scores.dim() == labels.dim() == users.dim() == 1
            and len(scores) == len(labels) == len(users)):
        raise ValueError("scores, labels and users must be 1-D and of one length")
    ids, row = torch.unique(users, return_inverse=True)  # (m,), (n,)
    order = torch.argsort(row, stable=True)
    count = torch.bincount(row, minlength=len(ids))  # (m,) pairs per user
    col = torch.arange(len(row)) - torch.repeat_interleave(count.cumsum(0) - count, count)
    shape = (len(ids), int(count.max()))  # (users, most pairs of a user): padded per user
    dense = torch.zeros(shape)
    cand = torch.zeros(shape, dtype=torch.bool)
    rel = torch.zeros(shape, dtype=torch.bool)
    dense[row[order], col] = scores[order]
    cand[row[order], col] = True
    rel[row[order], col] = labels[order]
    keep = rel.any(1) & (cand & ~rel).any(1)
    values = metrics.auc(dense[keep], rel[keep], cand[keep])
    return pd.Series(values.numpy(), index=ids[keep].numpy(), name="AUC")
