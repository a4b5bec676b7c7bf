import numpy as np
import pandas as pd
import pytest

from recsys_ref.splits import leave_last_out, random_split, temporal_split, u_fold


def test_u_folds_are_the_canonical_ones(ml):
    tests = []
    for k in range(1, 6):
        train, test = u_fold(ml.ratings, k)
        assert (len(train), len(test)) == (80_000, 20_000)
        assert not set(train.index) & set(test.index)
        tests.append(set(test.index))
    assert set().union(*tests) == set(ml.ratings.index)  # the five test sets partition the data
    # the first lines of GroupLens' u1.test (sorted by user, then item)
    _, u1 = u_fold(ml.ratings, 1)
    head = u1.sort_values(["user_id", "item_id"])[["user_id", "item_id", "rating", "timestamp"]]
    assert head.head(3).astype(int).values.tolist() == [
        [1, 6, 5, 887431973], [1, 10, 3, 875693118], [1, 12, 5, 878542960]]


def test_leave_last_out_on_movielens(ml):
    train, valid, test = leave_last_out(ml.ratings)
    assert len(test) == len(valid) == 943 and len(train) == 100_000 - 2 * 943
    last_train = train.groupby("user_idx")["timestamp"].max()
    v = valid.set_index("user_idx")["timestamp"]
    t = test.set_index("user_idx")["timestamp"]
    assert (last_train <= v.loc[last_train.index]).all() and (v <= t.loc[v.index]).all()


def test_leave_last_out_ties_keep_file_order():
    df = pd.DataFrame({"user_idx": [0, 0, 0, 0, 1, 2, 2], "item_idx": [5, 3, 4, 1, 2, 0, 1],
                       "timestamp": [10, 30, 30, 20, 5, 7, 8], "rating": 1.0})
    train, valid, test = leave_last_out(df)
    # user 0: items 3 and 4 tie at t=30; file order puts 4 last -> test, 3 -> valid
    assert test.set_index("user_idx")["item_idx"].to_dict() == {0: 4, 2: 1}
    assert valid["item_idx"].tolist() == [3]  # user 2 has 2 ratings: no validation item
    assert sorted(train["item_idx"].tolist()) == [0, 1, 2, 5]  # user 1's single rating stays


def test_temporal_and_random_splits(tiny_ratings):
    train, test = temporal_split(tiny_ratings, test_size=0.25)
    assert train["timestamp"].max() <= test["timestamp"].min()
    assert len(test) == round(0.25 * len(tiny_ratings))
    a = random_split(tiny_ratings, 0.2, seed=1)
    b = random_split(tiny_ratings, 0.2, seed=1)
    c = random_split(tiny_ratings, 0.2, seed=2)
    assert a[1].index.equals(b[1].index) and not a[1].index.equals(c[1].index)
    assert len(a[0]) + len(a[1]) == len(tiny_ratings)


@pytest.mark.parametrize("call, match", [
    (lambda r: u_fold(r, 0), "fold"),
    (lambda r: u_fold(r, 6), "fold"),
    (lambda r: u_fold(r.iloc[:10], 1), "100,000"),
    (lambda r: u_fold(r.drop(columns="rating"), 1), "missing column"),
    (lambda r: leave_last_out(r.drop(columns="timestamp")), "timestamp"),
    (lambda r: random_split(r, 1.5), "test_size"),
    (lambda r: temporal_split(r, 0), "test_size"),
    (lambda r: leave_last_out(r.iloc[:0]), "empty"),
])
def test_bad_input(ml, call, match):
    with pytest.raises(ValueError, match=match):
        call(ml.ratings)


def test_nan_and_type_errors(tiny_ratings):
    bad = tiny_ratings.copy()
    bad.loc[0, "timestamp"] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        leave_last_out(bad)
    with pytest.raises(TypeError, match="DataFrame"):
        leave_last_out(bad.to_numpy())
