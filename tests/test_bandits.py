"""Bandit simulator and policies: regret bookkeeping, masks, linear algebra, seeds, bad input."""

import math

import numpy as np
import pytest
import torch

from recsys_ref.bandits import (
    UCB1,
    BanditSimulator,
    BernoulliTS,
    Context,
    EpsilonGreedy,
    Greedy,
    LinearTS,
    LinUCB,
    NeuralLinearTS,
    OraclePolicy,
    RandomPolicy,
    RidgeStatistics,
    click_probabilities_from_scores,
    pair_features,
    sherman_morrison,
)

N_USERS, N_ITEMS, D = 6, 25, 4


def problem(seed=0):
    """Click probabilities from a random low-rank logit model, and its embeddings."""
    g = torch.Generator().manual_seed(seed)
    U = torch.randn(N_USERS, D, generator=g)
    V = torch.randn(N_ITEMS, D, generator=g)
    return torch.sigmoid(U @ V.T - 0.5).double(), U, V


def all_policies(p, U, V, seed=0):
    return [RandomPolicy(N_ITEMS, seed), OraclePolicy(p), Greedy(N_ITEMS, 0.0, seed),
            Greedy(N_ITEMS, 1.0, seed), EpsilonGreedy(N_ITEMS, 0.2, seed=seed),
            EpsilonGreedy(N_ITEMS, decay=5.0, seed=seed), UCB1(N_ITEMS, seed=seed),
            BernoulliTS(N_ITEMS, seed=seed), LinUCB(V, U, alpha=1.0, seed=seed),
            LinearTS(V, U, seed=seed), NeuralLinearTS(V, U, seed=seed),
            LinUCB(V, U, kind="outer"), LinearTS(V, U, kind="concat", seed=seed)]


# ----------------------------------------------------------------------------- simulator


@pytest.mark.parametrize("k", [1, 3])
def test_oracle_has_zero_regret_and_random_positive(k):
    p, _, _ = problem()
    sim = BanditSimulator(p, seed=1, slate_size=k, consume_on="show")
    oracle = sim.run(OraclePolicy(p), 30)
    assert oracle.regret.abs().max() < 1e-12
    rnd = sim.run(RandomPolicy(N_ITEMS, seed=0), 30)
    assert rnd.regret.sum() > 1.0
    assert (rnd.regret >= -1e-12).all()  # the oracle is the best available slate every round


def test_run_records_are_consistent():
    p, _, _ = problem()
    sim = BanditSimulator(p, seed=3, slate_size=2)
    res = sim.run(RandomPolicy(N_ITEMS, seed=0), 100)
    assert res.items.shape == (100, 2) and res.rewards.shape == (100, 2)
    assert torch.equal(res.expected, p[res.users[:, None], res.items])
    assert torch.allclose(res.regret, res.oracle - res.expected.sum(1))
    frame = res.to_frame()
    assert list(frame.columns[:6]) == ["round", "user", "item_0", "item_1", "reward_0",
                                       "reward_1"]
    assert frame["cumulative_regret"].iloc[-1] == pytest.approx(float(res.regret.sum()))
    s = res.summary()
    assert s["ctr"] == pytest.approx(float(res.rewards.mean()))
    assert s["coverage"] == len(set(res.items.flatten().tolist())) / N_ITEMS
    # the same seed gives the same arrivals and clicks (common random numbers)
    again = sim.run(RandomPolicy(N_ITEMS, seed=0), 100)
    assert torch.equal(again.items, res.items) and torch.equal(again.rewards, res.rewards)


def test_oracle_value_by_hand():
    """One user, p = (0.9, 0.5, 0.1), every shown item consumed: the oracle walks down."""
    p = torch.tensor([[0.9, 0.5, 0.1]])
    sim = BanditSimulator(p, seed=0, consume_on="show")
    res = sim.run(RandomPolicy(3, seed=0), 3)
    assert sorted(res.items[:, 0].tolist()) == [0, 1, 2]  # never the same item twice
    # oracle value = best p among the items not yet shown
    shown, expect = set(), []
    for i in res.items[:, 0].tolist():
        expect.append(max(p[0, j].item() for j in range(3) if j not in shown))
        shown.add(i)
    assert res.oracle.tolist() == pytest.approx(expect)


def test_clicked_items_are_excluded():
    p = torch.ones(1, 10)  # every shown item is clicked, so consumed
    res = BanditSimulator(p, seed=0).run(Greedy(10, 1.0, seed=0), 10)
    assert sorted(res.items[:, 0].tolist()) == list(range(10))


@pytest.mark.parametrize("k", [1, 3])
def test_policies_only_select_available_items(k):
    p, U, V = problem()
    g = torch.Generator().manual_seed(0)
    for policy in all_policies(p, U, V):
        for t in range(1, 25):
            available = torch.rand(N_ITEMS, generator=g) < 0.3
            available[:k] = True  # at least k available
            ctx = Context(t, t % N_USERS, available, k)
            items = policy.select(ctx)
            assert items.shape == (k,) and len(set(items.tolist())) == k
            assert available[items].all(), type(policy).__name__
            policy.update(ctx, items, torch.ones(k, dtype=torch.float64))
        # and inside the simulator, with slates and consumption
        BanditSimulator(p, seed=0, slate_size=k).run(policy, 30)


def test_simulator_rejects_bad_input_and_bad_policies():
    p, _, _ = problem()
    with pytest.raises(ValueError, match="click_prob"):
        BanditSimulator(p * 2)
    with pytest.raises(ValueError, match="click_prob"):
        BanditSimulator(torch.rand(5))
    with pytest.raises(ValueError, match="slate_size"):
        BanditSimulator(p, slate_size=N_ITEMS + 1)
    with pytest.raises(ValueError, match="consume_on"):
        BanditSimulator(p, consume_on="never")
    with pytest.raises(ValueError, match="user_features"):
        BanditSimulator(p, user_features=torch.zeros(N_USERS + 1, 2))
    with pytest.raises(ValueError, match="n_rounds"):  # a user would run out of items
        BanditSimulator(p, consume_on="show").run(RandomPolicy(N_ITEMS), 1000)
    with pytest.raises(ValueError, match="n_rounds"):  # every item clicked: runs out mid-run
        BanditSimulator(torch.ones(1, 3)).run(RandomPolicy(3), 4)

    class Stubborn:
        def select(self, context):
            return 0

        def update(self, context, items, rewards):
            pass

    with pytest.raises(ValueError, match="policy.select"):  # item 0 is clicked, then shown again
        BanditSimulator(torch.ones(1, 3), seed=0).run(Stubborn(), 2)
    assert BanditSimulator(torch.ones(1, 3), exclude_consumed=False).run(Stubborn(), 3
                                                                         ).regret.sum() == 0


def test_click_probabilities_from_scores_is_the_maximum_likelihood_fit():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(N_USERS, N_ITEMS, generator=g, dtype=torch.float64)
    u = torch.randint(N_USERS, (300,), generator=g)
    i = torch.randint(N_ITEMS, (300,), generator=g)
    y = (torch.rand(300, generator=g, dtype=torch.float64)
         < torch.sigmoid(2 * scores[u, i] - 1)).double()
    prob, fit = click_probabilities_from_scores(scores, u, i, y)
    # the log-likelihood is concave in (slope, intercept): a zero gradient is its maximum
    s = scores[u, i]
    q = torch.sigmoid(fit["slope"] * s + fit["intercept"])
    assert abs(float(((y - q) * s).sum())) < 1e-8 and abs(float((y - q).sum())) < 1e-8
    assert 1.0 < fit["slope"] < 3.0  # near the generating slope 2
    assert torch.allclose(prob, torch.sigmoid(fit["slope"] * scores + fit["intercept"]))
    with pytest.raises(ValueError, match="clicks"):
        click_probabilities_from_scores(scores, u, i, y * 2)
    with pytest.raises(ValueError, match="items"):
        click_probabilities_from_scores(scores, u, i + N_ITEMS, y)


# ----------------------------------------------------------------------------- policies


def test_sherman_morrison_matches_inverse_after_many_updates():
    g = torch.Generator().manual_seed(0)
    stats = RidgeStatistics(6, lam=0.5)
    for _ in range(300):
        X = torch.randn(2, 6, generator=g, dtype=torch.float64)
        stats.update(X, torch.rand(2, generator=g, dtype=torch.float64))
    assert torch.allclose(stats.A_inv, torch.linalg.inv(stats.A), atol=1e-10)
    assert torch.allclose(stats.theta, torch.linalg.solve(stats.A, stats.b), atol=1e-10)
    A = torch.eye(3, dtype=torch.float64) * 2
    x = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    assert torch.allclose(sherman_morrison(torch.linalg.inv(A), x),
                          torch.linalg.inv(A + torch.outer(x, x)))


def test_linucb_matches_a_slow_loop():
    p, U, V = problem()
    policy = LinUCB(V, U, alpha=0.7, lam=2.0)
    sim = BanditSimulator(p, seed=0)
    sim.run(policy, 60)  # some updates
    A, b = policy.stats.A, policy.stats.b
    theta = torch.linalg.solve(A, b)
    available = torch.ones(N_ITEMS, dtype=torch.bool)
    available[::3] = False
    for u in range(N_USERS):
        slow = []
        for i in range(N_ITEMS):
            x = U[u].double() * V[i].double()
            slow.append(float(theta @ x + 0.7 * math.sqrt(x @ torch.linalg.solve(A, x))))
        slow = torch.tensor(slow, dtype=torch.float64)
        ctx = Context(61, u, available)
        assert torch.allclose(policy.scores(ctx).double(), slow, rtol=1e-4, atol=1e-5)
        assert int(policy.select(ctx)) == int(slow.masked_fill(~available, -1e9).argmax())


def test_pair_features():
    u, V = torch.tensor([1.0, 2.0]), torch.tensor([[3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])
    assert torch.equal(pair_features(u, V, "product"), V * u)
    assert pair_features(u, V, "concat").shape == (3, 4)
    assert torch.equal(pair_features(u, V, "outer")[1], torch.kron(u, V[1]))
    with pytest.raises(ValueError, match="kind"):
        pair_features(u, V, "sum")
    with pytest.raises(ValueError, match="product"):
        pair_features(torch.ones(3), V, "product")


@pytest.mark.parametrize("make", [
    lambda U, V, s: BernoulliTS(N_ITEMS, seed=s), lambda U, V, s: LinearTS(V, U, seed=s),
    lambda U, V, s: NeuralLinearTS(V, U, seed=s), lambda U, V, s: EpsilonGreedy(N_ITEMS, seed=s),
])
def test_thompson_sampling_is_deterministic_for_a_seed(make):
    p, U, V = problem()
    sim = BanditSimulator(p, seed=0, exclude_consumed=False)
    a, b, c = (sim.run(make(U, V, s), 100).items for s in (7, 7, 8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_ucb1_pulls_the_better_of_two_arms():
    p = torch.tensor([[0.3, 0.6]])
    res = BanditSimulator(p, seed=0, exclude_consumed=False).run(UCB1(2), 1000)
    assert (res.items == 1).double().mean() > 0.8
    # expected regret of UCB1 is O(log T): far below random's 0.15 per round
    assert res.regret.sum() < 0.05 * 1000


def test_greedy_initial_values_and_epsilon_schedule():
    # no clicks at all: optimistic greedy tries every item once, zero-init greedy ties forever
    p = torch.zeros(1, 8)
    sim = BanditSimulator(p, seed=0, exclude_consumed=False)
    assert sorted(sim.run(Greedy(8, 1.0), 8).items[:, 0].tolist()) == list(range(8))
    pol = Greedy(8, 0.0)
    sim.run(pol, 50)
    assert torch.equal(pol.means(), torch.zeros(8, dtype=torch.float64))
    eps = EpsilonGreedy(8, decay=3.0)
    assert [eps.epsilon_at(t) for t in (1, 3, 6)] == [1.0, 1.0, 0.5]
    assert EpsilonGreedy(8, epsilon=0.1).epsilon_at(1000) == 0.1


def test_neural_linear_noise_posterior():
    g = torch.Generator().manual_seed(0)
    V, U = torch.randn(N_ITEMS, D, generator=g), torch.randn(N_USERS, D, generator=g)
    pol = NeuralLinearTS(V, U, prior=(3.0, 0.5), lam=1.5)
    X = torch.randn(40, D, generator=g, dtype=torch.float64)
    y = torch.rand(40, generator=g, dtype=torch.float64)
    pol.stats.update(X, y)
    A = 1.5 * torch.eye(D, dtype=torch.float64) + X.T @ X
    mu = torch.linalg.solve(A, X.T @ y)
    a_n, b_n = pol.noise_posterior()
    assert a_n == pytest.approx(3.0 + 20)
    assert b_n == pytest.approx(0.5 + 0.5 * float(y @ y - mu @ A @ mu))


def test_policies_reject_bad_hyperparameters():
    _, U, V = problem()
    with pytest.raises(ValueError, match="alpha"):
        LinUCB(V, U, alpha=-0.1)
    with pytest.raises(ValueError, match="alpha"):
        UCB1(N_ITEMS, alpha=-1.0)
    with pytest.raises(ValueError, match="epsilon"):
        EpsilonGreedy(N_ITEMS, epsilon=1.5)
    with pytest.raises(ValueError, match="decay"):
        EpsilonGreedy(N_ITEMS, decay=0.0)
    with pytest.raises(ValueError, match="prior"):
        BernoulliTS(N_ITEMS, prior=(0.0, 1.0))
    with pytest.raises(ValueError, match="lam"):
        LinearTS(V, U, lam=0.0)
    with pytest.raises(ValueError, match="kind"):
        LinUCB(V, U, kind="sum")
    with pytest.raises(ValueError, match="item_features"):
        LinUCB(V[0], U)
    with pytest.raises(ValueError, match="product"):  # mismatched embedding sizes
        LinUCB(V, U[:, :2]).select(Context(1, 0, torch.ones(N_ITEMS, dtype=torch.bool)))
    with pytest.raises(ValueError, match="user features"):
        LinUCB(V).select(Context(1, 0, torch.ones(N_ITEMS, dtype=torch.bool)))
    with pytest.raises(ValueError, match="initial_value"):
        Greedy(N_ITEMS, initial_value=2.0)


def test_user_features_from_the_context():
    """A policy without its own user table reads the features the simulator hands over."""
    p, U, V = problem()
    a = BanditSimulator(p, seed=0, user_features=U).run(LinUCB(V), 80)
    b = BanditSimulator(p, seed=0).run(LinUCB(V, U), 80)
    assert torch.equal(a.items, b.items)
    assert np.isfinite(a.summary()["regret"])
