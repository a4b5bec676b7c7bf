"""benchmarks/side_by_side.py: one chapter at HEAD and in the working tree, at once."""

import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def test_side_by_side_runs_both_commits_and_compares_their_values(tmp_path):
    out = tmp_path / "sbs"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "side_by_side.py"), "HEAD",
                    "--smoke", "--chapters", "introduction", "--out", str(out)], check=True,
                   cwd=ROOT)
    table = pd.read_csv(out / "side_by_side.csv")
    row = table.set_index("chapter").loc["introduction"]
    assert row["old s"] > 0 and row["new s"] > 0
    assert row["glued values"] > 10 and row["differing"] == 0  # a deterministic chapter
    assert pd.read_csv(out / "differing.csv").empty  # nothing to list, header written
    assert (out / "old" / "introduction.ipynb").exists()
    assert (out / "new" / "introduction.ipynb").exists()
    worktrees = subprocess.run(["git", "-C", str(ROOT), "worktree", "list"],
                               capture_output=True, text=True, check=True).stdout
    assert "side_by_side-" not in worktrees  # the old commit's checkout is removed
