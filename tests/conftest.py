"""Shared fixtures: the real data (fetched once into the cache) and small synthetic frames."""

import numpy as np
import pandas as pd
import pytest


@pytest.fixture(scope="session")
def ml():
    from recsys_ref.data import load_movielens100k

    return load_movielens100k()


@pytest.fixture
def tiny_ratings():
    """40 ratings of 6 users on 8 items with distinct timestamps, seeded."""
    rng = np.random.default_rng(0)
    rows = []
    for u in range(6):
        items = rng.choice(8, size=rng.integers(4, 8), replace=False)
        for i in items:
            rows.append((u, int(i), float(rng.integers(1, 6)), int(rng.integers(0, 10_000))))
    return pd.DataFrame(rows, columns=["user_idx", "item_idx", "rating", "timestamp"])


def pytest_collection_modifyitems(items):
    """Tests marked ``expected_seconds`` first, longest first (the chapter tests: with xdist's
    two workers, the last to start is then a short one); the others keep their order."""

    def seconds(item):
        mark = item.get_closest_marker("expected_seconds")
        return -mark.args[0] if mark else 0

    items.sort(key=seconds)
