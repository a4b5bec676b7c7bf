"""The fitted-model cache: one fit per (model, settings, data, torch, library), checked files."""

import pandas as pd
import pytest
import torch

from recsys_ref import model_cache
from recsys_ref.features import Features
from recsys_ref.model_cache import cached_fit, model_key
from recsys_ref.models import BPR, EASE, IALS, TwoTower

N_USERS, N_ITEMS = 6, 8


def counting(cls, calls):
    """A subclass of ``cls`` whose ``fit`` records each call."""

    class Counted(cls):
        def fit(self, *args, **kwargs):
            calls.append(args)
            return super().fit(*args, **kwargs)

    Counted.__qualname__ = Counted.__name__ = f"Counted{cls.__name__}"
    return Counted


# pickle finds classes by module-level name
CALLS: list = []
CountedIALS = counting(IALS, CALLS)
CountedBPR = counting(BPR, CALLS)


def test_second_fit_is_read_back_and_scores_the_same(tiny_ratings, tmp_path):
    CALLS.clear()
    users = torch.arange(N_USERS)
    a = cached_fit(CountedIALS(N_USERS, N_ITEMS, n_factors=4, n_epochs=3), tiny_ratings,
                   folder=tmp_path)
    b = cached_fit(CountedIALS(N_USERS, N_ITEMS, n_factors=4, n_epochs=3), tiny_ratings,
                   folder=tmp_path)
    assert len(CALLS) == 1 and b is not a
    assert torch.equal(a.score(users), b.score(users))
    assert b.fit_seconds_ == a.fit_seconds_ > 0  # the time of the fit that made it
    pd.testing.assert_frame_equal(pd.DataFrame(b.history_), pd.DataFrame(a.history_))
    # another setting, other rows or a validation frame: fitted again
    cached_fit(CountedIALS(N_USERS, N_ITEMS, n_factors=4, n_epochs=4), tiny_ratings,
               folder=tmp_path)
    cached_fit(CountedIALS(N_USERS, N_ITEMS, n_factors=4, n_epochs=3), tiny_ratings.iloc[1:],
               folder=tmp_path)
    cached_fit(CountedBPR(N_USERS, N_ITEMS, n_factors=4, n_epochs=2, metric="NDCG@5"),
               tiny_ratings.iloc[5:],
               tiny_ratings.iloc[:5].drop_duplicates("user_idx"), folder=tmp_path)
    assert len(CALLS) == 4
    assert len(list(tmp_path.glob("*.pt"))) == 4 and len(list(tmp_path.glob("*.sha256"))) == 4


def test_corrupted_file_is_refitted(tiny_ratings, tmp_path):
    CALLS.clear()
    make = lambda: CountedIALS(N_USERS, N_ITEMS, n_factors=4, n_epochs=2)  # noqa: E731
    first = cached_fit(make(), tiny_ratings, folder=tmp_path)
    (path,) = tmp_path.glob("*.pt")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    again = cached_fit(make(), tiny_ratings, folder=tmp_path)
    assert len(CALLS) == 2 and again is not first
    assert torch.equal(again.score(torch.arange(N_USERS)), first.score(torch.arange(N_USERS)))
    path.with_name(path.name + ".sha256").unlink()  # a write interrupted before its checksum
    cached_fit(make(), tiny_ratings, folder=tmp_path)
    assert len(CALLS) == 3


def test_key_covers_class_settings_rows_and_library(tiny_ratings, monkeypatch):
    base = model_key(EASE(N_USERS, N_ITEMS, lam=10.0), tiny_ratings)
    assert base == model_key(EASE(N_USERS, N_ITEMS, lam=10.0), tiny_ratings.copy())
    assert base != model_key(EASE(N_USERS, N_ITEMS, lam=11.0), tiny_ratings)
    assert base != model_key(EASE(N_USERS, N_ITEMS + 1, lam=10.0), tiny_ratings)
    changed = tiny_ratings.copy()
    changed.loc[0, "rating"] += 1
    assert base != model_key(EASE(N_USERS, N_ITEMS, lam=10.0), changed)
    assert base != model_key(EASE(N_USERS, N_ITEMS, lam=10.0), tiny_ratings.iloc[::-1])
    # the progress bar does not change the fit
    assert model_key(IALS(N_USERS, N_ITEMS), tiny_ratings) == model_key(
        IALS(N_USERS, N_ITEMS, progress=True), tiny_ratings)
    monkeypatch.setattr(model_cache, "library_hash", lambda: "edited")
    assert base != model_key(EASE(N_USERS, N_ITEMS, lam=10.0), tiny_ratings)


def test_unkeyable_models_are_refused(tiny_ratings, tmp_path):
    model = EASE(N_USERS, N_ITEMS)
    model.side_table = pd.DataFrame({"a": range(N_ITEMS)})  # e.g. a feature table
    with pytest.raises(TypeError, match="cannot cache EASE: its setting 'side_table'"):
        cached_fit(model, tiny_ratings, folder=tmp_path)
    fitted = EASE(N_USERS, N_ITEMS).fit(tiny_ratings)
    with pytest.raises(TypeError, match="cannot cache EASE"):
        cached_fit(fitted, tiny_ratings, folder=tmp_path)


def test_two_processes_asking_for_one_fit_fit_it_once(tmp_path):
    """Two chapters executed side by side: the second waits for the first's fit and reads
    it back instead of fitting again."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import pandas as pd, sys, time
        from recsys_ref.model_cache import cached_fit
        from recsys_ref.models.baselines import Popularity

        class Slow(Popularity):
            def fit(self, train):
                time.sleep(1.5)
                print("fitted", flush=True)
                return super().fit(train)

        train = pd.DataFrame({{"user_idx": [0, 1, 1], "item_idx": [0, 0, 2]}})
        cached_fit(Slow(2, 3), train, folder={str(tmp_path)!r})
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(o.count("fitted") for o in outs) == 1


def _features(n, shift=0):
    """A small feature table: one categorical column and two dense ones."""
    return Features({"kind": (torch.arange(n) + shift) % 3}, {"kind": 3},
                    torch.arange(2 * n, dtype=torch.float32).reshape(n, 2) + shift, ("a", "b"))


def test_models_with_feature_tables_are_keyed_by_the_tables_contents(tiny_ratings, tmp_path):
    def tower(items):
        return TwoTower(N_USERS, N_ITEMS, _features(N_USERS), items, dim=4, dim_id=4,
                        dim_feature=2, n_epochs=2, seed=0)

    same = model_key(tower(_features(N_ITEMS)), tiny_ratings)
    assert same == model_key(tower(_features(N_ITEMS)), tiny_ratings)  # equal contents
    assert same != model_key(tower(_features(N_ITEMS, shift=1)), tiny_ratings)
    assert same != model_key(tower(None), tiny_ratings)
    a = cached_fit(tower(_features(N_ITEMS)), tiny_ratings, folder=tmp_path)
    b = cached_fit(tower(_features(N_ITEMS)), tiny_ratings, folder=tmp_path)
    assert b is not a and torch.equal(a.score(torch.arange(N_USERS)),
                                      b.score(torch.arange(N_USERS)))
