"""Time chapters at two commits side by side, and check that they compute the same values.

On the book's shared 2-core machines the same code runs 20-50% faster or slower from one
hour to the next, so two timings taken at different times say little about a change. This
script executes each chapter with the old code and with the working tree's code *at the
same time*, one single-threaded kernel per core, each with an empty model cache of its own
(the data files are shared), and writes ``side_by_side.md`` and ``.csv``: seconds per chapter
for both, the change, and whether every value the chapter glues is the same (the names of
those that differ, timings among them, are listed), and ``differing.csv``: each differing
value on both sides.

Usage (``make compare OLD=<commit>`` runs it with make's environment, which matters: the
malloc settings and the MKL shim change timings)::

    python benchmarks/side_by_side.py OLD [--chapters a,b] [--smoke] [--out DIR]

Not part of ``make test``; at full settings it takes as long as ``make book`` without the
model cache's sharing between chapters (about 20-25 minutes).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "benchmarks")]
from bench import markdown_table  # noqa: E402
from chapter_runner import chapters_in_toc, glued, start  # noqa: E402
from execute_chapters import EXPECTED_SECONDS  # noqa: E402

from recsys_ref.data.cache import data_home  # noqa: E402

DATA = ("ml-100k-recbole", "obd")  # fetched files both sides read (never the model cache)


def run_env(tree: Path, home: Path) -> dict:
    """The kernel's environment: ``tree``'s recsys_ref first, an empty cache at ``home``."""
    home.mkdir(parents=True, exist_ok=True)
    for name in DATA:
        if (data_home() / name).exists() and not (home / name).exists():
            (home / name).symlink_to(data_home() / name)
    return os.environ | {"PYTHONPATH": str(tree), "RECSYS_REF_DATA": str(home),
                         "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def check_imports(tree: Path, env: dict) -> None:
    """recsys_ref must come from ``tree`` (PYTHONPATH before the editable install), in the
    kernels' working directory."""
    out = subprocess.run([sys.executable, "-c", "import recsys_ref; print(recsys_ref.__file__)"],
                         env=env, cwd=tree / "chapters", capture_output=True, text=True,
                         check=True).stdout
    if not Path(out.strip()).resolve().is_relative_to(tree.resolve()):
        raise RuntimeError(f"recsys_ref imported from {out.strip()}, not from {tree}")


def differing(old: dict, new: dict) -> list[str]:
    """Names glued by either side whose values are not equal (or glued by one side only)."""
    return sorted(k for k in old.keys() | new.keys()
                  if k not in old or k not in new or repr(old[k]) != repr(new[k]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("old", help="the commit (or branch, tag) to compare with")
    parser.add_argument("--chapters", help="comma-separated stems (default: every chapter)")
    parser.add_argument("--smoke", action="store_true", help="SMOKE settings (quick check)")
    parser.add_argument("--out", default=str(ROOT / "_build" / "side_by_side"))
    args = parser.parse_args(argv)
    stems = args.chapters.split(",") if args.chapters else chapters_in_toc()
    unknown = set(stems) - set(chapters_in_toc())
    if unknown:
        parser.error(f"not chapters of _toc.yml: {sorted(unknown)}")
    stems.sort(key=lambda s: -EXPECTED_SECONDS.get(s, 0))  # longest first
    out = Path(args.out)
    rows, changed = [], []  # a row per chapter; a row per glued value that differs
    with tempfile.TemporaryDirectory(prefix="side_by_side-") as tmp:
        old_tree = Path(tmp) / "old"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q",
                        str(old_tree), args.old], check=True)
        try:
            for stem in stems:
                sides = {"old": old_tree, "new": ROOT}
                envs = {s: run_env(t, Path(tmp) / f"{s}-{stem}-data") for s, t in sides.items()}
                for s, t in sides.items():
                    check_imports(t, envs[s])
                procs, began, seconds = {}, {}, {}
                for s, t in sides.items():  # both kernels at once, one per core
                    procs[s] = start(stem, out / s, t, envs[s], args.smoke)
                    began[s] = time.perf_counter()
                while len(seconds) < len(procs):  # each side's own end
                    for s, p in procs.items():
                        if s not in seconds and p.poll() is not None:
                            if p.returncode != 0:
                                for other in procs.values():
                                    other.kill()
                                raise RuntimeError(f"{stem} failed with the {s} code")
                            seconds[s] = time.perf_counter() - began[s]
                    time.sleep(0.2)
                values = {s: glued(out / s / f"{stem}.ipynb") for s in sides}
                diff = differing(values["old"], values["new"])
                rows.append({"chapter": stem, "old s": seconds["old"], "new s": seconds["new"],
                             "change %": 100 * (seconds["new"] / seconds["old"] - 1),
                             "glued values": len(values["new"]), "differing": len(diff),
                             "differing names": ", ".join(diff)})
                changed += [{"chapter": stem, "name": k, "old": values["old"].get(k),
                             "new": values["new"].get(k)} for k in diff]
                print(f"{stem}: old {seconds['old']:.0f} s, new {seconds['new']:.0f} s, "
                      f"{len(diff)} of {len(values['new'])} glued values differ", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(old_tree)], check=False)
    table = pd.DataFrame(rows)
    total = table[["old s", "new s", "glued values", "differing"]].sum()
    table.loc[len(table)] = dict(total, chapter="total", **{
        "change %": 100 * (total["new s"] / total["old s"] - 1), "differing names": ""})
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "side_by_side.csv", index=False)
    pd.DataFrame(changed, columns=["chapter", "name", "old", "new"]).to_csv(
        out / "differing.csv", index=False)  # every differing value, both sides
    shown = table.round(1)
    shown["differing names"] = [n if len(n) <= 100 else n[:n.rfind(",", 0, 100)] + ", ..."
                                for n in shown["differing names"]]  # all in differing.csv
    (out / "side_by_side.md").write_text(
        f"Side by side: {args.old} (old) against the working tree (new), "
        f"{'SMOKE' if args.smoke else 'full'} settings, both at once\n\n"
        + markdown_table(shown) + "\n")
    print(shown.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
