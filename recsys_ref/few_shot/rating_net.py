r"""The rating network of MeLU (Lee et al. 2019), also the base learner of MAML here: user and
item feature embeddings, concatenated, then fully connected *decision layers*.

.. math::
    x_{ui} = [E_{age}[a_u]; E_{gender}[g_u]; E_{occ}[o_u]; E_{year}[y_i]; D\, c_i; e_i], \qquad
    \hat r_{ui} = \mu + b_i + w^\top \mathrm{relu}(W_L \dots \mathrm{relu}(W_1 x_{ui}))

with :math:`c_i` the item's dense content (genres multi-hot, optionally a title embedding),
and the item id embedding :math:`e_i` and bias :math:`b_i` only when ``use_item_ids``. The
parameter names say which part a parameter belongs to: ``embed.*`` (embeddings) and
``decision.*`` (the decision layers, MeLU's locally updated part).
See the chapter "Few-shot recommendation".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recsys_ref.features import Features


class RatingNet(nn.Module):
    """Feature embeddings and an MLP predicting a rating for (user, item) pairs.

    Args:
        user_features: features of every user (rows in ``user_idx`` order), or ``None``.
        item_features: features of every item (rows in ``item_idx`` order).
        n_items: for the item id embedding and bias when ``use_item_ids``.
        dim: embedding size of each feature (and of the dense block and the item id).
        hidden: decision layer sizes (the last layer maps to one rating).
        mu: the global mean rating, added to the output.
        use_item_ids: also embed the item id (and learn an item bias).
        user_vector: add :math:`p^\top e_i`, a dot product of one user vector :math:`p`
            (``embed.user_vector``, starting at zero; the inner loop makes it the user's)
            with the item id embedding: matrix factorization inside the network.
        generator: the source of the initial values.
    """

    def __init__(self, user_features: Features | None, item_features: Features, n_items: int,
                 dim: int = 16, hidden: tuple[int, ...] = (64, 64), mu: float = 0.0,
                 use_item_ids: bool = True, user_vector: bool = False,
                 generator: torch.Generator | None = None):
        super().__init__()
        if not isinstance(item_features, Features) or len(item_features) != n_items:
            raise ValueError(f"item_features must be Features with {n_items} rows")
        self.user_features, self.item_features, self.mu = user_features, item_features, mu

        def table(n, d):
            return nn.Parameter(0.1 * torch.randn(n, d, generator=generator))

        embed = {}
        for side, feats in (("user", user_features), ("item", item_features)):
            for name, card in ({} if feats is None else feats.cardinality).items():
                embed[f"{side}_{name}"] = table(card, dim)
        n_dense = item_features.dense.shape[1]
        if n_dense:
            embed["item_dense"] = table(n_dense, dim)  # D: (n_dense, dim)
        if user_vector and not use_item_ids:
            raise ValueError("user_vector needs use_item_ids (it multiplies the item id embedding)")
        if use_item_ids:
            embed["item_id"] = table(n_items, dim)
            embed["item_bias"] = nn.Parameter(torch.zeros(n_items))
        n_in = dim * len(embed) - dim * use_item_ids  # the item bias is not an input
        if user_vector:
            embed["user_vector"] = nn.Parameter(torch.zeros(dim))
        self.embed = nn.ParameterDict(embed)
        sizes = [n_in, *hidden, 1]
        self.decision = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:],
                                                                      strict=True))
        with torch.no_grad():  # Glorot-uniform weights, zero biases, from our generator
            for layer in self.decision:
                bound = (6 / (layer.in_features + layer.out_features)) ** 0.5
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.zero_()

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``(n,), (n,) -> (n,)`` predicted ratings."""
        parts = []
        for side, feats, idx in (("user", self.user_features, users),
                                 ("item", self.item_features, items)):
            for name in ({} if feats is None else feats.categorical):
                parts.append(F.embedding(feats.categorical[name][idx],
                                         self.embed[f"{side}_{name}"]))  # (n, dim)
        if "item_dense" in self.embed:
            D = self.embed["item_dense"]
            parts.append(self.item_features.dense[items].to(D.dtype) @ D)  # (n, dim)
        if "item_id" in self.embed:
            parts.append(F.embedding(items, self.embed["item_id"]))
        x = torch.cat(parts, -1)  # (n, n_in)
        for j, layer in enumerate(self.decision):
            x = layer(x) if j == len(self.decision) - 1 else F.relu(layer(x))
        out = self.mu + x[..., 0]
        if "item_bias" in self.embed:
            out = out + self.embed["item_bias"][items]
        if "user_vector" in self.embed:
            out = out + F.embedding(items, self.embed["item_id"]) @ self.embed["user_vector"]
        return out
