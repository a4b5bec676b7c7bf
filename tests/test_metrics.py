"""Tests for recsys_ref.metrics: by-hand cases, scikit-learn cross-checks, slow loops, errors."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, ndcg_score, roc_auc_score

from recsys_ref import metrics as M

# 4 users, k = 4; n_relevant is the size of each user's whole relevant set
HITS = torch.tensor(
    [
        [True, False, True, False],
        [False, False, False, False],
        [False, True, False, False],
        [True, True, True, True],
    ]
)
N_REL = torch.tensor([3, 2, 1, 10])


def close(a, b, tol=1e-6):
    return torch.allclose(
        torch.as_tensor(a, dtype=torch.float64), torch.tensor(b).double(), atol=tol
    )


# ----------------------------------------------------------------------------- hand-computed


def test_hit_rate_precision_recall_by_hand():
    assert close(M.hit_rate(HITS), [1.0, 0.0, 1.0, 1.0])
    # hits / k: 2/4, 0/4, 1/4, 4/4
    assert close(M.precision(HITS), [0.5, 0.0, 0.25, 1.0])
    # hits / n_relevant: 2/3, 0/2, 1/1, 4/10 (plain recall: user 3 cannot reach 1 with k = 4)
    assert close(M.recall(HITS, N_REL), [2 / 3, 0.0, 1.0, 0.4])


def test_ndcg_by_hand():
    # user 0: DCG = 1/log2(2) + 1/log2(4) = 1.5; IDCG (3 hits) = 1 + 1/log2(3) + 1/2 = 2.1309298
    # user 2: DCG = 1/log2(3) = 0.6309298; IDCG (1 hit) = 1
    # user 3: all 4 slots hit, IDCG uses min(10, 4) = 4 hits -> 1
    expected = [1.5 / (1.5 + 1 / math.log2(3)), 0.0, 1 / math.log2(3), 1.0]
    assert close(M.ndcg(HITS, N_REL), expected)
    assert close(expected[0], 0.7039180)


def test_mrr_by_hand():
    # first hit at rank 1, none, rank 2, rank 1
    assert close(M.mrr(HITS), [1.0, 0.0, 0.5, 1.0])


def test_average_precision_by_hand():
    # user 0: (P@1 + P@3) / min(3, 4) = (1 + 2/3) / 3 = 5/9
    # user 2: P@2 / min(1, 4) = 1/2; user 3: (1 + 1 + 1 + 1) / min(10, 4) = 1
    assert close(M.average_precision(HITS, N_REL), [5 / 9, 0.0, 0.5, 1.0])


def test_auc_by_hand():
    scores = torch.tensor([[0.9, 0.8, 0.8, 0.1, 0.5], [-math.inf, 0.2, 0.4, 0.3, 0.1]])
    relevant = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 0, 0, 1]], dtype=torch.bool)
    candidates = torch.tensor([[1, 1, 1, 1, 0], [0, 1, 1, 1, 1]], dtype=torch.bool)
    # user 0: pos {0.9, 0.8}, neg {0.8, 0.1} (0.5 is not a candidate)
    #   pairs: 0.9>0.8: 1, 0.9>0.1: 1, 0.8=0.8: 1/2, 0.8>0.1: 1 -> 3.5 / 4 = 0.875
    # user 1: pos {0.1} is below all of neg {0.2, 0.4, 0.3} -> 0 / 3 = 0
    assert close(M.auc(scores, relevant, candidates), [0.875, 0.0])


def test_catalogue_metrics_by_hand():
    # items 0, 1, 2 appear: 3 of 5
    assert M.coverage(torch.tensor([[0, 1], [1, 2]]), 5) == pytest.approx(0.6)
    pop = torch.tensor([0.5, 0.25, 0.0, 1.0])
    # user 0: (-log2 0.5 - log2 0.25) / 2 = (1 + 2) / 2; user 1: p=0 clamped to 1e-6
    expected = [1.5, (-math.log2(1e-6) + 0.0) / 2]
    assert close(M.novelty(torch.tensor([[0, 1], [2, 3]]), pop), expected)
    vecs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    # list [0, 1, 2]: pairs (0,1): 1 - 0, (0,2): 1 - 1/sqrt2, (1,2): 1 - 1/sqrt2; mean of 3
    # list [0, 3, 0]: (0,3): zero vector -> 1, (0,0): same item -> 0, (3,0): 1 -> 2/3
    expected = [(1 + 2 * (1 - 1 / math.sqrt(2))) / 3, 2 / 3]
    assert close(M.intra_list_diversity(torch.tensor([[0, 1, 2], [0, 3, 0]]), vecs), expected)


def test_rating_metrics_by_hand():
    pred, target = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 4.0, 0.0])
    # errors 0, -2, 3: RMSE = sqrt((0 + 4 + 9) / 3), MAE = (0 + 2 + 3) / 3
    assert M.rmse(pred, target) == pytest.approx(math.sqrt(13 / 3))
    assert M.mae(pred, target) == pytest.approx(5 / 3)
    assert isinstance(M.rmse(pred, target), float) and isinstance(M.mae(pred, target), float)


# ----------------------------------------------------------------------------- scikit-learn


def _random_ranking(seed, n_users=20, n_items=30, p_rel=0.2):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(n_users, n_items, generator=g, dtype=torch.float64)  # distinct scores
    relevant = torch.rand(n_users, n_items, generator=g) < p_rel
    relevant[:, 0] = True  # every user has >= 1 relevant item
    relevant[:, 1] = False  # ... and >= 1 non-relevant one
    return scores, relevant


@pytest.mark.parametrize("k", [1, 5, 30])
def test_ndcg_matches_sklearn(k):
    scores, relevant = _random_ranking(0)
    hits = relevant.gather(1, scores.topk(k, dim=1).indices)  # (n_users, k)
    ours = M.ndcg(hits, relevant.sum(1))
    for u in range(len(scores)):
        ref = ndcg_score(relevant[u : u + 1].numpy(), scores[u : u + 1].numpy(), k=k)
        assert ours[u].item() == pytest.approx(ref, abs=1e-6)


def test_average_precision_full_list_matches_sklearn():
    scores, relevant = _random_ranking(1)
    order = scores.argsort(dim=1, descending=True)  # k = n_items: the full ranking
    ours = M.average_precision(relevant.gather(1, order), relevant.sum(1))
    for u in range(len(scores)):
        ref = average_precision_score(relevant[u].numpy(), scores[u].numpy())
        assert ours[u].item() == pytest.approx(ref, abs=1e-6)


def test_auc_matches_sklearn_with_ties():
    g = torch.Generator().manual_seed(2)
    scores = torch.randint(0, 5, (25, 40), generator=g).float()  # few values -> many ties
    candidates = torch.rand(25, 40, generator=g) < 0.8
    relevant = candidates & (torch.rand(25, 40, generator=g) < 0.3)
    candidates[:, :2], relevant[:, 0], relevant[:, 1] = True, True, False
    scores[~candidates] = -math.inf  # seen items masked as a caller would
    ours = M.auc(scores, relevant, candidates)
    for u in range(25):
        c = candidates[u]
        ref = roc_auc_score(relevant[u][c].numpy(), scores[u][c].numpy())
        assert ours[u].item() == pytest.approx(ref, abs=1e-6)


# ----------------------------------------------------------------------------- slow references


def _slow_list_metrics(hits, n_rel):
    out = {"hit_rate": [], "precision": [], "recall": [], "ndcg": [], "mrr": [], "ap": []}
    for h, n in zip(hits.tolist(), n_rel.tolist(), strict=True):
        k = len(h)
        ranks = [j + 1 for j, x in enumerate(h) if x]
        out["hit_rate"].append(float(bool(ranks)))
        out["precision"].append(len(ranks) / k)
        out["recall"].append(len(ranks) / n)
        idcg = sum(1 / math.log2(r + 1) for r in range(1, min(n, k) + 1))
        out["ndcg"].append(sum(1 / math.log2(r + 1) for r in ranks) / idcg)
        out["mrr"].append(1 / ranks[0] if ranks else 0.0)
        out["ap"].append(sum((i + 1) / r for i, r in enumerate(ranks)) / min(n, k))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_list_metrics_match_slow_loop(seed):
    g = torch.Generator().manual_seed(seed)
    hits = torch.rand(50, 10, generator=g) < 0.3
    n_rel = hits.sum(1) + torch.randint(0, 15, (50,), generator=g)
    n_rel = n_rel.clamp(min=1)
    ref = _slow_list_metrics(hits, n_rel)
    assert close(M.hit_rate(hits), ref["hit_rate"])
    assert close(M.precision(hits), ref["precision"])
    assert close(M.recall(hits, n_rel), ref["recall"])
    assert close(M.ndcg(hits, n_rel), ref["ndcg"])
    assert close(M.mrr(hits), ref["mrr"])
    assert close(M.average_precision(hits, n_rel), ref["ap"])


def test_auc_matches_slow_pairwise_loop():
    g = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 8, (15, 25), generator=g).double()
    candidates = torch.rand(15, 25, generator=g) < 0.7
    relevant = candidates & (torch.rand(15, 25, generator=g) < 0.4)
    candidates[:, :2], relevant[:, 0], relevant[:, 1] = True, True, False
    ref = []
    for s, r, c in zip(scores.tolist(), relevant.tolist(), candidates.tolist(), strict=True):
        pos = [x for x, ri, ci in zip(s, r, c, strict=True) if ri]
        neg = [x for x, ri, ci in zip(s, r, c, strict=True) if ci and not ri]
        wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
        ref.append(wins / (len(pos) * len(neg)))
    assert close(M.auc(scores, relevant, candidates), ref)


def test_catalogue_metrics_match_slow_loop():
    g = torch.Generator().manual_seed(4)
    n_items, d = 40, 6
    topk = torch.randint(0, n_items, (30, 5), generator=g)
    pop = torch.rand(n_items, generator=g, dtype=torch.float64)
    pop[:5] = 0.0  # some items never seen
    vecs = (torch.rand(n_items, d, generator=g) < 0.3).double()  # genre-like, some all-zero
    assert M.coverage(topk, n_items) == pytest.approx(len(set(topk.flatten().tolist())) / n_items)
    nov = [np.mean([-math.log2(max(pop[i].item(), 1e-6)) for i in row]) for row in topk.tolist()]
    assert close(M.novelty(topk, pop), nov)
    ild = []
    for row in topk.tolist():
        dist = []
        for i, a in enumerate(row):
            for j, b in enumerate(row):
                if i == j:
                    continue
                va, vb = vecs[a].numpy(), vecs[b].numpy()
                na, nb = np.linalg.norm(va), np.linalg.norm(vb)
                cos = va @ vb / (na * nb) if na > 0 and nb > 0 else 0.0
                dist.append(1 - cos)
        ild.append(np.mean(dist))
    assert close(M.intra_list_diversity(topk, vecs), ild)


def test_auc_movielens_size_runs():
    g = torch.Generator().manual_seed(5)
    scores = torch.rand(943, 1682, generator=g)
    candidates = torch.rand(943, 1682, generator=g) < 0.95
    relevant = candidates & (torch.rand(943, 1682, generator=g) < 0.02)
    candidates[:, :2], relevant[:, 0], relevant[:, 1] = True, True, False
    out = M.auc(scores, relevant, candidates)
    assert out.shape == (943,) and 0.45 < out.mean().item() < 0.55  # random scores -> ~0.5


# ----------------------------------------------------------------------------- bad input

H = torch.tensor([[True, False], [False, False]])
S = torch.tensor([[0.3, 0.2, 0.1], [0.1, 0.2, 0.3]])
R = torch.tensor([[True, False, False], [False, True, False]])
C = torch.ones(2, 3, dtype=torch.bool)
TOPK = torch.tensor([[0, 1], [1, 2]])


@pytest.mark.parametrize(
    "call, err, match",
    [
        (lambda: M.hit_rate([[True]]), TypeError, "hits must be a torch.Tensor"),
        (lambda: M.precision(H.int()), TypeError, "hits must have a bool dtype"),
        (lambda: M.mrr(H[0]), ValueError, "hits must have shape"),
        (lambda: M.hit_rate(H[:, :0]), ValueError, "k"),
        (
            lambda: M.recall(H, torch.tensor([1.0, 1.0])),
            TypeError,
            "n_relevant must have an integer dtype",
        ),
        (lambda: M.ndcg(H, torch.tensor([1, 1, 1])), ValueError, "n_relevant must have shape"),
        (
            lambda: M.average_precision(H, torch.tensor([1, 0])),
            ValueError,
            "n_relevant must be >= 1",
        ),
        (lambda: M.recall(H, torch.tensor([[1, 1]])), ValueError, "n_relevant must have shape"),
        (
            lambda: M.ndcg(torch.ones(2, 2, dtype=torch.bool), torch.tensor([1, 2])),
            ValueError,
            "n_relevant must be >= the number of hits",
        ),
        (lambda: M.auc(S.long(), R, C), TypeError, "scores must have a floating-point dtype"),
        (lambda: M.auc(S, R[:, :2], C), ValueError, "relevant must have shape"),
        (lambda: M.auc(S, R, C.int()), TypeError, "candidates must have a bool dtype"),
        (lambda: M.auc(S, R, C & ~R), ValueError, "relevant must be a subset of candidates"),
        (lambda: M.auc(S, R & False, C), ValueError, "relevant: every user needs"),
        (lambda: M.auc(S, C, C), ValueError, "relevant: every user needs"),
        (lambda: M.auc(S.masked_fill(C, math.nan), R, C), ValueError, "scores must be finite"),
        (lambda: M.coverage(TOPK, 3.0), TypeError, "n_items must be an int"),
        (lambda: M.coverage(TOPK, 0), ValueError, "n_items must be >= 1"),
        (lambda: M.coverage(TOPK, 2), ValueError, r"topk_items must be item ids in 0\.\.1"),
        (
            lambda: M.coverage(TOPK.float(), 3),
            TypeError,
            r"topk_items must have a long \(int64\) dtype",
        ),
        (lambda: M.novelty(TOPK, torch.tensor([0.1, 0.2, 1.5])), ValueError, "item_popularity"),
        (lambda: M.novelty(TOPK, torch.tensor([1, 1, 1])), TypeError, "item_popularity"),
        (lambda: M.novelty(TOPK, torch.tensor([0.1, 0.2])), ValueError, "topk_items"),
        (lambda: M.intra_list_diversity(TOPK[:, :1], torch.eye(3)), ValueError, "k"),
        (lambda: M.intra_list_diversity(TOPK, torch.ones(3)), ValueError, "item_vectors"),
        (lambda: M.rmse([1.0], torch.ones(1)), TypeError, "pred must be a torch.Tensor"),
        (lambda: M.mae(torch.ones(1), 1.0), TypeError, "target must be a torch.Tensor"),
        (lambda: M.rmse(torch.ones(2), torch.ones(3)), ValueError, "same shape"),
        (lambda: M.mae(torch.ones(0), torch.ones(0)), ValueError, "must not be empty"),
        (lambda: M.rmse(torch.tensor([math.nan]), torch.ones(1)), ValueError, "NaN"),
    ],
)
def test_bad_input_raises(call, err, match):
    with pytest.raises(err, match=match):
        call()


def test_top_k_lists_are_rank_orders_cut_at_k():
    # coarse scores tie often, one row is constant (its ties cross the top-k's candidates)
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (6, 40), generator=g).float()
    scores[2] = 1.0
    scores[3, :5] = float("-inf")  # not candidates
    rel = torch.rand(6, 40, generator=g) < 0.2
    gain = torch.randint(0, 3, (6, 40), generator=g).float()
    for k in (1, 3, 10, 40):
        got = M.top_k_lists(scores, (rel, None, gain), k)
        assert len(got) == 3
        for top, r in zip(got, (rel, None, gain), strict=True):
            assert torch.equal(top, M.rank_order(scores, r)[:, :k])
