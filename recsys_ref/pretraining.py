r"""Self-supervised objectives for sequence encoders, pretraining, fine-tuning and a cache.

* ``"next"``: :func:`.next_item_loss`, next-item cross-entropy at every position (SASRec).
* ``"cloze"``: :func:`cloze_loss`, BERT4Rec's masked-item prediction (Sun et al. 2019) with
  bidirectional attention, on inputs from :func:`mask_items`.
* ``"contrastive"``: :func:`contrastive_loss`, CL4SRec's InfoNCE (Xie et al. 2022) between
  two augmented views (:func:`crop`, :func:`mask`, :func:`reorder`) of each sequence.

:func:`pretrain` trains a :class:`.SeqTransformer` with one of them,
:func:`finetune` continues with next-item prediction as a :class:`.SASRec`, and
:func:`cached_backbone` keeps pretrained weights in the data cache. Sequences are the
left-padded token rows of :mod:`recsys_ref.sequences`. See the chapter
"Self-supervised pretraining".
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from recsys_ref.checks import check_frame, check_positive_int
from recsys_ref.data.cache import (
    data_home,
    locked,
    read_checked,
    remove_checked,
    write_checked,
)
from recsys_ref.model_cache import library_hash
from recsys_ref.models.sasrec import SASRec, SASRecConfig, SeqTransformer, next_item_loss
from recsys_ref.sequences import (
    PAD,
    bucket_order,
    check_sequences,
    lengths,
    mask_token,
    next_item_examples,
    trim_padding,
    user_sequences,
)
from recsys_ref.training import fit_epochs, gradient_step, minibatches, seed_everything

OBJECTIVES = ("cloze", "contrastive", "next")
ARCH = ("max_len", "dim", "n_layers", "n_heads", "dropout", "init_std")  # backbone fields

def _ratio(value: float, name: str) -> float:
    if not 0 <= value <= 1:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return float(value)


def _sizes(seqs: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n, k)``: each row's length and ``floor(ratio * n)`` (in float64, as Python does)."""
    n = lengths(seqs)  # (B,)
    return n, (ratio * n.double()).floor().long()


def mask_items(seqs: torch.Tensor, prob: float, n_items: int,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT4Rec's inputs: each item is replaced by [MASK] with probability ``prob``.

    A row where no item was drawn gets its most recent item masked, so every non-empty
    sequence contributes to the loss.

    Args:
        seqs: ``(B, L)`` left-padded tokens.
        prob: the masking probability.
        n_items: catalogue size (the [MASK] token is ``n_items + 1``).
        generator: the source of the draws.

    Returns:
        ``(masked, targets)``, each ``(B, L)``: the inputs, and the original token where one
        was masked (``PAD`` elsewhere). See the chapter "Self-supervised pretraining".
    """
    seqs, prob = check_sequences(seqs), _ratio(prob, "prob")
    real = seqs != PAD  # (B, L)
    chosen = (torch.rand(seqs.shape, generator=generator) < prob) & real
    chosen[:, -1] |= real[:, -1] & ~chosen.any(1)
    return seqs.masked_fill(chosen, mask_token(n_items)), seqs.where(chosen, PAD)


def cloze_loss(model: SeqTransformer, masked: torch.Tensor,
               targets: torch.Tensor) -> torch.Tensor:
    r"""Mean cross-entropy of the masked items, with bidirectional attention.

    .. math::
        L = -\frac{1}{|M|} \sum_{(u, t) \in M} \ln \frac{\exp(h_{u,t}^\top e_{s_{u,t}})}
            {\sum_{j=1}^{|I|} \exp(h_{u,t}^\top e_j)}

    where :math:`M` are the masked positions and :math:`h_{u,t}` attends to the whole
    (masked) sequence, earlier and later items alike.

    Args:
        model: the encoder (called with ``causal=False``).
        masked, targets: ``(B, L)`` from :func:`mask_items`.

    Returns:
        A scalar tensor. See the chapter "Self-supervised pretraining".
    """
    if masked.shape != targets.shape:
        raise ValueError(f"masked and targets must have the same shape, got "
                         f"{tuple(masked.shape)} and {tuple(targets.shape)}")
    hidden = model(masked, causal=False)  # (B, L, dim)
    at = targets != PAD
    if not at.any():
        return hidden.sum() * 0.0
    return F.cross_entropy(model.item_logits(hidden[at]), targets[at] - 1)  # (n, n_items)


def crop(seqs: torch.Tensor, ratio: float, generator: torch.Generator | None = None):
    r"""CL4SRec's item crop: a random contiguous run of :math:`\max(1, \lfloor \eta n \rfloor)`
    of each row's :math:`n` items, left-padded to the same width.

    Returns:
        ``(B, L)`` tokens. See the chapter "Self-supervised pretraining".
    """
    seqs, ratio = check_sequences(seqs), _ratio(ratio, "ratio")
    B, L = seqs.shape
    n, k = _sizes(seqs, ratio)
    k = k.clamp(min=1).minimum(n)  # (B,) kept items; 0 only for empty rows
    start = (torch.rand(B, generator=generator) * (n - k + 1)).long()  # 0..n-k
    t = torch.arange(L)[None, :] - (L - k)[:, None]  # (B, L) index within the crop
    src = (L - n + start)[:, None] + t  # column the item comes from
    return seqs.gather(1, src.clamp(0, L - 1)).masked_fill(t < 0, PAD)


def mask(seqs: torch.Tensor, ratio: float, n_items: int,
         generator: torch.Generator | None = None):
    r"""CL4SRec's item mask: :math:`\lfloor \gamma n \rfloor` random items of each row become
    [MASK] (token ``n_items + 1``).

    Returns:
        ``(B, L)`` tokens. See the chapter "Self-supervised pretraining".
    """
    seqs, ratio = check_sequences(seqs), _ratio(ratio, "ratio")
    _, k = _sizes(seqs, ratio)
    keys = torch.rand(seqs.shape, generator=generator).masked_fill(seqs == PAD, 2.0)
    rank = keys.argsort(1).argsort(1)  # (B, L) random rank among the row's items first
    return seqs.masked_fill(rank < k[:, None], mask_token(n_items))


def reorder(seqs: torch.Tensor, ratio: float, generator: torch.Generator | None = None):
    r"""CL4SRec's item reorder: a random contiguous run of :math:`\lfloor \beta n \rfloor`
    items of each row is shuffled; the rest stays in place.

    Returns:
        ``(B, L)`` tokens. See the chapter "Self-supervised pretraining".
    """
    seqs, ratio = check_sequences(seqs), _ratio(ratio, "ratio")
    B, L = seqs.shape
    n, k = _sizes(seqs, ratio)
    first = L - n + (torch.rand(B, generator=generator) * (n - k + 1)).long()  # (B,)
    col = torch.arange(L, dtype=torch.float64)[None, :].expand(B, L)
    inside = (col >= first[:, None]) & (col < (first + k)[:, None])  # (B, L) the run
    # sort keys: a column outside the run keeps its index; inside, a random key strictly
    # between the run's neighbours (first - 1 and first + k)
    noise = (first[:, None] - 0.5).double() + torch.rand(
        B, L, generator=generator, dtype=torch.float64) * k[:, None]
    return seqs.gather(1, torch.where(inside, noise, col).argsort(1))


def augment(seqs: torch.Tensor, n_items: int, generator: torch.Generator | None = None,
            crop_ratio: float = 0.6, mask_ratio: float = 0.3, reorder_ratio: float = 0.6):
    """One CL4SRec view: each row gets one of crop, mask or reorder, chosen uniformly.

    Args:
        seqs: ``(B, L)`` left-padded tokens.
        n_items: catalogue size (for the [MASK] token).
        generator: the source of every draw.
        crop_ratio, mask_ratio, reorder_ratio: eta, gamma, beta of :func:`crop`,
            :func:`mask`, :func:`reorder`.

    Returns:
        ``(B, L)`` tokens. See the chapter "Self-supervised pretraining".
    """
    views = torch.stack([crop(seqs, crop_ratio, generator),
                         mask(seqs, mask_ratio, n_items, generator),
                         reorder(seqs, reorder_ratio, generator)])  # (3, B, L)
    which = torch.randint(3, (len(seqs),), generator=generator)  # (B,)
    return views[which, torch.arange(len(seqs))]


def info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    r"""InfoNCE (NT-Xent) between two views, the other sequences of the batch as negatives.

    With :math:`s(a, b) = a^\top b / (\|a\| \|b\| \tau)` over the :math:`2B` views
    :math:`z_1 = (z_{1,1}..z_{1,B})`, :math:`z_2`:

    .. math::
        L = -\frac{1}{2B} \sum_{i=1}^{B} \Big[
            \ln \frac{e^{s(z_{1,i}, z_{2,i})}}{\sum_{v \ne z_{1,i}} e^{s(z_{1,i}, v)}}
          + \ln \frac{e^{s(z_{2,i}, z_{1,i})}}{\sum_{v \ne z_{2,i}} e^{s(z_{2,i}, v)}} \Big]

    where :math:`v` runs over the other :math:`2B - 1` views: the positive and the
    :math:`2(B - 1)` views of the other sequences.

    Args:
        z1, z2: ``(B, dim)`` representations of the two views, ``B >= 2``.
        temperature: :math:`\tau > 0`.

    Returns:
        A scalar tensor. See the chapter "Self-supervised pretraining".
    """
    if z1.shape != z2.shape or z1.dim() != 2 or len(z1) < 2:
        raise ValueError(f"z1 and z2 must both be (B, dim) with B >= 2, got "
                         f"{tuple(z1.shape)} and {tuple(z2.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    B = len(z1)
    z = F.normalize(torch.cat([z1, z2]), dim=1)  # (2B, dim)
    sim = (z @ z.T / temperature).masked_fill(torch.eye(2 * B, dtype=torch.bool), -torch.inf)
    positive = torch.cat([torch.arange(B, 2 * B), torch.arange(B)])  # (2B,) the other view
    return F.cross_entropy(sim, positive)


def contrastive_loss(model: SeqTransformer, seqs: torch.Tensor, n_items: int,
                     generator: torch.Generator | None = None, temperature: float = 0.5,
                     **ratios) -> torch.Tensor:
    """CL4SRec's objective: :func:`info_nce` between two :func:`augment` views of each sequence.

    A view is encoded by the hidden state at its last position, with causal attention (the
    state :class:`.SASRec` scores from).

    Args:
        model: the encoder.
        seqs: ``(B, L)`` left-padded tokens, ``B >= 2``.
        n_items: catalogue size.
        generator: the source of the augmentations.
        temperature: of :func:`info_nce`.
        ratios: ``crop_ratio``, ``mask_ratio``, ``reorder_ratio`` for :func:`augment`.

    Returns:
        A scalar tensor. See the chapter "Self-supervised pretraining".
    """
    v1 = augment(seqs, n_items, generator, **ratios)
    v2 = augment(seqs, n_items, generator, **ratios)
    v1, v2 = trim_padding(v1)[0], trim_padding(v2)[0]
    return info_nce(model.last(v1, causal=True), model.last(v2, causal=True), temperature)


@dataclass
class PretrainConfig:
    """Hyperparameters of :func:`pretrain` (the architecture comes from a SASRecConfig).

    See the chapter "Self-supervised pretraining".
    """

    objective: str = "cloze"  # "cloze", "contrastive" or "next"
    n_epochs: int = 30  # epochs over every user's sequence (no early stopping)
    lr: float = 1e-3  # AdamW step size
    weight_decay: float = 0.0
    batch_size: int = 64  # sequences per minibatch
    mask_prob: float = 0.2  # cloze: probability that an item is masked
    crop_ratio: float = 0.6  # contrastive: eta, fraction of items a crop keeps
    mask_ratio: float = 0.3  # contrastive: gamma, fraction of items masked
    reorder_ratio: float = 0.6  # contrastive: beta, fraction of items in the shuffled run
    temperature: float = 0.5  # contrastive: tau of info_nce
    seed: int = 0
    progress: bool = False  # tqdm progress bar

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        for name in ("n_epochs", "batch_size"):
            setattr(self, name, check_positive_int(getattr(self, name), name))
        if self.objective == "contrastive" and self.batch_size < 2:
            raise ValueError("batch_size must be >= 2 for the contrastive objective")
        self.seed = check_positive_int(self.seed, "seed", minimum=0)
        for name in ("mask_prob", "crop_ratio", "mask_ratio", "reorder_ratio"):
            _ratio(getattr(self, name), name)
        for name in ("lr", "temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")


def pretrain(backbone_config: SASRecConfig, train: pd.DataFrame, n_items: int,
             config: PretrainConfig | None = None, **overrides) -> SeqTransformer:
    """Train a fresh encoder on the sequences of ``train`` with a self-supervised objective.

    Args:
        backbone_config: its ``max_len, dim, n_layers, n_heads, dropout, init_std`` give the
            architecture (its training fields are ignored).
        train: ``user_idx, item_idx, timestamp`` of the interactions.
        n_items: catalogue size.
        config: a :class:`PretrainConfig`; keyword arguments (e.g. ``objective=``) override
            its fields.

    Returns:
        The trained :class:`.SeqTransformer` in eval mode, bidirectional for ``"cloze"`` and
        causal otherwise. See the chapter "Self-supervised pretraining".
    """
    cfg = replace(config or PretrainConfig(), **overrides)
    if not isinstance(backbone_config, SASRecConfig):
        raise TypeError(f"backbone_config must be a SASRecConfig, "
                        f"got {type(backbone_config).__name__}")
    check_frame(train, "train", ["user_idx", "item_idx", "timestamp"])
    n_items = check_positive_int(n_items, "n_items")
    n_users = int(train["user_idx"].max()) + 1
    max_len = backbone_config.max_len
    if cfg.objective == "next":
        data = next_item_examples(user_sequences(train, n_users, max_len + 1, n_items))
    else:
        seqs = user_sequences(train, n_users, max_len, n_items)  # (n_users, max_len)
        data = (seqs[lengths(seqs) > 0],)
    gen = seed_everything(cfg.seed)
    net = backbone_config.backbone(n_items, gen, causal=cfg.objective != "cloze")
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def loss_of(batch):
        if cfg.objective == "next":
            return next_item_loss(net, *batch)
        if cfg.objective == "cloze":
            return cloze_loss(net, *mask_items(batch[0], cfg.mask_prob, n_items, gen))
        if len(batch[0]) < 2:  # a lone sequence has no negatives
            return None
        return contrastive_loss(net, batch[0], n_items, gen, cfg.temperature,
                                crop_ratio=cfg.crop_ratio, mask_ratio=cfg.mask_ratio,
                                reorder_ratio=cfg.reorder_ratio)

    def epoch(_):
        net.train()
        total, n = 0.0, 0
        order = bucket_order(data[0], cfg.batch_size, gen)
        for batch in minibatches(*(t[order] for t in data), batch_size=cfg.batch_size,
                                 shuffle=False):
            loss = loss_of(trim_padding(*batch))
            if loss is None:
                continue
            total, n = total + gradient_step(opt, loss), n + 1
        return total / max(n, 1)

    net.history_ = fit_epochs(epoch, cfg.n_epochs, progress=cfg.progress,
                              desc=f"pretrain ({cfg.objective})").history
    return net.eval()


def finetune(backbone: SeqTransformer, train: pd.DataFrame, valid: pd.DataFrame | None = None,
             *, n_users: int, config: SASRecConfig | None = None, **overrides) -> SASRec:
    """Next-item fine-tuning of a pretrained encoder: a :class:`.SASRec` fitted from its weights.

    The architecture fields (``max_len, dim, n_layers, n_heads, init_std``) are taken from
    ``backbone``; the rest (lr, epochs, dropout, early stopping on ``valid``) from ``config``
    and ``overrides``. Attention is causal whatever the pretraining used.

    Returns:
        The fitted :class:`.SASRec`. See the chapter "Self-supervised pretraining".
    """
    if not isinstance(backbone, SeqTransformer):
        raise TypeError(f"backbone must be a SeqTransformer, got {type(backbone).__name__}")
    arch = {k: backbone.arch[k] for k in ("max_len", "dim", "n_layers", "n_heads", "init_std")}
    cfg = replace(config or SASRecConfig(), **(overrides | arch))
    model = SASRec(n_users, backbone.n_items, cfg)
    return model.fit(train, valid, init=backbone)


def save_backbone(backbone: SeqTransformer, path) -> Path:
    """Write the encoder's architecture and weights to ``path`` atomically.

    Args:
        backbone: the encoder.
        path: the file to (over)write; its folder is created.

    Returns:
        ``path`` as a :class:`pathlib.Path`. See the chapter "Self-supervised pretraining".
    """
    if not isinstance(backbone, SeqTransformer):
        raise TypeError(f"backbone must be a SeqTransformer, got {type(backbone).__name__}")
    buf = io.BytesIO()
    torch.save({"arch": backbone.arch, "state": backbone.state_dict()}, buf)
    write_checked(Path(path), buf.getvalue())  # with a sha256 that load_backbone verifies
    return Path(path)


def load_backbone(path) -> SeqTransformer:
    """Read an encoder written by :func:`save_backbone`.

    Args:
        path: the file.

    Returns:
        The :class:`.SeqTransformer` in eval mode; an unreadable or corrupted file (its
        sha256 differs from the one written with it) raises ``ValueError``.
        See the chapter "Self-supervised pretraining".
    """
    data = read_checked(Path(path))  # ValueError on a flipped byte
    try:
        saved = torch.load(io.BytesIO(data), weights_only=True)
        net = SeqTransformer(**saved["arch"])
        net.load_state_dict(saved["state"])
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same message
        raise ValueError(f"{path} is not a backbone saved by save_backbone: {e}") from e
    return net.eval()


def backbone_key(backbone_config: SASRecConfig, train: pd.DataFrame, n_items: int,
                 config: PretrainConfig) -> str:
    """sha256 of everything a pretrained encoder depends on: the architecture, the pretraining
    hyperparameters, ``n_items``, torch's version, the source of ``recsys_ref``
    (:func:`recsys_ref.model_cache.library_hash`: an edited library never reuses weights that
    the edit could change) and the training rows (in order).

    See the chapter "Self-supervised pretraining".
    """
    settings = {k: getattr(backbone_config, k) for k in ARCH}
    settings |= {k: v for k, v in asdict(config).items() if k != "progress"}
    settings |= {"n_items": n_items, "torch": torch.__version__.split("+")[0],
                 "library": library_hash()}
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    rows = train[["user_idx", "item_idx", "timestamp"]].to_numpy(dtype=np.int64)
    h.update(np.ascontiguousarray(rows).tobytes())
    return h.hexdigest()


def cached_backbone(backbone_config: SASRecConfig, train: pd.DataFrame, n_items: int,
                    config: PretrainConfig | None = None, folder=None,
                    **overrides) -> SeqTransformer:
    """:func:`pretrain`, with the weights cached under ``data_home()/backbones``.

    The file is named by :func:`backbone_key`, so another config or other training data
    never reuses it. A missing or unreadable file is (re)trained and written atomically
    with its sha256 (:func:`recsys_ref.data.cache.write_checked`): an interrupted run leaves no
    partial file, and a corrupted one is detected and retrained.

    Args:
        backbone_config, train, n_items, config, overrides: as for :func:`pretrain`.
        folder: the cache folder (default ``data_home() / "backbones"``).

    Returns:
        The pretrained :class:`.SeqTransformer`. See the chapter "Self-supervised pretraining".
    """
    cfg = replace(config or PretrainConfig(), **overrides)
    check_frame(train, "train", ["user_idx", "item_idx", "timestamp"])
    key = backbone_key(backbone_config, train, n_items, cfg)
    path = Path(folder) if folder is not None else data_home() / "backbones"
    path = path / f"{cfg.objective}-{key[:24]}.pt"
    with locked(path):  # a chapter executed alongside, pretraining the same key, goes first
        if path.exists():
            try:
                return load_backbone(path)
            except ValueError:
                remove_checked(path)  # corrupted: train again
        net = pretrain(backbone_config, train, n_items, cfg)
        save_backbone(net, path)
    return net
