r"""AutoRec (Sedhain et al. 2015): an autoencoder of the rating matrix, item-based (I-AutoRec).

See the chapter "Deep recommenders".
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from recsys_ref.checks import check_config, check_rating_range, resolve_rating_range
from recsys_ref.matrix import column, interaction_mask, rating_matrix
from recsys_ref.models.base import ConfiguredRecommender
from recsys_ref.models.baselines import RATING_COLUMNS
from recsys_ref.training import (
    fit_from_config,
    gather_rows,
    gradient_step,
    minibatches,
    rmse_eval_fn,
    seed_everything,
)

OPTIMIZERS = ("adam", "rprop")


class ItemAutoencoder(nn.Module):
    r"""One hidden layer: :math:`h(r) = W \sigma(V r + \mu) + b` on ``(batch, n_users)`` rows.

    Args:
        n_users: length of an item's rating vector (input and output size).
        n_hidden: hidden units ``k``.
        generator: the source of the initial weights (uniform in :math:`\pm 1/\sqrt{fan_{in}}`,
            as ``nn.Linear``).
    """

    def __init__(self, n_users: int, n_hidden: int, generator: torch.Generator | None = None):
        super().__init__()
        self.encoder, self.decoder = nn.Linear(n_users, n_hidden), nn.Linear(n_hidden, n_users)
        with torch.no_grad():  # nn.Linear's init, but from our generator (reproducible)
            for layer in (self.encoder, self.decoder):
                bound = layer.in_features ** -0.5
                for p in (layer.weight, layer.bias):
                    p.uniform_(-bound, bound, generator=generator)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        """``(batch, n_users) -> (batch, n_users)``: sigmoid encoder, identity decoder."""
        return self.decoder(torch.sigmoid(self.encoder(r)))


def autorec_loss(net: ItemAutoencoder, inputs: torch.Tensor, targets: torch.Tensor,
                 observed: torch.Tensor, reg: float, share: float = 1.0) -> torch.Tensor:
    r"""The I-AutoRec objective on a batch of item vectors (masked squared error + L2).

    .. math::
        L = \sum_i \sum_{u \in U_i} \big(r_{ui} - h(\tilde r_i)_u\big)^2
            + \frac{\lambda}{2} \big(\|W\|_F^2 + \|V\|_F^2\big)

    Only observed ratings (:math:`u \in U_i`, the users who rated item :math:`i`) count: an
    unobserved cell is 0 in the input and absent from the loss, whatever its target holds.
    :math:`\tilde r_i` is the input, :math:`r_i` itself or a copy with some observed ratings
    dropped (denoising, see :class:`AutoRecConfig`).

    Args:
        net: the autoencoder.
        inputs: ``(batch, n_users)`` input rows :math:`\tilde r_i`, 0 where unobserved.
        targets: ``(batch, n_users)`` ratings :math:`r_i` to reconstruct.
        observed: ``(batch, n_users)`` bool mask of observed cells.
        reg: :math:`\lambda`.
        share: the fraction of the items in the batch; the penalty is scaled by it, so the
            minibatch losses of an epoch add up to :math:`L`.

    Returns:
        A scalar tensor. See the chapter "Deep recommenders".
    """
    # times the 0/1 mask rather than torch.where, whose branches mispredict on a random mask
    # (the same values: ratings are finite, and a -0.0 adds like 0.0)
    err = (targets - net(inputs)) * observed.to(targets.dtype)  # (batch, n_users), 0 off-mask
    penalty = net.encoder.weight.square().sum() + net.decoder.weight.square().sum()
    return err.square().sum() + 0.5 * reg * share * penalty


def drop_ratings(r: torch.Tensor, p: float, generator: torch.Generator | None = None):
    """Inverted dropout of the input cells: zero each with probability ``p``, scale the rest.

    ``F.dropout`` has no ``generator`` argument; this draws from ours, so fits are seeded.
    """
    if p == 0:
        return r
    keep = torch.rand(r.shape, generator=generator) >= p  # (batch, n_users)
    return r / (1 - p) * keep.to(r.dtype)  # torch.where(keep, ., 0.0), without branches


@dataclass
class AutoRecConfig:
    """Hyperparameters of :class:`AutoRec`; the chapter "Deep recommenders" chooses the hidden
    units, ``reg`` and the epochs on each fold's own validation split and keeps the step,
    dropout and batch size at these defaults.

    Sedhain et al. use 500 hidden units, L-BFGS or Rprop and no dropout; the defaults here
    are Adam with input dropout (denoising), which the chapter uses.
    """

    n_hidden: int = 250  # k, hidden units
    n_epochs: int = 300  # maximum epochs (one epoch: every item once)
    optimizer: str = "adam"  # "adam" (minibatches of items) or "rprop" (full batch)
    lr: float = 1e-3  # step size (rprop: the initial step)
    reg: float = 100.0  # lambda of the summed objective (autorec_loss)
    dropout: float = 0.5  # probability of dropping an input rating (denoising); 0: none
    batch_size: int = 128  # items per minibatch (adam only)
    patience: int | None = 20  # evaluations without improvement before stopping (with valid)
    eval_every: int = 1  # epochs between validation evaluations
    # clip predictions: "train" = the training ratings' min..max; (low, high); None: no clip
    rating_range: tuple[float, float] | str | None = "train"
    seed: int = 0
    progress: bool = False  # tqdm progress bar

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        check_config(self, positive_ints=("n_hidden", "n_epochs", "batch_size", "eval_every"),
                     positive=("lr",), nonnegative=("reg",), fractions=("dropout",))
        self.rating_range = check_rating_range(self.rating_range)


class AutoRec(ConfiguredRecommender):
    r"""Item-based AutoRec for explicit ratings (Sedhain et al. 2015).

    Item :math:`i` is the vector :math:`r_i \in \mathbb{R}^{n_{users}}` of its training ratings
    (0 where unrated); the network reconstructs it through ``n_hidden`` sigmoid units,

    .. math::
        h(r_i) = W \sigma(V r_i + \mu) + b, \qquad \hat r_{ui} = h(r_i)_u,

    fitted by minimising :func:`autorec_loss` over minibatches of items (Adam) or the full
    batch (Rprop). Each training input has its observed ratings dropped with probability
    ``dropout`` (:func:`drop_ratings`) while the targets stay complete, so the network learns
    to fill in ratings it was not shown, which is the prediction task. With ``valid`` given
    to :meth:`fit`, training stops when the validation RMSE has not improved for ``patience``
    evaluations and the best epoch's parameters are kept (``best_epoch_``, ``history_``).
    The book's protocol then refits on all the training data for ``best_epoch_`` epochs.

    Fallbacks, where the reconstruction has nothing to go on: an item without training
    ratings has an all-zero input, so it is predicted by the user's mean training rating; a
    user without training ratings never contributed a target, so they get the item's mean
    rating; the global mean if both are unknown. Predictions are clipped to ``rating_range``.

    Args:
        n_users, n_items: table sizes.
        config: an :class:`AutoRecConfig`; keyword arguments override its fields.

    See the chapter "Deep recommenders".
    """

    config_class = AutoRecConfig

    def fit(self, train: pd.DataFrame, valid: pd.DataFrame | None = None) -> AutoRec:
        """Fit on ``train``; early-stop on the RMSE of ``valid`` if given."""
        cfg = self.config
        self._check_train(train, RATING_COLUMNS, rating_range=self.config.rating_range)
        self.rating_range_ = resolve_rating_range(self.config.rating_range, train["rating"])
        self._pairs(column(train, "user_idx"), column(train, "item_idx"))  # index checks
        R = rating_matrix(train, self.n_users, self.n_items).T.contiguous()  # (n_items, n_users)
        M = interaction_mask(train, self.n_users, self.n_items).T.contiguous()
        self._fallback_tables(R, M)
        self.R_ = R  # the inputs predictions are reconstructed from
        gen = seed_everything(cfg.seed)
        self.net_ = ItemAutoencoder(self.n_users, cfg.n_hidden, gen)
        params = list(self.net_.parameters())
        n_obs = int(M.sum())

        if cfg.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=cfg.lr, fused=True)
        else:  # Rprop needs the full-batch gradient (it adapts steps to sign changes)
            opt = torch.optim.Rprop(params, lr=cfg.lr)
        batch_size = cfg.batch_size if cfg.optimizer == "adam" else self.n_items
        items = torch.arange(self.n_items)

        def epoch(_):
            total = 0.0
            for (i,) in minibatches(items, batch_size=batch_size, generator=gen):
                R_i = gather_rows(R, i)  # (batch, n_users) the items' rating vectors
                inputs = drop_ratings(R_i, cfg.dropout, gen)
                loss = autorec_loss(self.net_, inputs, R_i, gather_rows(M, i), cfg.reg,
                                    len(i) / self.n_items)
                total += gradient_step(opt, loss)
            self._recon_key = None  # fused Adam updates in place without bumping versions
            return total / n_obs

        eval_fn = None if valid is None else rmse_eval_fn(self, valid)
        result = fit_from_config(epoch, cfg, module=self.net_, eval_fn=eval_fn,
                                 higher_is_better=False, desc="AutoRec")
        self._recon_key = None  # the best state may have been loaded back
        self.history_, self.best_epoch_ = result.history, result.best_epoch
        return self

    def _fallback_tables(self, R: torch.Tensor, M: torch.Tensor) -> None:
        """Means used where the reconstruction has nothing to go on (see the class docs)."""
        n_i, n_u = M.sum(1), M.sum(0)  # (n_items,), (n_users,) training counts
        self.mu_ = float(R.sum() / M.sum())
        self.item_mean_ = torch.where(n_i > 0, R.sum(1) / n_i.clamp(min=1), self.mu_)
        self.user_mean_ = torch.where(n_u > 0, R.sum(0) / n_u.clamp(min=1), self.mu_)
        self.item_seen_, self.user_seen_ = n_i > 0, n_u > 0

    def _reconstruction(self) -> torch.Tensor:
        """``(n_items, n_users)`` ``h(r_i)`` for every item, computed once per state of the
        network: evaluation scores users in batches and validation calls :meth:`predict`
        every epoch, and each would otherwise rerun the whole autoencoder. :meth:`fit`
        clears it after every epoch (a fused optimizer step does not bump the parameters'
        version counters); the key also holds those counters, bumped by in-place edits and
        ``load_state_dict``, and the input matrix."""
        key = self._state_key()
        if getattr(self, "_recon_key", None) != key:
            self._recon = self.net_(self.R_)  # (n_items, n_users), ~10 ms on MovieLens-100K
            self._recon_key = key
        return self._recon

    def _state_key(self) -> tuple:
        """The input matrix and the parameters' identities and version counters."""
        return (id(self.R_), *(p._version for p in self.net_.parameters()),
                *(id(p) for p in self.net_.parameters()))

    def _pair_reconstruction(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``(n,), (n,) -> (n,)`` ``h(r_i)_u`` of the given pairs only. Validation predicts a
        few thousand pairs every epoch: the encoder runs on their items' rows and the decoder
        on each pair's user alone, about half the work of the whole reconstruction. The
        reconstruction is used instead when it is cached for the current state."""
        if getattr(self, "_recon_key", None) == self._state_key():
            return self._recon[items, users]  # already computed for this state
        rows, inverse = torch.unique(items, return_inverse=True)
        enc, dec = self.net_.encoder, self.net_.decoder
        z = torch.sigmoid(enc(self.R_[rows]))  # (n_rows, k) codes of the pairs' items
        # decoder row u of each pair: W[u] . z_i + b[u], (n,)
        return (z[inverse] * dec.weight[users]).sum(1) + dec.bias[users]

    def _clip(self, x: torch.Tensor) -> torch.Tensor:
        rr = self.rating_range_
        return x if rr is None else x.clamp(*rr)

    @torch.no_grad()
    def score(self, user_idx) -> torch.Tensor:
        """``(batch,) -> (batch, n_items)`` predicted ratings (with the fallbacks, clipped)."""
        users = self._users(user_idx)
        recon = self._reconstruction().T[users]  # (batch, n_items): column u of every h(r_i)
        recon = torch.where(self.item_seen_[None, :], recon, self.user_mean_[users, None])
        recon = torch.where(self.user_seen_[users, None], recon, self.item_mean_[None, :])
        return self._clip(recon)

    @torch.no_grad()
    def predict(self, user_idx, item_idx) -> torch.Tensor:
        """``(n,), (n,) -> (n,)`` predicted ratings :math:`h(r_i)_u` (with the fallbacks)."""
        users, items = self._pairs(user_idx, item_idx)
        pred = self._pair_reconstruction(users, items)
        pred = torch.where(self.item_seen_[items], pred, self.user_mean_[users])
        pred = torch.where(self.user_seen_[users], pred, self.item_mean_[items])
        return self._clip(pred)
