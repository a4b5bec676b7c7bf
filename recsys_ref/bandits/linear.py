r"""Contextual bandits with one shared linear model: LinUCB, linear and neural-linear Thompson.

Each (user, item) pair has a feature vector :math:`x_{u,i} \in \mathbb{R}^d` built from fixed
embeddings (:func:`pair_features`), and one model :math:`\mathbb{E}[r \mid u, i] \approx
\theta^\top x_{u,i}` is shared by all pairs, so a click on one item teaches about similar
items and users (the non-contextual policies learn each item separately). The ridge statistics

.. math::
    A = \lambda I + \sum_s x_s x_s^\top, \qquad b = \sum_s r_s x_s, \qquad
    \hat\theta = A^{-1} b

are updated after every click with a Sherman-Morrison rank-1 update of :math:`A^{-1}`
(:func:`sherman_morrison`, :math:`O(d^2)` instead of :math:`O(d^3)` for an inverse).
The embeddings can come from matrix factorization or from a pretrained sequence model.
See the chapter "Exploration".
"""

from __future__ import annotations

import numpy as np
import torch

from recsys_ref.bandits.policies import Policy
from recsys_ref.bandits.simulator import Context
from recsys_ref.checks import check_nonnegative

KINDS = ("product", "concat", "outer")


def pair_features(user: torch.Tensor, items: torch.Tensor, kind: str = "product") -> torch.Tensor:
    r"""Features of one user paired with many items, ``(d_u,), (n, d_i) -> (n, d)``.

    * ``"product"`` (default): :math:`x_{u,i} = e_u \odot e_i` (needs :math:`d_u = d_i`);
      :math:`\theta = \mathbf{1}` gives the dot product :math:`e_u^\top e_i` of MF, and
      other :math:`\theta` reweight its dimensions. Personalised, :math:`d` parameters.
    * ``"concat"``: :math:`x_{u,i} = [e_u, e_i]`; the mean :math:`\theta^\top x` is then the
      same ranking for every user (the user part is a constant): not personalised.
    * ``"outer"``: :math:`x_{u,i} = \mathrm{vec}(e_u e_i^\top)`, a bilinear model
      :math:`e_u^\top W e_i` with :math:`d_u d_i` parameters (slower: :math:`(d_u d_i)^2`).
    """
    if kind == "product":
        if user.shape[-1] != items.shape[-1]:
            raise ValueError(f"kind='product' needs user and item features of one size, got "
                             f"{user.shape[-1]} and {items.shape[-1]}")
        return items * user  # (n, d)
    if kind == "concat":
        return torch.cat([user.expand(len(items), -1), items], 1)  # (n, d_u + d_i)
    if kind == "outer":
        return (user[None, :, None] * items[:, None, :]).flatten(1)  # (n, d_u * d_i)
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def sherman_morrison(A_inv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    r"""The inverse of :math:`A + x x^\top` from :math:`A^{-1}`, ``(d, d), (d,) -> (d, d)``.

    .. math::
        (A + x x^\top)^{-1} = A^{-1} - \frac{A^{-1} x \, x^\top A^{-1}}{1 + x^\top A^{-1} x}
    """
    Ax = A_inv @ x  # (d,); A^{-1} is symmetric so x^T A^{-1} = (A^{-1} x)^T
    return A_inv - torch.outer(Ax, Ax) / (1 + x @ Ax)


class RidgeStatistics:
    r"""The running :math:`A`, :math:`A^{-1}`, :math:`b`, :math:`\hat\theta` of ridge regression.

    Args:
        d: feature dimension.
        lam: the prior precision :math:`\lambda > 0` (:math:`A = \lambda I` before any data).
    """

    def __init__(self, d: int, lam: float):
        self.A = lam * torch.eye(d, dtype=torch.float64)  # (d, d), kept for exact Cholesky
        self.A_inv = torch.eye(d, dtype=torch.float64) / lam  # (d, d), Sherman-Morrison
        self.b = torch.zeros(d, dtype=torch.float64)  # (d,)
        self.theta = torch.zeros(d, dtype=torch.float64)  # (d,) A^{-1} b
        self.yy, self.n = 0.0, 0  # sum of squared rewards and count, for the noise posterior

    def update(self, X: torch.Tensor, y: torch.Tensor) -> None:
        """Add the rows of ``X (k, d)`` with rewards ``y (k,)``."""
        for x in X:  # k rank-1 updates (k is the slate size, not the catalogue)
            # in place, the formula of sherman_morrison (fewer, fused torch calls per round)
            Ax = self.A_inv @ x  # (d,)
            self.A_inv.addr_(Ax, Ax, alpha=-1.0 / (1.0 + float(x @ Ax)))
        self.A.addmm_(X.T, X)  # A += X^T X
        self.b.addmv_(X.T, y)  # b += X^T y
        torch.mv(self.A_inv, self.b, out=self.theta)
        self.yy += float(y @ y)
        self.n += len(y)


class LinearPolicy(Policy):
    r"""Base of the linear policies: features, shared ridge statistics, update.

    Args:
        item_features: ``(n_items, d_i)`` fixed item embeddings.
        user_features: ``(n_users, d_u)`` fixed user embeddings; may be ``None`` when the
            simulator puts the user's features in the context.
        kind: how to pair them, see :func:`pair_features`.
        lam: ridge penalty / prior precision :math:`\lambda > 0`.
        seed: seed of the policy's random numbers.
    """

    tie_break = False  # continuous scores

    def __init__(self, item_features, user_features=None, kind: str = "product",
                 lam: float = 1.0, seed: int = 0):
        V = torch.as_tensor(item_features).double()
        if V.dim() != 2:
            raise ValueError(f"item_features must be (n_items, d), got {tuple(V.shape)}")
        super().__init__(len(V), seed)
        self.item_features = V
        self._item_features32 = V.float()  # (n_items, d_i) for the per-round scoring
        self.user_features = None
        if user_features is not None:
            self.user_features = torch.as_tensor(user_features).double()
            if self.user_features.dim() != 2:
                raise ValueError(f"user_features must be (n_users, d), got "
                                 f"{tuple(self.user_features.shape)}")
        self._user_features32 = (None if self.user_features is None
                                 else self.user_features.float())  # (n_users, d_u)
        self.kind = kind
        self.lam = check_nonnegative(lam, "lam")
        if self.lam == 0:
            raise ValueError("lam must be > 0 (A = lam I must be invertible before any data)")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self._stats: RidgeStatistics | None = None  # created when the dimension d is known
        if self.user_features is not None:
            self.stats  # noqa: B018 - builds the statistics now: bad feature sizes fail here

    @property
    def stats(self) -> RidgeStatistics:
        r"""The shared ridge statistics; before any data, :math:`A = \lambda I`."""
        if self._stats is None:
            if self.user_features is None:  # d depends on the context's user features
                raise RuntimeError("the feature dimension is known after the first round")
            d = pair_features(self.user_features[0], self.item_features[:1], self.kind).shape[1]
            self._stats = RidgeStatistics(d, self.lam)
        return self._stats

    def features(self, context: Context, items: torch.Tensor | None = None) -> torch.Tensor:
        """Features of the context's user with ``items``: ``(k, d)`` float64 for the update,
        or with every item, ``(n_items, d)`` float32 for scoring (twice as fast as float64
        on a CPU; the statistics themselves are accumulated in float64)."""
        given = context.user_features
        if given is None and self.user_features is None:
            raise ValueError("no user features: give user_features to the policy or to the "
                             "simulator")
        if items is None:
            user = (self._user_features32[context.user] if given is None
                    else torch.as_tensor(given).float())  # (d_u,)
            X = pair_features(user, self._item_features32, self.kind)  # (n_items, d)
        else:
            user = (self.user_features[context.user] if given is None
                    else torch.as_tensor(given).double())
            X = pair_features(user, self.item_features[items], self.kind)  # (k, d)
        if self._stats is None:
            self._stats = RidgeStatistics(X.shape[1], self.lam)
        return X

    def update(self, context: Context, items: torch.Tensor, rewards: torch.Tensor) -> None:
        super().update(context, items, rewards)
        self.stats.update(self.features(context, items), rewards.double())


class LinUCB(LinearPolicy):
    r"""LinUCB with a shared linear model (Li, Chu, Langford and Schapire 2010).

    .. math::
        \mathrm{UCB}_{u,i} = \hat\theta^\top x_{u,i}
            + \alpha \sqrt{x_{u,i}^\top A^{-1} x_{u,i}}

    Args:
        item_features, user_features, kind, lam: see :class:`LinearPolicy`.
        alpha: width of the confidence bound, :math:`\alpha \ge 0` (0 is greedy ridge).
    """

    def __init__(self, item_features, user_features=None, alpha: float = 1.0,
                 kind: str = "product", lam: float = 1.0, seed: int = 0):
        super().__init__(item_features, user_features, kind, lam, seed)
        self.alpha = check_nonnegative(alpha, "alpha")

    def scores(self, context: Context) -> torch.Tensor:
        X = self.features(context)  # (n_items, d) float32
        A_inv, theta = self.stats.A_inv.float(), self.stats.theta.float()
        width = ((X @ A_inv) * X).sum(1).clamp(min=0).sqrt()  # (n_items,) sqrt(x' A^-1 x)
        return X @ theta + self.alpha * width


class LinearTS(LinearPolicy):
    r"""Linear Thompson sampling with a known noise scale (Agrawal and Goyal 2013).

    .. math::
        \tilde\theta \sim \mathcal{N}(\hat\theta, v^2 A^{-1}), \qquad
        \text{score}_{u,i} = \tilde\theta^\top x_{u,i}

    The draw is :math:`\hat\theta + v L^{-\top} z` with :math:`A = L L^\top` (Cholesky of the
    exactly accumulated :math:`A`) and :math:`z \sim \mathcal{N}(0, I)`.

    Args:
        item_features, user_features, kind, lam: see :class:`LinearPolicy`.
        v: posterior scale :math:`v \ge 0`, the noise standard deviation of a Gaussian model
            (0.5 is the largest standard deviation of a 0/1 click).
    """

    def __init__(self, item_features, user_features=None, v: float = 0.5,
                 kind: str = "product", lam: float = 1.0, seed: int = 0):
        super().__init__(item_features, user_features, kind, lam, seed)
        self.v = check_nonnegative(v, "v")

    def sample_theta(self, scale: float) -> torch.Tensor:
        r"""One draw of :math:`\theta \sim \mathcal{N}(\hat\theta, scale^2 A^{-1})`."""
        L = torch.linalg.cholesky(self.stats.A)  # (d, d) lower
        z = torch.randn(len(L), 1, generator=self.gen, dtype=torch.float64)
        return self.stats.theta + scale * torch.linalg.solve_triangular(L.T, z, upper=True)[:, 0]

    def scores(self, context: Context) -> torch.Tensor:
        return self.features(context) @ self.sample_theta(self.v).float()


class NeuralLinearTS(LinearTS):
    r"""Thompson sampling with a Bayesian linear last layer on fixed embeddings.

    The "neural-linear" bandit of Riquelme, Tucker and Snoek (2018): a network's
    representation (here any fixed ``(n_items, d)`` / ``(n_users, d)`` embeddings, e.g. a
    pretrained Transformer's) feeds a Bayesian linear regression whose noise is learned too,
    with a Normal-inverse-Gamma prior :math:`\theta \mid \sigma^2 \sim \mathcal{N}(0,
    \sigma^2 \lambda^{-1} I)`, :math:`\sigma^2 \sim \mathrm{IG}(a_0, b_0)`. Each round:

    .. math::
        \sigma^2 \sim \mathrm{IG}\Big(a_0 + \tfrac{n}{2},\;
            b_0 + \tfrac12 (y^\top y - \hat\theta^\top A \hat\theta)\Big), \qquad
        \tilde\theta \sim \mathcal{N}(\hat\theta, \sigma^2 A^{-1}).

    Riquelme et al. fit one head per action; with 1,682 items and a few observations each,
    we fit one head shared by all (user, item) pairs on :func:`pair_features`, which pools
    the evidence. Unlike :class:`LinearTS`, the exploration scale is learned from the data.

    Args:
        item_embeddings: ``(n_items, d)``.
        user_embeddings: ``(n_users, d)`` (or ``None``, see :class:`LinearPolicy`).
        prior: :math:`(a_0, b_0)`, both ``> 0``; the default's prior mean of
            :math:`\sigma^2` is :math:`b_0 / (a_0 - 1) = 0.25`, a 0/1 click's largest variance.
        kind, lam, seed: see :class:`LinearPolicy`.
    """

    def __init__(self, item_embeddings, user_embeddings=None, prior=(2.0, 0.25),
                 kind: str = "product", lam: float = 1.0, seed: int = 0):
        super().__init__(item_embeddings, user_embeddings, 1.0, kind, lam, seed)
        a0, b0 = (float(v) for v in prior)
        if not (a0 > 0 and b0 > 0):
            raise ValueError(f"prior must be two numbers > 0, got {prior}")
        self.prior = (a0, b0)
        self.rng = np.random.default_rng(self.seed)  # seeded Gamma draws (none in torch)

    def noise_posterior(self) -> tuple[float, float]:
        r""":math:`(a_n, b_n)` of the inverse-Gamma posterior of :math:`\sigma^2`."""
        s = self.stats
        rss = max(s.yy - float(s.b @ s.theta), 0.0)  # y'y - theta' A theta, >= 0 up to rounding
        return self.prior[0] + s.n / 2, self.prior[1] + rss / 2

    def scores(self, context: Context) -> torch.Tensor:
        a_n, b_n = self.noise_posterior()
        sigma2 = b_n / self.rng.gamma(a_n)  # IG(a, b) = b / Gamma(a, 1)
        return self.features(context) @ self.sample_theta(sigma2 ** 0.5).float()


