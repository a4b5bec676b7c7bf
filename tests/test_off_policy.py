"""Off-policy estimators on synthetic logged bandits with a known true value."""

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_ref.off_policy import (
    LogisticRewardModel,
    cross_fit_rewards,
    direct_method,
    doubly_robust,
    estimate_policy_value,
    importance_weights,
    ips,
    open_bandit_arrays,
    policy_from_propensities,
    snips,
)

N_CTX, N_ITEMS, N_POS = 3, 4, 2


def tables(seed=0):
    """True click rates q(x, a, k), logging and evaluation policies pi(a | x, k)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.rand(N_CTX, N_ITEMS, N_POS, generator=g, dtype=torch.float64) * 0.6
    pb = torch.softmax(torch.randn(N_CTX, N_ITEMS, N_POS, generator=g, dtype=torch.float64), 1)
    pe = torch.softmax(2 * torch.randn(N_CTX, N_ITEMS, N_POS, generator=g,
                                       dtype=torch.float64), 1)
    return q, pb, pe


def logs(q, pb, pe, n, g):
    """One logged data set: contexts and positions uniform, a ~ pi_b, r ~ Bernoulli(q)."""
    x = torch.randint(N_CTX, (n,), generator=g)
    k = torch.randint(N_POS, (n,), generator=g)
    a = torch.multinomial(pb[x, :, k], 1, generator=g)[:, 0]
    r = (torch.rand(n, generator=g, dtype=torch.float64) < q[x, a, k]).double()
    return dict(rewards=r, actions=a, propensities=pb[x, a, k], action_dist=pe[x], positions=k,
                x=x)


def true_value(q, pe):
    return float((pe * q).sum(1).mean())  # contexts and positions uniform


def test_ips_and_dr_are_unbiased_and_dm_with_a_wrong_model_is_not():
    q, pb, pe = tables()
    V = true_value(q, pe)
    g = torch.Generator().manual_seed(1)
    wrong = (q + 0.15).clamp(max=1)  # a biased reward model
    est = {"IPS": [], "DR": [], "DM": []}
    for _ in range(300):
        d = logs(q, pb, pe, 400, g)
        q_hat = wrong[d["x"], :, d["positions"]]  # (n, n_items) at the logged position
        est["IPS"].append(ips(d["rewards"], d["actions"], d["propensities"], d["action_dist"],
                              d["positions"]))
        est["DR"].append(doubly_robust(d["rewards"], d["actions"], d["propensities"],
                                       d["action_dist"], q_hat, d["positions"]))
        est["DM"].append(direct_method(d["action_dist"], q_hat, d["positions"]))
    for name, values in est.items():
        values = np.array(values)
        se = values.std(ddof=1) / np.sqrt(len(values))
        if name == "DM":  # the model is off by about 0.15: far outside the noise
            assert abs(values.mean() - V) > 10 * se
        else:
            assert abs(values.mean() - V) < 4 * se, (name, values.mean(), V, se)


def test_by_hand_and_identities():
    # 3 rows, 2 items, a 2-D evaluation policy (one row per round)
    r = torch.tensor([1.0, 0.0, 1.0])
    a = torch.tensor([0, 1, 1])
    pb = torch.tensor([0.5, 0.25, 0.5])
    pe = torch.tensor([[0.8, 0.2], [0.5, 0.5], [0.0, 1.0]])
    w = importance_weights(a, pb, pe)
    assert w.tolist() == pytest.approx([1.6, 2.0, 2.0])
    assert ips(r, a, pb, pe) == pytest.approx((1.6 + 0 + 2.0) / 3)
    assert snips(r, a, pb, pe) == pytest.approx(3.6 / 5.6)
    q_hat = torch.tensor([[0.5, 0.1], [0.2, 0.4], [0.3, 0.6]])
    dm_rows = [0.8 * 0.5 + 0.2 * 0.1, 0.5 * 0.2 + 0.5 * 0.4, 0.6]
    assert direct_method(pe, q_hat) == pytest.approx(np.mean(dm_rows))
    corr = [1.6 * (1 - 0.5), 2.0 * (0 - 0.4), 2.0 * (1 - 0.6)]
    assert doubly_robust(r, a, pb, pe, q_hat) == pytest.approx(np.mean(dm_rows) + np.mean(corr))
    # DR = IPS when the reward model is 0; DR = DM when rewards equal the model exactly
    assert doubly_robust(r, a, pb, pe, torch.zeros(3, 2)) == pytest.approx(ips(r, a, pb, pe))
    exact = q_hat[torch.arange(3), a]
    assert doubly_robust(exact, a, pb, pe, q_hat) == pytest.approx(direct_method(pe, q_hat))
    # SNIPS = IPS when the weights average exactly 1 (here 0.5 and 1.5)
    pe2 = torch.tensor([[0.25, 0.75], [0.75, 0.25]])
    a2, pb2, r2 = torch.tensor([0, 0]), torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.3])
    assert snips(r2, a2, pb2, pe2) == pytest.approx(ips(r2, a2, pb2, pe2))
    assert snips(r, a, pb, pe) != pytest.approx(ips(r, a, pb, pe))


def test_position_selects_the_slice():
    q, pb, pe = tables()
    d = logs(q, pb, pe, 50, torch.Generator().manual_seed(0))
    flat = d["action_dist"][torch.arange(50), :, d["positions"]]  # (n, n_items)
    assert ips(d["rewards"], d["actions"], d["propensities"], d["action_dist"], d["positions"]
               ) == pytest.approx(ips(d["rewards"], d["actions"], d["propensities"], flat))


def test_estimate_policy_value_frame():
    q, pb, pe = tables()
    d = logs(q, pb, pe, 300, torch.Generator().manual_seed(2))
    q_hat = q[d["x"], :, d["positions"]]
    args = (d["rewards"], d["actions"], d["propensities"], d["action_dist"])
    res = estimate_policy_value(*args, q_hat=q_hat, positions=d["positions"], true_value=0.2,
                                n_bootstrap=300, seed=0)
    assert list(res.index) == ["IPS", "SNIPS", "DM", "DR"]
    assert res.loc["IPS", "estimate"] == pytest.approx(ips(*args, d["positions"]))
    assert res.loc["DR", "estimate"] == pytest.approx(
        doubly_robust(*args, q_hat, d["positions"]))
    assert (res["ci_low"] <= res["estimate"]).all() and (res["estimate"] <= res["ci_high"]).all()
    assert res.loc["DM", "relative_error"] == pytest.approx(
        abs(res.loc["DM", "estimate"] - 0.2) / 0.2)
    # DM with the true model varies far less across resamples than IPS
    width = res["ci_high"] - res["ci_low"]
    assert width["DM"] < width["IPS"]
    again = estimate_policy_value(*args, q_hat=q_hat, positions=d["positions"],
                                  true_value=d["rewards"][:100], n_bootstrap=300, seed=0)
    assert torch.allclose(torch.tensor(again["ci_low"].to_numpy()),
                          torch.tensor(res["ci_low"].to_numpy()))
    assert again.loc["IPS", "true_value"] == pytest.approx(float(d["rewards"][:100].mean()))
    assert list(estimate_policy_value(*args, positions=d["positions"]).index) == ["IPS", "SNIPS"]


def test_bad_inputs_name_the_argument():
    r, a, pb = torch.ones(3), torch.tensor([0, 1, 1]), torch.tensor([0.5, 0.5, 0.5])
    pe = torch.full((3, 2), 0.5)
    with pytest.raises(ValueError, match="propensities"):
        ips(r, a, torch.tensor([0.5, 0.0, 0.5]), pe)
    with pytest.raises(ValueError, match="action_dist"):
        ips(r, a, pb, torch.ones(3, 2))
    with pytest.raises(ValueError, match="action_dist"):
        ips(r, a, pb, torch.full((4, 2), 0.5))
    with pytest.raises(ValueError, match="positions"):
        ips(r, a, pb, torch.full((3, 2, 2), 0.5))
    with pytest.raises(ValueError, match="q_hat"):
        doubly_robust(r, a, pb, pe, torch.zeros(3, 3))
    with pytest.raises(ValueError, match="actions"):
        ips(r, torch.tensor([0, 1, 2]), pb, pe)
    with pytest.raises(ValueError, match="same|one length"):
        ips(r[:2], a, pb, pe)
    with pytest.raises(ValueError, match="true_value"):
        estimate_policy_value(r, a, pb, pe, true_value=0.0)
    with pytest.raises(ValueError, match="alpha"):
        estimate_policy_value(r, a, pb, pe, alpha=1.5)


def test_policy_from_propensities_recovers_the_time_average():
    """A policy whose probabilities drift over time: the harmonic mean of the logged
    propensities estimates their time average; the plain mean is biased towards the times
    an item was likely."""
    g = torch.Generator().manual_seed(0)
    n, n_items = 40_000, 3
    t = torch.arange(n, dtype=torch.float64) / n
    pi = torch.stack([0.1 + 0.6 * t, 0.7 - 0.6 * t, torch.full_like(t, 0.2)], 1)  # (n, 3)
    a = torch.multinomial(pi, 1, generator=g)[:, 0]
    p = pi[torch.arange(n), a]
    k = torch.zeros(n, dtype=torch.long)
    truth = pi.mean(0)  # (0.4, 0.4, 0.2)
    harmonic = policy_from_propensities(a, k, p, n_items, 1, method="harmonic")[:, 0]
    mean = policy_from_propensities(a, k, p, n_items, 1, method="mean")[:, 0]
    freq = policy_from_propensities(a, k, p, n_items, 1, method="frequency")[:, 0]
    assert torch.allclose(harmonic, truth, atol=0.01)
    assert torch.allclose(freq, truth, atol=0.01)
    # the plain mean estimates E[pi^2] / E[pi] (0.475, 0.475, 0.2), then normalised
    size_biased = torch.tensor([0.475, 0.475, 0.2], dtype=torch.float64) / 1.15
    assert torch.allclose(mean, size_biased, atol=0.005)
    assert (mean - truth).abs().max() > 0.02
    # unseen (item, position) pairs get `unseen`, then each position sums to 1
    dist = policy_from_propensities([0, 0, 1], [0, 1, 1], [0.5, 0.2, 0.4], 3, 2, "mean")
    assert dist[:, 0].tolist() == pytest.approx([1.0, 0.0, 0.0])
    assert dist[:, 1].tolist() == pytest.approx([0.2 / 0.6, 0.4 / 0.6, 0.0])
    floor = policy_from_propensities([0, 0, 1], [0, 1, 1], [0.5, 0.2, 0.4], 3, 2, "mean",
                                     unseen=0.1)
    assert floor[:, 0].tolist() == pytest.approx([0.5 / 0.7, 0.1 / 0.7, 0.1 / 0.7])
    with pytest.raises(ValueError, match="method"):
        policy_from_propensities(a, k, p, n_items, 1, method="median")
    with pytest.raises(ValueError, match="propensities"):
        policy_from_propensities([0], [0], [0.0], 1, 1)


def reward_data(n=600, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.nn.functional.one_hot(torch.randint(4, (n,), generator=g), 4).double()
    F = torch.eye(N_ITEMS, dtype=torch.float64)
    Z = torch.rand(n, N_ITEMS, 1, generator=g, dtype=torch.float64)
    a = torch.randint(N_ITEMS, (n,), generator=g)
    k = torch.randint(N_POS, (n,), generator=g)
    logit = -1 + X @ torch.tensor([0.5, -0.5, 1.0, 0.0], dtype=torch.float64) + 0.3 * a \
        - 0.7 * k + 2 * Z[torch.arange(n), a, 0]
    y = (torch.rand(n, generator=g, dtype=torch.float64) < torch.sigmoid(logit)).double()
    return X, F, Z, a, k, y


def test_logistic_reward_model_matches_sklearn():
    linear_model = pytest.importorskip("sklearn.linear_model")
    X, F, Z, a, k, y = reward_data()
    model = LogisticRewardModel(l2=2.0).fit(X, a, k, y, F, N_POS, Z)
    n = len(y)
    design = torch.cat([X, F[a], torch.nn.functional.one_hot(k, N_POS).double(),
                        Z[torch.arange(n), a]], 1).numpy()
    ref = linear_model.LogisticRegression(C=1 / 2.0, tol=1e-10, max_iter=10_000).fit(
        design, y.numpy())
    ours = model.predict(X, k, Z)[torch.arange(n), a].numpy()
    assert np.allclose(ours, ref.predict_proba(design)[:, 1], atol=1e-5)
    with pytest.raises(ValueError, match="pair_features"):
        model.predict(X, k)
    with pytest.raises(ValueError, match="rewards"):
        LogisticRewardModel().fit(X, a, k, y * 2, F, N_POS)
    with pytest.raises(ValueError, match="l2"):
        LogisticRewardModel(l2=-1.0)


def test_cross_fitting_never_sees_the_row_it_predicts():
    X, F, Z, a, k, y = reward_data()
    q = cross_fit_rewards(X, a, k, y, F, N_POS, Z, n_folds=3, seed=0)
    assert q.shape == (len(y), N_ITEMS)
    y2 = y.clone()
    y2[0] = 1 - y2[0]  # change one row's click: its own prediction must not move
    q2 = cross_fit_rewards(X, a, k, y2, F, N_POS, Z, n_folds=3, seed=0)
    assert torch.equal(q[0], q2[0])
    assert not torch.equal(q, q2)  # the other folds' models did see it
    with pytest.raises(ValueError, match="n_folds"):
        cross_fit_rewards(X, a, k, y, F, N_POS, Z, n_folds=1)


def test_open_bandit_arrays_on_a_tiny_frame():
    logs = pd.DataFrame({
        "item_id": [0, 1, 2, 1], "position": [1, 2, 3, 1], "click": [0, 1, 0, 0],
        "propensity_score": [1 / 3] * 4, "user_feature_0": ["a", "b", "a", "c"],
        "user_feature_1": ["x", "x", "y", "y"],
        **{f"user-item_affinity_{i}": [0.0, float(i), 0.0, 1.0] for i in range(3)}})
    items = pd.DataFrame({"item_id": [2, 0, 1], "item_feature_0": [1.0, 2.0, 3.0],
                          "item_feature_1": ["u", "v", "u"]})
    arr = open_bandit_arrays(logs, items)
    assert arr["positions"].tolist() == [0, 1, 2, 0] and arr["n_positions"] == 3
    assert arr["context"].shape == (4, 5)  # 3 + 2 one-hot categories
    assert arr["action_features"].shape == (3, 3 + 1 + 2)
    assert arr["pair_features"][1, :, 0].tolist() == [0.0, 1.0, 2.0]
