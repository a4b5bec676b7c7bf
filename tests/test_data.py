import hashlib

import numpy as np
import pandas as pd
import pytest

from recsys_ref.data import GENRES, DataUnavailableError, cache, load_open_bandit, movielens


def test_movielens_tables(ml):
    r = ml.ratings
    assert (len(r), ml.n_users, ml.n_items) == (100_000, 943, 1682)
    assert list(r.columns[:4]) == ["user_idx", "item_idx", "rating", "timestamp"]
    # u.data order: the file's first line is "196 242 3 881250949"
    assert tuple(r.iloc[0][["user_id", "item_id", "rating", "timestamp"]]) == (196, 242, 3,
                                                                              881250949)
    # zero-based contiguous indices, mapped from sorted raw ids
    assert set(r["user_idx"]) == set(range(943)) and set(r["item_idx"]) == set(range(1682))
    assert (r["user_idx"] == r["user_id"] - 1).all() and (r["item_idx"] == r["item_id"] - 1).all()
    assert set(r["rating"]) == {1, 2, 3, 4, 5}
    assert r.groupby("user_idx").size().min() == 20
    assert list(ml.users.columns) == ["user_idx", "user_id", "age", "gender", "occupation",
                                      "zip_code"]
    assert list(ml.items.columns) == ["item_idx", "item_id", "title", "year", *GENRES]
    assert len(GENRES) == 19 and ml.items[GENRES].any(axis=1).all()


def test_movielens_quirks_are_handled(ml):
    items = ml.items.set_index("item_id")
    assert items.loc[267, "title"] == "unknown" and pd.isna(items.loc[267, "year"])
    assert items.loc[1412, "year"] == 1995  # year "V" in the file; taken from the title
    assert items.loc[1, "title"] == "Toy Story" and items.loc[1, "year"] == 1995
    assert items["year"].isna().sum() == 1


def _write_grouplens(ml, folder):
    """Write the loaded tables back in GroupLens' own format (u.data, u.item, u.user)."""
    r = ml.ratings[["user_id", "item_id", "rating", "timestamp"]].astype(int)
    r.to_csv(folder / "u.data", sep="\t", header=False, index=False)
    it = ml.items
    title = [t if pd.isna(y) else f"{t} ({y})" for t, y in zip(it["title"], it["year"],
                                                            strict=True)]
    date = ["" if pd.isna(y) else f"01-Jan-{y}" for y in it["year"]]
    lines = [
        "|".join([str(i), t, d, "", "http://example.invalid/"] + [str(int(f)) for f in flags])
        for i, t, d, flags in zip(it["item_id"], title, date, it[GENRES].to_numpy(), strict=True)
    ]
    (folder / "u.item").write_text("\n".join(lines) + "\n", encoding="latin-1")
    ml.users[["user_id", "age", "gender", "occupation", "zip_code"]].to_csv(
        folder / "u.user", sep="|", header=False, index=False)


def test_grouplens_parser_agrees_with_recbole_copy(ml, tmp_path):
    _write_grouplens(ml, tmp_path)
    assert cache.sha256(tmp_path / "u.data") == movielens.U_DATA_SHA256
    gl = movielens._index(*movielens._parse_grouplens(tmp_path), "grouplens")
    pd.testing.assert_frame_equal(gl.ratings, ml.ratings)
    pd.testing.assert_frame_equal(gl.users, ml.users)
    pd.testing.assert_frame_equal(gl.items, ml.items)


def test_cache_refetches_a_corrupted_file_once(tmp_path, monkeypatch):
    monkeypatch.setenv("RECSYS_REF_DATA", str(tmp_path))
    good = {"a.txt": b"hello", "b.txt": b"world"}
    files = {k: hashlib.sha256(v).hexdigest() for k, v in good.items()}
    calls = []

    def fetch(tmp):
        calls.append(tmp)
        return dict(good)

    folder, source = cache.obtain("toy", [("toy", "toy source", files, fetch)], "hint")
    assert source == "toy" and (folder / "a.txt").read_bytes() == b"hello"
    assert len(calls) == 1
    cache.obtain("toy", [("toy", "toy source", files, fetch)], "hint")
    assert len(calls) == 1  # verified cache: no fetch
    (folder / "b.txt").write_bytes(b"corrupted")
    cache.obtain("toy", [("toy", "toy source", files, fetch)], "hint")
    assert len(calls) == 2 and (folder / "b.txt").read_bytes() == b"world"
    assert not list(folder.glob(".*.part"))  # no temporary files left behind


def test_cache_reports_every_source_tried_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("RECSYS_REF_DATA", str(tmp_path))
    files = {"a.txt": hashlib.sha256(b"hello").hexdigest()}

    def offline(tmp):
        raise OSError("network unreachable")

    def wrong(tmp):
        return {"a.txt": b"tampered"}

    with pytest.raises(DataUnavailableError) as err:
        cache.obtain("toy data", [("s1", "first source", files, offline),
                                  ("s2", "second source", files, wrong)], "You can: retry.")
    msg = str(err.value)
    assert "first source" in msg and "network unreachable" in msg
    assert "second source" in msg and "sha256" in msg and "You can: retry." in msg
    assert not (tmp_path / "s1").exists() and not (tmp_path / "s2").exists()


def test_write_atomic_leaves_nothing_on_failure(tmp_path):

    target = tmp_path / "x.bin"
    with pytest.raises(TypeError):
        cache.write_atomic(target, object())  # not bytes: the write fails midway
    assert not target.exists() and not list(tmp_path.iterdir())
    cache.write_atomic(target, b"ok")
    assert target.read_bytes() == b"ok"


def test_open_bandit_sample():
    logs, item_context = load_open_bandit("random", "all")
    assert len(logs) == 10_000 and logs["item_id"].nunique() == 80
    assert set(logs["position"]) == {1, 2, 3}
    assert np.allclose(logs["propensity_score"], 1 / 80)
    assert 0.003 < logs["click"].mean() < 0.005
    assert list(item_context.columns[:1]) == ["item_id"] and len(item_context) == 80
    bts, _ = load_open_bandit("bts", "men")
    assert len(bts) == 10_000 and (bts["propensity_score"] > 0).all()


@pytest.mark.parametrize("kwargs, match", [
    ({"policy": "greedy"}, "policy"), ({"campaign": "kids"}, "campaign"),
])
def test_open_bandit_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_open_bandit(**kwargs)
