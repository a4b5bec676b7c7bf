"""Training happens: each trained model learns a small planted problem.

Every test plants a structure (user groups, low-rank ratings, cycles, a hidden taste, additive
click effects), fits one model on it and asserts two things:

* the training loss falls (the last epoch's loss is below the first's);
* on held-out data the model is closer to the oracle (the planted truth) than to the best
  baseline that knows nothing of the plant: random scores and popularity for rankings, the
  global mean and the biases for ratings, the item means for new users, the constant and
  per-item click rates for a click model. "Closer to the oracle than to the baseline" is
  :func:`closes_half_the_gap`, the only threshold used here; it is not tuned per model.

``tests/test_training_removed.py`` removes each model's update step in turn (the optimizer
step, the ALS/iALS solves, MAML's outer and inner steps, the Newton and ridge updates) and
checks that these tests then fail. Every fit here takes well under a second or two.
"""

import numpy as np
import pandas as pd
import pytest
import torch
from test_evaluation import FixedScores  # a given (n_users, n_items) table of scores

from recsys_ref.bandits import (
    BanditSimulator,
    LinearTS,
    LinUCB,
    NeuralLinearTS,
    RandomPolicy,
)
from recsys_ref.bandits.reward_model import LogisticRewardModel
from recsys_ref.evaluation import evaluate_ranking
from recsys_ref.features import Features
from recsys_ref.few_shot import (
    MAML,
    FineTuneMF,
    ItemMean,
    MeLU,
    cold_user_split,
    evaluate_new_users,
)
from recsys_ref.metrics import rmse
from recsys_ref.models import (
    BPR,
    EASE,
    IALS,
    NCF,
    AutoRec,
    BiasBaseline,
    BiasedMF,
    GlobalMean,
    Popularity,
    SASRec,
)
from recsys_ref.models.bert4rec import BERT4Rec
from recsys_ref.models.like_classifier import LikeClassifier, like_labels, roc_auc
from recsys_ref.models.sasrec import SASRecConfig, next_item_loss
from recsys_ref.models.two_tower import TwoTower
from recsys_ref.pretraining import cloze_loss, contrastive_loss, mask_items, pretrain
from recsys_ref.sequences import next_item_examples, user_sequences
from recsys_ref.training import seed_everything


def closes_half_the_gap(value: float, baseline: float, oracle: float) -> bool:
    """``value`` is strictly closer to ``oracle`` than to ``baseline`` (either direction)."""
    return abs(value - oracle) < abs(value - baseline) and abs(value - oracle) < abs(
        baseline - oracle)


def assert_learns(name: str, value: float, baselines: dict, oracle: float,
                  higher_is_better: bool = True):
    """``value`` beats every baseline and closes half the gap from the best one to ``oracle``."""
    best = (max if higher_is_better else min)(baselines.values())
    for key, b in baselines.items():
        assert (value > b) if higher_is_better else (value < b), (name, key, value, b)
    assert closes_half_the_gap(value, best, oracle), (name, value, baselines, oracle)


def assert_loss_falls(history):
    losses = [h["loss"] for h in history]
    assert np.isfinite(losses).all() and losses[-1] < losses[0], losses


# ----------------------------------------------------------------------------- implicit

N_GROUPS, GROUP_USERS, GROUP_ITEMS, PER_USER = 4, 15, 10, 7
N_USERS, N_ITEMS = N_GROUPS * GROUP_USERS, N_GROUPS * GROUP_ITEMS


def planted_groups(seed=0):
    """Users in 4 groups; each user interacts with 7 of their group's 10 items (item ids
    shuffled), popular ones more often (weights 1/rank); the test item is a random one of the
    7 (leave-last-out on random times). Returns ``train, test, oracle`` where the oracle
    scores a user's group items by their planted weight."""
    rng = np.random.default_rng(seed)
    groups = rng.permutation(N_ITEMS).reshape(N_GROUPS, GROUP_ITEMS)
    w = 1 / np.arange(1, GROUP_ITEMS + 1)
    rows = []
    oracle = torch.zeros(N_USERS, N_ITEMS)
    for u in range(N_USERS):
        g = groups[u % N_GROUPS]
        chosen = rng.choice(g, PER_USER, replace=False, p=w / w.sum())
        rows += [(u, int(i), 1.0, int(t)) for t, i in zip(rng.permutation(PER_USER), chosen,
                                                         strict=True)]
        oracle[u, g] = torch.tensor(1 + w, dtype=torch.float32)
    df = pd.DataFrame(rows, columns=["user_idx", "item_idx", "rating", "timestamp"])
    last = df["timestamp"] == PER_USER - 1
    return df[~last].reset_index(drop=True), df[last].reset_index(drop=True), oracle


def assert_ranks_the_groups(model, **fit_kwargs):
    train, test, oracle = planted_groups()
    model.fit(train, **fit_kwargs)

    def ndcg(m):
        return evaluate_ranking(m, test, train, ks=(5,))["NDCG@5"]

    random = FixedScores(torch.rand(N_USERS, N_ITEMS, generator=torch.Generator().manual_seed(1)))
    baselines = {"random": ndcg(random),
                 "popularity": ndcg(Popularity(N_USERS, N_ITEMS).fit(train))}
    assert_learns(type(model).__name__, ndcg(model), baselines, ndcg(FixedScores(oracle)))
    if hasattr(model, "history_"):
        assert_loss_falls(model.history_)


def test_ease_learns_planted_groups():
    assert_ranks_the_groups(EASE(N_USERS, N_ITEMS, lam=1.0))


def test_ials_learns_planted_groups():
    assert_ranks_the_groups(IALS(N_USERS, N_ITEMS, n_factors=8, n_epochs=5, reg=0.01))


BPR_OPTIMIZERS = [("adam", 0.05), ("adagrad", 0.1), ("sgd", 0.05)]  # (optimizer, lr)


@pytest.mark.parametrize("optimizer,lr", BPR_OPTIMIZERS)
def test_bpr_learns_planted_groups(optimizer, lr):
    assert_ranks_the_groups(BPR(N_USERS, N_ITEMS, n_factors=8, n_epochs=20, lr=lr,
                                optimizer=optimizer, batch_size=256))


class DistributedBPR:
    """:func:`recsys_ref.distributed_bpr.fit_bpr_distributed` on one process (its training loop,
    run in this process) behind a ``fit``, for :func:`assert_ranks_the_groups`."""

    def __init__(self, **config):
        self.config = config

    def fit(self, train):
        from recsys_ref.distributed_bpr import fit_bpr_distributed

        self.model = fit_bpr_distributed(train, N_USERS, N_ITEMS, world_size=1, **self.config)
        self.history_ = self.model.history_.to_dict("records")  # a frame: one row per epoch
        return self

    def __getattr__(self, name):  # score, n_users, n_items: the fitted BPR's
        return getattr(self.__dict__["model"], name)


def test_distributed_bpr_learns_planted_groups():
    assert_ranks_the_groups(DistributedBPR(n_factors=8, n_epochs=20, lr=0.05, batch_size=256))


@pytest.mark.parametrize("model", ["gmf", "mlp", "neumf"])
def test_ncf_learns_planted_groups(model):
    hyper = {"gmf": dict(n_epochs=40, lr=0.02), "mlp": dict(layers=(32, 16), n_epochs=60, lr=0.02),
             "neumf": dict(layers=(16, 8), n_epochs=40, lr=0.01)}[model]
    assert_ranks_the_groups(NCF(N_USERS, N_ITEMS, model=model, n_factors=8, batch_size=256,
                                init_std=0.1, **hyper))


@pytest.mark.parametrize("loss", ["inbatch", "softmax", "bpr"])
def test_two_tower_learns_planted_groups(loss):
    assert_ranks_the_groups(TwoTower(N_USERS, N_ITEMS, dim=8, loss=loss, n_epochs=40, lr=0.02,
                                     batch_size=64))


# ----------------------------------------------------------------------------- ratings


def planted_ratings(seed=0, n_users=60, n_items=50, d=2, noise=0.2):
    """Half of a grid rated ``3 + b_u + b_i + p_u . q_i + noise``, clipped to the scale 1..5;
    20% held out.

    Returns ``train, test, truth`` (the noise-free ratings of ``test``, clipped: the oracle's
    predictions). With ``d=0`` the ratings are biases only."""
    rng = np.random.default_rng(seed)
    b_u, b_i = rng.normal(0, 0.4, n_users), rng.normal(0, 0.4, n_items)
    P, Q = rng.normal(0, 0.8, (n_users, d)), rng.normal(0, 0.8, (n_items, d))
    u, i = np.nonzero(rng.random((n_users, n_items)) < 0.5)
    truth = 3 + b_u[u] + b_i[i] + (P[u] * Q[i]).sum(1)
    rating = np.clip(truth + rng.normal(0, noise, len(u)), 1, 5)
    truth = np.clip(truth, 1, 5)
    df = pd.DataFrame({"user_idx": u, "item_idx": i, "rating": rating.astype(np.float32),
                       "timestamp": rng.permutation(len(u))})
    test = rng.random(len(u)) < 0.2
    return (df[~test].reset_index(drop=True), df[test].reset_index(drop=True),
            torch.tensor(truth[test]))


def held_out_rmse(model, test) -> float:
    pred = model.predict(test["user_idx"].to_numpy(), test["item_idx"].to_numpy())
    return rmse(pred.double(), torch.tensor(test["rating"].to_numpy(), dtype=torch.float64))




def test_bias_baseline_learns_planted_biases():
    train, test, truth = planted_ratings(d=0)
    model = BiasBaseline(60, 50, reg_i=1.0, reg_u=1.0).fit(train)
    oracle = rmse(truth, torch.tensor(test["rating"].to_numpy(), dtype=torch.float64))
    assert_learns("BiasBaseline", held_out_rmse(model, test),
                  {"global mean": held_out_rmse(GlobalMean(60, 50).fit(train), test)}, oracle,
                  higher_is_better=False)


def assert_fits_the_factors(model):
    train, test, truth = planted_ratings()
    model.fit(train)
    oracle = rmse(truth, torch.tensor(test["rating"].to_numpy(), dtype=torch.float64))
    baselines = {"global mean": held_out_rmse(GlobalMean(60, 50).fit(train), test),
                 "biases": held_out_rmse(BiasBaseline(60, 50, reg_i=1.0, reg_u=1.0).fit(train),
                                         test)}
    assert_learns(type(model).__name__, held_out_rmse(model, test), baselines, oracle,
                  higher_is_better=False)
    assert_loss_falls(model.history_)


@pytest.mark.parametrize("solver", ["sgd", "adam", "als"])
def test_biased_mf_learns_planted_factors(solver):
    hyper = {"sgd": dict(n_epochs=60, lr=0.02, batch_size=128),
             "adam": dict(n_epochs=100, lr=0.05, batch_size=256), "als": dict(n_epochs=10)}
    assert_fits_the_factors(BiasedMF(60, 50, solver=solver, n_factors=4, reg=0.05,
                                     reg_bias=0.05, **hyper[solver]))


@pytest.mark.parametrize("optimizer", ["adam", "rprop"])
def test_autorec_learns_planted_factors(optimizer):
    assert_fits_the_factors(AutoRec(60, 50, optimizer=optimizer, n_hidden=20, n_epochs=200,
                                    lr=0.01, reg=1.0, dropout=0.0, batch_size=16))


# ----------------------------------------------------------------------------- sequences

SEQ_ITEMS = 20
TINY = dict(max_len=8, dim=32, n_layers=1, n_heads=2, dropout=0.0, progress=False)


def planted_cycles(n_users=48, length=6, seed=0):
    """Every user walks the items in a cycle, ``i -> i + 1 mod 20``, from a random start."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(SEQ_ITEMS, size=n_users)
    rows = [(u, int((s + t) % SEQ_ITEMS), 1.0, t) for u, s in enumerate(starts)
            for t in range(length)]
    return pd.DataFrame(rows, columns=["user_idx", "item_idx", "rating", "timestamp"])


def assert_next_item_learned(name: str, make):
    """Fit ``make()`` on the planted cycles without each user's last item; it must predict
    that item (HR@1) better than random scores and popularity, and its loss must fall."""
    df = planted_cycles()
    last = df["timestamp"] == df["timestamp"].max()
    train, test = df[~last], df[last]
    model = make().fit(train)

    def hr(m):
        return evaluate_ranking(m, test, train, ks=(1,))["HR@1"]

    random = FixedScores(torch.rand(48, SEQ_ITEMS, generator=torch.Generator().manual_seed(1)))
    assert_learns(name, hr(model), {"random": hr(random), "popularity": hr(
        Popularity(48, SEQ_ITEMS).fit(train))}, oracle=1.0)
    assert_loss_falls(model.history_)


def test_sasrec_learns_planted_cycles():
    assert_next_item_learned("SASRec", lambda: SASRec(48, SEQ_ITEMS, **TINY, n_epochs=20,
                                                      lr=1e-2, batch_size=16))


def test_bert4rec_learns_planted_cycles():
    """The [MASK] appended after the history is predicted from the item before it."""
    assert_next_item_learned("BERT4Rec", lambda: BERT4Rec(48, SEQ_ITEMS, **TINY, n_epochs=30,
                                                          lr=1e-2, batch_size=16,
                                                          mask_prob=0.3))


def pretext_loss(net, objective: str, held: pd.DataFrame) -> float:
    """The objective's loss on held-out sequences, with fixed masks and augmentations."""
    gen = torch.Generator().manual_seed(123)
    n_users = int(held["user_idx"].max()) + 1
    net.eval()
    with torch.no_grad():
        if objective == "next":
            x, y = next_item_examples(user_sequences(held, n_users, 9, SEQ_ITEMS))
            return next_item_loss(net, x, y).item()
        seqs = user_sequences(held, n_users, 8, SEQ_ITEMS)
        if objective == "cloze":
            return cloze_loss(net, *mask_items(seqs, 0.2, SEQ_ITEMS, gen)).item()
        return contrastive_loss(net, seqs, SEQ_ITEMS, gen, 0.5, crop_ratio=0.6, mask_ratio=0.3,
                                reorder_ratio=0.6).item()


@pytest.mark.parametrize("objective", ["cloze", "contrastive", "next"])
def test_pretraining_lowers_the_pretext_loss(objective):
    """On held-out cycles the pretrained encoder's pretext loss is below its initial one; for
    item prediction (cloze, next) also below the cross-entropy of popularity (the training
    item frequencies), which on cycles is about that of uniform guessing, ln 20."""
    train, held = planted_cycles(n_users=96), planted_cycles(n_users=32, seed=1)
    cfg = SASRecConfig(**TINY)
    net = pretrain(cfg, train, SEQ_ITEMS, objective=objective, n_epochs=40, lr=1e-2,
                   batch_size=16)
    initial = cfg.backbone(SEQ_ITEMS, seed_everything(0), causal=objective != "cloze")
    trained, before = pretext_loss(net, objective, held), pretext_loss(initial, objective, held)
    assert_loss_falls(net.history_)
    baselines = {"initial encoder": before}
    if objective != "contrastive":
        freq = np.bincount(train["item_idx"], minlength=SEQ_ITEMS) / len(train)
        baselines["popularity"] = float(-(freq * np.log(freq)).sum())
        assert_learns(objective, trained, baselines, oracle=0.0, higher_is_better=False)
    else:  # InfoNCE has no popularity analogue; chance is ln(2B - 1) for a batch of B
        assert trained < before < np.log(2 * 32 - 1)


def planted_taste(seed=0, n_users=40):
    """Items 0..11 are rated; users of group g also saw the marker items 12 + 2g, 13 + 2g.
    Group 0 likes the even items, group 1 the odd ones: every item is liked by half the
    users, so only the user's sequence (its markers) tells a like."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        g = u % 2
        items = [*rng.permutation(12)[:8], 12 + 2 * g, 13 + 2 * g]
        for t, i in enumerate(rng.permutation(items)):
            rows.append((u, int(i), 5.0 if i >= 12 or i % 2 == g else 2.0, t))
    ratings = pd.DataFrame(rows, columns=["user_idx", "item_idx", "rating", "timestamp"])
    return ratings, user_sequences(ratings, n_users, 10, 16)


def test_like_classifier_learns_a_planted_taste():
    ratings, seqs = planted_taste()
    labelled = ratings[ratings["item_idx"] < 12]
    held = np.random.default_rng(1).random(len(labelled)) < 0.3
    train, test = labelled[~held], labelled[held]
    arch = SASRecConfig(max_len=10, dim=16, n_layers=1, n_heads=2, dropout=0.0).backbone(16).arch
    model = LikeClassifier(seqs, arch, n_epochs=30, lr=1e-2, batch_size=8).fit(train)
    labels = like_labels(test)
    rate = (train.assign(like=train["rating"] >= 4).groupby("item_idx")["like"].mean())
    item_rate = torch.tensor(rate.reindex(test["item_idx"]).to_numpy(), dtype=torch.float32)
    assert_learns("LikeClassifier", roc_auc(model.predict(test["user_idx"], test["item_idx"]),
                                            labels),
                  {"chance": 0.5, "item like rate": roc_auc(item_rate, labels)}, oracle=1.0)
    assert_loss_falls(model.history_)


# ----------------------------------------------------------------------------- new users

FS_USERS, FS_ITEMS = 80, 30


def planted_new_users(seed=0, noise=0.2):
    """``r = 3 + 1.5 * taste_u * genre_i + noise`` (clipped to 1..5): the taste (+-1) is
    hidden, the genre (+-1) is the item's only feature; every item's mean is about 3, so only
    the support ratings tell a new user's taste. 20 ratings per user; 25% of users are new,
    with K=5 support."""
    rng = np.random.default_rng(seed)
    taste = rng.choice([-1.0, 1.0], FS_USERS)
    genre = np.tile([-1.0, 1.0], FS_ITEMS // 2)
    rows = []
    for u in range(FS_USERS):
        for t, i in enumerate(rng.permutation(FS_ITEMS)[:20]):
            r = 3 + 1.5 * taste[u] * genre[i] + rng.normal(0, noise)
            rows.append((u, int(i), float(np.clip(r, 1, 5)), t))
    ratings = pd.DataFrame(rows, columns=["user_idx", "item_idx", "rating", "timestamp"])
    features = Features({}, {}, torch.tensor(genre[:, None], dtype=torch.float32), ("genre",))
    split = cold_user_split(ratings, 5, test_frac=0.25, seed=0)
    return split, features, noise


def assert_adapts_to_new_users(model, split, noise):
    def err(m):
        return evaluate_new_users(m, split.support, split.query)["RMSE"]

    baseline = {"item means": err(ItemMean(FS_USERS, FS_ITEMS).fit(split.train))}
    assert_learns(type(model).__name__, err(model), baseline, oracle=noise,
                  higher_is_better=False)


@pytest.mark.parametrize("cls", [MAML, MeLU])
def test_meta_learning_learns_to_adapt(cls):
    """Meta-training (the outer step) and adaptation (the inner step) are both needed: without
    the inner step the best a network can do is the item means."""
    split, features, noise = planted_new_users()
    hyper = dict(n_inner=3) if cls is MeLU else {}  # MeLU's paper takes several local steps
    model = cls(FS_USERS, FS_ITEMS, features, None, n_epochs=20, dim=8, hidden=(16,),
                meta_batch=8, lr=2e-2, n_query=10, **hyper).fit(split.train)
    assert_adapts_to_new_users(model, split, noise)
    assert_loss_falls(model.history_)


def test_fine_tuning_learns_new_users():
    """A BiasedMF of the meta-train users, tuned on each new user's support: its untuned
    prediction for a new user is ``mu + b_i`` (about the item means)."""
    split, _, noise = planted_new_users()
    mf = BiasedMF(FS_USERS, FS_ITEMS, solver="als", n_factors=2, n_epochs=10, reg=0.05,
                  reg_bias=0.05, nu=0.0).fit(split.train)
    model = FineTuneMF(FS_USERS, FS_ITEMS, model=mf, n_steps=30, lr=0.1)
    assert_adapts_to_new_users(model, split, noise)


# ----------------------------------------------------------------------------- bandits


def test_logistic_reward_model_learns_planted_effects():
    """Clicks from an additive logit (context, item, position): held-out log loss against the
    constant click rate, the per-item click rates and the true probabilities."""
    rng = np.random.default_rng(0)
    n, n_items, n_ctx = 4000, 8, 4
    ctx, a, k = rng.integers(n_ctx, size=n), rng.integers(n_items, size=n), rng.integers(2, size=n)
    logit = -1.5 + rng.normal(0, 1, n_ctx)[ctx] + rng.normal(0, 1, n_items)[a] + np.array(
        [0.0, -1.0])[k]
    q = 1 / (1 + np.exp(-logit))
    y = (rng.random(n) < q).astype(float)
    X = np.eye(n_ctx)[ctx]
    tr, te = np.arange(n) < 3000, np.arange(n) >= 3000

    def log_loss(p):
        p = np.clip(p, 1e-9, 1 - 1e-9)
        return float(-np.mean(y[te] * np.log(p) + (1 - y[te]) * np.log(1 - p)))

    model = LogisticRewardModel(l2=1.0).fit(X[tr], a[tr], k[tr], y[tr], np.eye(n_items), 2)
    pred = model.predict(X[te], k[te])[torch.arange(int(te.sum())), torch.as_tensor(a[te])]
    item_rate = np.array([y[tr][a[tr] == i].mean() for i in range(n_items)])
    baselines = {"click rate": log_loss(np.full(int(te.sum()), y[tr].mean())),
                 "item click rates": log_loss(item_rate[a[te]])}
    assert_learns("LogisticRewardModel", log_loss(pred.numpy()), baselines, log_loss(q[te]),
                  higher_is_better=False)


@pytest.mark.parametrize("cls", [LinUCB, LinearTS, NeuralLinearTS])
def test_linear_bandits_learn_planted_preferences(cls):
    """Clicks ``sigmoid(u . v - 1)`` of 20 users on 40 items, the policy given ``U`` and ``V``;
    500 rounds. Baselines: random items, and always the item best on average (the best
    non-personalised policy, told the truth). The oracle's regret is 0."""
    g = torch.Generator().manual_seed(0)
    U, V = torch.randn(20, 4, generator=g), torch.randn(40, 4, generator=g)
    p = torch.sigmoid(U @ V.T - 1.0).double()

    class MostPopular(RandomPolicy):
        def scores(self, context):
            return p.mean(0).float()

    sim = BanditSimulator(p, seed=0, exclude_consumed=False)

    def regret(policy):
        return sim.run(policy, 500).summary()["regret"]

    assert_learns(cls.__name__, regret(cls(V, U, seed=0)),
                  {"random": regret(RandomPolicy(40, 0)),
                   "most popular": regret(MostPopular(40, 0))},
                  oracle=0.0, higher_is_better=False)
