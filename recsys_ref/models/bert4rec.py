r"""BERT4Rec (Sun et al. 2019): the bidirectional encoder of SASRec trained by masked-item
("cloze") prediction, which recommends by predicting a [MASK] appended to the history.

Training hides a random fraction :math:`\rho` of each sequence's items behind [MASK] and
predicts them from both sides (:func:`recsys_ref.pretraining.cloze_loss`). At test time the
user's last ``max_len - 1`` items are followed by one [MASK] and the full-catalogue logits at
that position are the scores; attention stays bidirectional throughout. See the chapter
"Self-supervised pretraining".
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from recsys_ref.checks import check_frame
from recsys_ref.models.base import ConfiguredRecommender
from recsys_ref.models.sasrec import SASRecConfig, SeqTransformer, last_logits, start_from
from recsys_ref.pretraining import cloze_loss, mask_items
from recsys_ref.sequences import (
    PAD,
    bucket_order,
    lengths,
    mask_token,
    trim_padding,
    user_sequences,
)
from recsys_ref.training import (
    fit_from_config,
    gradient_step,
    minibatches,
    ranking_eval_fn,
    seed_everything,
)


@dataclass
class BERT4RecConfig(SASRecConfig):
    """Hyperparameters of :class:`BERT4Rec`: those of
    :class:`recsys_ref.models.sasrec.SASRecConfig` plus the masking probability.

    See the chapter "Self-supervised pretraining".
    """

    mask_prob: float = 0.2  # rho: probability that an item is masked (the paper's ML-1m value)

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.mask_prob <= 1:
            raise ValueError(f"mask_prob must be in (0, 1], got {self.mask_prob}")


class BERT4Rec(ConfiguredRecommender):
    r"""BERT4Rec with a full softmax over the catalogue.

    :meth:`fit` turns ``train`` into each user's last ``max_len`` items
    (:func:`recsys_ref.sequences.user_sequences`), and each epoch masks every item with
    probability ``mask_prob`` (a row where none was drawn gets its most recent item masked,
    :func:`recsys_ref.pretraining.mask_items`) and minimises the cross-entropy of the masked
    items with bidirectional attention. :meth:`score` reads the logits of a [MASK] appended
    after the user's last ``max_len - 1`` items. With ``valid``, training stops when the
    validation ``metric`` has not improved for ``patience`` evaluations, and the best
    parameters are kept.

    Args:
        n_users, n_items: table sizes.
        config: a :class:`BERT4RecConfig`; keyword arguments override its fields.

    See the chapter "Self-supervised pretraining".
    """

    config_class = BERT4RecConfig

    def fit(self, train: pd.DataFrame, valid: pd.DataFrame | None = None,
            init: SeqTransformer | None = None) -> BERT4Rec:
        """Fit on the sequences of ``train``; early-stop on ``valid`` if given.

        Args:
            train: ``user_idx, item_idx, timestamp`` of the interactions.
            valid: optional validation interactions (one next item per user).
            init: optional encoder of the same architecture (e.g. a cloze backbone of
                :func:`recsys_ref.pretraining.pretrain`) whose weights start the fit; it is
                copied, not modified.

        Returns:
            ``self``. See the chapter "Self-supervised pretraining".
        """
        cfg = self.config
        self._check_train(train, ["timestamp"], unique=False)
        seqs = user_sequences(train, self.n_users, cfg.max_len, self.n_items)
        data = seqs[lengths(seqs) > 0]  # (n, max_len): users with at least one item
        self.use_history(train)
        gen = seed_everything(cfg.seed)
        self.net_ = cfg.backbone(self.n_items, gen, causal=False)
        if init is not None:
            start_from(self.net_, init)
        opt = torch.optim.AdamW(self.net_.parameters(), lr=cfg.lr,
                                weight_decay=cfg.weight_decay)

        def epoch(_):
            self.net_.train()
            total, n = 0.0, 0
            order = bucket_order(data, cfg.batch_size, gen)  # similar lengths together
            for (x,) in minibatches(data[order], batch_size=cfg.batch_size, shuffle=False):
                masked, targets = mask_items(trim_padding(x)[0], cfg.mask_prob, self.n_items,
                                             gen)  # (b, <= max_len) each
                m = int((targets != PAD).sum())
                total, n = total + gradient_step(opt, cloze_loss(self.net_, masked,
                                                                 targets)) * m, n + m
            self.net_.eval()
            return total / max(n, 1)

        eval_fn = None if valid is None else ranking_eval_fn(self, valid, train, cfg.metric)
        result = fit_from_config(epoch, cfg, module=self.net_, eval_fn=eval_fn,
                                 desc="BERT4Rec")
        self.net_.eval()
        self.history_, self.best_epoch_ = result.history, result.best_epoch
        return self

    def use_history(self, frame: pd.DataFrame) -> BERT4Rec:
        """Score from the sequences of ``frame`` from now on, without retraining.

        Args:
            frame: ``user_idx, item_idx, timestamp`` of each user's history.

        Returns:
            ``self``. See the chapter "Self-supervised pretraining".
        """
        check_frame(frame, "frame", ["user_idx", "item_idx", "timestamp"])
        cfg = self.config
        if cfg.max_len < 2:
            raise ValueError("max_len must be >= 2: one item of history and the [MASK]")
        history = user_sequences(frame, self.n_users, cfg.max_len - 1, self.n_items)
        query = torch.full((self.n_users, 1), mask_token(self.n_items))  # the item to predict
        self.sequences_ = torch.cat([history, query], 1)  # (n_users, max_len)
        return self

    @torch.no_grad()
    def score(self, user_idx) -> torch.Tensor:
        """``(batch,) -> (batch, n_items)``: logits of the [MASK] after each user's history."""
        users = self._users(user_idx)
        self.net_.eval()
        return last_logits(self.net_, self.sequences_[users], causal=False)
