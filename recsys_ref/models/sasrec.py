r"""SASRec (Kang and McAuley 2018): a Transformer over the user's item sequence that predicts
the next item, trained with a full softmax over the catalogue (Klenitskiy and Vasilev 2023).

See the chapter "Self-supervised pretraining".
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from recsys_ref.checks import check_config, check_frame, check_positive_int
from recsys_ref.models.base import ConfiguredRecommender
from recsys_ref.sequences import (
    PAD,
    bucket_order,
    check_sequences,
    next_item_examples,
    trim_padding,
    user_sequences,
)
from recsys_ref.training import (
    fit_from_config,
    gather_rows,
    gradient_step,
    minibatches,
    ranking_eval_fn,
    seed_everything,
)


def attention_mask(tokens: torch.Tensor, causal: bool) -> torch.Tensor:
    """``(batch, L) -> (batch, 1, L, L)`` bool, True where query ``q`` may attend to key ``k``.

    Keys that are ``PAD`` are never attended to; with ``causal`` neither are later columns
    (``k > q``). Every query may attend to itself, so a ``PAD`` query (whose output is
    ignored) still has one key and the softmax never divides by zero.
    See the chapter "Self-supervised pretraining".
    """
    L = tokens.shape[1]
    allowed = (tokens != PAD)[:, None, :].expand(-1, L, -1)  # (batch, L_q, L_k)
    if causal:
        allowed = allowed & torch.ones(L, L, dtype=torch.bool).tril()
    allowed = allowed | torch.eye(L, dtype=torch.bool)
    return allowed[:, None]  # (batch, 1, L, L): broadcast over heads


class Block(nn.Module):
    """A pre-LN Transformer block: ``x + attn(LN(x))``, then ``x + FFN(LN(x))`` (GELU, 4x).

    See the chapter "Self-supervised pretraining".
    """

    def __init__(self, dim: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.ff1, self.ff2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, last: bool = False) -> torch.Tensor:
        """``(batch, L, dim), (batch, 1, L, L) -> (batch, L, dim)``; with ``last``, only the
        last column's output ``(batch, 1, dim)``: every column is still a key and value, but
        only the last one is a query, so the projection and feed-forward run on one column."""
        B, L, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)  # (B, L, d) each
        if last:
            x, q, allowed = x[:, -1:], q[:, -1:], allowed[:, :, -1:]  # one query column
        Lq = q.shape[1]
        q = q.reshape(B, Lq, self.n_heads, d // self.n_heads).transpose(1, 2)
        k, v = (t.view(B, L, self.n_heads, d // self.n_heads).transpose(1, 2)
                for t in (k, v))  # (B, heads, L, d / heads)
        # no dropout on the (B, heads, Lq, L) attention weights: drawing it cost a fifth of
        # the training time at L = 200, for no gain on MovieLens
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(B, Lq, d)))
        return x + self.drop(self.ff2(F.gelu(self.ff1(self.ln2(x)))))


class SeqTransformer(nn.Module):
    r"""A SASRec/BERT4Rec-style encoder of left-padded token sequences.

    .. math::
        h^0_t = E[s_t] + P[\mathrm{pos}_t], \qquad h^{l} = \mathrm{Block}_l(h^{l-1}), \qquad
        \hat y_{t,i} = \mathrm{LN}(h^{n}_t)^\top E[i + 1]

    Tokens are those of :mod:`recsys_ref.sequences` (``PAD = 0``, item ``i`` is ``i + 1``,
    [MASK] is ``n_items + 1``). Positions are counted from the right end
    (:math:`\mathrm{pos}_t = L - 1 - t`, 0 for the most recent item), so the amount of
    left padding never changes an output; ``PAD`` keys are never attended to. The output
    layer is the input table :math:`E` itself (shared item embeddings).

    Args:
        n_items: catalogue size; the token table has ``n_items + 2`` rows.
        max_len: longest sequence (size of the position table).
        dim: embedding size; ``n_heads`` must divide it.
        n_layers, n_heads: Transformer blocks and attention heads per block.
        dropout: on the embeddings and each block's two residual branches (drawn from torch's
            global generator, which :func:`recsys_ref.training.seed_everything` seeds).
        causal: default attention: ``True`` sees only earlier items (SASRec), ``False``
            the whole sequence (BERT4Rec); :meth:`forward` can override it.
        init_std: weights start as ``N(0, init_std^2)``, biases at 0.
        generator: the source of the initial values.

    See the chapter "Self-supervised pretraining".
    """

    def __init__(self, n_items: int, max_len: int = 50, dim: int = 64, n_layers: int = 1,
                 n_heads: int = 2, dropout: float = 0.2, causal: bool = True,
                 init_std: float = 0.02, generator: torch.Generator | None = None):
        super().__init__()
        n_items, max_len = check_positive_int(n_items, "n_items"), check_positive_int(max_len,
                                                                                      "max_len")
        dim, n_heads = check_positive_int(dim, "dim"), check_positive_int(n_heads, "n_heads")
        n_layers = check_positive_int(n_layers, "n_layers")
        if dim % n_heads:
            raise ValueError(f"n_heads ({n_heads}) must divide dim ({dim})")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if not init_std > 0:
            raise ValueError(f"init_std must be > 0, got {init_std}")
        # the constructor's arguments, enough to rebuild the module (save_backbone)
        self.arch = dict(n_items=n_items, max_len=max_len, dim=dim, n_layers=n_layers,
                         n_heads=n_heads, dropout=float(dropout), causal=bool(causal),
                         init_std=float(init_std))
        self.n_items, self.max_len, self.causal = n_items, max_len, bool(causal)
        self.tokens = nn.Embedding(n_items + 2, dim)  # PAD, items 1..n_items, [MASK]
        self.positions = nn.Embedding(max_len, dim)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, n_heads, dropout) for _ in range(n_layers))
        self.ln = nn.LayerNorm(dim)
        with torch.no_grad():  # every initial value from our generator
            for m in self.modules():
                if isinstance(m, nn.Linear | nn.Embedding):
                    m.weight.normal_(0.0, init_std, generator=generator)
                if isinstance(m, nn.Linear):
                    m.bias.zero_()

    def forward(self, tokens: torch.Tensor, causal: bool | None = None) -> torch.Tensor:
        """``(batch, L) -> (batch, L, dim)`` hidden states (after the final LayerNorm).

        Args:
            tokens: left-padded tokens, ``L <= max_len``.
            causal: overrides the module's default attention for this call.
        """
        return self._encode(tokens, causal)

    def _encode(self, tokens: torch.Tensor, causal: bool | None, last: bool = False):
        """:meth:`forward`; with ``last``, the final block computes the last column only
        (the same values there, with dropout drawn for that column alone)."""
        L = tokens.shape[1]
        if tokens.dim() != 2 or not 1 <= L <= self.max_len:
            raise ValueError(f"tokens must be (batch, L) with 1 <= L <= max_len "
                             f"({self.max_len}), got shape {tuple(tokens.shape)}")
        causal = self.causal if causal is None else causal
        pos = torch.arange(L - 1, -1, -1)  # (L,) counted from the right end
        # the modules' lookups through gather_rows: the same values and gradients, a faster
        # backward
        x = gather_rows(self.tokens.weight, tokens) + gather_rows(self.positions.weight, pos)
        x = self.drop(x)  # (batch, L, dim)
        allowed = attention_mask(tokens, causal)  # (batch, 1, L, L)
        for j, block in enumerate(self.blocks):
            x = block(x, allowed, last=last and j == len(self.blocks) - 1)
        return self.ln(x)  # (batch, L, dim), or (batch, 1, dim) with last

    def item_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(..., dim) -> (..., n_items)``: dot products with every item's embedding."""
        return hidden @ self.tokens.weight[1:self.n_items + 1].T

    def last(self, tokens: torch.Tensor, causal: bool | None = None) -> torch.Tensor:
        """``(batch, L) -> (batch, dim)``: the hidden state at the last (most recent) column."""
        return self._encode(tokens, causal, last=True)[:, -1]


def next_item_loss(model: SeqTransformer, inputs: torch.Tensor,
                   targets: torch.Tensor) -> torch.Tensor:
    r"""Mean cross-entropy of the next item over the whole catalogue, at every position.

    With hidden states :math:`h_t` of the causal encoder and targets :math:`s_{t+1}`:

    .. math::
        L = -\frac{1}{|T|} \sum_{(u, t) \in T} \ln \frac{\exp(h_{u,t}^\top e_{s_{u,t+1}})}
            {\sum_{j=1}^{|I|} \exp(h_{u,t}^\top e_j)}

    where :math:`T` holds the positions whose target is not ``PAD``. No negatives are
    sampled: Klenitskiy and Vasilev (2023) show that this full softmax is what makes SASRec
    beat BERT4Rec.

    Args:
        model: the encoder (its own attention default, causal for SASRec).
        inputs, targets: ``(batch, L)`` tokens from
            :func:`recsys_ref.sequences.next_item_examples`.

    Returns:
        A scalar tensor. See the chapter "Self-supervised pretraining".
    """
    if inputs.shape != targets.shape:
        raise ValueError(f"inputs and targets must have the same shape, got "
                         f"{tuple(inputs.shape)} and {tuple(targets.shape)}")
    hidden = model(inputs)  # (batch, L, dim)
    at = targets != PAD  # (batch, L)
    if not at.any():
        return hidden.sum() * 0.0  # nothing to predict in this batch
    logits = model.item_logits(hidden[at])  # (n, n_items): only where a target exists
    return F.cross_entropy(logits, targets[at] - 1)


def start_from(net: SeqTransformer, init) -> None:
    """Copy the weights of ``init`` into ``net``; ``ValueError`` unless ``init`` is a
    :class:`SeqTransformer` with the same weight shapes. ``init`` itself is not modified."""
    same = ("n_items", "max_len", "dim", "n_layers", "n_heads")  # shapes of weights
    if not isinstance(init, SeqTransformer) or any(init.arch[k] != net.arch[k] for k in same):
        raise ValueError(f"init must be a SeqTransformer with this model's {same}")
    net.load_state_dict(init.state_dict())


@torch.no_grad()
def last_logits(net: SeqTransformer, seqs: torch.Tensor, causal: bool | None = None):
    """``(batch, L) -> (batch, n_items)``: the item logits at each row's last column, in
    chunks of 256 rows so memory stays bounded at ``(256, L, dim)``."""
    out = []
    for s in range(0, len(seqs), 256):
        (chunk,) = trim_padding(check_sequences(seqs[s:s + 256]))
        out.append(net.item_logits(net.last(chunk, causal)))  # (b, n_items)
    return torch.cat(out) if out else torch.empty(0, net.n_items)


@dataclass
class SASRecConfig:
    """Hyperparameters of :class:`SASRec`.

    The defaults are a small encoder that trains in seconds per epoch on MovieLens-100K; the
    chapter "Self-supervised pretraining" chooses the width, depth and dropout by a
    validation search it runs (:mod:`recsys_ref.tuning`) and passes them explicitly.
    """

    max_len: int = 50  # items of history kept per user (the most recent ones)
    dim: int = 64  # embedding and hidden size
    n_layers: int = 1  # Transformer blocks
    n_heads: int = 2  # attention heads (must divide dim)
    dropout: float = 0.1  # on the embeddings and each block's residual branches
    init_std: float = 0.02  # weights start as N(0, init_std^2)
    n_epochs: int = 100  # maximum epochs (one epoch: every user's sequence once)
    lr: float = 1e-3  # AdamW step size
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    batch_size: int = 64  # sequences per minibatch
    patience: int | None = 5  # evaluations without improvement before stopping (with valid)
    eval_every: int = 2  # epochs between validation evaluations
    metric: str = "NDCG@10"  # validation metric for early stopping
    seed: int = 0
    progress: bool = False  # tqdm progress bar

    def __post_init__(self):
        check_config(self, positive_ints=("max_len", "dim", "n_layers", "n_heads", "n_epochs",
                                          "batch_size", "eval_every"),
                     positive=("lr", "init_std"), nonnegative=("weight_decay",),
                     fractions=("dropout",))
        if self.dim % self.n_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must divide dim ({self.dim})")

    def backbone(self, n_items: int, generator: torch.Generator | None = None,
                 causal: bool = True) -> SeqTransformer:
        """A fresh :class:`SeqTransformer` of this architecture."""
        return SeqTransformer(n_items, self.max_len, self.dim, self.n_layers, self.n_heads,
                              self.dropout, causal, self.init_std, generator)


class SASRec(ConfiguredRecommender):
    r"""SASRec with the full-softmax next-item objective (SASRec+CE of Klenitskiy and Vasilev).

    :meth:`fit` turns ``train`` into each user's last ``max_len + 1`` items in time order
    (:func:`recsys_ref.sequences.user_sequences`) and minimises :func:`next_item_loss` with
    AdamW over minibatches of users, every position predicting its successor. :meth:`score`
    encodes the user's stored training sequence and reads the next-item logits at its last
    position, so refitting on ``train`` + ``valid`` makes the validation item part of the
    history the test item is predicted from. With ``valid``, training stops when the
    validation ``metric`` (full ranking, training items excluded) has not improved for
    ``patience`` evaluations, and the best parameters are kept.

    Args:
        n_users, n_items: table sizes.
        config: a :class:`SASRecConfig`; keyword arguments override its fields.

    See the chapter "Self-supervised pretraining".
    """

    config_class = SASRecConfig

    def fit(self, train: pd.DataFrame, valid: pd.DataFrame | None = None,
            init: SeqTransformer | None = None) -> SASRec:
        """Fit on the sequences of ``train``; early-stop on ``valid`` if given.

        Args:
            train: ``user_idx, item_idx, timestamp`` of the interactions.
            valid: optional validation interactions (one next item per user).
            init: optional pretrained encoder of the same architecture whose weights start
                the fit (it is copied, not modified); see
                :func:`recsys_ref.pretraining.finetune`.
        """
        cfg = self.config
        self._check_train(train, ["timestamp"], unique=False)
        seqs = user_sequences(train, self.n_users, cfg.max_len + 1, self.n_items)
        inputs, targets = next_item_examples(seqs)  # (n, max_len) each
        if len(inputs) == 0:
            raise ValueError("train has no user with 2 or more interactions: there is no next "
                             "item to learn from")
        self.sequences_ = seqs[:, 1:]  # (n_users, max_len): the history score() reads
        gen = seed_everything(cfg.seed)
        self.net_ = cfg.backbone(self.n_items, gen)
        if init is not None:
            start_from(self.net_, init)
        opt = torch.optim.AdamW(self.net_.parameters(), lr=cfg.lr,
                                weight_decay=cfg.weight_decay)

        def epoch(_):
            self.net_.train()
            total, n = 0.0, 0
            order = bucket_order(inputs, cfg.batch_size, gen)  # similar lengths together
            for x, y in minibatches(inputs[order], targets[order], batch_size=cfg.batch_size,
                                    shuffle=False):
                x, y = trim_padding(x, y)  # (b, <= max_len)
                m = int((y != PAD).sum())
                total, n = total + gradient_step(opt, next_item_loss(self.net_, x, y)) * m, n + m
            self.net_.eval()
            return total / max(n, 1)

        eval_fn = None if valid is None else ranking_eval_fn(self, valid, train, cfg.metric)
        result = fit_from_config(epoch, cfg, module=self.net_, eval_fn=eval_fn, desc="SASRec")
        self.net_.eval()
        self.history_, self.best_epoch_ = result.history, result.best_epoch
        return self

    def use_history(self, frame: pd.DataFrame) -> SASRec:
        """Score from the sequences of ``frame`` from now on, without retraining.

        E.g. ``model.fit(train, valid).use_history(pd.concat([train, valid]))`` predicts the
        test item after the validation item, which was an input but never a training target.

        Args:
            frame: ``user_idx, item_idx, timestamp`` of each user's history.

        Returns:
            ``self``. See the chapter "Self-supervised pretraining".
        """
        check_frame(frame, "frame", ["user_idx", "item_idx", "timestamp"])
        seqs = user_sequences(frame, self.n_users, self.config.max_len + 1, self.n_items)
        self.sequences_ = seqs[:, 1:]  # (n_users, max_len), as fit() stores them
        return self

    @torch.no_grad()
    def score(self, user_idx) -> torch.Tensor:
        """``(batch,) -> (batch, n_items)`` next-item logits after each user's history.

        Users without training items get the scores of an empty history (one ``PAD``).
        """
        users = self._users(user_idx)
        self.net_.eval()
        return last_logits(self.net_, self.sequences_[users])
