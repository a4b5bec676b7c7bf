"""Time each model's fit and full-ranking evaluation on MovieLens-100K, one thread.

Run with ``make bench`` (never part of ``make test``). Writes ``_build/bench/bench.md`` and
``bench.csv``: one row per case with the fit time, the evaluation time (full ranking of every
test user, training items removed) and the quality the fit reached, so the next change to a
model can be compared with this one. Timings swing on shared machines: compare tables made
side by side, and look at the quality columns to see that a speed-up changed no result.

Cases (``python benchmarks/bench.py --only bpr,ials`` runs a subset):

* ranking models on the leave-last-out split: fit on the training part, NDCG@10 / HR@10 on
  the last item of each user, training and validation items excluded;
* rating models on the u1 fold: fit on u1.base, RMSE on u1.test, and the full-ranking time
  of the u1.test users;
* ItemKNN and EASE fits on a synthetic catalogue of 9,700 items (610 users, 100k pairs,
  Zipf popularity: the size of MovieLens' "latest-small" release);
* full-ranking evaluation of 20,000 users over 50,000 items (a synthetic log, fixed random
  factors): the size of the appendix "Your own data, at scale".
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from recsys_ref.data import load_movielens100k  # noqa: E402
from recsys_ref.evaluation import evaluate_ranking, evaluate_ratings  # noqa: E402
from recsys_ref.models import (  # noqa: E402
    BPR,
    EASE,
    IALS,
    NCF,
    AutoRec,
    BiasedMF,
    ItemKNN,
    KNNRating,
    SASRec,
    UserKNN,
)
from recsys_ref.splits import leave_last_out, u_fold  # noqa: E402


def synthetic_catalogue(n_users: int = 610, n_items: int = 9_700, n_pairs: int = 100_000,
                        seed: int = 0) -> pd.DataFrame:
    """Distinct (user, item) pairs with Zipf item popularity and lognormal user activity."""
    rng = np.random.default_rng(seed)
    item_p = 1.0 / np.arange(1, n_items + 1) ** 0.9
    item_p /= item_p.sum()
    user_p = rng.lognormal(0.0, 1.0, n_users)
    user_p /= user_p.sum()
    u = rng.choice(n_users, size=2 * n_pairs, p=user_p)
    i = rng.choice(n_items, size=2 * n_pairs, p=item_p)
    df = pd.DataFrame({"user_idx": u, "item_idx": i}).drop_duplicates().head(n_pairs)
    df["rating"] = 1.0
    df["timestamp"] = np.arange(len(df))
    return df.reset_index(drop=True)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def first_reaching(history, target: float) -> float:
    """Wall time (evaluation included) at the first epoch whose validation metric >= target."""
    for row in history:
        if row["valid"] == row["valid"] and row["valid"] >= target:
            return row["elapsed"]
    return float("nan")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="_build/bench", help="output folder")
    parser.add_argument("--only", default="", help="comma-separated case prefixes to run")
    parser.add_argument("--label", default="", help="a name for this run (e.g. a commit)")
    parser.add_argument("--bpr-target", type=float, default=0.0529,
                        help="validation NDCG@10 BPR is timed to reach (default: the best that "
                             "implicit 0.7.3's BPR reached in benchmarks/peers.py)")
    parser.add_argument("--export", default="",
                        help="only write the splits as CSV into this folder (for peers.py)")
    args = parser.parse_args(argv)
    only = [s for s in args.only.split(",") if s]

    ml = load_movielens100k()
    nu, ni = ml.n_users, ml.n_items
    train, valid, test = leave_last_out(ml.ratings)
    seen = [train, valid]
    u1_train, u1_test = u_fold(ml.ratings, 1)
    if args.export:  # the same rows for the peer libraries' benchmark, benchmarks/peers.py
        folder = Path(args.export)
        folder.mkdir(parents=True, exist_ok=True)
        for name, df in (("llo_train", train), ("llo_valid", valid), ("llo_test", test),
                         ("u1_train", u1_train), ("u1_test", u1_test)):
            df[["user_idx", "item_idx", "rating"]].to_csv(folder / f"{name}.csv", index=False)
        (folder / "sizes.txt").write_text(f"{nu} {ni}\n")
        return 0
    rows = []

    def ranking(name, make, fit=lambda m: m.fit(train), note=""):
        if only and not any(name.lower().startswith(p) for p in only):
            return
        model, fit_s = timed(lambda: fit(make()))
        res, eval_s = timed(lambda: evaluate_ranking(model, test, seen, ks=(10,)))
        rows.append({"case": name, "fit_s": fit_s, "eval_s": eval_s,
                     "NDCG@10": res["NDCG@10"], "HR@10": res["HR@10"], "RMSE": np.nan,
                     "note": note})
        print(f"{name:38s} fit {fit_s:7.3f}s  eval {eval_s:6.3f}s  NDCG@10 {res['NDCG@10']:.4f}",
              file=sys.stderr)
        return model

    def rating(name, make, note=""):
        if only and not any(name.lower().startswith(p) for p in only):
            return
        model, fit_s = timed(lambda: make().fit(u1_train))
        rmse = evaluate_ratings(model, u1_test)["RMSE"]
        res, eval_s = timed(lambda: evaluate_ranking(model, u1_test, u1_train, ks=(10,)))
        rows.append({"case": name, "fit_s": fit_s, "eval_s": eval_s, "NDCG@10": res["NDCG@10"],
                     "HR@10": res["HR@10"], "RMSE": rmse, "note": note})
        print(f"{name:38s} fit {fit_s:7.3f}s  eval {eval_s:6.3f}s  RMSE {rmse:.4f}",
              file=sys.stderr)

    def fit_only(name, make, data, note=""):
        if only and not any(name.lower().startswith(p) for p in only):
            return
        _, fit_s = timed(lambda: make().fit(data))
        rows.append({"case": name, "fit_s": fit_s, "eval_s": np.nan, "NDCG@10": np.nan,
                     "HR@10": np.nan, "RMSE": np.nan, "note": note})
        print(f"{name:38s} fit {fit_s:7.3f}s", file=sys.stderr)

    # explicit ratings, u1 fold
    rating("BiasedMF sgd d=100 20 epochs", lambda: BiasedMF(nu, ni, solver="sgd", n_epochs=20),
           "Surprise SVD's setting")
    rating("BiasedMF als d=100 6 sweeps", lambda: BiasedMF(nu, ni, solver="als"))
    rating("KNNRating item pearson_baseline", lambda: KNNRating(nu, ni), "KNNBaseline")
    rating("KNNRating user pearson_baseline", lambda: KNNRating(nu, ni, user_based=True))
    rating("AutoRec 300 epochs", lambda: AutoRec(nu, ni), "default config, no early stop")

    # implicit, leave-last-out
    ranking("BPR d=64 1 epoch", lambda: BPR(nu, ni, n_epochs=1))
    ranking("BPR d=64 75 epochs", lambda: BPR(nu, ni))
    if not only or any("bpr".startswith(p) or p.startswith("bpr") for p in only):
        t = args.bpr_target
        # the defaults (Adam, lr 0.001) and the setting the matrix-factorization chapter's
        # search chooses (read from its cached search; run here if it is not cached)
        from recsys_ref.mf_tuning import implicit_settings

        searched = implicit_settings(ml.ratings, nu, ni, models=("BPR",))["BPR"]
        for label, cfg in (("defaults", {"n_epochs": 75}),
                           ("chapter's search", searched | {"n_epochs": 2 * searched["n_epochs"]})):
            model, fit_s = timed(lambda cfg=cfg: BPR(nu, ni, **(cfg | {
                "eval_every": 1, "patience": None})).fit(train, valid))
            reach = first_reaching(model.history_, t)
            rows.append({"case": f"BPR ({label}) to valid NDCG@10 >= {t}", "fit_s": reach,
                         "eval_s": np.nan, "NDCG@10": np.nan, "HR@10": np.nan, "RMSE": np.nan,
                         "note": f"validation every epoch (included); best "
                                 f"{max(r['valid'] for r in model.history_):.4f}"})
            print(f"BPR ({label}) to {t}: {reach:.3f}s", file=sys.stderr)
    ranking("iALS cholesky d=64 15 sweeps", lambda: IALS(nu, ni, n_factors=64))
    ranking("iALS cg d=64 15 sweeps", lambda: IALS(nu, ni, n_factors=64, solver="cg"))
    ranking("iALS cholesky d=128 (default)", lambda: IALS(nu, ni))
    ranking("ItemKNN k=10", lambda: ItemKNN(nu, ni))
    ranking("UserKNN k=20", lambda: UserKNN(nu, ni))
    ranking("EASE lam=100", lambda: EASE(nu, ni))
    ranking("NCF neumf 1 epoch", lambda: NCF(nu, ni, n_epochs=1))
    ranking("SASRec 1 epoch", lambda: SASRec(nu, ni, n_epochs=1))

    # a 9,700-item catalogue
    big = synthetic_catalogue()
    fit_only("ItemKNN 9,700 items", lambda: ItemKNN(610, 9_700), big, "synthetic, 100k pairs")
    fit_only("EASE 9,700 items", lambda: EASE(610, 9_700), big, "synthetic, 100k pairs")

    # full-ranking evaluation at the own-data appendix's catalogue size: 20,000 users of a
    # synthetic log over 50,000 items, a fixed d=32 scorer, 128 users per batch
    if not only or any("evaluation".startswith(p) for p in only):
        from recsys_ref.scale import power_law_log

        log = power_law_log(20_000, 50_000, 1_000_000, seed=0)
        s_train, s_valid, s_test = leave_last_out(log)
        scorer = _RandomDot(20_000, 50_000, d=32)
        res, eval_s = timed(lambda: evaluate_ranking(scorer, s_test, [s_train, s_valid],
                                                     batch_size=128))
        rows.append({"case": "evaluation 20,000 users x 50,000 items", "fit_s": np.nan,
                     "eval_s": eval_s, "NDCG@10": res["NDCG@10"], "HR@10": res["HR@10"],
                     "RMSE": np.nan, "note": "synthetic log, random d=32 factors, batch 128"})
        print(f"evaluation at 50,000 items: {eval_s:.3f}s", file=sys.stderr)

    frame = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "bench" + (f"-{args.label}" if args.label else "")
    frame.to_csv(out / f"{stem}.csv", index=False)
    head = (f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
            f"threads {torch.get_num_threads()}, {time.strftime('%Y-%m-%d %H:%M')}"
            + (f", {args.label}" if args.label else ""))
    fmt = frame.copy()
    for c in ("fit_s", "eval_s"):
        fmt[c] = fmt[c].map(lambda x: "" if x != x else f"{x:.3f}")
    for c in ("NDCG@10", "HR@10", "RMSE"):
        fmt[c] = fmt[c].map(lambda x: "" if x != x else f"{x:.4f}")
    table = markdown_table(fmt)
    (out / f"{stem}.md").write_text(f"{head}\n\n{table}\n")
    print(f"{head}\n\n{table}")
    return 0


class _RandomDot:
    """Scores from fixed random factors: what evaluation costs, whatever the model."""

    def __init__(self, n_users: int, n_items: int, d: int):
        g = torch.Generator().manual_seed(0)
        self.n_users, self.n_items = n_users, n_items
        self.P = torch.randn(n_users, d, generator=g)  # (n_users, d)
        self.Q = torch.randn(n_items, d, generator=g)  # (n_items, d)

    def score(self, users: torch.Tensor) -> torch.Tensor:
        return self.P[users] @ self.Q.T  # (b, n_items)


def markdown_table(frame: pd.DataFrame) -> str:
    """A Markdown table of ``frame`` (pandas' own with ``tabulate`` installed, else plain)."""
    try:
        import tabulate  # noqa: F401
    except ImportError:
        pass
    else:
        return frame.to_markdown(index=False)
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
