r"""MeLU, the meta-learned user preference estimator (Lee et al. 2019).

MeLU is :eq:`maml` applied to :class:`~recsys_ref.few_shot.rating_net.RatingNet` with one
change: the local update adapts only the *decision layers* (the MLP) to a new user, while the
feature embeddings are learned by the global update alone,

.. math::
    :label: melu

    \theta = (\theta_E, \theta_D), \qquad
    \theta'_{D,u} = \theta_D - \alpha \nabla_{\theta_D} L_{S_u}(\theta_E, \theta_D), \qquad
    \theta'_{E,u} = \theta_E

so a user's personalisation lives in how the shared embeddings are combined. The paper
meta-trains with 5 local steps; its item features (director, actors, rating) are richer than
MovieLens-100K's genres and year, so :class:`MeLU` adds item ids by default (``use_item_ids``).
See the chapter "Few-shot recommendation".
"""

from __future__ import annotations

from dataclasses import replace

from recsys_ref.features import Features
from recsys_ref.few_shot.maml import MAML, MAMLConfig

# MAML's defaults, but the decision layers alone adapt
MELU_DEFAULTS = MAMLConfig(local="decision")


class MeLU(MAML):
    """:class:`~recsys_ref.few_shot.maml.MAML` whose inner loop adapts the decision layers only.

    Args:
        n_users, n_items, item_features, user_features: as for :class:`.MAML`.
        config: a :class:`~recsys_ref.few_shot.maml.MAMLConfig` (default
            :data:`MELU_DEFAULTS`); ``local`` must be ``"decision"``. Keyword arguments
            override its fields.

    See the chapter "Few-shot recommendation".
    """

    def __init__(self, n_users: int, n_items: int, item_features: Features,
                 user_features: Features | None = None, config: MAMLConfig | None = None,
                 **overrides):
        config = replace(config or MELU_DEFAULTS, **overrides)
        if config.local != "decision":
            raise ValueError(f"MeLU adapts the decision layers only: local must be "
                             f"'decision', got {config.local!r}")
        super().__init__(n_users, n_items, item_features, user_features, config)
