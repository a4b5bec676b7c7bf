"""recsys_ref.encoder_search: the pretraining chapter's two-round search, reusable by others."""

import pytest
from test_sequential import N_ITEMS, cyclic_frame

from recsys_ref import encoder_search
from recsys_ref.models.sasrec import SASRec
from recsys_ref.splits import leave_last_out


def test_search_encoder_picks_a_finalist_and_a_second_call_refits_nothing(tmp_path,
                                                                           monkeypatch):
    monkeypatch.setenv("RECSYS_REF_DATA", str(tmp_path))
    train, valid, _ = leave_last_out(cyclic_frame(n_users=30))
    found = encoder_search.search_encoder(train, valid, 30, N_ITEMS, smoke=True, seed=0)
    space = encoder_search.encoder_space(True)
    assert len(found.first) == len(space) and len(found.second) == encoder_search.N_FINALISTS
    assert found.best in found.finalists and all(c in space for c in found.finalists)
    assert found.arch == {"max_len": encoder_search.MAX_LEN,
                          "n_heads": encoder_search.N_HEADS} | found.best
    assert list(found.first["parameters"]) == [encoder_search.n_parameters(c, N_ITEMS)
                                               for c in space]

    def no_fit(self, *a, **k):
        raise AssertionError("refitted")

    monkeypatch.setattr(SASRec, "fit", no_fit)  # everything comes from the cache now
    again = encoder_search.search_encoder(train, valid, 30, N_ITEMS, smoke=True, seed=0)
    assert again.best == found.best
    assert again.first["NDCG@10"].tolist() == found.first["NDCG@10"].tolist()
    with pytest.raises(AssertionError, match="refitted"):  # another seed is another fit
        encoder_search.search_encoder(train, valid, 30, N_ITEMS, smoke=True, seed=1)
