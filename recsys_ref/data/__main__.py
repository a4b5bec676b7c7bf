"""``python -m recsys_ref.data``: fetch every data set of the book into the cache."""

from recsys_ref.data.movielens import movielens_folder
from recsys_ref.data.open_bandit import open_bandit_folder

if __name__ == "__main__":
    folder, source = movielens_folder()
    print(f"MovieLens-100K ({source}): {folder}")
    print(f"Open Bandit Dataset sample: {open_bandit_folder()}")
