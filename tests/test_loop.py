"""The unified loop: world draws, propensities, the gate, the runner, metrics, bad configuration."""

import itertools

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_ref.active.strategies import Popularity, Uncertainty
from recsys_ref.loop import (
    EmbeddingConfig,
    EmbeddingModel,
    EpsilonGreedy,
    Greedy,
    Logger,
    LoopSystem,
    OPEGate,
    PopularityModel,
    Retrainer,
    Softmax,
    Thompson,
    World,
    WorldConfig,
    exposure_by_day,
    gini,
    mean_jaccard,
    positives,
    run_loop,
    window_values,
    world_factors,
)
from recsys_ref.off_policy import doubly_robust, ips, snips

N_USERS, N_ITEMS = 60, 80


def truth(seed=0):
    g = torch.Generator().manual_seed(seed)
    U, V = torch.randn(N_USERS, 4, generator=g), torch.randn(N_ITEMS, 4, generator=g)
    return torch.sigmoid(U @ V.T - 1.0)


def world(**kw):
    cfg = dict(n_days=8, visits_per_day=10, new_frac=0.25, new_user_visits=3, slate_size=4)
    return World(truth(), WorldConfig(**(cfg | kw)))


def history(w, per_user=12, seed=0):
    rng = np.random.default_rng(seed)
    rows = [(u, int(i)) for u in w.existing_users.tolist()
            for i in rng.choice(N_ITEMS, per_user, replace=False)]
    return pd.DataFrame(rows, columns=["user_idx", "item_idx"])


def embedding(seed=0):
    return EmbeddingModel(N_USERS, N_ITEMS, EmbeddingConfig(n_factors=4, n_epochs=5, seed=seed))


def system(w, **kw):
    hist = history(w)
    parts = dict(model=embedding().fit(hist), policy=Softmax(0.1), history=hist) | kw
    return LoopSystem(**parts)


# --- the world ----------------------------------------------------------------------------
def test_clicks_match_the_truth_on_average():
    w = world(position_bias=0.5)
    users = torch.arange(20)
    slates = torch.stack([torch.randperm(N_ITEMS, generator=torch.Generator().manual_seed(u))[:4]
                          for u in range(20)])
    clicks = torch.stack([w.click(day, users, slates) for day in range(2000)])  # (T, b, k)
    expected = w.expected(users, slates)
    assert torch.allclose(w.examination, torch.tensor([1, 2, 3, 4.0]) ** -0.5)
    # binomial standard error of a mean over 2,000 draws is at most 0.0112
    assert (clicks.mean(0) - expected).abs().max() < 5 * 0.0112
    assert abs(float(clicks.mean() - expected.mean())) < 0.003
    answers = torch.stack([w.answer(d, users, slates) for d in range(2000)]).mean(0)
    assert (answers - w.click_prob[users[:, None], slates]).abs().max() < 5 * 0.0112


def test_visitors_calendar_and_common_random_numbers():
    w = world()
    seen = {int(u): [] for u in w.new_users}
    for day in range(w.config.n_days):
        v = w.visitors(day)
        assert v["user"].is_unique and (v["new_visit"] == -1).sum() == 10
        for u, nv in zip(v["user"], v["new_visit"], strict=True):
            if nv >= 0:
                seen[int(u)].append((day, int(nv)))
    for u, a in zip(w.new_users.tolist(), w.arrival.tolist(), strict=True):
        assert seen[u] == [(a, 0), (a + 1, 1), (a + 2, 2)]  # three first visits in a row
    assert w.visitors(3).equals(world().visitors(3))  # the same draws in another run
    assert not w.visitors(3).equals(world(seed=1).visitors(3))


def test_oracle_is_the_best_slate():
    w = world()
    users = torch.arange(5)
    avail = torch.ones(5, N_ITEMS, dtype=torch.bool)
    avail[:, :10] = False
    best = w.click_prob[users].masked_fill(~avail, 0).topk(4).indices
    assert torch.allclose(w.oracle(users, avail), w.expected(users, best).sum(1))


# --- policies and propensities --------------------------------------------------------------
@pytest.mark.parametrize("policy", [EpsilonGreedy(0.3), Softmax(0.5), Thompson(0.1)])
def test_propensities_sum_to_one_and_match_frequencies(policy):
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(1, N_ITEMS, generator=g)
    avail = torch.ones(1, N_ITEMS, dtype=torch.bool)
    avail[0, :5] = False
    dist = policy.distribution(scores, avail)
    assert torch.allclose(dist.sum(1), torch.ones(1, dtype=torch.float64))
    assert float(dist[0, :5].sum()) == 0
    slates, props = policy.sample(scores.expand(4000, -1), avail.expand(4000, -1), 3, g)
    # each position's logged distribution sums to one and gives the logged propensity
    d = policy.logged_distributions(scores.expand(4000, -1), avail.expand(4000, -1), slates)
    assert torch.allclose(d.sum(-1), torch.ones(4000, 3, dtype=torch.float64))
    assert torch.allclose(d.gather(2, slates[:, :, None])[..., 0], props)
    freq = torch.bincount(slates[:, 0], minlength=N_ITEMS).double() / 4000
    assert (freq - dist[0]).abs().max() < 0.03  # position 0: frequencies = propensities
    assert all(len(set(s)) == 3 for s in slates.tolist())  # distinct items


def test_greedy_is_deterministic_top_k():
    scores = torch.randn(3, N_ITEMS)
    avail = torch.ones(3, N_ITEMS, dtype=torch.bool)
    slates, props = Greedy().sample(scores, avail, 5, torch.Generator())
    assert torch.equal(slates, scores.topk(5).indices) and bool((props == 1).all())
    assert not Greedy().stochastic and Softmax().stochastic


# --- the gate -------------------------------------------------------------------------------
def bandit_logs(n=4000, seed=0):
    """Uniform logging over 10 items with known click rates; returns logs and rates."""
    g = torch.Generator().manual_seed(seed)
    rates = torch.linspace(0.05, 0.5, 10, dtype=torch.float64)
    actions = torch.randint(10, (n,), generator=g)
    rewards = (torch.rand(n, generator=g, dtype=torch.float64) < rates[actions]).double()
    return rewards, actions, torch.full((n,), 0.1, dtype=torch.float64), rates


def test_gate_deploys_nothing_for_identical_policies():
    rewards, actions, props, rates = bandit_logs()
    pi = torch.softmax(torch.randn(10, dtype=torch.float64), 0).expand(len(rewards), -1)
    q = rates.expand(len(rewards), -1)
    for rule in ("better", "not worse"):
        gate = OPEGate(n_bootstrap=200, rule=rule)
        table = gate.evaluate(rewards, actions, props, {"current": pi, "candidate": pi}, q)
        diff = table.loc["difference"]
        assert (diff[["estimate", "ci_low", "ci_high"]] == 0).all().all()
        assert gate.decide(table) is False


def test_gate_estimates_match_off_policy_and_pick_the_better_policy():
    rewards, actions, props, rates = bandit_logs()
    n = len(rewards)
    worse = torch.zeros(n, 10, dtype=torch.float64)
    worse[:, 0] = 1  # always the worst item
    better = torch.zeros(n, 10, dtype=torch.float64)
    better[:, 9] = 1  # always the best item
    q = torch.full((n, 10), 0.3, dtype=torch.float64)  # a poor reward model
    gate = OPEGate(n_bootstrap=200)
    table = gate.evaluate(rewards, actions, props, {"current": worse, "candidate": better}, q)
    assert table.loc[("candidate", "DR"), "estimate"] == pytest.approx(
        doubly_robust(rewards, actions, props, better, q))
    assert table.loc[("candidate", "IPS"), "estimate"] == pytest.approx(
        ips(rewards, actions, props, better))
    assert table.loc[("current", "SNIPS"), "estimate"] == pytest.approx(
        snips(rewards, actions, props, worse))
    for est in ("IPS", "SNIPS", "DR"):  # the truth (0.5, 0.05) inside the intervals
        assert table.loc[("candidate", est), "ci_low"] < 0.5 < table.loc[("candidate", est),
                                                                          "ci_high"]
    assert gate.decide(table) is True
    swapped = gate.evaluate(rewards, actions, props, {"current": better, "candidate": worse}, q)
    assert gate.decide(swapped) is False
    assert OPEGate(n_bootstrap=200, rule="not worse").decide(swapped) is False


def test_gate_in_the_loop_estimates_close_to_the_truth():
    w = world(n_days=6, visits_per_day=20)
    s = system(w, retrainer=Retrainer(embedding, every=3), gate=OPEGate(n_bootstrap=100),
               adapt=True)
    res = run_loop(w, s)
    d = res.decisions
    assert len(d) == 2 and set(d["deployed"]) <= {True, False}
    # the current policy's value estimated on its own (stochastic) logs
    rel = (d["current_DR"] - d["true_current"]).abs() / d["true_current"]
    assert (rel < 0.25).all()


# --- bad configuration --------------------------------------------------------------------
def test_bad_configuration_errors():
    with pytest.raises(ValueError, match="slate_size"):
        World(truth(), WorldConfig(slate_size=N_ITEMS + 1))
    w = world()
    hist = history(w)
    pop = PopularityModel(N_USERS, N_ITEMS).fit(hist)
    with pytest.raises(ValueError, match="posterior"):
        LoopSystem(model=pop, policy=Greedy(), history=hist, onboarding=Uncertainty())
    with pytest.raises(ValueError, match="posterior"):
        LoopSystem(model=pop, policy=Thompson(), history=hist)
    LoopSystem(model=pop, policy=Greedy(), history=hist, onboarding=Popularity())  # fine
    retrain = Retrainer(embedding)
    with pytest.raises(ValueError, match="propensities"):
        LoopSystem(model=pop, policy=Softmax(), history=hist, retrainer=retrain,
                   gate=OPEGate(), logger=Logger(propensities=False))
    with pytest.raises(ValueError, match="stochastic"):
        LoopSystem(model=pop, policy=Greedy(), history=hist, retrainer=retrain, gate=OPEGate())
    with pytest.raises(ValueError, match="propensities"):
        rewards, actions, props, rates = bandit_logs(100)
        pi = rates.expand(100, -1) / rates.sum()
        OPEGate().evaluate(rewards, actions, torch.full((100,), float("nan")),
                           {"a": pi, "b": pi}, pi)
    with pytest.raises(ValueError, match="rule"):
        OPEGate(rule="always")
    with pytest.raises(ValueError, match="epsilon"):
        EpsilonGreedy(1.5)
    with pytest.raises(ValueError, match="temperature"):
        Softmax(0.0)
    with pytest.raises(ValueError, match="slate_size"):
        Softmax().sample(torch.randn(2, 5), torch.ones(2, 5, dtype=torch.bool), 6,
                         torch.Generator())


# --- the model ----------------------------------------------------------------------------
def test_fold_in_moves_scores_towards_the_feedback():
    w = world()
    model = embedding().fit(history(w))
    users = torch.tensor([0, 1])
    base = model.scores(users)
    assert torch.allclose(model.posterior(users).mean, model.prior_mean_[users])
    top = int(base[1].argmax())  # a skip of user 1's best item lowers its score
    fb = pd.DataFrame({"user_idx": [0, 0, 1], "item_idx": [3, 4, top],
                       "label": [1.0, 1.0, 0.0]})
    after = model.scores(users, fb)
    assert after[0, 3] > base[0, 3] and after[1, top] < base[1, top]
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(model.scores(users, fb, True, g1), model.scores(users, fb, True, g2))
    assert not torch.equal(model.scores(users, fb, True, g1), after)


# --- the runner ---------------------------------------------------------------------------
def test_run_loop_is_seeded_and_never_reshows_consumed_items():
    w = world()
    parts = dict(retrainer=Retrainer(embedding, every=3), onboarding=Uncertainty(), adapt=True,
                 n_questions=2)
    a, b = run_loop(w, system(w, **parts)), run_loop(w, system(w, **parts))
    pd.testing.assert_frame_equal(a.log, b.log)
    log = a.log
    assert set(log["kind"]) == {"slate", "answer"}
    assert (log[log["kind"] == "answer"]["new_visit"] == 0).all()
    hist = history(w)
    for u, rows in log.groupby("user_idx"):
        done = set(hist[hist["user_idx"] == u]["item_idx"])
        for _day, block in rows.groupby("day"):
            slate = block[block["kind"] == "slate"]["item_idx"].tolist()
            assert not done & set(slate)
            done |= set(block[(block["label"] > 0) | (block["kind"] == "answer")]["item_idx"])
    v = a.visits
    assert (v["expected"] <= v["oracle"] + 1e-6).all()
    s = log[log["kind"] == "slate"]
    pairs = torch.tensor(s[["user_idx", "item_idx"]].to_numpy())
    assert np.allclose(s["p_true"], w.click_prob[pairs[:, 0], pairs[:, 1]].numpy())


def test_window_values_truth_of_the_logging_policy_is_its_expected_click():
    w = world(n_days=4, visits_per_day=20)
    s = system(w)
    res = run_loop(w, s)
    vals = window_values(w, res.log, s.history, {"current": s.model}, s.policy, 2, 4,
                         reward_model=s.model, adapt=False)
    rows = res.log[(res.log["kind"] == "slate") & (res.log["day"] >= 2)]
    # same model, no feedback folded in (adapt=False): the dists are the logger's own
    assert np.allclose(vals["dists"]["current"][torch.arange(len(rows)),
                                                vals["actions"]].numpy(),
                       rows["propensity"].to_numpy())
    # the truth is the expected click of the logger, whose realised mean is close to it
    assert abs(vals["truth"]["current"] - rows["label"].mean()) < 0.1


# --- metrics ------------------------------------------------------------------------------
def test_gini_and_jaccard_against_slow_formulas():
    c = torch.tensor([0, 3, 1, 7, 0, 2.0])
    slow = sum(abs(a - b) for a, b in itertools.product(c.tolist(), repeat=2)) / (
        2 * len(c) ** 2 * float(c.mean()))
    assert gini(c) == pytest.approx(slow)
    assert gini(torch.ones(5)) == pytest.approx(0) and gini(torch.tensor([0, 0, 4.0])) == \
        pytest.approx(2 / 3)
    slates = torch.tensor([[0, 1, 2], [1, 2, 3], [5, 6, 7]])
    sets = [set(s) for s in slates.tolist()]
    pairs = [len(a & b) / len(a | b) for a, b in itertools.permutations(sets, 2)]
    assert mean_jaccard(slates, 8) == pytest.approx(np.mean(pairs))
    with pytest.raises(ValueError):
        gini(torch.zeros(3))


def test_exposure_by_day_columns():
    w = world()
    res = run_loop(w, system(w, policy=Greedy()))
    e = exposure_by_day(res.log, N_ITEMS, torch.arange(8))
    assert list(e.columns) == ["day", "gini", "popular_share", "coverage", "jaccard",
                               "cum_gini", "cum_coverage"]
    assert len(e) == w.config.n_days and e[["gini", "coverage", "jaccard"]].le(1).all().all()
    assert e["cum_coverage"].is_monotonic_increasing
    assert (e["cum_coverage"] >= e["coverage"]).all()


def test_retrainer_learns_from_logged_labels():
    w = world()
    hist = history(w)
    log = pd.DataFrame({"day": [0, 0, 1, 2], "user_idx": [0, 0, 1, 1], "item_idx": [5, 6, 5, 7],
                        "label": [1.0, 0.0, 1.0, 1.0], "kind": "slate"})
    pos = positives(hist, log, until=2)  # day 2 is not yet included
    # the clicks before day 2; (0, 5) is already in the history and counts once
    assert ((hist["user_idx"] == 0) & (hist["item_idx"] == 5)).any()
    assert pos.iloc[len(hist):].values.tolist() == [[1, 5]]
    assert not pos.duplicated().any()
    r = Retrainer(embedding, every=3)
    assert [d for d in range(9) if r.due(d)] == [2, 5, 8]
    model = r.train(hist, log, until=2)
    assert model.trained_until == 2
    z = model.item_features[:, -1]  # centred, shrunk click rates: 5 clicked twice, 6 skipped
    assert z[5] > 0 > z[6] and z[7] == 0 and float(z[0]) == 0
    with pytest.raises(TypeError, match="LoopModel"):
        Retrainer(lambda: object()).train(hist, log, 2)


def test_world_factors_picks_the_rank_with_the_lowest_held_out_rmse(tmp_path, monkeypatch):
    monkeypatch.setenv("RECSYS_REF_DATA", str(tmp_path))  # a fresh model cache
    g = torch.Generator().manual_seed(0)
    n_users, n_items = 120, 80
    # ratings of a rank-2 world plus noise: 8 factors overfit less than 16 with ten ALS sweeps
    u, i = torch.randn(n_users, 2, generator=g), torch.randn(n_items, 2, generator=g)
    pairs = torch.randperm(n_users * n_items, generator=g)[:3000]
    users, items = pairs // n_items, pairs % n_items
    stars = (3 + (u[users] * i[items]).sum(1) + 0.3 * torch.randn(len(pairs), generator=g))
    ratings = pd.DataFrame({"user_idx": users.numpy(), "item_idx": items.numpy(),
                            "rating": stars.clamp(1, 5).numpy().astype("float64")})
    k, table = world_factors(ratings, n_users, n_items, smoke=True, seed=0)
    assert list(table["n_factors"]) == [8, 16]
    assert k == int(table.loc[table["RMSE"].idxmin(), "n_factors"])
    assert table["RMSE"].notna().all() and (table["RMSE"] < 1.5).all()
