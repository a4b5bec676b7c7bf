"""Data-parallel training (recsys_ref.distributed, recsys_ref.distributed_models): 2 gloo
processes against 1 for BPR, NCF and SASRec, same seed and global batch; the one-process
loops against the models' own fit; the sparse negative sampler against the dense one."""

import subprocess
import sys

import pandas as pd
import pytest
import torch

from recsys_ref.distributed import distinct_pairs, fit_distributed
from recsys_ref.distributed_bpr import bpr_task, fit_bpr_distributed
from recsys_ref.distributed_models import fit_sasrec_distributed, ncf_task, sasrec_task
from recsys_ref.evaluation import evaluate_ranking
from recsys_ref.matrix import UserItems, interaction_mask
from recsys_ref.models.bpr import sample_negatives
from recsys_ref.models.ncf import NCF
from recsys_ref.models.sasrec import SASRec
from recsys_ref.scale import power_law_log


@pytest.fixture(scope="module")
def log():
    return power_law_log(300, 200, 6_000, n_clusters=10, seed=1)


def test_contains_matches_the_dense_mask(log):
    seen = UserItems(log, 300, 200)
    dense = interaction_mask(log, 300, 200)
    gen = torch.Generator().manual_seed(0)
    u = torch.randint(300, (5000,), generator=gen)
    i = torch.randint(200, (5000,), generator=gen)
    assert torch.equal(seen.contains(u, i), dense[u, i])
    block = i.reshape(1000, 5)  # broadcast: 5 items for each of 1,000 users
    assert torch.equal(seen.contains(u[:1000, None], block), dense[u[:1000, None], block])
    assert not UserItems(log.iloc[:0], 300, 200).contains(u, i).any()
    # the in-batch mask: every user of a batch against every item of it (repeats included)
    assert torch.equal(seen.block(u[:700], i[:500]), dense[u[:700, None], i[None, :500]])


def test_the_filter_changes_no_answer_and_clears_most_unseen_pairs():
    gen = torch.Generator().manual_seed(5)
    n_users, n_items = 2_000, 3_000
    users, items = torch.randint(n_users, (60_000,), generator=gen), torch.randint(
        n_items, (60_000,), generator=gen)
    seen = UserItems.from_pairs(users, items, n_users, n_items)
    u, i = torch.randint(n_users, (40_000,), generator=gen), torch.randint(
        n_items, (40_000,), generator=gen)
    u[:5_000], i[:5_000] = users[:5_000], items[:5_000]  # stored pairs among the queries
    before = seen.contains(u, i)  # binary search alone
    P, words = seen.filter()
    assert torch.equal(seen.contains(u, i), before)
    assert before[:5_000].all()
    keys = (users * n_items + items) % P  # no stored pair has its bit clear
    assert ((words[keys >> 6] >> (keys & 63)) & 1).all()
    h = (u * n_items + i)[~before] % P  # of the unstored pairs queried, about 1 in 16 pass
    assert ((words[h >> 6] >> (h & 63)) & 1).float().mean() < 0.1
    assert seen.filter()[1] is words  # built once


def test_sparse_negatives_draw_what_the_dense_sampler_draws(log):
    seen = UserItems(log, 300, 200)
    dense = interaction_mask(log, 300, 200)
    users = torch.tensor(log["user_idx"].to_numpy()[:2000])
    a = sample_negatives(users, 200, 4, seen, torch.Generator().manual_seed(3))
    b = sample_negatives(users, 200, 4, dense, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert not dense[users[:, None], a].any()
    full = UserItems(pd.DataFrame({"user_idx": [0], "item_idx": [0]}), 300, 1)  # user 0: all
    with pytest.raises(ValueError, match="no item"):
        sample_negatives(torch.tensor([0]), 1, 1, full, torch.Generator())


BPR_KW = dict(n_factors=8, n_epochs=3, batch_size=256, lr=0.01, seed=4)
NCF_KW = dict(model="neumf", n_factors=8, layers=(16, 8), n_epochs=2, batch_size=512,
              lr=0.01, seed=2, patience=None)
SASREC_KW = dict(max_len=20, dim=16, n_heads=2, dropout=0.0, n_epochs=2, batch_size=32,
                 lr=0.003, seed=1, patience=None)


@pytest.fixture(scope="module")
def fits(log):
    """BPR, NCF and SASRec on 1 process and on 2 (one spawn trains all three tasks)."""
    tasks = [bpr_task(log, 300, 200, **BPR_KW), ncf_task(log, 300, 200, **NCF_KW),
             sasrec_task(log, 300, 200, **SASREC_KW),
             ncf_task(log, 300, 200, **(NCF_KW | {"optimizer": "sgd", "lr": 0.1}))]
    even = log[log["user_idx"] % 2 == 0]  # process 1's shard is empty in every batch
    tasks += [bpr_task(even, 300, 200, **BPR_KW), sasrec_task(even, 300, 200, **SASREC_KW)]
    return fit_distributed(tasks, world_size=1), fit_distributed(tasks, world_size=2)


def _max_gap(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)


def test_two_processes_equal_one(log, fits):
    """Tolerance: gradients of item rows are summed in another order across processes
    (float32 rounding, ~1e-7 per step); after 3 epochs of Adam the factors agree to 1e-4.
    A run without gradient synchronisation or without the world_size scaling of the loss
    differs by far more (the factors move ~1e-2 per epoch)."""
    one, two = fits[0][0], fits[1][0]
    for name in ("P", "Q", "b_i"):
        a, b = getattr(one.factors_, name), getattr(two.factors_, name)
        assert (a - b).abs().max() < 1e-4, name
    assert one.history_["loss"].iloc[-1] < one.history_["loss"].iloc[0] - 0.05
    assert two.history_["loss"].tolist() == pytest.approx(one.history_["loss"].tolist(), rel=1e-5)
    scores = two.score(torch.arange(300))
    assert scores.shape == (300, 200) and torch.isfinite(scores).all()


def test_torchrun_entry_point_equals_one_process(log, tmp_path):
    users, items = distinct_pairs(log, 300, 200)
    torch.save({"users": users, "items": items, "n_users": 300, "n_items": 200},
               tmp_path / "pairs.pt")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "-m", "recsys_ref.distributed_bpr", str(tmp_path / "pairs.pt"), str(tmp_path / "out.pt"),
         "--n-factors", "8", "--n-epochs", "2", "--batch-size", "256", "--lr", "0.01",
         "--seed", "4"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = torch.load(tmp_path / "out.pt", weights_only=False)
    one = fit_bpr_distributed(log, 300, 200, world_size=1, n_factors=8, n_epochs=2,
                              batch_size=256, lr=0.01, seed=4)
    assert (one.factors_.Q - out["state"]["factors.Q"]).abs().max() < 1e-4
    assert len(out["history"]) == 2


def test_a_process_without_users_still_joins_every_step(fits):
    """All users even: process 1 computes nothing, yet its zero gradients keep the
    all-reduce in step (no hang) and process 0's gradients are not halved."""
    for j in (4, 5):
        one, two = fits[0][j], fits[1][j]
        module = (getattr(one, "net_", None) or one.factors_, getattr(two, "net_", None)
                  or two.factors_)
        assert _max_gap(*module) < 1e-4
        assert one.history_["loss"].iloc[-1] < one.history_["loss"].iloc[0]


def test_ncf_two_processes_equal_one_and_ncf_fit(log, fits):
    """The one-process loop is NCF.fit's (same seed: the same negatives, batches and steps);
    two processes agree with it to 1e-4 (float rounding of the all-reduced sums, amplified by
    Adam's normalised steps), while 2 epochs move the weights by ~1e-2."""
    one, two = fits[0][1], fits[1][1]
    ref = NCF(300, 200, **NCF_KW).fit(log)
    assert _max_gap(ref.net_, one.net_) < 1e-5
    assert _max_gap(one.net_, two.net_) < 1e-4
    moved = NCF(300, 200, **(NCF_KW | {"n_epochs": 1})).fit(log)  # another model: far apart
    assert _max_gap(one.net_, moved.net_) > 1e-3
    assert two.history_["loss"].tolist() == pytest.approx(one.history_["loss"].tolist(),
                                                          rel=1e-5)
    assert one.history_["loss"].iloc[-1] < one.history_["loss"].iloc[0]
    assert torch.isfinite(two.score(torch.arange(300))).all()
    # with SGD nothing divides by a running gradient scale: rounding stays rounding
    assert _max_gap(fits[0][3].net_, fits[1][3].net_) < 1e-6


def test_sasrec_two_processes_equal_one_and_sasrec_fit(log, fits):
    """Without dropout (whose masks each process draws for its own rows) two processes
    reproduce one to 1e-4; the one-process loop is SASRec.fit's."""
    one, two = fits[0][2], fits[1][2]
    ref = SASRec(300, 200, **SASREC_KW).fit(log)
    assert _max_gap(ref.net_, one.net_) < 1e-5
    assert _max_gap(one.net_, two.net_) < 1e-4
    assert two.history_["loss"].tolist() == pytest.approx(one.history_["loss"].tolist(),
                                                          rel=1e-5)
    assert torch.allclose(two.score(torch.arange(300)), ref.score(torch.arange(300)),
                          atol=1e-3)
    with pytest.raises(ValueError, match="timestamp"):
        fit_sasrec_distributed(log.drop(columns="timestamp"), 300, 200, world_size=1,
                               **SASREC_KW)


def test_validation_after_every_epoch_is_the_models_metric(log):
    train, valid = log.iloc[:5000], log.iloc[5000:]
    valid = valid[valid["user_idx"].isin(train["user_idx"])]
    m = fit_bpr_distributed(train, 300, 200, world_size=1, n_factors=8, n_epochs=3,
                            batch_size=256, lr=0.05, seed=4, valid=valid)
    assert len(m.history_) == 3 and m.history_["valid"].notna().all()
    final = evaluate_ranking(m, valid, train)["NDCG@10"]
    assert m.history_["valid"].iloc[-1] == pytest.approx(final)
    assert m.history_["valid"].iloc[-1] > m.history_["valid"].iloc[0]  # it learns
