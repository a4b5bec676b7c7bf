"""The downstream like-classifier of the chapter "Self-supervised pretraining"."""

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from recsys_ref.models.like_classifier import LikeClassifier, like_labels, roc_auc, user_auc
from recsys_ref.models.sasrec import SeqTransformer
from recsys_ref.sequences import user_sequences

N_USERS, N_ITEMS = 30, 12


def toy(seed=0):
    """Every user interacts with 8 items; users like the even items (rating 5), not the odd."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(N_USERS):
        for t, i in enumerate(rng.permutation(N_ITEMS)[:8]):
            rows.append((u, int(i), 5.0 if i % 2 == 0 else 2.0, t))
    ratings = pd.DataFrame(rows, columns=["user_idx", "item_idx", "rating", "timestamp"])
    return ratings, user_sequences(ratings, N_USERS, 8, N_ITEMS)


def backbone(seed=0):
    return SeqTransformer(N_ITEMS, max_len=8, dim=16, n_layers=1, n_heads=2, dropout=0.0,
                          generator=torch.Generator().manual_seed(seed))


def test_like_labels_and_roc_auc_match_sklearn():
    frame = pd.DataFrame({"rating": [1, 3, 4, 5, 3.5]})
    assert like_labels(frame).tolist() == [0, 0, 1, 1, 0]
    assert like_labels(frame, threshold=3).tolist() == [0, 1, 1, 1, 1]
    rng = np.random.default_rng(0)
    scores, labels = rng.normal(size=200).round(1), rng.random(200) < 0.4  # ties included
    assert roc_auc(torch.tensor(scores), torch.tensor(labels)) == pytest.approx(
        roc_auc_score(labels, scores), abs=1e-6)


def test_learns_a_separable_task_and_is_seeded():
    ratings, seqs = toy()
    train, test = ratings.iloc[::2], ratings.iloc[1::2]
    fits = [LikeClassifier(seqs, backbone().arch, n_epochs=40, lr=1e-2, batch_size=8,
                           seed=3).fit(train) for _ in range(2)]
    p = [m.predict(test["user_idx"], test["item_idx"]) for m in fits]
    assert torch.equal(p[0], p[1])
    assert roc_auc(p[0], like_labels(test)) > 0.95


def test_pair_scores_use_only_their_users_sequence_and_batching_does_not_matter():
    ratings, seqs = toy()
    model = LikeClassifier(seqs, backbone(), n_epochs=1).fit(ratings)
    users, items = torch.tensor([0, 0, 5, 7]), torch.tensor([1, 2, 3, 4])
    together = model.predict(users, items)
    alone = torch.cat([model.predict(users[k:k + 1], items[k:k + 1]) for k in range(4)])
    torch.testing.assert_close(together, alone)
    other = seqs.clone()
    other[9] = torch.roll(other[9], 1)  # another user's history changes
    model.sequences = other
    torch.testing.assert_close(model.predict(users, items), together)


def test_fine_tuning_starts_from_the_backbone_and_leaves_it_unchanged():
    ratings, seqs = toy()
    pre = backbone(seed=1)
    before = {k: v.clone() for k, v in pre.state_dict().items()}
    tuned = LikeClassifier(seqs, pre, n_epochs=1, lr=1e-12).fit(ratings)  # (almost) no step
    for k, v in pre.state_dict().items():
        assert torch.equal(v, before[k])  # the pretrained backbone is copied, not trained
        torch.testing.assert_close(tuned.net_.encoder.state_dict()[k], v, atol=1e-6, rtol=0)
    scratch = LikeClassifier(seqs, pre.arch, n_epochs=1, lr=1e-12).fit(ratings)
    assert not torch.allclose(scratch.net_.encoder.tokens.weight, pre.tokens.weight)


def test_bad_input():
    ratings, seqs = toy()
    with pytest.raises(ValueError, match="max_len"):
        LikeClassifier(user_sequences(ratings, N_USERS, 9, N_ITEMS), backbone())
    with pytest.raises(ValueError, match="backbone"):
        LikeClassifier(seqs, "sasrec")
    with pytest.raises(ValueError, match="n_epochs"):
        LikeClassifier(seqs, backbone(), n_epochs=0)
    model = LikeClassifier(seqs, backbone(), n_epochs=1)
    with pytest.raises(ValueError, match="rating"):
        model.fit(ratings.drop(columns="rating"))
    with pytest.raises(ValueError):
        model.fit(ratings.assign(item_idx=N_ITEMS))


def test_user_auc_matches_a_loop_over_users_and_drops_one_class_users():
    g = torch.Generator().manual_seed(0)
    users = torch.randint(0, 30, (500,), generator=g)
    scores = torch.rand(500, generator=g).round(decimals=1)  # ties
    labels = (torch.rand(500, generator=g) < 0.5).float()
    labels[users == 7] = 1.0  # user 7 has positives only
    got = user_auc(scores, labels, users)
    assert 7 not in got.index and list(got.index) == sorted(got.index)
    for u in got.index:
        at = users == u
        assert got[u] == pytest.approx(roc_auc(scores[at], labels[at]), abs=1e-6)
    with pytest.raises(ValueError, match="one length"):
        user_auc(scores, labels, users[:-1])
