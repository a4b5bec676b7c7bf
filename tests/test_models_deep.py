"""Deep models (NCF, TwoTower, AutoRec) and side features, on small synthetic data."""

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from recsys_ref.data import GENRES
from recsys_ref.features import Features, age_bucket, item_features, user_features, year_bucket
from recsys_ref.matrix import interaction_mask, rating_matrix
from recsys_ref.models.autorec import AutoRec, autorec_loss, drop_ratings
from recsys_ref.models.ncf import NCF, NCFNet, load_pretrained, ncf_loss, training_examples
from recsys_ref.models.two_tower import TwoTower, inbatch_softmax_loss, softmax_loss

N_USERS, N_ITEMS = 12, 9
FAST = dict(n_epochs=3, batch_size=32, progress=False)


def ratings(seed=0, density=0.5):
    """Ratings 1..5 on a random ~half of the 12 x 9 grid, every user with >= 3 items."""
    rng = np.random.default_rng(seed)
    mask = rng.random((N_USERS, N_ITEMS)) < density
    mask[:, :3] = True
    u, i = np.nonzero(mask)
    return pd.DataFrame({"user_idx": u, "item_idx": i,
                         "rating": rng.integers(1, 6, len(u)).astype(np.float32),
                         "timestamp": rng.permutation(len(u))})


def synthetic_features(n, seed, dense=2):
    gen = torch.Generator().manual_seed(seed)
    return Features({"a": torch.randint(3, (n,), generator=gen),
                     "b": torch.randint(4, (n,), generator=gen)}, {"a": 3, "b": 4},
                    torch.rand(n, dense, generator=gen), tuple(f"x{j}" for j in range(dense)))


# ----------------------------------------------------------------------------- features


def test_user_and_item_features_from_frames():
    users = pd.DataFrame({"user_idx": [1, 0, 2], "age": [17, 18, 56],
                          "gender": ["F", "M", "M"], "occupation": ["writer", "none", "artist"]})
    f = user_features(users)
    assert f.categorical["age"].tolist() == [1, 0, 6]  # row order is user_idx order
    assert f.categorical["gender"].tolist() == [0, 1, 0]
    assert f.one_hot().shape == (3, 7 + 2 + 21) and f.one_hot().sum(1).tolist() == [3, 3, 3]
    items = pd.DataFrame({"item_idx": [0, 1], "year": pd.array([1995, None], dtype="Int64")}
                         | {g: [g == "Drama", g in ("Comedy", "Romance")] for g in GENRES})
    fi = item_features(items, text=torch.ones(2, 4))
    assert fi.categorical["year"].tolist() == [9, 0]  # 1995 -> bucket 9, missing -> 0
    assert fi.dense.shape == (2, 19 + 4) and fi.dense[1, :19].sum() == 2
    assert age_bucket([24, 25, 49, 50]).tolist() == [1, 2, 4, 5]
    assert year_bucket([1949, 1950, 1998]).tolist() == [1, 2, 12]


def test_features_bad_input():
    users = pd.DataFrame({"user_idx": [0], "age": [30], "gender": ["M"],
                          "occupation": ["astronaut"]})
    with pytest.raises(ValueError, match="occupation"):
        user_features(users)
    with pytest.raises(ValueError, match="user_idx"):
        user_features(users.assign(user_idx=[3], occupation=["none"]))
    with pytest.raises(ValueError, match="categorical"):
        Features({"a": torch.tensor([0, 5])}, {"a": 3}, torch.zeros(2, 0), ())
    with pytest.raises(ValueError, match="extra"):
        synthetic_features(4, 0).with_dense(torch.ones(3, 2))


# ----------------------------------------------------------------------------- NCF


@pytest.mark.parametrize("model", ["gmf", "mlp", "neumf"])
def test_ncf_shapes_and_score_matches_pairwise_forward(model):
    net = NCFNet(N_USERS, N_ITEMS, model, 4, (8, 6, 3), 0.5, torch.Generator().manual_seed(0))
    users = torch.tensor([0, 3, 11])
    assert net(users, torch.tensor([1, 2, 8])).shape == (3,)
    full = net.score_all(users)  # (3, n_items), the broadcast first layer
    assert full.shape == (3, N_ITEMS)
    loop = torch.tensor([[net(torch.tensor([u]), torch.tensor([i])).item()
                          for i in range(N_ITEMS)] for u in users.tolist()])
    torch.testing.assert_close(full, loop, rtol=1e-5, atol=1e-6)


def test_neumf_from_pretrained_is_the_alpha_weighted_combination():
    gen = torch.Generator().manual_seed(1)
    gmf, mlp, neumf = (NCFNet(N_USERS, N_ITEMS, m, 4, (8, 3), 0.5, gen)
                       for m in ("gmf", "mlp", "neumf"))
    with torch.no_grad():
        gmf.out.bias.fill_(0.3)
        mlp.out.bias.fill_(-0.7)
    load_pretrained(neumf, gmf, mlp, alpha=0.25)
    torch.testing.assert_close(neumf.out.weight,
                               torch.cat([0.25 * gmf.out.weight, 0.75 * mlp.out.weight], 1))
    u, i = torch.arange(N_USERS).repeat(N_ITEMS), torch.arange(N_ITEMS).repeat_interleave(N_USERS)
    torch.testing.assert_close(neumf(u, i), 0.25 * gmf(u, i) + 0.75 * mlp(u, i))
    with pytest.raises(ValueError, match="sizes"):
        load_pretrained(neumf, gmf, NCFNet(N_USERS, N_ITEMS, "mlp", 4, (6, 3)))


def test_ncf_fit_with_pretrained_starts_from_the_combination():
    train = ratings()
    gmf = NCF(N_USERS, N_ITEMS, model="gmf", n_factors=4, **FAST).fit(train)
    mlp = NCF(N_USERS, N_ITEMS, model="mlp", layers=(8, 4), **FAST).fit(train)
    # a step too small to move the weights: the fitted NeuMF is its initialisation
    neumf = NCF(N_USERS, N_ITEMS, model="neumf", n_factors=4, layers=(8, 4), optimizer="sgd",
                lr=1e-12, alpha=0.5, **FAST).fit(train, pretrained=(gmf, mlp))
    users = torch.arange(N_USERS)
    torch.testing.assert_close(neumf.score(users),
                               0.5 * gmf.score(users) + 0.5 * mlp.score(users))


def test_ncf_loss_matches_formula_and_its_gradient():
    net = NCFNet(N_USERS, N_ITEMS, "neumf", 3, (4, 2), 0.5, torch.Generator().manual_seed(2))
    u, i = torch.tensor([0, 1, 1, 5]), torch.tensor([2, 2, 7, 0])
    y = torch.tensor([1.0, 0.0, 1.0, 0.0])
    x = net(u, i)
    p = torch.sigmoid(x)
    slow = -(y * p.log() + (1 - y) * (1 - p).log()).mean()
    slow = slow + 0.1 * sum((P[u].square().sum(1) + Q[i].square().sum(1)).mean()
                            for P, Q in ((net.P, net.Q), (net.P_mlp, net.Q_mlp)))
    torch.testing.assert_close(ncf_loss(net, u, i, y, reg=0.1), slow)
    # d(log loss)/d(logit) = (sigmoid(x) - y) / n
    logits = x.detach().requires_grad_()
    F.binary_cross_entropy_with_logits(logits, y).backward()
    torch.testing.assert_close(logits.grad, (torch.sigmoid(logits) - y).detach() / len(y))


def test_ncf_training_examples_negatives_are_never_positives():
    train = ratings(3)
    seen = interaction_mask(train, N_USERS, N_ITEMS)
    users, items = seen.nonzero(as_tuple=True)
    u, i, y = training_examples(users, items, seen, 4, torch.Generator().manual_seed(0))
    assert len(u) == 5 * len(users) and y.sum() == len(users)
    assert seen[u[y == 1], i[y == 1]].all() and not seen[u[y == 0], i[y == 0]].any()
    assert (u[len(users):].view(-1, 4) == users[:, None]).all()  # 4 per positive, same user


def test_ncf_is_deterministic_and_validates():
    train = ratings()
    a = NCF(N_USERS, N_ITEMS, model="mlp", layers=(8, 4), **FAST).fit(train)
    b = NCF(N_USERS, N_ITEMS, model="mlp", layers=(8, 4), **FAST).fit(train)
    c = NCF(N_USERS, N_ITEMS, model="mlp", layers=(8, 4), seed=1, **FAST).fit(train)
    users = torch.arange(N_USERS)
    assert torch.equal(a.score(users), b.score(users))
    assert not torch.equal(a.score(users), c.score(users))
    assert a.predict([0, 1], [2, 3]).shape == (2,)
    for bad, name in ((dict(model="ncf"), "model"), (dict(n_negatives=0), "n_negatives"),
                      (dict(layers=(7, 3)), "layers"), (dict(alpha=1.5), "alpha")):
        with pytest.raises(ValueError, match=name):
            NCF(N_USERS, N_ITEMS, **bad)
    with pytest.raises(ValueError, match="pretrained"):
        NCF(N_USERS, N_ITEMS, **FAST).fit(train, pretrained=(a,))
    with pytest.raises(ValueError, match="train"):
        NCF(N_USERS, N_ITEMS, **FAST).fit(train.drop(columns="item_idx"))


# ----------------------------------------------------------------------------- TwoTower


def two_tower(**kw):
    return TwoTower(N_USERS, N_ITEMS, synthetic_features(N_USERS, 0),
                    synthetic_features(N_ITEMS, 1), dim=5, dim_id=4, dim_feature=3, **kw)


@pytest.mark.parametrize("loss", ["softmax", "inbatch", "bpr"])
def test_two_tower_scores_are_dot_products_and_fits_are_seeded(loss):
    train = ratings()
    m = two_tower(loss=loss, hidden=(6,), id_dropout=0.2, **FAST).fit(train)
    again = two_tower(loss=loss, hidden=(6,), id_dropout=0.2, **FAST).fit(train)
    users = torch.arange(N_USERS)
    S = m.score(users)
    assert S.shape == (N_USERS, N_ITEMS) and torch.equal(S, again.score(users))
    f, g = m.user_embeddings(users), m.item_embeddings()
    loop = torch.tensor([[sum(f[u, k].item() * g[i, k].item() for k in range(5))
                          for i in range(N_ITEMS)] for u in range(N_USERS)])
    torch.testing.assert_close(S, loop, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m.predict([3, 4], [5, 6]), S[[3, 4], [5, 6]])


def test_two_tower_cold_item_is_the_tower_with_a_zero_id_embedding():
    m = two_tower(hidden=(6,), **FAST).fit(ratings())
    j = torch.tensor([2, 7])
    with torch.no_grad():
        m.net_["item"].ids[j] = 0.0  # item 2 and 7 forget their ids
    cold = m.new_item_embeddings(m.item_features.take(j))
    torch.testing.assert_close(cold, m.item_embeddings(j))
    assert not torch.allclose(m.new_user_embeddings(m.user_features.take(j)),
                              m.user_embeddings(j))  # users 2 and 7 still have ids


def test_softmax_losses_match_loops():
    gen = torch.Generator().manual_seed(0)
    f_u, g_all = torch.randn(4, 3, generator=gen), torch.randn(N_ITEMS, 3, generator=gen)
    pos = torch.tensor([1, 5, 5, 0])
    slow = -sum(torch.log_softmax(g_all @ f_u[k] / 0.5, 0)[pos[k]] for k in range(4)) / 4
    torch.testing.assert_close(softmax_loss(f_u, g_all, pos, 0.5), slow)
    seen = torch.rand(4, N_ITEMS, generator=gen) < 0.4
    seen[torch.arange(4), pos] = True
    slow = 0.0
    for k in range(4):  # the target and the user's unseen items only
        cand = [j for j in range(N_ITEMS) if j == pos[k] or not seen[k, j]]
        s = torch.stack([g_all[j] @ f_u[k] / 0.5 for j in cand])
        slow = slow - torch.log_softmax(s, 0)[cand.index(pos[k])] / 4
    torch.testing.assert_close(softmax_loss(f_u, g_all, pos, 0.5, seen), slow)
    log_q = torch.log(torch.rand(N_ITEMS, generator=gen))
    g = g_all[pos]
    for user_seen in (None, seen):
        total = 0.0
        for k in range(4):  # item 5 twice: neither copy is the other's negative
            keep = [m for m in range(4) if m == k or (
                pos[m] != pos[k] if user_seen is None else not user_seen[k, pos[m]])]
            s = torch.stack([f_u[k] @ g[m] / 0.5 - log_q[pos[m]] for m in keep])
            total = total - torch.log_softmax(s, 0)[keep.index(k)] / 4
        pairs = None if user_seen is None else user_seen[:, pos]  # (4, 4)
        torch.testing.assert_close(inbatch_softmax_loss(f_u, g, pos, log_q, 0.5, pairs), total)


def test_two_tower_id_only_and_bad_input():
    m = TwoTower(N_USERS, N_ITEMS, dim=3, **FAST).fit(ratings())
    assert m.score(torch.arange(2)).shape == (2, N_ITEMS)
    with pytest.raises(ValueError, match="no user features"):
        m.new_user_embeddings(synthetic_features(2, 0))
    with pytest.raises(ValueError, match="user_features"):
        TwoTower(N_USERS, N_ITEMS, synthetic_features(N_USERS - 1, 0))
    with pytest.raises(ValueError, match="use_ids"):
        TwoTower(N_USERS, N_ITEMS, use_ids=False)
    with pytest.raises(ValueError, match="loss"):
        two_tower(loss="hinge")
    with pytest.raises(ValueError, match="features"):
        two_tower(**FAST).fit(ratings()).new_item_embeddings(synthetic_features(2, 0, dense=3))
    with pytest.raises(ValueError, match="item_idx"):
        m.item_embeddings([0, N_ITEMS])


# ----------------------------------------------------------------------------- AutoRec


def test_autorec_loss_ignores_unobserved_cells_and_matches_a_loop():
    train = ratings(4)
    R = rating_matrix(train, N_USERS, N_ITEMS).T  # (n_items, n_users)
    M = interaction_mask(train, N_USERS, N_ITEMS).T
    m = AutoRec(N_USERS, N_ITEMS, n_hidden=5, **FAST).fit(train)
    net = m.net_

    def loss_and_grads(targets):
        net.zero_grad()
        loss = autorec_loss(net, R, targets, M, reg=0.3, share=0.5)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in net.parameters()]

    loss, grads = loss_and_grads(R)
    noisy_loss, noisy_grads = loss_and_grads(torch.where(M, R, 9.0))  # unobserved targets: 9
    assert torch.equal(loss, noisy_loss)
    assert all(torch.equal(a, b) for a, b in zip(grads, noisy_grads, strict=True))
    with torch.no_grad():
        V, mu, W, b = net.encoder.weight, net.encoder.bias, net.decoder.weight, net.decoder.bias
        slow = 0.0
        for i in range(N_ITEMS):
            h = W @ torch.sigmoid(V @ R[i] + mu) + b  # (n_users,)
            slow += sum((R[i, u] - h[u]) ** 2 for u in range(N_USERS) if M[i, u])
        slow += 0.5 * 0.3 * 0.5 * (V.square().sum() + W.square().sum())
    torch.testing.assert_close(loss, slow)


def test_autorec_predict_is_the_reconstruction_with_fallbacks():
    train = ratings(5)
    train = train[(train.item_idx != 8) & (train.user_idx != 11)]  # item 8, user 11: unseen
    m = AutoRec(N_USERS, N_ITEMS, n_hidden=5, rating_range=None, **FAST).fit(train)
    recon = m.net_(rating_matrix(train, N_USERS, N_ITEMS).T).detach()  # (n_items, n_users)
    torch.testing.assert_close(m.predict([0, 3], [1, 4]), recon[[1, 4], [0, 3]])
    user_mean = train.groupby("user_idx").rating.mean()
    item_mean = train.groupby("item_idx").rating.mean()
    got = m.predict([2, 11, 11], [8, 0, 8])
    expected = torch.tensor([user_mean[2], item_mean[0], train.rating.mean()])
    torch.testing.assert_close(got, expected.float())
    S = m.score([2, 11])  # (2, n_items), the same rules
    torch.testing.assert_close(S[[0, 1, 1, 0], [8, 0, 8, 0]], torch.cat([got, recon[0, 2:3]]))
    clipped = AutoRec(N_USERS, N_ITEMS, n_hidden=5, **FAST).fit(train).predict([0] * 9, range(9))
    assert clipped.min() >= 1 and clipped.max() <= 5


def test_autorec_reconstruction_is_cached_per_parameter_state():
    train = ratings(6)
    m = AutoRec(N_USERS, N_ITEMS, n_hidden=5, rating_range=None, **FAST).fit(train)
    users = torch.arange(N_USERS)
    first = m.score(users)
    assert m._reconstruction() is m._reconstruction()  # computed once while nothing changes
    with torch.no_grad():
        m.net_.decoder.bias.add_(1.0)  # an in-place update, as an optimizer step makes
    moved = m.score(users)
    torch.testing.assert_close(moved, first + 1.0 * m.item_seen_ * m.user_seen_[:, None])
    m.net_.load_state_dict(m.net_.state_dict() | {"decoder.bias": m.net_.decoder.bias - 1})
    torch.testing.assert_close(m.score(users), first)
    # during a fit, every epoch's validation sees that epoch's weights (fused Adam updates
    # them in place without bumping their version counters)
    kw = FAST | {"n_epochs": 4, "rating_range": None}  # unclipped: every epoch moves them
    v = AutoRec(N_USERS, N_ITEMS, n_hidden=5, **kw).fit(train, train)
    valid = [h["valid"] for h in v.history_]
    assert len(set(valid)) == 4
    fresh = AutoRec(N_USERS, N_ITEMS, n_hidden=5, **kw).fit(train, train)
    fresh._reconstruction = lambda: fresh.net_(fresh.R_)  # no cache at all
    u, i = torch.tensor(train.user_idx.to_numpy()), torch.tensor(train.item_idx.to_numpy())
    torch.testing.assert_close(v.predict(u, i), fresh.predict(u, i))


def test_autorec_is_deterministic_and_validates():
    train = ratings()
    kw = dict(n_hidden=5, **FAST)
    for opt in ("adam", "rprop"):
        a = AutoRec(N_USERS, N_ITEMS, optimizer=opt, **kw).fit(train, valid=train)
        b = AutoRec(N_USERS, N_ITEMS, optimizer=opt, **kw).fit(train, valid=train)
        assert torch.equal(a.score(torch.arange(N_USERS)), b.score(torch.arange(N_USERS)))
        assert a.best_epoch_ is not None and len(a.history_) == 3
    r = torch.ones(3, 4)
    assert torch.equal(drop_ratings(r, 0.0), r)
    kept = drop_ratings(r, 0.5, torch.Generator().manual_seed(0))
    assert set(kept.unique().tolist()) <= {0.0, 2.0}  # inverted dropout: survivors scaled
    for bad, name in ((dict(dropout=1.0), "dropout"), (dict(optimizer="lbfgs"), "optimizer"),
                      (dict(n_hidden=0), "n_hidden"), (dict(reg=-1.0), "reg")):
        with pytest.raises(ValueError, match=name):
            AutoRec(N_USERS, N_ITEMS, **bad)
    with pytest.raises(ValueError, match="train"):
        AutoRec(N_USERS, N_ITEMS).fit(train.drop(columns="rating"))
