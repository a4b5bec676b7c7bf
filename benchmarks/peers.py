"""The peer libraries on the rows ``bench.py`` uses, one thread, for side-by-side timings.

Not a dependency of the project: run it with a separate, throwaway environment that has
``implicit`` and ``scikit-surprise`` (plus numpy, scipy, pandas), on splits exported by
``bench.py --export DIR``::

    python benchmarks/bench.py --export /tmp/peerdata
    /tmp/peers-venv/bin/python benchmarks/peers.py /tmp/peerdata --out _build/bench

Cases: implicit's ALS (Cholesky and CG, d=64, 15 sweeps, the iALS rows of bench.py), its
BPR (one epoch at d=64; and epoch by epoch to its best validation NDCG@10, which gives the
target ``bench.py --bpr-target`` times our BPR against), and Surprise's SVD with the
factors and epochs of bench.py's BiasedMF SGD row (d=100, 20 epochs, u1).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.sparse as sp  # noqa: E402


def csr(df: pd.DataFrame, n_users: int, n_items: int) -> sp.csr_matrix:
    m = sp.csr_matrix((np.ones(len(df), dtype=np.float32), (df.user_idx, df.item_idx)),
                      shape=(n_users, n_items))
    m.data[:] = 1.0  # duplicates count once
    return m


def ndcg10(user_factors, item_factors, test: pd.DataFrame, seen: sp.csr_matrix) -> float:
    """Full-ranking NDCG@10 of one held-out item per user, seen items excluded; a tie with
    the test item ranks it last (the book's rule)."""
    users, items = test.user_idx.to_numpy(), test.item_idx.to_numpy()
    s = user_factors[users] @ item_factors.T  # (n_test, n_items)
    s[seen[users].nonzero()] = -np.inf
    target = s[np.arange(len(users)), items][:, None]
    rank = (s >= target).sum(1) - 1  # items ranked at or above the test item, minus itself
    return float(np.where(rank < 10, 1 / np.log2(rank + 2), 0.0).mean())


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", help="folder written by bench.py --export")
    parser.add_argument("--out", default="_build/bench")
    args = parser.parse_args(argv)
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    import implicit
    from implicit.cpu.als import AlternatingLeastSquares
    from implicit.cpu.bpr import BayesianPersonalizedRanking

    d = Path(args.data)
    n_users, n_items = map(int, (d / "sizes.txt").read_text().split())
    tr, va, te = (pd.read_csv(d / f"llo_{n}.csv") for n in ("train", "valid", "test"))
    X = csr(tr, n_users, n_items)
    seen_valid = X
    seen_test = csr(pd.concat([tr, va]), n_users, n_items)
    rows = []

    def add(case, fit_s, ndcg=np.nan, rmse=np.nan, note=""):
        rows.append({"case": case, "fit_s": fit_s, "NDCG@10": ndcg, "RMSE": rmse, "note": note})
        print(f"{case:44s} {fit_s:7.3f}s  NDCG@10 {ndcg:.4f}  RMSE {rmse:.4f}", file=sys.stderr)

    for cg, name in ((False, "cholesky"), (True, "cg")):
        m = AlternatingLeastSquares(factors=64, iterations=15, use_cg=cg, num_threads=1,
                                    calculate_training_loss=False, random_state=0)
        _, t = timed(lambda m=m: m.fit(X, show_progress=False))
        add(f"implicit ALS {name} d=64 15 sweeps", t,
            ndcg10(m.user_factors, m.item_factors, te, seen_test),
            note=f"implicit {implicit.__version__}, default reg/alpha")
    m = BayesianPersonalizedRanking(factors=64, iterations=1, num_threads=1, random_state=0)
    _, t = timed(lambda: m.fit(X, show_progress=False))
    add("implicit BPR d=64 1 epoch", t)
    # epoch by epoch (a refit continues from the current factors), validation each epoch
    m = BayesianPersonalizedRanking(factors=64, iterations=1, num_threads=1, random_state=0)
    best, best_t, elapsed = -1.0, 0.0, 0.0
    for _ in range(200):
        _, t = timed(lambda: m.fit(X, show_progress=False))
        value, t_eval = timed(lambda: ndcg10(m.user_factors, m.item_factors, va, seen_valid))
        elapsed += t + t_eval
        if value > best:
            best, best_t = value, elapsed
    add("implicit BPR d=64 to its best valid NDCG@10", best_t, best,
        note="validation every epoch (included), 200 epochs tried")

    from surprise import SVD, Dataset, Reader

    u1, u1_test = pd.read_csv(d / "u1_train.csv"), pd.read_csv(d / "u1_test.csv")
    data = Dataset.load_from_df(u1[["user_idx", "item_idx", "rating"]], Reader(rating_scale=(1, 5)))
    trainset = data.build_full_trainset()
    algo = SVD(n_factors=100, n_epochs=20, random_state=0)
    _, t = timed(lambda: algo.fit(trainset))
    pred = np.array([algo.predict(u, i).est for u, i in zip(u1_test.user_idx, u1_test.item_idx,
                                                           strict=True)])
    add("Surprise SVD d=100 20 epochs", t,
        rmse=float(np.sqrt(np.mean((pred - u1_test.rating.to_numpy()) ** 2))))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows)
    frame.to_csv(out / "peers.csv", index=False)
    print(frame.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
