"""``python -m recsys_ref.data``: fetch every data set of the book into the cache."""

import sys

from recsys_ref.data.movielens import movielens_folder
from recsys_ref.data.open_bandit import open_bandit_folder


def _report(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


if __name__ == "__main__":
    folder, source = movielens_folder(_report)
    print(f"MovieLens-100K ({source}): {folder}")
    print(f"Open Bandit Dataset sample: {open_bandit_folder(_report)}")
