"""A broken model never scores well, bad input gets a clear error, bad caches are caught.

Each test here reproduces one finding of the hardening review (a NaN model scored MRR 1.0, an
inf rating passed every check, a flipped byte in a cache loaded silently, ...) and checks the
fix: it failed before the fix and passes after it.
"""

import math
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch
from test_evaluation import FixedScores  # scores given as a tensor

from recsys_ref import metrics
from recsys_ref.active.strategies import SelectionState, Uncertainty
from recsys_ref.checks import check_frame, repeated_pairs
from recsys_ref.data import cache
from recsys_ref.evaluation import bootstrap_ci, evaluate_ranking, evaluate_ratings, evaluate_sampled
from recsys_ref.few_shot import FoldInMF, ItemMean, cold_user_split, query_ndcg
from recsys_ref.few_shot import Popularity as FewShotPopularity
from recsys_ref.models import (
    EASE,
    AutoRec,
    BiasBaseline,
    BiasedMF,
    GlobalMean,
    KNNRating,
    MFConfig,
    Popularity,
    SASRec,
)
from recsys_ref.models.base import NotFittedError, Recommender
from recsys_ref.off_policy import ips, snips
from recsys_ref.sequences import user_sequences
from recsys_ref.splits import leave_last_out, random_split
from recsys_ref.training import fit_epochs


def ratings(n_users=8, n_items=10, seed=0):
    """Every user rates 6 distinct items (1-5 stars), distinct timestamps."""
    rng = np.random.default_rng(seed)
    rows = [(u, int(i), float(rng.integers(1, 6)), 100 * u + j)
            for u in range(n_users) for j, i in enumerate(rng.permutation(n_items)[:6])]
    return pd.DataFrame(rows, columns=["user_idx", "item_idx", "rating", "timestamp"])


# ----------------------------------------------------------------------------- broken models


def test_nan_scores_are_an_error_in_every_evaluator():
    train, test = ratings().iloc[:30], ratings().iloc[30:]
    nan = FixedScores(torch.full((8, 10), float("nan")))
    with pytest.raises(ValueError, match="FixedScores.score has .* non-finite"):
        evaluate_ranking(nan, test, train)
    with pytest.raises(ValueError, match="FixedScores.score has .* non-finite"):
        evaluate_sampled(nan, test, train, n_negatives=2, ks=(1,))
    with pytest.raises(ValueError, match="FixedScores.predict has .* non-finite"):
        evaluate_ratings(nan, test)
    inf = FixedScores(torch.full((8, 10), float("inf")))
    with pytest.raises(ValueError, match="non-finite"):
        evaluate_ranking(inf, test, train)


def test_constant_scores_get_the_worst_rank_in_every_evaluator():
    # before: MRR 1.0 for a constant scorer (ties counted in the test item's favour)
    df = ratings()
    train, test = df.iloc[:40], df.iloc[40:]
    const = FixedScores(torch.zeros(8, 10))
    out, per_user = evaluate_ranking(const, test, train, ks=(1, 10), per_user=True)
    n_cand = 10 - train.groupby("user_idx").size().reindex(range(8), fill_value=0)
    n_rel = test.groupby("user_idx").size()
    worst = (1 / (n_cand[n_rel.index] - n_rel + 1)).to_numpy()  # first hit after all others
    np.testing.assert_allclose(per_user["MRR"].to_numpy(), worst, rtol=1e-6)
    assert out["HR@1"] == 0.0 and out["NDCG@1"] == 0.0
    s = evaluate_sampled(const, test, train, n_negatives=2, ks=(1,))
    assert s["HR@1"] == 0.0 and s["NDCG@1"] == 0.0
    q = query_ndcg(test, np.zeros(len(test)), k=1)  # the lowest true rating comes first
    worst_q = test.groupby("user_idx")["rating"].min() / test.groupby("user_idx")["rating"].max()
    np.testing.assert_allclose(q.numpy(), worst_q.to_numpy(), rtol=1e-6)


def test_the_tie_rule_on_a_hand_computed_case():
    # one user, items 0..5, nothing excluded; scores (5, 3, 3, 3, 1, 0), relevant {2}: the
    # relevant item ties with items 1 and 3, so it ranks after both: rank 4
    scores = torch.tensor([[5.0, 3.0, 3.0, 3.0, 1.0, 0.0]])
    model = FixedScores(scores)
    test = pd.DataFrame({"user_idx": [0], "item_idx": [2]})
    empty = test.iloc[:0]
    out = evaluate_ranking(model, test, empty, ks=(3, 4))
    assert out["MRR"] == pytest.approx(1 / 4)
    assert out["HR@3"] == 0.0 and out["HR@4"] == 1.0
    assert out["NDCG@4"] == pytest.approx(1 / math.log2(5))
    # the rank does not depend on the list length asked for (topk's tie order did)
    assert evaluate_ranking(model, test, empty, ks=(10 - 4,))["MRR"] == out["MRR"]
    order = metrics.rank_order(scores, scores == 3.0)  # all three tied items relevant
    assert order[0].tolist() == [0, 1, 2, 3, 4, 5]
    rel = torch.tensor([[False, True, False, False, False, False]])
    assert metrics.rank_order(scores, rel)[0].tolist() == [0, 2, 3, 1, 4, 5]
    assert metrics.rank_order(scores)[0].tolist() == [0, 1, 2, 3, 4, 5]  # lists: by index


def test_mrr_matches_a_loop_with_ties():
    # integer scores in 0..2 make ties everywhere; a loop counts every candidate scoring at
    # least the best relevant item's score (the pessimistic rank)
    rng = np.random.default_rng(1)
    scores = torch.as_tensor(rng.integers(0, 3, (20, 15)), dtype=torch.float32)
    model = FixedScores(scores)
    rows = [(u, int(i)) for u in range(20) for i in rng.permutation(15)[:6]]
    df = pd.DataFrame(rows, columns=["user_idx", "item_idx"])
    train, test = df.groupby("user_idx").head(4), df.groupby("user_idx").tail(2)
    _, per_user = evaluate_ranking(model, test, train, ks=(5,), per_user=True)
    for u, rel in test.groupby("user_idx")["item_idx"]:
        seen = set(train.loc[train.user_idx == u, "item_idx"])
        cand = [i for i in range(15) if i not in seen]
        s = scores[u]
        best = max(s[i] for i in rel)
        # relevant items tied with the best one also come after the non-relevant ties, but
        # before... only the first relevant item counts for MRR
        rank = 1 + sum(1 for i in cand if s[i] > best or (s[i] == best and i not in set(rel)))
        assert per_user.set_index("user_idx").loc[u, "MRR"] == pytest.approx(1 / rank)


def test_training_stops_on_a_non_finite_loss():
    with pytest.raises(FloatingPointError, match="epoch 2 .* nan"):
        fit_epochs(lambda e: 1.0 if e == 1 else float("nan"), 5, desc="toy")
    df = ratings(40, 30)
    with pytest.raises(FloatingPointError, match="BiasedMF .*epoch \\d+: .* nan"):
        BiasedMF(40, 30, solver="sgd", lr=1e6, n_epochs=10).fit(df)


# ----------------------------------------------------------------------------- bad numbers in


@pytest.mark.parametrize("cls, kw", [
    (GlobalMean, {}), (BiasBaseline, {}), (BiasedMF, {}), (BiasedMF, {"solver": "adam"}),
    (KNNRating, {}), (AutoRec, {"n_epochs": 1})])
def test_non_finite_and_out_of_scale_ratings_are_rejected(cls, kw):
    df = ratings()
    bad = df.assign(rating=df["rating"].where(df.index != 3, math.inf))
    with pytest.raises(ValueError, match="non-finite"):
        cls(8, 10, **kw).fit(bad)
    if cls is not GlobalMean:  # the models with a rating scale
        # the default takes the scale from the training ratings; an explicit one is checked
        huge = df.assign(rating=df["rating"].where(df.index != 3, 1e30))
        with pytest.raises(ValueError, match="rating scale"):
            cls(8, 10, rating_range=(1, 5), **kw).fit(huge)
        seven = df.assign(rating=df["rating"].where(df.index != 3, 7.0))
        assert cls(8, 10, **kw).fit(seven).rating_range_ == (df["rating"].min(), 7.0)


def test_fractional_and_negative_ids_are_rejected_where_ids_enter():
    df = ratings()
    with pytest.raises(TypeError, match="integer indices"):
        BiasedMF(8, 10).fit(df.assign(item_idx=df["item_idx"] + 0.7))
    with pytest.raises(ValueError, match="0..9"):
        BiasedMF(8, 10).fit(df.assign(item_idx=df["item_idx"].replace(0, -1)))
    fold = FoldInMF(8, 10, MFConfig(n_epochs=2)).fit(df)
    support = df[df.user_idx == 0]
    with pytest.raises(TypeError, match="integer"):
        fold.score_new_users(support, np.array([0.7]))
    with pytest.raises(ValueError, match="users must lie"):
        fold.score_new_users(support.iloc[:0], [-1])
    dist = torch.full((3, 4), 0.25)
    with pytest.raises(TypeError, match="actions must hold integer"):
        ips([1.0, 0.0, 1.0], [0.5, 1.7, 2.0], [0.25] * 3, dist)
    with pytest.raises(ValueError, match="actions must lie"):
        ips([1.0, 0.0, 1.0], [0, 1, -1], [0.25] * 3, dist)


def test_few_shot_baselines_check_their_training_ids():
    df = ratings()
    wide = df.assign(item_idx=df["item_idx"] + 5)  # ids up to 14 for a 10-item model
    with pytest.raises(ValueError, match="train.item_idx must lie in 0..9"):
        FewShotPopularity(8, 10).fit(wide)
    with pytest.raises(ValueError, match="train.item_idx must lie in 0..9"):
        ItemMean(8, 10).fit(wide)


def test_string_timestamps_are_rejected():
    df = ratings().astype({"timestamp": str})
    with pytest.raises(TypeError, match="timestamp must be numeric"):
        leave_last_out(df)
    with pytest.raises(TypeError, match="timestamp must be numeric"):
        user_sequences(df, 8, 5)
    with pytest.raises(TypeError, match="timestamp must be numeric"):
        SASRec(8, 10, n_epochs=1).fit(df)
    ok = ratings().assign(timestamp=pd.to_datetime(ratings()["timestamp"], unit="s"))
    assert len(leave_last_out(ok)[2]) == 8  # datetimes are fine


def test_using_a_model_before_fit_says_so():
    for model in (BiasedMF(8, 10), EASE(8, 10), Popularity(8, 10), FewShotPopularity(8, 10)):
        with pytest.raises(NotFittedError, match="call fit\\(\\) first"):
            model.score(torch.arange(2)) if isinstance(model, Recommender) else \
                model.score_new_users(ratings().iloc[:0], [0])
    with pytest.raises(NotFittedError):
        BiasedMF(8, 10).predict([0], [1])


def test_argument_errors_name_the_argument():
    df = ratings()
    train, test = df.iloc[:40], df.iloc[40:]
    model = FixedScores(torch.randn(8, 10))
    for bad in (0, -5):
        with pytest.raises(ValueError, match="n_negatives"):
            evaluate_sampled(model, test, train, n_negatives=bad)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_ranking(model, test, train, batch_size=0)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_ci([1.0, 2.0], n_resamples=0)
    with pytest.raises(ValueError, match="seed"):
        random_split(df, seed=-1)
    with pytest.raises(ValueError, match="both sides"):
        random_split(df, test_size=0.001)
    state = SelectionState(candidates=torch.ones(2, 4, dtype=torch.bool),
                           variance=torch.full((2, 4), float("nan")))
    with pytest.raises(ValueError, match="NaN"):
        Uncertainty().select(state, 2)
    with pytest.raises(ValueError, match="query ratings"):
        cold_user_split(df, k=100)
    with pytest.raises(ValueError, match="meta-train users|query ratings"):
        cold_user_split(df, k=1, test_frac=0.001)
    one_each = df.groupby("user_idx").head(1)
    with pytest.raises(ValueError, match="2 or more interactions"):
        SASRec(8, 10, n_epochs=1).fit(one_each)
    with pytest.raises(ValueError, match="sum to 0"):
        snips([1.0, 0.0], [0, 0], [0.5, 0.5], torch.tensor([[0.0, 1.0], [0.0, 1.0]]))


@pytest.mark.parametrize("make", [
    lambda: GlobalMean(8, 10), lambda: BiasBaseline(8, 10), lambda: BiasedMF(8, 10),
    lambda: KNNRating(8, 10), lambda: Popularity(8, 10), lambda: EASE(8, 10),
    lambda: FewShotPopularity(8, 10), lambda: ItemMean(8, 10)])
def test_duplicate_pairs_are_rejected_by_every_model(make):
    df = ratings()
    with pytest.raises(ValueError, match="1 duplicate"):
        make().fit(pd.concat([df, df.iloc[[0]]]))


def test_check_frame_rejects_inf_and_float_ids():
    df = ratings()
    with pytest.raises(ValueError, match="non-finite"):
        check_frame(df.assign(rating=np.inf), "df", ["rating"])
    with pytest.raises(TypeError, match="user_idx must hold integer"):
        check_frame(df.assign(user_idx=1.0), "df", ["user_idx"])


# ----------------------------------------------------------------------------- caches


def test_cache_files_are_world_readable_and_stale_parts_are_removed(tmp_path):
    stale = tmp_path / ".old.bin.abc.part"
    stale.write_bytes(b"left by a kill")
    fresh = tmp_path / ".new.bin.def.part"
    fresh.write_bytes(b"being written right now")
    old = stale.stat().st_mtime - 2 * cache.STALE_PART_SECONDS
    import os

    os.utime(stale, (old, old))
    cache.write_atomic(tmp_path / "data.bin", b"x")
    assert (tmp_path / "data.bin").stat().st_mode & 0o777 == 0o644
    assert not stale.exists() and fresh.exists()


def test_permission_errors_become_data_unavailable_with_a_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("RECSYS_REF_DATA", str(tmp_path))
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"x")

    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(cache, "sha256", denied)
    with pytest.raises(cache.DataUnavailableError, match="RECSYS_REF_DATA"):
        cache.cached("src", {"f": "0" * 64})


def test_checked_files_catch_a_flipped_byte(tmp_path):
    path = tmp_path / "weights.bin"
    cache.write_checked(path, bytes(range(256)))
    assert cache.read_checked(path) == bytes(range(256))
    data = bytearray(path.read_bytes())
    data[100] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupted"):
        cache.read_checked(path)


def test_text_embeddings_cache_is_verified(tmp_path, monkeypatch):
    from recsys_ref import text_embeddings as te

    monkeypatch.setenv("RECSYS_REF_DATA", str(tmp_path))

    class Encoder:
        calls = 0

        def encode(self, texts, **_):
            Encoder.calls += 1
            return np.ones((len(texts), 3), dtype=np.float32)

    first = te.embed_texts(["a", "b"], Encoder(), model_name="toy")
    path = te.cache_path(["a", "b"], "toy")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # the last float's last byte
    path.write_bytes(bytes(data))
    again = te.embed_texts(["a", "b"], Encoder(), model_name="toy")
    assert Encoder.calls == 2 and torch.equal(first, again)  # recomputed, not read


def test_empty_data_home_means_the_default(monkeypatch):
    monkeypatch.setenv("RECSYS_REF_DATA", "")
    assert cache.data_home() == cache.Path.home() / ".cache" / "recsys_ref"


def test_a_silent_package_index_times_out_with_a_message(tmp_path, monkeypatch):
    seen = {}

    def hanging(cmd, **kwargs):
        seen.update(kwargs)
        raise subprocess.TimeoutExpired(cmd, kwargs["timeout"])

    monkeypatch.setattr(cache.subprocess, "run", hanging)
    with pytest.raises(OSError, match="did not finish within"):
        cache.pip_download_wheel("recbole==1.2.1", tmp_path)
    assert seen["timeout"] <= 300 and seen["preexec_fn"] is not None
    lines = []
    monkeypatch.setenv("RECSYS_REF_DATA", str(tmp_path))
    with pytest.raises(cache.DataUnavailableError, match="did not finish"):
        cache.obtain("toy", [("toy", "a silent index", {"f": None},
                              cache.wheel_source("recbole==1.2.1", {"f": "f"}))],
                     "hint", report=lines.append)
    assert lines == ["toy: trying a silent index ..."]


def test_a_garbled_movielens_copy_is_fetched_again(tmp_path, monkeypatch):
    from recsys_ref.data import movielens

    calls = []
    folder = tmp_path / "ml"
    folder.mkdir()

    def fake_folder(report=None):
        calls.append(1)
        (folder / "u.item").write_text("garbled" if len(calls) == 1 else "fine")
        return folder, "grouplens"

    def fake_parse(f):
        if (f / "u.item").read_text() == "garbled":
            raise KeyError(2)
        return "r", "u", "i"

    monkeypatch.setattr(movielens, "movielens_folder", fake_folder)
    monkeypatch.setattr(movielens, "_parse_grouplens", fake_parse)
    monkeypatch.setattr(movielens, "_index", lambda *a: a)
    assert movielens.load_movielens100k() == ("r", "u", "i", "grouplens")
    assert len(calls) == 2  # the garbled copy was deleted and fetched again


def test_repeated_pairs_counts_what_pandas_counts():
    rng = np.random.default_rng(0)
    for dtype in (np.int64, np.int32, np.uint32):
        users = rng.integers(0, 30, 2_000).astype(dtype)  # many repeats, some triple
        items = rng.integers(0, 40, 2_000).astype(dtype)
        expected = int(pd.DataFrame({"u": users, "i": items}).duplicated().sum())
        assert expected > 0
        assert repeated_pairs(users, items, 40) == expected
    # different pairs, whose keys would collide with n_items - 1 (39) as the multiplier
    assert repeated_pairs(np.array([0, 1]), np.array([39, 0]), 40) == 0
    assert repeated_pairs(np.array([3]), np.array([5]), 40) == 0
