r"""Model-agnostic meta-learning (MAML, Finn et al. 2017) of a rating network for new users.

Each user is a task: a support set :math:`S_u` and a query set :math:`Q_u`. The *local* (inner)
update adapts the parameters :math:`\theta` to the support set by gradient steps, and the
*global* (outer) update moves :math:`\theta` so that the adapted parameters do well on the
query set:

.. math::
    :label: maml

    \theta'_u = \theta - \alpha \nabla_\theta L_{S_u}(\theta), \qquad
    \theta \leftarrow \theta - \beta \nabla_\theta \frac{1}{B} \sum_u L_{Q_u}(\theta'_u)

(:math:`n` inner steps repeat the first update). The outer gradient differentiates through
the inner one, :math:`\nabla_\theta L_Q(\theta') = (I - \alpha \nabla^2_\theta L_S)
\nabla_{\theta'} L_Q`: second order, computed here with ``torch.func`` (``functional_call``
inside ``grad``, ``vmap`` over the tasks of a meta-batch); ``first_order=True`` drops the
Hessian term (FOMAML). Only the parameters named by ``local`` adapt in the inner loop: all
of them for MAML, the decision layers for MeLU (:mod:`recsys_ref.few_shot.melu`).
See the chapter "Few-shot recommendation".
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch
from torch.func import functional_call, grad, vmap

from recsys_ref import metrics
from recsys_ref.checks import (
    check_frame,
    check_index,
    check_positive_int,
    check_rating_range,
    resolve_rating_range,
)
from recsys_ref.features import Features
from recsys_ref.few_shot.base import FewShotRecommender
from recsys_ref.few_shot.rating_net import RatingNet
from recsys_ref.matrix import column
from recsys_ref.training import fit_from_config, gradient_step, seed_everything

LOCAL = ("all", "decision")


def masked_mse(net, params: dict, users, items, ratings, mask, reduction: str = "mean",
               ) -> torch.Tensor:
    """Squared error of ``functional_call(net, params)`` over the unmasked entries, averaged
    (``reduction="mean"``) or summed (``"sum"``)."""
    pred = functional_call(net, params, (users, items))  # (L,)
    w = mask.to(pred.dtype)
    total = ((pred - ratings) ** 2 * w).sum()
    return total if reduction == "sum" else total / w.sum().clamp(min=1)


def inner_adapt(net, params: dict, local, users, items, ratings, mask, lr: float,
                n_steps: int = 1, first_order: bool = False, reduction: str = "mean") -> dict:
    """The local update of :eq:`maml`: ``n_steps`` gradient steps on one task's support set.

    Args:
        net: the network (its own parameters are not used: ``params`` replace them).
        params: name -> tensor, the global parameters :math:`\\theta`.
        local: names of the parameters that adapt; the others stay global.
        users, items, ratings, mask: ``(L,)`` the support set, padding where ``mask`` is False.
        lr: the inner step size :math:`\\alpha`.
        first_order: detach the inner gradients (no Hessian term in the outer gradient).
        reduction: the support loss is the ``"mean"`` (MAML's choice) or the ``"sum"`` of the
            squared errors; with ``"sum"`` the step grows with the support size, as the
            Bayesian update of a linear model does for small K.

    Returns:
        The adapted parameters :math:`\\theta'` (a new dict). See the chapter
        "Few-shot recommendation".
    """
    fast = {k: params[k] for k in local}
    rest = {k: v for k, v in params.items() if k not in fast}

    def support_loss(fast_params):
        return masked_mse(net, rest | fast_params, users, items, ratings, mask, reduction)

    for _ in range(n_steps):
        g = grad(support_loss)(fast)
        fast = {k: fast[k] - lr * (g[k].detach() if first_order else g[k]) for k in fast}
    return rest | fast


@dataclass
class MAMLConfig:
    """Hyperparameters of :class:`MAML`; the chapter "Few-shot recommendation" chooses the
    inner and outer steps and the number of inner steps on validation users."""

    local: str = "all"  # inner loop adapts "all" parameters (MAML) or "decision" (MeLU)
    dim: int = 16  # embedding size per feature
    hidden: tuple[int, ...] = (64, 32)  # decision layers
    use_item_ids: bool = True  # embed item ids (and biases) besides the item features
    user_vector: bool = False  # add a user vector . item embedding term (see RatingNet)
    inner_lr: float = 0.01  # alpha, the local step size
    n_inner: int = 1  # local steps (training and adaptation)
    first_order: bool = False  # drop the second-order term (FOMAML)
    inner_reduction: str = "sum"  # support loss of the inner loop: "mean" or "sum"
    support_sizes: tuple[int, int] | None = (1, 20)  # meta-train support size range; None:
    # all ratings but the query set (RecBole-MetaRec's tasks)
    temporal: bool = True  # meta-train support = the user's first ratings in time (else random)
    n_query: int = 100  # query ratings per meta-train task (at most)
    meta_batch: int = 32  # tasks per outer step
    lr: float = 3e-3  # beta, Adam's global step size
    weight_decay: float = 0.0  # AdamW's decoupled weight decay of the global parameters
    # clip predictions: "train" = the training ratings' min..max; (low, high); None: no clip
    rating_range: tuple[float, float] | str | None = "train"
    n_epochs: int = 30  # maximum epochs (one epoch: every meta-train user once as a task)
    patience: int | None = 3  # evaluations without improvement before stopping (with valid)
    eval_every: int = 1  # epochs between validation evaluations
    seed: int = 0
    progress: bool = False  # tqdm progress bar

    def __post_init__(self):
        if self.inner_reduction not in ("mean", "sum"):
            raise ValueError(f"inner_reduction must be 'mean' or 'sum', "
                             f"got {self.inner_reduction!r}")
        if self.local not in LOCAL:
            raise ValueError(f"local must be one of {LOCAL}, got {self.local!r}")
        for name in ("dim", "n_inner", "n_query", "meta_batch", "n_epochs", "eval_every"):
            setattr(self, name, check_positive_int(getattr(self, name), name))
        self.hidden = tuple(check_positive_int(n, "hidden") for n in self.hidden)
        self.seed = check_positive_int(self.seed, "seed", minimum=0)
        if self.patience is not None:
            self.patience = check_positive_int(self.patience, "patience")
        for name in ("inner_lr", "lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        self.rating_range = check_rating_range(self.rating_range)
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.support_sizes is not None:
            lo, hi = self.support_sizes
            if not 1 <= lo <= hi:
                raise ValueError(f"support_sizes must be (lo, hi) with 1 <= lo <= hi, "
                                 f"got {self.support_sizes}")


def _pad(groups: list[tuple[int, np.ndarray, np.ndarray]]):
    """``[(user, items, ratings)]`` -> ``users, items, ratings, mask``, each ``(B, L)``."""
    L = max(1, max(len(i) for _, i, _ in groups))
    users = torch.tensor([u for u, _, _ in groups]).repeat_interleave(L).view(-1, L)
    items = torch.zeros(len(groups), L, dtype=torch.long)
    ratings = torch.zeros(len(groups), L)
    mask = torch.zeros(len(groups), L, dtype=torch.bool)
    for j, (_, i, r) in enumerate(groups):
        items[j, :len(i)], ratings[j, :len(i)], mask[j, :len(i)] = (
            torch.tensor(np.asarray(i)), torch.tensor(np.asarray(r), dtype=torch.float32), True)
    return users, items, ratings, mask


class MAML(FewShotRecommender):
    """A :class:`~recsys_ref.few_shot.rating_net.RatingNet` meta-trained by :eq:`maml`.

    Args:
        n_users, n_items: table sizes.
        item_features: features of every item (e.g. ``item_features(ml.items)``).
        user_features: features of every user, new ones included (their demographics are
            known at sign-up), or ``None``.
        config: a :class:`MAMLConfig`; keyword arguments override its fields.

    See the chapter "Few-shot recommendation".
    """

    def __init__(self, n_users: int, n_items: int, item_features: Features,
                 user_features: Features | None = None, config: MAMLConfig | None = None,
                 **overrides):
        super().__init__(n_users, n_items)
        if user_features is not None and len(user_features) != n_users:
            raise ValueError(f"user_features must have {n_users} rows")
        self.item_features, self.user_features = item_features, user_features
        self.config = replace(config or MAMLConfig(), **overrides)  # validates

    def local_names(self) -> list[str]:
        """Names of the parameters adapted in the inner loop."""
        names = [k for k, _ in self.net_.named_parameters()]
        return names if self.config.local == "all" else [k for k in names
                                                         if k.startswith("decision.")]

    def _task_loss(self, params, su, si, sr, sm, qu, qi, qr, qm):
        cfg = self.config
        fast = inner_adapt(self.net_, params, self.local_names(), su, si, sr, sm, cfg.inner_lr,
                           cfg.n_inner, cfg.first_order, cfg.inner_reduction)
        return masked_mse(self.net_, fast, qu, qi, qr, qm)

    def meta_loss(self, support, query, params: dict | None = None) -> torch.Tensor:
        """Mean query loss of a meta-batch after adaptation, differentiable in ``params``.

        Args:
            support, query: ``(users, items, ratings, mask)``, each ``(B, L)``.
            params: the global parameters (default: the network's own).
        """
        params = dict(self.net_.named_parameters()) if params is None else params
        losses = vmap(self._task_loss, in_dims=(None,) + (0,) * 8)(params, *support, *query)
        return losses.mean()

    def fit(self, train: pd.DataFrame, valid=None) -> MAML:
        """Meta-train on the users of ``train``; ``valid=(support, query)`` early-stops on
        the validation users' query RMSE."""
        cfg = self.config
        check_frame(train, "train", ["user_idx", "item_idx", "rating", "timestamp"])
        self.rating_range_ = resolve_rating_range(cfg.rating_range, train["rating"])
        gen = seed_everything(cfg.seed)
        self.net_ = RatingNet(self.user_features, self.item_features, self.n_items, cfg.dim,
                              cfg.hidden, float(train["rating"].mean()), cfg.use_item_ids,
                              cfg.user_vector, gen)
        order = train.sort_values(["user_idx", "timestamp"], kind="stable")
        tasks = [(int(u), g["item_idx"].to_numpy(), g["rating"].to_numpy())
                 for u, g in order.groupby("user_idx") if len(g) >= 2]
        opt = torch.optim.AdamW(self.net_.parameters(), lr=cfg.lr,
                                weight_decay=cfg.weight_decay)

        def sample(u, items, ratings):  # one task: (support, query) of a meta-train user
            n = len(items)
            if cfg.support_sizes is None:
                n_sup = max(1, n - cfg.n_query)
            else:
                lo, hi = cfg.support_sizes
                hi = min(hi, n - 1)
                n_sup = min(lo, hi) + int(torch.randint(hi - min(lo, hi) + 1, (1,),
                                                        generator=gen))
            perm = torch.randperm(n, generator=gen).numpy()
            sup = np.arange(n_sup) if cfg.temporal else np.sort(perm[:n_sup])
            rest = np.setdiff1d(np.arange(n), sup)
            qry = rest[torch.randperm(len(rest), generator=gen).numpy()[:cfg.n_query]]
            return (u, items[sup], ratings[sup]), (u, items[qry], ratings[qry])

        def epoch(_):
            total = 0.0
            perm = torch.randperm(len(tasks), generator=gen).tolist()
            for s in range(0, len(perm), cfg.meta_batch):
                pairs = [sample(*tasks[j]) for j in perm[s:s + cfg.meta_batch]]
                loss = self.meta_loss(_pad([p[0] for p in pairs]), _pad([p[1] for p in pairs]))
                total += gradient_step(opt, loss) * len(pairs)
            return total / len(tasks)

        eval_fn = None
        if valid is not None:
            v_support, v_query = valid
            check_frame(v_query, "valid query", ["user_idx", "item_idx", "rating"])
            target = column(v_query, "rating", torch.float32)

            def eval_fn():
                users = np.unique(v_query["user_idx"].to_numpy())
                pred = self.predict_new(v_support, users, v_query)
                return metrics.rmse(pred, target)

        result = fit_from_config(epoch, cfg, module=self.net_, eval_fn=eval_fn,
                                 higher_is_better=False, desc=f"MAML ({cfg.local})")
        self.history_, self.best_epoch_ = result.history, result.best_epoch
        return self

    def adapted_params(self, support: pd.DataFrame, users) -> dict:
        """``users``' adapted parameters, each with a leading ``(m,)`` user dimension."""
        users = self._new_users(support, users)
        by_user = {int(u): g for u, g in support.groupby("user_idx")}
        empty = np.zeros(0, dtype=np.int64)
        groups = [(int(u), by_user[int(u)]["item_idx"].to_numpy() if int(u) in by_user
                   else empty, by_user[int(u)]["rating"].to_numpy() if int(u) in by_user
                   else empty.astype(float)) for u in users]
        cfg, params = self.config, dict(self.net_.named_parameters())

        def adapt(su, si, sr, sm):
            return inner_adapt(self.net_, params, self.local_names(), su, si, sr, sm,
                               cfg.inner_lr, cfg.n_inner, True, cfg.inner_reduction)

        out = vmap(adapt)(*_pad(groups))
        return {k: v.detach() for k, v in out.items()}

    @torch.no_grad()
    def score_new_users(self, support: pd.DataFrame, users, batch_size: int = 64,
                        ) -> torch.Tensor:
        users = self._new_users(support, users)
        items = torch.arange(self.n_items)
        out = []
        for s in range(0, len(users), batch_size):
            u = users[s:s + batch_size]
            fast = self.adapted_params(support[support["user_idx"].isin(u.tolist())], u)

            def score(p, user):
                return functional_call(self.net_, p, (user.expand(len(items)), items))

            out.append(vmap(score)(fast, u))  # (b, n_items)
        rr = self.rating_range_
        return torch.cat(out) if rr is None else torch.cat(out).clamp(*rr)

    @torch.no_grad()
    def predict_new(self, support: pd.DataFrame, users, query: pd.DataFrame,
                    batch_size: int = 64) -> torch.Tensor:
        """``(n,)`` predicted ratings of the ``query`` pairs of ``users`` after adaptation.

        The same adapted parameters as :meth:`score_new_users` (the same batches of users),
        applied to each user's query items only: early stopping reads this every epoch, and
        a user's query set is a few dozen items, not all ``n_items``.
        """
        users = self._new_users(support, users)
        if len(torch.unique(users)) != len(users):
            raise ValueError("users must be distinct")
        check_index(query["item_idx"].to_numpy(), "query.item_idx", self.n_items)
        q_users, q_items = query["user_idx"].to_numpy(), query["item_idx"].to_numpy()
        order = np.argsort(q_users, kind="stable")  # query rows grouped by user, in order
        lo, hi = (np.searchsorted(q_users[order], users.numpy(), side=side)
                  for side in ("left", "right"))  # (m,) each user's rows: order[lo:hi]
        if int((hi - lo).sum()) != len(query):
            raise ValueError("query has ratings of users that are not in users")
        pred = torch.empty(len(query))
        for s in range(0, len(users), batch_size):
            u = users[s:s + batch_size]
            fast = self.adapted_params(support[support["user_idx"].isin(u.tolist())], u)
            rows = [order[a:b] for a, b in zip(lo[s:s + batch_size], hi[s:s + batch_size],
                                               strict=True)]
            pu, pi, _, mask = _pad([(int(v), q_items[r], np.zeros(len(r)))
                                    for v, r in zip(u, rows, strict=True)])  # (b, L)

            def score(p, user_row, item_row):
                return functional_call(self.net_, p, (user_row, item_row))

            pred[torch.as_tensor(np.concatenate(rows))] = vmap(score)(fast, pu, pi)[mask]
        rr = self.rating_range_
        return pred if rr is None else pred.clamp(*rr)
