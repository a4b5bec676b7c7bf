"""Execute every chapter at SMOKE settings, assert its claims, and check it reproduces.

For each chapter in ``_toc.yml``, one test: jupytext converts the MyST source into
``_build/smoke``, papermill executes it with ``-p SMOKE True`` (the executed notebook is kept and
later staged for the strict book build), the subtest ``claims`` asserts the claims its prose
makes from the values it recorded with ``glue``, and the subtest ``reproduces`` re-executes the
executed notebook with ``pytest --nbval-lax`` so the cells tagged ``nbval-check-output`` must
reproduce exactly (a cell tag, so the reader never sees the marker).
"""

import os
import subprocess
import sys
from collections.abc import Callable

import pytest
from chapter_runner import BUILD, ROOT, chapters_in_toc, execute, glued

from recsys_ref.data.cache import data_home

pytestmark = pytest.mark.chapters

CLAIMS: dict[str, Callable[[dict], None]] = {}
# popularity's full-ranking NDCG@10 on the leave-last-out test split (seen items removed,
# 943 users, ties ranked against the test item): deterministic, the same in every chapter
POP_NDCG10 = 0.043852


def claims(stem: str):
    """Register the function that asserts a chapter's claims from its glued values."""

    def register(check):
        CLAIMS[stem] = check
        return check

    return register


@claims("introduction")
def introduction(g):
    assert (g["n_ratings"], g["n_users"], g["n_items"]) == (100_000, 943, 1682)
    assert g["density_pct"] == pytest.approx(6.30, abs=0.01)
    assert g["min_user_ratings"] == 20
    assert g["n_test_users"] == 943  # leave-last-out: one test item per user
    assert g["top10_share"] > 30  # "a long tail": the top 10% of items have > 30% of ratings
    assert g["temporal_cold_users"] > 0
    # "much of a user's history is typed in a few sittings"
    assert g["first_day_share_pct"] > 50 and g["same_second_pct"] > 25
    # OBD: clicks are rare under both logging policies (< 1%)
    assert 0 < g["obd_ctr_random"] < 1 and 0 < g["obd_ctr_bts"] < 1
    # popularity: full-ranking numbers in the range published for this split (RecBole-style
    # leave-last-out, popularity NDCG@10 ~0.044), and the bootstrap interval brackets the mean
    assert g["pop_full_ndcg10"] == pytest.approx(POP_NDCG10, abs=1e-5)
    assert g["pop_ndcg10_low"] < g["pop_full_ndcg10"] < g["pop_ndcg10_high"]
    # "sampling inflates the hit rate several-fold"
    assert g["sampled_inflation"] > 3
    assert g["pop_sampled_ndcg10"] > 3 * g["pop_full_ndcg10"]
    assert g["pop_coverage10"] < 0.1


@claims("collaborative_filtering")
def collaborative_filtering(g):
    assert g["u1_cold_test"] > 0  # u1.test has ratings of movies absent from u1.base
    assert g["top_bias_min_ratings"] >= 50  # the largest item biases are well supported
    # Star Wars / Return of the Jedi: the raw cosine is large, the centred Pearson smaller
    assert g["sw_jedi_support"] > 100 and g["sw_jedi_cosine"] > g["sw_jedi_pearson"] > 0
    # --- rating prediction; at SMOKE settings fold u1 only (the five-fold claims, item-based
    # better on average but not on every fold, are asserted in the chapter's full run)
    assert g["n_folds"] == 1
    m = {k: g[f"rmse_{k}_u1"] for k in ("global", "bias", "basic_cos", "means_pearson",
                                         "adjcos", "knn_user", "knn_item", "tuned")}
    # "biases do most of the work": their gain over the mean dwarfs the best k-NN's over them
    assert g["rmse_gain_bias_vs_global"] > 3 * (m["bias"] - min(m.values()))
    # "centring matters most": raw-cosine KNNBasic worse than the biases, KNNWithMeans better,
    # KNNBaseline best of Surprise's variants; centring by means removes most of the gap
    assert m["basic_cos"] > m["bias"] > m["means_pearson"] > max(m["knn_user"], m["knn_item"])
    assert m["basic_cos"] - m["means_pearson"] > m["means_pearson"] - m["knn_item"]
    assert m["knn_item"] > m["knn_user"]  # "not on u1"
    # "we reproduce Surprise" (run in the chapter on the same fold): the same algorithms agree
    # on every prediction up to float32 rounding; KNNBasic and KNNWithMeans differ only where
    # two candidate neighbours tie for the k-th place
    assert g["surprise_n_predictions"] == 20_000
    assert g["surprise_same_gap"] < 1e-6
    for key in ("bias", "knn_user", "knn_item"):
        assert g[f"surprise_differ_{key}"] == 0 and g[f"surprise_gap_{key}"] < 1e-6
    for key in ("basic_cos", "means_pearson"):
        assert g[f"surprise_differ_{key}"] > 0
        assert g[f"surprise_tied_{key}"] == g[f"surprise_differ_{key}"]
    assert g["surprise_tie_gap"] > 0.1 and g["surprise_untied_gap_all"] < 1e-6
    assert g["surprise_rmse_gap_max"] < 1e-3
    assert m["knn_item"] == pytest.approx(0.9359, abs=1e-4)  # what Surprise computes on u1
    # tuned on training data only: better than the defaults on u1, best of the table
    assert g["tuned_gain_min"] > 0 and m["tuned"] == min(m.values())
    # --- error against k (u1): k=5 worse than the biases, falls to k=40, then flat
    assert g["sweep_item_k5"] > g["bias_rmse_u1"] > g["sweep_item_k40"]
    assert g["sweep_item_k5"] - g["sweep_item_k40"] > 0.02
    assert abs(g["sweep_item_k200"] - g["sweep_item_k40"]) < 0.002
    # error by item support: cold items: biases beat the mean; popular: k-NN clearly beats
    # the biases; rare (1-9 ratings): k-NN is worse than the biases
    assert g["bysupport_cold_bias"] < g["bysupport_cold_global"]
    assert g["bysupport_popular_knn"] < g["bysupport_popular_bias"] - 0.02
    assert g["bysupport_rare_knn"] > g["bysupport_rare_bias"]
    # --- similarities: one co-rater gives +-1; low-support pairs extreme; shrinkage fixes it
    assert g["support1_extreme_share"] == pytest.approx(100)
    assert g["few_extreme_share"] > 50 and g["many_extreme_share"] < 1
    assert g["few_abs_raw"] > 5 * g["many_abs_raw"]
    assert g["few_abs_shrunk"] < 0.01
    assert (g["many_abs_shrunk"] / g["many_abs_raw"]
            > 10 * g["few_abs_shrunk"] / g["few_abs_raw"])
    # --- worked neighbourhood: the two sequels first, most others share a genre, all well
    # supported; the user's neighbours are weak (<= 0.2) but mostly above their baselines
    assert {g["sw_top1_id"], g["sw_top2_id"]} == {172, 181}
    assert g["sw_shared_genre"] >= 5
    assert g["sw_min_support"] >= 50
    assert g["worked_rated_sequels"] == 0 and g["worked_correction"] > 0
    assert g["worked_max_sim"] < 0.2 and g["worked_pos_share"] > 0.5
    assert abs(g["worked_prediction"] - g["worked_true"]) < 0.5
    assert g["article_prediction"] < 1  # dividing by |N| instead of sum s: off the 1-5 scale
    # --- leakage: selecting k on the test fold is optimistic but only slightly (flat curve);
    # test ratings in the similarity give a large fake gain; u1.base holds all of u2.test
    assert g["sweep_item_k40"] - 0.001 < g["sweep_best_on_test"] <= g["sweep_item_k40"]
    assert g["leak_honest"] == pytest.approx(g["rmse_knn_item_u1"], abs=1e-6)
    assert g["leak_ratio"] > 10
    assert g["u2_test_in_u1_base"] == pytest.approx(100)
    # exercise 2: the best hard support threshold does not reach shrinkage
    assert g["ex2_shrunk_rmse"] < g["ex2_best_rmse"]


@claims("item_item_top_n")
def item_item_top_n(g):
    # EASE's learned weights: a large share is negative (a similarity never is)
    assert 0.2 < g["ease_negative_share"] < 0.8
    # the validation search chose the settings the test models use
    assert g["best_item_k"] in (10, 20) and g["best_lam"] in (100, 300)
    # --- top-N, leave-last-out test, full ranking
    ndcg = {k: g[f"topn_{k}_ndcg10"] for k in ("pop", "bias", "userknn", "itemknn", "ease")}
    assert ndcg["ease"] > ndcg["itemknn"] > ndcg["userknn"] > ndcg["pop"] > ndcg["bias"]
    # the same popularity model as the introduction, and the earlier measured EASE/ItemKNN
    assert ndcg["pop"] == pytest.approx(POP_NDCG10, abs=1e-5)
    assert ndcg["ease"] == pytest.approx(0.0723, abs=5e-4)
    assert ndcg["itemknn"] == pytest.approx(0.0686, abs=5e-4)
    assert g["ease_over_pop"] > 1.4
    # every neighbourhood beats popularity (paired interval excludes 0); bias ranks worst
    for key in ("user_pop", "item_pop", "ease_pop", "pop_bias"):
        assert g[f"paired_{key}_low"] > 0
    # "within noise": EASE - ItemKNN and ItemKNN - UserKNN intervals contain 0
    for key in ("ease_item", "item_user"):
        assert g[f"paired_{key}_low"] < 0 < g[f"paired_{key}_high"]
        assert g[f"paired_{key}_mean"] < 2 * g[f"paired_{key}_se"]
    assert g["paired_ease_user_low"] > 0
    assert g["val_user_best"] > g["val_item_best"]  # validation order differs from test
    # ranking by predicted stars recommends rarely watched movies: the highest novelty
    assert g["topn_bias_nov10"] > max(g[f"topn_{k}_nov10"]
                                      for k in ("pop", "userknn", "itemknn", "ease"))
    # comparison with the introduction and popularity bias
    assert g["topn_itemknn_hr10"] > g["topn_pop_hr10"] and g["topn_ease_hr10"] > g["topn_pop_hr10"]
    assert g["topn_ease_cov10"] > 5 * g["topn_pop_cov10"] and g["topn_ease_cov10"] < 0.5
    assert g["topn_pop_nov10"] < min(g[f"topn_{k}_nov10"] for k in ("userknn", "itemknn", "ease"))
    # leakage: the test interactions in the similarities raise the test NDCG (a fake gain)
    assert g["leak_topn_leaky"] > g["topn_itemknn_ndcg10"] and g["leak_topn_ratio"] > 1
    # exercises: the two lists differ and EASE has negative weights from Star Wars; choosing
    # on the test item can only look better
    assert g["ex1_lists_differ"] is True and g["ex1_ease_negative"] > 0
    assert g["ex2_optimism"] >= 0


@claims("exploration")
def exploration(g):
    # the simulator: item effects dominate; personalisation alone gains little (< 0.05)
    assert g["p_mean"] + 0.3 < g["p_best_item"] < g["p_best_user"] < g["p_best_item"] + 0.05
    # the features are informative but not the truth (not the click model's embeddings)
    assert 0.1 < g["corr_svd"] < 0.6 and 0.1 < g["corr_ials"] < 0.6
    assert 0.05 < g["corr_backbone"] < 0.6
    # regret: every contextual policy beats every non-contextual one on average (the linear
    # ones on every seed); epsilon-greedy beats greedy; Bernoulli TS (either prior) and UCB1 lose to
    # epsilon-greedy; random is worst; the oracle's regret is 0
    r = {k: g[f"regret_{k}"] for k in ("random", "greedy", "eps", "ucb1", "bts", "bts_eb",
                                       "linucb", "lints", "nlts_bb", "nlts", "oracle")}
    contextual = ("linucb", "lints", "nlts_bb", "nlts")
    non = ("greedy", "eps", "ucb1", "bts", "bts_eb")
    assert max(r[k] for k in contextual) < min(r[k] for k in non)
    assert g["linear_wins_every_seed"] is True and g["contextual_ratio"] > 1
    assert r["eps"] < r["greedy"] and r["eps"] < r["bts"] and r["eps"] < r["bts_eb"]
    assert r["eps"] < r["ucb1"] and g["bts_loses_every_seed"] is True
    assert r["random"] == max(r.values()) and r["oracle"] == 0
    assert g["best_noncontextual"] in ("eps-greedy", "greedy")
    # LinUCB's width: the grid reaches alpha = 0 (greedy ridge); the reading follows the table
    assert g["alpha_best_regret"] <= g["alpha0_regret"]
    flat = g["alpha0_regret"] <= 1.01 * g["alpha_best_regret"]  # greedy within 1% of the best
    assert g["alpha_reading"].startswith("the regret is flat" if flat else "the width pays")
    # the backbone against iALS: a paired interval over seeds, and the verdict it implies
    assert g["bb_diff_low"] < g["bb_diff"] < g["bb_diff_high"]
    assert g["bb_verdict"] == ("measurably higher than" if g["bb_diff_low"] > 0 else
                               "measurably lower than" if g["bb_diff_high"] < 0 else
                               "not measurably different from")
    assert g["bb_reading"].startswith("Here" if g["bb_diff_high"] < 0 else "Pretraining")
    # regret growth: random play is linear; epsilon-greedy and empirical-Bayes TS grow more
    # slowly than random play; each growth verdict is the one its slope's interval allows
    assert abs(g["slope_random"] - 1) < 0.05
    assert g["low_random"] < g["slope_random"] < g["high_random"]
    for k in ("eps", "bts_eb"):
        assert g[f"slope_{k}"] < g["slope_random"]
    for k in ("eps", "bts_eb", "linucb", "linucb_stat"):
        assert g[f"low_{k}"] < g[f"slope_{k}"] < g[f"high_{k}"]
        assert g[f"growth_{k}"] == ("sublinear" if g[f"high_{k}"] < 1 else "superlinear"
                                    if g[f"low_{k}"] > 1 else
                                    "not measurably different from linear")
    assert g["consumption_verdict"] == ("measurably" if g["high_linucb_stat"] < g["low_linucb"]
                                        else "not measurably")
    # LinUCB's CTR closer to the oracle's than to epsilon-greedy's; contextual policies show
    # few, popular movies; greedy the fewest
    assert g["ctr_oracle"] - g["ctr_linucb"] < g["ctr_linucb"] - g["ctr_eps"]
    assert g["coverage_linucb"] < g["coverage_eps"] and g["pop_linucb"] > 2 * g["pop_random"]
    assert g["coverage_greedy"] < g["coverage_linucb"] < 10
    assert g["coverage_ucb1"] == 100
    # off-policy evaluation in the simulator, where the truth is exact: every estimator's bias
    # is under half the policies' gap (one that ignored the weights would report
    # V(pi_b), far below); IPS, unbiased by construction, covers 0; IPS is several times as
    # spread as SNIPS and DR, with a small effective sample
    assert g["ope_sim_vb"] + 0.1 < g["ope_sim_ve"]
    gap = g["ope_sim_ve"] - g["ope_sim_vb"]
    for est in ("IPS", "SNIPS", "DM", "DR", "on_policy"):
        assert g[f"ope_sim_{est}_low"] < g[f"ope_sim_{est}_bias"] < g[f"ope_sim_{est}_high"]
        assert abs(g[f"ope_sim_{est}_bias"]) < gap / 2
    assert g["ope_sim_IPS_low"] < 0 < g["ope_sim_IPS_high"]
    assert g["ope_sim_max_bias_share"] < 0.5
    assert g["ope_sim_IPS_sd"] > 2 * max(g["ope_sim_SNIPS_sd"], g["ope_sim_DR_sd"])
    assert g["ope_sim_ess"] < g["ope_sim_n"] / 5
    # off-policy evaluation on the Open Bandit Dataset (point estimates do not depend on SMOKE)
    # against the OBP 0.4.0 quickstart notebook (IPW 0.084, DM 0.194, DR 0.106): IPS and DM
    # lower, DR about equal with the published value inside our interval
    assert (g["obp_ips"], g["obp_dm"], g["obp_dr"]) == (0.084, 0.194, 0.106)
    assert g["ope_harmonic_IPS_err"] < g["obp_ips"] and g["ope_harmonic_DM_err"] < g["obp_dm"]
    assert g["obp_dr_in_interval"] is True
    assert g["ope_harmonic_DR_low"] < g["obp_dr"] < g["ope_harmonic_DR_high"]
    assert abs(g["ope_dr_minus_obp"]) < 0.01
    for est in ("IPS", "SNIPS", "DR"):
        # the plain mean of the propensities: several times the harmonic mean's error
        assert g[f"ope_mean_{est}_err"] > 3 * g[f"ope_harmonic_{est}_err"]
        assert g[f"refit_mean_{est}"] > g[f"refit_harmonic_{est}"]
        assert g[f"ope_harmonic_{est}_low"] < g[f"ope_harmonic_{est}_err"] < g[
            f"ope_harmonic_{est}_high"]
    # DM is the random logs' click rate (the reward model is a constant), V_true above it
    assert g["best_l2"] == 10000 and g["ope_harmonic_DM_est"] == pytest.approx(g["v_random"],
                                                                             rel=0.02)
    assert g["v_random"] < g["v_true"] and g["n_clicks_random"] < 50


@claims("deep_recommenders")
def deep_recommenders(g):
    # from scratch: GMF by hand is the library's forward pass; a dense layer on the scalar
    # score changes nobody's top 10; the masked AutoRec loss is the sum over observed cells
    assert g["gmf_gap"] < 1e-6
    # the article's scalar head: random, it reorders (for the worse); trained, it learns an
    # increasing map and ranks exactly like the scores it is given
    assert g["head_ndcg_random"] < g["head_ndcg_ease"]
    assert g["head_ndcg_trained"] == pytest.approx(g["head_ndcg_ease"], abs=1e-6)
    assert g["same_top10_pct"] > 99
    assert g["autorec_gap"] < 1e-2
    assert g["n_test_users"] == 943 and 200 < g["q1_users"] < 300 and g["q1_max"] < 40
    # the earlier chapters' deterministic models reproduce their figures
    assert g["pop_ndcg10"] == pytest.approx(POP_NDCG10, abs=1e-5)
    assert g["ease_ndcg10"] == pytest.approx(0.0723, abs=5e-4)
    keys = ("pop", "ease", "bpr", "ials", "gmf", "mlp", "neumf", "tt", "ttid")
    for key in keys:
        # sampled negatives inflate every model's numbers several-fold
        assert g[f"{key}_s_ndcg10"] > 3 * g[f"{key}_ndcg10"]
        assert g[f"{key}_s_hr10"] > g[f"{key}_hr10"]
        assert g[f"{key}_low"] < g[f"{key}_ndcg10"] < g[f"{key}_high"]
        # every model learned something: its whole 95% interval lies above the expected
        # NDCG@10 of a random order (a random or untrained scorer's interval straddles it)
        assert g[f"{key}_low"] > g["random_ndcg10"]
    # at SMOKE size the neural models are trained for 3 epochs: none beats the best model of
    # the earlier chapters (NeuMF's paired interval against it lies below 0), and the best
    # model, the earlier chapters' best, clearly beats popularity
    assert g["diff_neumf_best_high"] < 0
    assert g["best_dot_ndcg10"] > g["pop_high"] and g["winner_ndcg10"] > g["pop_high"]
    # sampled and full ranking order some pairs of models differently
    assert g["n_flips"] > 0 and g["n_pairs"] == len(keys) * (len(keys) - 1) // 2
    # popularity does better on the least active users than on the most active ones
    assert g["pop_q1"] > g["pop_q4"] and g["ials_q1"] > g["ials_q4"]
    assert g["q1_diff_low"] <= g["q1_diff"] <= g["q1_diff_high"]
    # every network's settings come from a validation search whose winner is printed
    assert g["n_configs"] == 2 and g["n_autorec"] == 3  # AutoRec: 2 lambdas, then the larger k
    assert "n_factors=" in g["gmf_setting"] and "layers=" in g["mlp_setting"]
    assert "temperature=" in g["tt_setting"] and "temperature=" in g["ttid_setting"]
    # explicit: BiasedMF reproduces the previous chapter's u1 figure (ALS is deterministic);
    # AutoRec's full-settings claim (below BiasedMF on every fold) is asserted in the
    # chapter's own cell
    assert g["n_folds"] == 1  # SMOKE: u1 only
    assert 0.90 < g["mf_u1"] < g["bias_u1"] < g["mean_u1"]
    # AutoRec, 6 epochs at SMOKE size, beats the global mean (a constant 3 scores 1.27, the
    # global mean 1.15); the biases it beats only at full settings (asserted in the chapter)
    assert g["autorec_u1"] < g["mean_u1"]


@claims("pretraining")
def pretraining(g):
    # from scratch: the next-item loss by hand, causality and padding invariance
    assert g["loss_gap"] < 1e-5 and g["future_gap"] < 1e-5 and g["pad_gap"] < 1e-5
    assert g["max_len"] == 50 and 30 < g["truncated_pct"] < 80
    # the earlier chapters' deterministic models reproduce their figures
    assert g["pop_ndcg10"] == pytest.approx(POP_NDCG10, abs=1e-5)
    assert g["ease_ndcg10"] == pytest.approx(0.0723, abs=5e-4)
    for key in ("pop", "ease", "ials", "tt", "sasrec"):
        assert g[f"{key}_low"] < g[f"{key}_ndcg10"] < g[f"{key}_high"]
        assert 0 < g[f"{key}_cov10"] <= 1
        assert g[f"{key}_low"] > g["random_ndcg10"]  # the interval clears a random order
    assert g["sasrec_ndcg10"] > g["pop_ndcg10"]  # even a few epochs beat popularity
    assert g["sasrec_gain_low"] <= g["sasrec_gain"] <= g["sasrec_gain_high"]
    # the search: the winner is one of its configurations, its interval brackets the gap
    assert g["arch_dim"] in (32, 64) and g["arch_layers"] == 1 and g["n_search"] == 2
    assert g["finalist_gap_low"] <= g["finalist_gap"] <= g["finalist_gap_high"]
    assert g["finalist_verdict"] == ("measurably better than" if g["finalist_gap_low"] > 0
                                     else "not measurably different from")

    def verdict(lo, hi):
        return ("measurably better than" if lo > 0 else "measurably worse than" if hi < 0
                else "not measurably different from")

    # the verdicts follow their intervals; at SMOKE size (4 epochs from scratch) the
    # contrastive backbone measurably helps next-item prediction, so pretraining did learn
    for key in ("cloze", "cl"):
        lo, hi = g[f"pre_{key}_diff_low"], g[f"pre_{key}_diff_high"]
        assert g[f"pre_{key}_verdict"] == verdict(lo, hi)
    assert g["pre_cl_diff_low"] > 0
    # BERT4Rec: a real recommender (its test NDCG@10 clears a random order), verdicts from
    # intervals, and 100 sampled negatives inflate every NDCG@10 several-fold
    assert g["proto_b4r_full"] > 5 * g["random_ndcg10"]
    assert g["proto_sasrec_full"] == pytest.approx(g["sasrec_ndcg10"], abs=1e-6)
    for key in ("b4r_vs_sasrec", "causal_vs_b4r"):
        assert g[f"{key}_low"] <= g[key] <= g[f"{key}_high"]
        assert g[f"{key}_verdict"] == verdict(g[f"{key}_low"], g[f"{key}_high"])
    assert g["sampled_ratio"] > 2
    for key in ("sasrec", "b4r", "causal"):
        assert g[f"proto_{key}_sampled"] >= g["sampled_ratio"] * g[f"proto_{key}_full"] - 1e-9
    # the like classifier learns something from every labelled fraction (AUC 0.5: random),
    # and each gain's verdict follows its per-user interval
    for key in ("5", "10", "25", "100"):
        assert 0.52 < g[f"like_scratch_{key}"] < 1 and 0.52 < g[f"like_pre_{key}"] < 1
        lo, hi = g[f"like_gap_low_{key}"], g[f"like_gap_high_{key}"]
        assert lo <= g[f"like_gap_{key}"] <= hi
        assert g[f"like_verdict_{key}"] == verdict(lo, hi)
    # sizes: most parameters of a one-layer model sit in the item table
    assert g["table_share_min"] > 50


@claims("few_shot")
def few_shot(g):
    # the protocol: the same 183 meta-test users and query ratings for every K
    assert (g["n_train_users"], g["n_test_users"]) == (660, 183)
    assert g["query_median"] > 20 and g["n_query"] > 10_000
    # from scratch: the fold-in posterior and MAML's local step match the library
    assert g["fold_gap"] < 1e-8 and g["maml_gap"] < 1e-6
    # the predictive sd shrinks with K, towards (never below) the noise sd
    assert g["sd_k1"] > g["sd_k20"] > g["sd_noise"]
    assert g["err_k20"] > g["sd_k20"]  # "the posterior is overconfident"
    # the empirical-Bayes prior beats the ridge prior where data are scarcest
    assert g["d_foldinEB_foldinridge_1"] < 0
    assert g["rmse_eb_1"] < g["rmse_ridge_1"]
    assert g["rmse_ridge_20"] < g["rmse_ridge_1"]  # fold-in learns from more ratings
    # every verdict the prose prints follows from the paired intervals next to it ("beats":
    # the interval of the RMSE difference below 0 at each of K = 1, 3, 5; for EB against
    # ridge at every K), and each interval brackets its difference
    def beats(a, b, ks=(1, 3, 5)):
        return max(g[f"hi_{a}_{b}_{k}"] for k in ks) < 0

    for k in (1, 3, 5, 10, 20):
        assert g[f"lo_MAML_foldinridge_{k}"] <= g[f"d_MAML_foldinridge_{k}"] <= g[
            f"hi_MAML_foldinridge_{k}"]

    verdict = {True: "beats", False: "does not beat"}
    maml_ridge, maml_mean = beats("MAML", "foldinridge"), beats("MAML", "itemmean")
    assert g["maml_ridge_verdict"] == verdict[maml_ridge]
    assert g["maml_mean_verdict"] == verdict[maml_mean]
    assert g["eb_verdict"] == verdict[beats("foldinEB", "foldinridge", (1, 3, 5, 10, 20))]
    assert g["claim_verdict"] == ("holds" if maml_ridge and maml_mean else "holds only against "
                                  "the fold-in" if maml_ridge else "does not hold")
    bb_ridge, bb_mean = beats("foldinbackbone", "foldinridge"), beats("foldinbackbone", "itemmean")
    assert g["bb_target_verdict"] == ("holds" if bb_ridge and bb_mean else "holds only against "
                                      "the ridge fold-in" if bb_ridge else "does not hold")
    # the pretrained encoder's embeddings as item factors: a working fold-in, better than the
    # item means from one rating on (the full-run claims are asserted in the chapter)
    assert g["rmse_backbone_1"] < g["rmse_itemmean_1"]
    assert g["rmse_backbone_20"] < g["rmse_itemmean_20"]
    # ranking: within the query items all similar; popularity wins the full catalogue
    assert 0.8 < g["query_ndcg_low"] <= g["query_ndcg_high"] < 1
    assert g["pop_full_20"] > g["best_other_full_20"]
    # RecBole-MetaRec: chance is 0.5 and every rating model is above MeLU's published 0.5331
    assert abs(g["meta_chance_ndcg"] - 0.5) < 0.03 and abs(g["meta_chance_p5"] - 0.5) < 0.03
    assert g["melu_published"] == 0.5331 and g["meta_min_ours"] > g["melu_published"]
    assert g["meta_test_users"] == 58
    # cold items: genres and year beat no content zero-shot (RMSE), ratings help every prior
    assert g["n_cold_items"] == 93
    assert g["cold_rmse_genres_year"] < g["cold_rmse_none"]
    assert g["cold_rmse_genres_10"] < g["cold_rmse_genres_year"]
    assert g["cold_none_ndcg_1"] > g["cold_ndcg_none"]
    assert g["title_verdict"] == ("add to" if g["title_gain_low"] > 0
                                  else "do not measurably add to")
    assert g["title_gain_low"] <= g["title_gain"] <= g["title_gain_high"]
    # verdict words read from the paired intervals next to them
    def than(key):
        lo, hi = g[f"lo_{key}_1"], g[f"hi_{key}_1"]
        return ("lower than" if hi < 0 else "higher than" if lo > 0
                else "not measurably different from")

    assert g["eb_mean_1"] == than("foldinEB_itemmean")
    assert g["ridge_mean_1"] == than("foldinridge_itemmean")
    meta_wins = [g[f"hi_{m}_foldinEB_{k}"] < 0 for m in ("MAML", "MeLU") for k in (1, 3, 5, 10, 20)]
    assert (g["meta_eb_verdict"] == "at no K") == (not any(meta_wins))
    assert g["rmse_prior_verdict"] in ("keeps", "does not keep")
    if g["rmse_prior_verdict"] == "keeps":
        assert g["prior_rmse_10_high"] < 0
    assert g["prior_rmse_10_low"] <= g["prior_rmse_10"] <= g["prior_rmse_10_high"]
    # the settings were searched on validation users and are printed with the page
    assert g["n_meta"] == 2 and "inner_lr=" in g["maml_setting"] and "n_steps=" in g[
        "finetune_setting"]
    # pitfalls: leaking support ratings or splitting rows at random flatters the RMSE
    assert g["leak_support"] < g["leak_leaky"] < g["leak_honest"]
    assert g["random_split_rmse"] < g["leak_honest"]


@claims("active_selection")
def active_selection(g):
    assert g["budget"] == 6 and g["k5"] == 5
    assert g["n_new_users"] == 189  # 20% of 943 users held out
    assert 0 < g["n_ndcg_users"] <= g["n_new_users"]
    # every strategy starts from the same prior (same users, same evaluation items)
    for key in ("first", "pop", "ent", "lpe", "dens", "unc", "du", "emc", "kc"):
        assert g[f"el_ndcg0_{key}"] == g["el_ndcg0_random"]
        assert g[f"el_rmse0_{key}"] == g["el_rmse0_random"]
    # "answers help": every strategy's RMSE falls after the questions
    assert g["all_rmse_improve"]
    assert g["el_rmse5_random"] < g["el_rmse0_random"] - 0.02
    # the reported gain lies inside its bootstrap interval
    assert g["gain5_low"] <= g["gain5"] <= g["gain5_high"]
    # pool: every strategy improves on the seed set
    assert g["all_pool_improve"]
    assert g["pool_final_random"] < g["pool_rmse0"] - 0.03
    # sampled uncertainty's exponent comes from its validation search (SMOKE grid 0.5, 2: the
    # earlier typed value, 1, is not among them)
    assert g["gamma"] in (0.5, 2.0) and g["gamma_grid"] == "0.5, 2" and g["pool_beta"] in (0.5, 3)
    rmses = [float(r) for r in g["gamma_rmses"].split(", ")]  # by exponent: the chosen one
    # has the lowest, and the reading agrees with the table
    assert rmses[(0.5, 2.0).index(g["gamma"])] == min(rmses)
    assert g["gamma_reading"].startswith("the validation RMSE rises" if rmses[0] <= rmses[1]
                                         else "the validation RMSE falls")
    rmses = [float(r) for r in g["pool_beta_rmses"].split(", ")]  # density's weight, the same
    assert rmses[(0.5, 3.0).index(g["pool_beta"])] == min(rmses)
    assert g["pool_beta_trend"] == ("rises" if rmses[0] <= rmses[1] else "falls")
    # "uncertainty buys ratings of rare users and rare movies"
    assert g["bought_user_n_unc"] < g["bought_user_n_random"]
    assert g["bought_item_n_unc"] < g["bought_item_n_random"]
    # the leak: a large "gain" on the leaked half, a small one on the untouched half
    assert g["gain_leaked"] > 0.1
    assert abs(g["gain_untouched"]) < g["gain_leaked"] / 4
    # (wall-clock times are reported, not asserted)


@claims("matrix_factorization")
def matrix_factorization(g):
    # explicit, u1 (+ u2..u5 at full settings): MF beats the biases and KNNBaseline defaults
    assert g["rmse_als_u1"] < g["rmse_knn_u1"] < g["rmse_bias_u1"]
    assert g["rmse_als_mean"] < g["rmse_knn_mean"] < g["rmse_bias_mean"]
    assert g["als_beats_knn_folds"] == g["n_folds"]
    # (below the previous chapter's tuned KNNBaseline, a 5-fold mean: asserted in the cell)
    # "the gain over the biases is smaller than the biases' gain over the global mean"
    # (the previous chapter: mean 1.1537 -> biases ~0.946, a gain > 0.2)
    assert g["rmse_bias_mean"] - g["rmse_als_mean"] < 0.1
    # the searches: the glued winners are the tables' best rows
    assert g["mf_valid_best"] == min(g["mf_valid_nu0"], g["mf_valid_nu05"], g["mf_valid_nu1"])
    assert g["mf_sweeps"] >= 1 and g["bpr_epochs"] >= 1 and g["ials_sweeps"] >= 1
    assert g["bpr_valid_best"] == max(g[f"bpr_valid_{k}"] for k in ("adam", "adagrad", "sgd"))
    # sweeps: d matters little, lambda a lot; low lambda is worse than the biases alone
    assert g["sweep_d_range"] < 0.01
    assert g["sweep_reg_low"] > g["rmse_bias_u1"] > g["sweep_reg_chosen"]
    # curves: SGD still descending at its last epoch; the low-lambda run overfits
    assert g["curve_sgd_best_epoch"] == g["curve_sgd_epochs"]
    assert g["curve_adam_low_best_epoch"] < g["curve_adam_low_epochs"]
    assert g["curve_adam_low_last"] > g["curve_adam_low_best"]  # (by > 0.02 at full: cell)
    assert g["curve_adam_low_train"] < g["curve_adam_train"] - 0.05
    assert g["curve_adam_last"] - g["curve_adam_best"] < 0.005
    # implicit: iALS and EASE beat popularity and BPR; coverage far above popularity
    ndcg = {k: g[f"topn_{k}_ndcg10"] for k in ("pop", "itemknn", "ease", "bpr", "ials")}
    assert ndcg["ials"] > ndcg["pop"] and ndcg["bpr"] > ndcg["pop"]
    assert g["paired_ials_popularity_low"] > 0
    # iALS vs EASE within noise (the full-settings claims about BPR are asserted in the cell)
    assert g["paired_ials_ease_low"] < 0 < g["paired_ials_ease_high"]
    assert ndcg["ease"] == pytest.approx(0.0723, abs=5e-4)  # the previous chapter's EASE
    assert ndcg["itemknn"] == pytest.approx(0.0686, abs=5e-4)
    assert g["topn_ials_cov10"] > 5 * g["topn_pop_cov10"]
    # embeddings: genres separate, and the sequels are the nearest neighbours
    assert g["genre_gap_sd"] > 0.5
    assert g["sw_sequels_first"] is True and g["godfather_sequel_top2"] is True


@claims("own_data")
def own_data(g):
    # raw string ids in, raw ids back; the data set is MovieLens-100K under other names
    assert (g["own_n_users"], g["own_n_items"]) == (943, 1682) and g["own_scale_high"] == 5
    assert g["own_ndcg_ials"] > g["own_ndcg_pop"]
    assert isinstance(g["own_first_rec"], str) and " #" in g["own_first_rec"]
    # half stars are not clipped to 1; k-core shrinks the catalogue
    assert g["half_range_low"] == 0.5 and g["half_low"] < 1
    assert 0 < g["core_users"] < 943 and 0 < g["core_items"] < 1682
    # the synthetic log is long-tailed
    assert g["syn_top_user"] > 5 * g["syn_median_user"] and g["syn_top10_share"] > 20
    # iALS beats popularity at the largest size (BPR's full-size claim is asserted in the
    # chapter's cell: one epoch at SMOKE size is not enough); evaluation memory is far below
    # a dense score matrix
    assert g["ndcg_ials"] > g["ndcg_pop"]
    for key in ("ials", "bpr"):  # each verdict is the one its paired interval implies
        low, high = g[f"ci_low_{key}"], g[f"ci_high_{key}"]
        assert g[f"{key}_verdict"] == ("beats" if low > 0 else "loses to" if high < 0
                                       else "does not measurably beat")
    assert g["full_eval_gb"] < g["dense_scores_gb"]  # (growth over memory already held)
    assert g["full_eval_users"] > 0.9 * g["syn_users"]
    # (the slope and the 2 GB bound at full size are asserted in the chapter's cell)
    # two processes reproduce one: NDCG@10 within 0.002, factors within rounding
    # (BPR, NCF and SASRec: the largest gaps of the three)
    assert g["ddp_gap"] < 0.002
    assert g["ddp_param_gap_bpr"] < 1e-3 and g["ddp_param_gap_sasrec"] < 1e-3
    assert g["ddp_wall_speedup"] > 0
    for key in ("bpr", "ncf", "twotower", "sasrec"):
        assert g[f"ddp_speedup_{key}"] > 0
        assert g[f"ddp_ndcg1_{key}"] > 0  # trained and evaluated (not a constant scorer)
    # the two-tower gap is the item tower's output bias alone (no loss sees it)
    assert g["ddp_tt_gap_rest"] < 1e-3
    # BPR's optimiser, step size and epochs come from the validated search; the evaluation
    # batch size from the timed ones
    assert 1 <= g["bpr_epochs"] <= g["bpr_max_epochs"]
    assert g["bpr_optimizer"] in ("adam", "adagrad", "sgd")
    assert g["bpr_valid_best"] >= g["bpr_valid_adam"] > 0
    assert g["eval_batch"] in (32, 128, 512) and g["eval_batch_slowdown"] >= 1


def test_every_chapter_has_claims():
    assert set(chapters_in_toc()) == set(CLAIMS), "a chapter without asserted claims"


# Seconds a chapter's test takes at SMOKE size on the book's 2-core machine (papermill and nbval,
# two chapters at a time, empty model cache; measured 2026-12-02). Only the order matters:
# `make test` runs two tests at a time (pytest-xdist) and starts the longest first, so both
# workers end together; a chapter missing here starts first.
SMOKE_SECONDS = {"unified_loop": 59, "deep_recommenders": 57, "own_data": 53, "exploration": 52,
                 "collaborative_filtering": 50, "few_shot": 46, "pretraining": 35,
                 "active_selection": 28, "matrix_factorization": 23, "introduction": 15,
                 "item_item_top_n": 14}
# One test per chapter, so that xdist cannot send the execution and the re-run to different
# workers (each would execute the chapter: its `--dist loadgroup` does not group tests under
# pytest 9.2, pytest-xdist issue 1386).
STEMS = [pytest.param(stem, marks=pytest.mark.expected_seconds(SMOKE_SECONDS.get(stem, 1e9)))
         for stem in chapters_in_toc()]


@pytest.mark.parametrize("stem", STEMS)
def test_chapter(stem, subtests):
    notebook = execute(stem)
    with subtests.test("claims"):
        CLAIMS[stem](glued(notebook))
    with subtests.test("reproduces"):
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
             "--nbval-current-env", "--rootdir", str(BUILD), str(notebook)],
            cwd=ROOT, capture_output=True, text=True,
        )
        assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]


# Imported by the kernel at start-up (a ``sitecustomize`` module on its PYTHONPATH): NCF, the
# two-tower model and AutoRec compute their losses but never take an optimizer step.
NO_TRAINING = """
import recsys_ref.models.autorec, recsys_ref.models.ncf, recsys_ref.models.two_tower

def _no_step(optimizer, loss):
    return loss.item()

for _module in (recsys_ref.models.autorec, recsys_ref.models.ncf, recsys_ref.models.two_tower):
    _module.gradient_step = _no_step
"""


# after the deep chapter (whose cached fits of the models it does not patch it reads back)
@pytest.mark.expected_seconds(28)
def test_deep_chapter_claims_fail_when_its_networks_do_not_train(tmp_path, monkeypatch):
    """The claims are not vacuous: with the networks' training removed, they fail."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NO_TRAINING)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(site), os.environ.get("PYTHONPATH")) if p))
    # the data and the cached fits of every other model, but none of the patched networks: a
    # fit cached by a trained run (keyed by the library's source, which the patch does not
    # change) must not be read back
    data, home = tmp_path / "data", data_home()
    (data / "models").mkdir(parents=True)
    for entry in home.iterdir():
        if entry.name not in ("models", "backbones"):
            (data / entry.name).symlink_to(entry)
    for entry in (home / "models").glob("*") if (home / "models").is_dir() else ():
        if not entry.name.startswith(("NCF-", "TwoTower-", "AutoRec-", ".")) \
                and not entry.name.endswith(".lock"):
            (data / "models" / entry.name).symlink_to(entry)
    monkeypatch.setenv("RECSYS_REF_DATA", str(data))
    g = glued(execute("deep_recommenders", build=tmp_path))
    # the kernel did run untrained networks: AutoRec is no better than the global mean, and no
    # network's interval clears a random order (the per-model claim fails for each of them)
    assert g["autorec_u1"] > g["mean_u1"]
    assert all(g[f"{key}_low"] < g["random_ndcg10"] for key in ("gmf", "mlp", "neumf", "tt",
                                                                 "ttid"))
    with pytest.raises(AssertionError):
        CLAIMS["deep_recommenders"](g)


@claims("unified_loop")
def unified_loop(g):
    # every part is run: retraining, the gate and onboarding leave their marks
    assert g["clicks_greedy"] > g["clicks_static"]  # retraining on the logs pays
    assert g["gain_static_low"] > 0 and g["gain_pop_low"] > 0  # full loop beats both
    assert g["n_decisions"] >= g["n_seeds"] and 0 <= g["n_deployed"] <= g["n_decisions"]
    # new users: the full loop beats serving popularity (paired interval); what questions and
    # fold-in add over the loop without them is the verdict its interval implies
    assert g["new_gain_pop_low"] > 0 and g["new_full"] > g["new_pop"]
    low, high = g["new_gain_explore_low"], g["new_gain_explore_high"]
    assert g["new_explore_verdict"] == ("add measurably to it" if low > 0 else "take away from "
                                        "it" if high < 0 else "add nothing measurable to it")
    # the gate checked against the truth: DR within 10% of the candidate's true value,
    # and a truly worse popularity candidate rejected in every seed
    assert g["ope_candidate_DR_err"] < 10
    assert g["worse_true_gap"] < 0 and g["worse_rejected"] == g["n_seeds"]
    # greedy logs replayed without propensities overestimate popularity (selection bias)
    assert g["off_greedy_without_popularity"] > 0
    # retraining on its own logs homogenises the slates and raises the click rate; the
    # exploring loop ends with a lower Gini and a higher coverage (the estimates here; their
    # intervals are asserted by the chapter's full-settings cell: with the smoke size's 2
    # seeds a t-interval has 1 degree of freedom, and either one may reach 0)
    assert g["gini_after_greedy"] > max(g["gini_before_greedy"], g["gini_after_static"])
    assert g["jaccard_after_greedy"] > g["jaccard_before_greedy"]
    assert g["of_oracle_after_greedy"] > g["of_oracle_before_greedy"]
    assert g["degen_cum_gini"] > 0 and g["degen_cum_coverage"] < 0
    # the oracle bounds every system; the chosen settings come from the search (the SMOKE
    # search draws iALS's sweeps from 5 and 20: the typed default, 10, is not among them)
    assert 0 < g["oracle_static"] < g["oracle_full"] < 100
    assert g["model_n_epochs"] in (5, 20) and g["model_n_factors"] == 16
