"""Sparse features of the contextual bandits: CentredSVD against the dense SVD, shrunk means."""

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_ref.bandits import BanditSimulator, RandomPolicy
from recsys_ref.bandits.features import CentredSVD, ShrunkItemMean, shrunk_item_means

N_USERS, N_ITEMS = 40, 60


def ratings(seed=0, density=0.3):
    """Random low-rank-ish 1..5 ratings on a random subset of pairs."""
    rng = np.random.default_rng(seed)
    mask = rng.random((N_USERS, N_ITEMS)) < density
    u, i = np.nonzero(mask)
    signal = rng.normal(size=(N_USERS, 3)) @ rng.normal(size=(3, N_ITEMS))
    r = np.clip(np.round(3 + signal[u, i] + 0.3 * rng.normal(size=len(u))), 1, 5)
    return pd.DataFrame({"user_idx": u, "item_idx": i, "rating": r})


def dense_reference(frame, rank):
    """The dense computation the sparse one replaces: user-centred matrix, full SVD."""
    R = torch.zeros(N_USERS, N_ITEMS, dtype=torch.float64)
    u, i = torch.tensor(frame["user_idx"].to_numpy()), torch.tensor(frame["item_idx"].to_numpy())
    R[u, i] = torch.tensor(frame["rating"].to_numpy(), dtype=torch.float64)
    rated = R > 0
    means = R.sum(1, keepdim=True) / rated.sum(1, keepdim=True).clamp(min=1)  # (N_USERS, 1)
    C = torch.where(rated, R - means, 0.0)
    U, S, Vh = torch.linalg.svd(C, full_matrices=False)
    return U[:, :rank] * S[:rank].sqrt(), Vh[:rank].T * S[:rank].sqrt(), S[:rank]


@pytest.mark.parametrize("rank", [1, 3, 8])
def test_centred_svd_matches_the_dense_svd(rank):
    frame = ratings()
    P, Q, S = dense_reference(frame, rank)
    m = CentredSVD(N_USERS, N_ITEMS, rank, seed=1).fit(frame)
    torch.testing.assert_close(m.singular_values_.double(), S, atol=1e-4, rtol=1e-4)
    # factors agree up to sign, so the products e_u . e_i (all the bandits use) agree
    torch.testing.assert_close((m.user_factors_ @ m.item_factors_.T).double(), P @ Q.T,
                               atol=1e-4, rtol=1e-4)
    # predictions are the user's mean plus that product
    u, i = np.array(frame["user_idx"]), np.array(frame["item_idx"])  # writable copies
    means = np.array(frame.groupby("user_idx")["rating"].mean()
                     .reindex(range(N_USERS), fill_value=0))  # (N_USERS,)
    expected = torch.tensor(means[u]) + (P[u] * Q[i]).sum(1)
    torch.testing.assert_close(m.predict(u, i).double(), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(m.score(torch.arange(3))[:, i[:5]].double(),
                               (torch.tensor(means[:3])[:, None]
                                + P[:3] @ Q[i[:5]].T), atol=1e-4, rtol=1e-4)


def test_centred_svd_is_seeded_and_fits_better_with_rank():
    frame = ratings()
    a = CentredSVD(N_USERS, N_ITEMS, 3, seed=0).fit(frame)
    b = CentredSVD(N_USERS, N_ITEMS, 3, seed=0).fit(frame)
    assert torch.equal(a.user_factors_, b.user_factors_)
    u, i = np.array(frame["user_idx"]), np.array(frame["item_idx"])  # writable copies
    r = torch.tensor(frame["rating"].to_numpy())
    errors = [float(((CentredSVD(N_USERS, N_ITEMS, k).fit(frame).predict(u, i) - r) ** 2).mean())
              for k in (1, 3, 10)]
    assert errors[0] > errors[1] > errors[2]  # training error falls as the rank grows


def test_centred_svd_rejects_bad_input():
    with pytest.raises(ValueError, match="rank"):
        CentredSVD(N_USERS, N_ITEMS, N_USERS + 1)
    with pytest.raises(TypeError, match="rank"):
        CentredSVD(N_USERS, N_ITEMS, 2.0)
    bad = ratings()
    bad.loc[0, "rating"] = np.nan
    with pytest.raises(ValueError):
        CentredSVD(N_USERS, N_ITEMS, 2).fit(bad)


def test_shrunk_item_means_by_hand():
    frame = pd.DataFrame({"user_idx": [0, 1, 2, 0], "item_idx": [0, 0, 0, 1],
                          "rating": [5.0, 4.0, 3.0, 1.0]})
    mu = 13 / 4
    got = shrunk_item_means(frame, 3, strength=2.0, centre=False)
    expected = torch.tensor([(12 + 2 * mu) / 5, (1 + 2 * mu) / 3, mu])
    torch.testing.assert_close(got, expected.float())
    torch.testing.assert_close(shrunk_item_means(frame, 3, 2.0), (expected - mu).float())
    m = ShrunkItemMean(3, 3, 2.0).fit(frame)
    torch.testing.assert_close(m.predict([0, 1], [1, 2]), expected[[1, 2]].float())
    assert m.score(torch.arange(2)).shape == (2, 3)
    with pytest.raises(ValueError, match="strength"):
        shrunk_item_means(frame, 3, strength=-1.0)
    with pytest.raises(ValueError, match="item_idx"):
        shrunk_item_means(frame, 1, strength=1.0)


def test_simulator_without_a_consumed_mask_is_the_empty_mask():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(5, 12, generator=g, dtype=torch.float64)
    empty = torch.zeros(5, 12, dtype=torch.bool)
    plain = BanditSimulator(p, seed=3).run(RandomPolicy(12, seed=1), 40)
    masked = BanditSimulator(p, seed=3, initially_consumed=empty).run(RandomPolicy(12, seed=1), 40)
    assert torch.equal(plain.items, masked.items) and torch.equal(plain.regret, masked.regret)
    assert BanditSimulator(p).initially_consumed is None  # no dense mask is kept by default
