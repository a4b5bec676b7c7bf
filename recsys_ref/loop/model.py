r"""The system's model in the unified loop: embeddings learned from implicit feedback, and a
per-user Bayesian fold-in of what each user did since the model was trained.

:class:`EmbeddingModel` fits iALS (:class:`~recsys_ref.models.ials.IALS`) on the positive
interactions (who watched or clicked what): item factors :math:`q_i` and user factors
:math:`w_u`. Implicit data say what users watch, not what they like; the logged labels
(clicks 1, skips 0) say that, so the model also keeps each item's click rate in the logs,
shrunk towards the overall rate, as a centred feature :math:`z_i` (0 for an item never shown:
what the system does not show, it cannot learn about). A user's click on item :math:`i` is
then a Bayesian linear regression on the item features :math:`x_i = (q_i, 1, z_i)` with
weights :math:`\theta_u = (p_u, b_u, c_u)`, whose prior is centred on :math:`(w_u, 0, 1)`
(the mean user's factors for a user the model has never seen) with the covariance of the
trained users' factors. Folding in
the user's recent labels (clicks 1, skips 0, onboarding answers) is the closed-form posterior
of :func:`~recsys_ref.few_shot.fold_in.gaussian_posterior`, as in the few-shot chapter; its
covariance feeds uncertainty-based onboarding questions and Thompson sampling.

:class:`PopularityModel` scores every item by its number of positive interactions and has no
posterior. See the chapter "The unified loop".
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from recsys_ref.checks import check_config, check_frame, check_index
from recsys_ref.few_shot.fold_in import GaussianPosterior, gaussian_posterior
from recsys_ref.models.ials import IALS


@dataclass
class EmbeddingConfig:
    """Settings of :class:`EmbeddingModel`."""

    n_factors: int = 16  # d of the iALS factors
    n_epochs: int = 10  # iALS sweeps
    reg: float = 0.003  # iALS lambda (frequency-scaled)
    alpha0: float = 0.5  # iALS weight of unobserved cells
    noise_var: float = 0.25  # sigma^2 of a 0/1 label (0.25: the largest Bernoulli variance)
    bias_var: float = 0.01  # prior variance of the user's bias b_u
    rate_var: float = 0.1  # prior variance of the user's weight c_u on the item's click rate
    shrinkage: float = 10.0  # pseudo-impressions at the overall rate in an item's click rate
    seed: int = 0

    def __post_init__(self):
        check_config(self, positive_ints=("n_factors", "n_epochs"),
                     positive=("noise_var", "bias_var", "rate_var", "shrinkage"),
                     nonnegative=("reg", "alpha0"))


def empty_feedback() -> pd.DataFrame:
    """A feedback frame with no rows: ``user_idx, item_idx, label``."""
    return pd.DataFrame({"user_idx": pd.Series(dtype="int64"),
                         "item_idx": pd.Series(dtype="int64"),
                         "label": pd.Series(dtype="float64")})


class LoopModel:
    """Interface of a loop model: ``fit(interactions)``, ``scores(users, feedback)``.

    Attributes:
        has_posterior: whether ``posterior()`` exists (Thompson sampling and uncertainty
            questions need it).
        trained_until: the first day whose logs the model has not seen (0: history only).
    """

    has_posterior = False
    trained_until = 0

    def __init__(self, n_users: int, n_items: int):
        self.n_users, self.n_items = n_users, n_items

    def fit(self, interactions: pd.DataFrame, labels: pd.DataFrame | None = None) -> LoopModel:
        """Fit on ``interactions`` (``user_idx, item_idx`` positives) and optionally the
        logged ``labels`` (``item_idx, label``: clicks and skips)."""
        raise NotImplementedError

    def scores(self, users: torch.Tensor, feedback: pd.DataFrame | None = None,
               sample: bool = False, generator: torch.Generator | None = None
               ) -> torch.Tensor:
        """``(b, n_items)`` float32 scores of ``users``; ``sample=True`` draws them from the
        posterior (Thompson sampling)."""
        raise NotImplementedError

    def _check(self, interactions: pd.DataFrame) -> pd.DataFrame:
        check_frame(interactions, "interactions", ["user_idx", "item_idx"])
        check_index(interactions["user_idx"].to_numpy(), "interactions.user_idx", self.n_users)
        check_index(interactions["item_idx"].to_numpy(), "interactions.item_idx", self.n_items)
        return interactions


class PopularityModel(LoopModel):
    """Every user gets the items with the most positive interactions (no posterior)."""

    def fit(self, interactions, labels=None) -> PopularityModel:
        items = torch.tensor(self._check(interactions)["item_idx"].to_numpy())
        self.counts_ = torch.bincount(items, minlength=self.n_items).float()  # (n_items,)
        return self

    def scores(self, users, feedback=None, sample=False, generator=None):
        if sample:
            raise ValueError("PopularityModel has no posterior to sample scores from")
        return self.counts_.expand(len(users), -1)  # (b, n_items)


class EmbeddingModel(LoopModel):
    """iALS embeddings with a per-user fold-in posterior (see the module docstring).

    Args:
        n_users, n_items: table sizes.
        config: an :class:`EmbeddingConfig`.
    """

    has_posterior = True

    def __init__(self, n_users: int, n_items: int, config: EmbeddingConfig | None = None):
        super().__init__(n_users, n_items)
        self.config = config or EmbeddingConfig()

    def fit(self, interactions: pd.DataFrame, labels: pd.DataFrame | None = None
            ) -> EmbeddingModel:
        """Fit iALS on the distinct (user, item) pairs of ``interactions``; the items' click
        rates on the logged ``labels`` (``item_idx, label``)."""
        cfg = self.config
        self._check(interactions)
        ials = IALS(self.n_users, self.n_items, n_factors=cfg.n_factors, n_epochs=cfg.n_epochs,
                    reg=cfg.reg, alpha0=cfg.alpha0, seed=cfg.seed).fit(interactions)
        P = ials.factors_.P.detach().double()  # (n_users, d)
        Q = ials.factors_.Q.detach().double()  # (n_items, d)
        rate = click_rates(labels, self.n_items, cfg.shrinkage)  # (n_items,)
        self.item_features = torch.cat([Q, torch.ones(len(Q), 1, dtype=Q.dtype), rate[:, None]],
                                       1)  # (n_items, d+2)
        known = torch.zeros(self.n_users, dtype=torch.bool)
        known[torch.as_tensor(interactions["user_idx"].unique())] = True
        self.known_ = known  # (n_users,) users with at least one interaction
        d = P.shape[1]
        # prior mean of every user: own factors if trained on them, else the mean user
        mean_user = P[known].mean(0)
        extra = torch.tensor([0.0, 1.0], dtype=P.dtype).expand(self.n_users, 2)  # b_u, c_u
        self.prior_mean_ = torch.cat([torch.where(known[:, None], P, mean_user), extra], 1)
        cov = torch.zeros(d + 2, d + 2, dtype=torch.float64)
        cov[:d, :d] = torch.cov(P[known].T) + 1e-6 * torch.eye(d, dtype=torch.float64)
        cov[d, d], cov[d + 1, d + 1] = cfg.bias_var, cfg.rate_var
        self.prior_precision_ = torch.linalg.inv(cov)  # (d+2, d+2)
        return self

    def posterior(self, users: torch.Tensor, feedback: pd.DataFrame | None = None
                  ) -> GaussianPosterior:
        """Posterior of each of ``users``' weights given its rows of ``feedback``
        (``user_idx, item_idx, label``); rows of other users are ignored."""
        users = torch.as_tensor(users).long()
        rows, items, y = _rows_of(users, feedback)
        return gaussian_posterior(rows, self.item_features[items], y, len(users),
                                  self.prior_mean_[users], self.prior_precision_,
                                  self.config.noise_var)

    def scores(self, users, feedback=None, sample=False, generator=None):
        post = self.posterior(users, feedback)
        theta = post.mean  # (b, d+2)
        if sample:  # one draw per user: theta + L z with Sigma = L L^T
            L = torch.linalg.cholesky(post.cov)  # (b, d+2, d+2)
            z = torch.randn(theta.shape + (1,), generator=generator, dtype=theta.dtype)
            theta = theta + (L @ z)[..., 0]
        return (theta @ self.item_features.T).float()  # (b, n_items)


def click_rates(labels: pd.DataFrame | None, n_items: int, shrinkage: float) -> torch.Tensor:
    """``(n_items,)`` each item's logged click rate shrunk towards the overall rate, minus
    that rate: :math:`z_i = (c_i + s \bar r) / (n_i + s) - \bar r` (0 if never shown)."""
    if labels is None or len(labels) == 0:
        return torch.zeros(n_items, dtype=torch.float64)
    check_frame(labels, "labels", ["item_idx", "label"])
    items = torch.tensor(labels["item_idx"].to_numpy(), dtype=torch.long)
    y = torch.tensor(labels["label"].to_numpy(), dtype=torch.float64)
    shown = torch.bincount(items, minlength=n_items).double()
    clicked = torch.bincount(items, weights=y, minlength=n_items).double()
    overall = float(y.mean())
    return (clicked + shrinkage * overall) / (shown + shrinkage) - overall


def _rows_of(users: torch.Tensor, feedback: pd.DataFrame | None):
    """The feedback rows of ``users``: (row in ``users``, item, label) tensors."""
    if feedback is None or len(feedback) == 0:
        none = torch.zeros(0, dtype=torch.long)
        return none, none, torch.zeros(0, dtype=torch.float64)
    check_frame(feedback, "feedback", ["user_idx", "item_idx", "label"])
    pos = pd.Series(range(len(users)), index=users.numpy())
    if pos.index.has_duplicates:
        raise ValueError("users must be distinct")
    keep = feedback["user_idx"].isin(pos.index)
    fb = feedback[keep]
    rows = torch.tensor(pos.loc[fb["user_idx"].to_numpy()].to_numpy(), dtype=torch.long)
    return (rows, torch.tensor(fb["item_idx"].to_numpy(), dtype=torch.long),
            torch.tensor(fb["label"].to_numpy(), dtype=torch.float64))
