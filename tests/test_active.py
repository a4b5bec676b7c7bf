"""Tests of recsys_ref.active: strategies on tiny cases with a known answer, the elicitation
simulator's protocol, the pool loop's hidden labels, determinism and bad input."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_ref.active import signals
from recsys_ref.active import strategies as S
from recsys_ref.active.elicitation import (
    ElicitationSimulator,
    elicitation_split,
    search_strategy,
    summarize_curve,
)
from recsys_ref.active.pool import (
    LabelOracle,
    PoolConfig,
    labels_to_reach,
    leaky_selection,
    pool_split,
    run_pool,
    search_pool_strategy,
)
from recsys_ref.few_shot import FoldInMF
from recsys_ref.models.mf import BiasedMF, MFConfig
from recsys_ref.tuning import best_config


def state(n=4, m=1, **kw):
    return S.SelectionState(torch.ones(m, n, dtype=torch.bool), **kw)


# ------------------------------------------------------------------------- strategies


def test_score_strategies_pick_the_known_best():
    counts = torch.tensor([5.0, 50.0, 1.0, 20.0])
    entropy = torch.tensor([1.5, 0.1, 1.6, 1.0])
    # log1p(counts) * entropy = [2.69, 0.39, 1.11, 3.04] -> item 3
    st = state(counts=counts, entropy=entropy, density=torch.tensor([0.2, 0.9, 0.5, 0.1]),
               variance=torch.tensor([[1.0, 2.0, 4.0, 3.0]]),
               change=torch.tensor([[0.5, 0.1, 0.2, 0.9]]))
    assert S.Popularity().select(st, 2).tolist() == [[1, 3]]
    assert S.Entropy().select(st, 1).tolist() == [[2]]
    assert S.LogPopEntropy().select(st, 1).tolist() == [[3]]
    assert S.Uncertainty().select(st, 2).tolist() == [[2, 3]]
    assert S.Density().select(st, 1).tolist() == [[1]]
    # variance * density = [0.2, 1.8, 2.0, 0.3]; with beta = 0 it is plain uncertainty
    assert S.DensityWeightedUncertainty().select(st, 2).tolist() == [[2, 1]]
    assert S.DensityWeightedUncertainty(beta=0).select(st, 1).tolist() == [[2]]
    assert S.ExpectedModelChange().select(st, 1).tolist() == [[3]]


def test_uncertainty_sampling_draws_in_proportion_to_epistemic_variance():
    var = torch.tensor([[1.0, 1.0, 5.0, 1.0]])  # noise 1: only item 2 has epistemic variance
    st = S.SelectionState(torch.ones(1, 4, dtype=torch.bool), variance=var, noise_var=1.0)
    for seed in range(20):
        pick = S.ProportionalUncertainty().select(st, 1, torch.Generator().manual_seed(seed))
        assert pick.tolist() == [[2]]
    # weights 1:3 -> item 1 about three times as often as item 0; power 0 is uniform
    st = S.SelectionState(torch.ones(1, 2, dtype=torch.bool),
                          variance=torch.tensor([[2.0, 4.0]]), noise_var=1.0)
    gen = torch.Generator().manual_seed(0)
    firsts = [S.ProportionalUncertainty().select(st, 1, gen).item() for _ in range(2000)]
    assert np.mean(firsts) == pytest.approx(0.75, abs=0.04)
    uniform = [S.ProportionalUncertainty(power=0).select(st, 1, gen).item() for _ in range(2000)]
    assert np.mean(uniform) == pytest.approx(0.5, abs=0.04)
    # only candidates, padded with -1, no repeats
    cand = torch.tensor([[True, False, True, False]])
    st = S.SelectionState(cand, variance=torch.ones(1, 4) * 2, noise_var=1.0)
    out = S.ProportionalUncertainty().select(st, 3, gen)
    assert sorted(out[0, :2].tolist()) == [0, 2] and out[0, 2].item() == -1
    with pytest.raises(ValueError):
        S.ProportionalUncertainty(power=-1)


def test_only_candidates_are_chosen_and_rows_pad_with_minus_one():
    cand = torch.tensor([[True, False, True, False], [False, False, False, True]])
    st = S.SelectionState(cand, counts=torch.tensor([1.0, 100.0, 2.0, 3.0]))
    out = S.Popularity().select(st, 3)
    assert out.tolist() == [[2, 0, -1], [3, -1, -1]]
    rnd = S.RandomSelection().select(st, 2, torch.Generator().manual_seed(1))
    assert set(rnd[0].tolist()) == {0, 2} and rnd[1].tolist() == [3, -1]


def test_kcenter_picks_the_farthest_point_from_the_known_ones():
    X = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 0.0], [0.0, 3.0], [2.5, 0.0]])
    known = torch.tensor([[True, False, False, False, False]])
    st = S.SelectionState(~known, known=known, features=X)
    # farthest from (0,0) is (5,0); then the farthest from {(0,0),(5,0)} is (0,3)
    assert S.KCenter().select(st, 2).tolist() == [[2, 3]]


def test_random_selection_is_roughly_uniform_and_seeded():
    st = state(n=5)
    picks = [int(S.RandomSelection().select(st, 1, torch.Generator().manual_seed(s))[0, 0])
             for s in range(500)]
    assert np.bincount(picks, minlength=5).min() > 70  # 100 expected per item
    a = S.RandomSelection().select(state(n=50), 5, torch.Generator().manual_seed(3))
    b = S.RandomSelection().select(state(n=50), 5, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_rating_entropy_and_counts_by_hand():
    train = pd.DataFrame({"item_idx": [0, 0, 1, 1, 1, 1], "rating": [1.0, 5.0, 4, 4, 4, 4]})
    h = signals.rating_entropy(train, 3)
    assert h.tolist() == pytest.approx([np.log(2), 0.0, 0.0])
    assert signals.item_counts(train, 3).tolist() == [2, 4, 0]
    with pytest.raises(ValueError, match="ratings must be one of"):
        signals.rating_entropy(train.assign(rating=4.5), 3)


def test_cosine_density_matches_the_pairwise_mean():
    X = torch.randn(7, 3, generator=torch.Generator().manual_seed(0))
    cos = torch.nn.functional.cosine_similarity(X[:, None], X[None], dim=-1)  # (7, 7)
    assert signals.cosine_density(X).tolist() == pytest.approx((0.5 * (1 + cos.mean(1))).tolist())


def test_posterior_scores_against_a_loop_and_the_masked_path():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(3, 4, 4, generator=g)
    cov = A @ A.mT + torch.eye(4)  # (3, 4, 4) SPD
    X = torch.randn(6, 4, generator=g)
    var, change = signals.posterior_scores(cov, X, 0.5)
    for u in range(3):
        for i in range(6):
            sx = cov[u].double() @ X[i].double()
            v = float(X[i].double() @ sx) + 0.5
            assert var[u, i] == pytest.approx(v)
            assert change[u, i] == pytest.approx(float(sx @ sx) / v)
    mask = torch.rand(3, 6, generator=g) > 0.5
    mv, mc = signals.posterior_scores(cov, X, 0.5, mask=mask, chunk=2)
    assert torch.allclose(mv[mask], var[mask]) and torch.isnan(mv[~mask]).all()
    assert torch.allclose(mc[mask], change[mask])


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="candidates"):
        S.SelectionState(torch.ones(2, 3))  # not bool
    with pytest.raises(ValueError, match="counts must have shape"):
        state(n=4, counts=torch.ones(3))
    with pytest.raises(ValueError, match="needs state field"):
        S.Uncertainty().select(state(), 1)
    with pytest.raises(ValueError, match="budget"):
        S.RandomSelection().select(state(), 0)
    with pytest.raises(TypeError, match="budget"):
        S.RandomSelection().select(state(), 1.5)
    with pytest.raises(ValueError, match="beta"):
        S.DensityWeightedUncertainty(beta=-1)
    with pytest.raises(TypeError, match="state"):
        S.RandomSelection().select({"candidates": None}, 1)
    with pytest.raises(ValueError, match="noise_var"):
        signals.posterior_scores(torch.eye(2)[None], torch.ones(3, 2), 0.0)


# ------------------------------------------------------------------- elicitation simulator


def synthetic_ratings(n_users=60, n_items=40, d=3, seed=0):
    """Low-rank ratings, each user rating a random 60% of the items."""
    g = np.random.default_rng(seed)
    P, Q = g.normal(size=(n_users, d)), g.normal(size=(n_items, d))
    R = np.clip(np.round(3 + P @ Q.T + 0.3 * g.normal(size=(n_users, n_items))), 1, 5)
    u, i = np.nonzero(g.random((n_users, n_items)) < 0.6)
    return pd.DataFrame({"user_idx": u, "item_idx": i, "rating": R[u, i],
                         "timestamp": np.arange(len(u))})


@pytest.fixture(scope="module")
def tiny():
    ratings = synthetic_ratings()
    split = elicitation_split(ratings, test_frac=0.25, eval_frac=0.3, seed=0)
    cfg = MFConfig(n_factors=3, solver="als", n_epochs=5, reg=0.1)
    model = FoldInMF(60, 40, cfg, prior="empirical").fit(split.train)
    return ratings, split, model


def test_split_pool_and_eval_are_disjoint_and_cover_the_new_users(tiny):
    ratings, split, _ = tiny
    assert len(split.users) == 15
    assert not set(split.train["user_idx"]) & set(split.users)
    key = ["user_idx", "item_idx"]
    both = split.pool.merge(split.evaluation, on=key)
    assert len(both) == 0
    new = ratings[ratings["user_idx"].isin(split.users)]
    assert len(split.pool) + len(split.evaluation) == len(new)
    again = elicitation_split(ratings, test_frac=0.25, eval_frac=0.3, seed=0)
    assert again.evaluation.equals(split.evaluation)


class Recorder(S.Strategy):
    """Popularity, recording every state it was shown."""

    name = "recorder"
    needs = ("counts",)

    def __init__(self):
        self.seen = []

    def scores(self, state, generator):
        self.seen.append(state.candidates.clone())
        return state.counts.double().expand(state.candidates.shape)


def test_simulator_asks_only_pool_items_never_eval_items(tiny):
    _, split, model = tiny
    sim = ElicitationSimulator(model, split)
    rec = Recorder()
    curve = sim.run(rec, budget=6, batch=2)
    pool = sim.pool_mask
    evals = torch.zeros_like(pool)
    evals[sim.eval_rows, sim.eval_items] = True
    for cand in rec.seen:
        assert not (cand & ~pool).any()  # never outside the user's rated items
        assert not (cand & evals).any()  # never an evaluation item
    assert sorted(curve["n_asked"].unique()) == [0, 2, 4, 6]
    answered = curve.groupby("n_asked")["n_answered"].max()
    assert answered.tolist() == [0, 2, 4, 6]
    # the same evaluation ratings at every budget
    assert curve.groupby("n_asked")["n_eval"].sum().nunique() == 1


def test_simulator_is_deterministic_and_answers_help(tiny):
    _, split, model = tiny
    a = ElicitationSimulator(model, split, seed=3).run(S.RandomSelection(), 8)
    b = ElicitationSimulator(model, split, seed=3).run(S.RandomSelection(), 8)
    cols = ["n_asked", "user_idx", "n_answered", "sse", "n_eval", "ndcg"]
    pd.testing.assert_frame_equal(a[cols], b[cols])
    s = summarize_curve(a, n_boot=50)
    assert s.loc[8, "rmse"] < s.loc[0, "rmse"]  # low-rank truth: answers must help
    assert (s["rmse_low"] <= s["rmse"]).all() and (s["rmse"] <= s["rmse_high"]).all()


def test_simulator_uncertainty_strategies_run(tiny):
    _, split, model = tiny
    sim = ElicitationSimulator(model, split)
    for st in (S.Uncertainty(), S.ExpectedModelChange(), S.KCenter(),
               S.DensityWeightedUncertainty(), S.ProportionalUncertainty()):
        curve = sim.run(st, budget=3)
        assert curve["n_answered"].max() == 3


def test_search_strategy_ranks_by_validation_ndcg(tiny):
    _, split, model = tiny
    sim = ElicitationSimulator(model, split, seed=1)
    table = search_strategy(lambda power: S.ProportionalUncertainty(power=power),
                            [{"power": 0.0}, {"power": 2.0}], sim, budget=4, k_eval=2)
    assert list(table.columns) == ["power", "ndcg", "rmse"]
    # each row is the strategy's own mean NDCG after k_eval questions on this simulator
    for row in table.itertuples():
        curve = ElicitationSimulator(model, split, seed=1).run(
            S.ProportionalUncertainty(power=row.power), 4)
        assert row.ndcg == pytest.approx(summarize_curve(curve, n_boot=1).loc[2, "ndcg"])
    assert best_config(table) == {"power": float(table.loc[table["ndcg"].idxmax(), "power"])}
    with pytest.raises(ValueError, match="at least one"):
        search_strategy(S.ProportionalUncertainty, [], sim, budget=2)


def test_simulator_bad_input(tiny):
    _, split, model = tiny
    with pytest.raises(TypeError, match="FoldInMF"):
        ElicitationSimulator(object(), split)
    sim = ElicitationSimulator(model, split)
    with pytest.raises(TypeError, match="strategy"):
        sim.run("random", 3)
    with pytest.raises(ValueError, match="budget"):
        sim.run(S.RandomSelection(), 0)
    with pytest.raises(ValueError, match="eval_frac"):
        elicitation_split(tiny[0], eval_frac=1.0)


# ----------------------------------------------------------------------------- pool loop


@pytest.fixture(scope="module")
def pool_setup():
    ratings = synthetic_ratings(n_users=80, n_items=50)
    cfg = PoolConfig(n_seed=300, batch_size=100, n_rounds=3, n_candidates=400,
                     n_reference=50, test_frac=0.2, seed=0)

    def fit(df):
        return BiasedMF(80, 50, n_factors=3, solver="als", n_epochs=3, reg=0.1).fit(df)

    return ratings, cfg, fit


def test_pool_labels_stay_hidden_until_chosen(pool_setup):
    ratings, cfg, fit = pool_setup
    split, oracle = pool_split(ratings, cfg)
    assert "rating" not in split.pool.columns
    assert not oracle.revealed.any()
    hist = run_pool(S.Uncertainty(), split, oracle, fit, cfg)
    assert oracle.revealed.sum() == cfg.n_rounds * cfg.batch_size
    assert hist["n_labels"].tolist() == [300, 400, 500, 600]
    with pytest.raises(ValueError, match="twice"):
        oracle.label(np.nonzero(oracle.revealed)[0][:1])
    with pytest.raises(ValueError, match="fresh"):
        run_pool(S.RandomSelection(), split, oracle, fit, cfg)
    with pytest.raises(ValueError, match="must not carry ratings"):
        bad = type(split)(split.labelled, split.pool.assign(rating=1.0), split.test)
        run_pool(S.RandomSelection(), bad, LabelOracle(np.ones(len(split.pool))), fit, cfg)


def test_pool_loop_is_deterministic_for_each_strategy(pool_setup):
    ratings, cfg, fit = pool_setup
    split, oracle = pool_split(ratings, cfg)
    with pytest.raises(ValueError, match="pool samples do not have"):
        run_pool(S.ExpectedModelChange(), split, oracle, fit, cfg)
    for st in (S.RandomSelection(), S.DensityWeightedUncertainty(), S.KCenter(),
               S.ProportionalUncertainty()):
        runs = []
        for _ in range(2):
            split, oracle = pool_split(ratings, cfg)
            runs.append(run_pool(st, split, oracle, fit, cfg)["test_rmse"].tolist())
        assert runs[0] == runs[1]
    # the test set is disjoint from the seed set and the pool
    split, _ = pool_split(ratings, cfg)
    key = ["user_idx", "item_idx"]
    assert len(split.test.merge(split.pool, on=key)) == 0
    assert len(split.test.merge(split.labelled, on=key)) == 0


def test_search_pool_strategy_ranks_by_final_validation_rmse(pool_setup):
    ratings, cfg, fit = pool_setup
    table = search_pool_strategy(lambda power: S.ProportionalUncertainty(power=power),
                                 [{"power": 0.0}, {"power": 3.0}], ratings, fit, cfg)
    assert list(table.columns) == ["power", "rmse"]
    # each row is its own pool run's RMSE after the last round, on the loop's test split
    for row in table.itertuples():
        split, oracle = pool_split(ratings, cfg)
        hist = run_pool(S.ProportionalUncertainty(power=row.power), split, oracle, fit, cfg)
        assert row.rmse == hist["test_rmse"].iloc[-1]
    assert table["rmse"].nunique() == 2  # the exponent changes what is bought
    assert best_config(table) == {"power": float(table.loc[table["rmse"].idxmin(), "power"])}
    with pytest.raises(ValueError, match="at least one"):
        search_pool_strategy(S.ProportionalUncertainty, [], ratings, fit, cfg)


def test_labels_to_reach_interpolates():
    h = pd.DataFrame({"n_labels": [100, 200, 300], "test_rmse": [1.0, 0.9, 0.8]})
    assert labels_to_reach(h, 0.85) == pytest.approx(250)
    assert labels_to_reach(h, 1.2) == 100
    assert np.isnan(labels_to_reach(h, 0.5))


def test_leaky_selection_flatters_the_leaked_test_set(pool_setup):
    ratings, cfg, fit = pool_setup
    split, _ = pool_split(ratings, cfg)
    out = leaky_selection(split, fit, n_select=100)
    # trained on its worst test errors, the model looks better on that test set
    assert out["gain_leaked"] > 0
    assert out["gain_leaked"] > out["gain_untouched"]
    with pytest.raises(ValueError, match="n_select"):
        leaky_selection(split, fit, n_select=0)


def test_pool_config_bad_input():
    with pytest.raises(ValueError, match="batch_size"):
        PoolConfig(batch_size=10, n_candidates=5)
    with pytest.raises(ValueError, match="test_frac"):
        PoolConfig(test_frac=0.0)
    with pytest.raises(TypeError, match="n_seed"):
        PoolConfig(n_seed=1.5)


def test_oracle_bought_returns_only_revealed_rows():
    pool = pd.DataFrame({"user_idx": [0, 1, 2], "item_idx": [3, 4, 5]})
    oracle = LabelOracle([5.0, 1.0, 3.0])
    assert oracle.label(np.array([2])).tolist() == [3.0]
    got = oracle.bought(pool)
    assert got[["user_idx", "item_idx", "rating"]].values.tolist() == [[2, 5, 3.0]]
    with pytest.raises(TypeError, match="integer"):
        oracle.label(np.array([0.5]))


def test_simulator_rejects_a_strategy_that_asks_outside_the_pool(tiny):
    _, split, model = tiny
    sim = ElicitationSimulator(model, split)
    first_eval = int(sim.eval_items[0])

    class Rogue(S.Strategy):
        name = "rogue"

        def select(self, state, budget, generator=None):  # ignores the candidates
            return torch.full((len(state.candidates), budget), first_eval)

    with pytest.raises(RuntimeError, match="outside the pool"):
        sim.run(Rogue(), 1)


def test_runs_with_one_test_seed_share_the_test_set_and_nothing_else(pool_setup):
    ratings, cfg, _ = pool_setup
    key = ["user_idx", "item_idx"]

    def pairs(frame):
        return set(map(tuple, frame[key].to_numpy().tolist()))

    base, _ = pool_split(ratings, cfg)  # test_seed None: drawn with seed, as before
    same, _ = pool_split(ratings, dataclasses.replace(cfg, test_seed=cfg.seed))
    other, _ = pool_split(ratings, dataclasses.replace(cfg, seed=cfg.seed + 1,
                                                       test_seed=cfg.seed))
    free, _ = pool_split(ratings, dataclasses.replace(cfg, seed=cfg.seed + 1))
    assert base.test.equals(same.test) and base.labelled.equals(same.labelled)
    assert pairs(other.test) == pairs(base.test)  # the shared test set
    assert pairs(other.labelled) != pairs(base.labelled)  # a different seed set and pool
    assert pairs(free.test) != pairs(base.test)  # without test_seed, seed moves the test set
    for split in (base, other):  # a partition of the ratings in every case
        parts = [pairs(split.test), pairs(split.labelled), pairs(split.pool)]
        assert sum(map(len, parts)) == len(ratings) and not parts[0] & (parts[1] | parts[2])
    with pytest.raises(ValueError, match="test_seed"):
        dataclasses.replace(cfg, test_seed=-1)
