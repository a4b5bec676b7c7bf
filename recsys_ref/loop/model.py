r"""The system's model in the unified loop: embeddings learned from implicit feedback, and a
per-user Bayesian fold-in of what each user did since the model was trained.

:class:`EmbeddingModel` fits iALS (:class:`~recsys_ref.models.ials.IALS`) on the positive
interactions (who watched or clicked what): item factors :math:`q_i` and user factors
:math:`w_u`. A user's click on item :math:`i` is then modelled as a Bayesian linear regression
on the fixed item features :math:`x_i = (q_i, 1)` with weights :math:`\theta_u = (p_u, b_u)`,
whose prior is centred on the user's trained factors :math:`(w_u, 0)` (or on the mean user for
a user the model has never seen) with the covariance of the trained users' factors. Folding in
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
    seed: int = 0

    def __post_init__(self):
        check_config(self, positive_ints=("n_factors", "n_epochs"),
                     positive=("noise_var", "bias_var"), nonnegative=("reg", "alpha0"))


def empty_feedback() -> pd.DataFrame:
    """A feedback frame with no rows: ``user_idx, item_idx, label``."""
    return pd.DataFrame({"user_idx": pd.Series(dtype="int64"),
                         "item_idx": pd.Series(dtype="int64"),
                         "label": pd.Series(dtype="float64")})


class LoopModel:
    """Interface of a loop model: ``fit(interactions)``, ``scores(users, feedback)``.

    Attributes:
        has_posterior: whether :meth:`posterior` exists (Thompson sampling and uncertainty
            questions need it).
        trained_until: the first day whose logs the model has not seen (0: history only).
    """

    has_posterior = False
    trained_until = 0

    def __init__(self, n_users: int, n_items: int):
        self.n_users, self.n_items = n_users, n_items

    def fit(self, interactions: pd.DataFrame) -> LoopModel:
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

    def fit(self, interactions: pd.DataFrame) -> PopularityModel:
        items = torch.as_tensor(self._check(interactions)["item_idx"].to_numpy())
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

    def fit(self, interactions: pd.DataFrame) -> EmbeddingModel:
        """Fit iALS on the distinct (user, item) pairs of ``interactions``."""
        cfg = self.config
        self._check(interactions)
        ials = IALS(self.n_users, self.n_items, n_factors=cfg.n_factors, n_epochs=cfg.n_epochs,
                    reg=cfg.reg, alpha0=cfg.alpha0, seed=cfg.seed).fit(interactions)
        P = ials.factors_.P.detach().double()  # (n_users, d)
        Q = ials.factors_.Q.detach().double()  # (n_items, d)
        self.item_features = torch.cat([Q, torch.ones(len(Q), 1, dtype=Q.dtype)], 1)  # (n, d+1)
        known = torch.zeros(self.n_users, dtype=torch.bool)
        known[torch.as_tensor(interactions["user_idx"].unique())] = True
        self.known_ = known  # (n_users,) users with at least one interaction
        d = P.shape[1]
        # prior mean of every user: own factors if trained on them, else the mean user
        mean_user = P[known].mean(0)
        self.prior_mean_ = torch.cat([torch.where(known[:, None], P, mean_user),
                                      torch.zeros(self.n_users, 1, dtype=P.dtype)], 1)
        cov = torch.zeros(d + 1, d + 1, dtype=torch.float64)
        cov[:d, :d] = torch.cov(P[known].T) + 1e-6 * torch.eye(d, dtype=torch.float64)
        cov[d, d] = cfg.bias_var
        self.prior_precision_ = torch.linalg.inv(cov)  # (d+1, d+1)
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
        theta = post.mean  # (b, d+1)
        if sample:  # one draw per user: theta + L z with Sigma = L L^T
            L = torch.linalg.cholesky(post.cov)  # (b, d+1, d+1)
            z = torch.randn(theta.shape + (1,), generator=generator, dtype=theta.dtype)
            theta = theta + (L @ z)[..., 0]
        return (theta @ self.item_features.T).float()  # (b, n_items)


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
    rows = torch.as_tensor(pos.loc[fb["user_idx"].to_numpy()].to_numpy(), dtype=torch.long)
    return (rows, torch.as_tensor(fb["item_idx"].to_numpy(), dtype=torch.long),
            torch.as_tensor(fb["label"].to_numpy(), dtype=torch.float64))
