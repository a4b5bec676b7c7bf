"""Data-parallel BPR (recsys_ref.distributed): 2 gloo processes against 1, same seed and
global batch; the sparse negative sampler against the dense one."""

import subprocess
import sys

import pytest
import torch

from recsys_ref.distributed import _pairs, fit_bpr_distributed, sample_negatives_sparse
from recsys_ref.matrix import UserItems, interaction_mask
from recsys_ref.models.bpr import sample_negatives
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


def test_sparse_negatives_draw_what_the_dense_sampler_draws(log):
    seen = UserItems(log, 300, 200)
    dense = interaction_mask(log, 300, 200)
    users = torch.tensor(log["user_idx"].to_numpy()[:2000])
    a = sample_negatives_sparse(users, 200, 4, seen, torch.Generator().manual_seed(3))
    b = sample_negatives(users, 200, 4, dense, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert not dense[users[:, None], a].any()


def test_two_processes_equal_one(log):
    """Tolerance: gradients of item rows are summed in another order across processes
    (float32 rounding, ~1e-7 per step); after 3 epochs of Adam the factors agree to 1e-4.
    A run without gradient synchronisation or without the world_size scaling of the loss
    differs by far more (the factors move ~1e-2 per epoch)."""
    kw = dict(n_factors=8, n_epochs=3, batch_size=256, lr=0.01, seed=4)
    one = fit_bpr_distributed(log, 300, 200, world_size=1, **kw)
    two = fit_bpr_distributed(log, 300, 200, world_size=2, **kw)
    for name in ("P", "Q", "b_i"):
        a, b = getattr(one.factors_, name), getattr(two.factors_, name)
        assert (a - b).abs().max() < 1e-4, name
    assert one.history_["loss"].iloc[-1] < one.history_["loss"].iloc[0] - 0.05
    assert two.history_["loss"].tolist() == pytest.approx(one.history_["loss"].tolist(), rel=1e-5)
    scores = two.score(torch.arange(300))
    assert scores.shape == (300, 200) and torch.isfinite(scores).all()


def test_torchrun_entry_point_equals_one_process(log, tmp_path):
    users, items = _pairs(log, 300, 200)
    torch.save({"users": users, "items": items, "n_users": 300, "n_items": 200},
               tmp_path / "pairs.pt")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "-m", "recsys_ref.distributed", str(tmp_path / "pairs.pt"), str(tmp_path / "out.pt"),
         "--n-factors", "8", "--n-epochs", "2", "--batch-size", "256", "--lr", "0.01",
         "--seed", "4"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = torch.load(tmp_path / "out.pt", weights_only=False)
    one = fit_bpr_distributed(log, 300, 200, world_size=1, n_factors=8, n_epochs=2,
                              batch_size=256, lr=0.01, seed=4)
    assert (one.factors_.Q - out["state"]["Q"]).abs().max() < 1e-4
    assert len(out["history"]) == 2
