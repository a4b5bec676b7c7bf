r"""The two-tower (dual encoder) retrieval model: a user tower and an item tower over ids and
side features, scored by a dot product and trained with a softmax over items or with BPR.

See the chapter "Deep recommenders".
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from recsys_ref.checks import check_config, check_index, check_positive_int
from recsys_ref.features import Features
from recsys_ref.matrix import UserItems, sorted_pairs
from recsys_ref.models.base import ConfiguredRecommender, _tensor
from recsys_ref.models.bpr import sample_negatives
from recsys_ref.training import (
    fit_from_config,
    gather_rows,
    gradient_step,
    minibatches,
    minus_inf_mask,
    ranking_eval_fn,
    seed_everything,
)

LOSSES = ("softmax", "inbatch", "bpr")


class Tower(nn.Module):
    r"""An MLP over the concatenation of an id embedding and embedded features.

    .. math::
        x = [e_{id}; E_1[c_1]; \dots; E_m[c_m]; D x_{dense}], \qquad
        \mathrm{tower}(x) = W_L\, \mathrm{relu}(\dots \mathrm{relu}(W_1 x + b_1) \dots) + b_L

    With ``hidden=()`` the tower is one linear map, i.e. a sum of projected embeddings.

    Args:
        n_ids: number of ids (users or items), or 0 for a features-only tower.
        features: the entities' features (rows in id order), or ``None`` for an id-only tower.
        dim_id, dim_feature: id and per-feature embedding sizes.
        hidden: hidden layer sizes.
        dim_out: output (embedding) size.
        init_std: embeddings start as ``N(0, init_std^2)``.
        generator: the source of the initial values.
    """

    def __init__(self, n_ids: int, features: Features | None, dim_id: int, dim_feature: int,
                 hidden: tuple[int, ...], dim_out: int, init_std: float = 0.1,
                 generator: torch.Generator | None = None):
        super().__init__()
        if n_ids == 0 and features is None:
            raise ValueError("a tower needs ids, features or both")
        self.features, self.dim_id = features, dim_id if n_ids else 0

        def table(n, d):
            return nn.Parameter(init_std * torch.randn(n, d, generator=generator))

        self.ids = table(n_ids, dim_id) if n_ids else None
        cats = features.categorical if features is not None else {}
        self.tables = nn.ParameterDict({k: table(features.cardinality[k], dim_feature)
                                        for k in cats})
        n_dense = 0 if features is None else features.dense.shape[1]
        self.dense = table(n_dense, dim_feature) if n_dense else None  # D, (k, dim_feature)
        sizes = [self.dim_id + dim_feature * (len(cats) + (n_dense > 0)), *hidden, dim_out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in
                                    zip(sizes[:-1], sizes[1:], strict=True))
        with torch.no_grad():  # Glorot-uniform weights, zero biases, from our generator
            for layer in self.layers:
                bound = (6 / (layer.in_features + layer.out_features)) ** 0.5
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.zero_()

    def encode(self, id_vectors: torch.Tensor, features: Features | None) -> torch.Tensor:
        """``(n, dim_id)`` id embeddings (or zeros) and ``n`` rows of features -> ``(n, dim)``."""
        parts = [id_vectors] if self.dim_id else []
        if features is not None and self.features is not None:
            parts += [gather_rows(t, features.categorical[k]) for k, t in self.tables.items()]
            if self.dense is not None:
                parts.append(features.dense @ self.dense)  # (n, dim_feature)
        x = torch.cat(parts, 1)
        for j, layer in enumerate(self.layers):
            x = layer(x) if j == len(self.layers) - 1 else F.relu(layer(x))
        return x

    def forward(self, idx: torch.Tensor, keep_id: torch.Tensor | None = None) -> torch.Tensor:
        """``(n,)`` known ids -> ``(n, dim_out)``; ``keep_id`` ``(n,)`` bool zeroes the others'
        id embeddings (id dropout)."""
        ids = gather_rows(self.ids, idx) if self.dim_id else None  # (n, dim_id)
        if ids is not None and keep_id is not None:
            ids = ids * keep_id[:, None]
        feats = None if self.features is None else self.features.take(idx)
        return self.encode(ids, feats)

    def cold(self, features: Features) -> torch.Tensor:
        """``n`` rows of features of new entities -> ``(n, dim_out)``, id embedding zero."""
        return self.encode(torch.zeros(len(features), self.dim_id), features)


def softmax_loss(f_u: torch.Tensor, g: torch.Tensor, pos: torch.Tensor,
                 temperature: float = 1.0, seen: torch.Tensor | None = None) -> torch.Tensor:
    r"""Mean cross-entropy of the softmax over all items (but the user's other positives).

    .. math::
        L = -\frac{1}{b} \sum_{(u, i)} \ln \frac{\exp(f_u^\top g_i / \tau)}
            {\exp(f_u^\top g_i / \tau) + \sum_{j \notin I_u} \exp(f_u^\top g_j / \tau)}

    where :math:`I_u` are the user's training items: like BPR's and NCF's sampled negatives,
    the denominator holds only items the user has not interacted with, so the loss never
    pushes down one positive to raise another.

    Args:
        f_u: ``(b, d)`` user embeddings.
        g: ``(n_items, d)`` all item embeddings.
        pos: ``(b,)`` the positive item of each user.
        temperature: :math:`\tau`.
        seen: ``(b, n_items)`` bool, each user's training items; ``None``: every item is in
            the denominator.

    Returns:
        A scalar tensor. See the chapter "Deep recommenders".
    """
    logits = (f_u / temperature) @ g.T  # (b, n_items); scaling f_u is cheaper than logits
    if seen is not None:  # leave out the other positives, keep the target
        other = seen.scatter(1, pos[:, None], False)
        logits = logits + minus_inf_mask(other, logits.dtype)
    return F.cross_entropy(logits, pos)


def inbatch_softmax_loss(f_u: torch.Tensor, g: torch.Tensor, items: torch.Tensor,
                         log_q: torch.Tensor, temperature: float = 1.0,
                         seen: torch.Tensor | None = None) -> torch.Tensor:
    r"""Mean cross-entropy of the softmax over the batch's items, logQ-corrected.

    Pair :math:`k` of the batch has the positive :math:`i_k`; the other pairs' items are its
    negatives, drawn in proportion to their frequency :math:`q_j`, so the logit of item
    :math:`j` is corrected by :math:`-\ln q_j` (Yi et al. 2019):

    .. math::
        L = -\frac{1}{b} \sum_k \ln \frac{\exp(s_{kk})}{\sum_{l} \exp(s_{kl})}, \qquad
        s_{kl} = f_{u_k}^\top g_{i_l} / \tau - \ln q_{i_l}

    where the sum over :math:`l` skips the other columns holding :math:`i_k` (an item is not
    its own negative) or, given ``seen``, any training item of :math:`u_k`.

    Args:
        f_u: ``(b, d)`` user embeddings.
        g: ``(b, d)`` embeddings of the batch's items.
        items: ``(b,)`` their indices.
        log_q: ``(n_items,)`` :math:`\ln q_j`.
        temperature: :math:`\tau`.
        seen: optional ``(b, b)`` bool, ``seen[k, l]`` true when :math:`i_l` is a training
            item of :math:`u_k`.

    Returns:
        A scalar tensor. See the chapter "Deep recommenders".
    """
    other = items[:, None] == items[None, :] if seen is None else seen.clone()  # (b, b)
    other.fill_diagonal_(False)  # column k holds the target of row k
    logits = (f_u / temperature) @ g.T  # (b, b), column l: item i_l
    return F.cross_entropy(logits + (-log_q[items] + minus_inf_mask(other, logits.dtype)),
                           torch.arange(len(items)))


@dataclass
class TwoTowerConfig:
    """Hyperparameters of :class:`TwoTower`; the chapter "Deep recommenders" chooses the
    temperature, step and weight decay by a validation search (:mod:`recsys_ref.tuning`)."""

    dim: int = 32  # output embedding size d of both towers (the dot product's dimension)
    dim_id: int = 32  # id embedding size
    dim_feature: int = 16  # embedding size of each categorical feature (and of the dense block)
    hidden: tuple[int, ...] = ()  # hidden layers of each tower; (): a linear tower
    loss: str = "inbatch"  # "inbatch" (logQ-corrected), "softmax" (all items) or "bpr"
    temperature: float = 0.1  # logits = scores / temperature (softmax losses only)
    n_epochs: int = 100  # maximum epochs (one epoch: every training pair once)
    lr: float = 1e-3  # Adam(W) step size
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    id_dropout: float = 0.0  # probability of zeroing an example's id embeddings in training
    batch_size: int = 1024  # positive pairs per minibatch
    init_std: float = 0.1  # embeddings start as N(0, init_std^2)
    patience: int | None = 4  # evaluations without improvement before stopping (with valid)
    eval_every: int = 1  # epochs between validation evaluations
    metric: str = "NDCG@10"  # validation metric for early stopping
    seed: int = 0
    progress: bool = False  # tqdm progress bar

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        check_config(self, positive_ints=("dim", "dim_id", "dim_feature", "n_epochs",
                                          "batch_size", "eval_every"),
                     positive=("lr", "init_std", "temperature"), nonnegative=("weight_decay",),
                     fractions=("id_dropout",))
        self.hidden = tuple(check_positive_int(n, "hidden") for n in self.hidden)


class TwoTower(ConfiguredRecommender):
    r"""Dot product of a user tower and an item tower, :math:`s(u, i) = f(u)^\top g(i)`.

    The user tower :math:`f` reads the user id and ``user_features`` (age, gender,
    occupation), the item tower :math:`g` the item id and ``item_features`` (genres, year,
    optionally a text embedding); pass ``None`` for an id-only tower, ``use_ids=False`` for
    features only. Losses (``config.loss``), over minibatches of training pairs :math:`(u, i)`:

    * ``"inbatch"`` (the default): the softmax over the batch's items only (the other pairs'
      items are the negatives), logQ-corrected (:func:`inbatch_softmax_loss`). It is what
      large catalogues need, and cheaper per epoch than the full softmax (the chapter's
      exercise 4 compares the losses);
    * ``"softmax"``: the full softmax over all 1,682 items (:func:`softmax_loss`), exact;
    * ``"bpr"``: :math:`-\ln \sigma(s(u,i) - s(u,j))` with one uniform unseen negative.

    In every loss the negatives are items the user has not interacted with in ``train``.

    ``id_dropout`` zeroes an example's id embeddings with that probability during training,
    so the towers also learn to work from features alone, as they must for a new user or item
    (:meth:`new_user_embeddings`, :meth:`new_item_embeddings`). It costs some accuracy on
    known users (validation NDCG@10 0.069 with 0.2 against 0.074 without), hence the default
    0; set it when the cold-start embeddings matter.

    Args:
        n_users, n_items: table sizes.
        user_features, item_features: :class:`recsys_ref.features.Features` with
            ``n_users`` / ``n_items`` rows, or ``None``.
        use_ids: learn id embeddings (``False``: a pure content model).
        config: a :class:`TwoTowerConfig`; keyword arguments override its fields.

    See the chapter "Deep recommenders".
    """

    config_class = TwoTowerConfig

    def __init__(self, n_users: int, n_items: int, user_features: Features | None = None,
                 item_features: Features | None = None, use_ids: bool = True,
                 config: TwoTowerConfig | None = None, **overrides):
        super().__init__(n_users, n_items, config, **overrides)
        for name, f, n in (("user_features", user_features, n_users),
                           ("item_features", item_features, n_items)):
            if f is not None and (not isinstance(f, Features) or len(f) != n):
                raise ValueError(f"{name} must be None or Features with {n} rows")
        if not use_ids and (user_features is None or item_features is None):
            raise ValueError("use_ids=False needs both user_features and item_features")
        self.user_features, self.item_features, self.use_ids = \
            user_features, item_features, use_ids

    def fit(self, train: pd.DataFrame, valid: pd.DataFrame | None = None) -> TwoTower:
        """Fit on the distinct pairs of ``train``; early-stop on ``valid`` if given."""
        cfg = self.config
        self._check_train(train)
        # sparse: the positives per user (CSR) and the distinct pairs sorted by user
        seen = UserItems(train, self.n_users, self.n_items, name="train")
        users, items = sorted_pairs(train, self.n_items)  # (n,) distinct positive pairs
        gen = seed_everything(cfg.seed)
        towers = [Tower(n if self.use_ids else 0, f, cfg.dim_id, cfg.dim_feature, cfg.hidden,
                        cfg.dim, cfg.init_std, gen)
                  for n, f in ((self.n_users, self.user_features),
                               (self.n_items, self.item_features))]
        self.net_ = nn.ModuleDict({"user": towers[0], "item": towers[1]})
        opt = torch.optim.AdamW(self.net_.parameters(), lr=cfg.lr,
                                weight_decay=cfg.weight_decay)
        log_q = torch.log(torch.bincount(items, minlength=self.n_items).clamp(min=1)
                          / len(items))  # (n_items,) logQ of in-batch sampling

        def keep(n):  # (n,) bool: which examples keep their id embeddings
            return torch.rand(n, generator=gen) >= cfg.id_dropout if cfg.id_dropout else None

        def epoch(_):
            total = 0.0
            for u, i in minibatches(users, items, batch_size=cfg.batch_size, generator=gen):
                f_u = self.net_["user"](u, keep(len(u)))  # (b, d)
                if cfg.loss == "softmax":
                    g = self.net_["item"](torch.arange(self.n_items))  # (n_items, d)
                    loss = softmax_loss(f_u, g, i, cfg.temperature, seen.rows(u))
                elif cfg.loss == "inbatch":
                    g = self.net_["item"](i, keep(len(i)))  # (b, d)
                    loss = inbatch_softmax_loss(f_u, g, i, log_q, cfg.temperature,
                                                seen.block(u, i))  # (b, b)
                else:
                    j = sample_negatives(u, self.n_items, 1, seen, gen)[:, 0]  # (b,)
                    g = self.net_["item"](torch.cat([i, j]), keep(2 * len(i)))  # (2b, d)
                    diff = (f_u * (g[:len(i)] - g[len(i):])).sum(-1)  # (b,)
                    loss = -F.logsigmoid(diff).mean()
                total += gradient_step(opt, loss) * len(u)
            return total / len(users)

        eval_fn = None if valid is None else ranking_eval_fn(self, valid, train, cfg.metric)
        result = fit_from_config(epoch, cfg, module=self.net_, eval_fn=eval_fn,
                                 desc=f"TwoTower ({cfg.loss})")
        self.history_, self.best_epoch_ = result.history, result.best_epoch
        return self

    @torch.no_grad()
    def user_embeddings(self, user_idx) -> torch.Tensor:
        """``(n,) -> (n, dim)``: the user tower's output for known users."""
        return self.net_["user"](self._users(user_idx))

    @torch.no_grad()
    def item_embeddings(self, item_idx=None) -> torch.Tensor:
        """``(n,) -> (n, dim)``: the item tower's output for known items (default: all)."""
        if item_idx is None:
            return self.net_["item"](torch.arange(self.n_items))
        item_idx = _tensor(item_idx)
        if item_idx.dim() != 1:
            raise ValueError(f"item_idx must be 1-D, got shape {tuple(item_idx.shape)}")
        check_index(item_idx, "item_idx", self.n_items)
        return self.net_["item"](item_idx.long())

    @torch.no_grad()
    def new_user_embeddings(self, features: Features) -> torch.Tensor:
        """``(m, dim)`` embeddings of new users from their features alone (zero id embedding).

        Args:
            features: e.g. ``user_features(frame_of_new_users)``.
        """
        return self._cold("user", self.user_features, features)

    @torch.no_grad()
    def new_item_embeddings(self, features: Features) -> torch.Tensor:
        """``(m, dim)`` embeddings of new items from their features alone (zero id embedding)."""
        return self._cold("item", self.item_features, features)

    def _cold(self, side: str, known: Features | None, features: Features) -> torch.Tensor:
        if known is None:
            raise ValueError(f"this model has no {side} features: a new {side} has no embedding")
        if not isinstance(features, Features) or features.cardinality != known.cardinality \
                or features.dense_names != known.dense_names:
            raise ValueError(f"features must be Features with the same columns as the "
                             f"{side} features the model was built with")
        return self.net_[side].cold(features)

    @torch.no_grad()
    def score(self, user_idx) -> torch.Tensor:
        """``(batch,) -> (batch, n_items)`` dot products :math:`f(u)^\\top g(i)`."""
        return self.user_embeddings(user_idx) @ self.net_["item"](torch.arange(self.n_items)).T

    @torch.no_grad()
    def predict(self, user_idx, item_idx) -> torch.Tensor:
        """``(n,), (n,) -> (n,)`` scores :math:`f(u)^\\top g(i)` of the pairs."""
        users, items = self._pairs(user_idx, item_idx)
        return (self.net_["user"](users) * self.net_["item"](items)).sum(-1)

