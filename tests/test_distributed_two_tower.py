"""Data-parallel two-tower (recsys_ref.distributed_two_tower): the one-process loop equals
TwoTower.fit, and 2 gloo processes equal 1 for the same seed and global batch, for the three
losses (the in-batch softmax with id dropout, whose masks are drawn for the global batch)."""

import pytest
import torch

from recsys_ref.distributed import fit_distributed
from recsys_ref.distributed_two_tower import fit_two_tower_distributed, two_tower_task
from recsys_ref.models.two_tower import TwoTower
from recsys_ref.scale import power_law_log

N_USERS, N_ITEMS = 300, 200
KW = dict(dim=8, dim_id=8, n_epochs=2, batch_size=256, lr=0.01, seed=3, patience=None)
CASES = {"inbatch": dict(loss="inbatch", id_dropout=0.2), "bpr": dict(loss="bpr"),
         "softmax": dict(loss="softmax", hidden=(8,))}


@pytest.fixture(scope="module")
def log():
    return power_law_log(N_USERS, N_ITEMS, 6_000, n_clusters=10, seed=1)


@pytest.fixture(scope="module")
def fits(log):
    """Every loss on 1 process and on 2 (one spawn trains the three tasks)."""
    tasks = [two_tower_task(log, N_USERS, N_ITEMS, **KW, **c) for c in CASES.values()]
    return (dict(zip(CASES, fit_distributed(tasks, world_size=1), strict=True)),
            dict(zip(CASES, fit_distributed(tasks, world_size=2), strict=True)))


def _max_gap(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max(float((sa[k] - sb[k]).abs().max()) for k in sa)


@pytest.mark.parametrize("loss", list(CASES))
def test_one_process_is_two_tower_fit(log, fits, loss):
    """Same seed: the same batches, negatives, dropout masks and steps as TwoTower.fit; a
    model trained one epoch less is far away (the comparison can fail)."""
    one = fits[0][loss]
    ref = TwoTower(N_USERS, N_ITEMS, **KW, **CASES[loss]).fit(log)
    assert _max_gap(ref.net_, one.net_) < 1e-5
    shorter = TwoTower(N_USERS, N_ITEMS, **(KW | {"n_epochs": 1}), **CASES[loss]).fit(log)
    assert _max_gap(one.net_, shorter.net_) > 1e-3
    assert torch.allclose(one.score(torch.arange(N_USERS)), ref.score(torch.arange(N_USERS)),
                          atol=1e-4)


@pytest.mark.parametrize("loss", list(CASES))
def test_two_processes_equal_one(fits, loss):
    """Tolerance: the all-reduced sums add the rows in another order (float32 rounding, ~1e-7
    here); training moves the weights by far more (previous test). One parameter is exempt:
    the item tower's output bias shifts every item's embedding alike, which no loss can see
    (each row's scores move by one constant), so its exact gradient is zero and Adam turns
    the rounding noise of that zero into full-size steps; it changes no ranking, which the
    centred scores check."""
    one, two = fits[0][loss], fits[1][loss]
    blind = f"item.layers.{len(one.net_['item'].layers) - 1}.bias"
    sa, sb = one.net_.state_dict(), two.net_.state_dict()
    gaps = {k: float((sa[k] - sb[k]).abs().max()) for k in sa if k != blind}
    assert max(gaps.values()) < 1e-5, gaps
    s1, s2 = (m.score(torch.arange(N_USERS)) for m in (one, two))
    centred = (s1 - s1.mean(1, keepdim=True)) - (s2 - s2.mean(1, keepdim=True))
    assert centred.abs().max() < 1e-4
    assert two.history_["loss"].tolist() == pytest.approx(one.history_["loss"].tolist(),
                                                          rel=1e-5)
    assert one.history_["loss"].iloc[-1] < one.history_["loss"].iloc[0]


def test_bad_settings_are_refused(log):
    with pytest.raises(ValueError, match="loss"):
        fit_two_tower_distributed(log, N_USERS, N_ITEMS, world_size=1, loss="hinge")
    with pytest.raises(ValueError, match="user_idx"):
        fit_two_tower_distributed(log.assign(user_idx=log["user_idx"] + N_USERS), N_USERS,
                                  N_ITEMS, world_size=1)
