r"""Neural collaborative filtering (He et al. 2017): GMF, MLP and NeuMF, trained with log loss.

See the chapter "Deep recommenders".
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from recsys_ref.checks import check_config, check_positive_int
from recsys_ref.matrix import UserItems, sorted_pairs
from recsys_ref.models.base import ConfiguredRecommender
from recsys_ref.models.bpr import sample_negatives
from recsys_ref.training import (
    fit_from_config,
    gather_rows,
    gradient_step,
    minibatches,
    ranking_eval_fn,
    seed_everything,
)

MODELS = ("gmf", "mlp", "neumf")


class NCFNet(nn.Module):
    r"""The NCF networks; ``model`` picks which branches exist.

    .. math::
        \phi^{GMF} = p_u \odot q_i, \qquad
        \phi^{MLP} = a_L(\dots a_1(W_1 [p^M_u; q^M_i] + b_1) \dots), \qquad
        \hat y_{ui} = \sigma\big(h^\top [\phi^{GMF}; \phi^{MLP}] + b\big)

    with ReLU activations :math:`a_l`; GMF keeps only :math:`\phi^{GMF}`, MLP only
    :math:`\phi^{MLP}`. :meth:`forward` returns the logit (before :math:`\sigma`).

    Args:
        n_users, n_items: table sizes.
        model: ``"gmf"``, ``"mlp"`` or ``"neumf"``.
        n_factors: GMF embedding size (its predictive factors).
        layers: MLP sizes, input first: each MLP embedding has ``layers[0] // 2``
            dimensions, and ``layers[-1]`` is the MLP's predictive factors.
        init_std: embeddings start as ``N(0, init_std^2)`` (the paper: 0.01).
        generator: the source of the initial values.
    """

    def __init__(self, n_users: int, n_items: int, model: str, n_factors: int,
                 layers: tuple[int, ...], init_std: float = 0.01,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.model = model
        width = 0  # input size of the output layer h
        if model != "mlp":
            self.P = nn.Parameter(init_std * torch.randn(n_users, n_factors, generator=generator))
            self.Q = nn.Parameter(init_std * torch.randn(n_items, n_factors, generator=generator))
            width += n_factors
        if model != "gmf":
            e = layers[0] // 2
            self.P_mlp = nn.Parameter(init_std * torch.randn(n_users, e, generator=generator))
            self.Q_mlp = nn.Parameter(init_std * torch.randn(n_items, e, generator=generator))
            # as in the paper's code: the concatenation [p; q] has layers[0] units, then
            # one Linear + ReLU per following size
            self.mlp = nn.ModuleList(nn.Linear(a, b) for a, b in
                                     zip(layers[:-1], layers[1:], strict=True))
            width += layers[-1]
        self.out = nn.Linear(width, 1)
        with torch.no_grad():  # Glorot-uniform weights, zero biases, from our generator
            for layer in [*getattr(self, "mlp", []), self.out]:
                bound = (6 / (layer.in_features + layer.out_features)) ** 0.5
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.zero_()

    def branches(self, p_g, q_g, z) -> torch.Tensor:
        """``[phi_GMF; phi_MLP]`` from GMF embeddings and the MLP's first pre-activation."""
        parts = []
        if self.model != "mlp":
            parts.append(p_g * q_g)  # (..., n_factors)
        if self.model != "gmf":
            z = F.relu(z)
            for layer in self.mlp[1:]:
                z = F.relu(layer(z))
            parts.append(z)  # (..., layers[-1])
        return torch.cat(parts, -1)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``(n,), (n,) -> (n,)`` logits."""
        p_g = gather_rows(self.P, users) if self.model != "mlp" else None  # (n, d)
        q_g = gather_rows(self.Q, items) if self.model != "mlp" else None
        z = None
        if self.model != "gmf":  # W_1 [p; q] + b_1, (n, layers[0])
            z = self.mlp[0](torch.cat([gather_rows(self.P_mlp, users),
                                       gather_rows(self.Q_mlp, items)], -1))
        return self.out(self.branches(p_g, q_g, z))[:, 0]

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """``(batch,) -> (batch, n_items)`` logits of every item, without materialising pairs.

        The first MLP layer splits as :math:`W_1 [p; q] = W_p p + W_q q`: the user and item
        halves are computed once each and broadcast, ``(batch, 1, h) + (1, n_items, h)``.
        """
        p_g = self.P[users][:, None, :] if self.model != "mlp" else None  # (b, 1, d)
        q_g = self.Q[None, :, :] if self.model != "mlp" else None  # (1, n_items, d)
        z = None
        if self.model != "gmf":
            first, e = self.mlp[0], self.P_mlp.shape[1]
            z_u = self.P_mlp[users] @ first.weight[:, :e].T + first.bias  # (b, h)
            z_i = self.Q_mlp @ first.weight[:, e:].T  # (n_items, h)
            z = z_u[:, None, :] + z_i[None, :, :]  # (b, n_items, h)
        return self.out(self.branches(p_g, q_g, z))[..., 0]


def ncf_loss(net: NCFNet, users, items, labels, reg: float = 0.0) -> torch.Tensor:
    r"""Mean log loss (binary cross-entropy) of a batch, plus L2 on the embeddings it touches.

    .. math::
        L = \frac{1}{n} \sum_{(u,i,y)} \Big[ -y \ln \hat y_{ui} - (1 - y) \ln(1 - \hat y_{ui})
            + \lambda \big( \|p_u\|^2 + \|q_i\|^2 \big) \Big]

    where :math:`p_u, q_i` are all of the user's and item's embeddings (GMF and MLP).

    Args:
        net: the network.
        users: ``(n,)`` user indices.
        items: ``(n,)`` item indices.
        labels: ``(n,)`` floats, 1 for observed pairs and 0 for sampled negatives.
        reg: :math:`\lambda`.

    Returns:
        A scalar tensor. See the chapter "Deep recommenders".
    """
    loss = F.binary_cross_entropy_with_logits(net(users, items), labels)
    if reg:
        tables = [(net.P, net.Q)] if net.model != "mlp" else []
        tables += [(net.P_mlp, net.Q_mlp)] if net.model != "gmf" else []
        for P, Q in tables:
            loss = loss + reg * (gather_rows(P, users).square().sum(-1)
                                 + gather_rows(Q, items).square().sum(-1)).mean()
    return loss


def training_examples(users: torch.Tensor, items: torch.Tensor, seen: UserItems | torch.Tensor,
                      n_negatives: int, generator: torch.Generator | None = None):
    """One epoch's examples: every positive pair, then ``n_negatives`` fresh negatives each.

    Args:
        users, items: ``(n,)`` the positive pairs.
        seen: each user's positives (sparse, :class:`recsys_ref.matrix.UserItems`, or a
            ``(n_users, n_items)`` bool mask); negatives are never in it.
        n_negatives: negatives per positive, drawn uniformly among the user's unseen items.
        generator: the source of the negatives.

    Returns:
        ``(users, items, labels)``, each ``(n (1 + n_negatives),)``: the positives (label 1)
        followed by the negatives (label 0), negative ``j * n_negatives + t`` of user
        ``users[j]``.
    """
    n_items = seen.n_items if isinstance(seen, UserItems) else seen.shape[1]
    neg = sample_negatives(users, n_items, n_negatives, seen, generator)  # (n, k)
    u = torch.cat([users, users.repeat_interleave(n_negatives)])
    i = torch.cat([items, neg.reshape(-1)])
    y = torch.cat([torch.ones(len(users)), torch.zeros(neg.numel())])
    return u, i, y


def load_pretrained(neumf: NCFNet, gmf: NCFNet, mlp: NCFNet, alpha: float = 0.5) -> None:
    r"""Initialise NeuMF from trained GMF and MLP networks, in place (He et al., sec. 3.4.1).

    Embeddings and MLP layers are copied; the output layer becomes
    :math:`h = [\alpha h^{GMF}; (1 - \alpha) h^{MLP}]` with bias
    :math:`\alpha b^{GMF} + (1 - \alpha) b^{MLP}`, so NeuMF's logit starts as
    :math:`\alpha` times GMF's plus :math:`1 - \alpha` times MLP's.
    """
    if (neumf.model, gmf.model, mlp.model) != ("neumf", "gmf", "mlp"):
        raise ValueError("pretrained must be (a GMF, an MLP) for a NeuMF")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    own = neumf.state_dict()
    pre = {k: v for k, v in gmf.state_dict().items() if k in ("P", "Q")}
    pre |= {k: v for k, v in mlp.state_dict().items() if not k.startswith("out.")}
    bad = [k for k, v in pre.items() if own[k].shape != v.shape]
    if bad:
        raise ValueError(f"pretrained networks do not match NeuMF's sizes in {bad}")
    d = gmf.out.in_features
    with torch.no_grad():
        neumf.load_state_dict(pre, strict=False)
        neumf.out.weight[:, :d] = alpha * gmf.out.weight
        neumf.out.weight[:, d:] = (1 - alpha) * mlp.out.weight
        neumf.out.bias.copy_(alpha * gmf.out.bias + (1 - alpha) * mlp.out.bias)


@dataclass
class NCFConfig:
    """Hyperparameters of :class:`NCF`; the chapter "Deep recommenders" chooses the sizes,
    steps and negatives by a validation search (:mod:`recsys_ref.tuning`).

    For a NeuMF initialised from a trained GMF and MLP, the paper switches to plain SGD
    (``optimizer="sgd"``); a mean loss over 1,024 examples makes each embedding's gradient
    small, so its step must be large (the chapter searches it around 1).
    """

    model: str = "neumf"  # "gmf", "mlp" or "neumf"
    n_factors: int = 32  # GMF embedding size (predictive factors)
    layers: tuple[int, ...] = (64, 32, 16)  # MLP sizes from the input [p; q] of layers[0]
    n_epochs: int = 100  # maximum epochs (one epoch: every training pair once + negatives)
    lr: float = 1e-3  # step size
    optimizer: str = "adam"  # "adam", or "sgd" (the paper's choice after pretraining)
    reg: float = 0.0  # lambda, L2 on the embeddings of each example (ncf_loss)
    n_negatives: int = 4  # negatives per positive, re-sampled every epoch
    batch_size: int = 1024  # examples (positives and negatives) per minibatch
    init_std: float = 0.01  # embeddings start as N(0, init_std^2)
    alpha: float = 0.5  # NeuMF from pretrained GMF and MLP: weight of GMF's output layer
    patience: int | None = 5  # evaluations without improvement before stopping (with valid)
    eval_every: int = 2  # epochs between validation evaluations
    metric: str = "NDCG@10"  # validation metric for early stopping
    seed: int = 0
    progress: bool = False  # tqdm progress bar

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        check_config(self, positive_ints=("n_factors", "n_epochs", "n_negatives", "batch_size",
                                          "eval_every"),
                     positive=("lr", "init_std"), nonnegative=("reg",))
        self.layers = tuple(check_positive_int(n, "layers") for n in self.layers)
        if len(self.layers) < 2 or self.layers[0] % 2:
            raise ValueError(f"layers must have >= 2 sizes, the first even, got {self.layers}")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")


class NCF(ConfiguredRecommender):
    r"""GMF, MLP or NeuMF (He et al. 2017) for implicit feedback, trained with log loss.

    Every distinct training pair is a positive (label 1); each epoch draws ``n_negatives``
    new items per positive uniformly among those the user has not interacted with (label 0,
    :func:`recsys_ref.models.bpr.sample_negatives`), and :func:`ncf_loss` is minimised over
    minibatches of the shuffled positives and negatives. A NeuMF can start from a trained GMF
    and MLP (:meth:`fit`'s ``pretrained``; :func:`load_pretrained`). With ``valid``, training
    stops when the validation ``metric`` (full ranking, training items excluded) has not
    improved for ``patience`` evaluations and the best parameters are kept.

    Args:
        n_users, n_items: table sizes.
        config: an :class:`NCFConfig`; keyword arguments override its fields.

    See the chapter "Deep recommenders".
    """

    config_class = NCFConfig

    def fit(self, train: pd.DataFrame, valid: pd.DataFrame | None = None,
            pretrained: tuple[NCF, NCF] | None = None) -> NCF:
        """Fit on the distinct pairs of ``train``; early-stop on ``valid`` if given.

        Args:
            train: ``user_idx, item_idx`` of the positives.
            valid: optional validation interactions.
            pretrained: ``(gmf, mlp)``, two fitted :class:`NCF` whose sizes match this
                NeuMF's (``n_factors`` and ``layers``); their weights initialise it.
        """
        cfg = self.config
        self._check_train(train)
        # sparse: the positives per user (CSR) and the distinct pairs sorted by user
        seen = UserItems(train, self.n_users, self.n_items, name="train")
        users, items = sorted_pairs(train, self.n_items)  # (n,) distinct positive pairs
        gen = seed_everything(cfg.seed)
        self.net_ = NCFNet(self.n_users, self.n_items, cfg.model, cfg.n_factors, cfg.layers,
                           cfg.init_std, gen)
        if pretrained is not None:
            if not (isinstance(pretrained, tuple | list) and len(pretrained) == 2
                    and all(hasattr(m, "net_") for m in pretrained)):
                raise ValueError("pretrained must be a pair (gmf, mlp) of fitted NCF models")
            load_pretrained(self.net_, pretrained[0].net_, pretrained[1].net_, cfg.alpha)
        params = self.net_.parameters()
        opt = torch.optim.Adam(params, lr=cfg.lr, fused=True) if cfg.optimizer == "adam" \
            else torch.optim.SGD(params, lr=cfg.lr)

        def epoch(_):
            u, i, y = training_examples(users, items, seen, cfg.n_negatives, gen)  # fresh
            total = 0.0
            for ub, ib, yb in minibatches(u, i, y, batch_size=cfg.batch_size, generator=gen):
                total += gradient_step(opt, ncf_loss(self.net_, ub, ib, yb, cfg.reg)) * len(ub)
            return total / len(u)

        eval_fn = None if valid is None else ranking_eval_fn(self, valid, train, cfg.metric)
        result = fit_from_config(epoch, cfg, module=self.net_, eval_fn=eval_fn,
                                 desc=f"NCF ({cfg.model})")
        self.history_, self.best_epoch_ = result.history, result.best_epoch
        return self

    @torch.no_grad()
    def score(self, user_idx) -> torch.Tensor:
        """``(batch,) -> (batch, n_items)`` logits; 64 users at a time bound the MLP's memory."""
        users = self._users(user_idx)
        return torch.cat([self.net_.score_all(users[s:s + 64])
                          for s in range(0, len(users), 64)]) if len(users) else \
            torch.empty(0, self.n_items)

    @torch.no_grad()
    def predict(self, user_idx, item_idx) -> torch.Tensor:
        """``(n,), (n,) -> (n,)`` probabilities :math:`\\hat y_{ui}` of an interaction."""
        users, items = self._pairs(user_idx, item_idx)
        return torch.sigmoid(self.net_(users, items))
