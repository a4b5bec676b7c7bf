"""Sequences, SASRec and self-supervised pretraining, on tiny synthetic data."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_ref.models.bert4rec import BERT4Rec, BERT4RecConfig
from recsys_ref.models.sasrec import SASRec, SASRecConfig, SeqTransformer, next_item_loss
from recsys_ref.pretraining import (
    PretrainConfig,
    augment,
    cached_backbone,
    cloze_loss,
    crop,
    finetune,
    info_nce,
    load_backbone,
    mask,
    mask_items,
    pretrain,
    reorder,
    save_backbone,
)
from recsys_ref.sequences import (
    PAD,
    bucket_order,
    check_sequences,
    mask_token,
    next_item_examples,
    trim_padding,
    user_sequences,
)

N_ITEMS = 10
TINY = dict(max_len=8, dim=16, n_layers=1, n_heads=2, dropout=0.0, progress=False)


def frame(seed=0, n_users=7, ties=True):
    """Random interactions with repeated timestamps (ties), in a shuffled row order."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        if u == 3:
            continue  # a user with no interactions
        n = int(rng.integers(1, 13))
        items = rng.integers(N_ITEMS, size=n)
        times = rng.integers(0, 5 if ties else 10**6, size=n)
        rows += [(u, int(i), 4.0, int(t)) for i, t in zip(items, times, strict=True)]
    df = pd.DataFrame(rows, columns=["user_idx", "item_idx", "rating", "timestamp"])
    return df.sample(frac=1.0, random_state=seed)


def cyclic_frame(n_users=40, length=9, seed=0):
    """Every user walks the items in a cycle, i -> i + 1 mod N_ITEMS, from a random start."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(N_ITEMS, size=n_users)
    rows = [(u, (s + t) % N_ITEMS, 1.0, t) for u, s in enumerate(starts) for t in range(length)]
    return pd.DataFrame(rows, columns=["user_idx", "item_idx", "rating", "timestamp"])


def net(causal=True, seed=0, max_len=8):
    return SeqTransformer(N_ITEMS, max_len=max_len, dim=16, n_layers=2, n_heads=2, dropout=0.0,
                          causal=causal, generator=torch.Generator().manual_seed(seed)).eval()


# ----------------------------------------------------------------------------- sequences


@pytest.mark.parametrize("max_len", [1, 4, 20])
def test_user_sequences_match_a_loop(max_len):
    df = frame()
    got = user_sequences(df, 8, max_len, N_ITEMS)
    assert got.shape == (8, max_len) and got.dtype == torch.long
    for u in range(8):
        rows = [r for r in df.itertuples() if r.user_idx == u]
        rows = sorted(rows, key=lambda r: r.timestamp)  # stable: ties keep frame order
        last = [r.item_idx + 1 for r in rows][-max_len:]  # the MOST RECENT items
        assert got[u].tolist() == [PAD] * (max_len - len(last)) + last
    assert got[3].tolist() == [PAD] * max_len  # the user without interactions


def test_user_sequences_tie_order_and_truncation_by_hand():
    df = pd.DataFrame({"user_idx": [0, 0, 0, 0], "item_idx": [5, 1, 2, 3],
                       "timestamp": [9, 3, 3, 1]})
    # time order 3 (t=1), 1 and 2 (t=3, frame order), 5 (t=9); keep the last 3
    assert user_sequences(df, 1, 3).tolist() == [[2, 3, 6]]
    assert user_sequences(df, 1, 6).tolist() == [[0, 0, 4, 2, 3, 6]]


def test_next_item_examples_and_trim():
    seqs = torch.tensor([[0, 0, 3, 4, 5], [0, 0, 0, 0, 7], [0, 1, 2, 3, 4]])
    x, y = next_item_examples(seqs)
    # the one-item user has no target and is dropped; no target without an input
    assert x.tolist() == [[0, 0, 3, 4], [0, 1, 2, 3]]
    assert y.tolist() == [[0, 0, 4, 5], [0, 2, 3, 4]]
    tx, ty = trim_padding(x[:1], y[:1])
    assert tx.tolist() == [[3, 4]] and ty.tolist() == [[4, 5]]
    assert trim_padding(torch.zeros(2, 3, dtype=torch.long))[0].shape == (2, 1)


def test_bucket_order_is_a_permutation_of_similar_lengths():
    seqs = user_sequences(frame(1, n_users=50), 50, 12)
    gen = torch.Generator().manual_seed(0)
    order = bucket_order(seqs, 8, gen, jitter=0.0)
    assert sorted(order.tolist()) == list(range(50))
    n = (seqs != PAD).sum(1)[order]
    spans = [int(b.max() - b.min()) for b in n.split(8)]
    assert max(spans) <= 3  # sorted by length: each batch spans few lengths
    assert bucket_order(seqs, 8, gen).tolist() != order.tolist()  # a new order each call


def test_sequence_bad_inputs():
    df = frame()
    with pytest.raises(ValueError, match="timestamp"):
        user_sequences(df.drop(columns="timestamp"), 8, 5)
    with pytest.raises(ValueError, match="max_len"):
        user_sequences(df, 8, 0)
    with pytest.raises(ValueError, match="user_idx"):
        user_sequences(df, 3, 5)
    with pytest.raises(ValueError, match="item_idx"):
        user_sequences(df, 8, 5, n_items=4)
    with pytest.raises(ValueError, match="left-padded"):
        check_sequences(torch.tensor([[1, 0, 2]]))
    with pytest.raises(ValueError, match="2-D long"):
        check_sequences(torch.tensor([1.0, 2.0]))


# ----------------------------------------------------------------------------- encoder


def test_causal_attention_blocks_the_future():
    seqs = torch.tensor([[0, 0, 1, 2, 3, 4, 5, 6]])
    changed = seqs.clone()
    changed[0, 5] = 9  # a later item
    for causal in (True, False):
        with torch.no_grad():
            a, b = net(causal)(seqs), net(causal)(changed)
        diff = (a - b).abs().amax(-1)[0]  # (L,)
        if causal:
            assert diff[:5].max() == 0 and diff[5:].min() > 1e-4
        else:  # bidirectional: earlier positions see the change
            assert diff[2:5].min() > 1e-4


def test_padding_does_not_change_outputs():
    m = net(max_len=12)
    short = torch.tensor([[0, 0, 3, 1, 4]])
    longer = torch.tensor([[0, 0, 0, 0, 0, 0, 3, 1, 4], [5, 6, 7, 8, 9, 1, 2, 3, 4]])
    for causal in (True, False):
        with torch.no_grad():
            a, b = m(short, causal)[0, 2:], m(longer, causal)[0, 6:]
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        empty = m(torch.zeros(2, 4, dtype=torch.long))
    assert torch.isfinite(empty).all()  # an all-PAD row never divides by zero


def test_encoder_bad_inputs():
    with pytest.raises(ValueError, match="divide"):
        SeqTransformer(N_ITEMS, dim=10, n_heads=3)
    with pytest.raises(ValueError, match="max_len"):
        net(max_len=4)(torch.ones(1, 5, dtype=torch.long))
    for bad in (dict(dim=10, n_heads=4), dict(dropout=1.0), dict(lr=0), dict(max_len=0)):
        with pytest.raises(ValueError):
            SASRecConfig(**bad)
    with pytest.raises(ValueError, match="objective"):
        PretrainConfig(objective="jigsaw")
    with pytest.raises(ValueError, match="mask_prob"):
        PretrainConfig(mask_prob=1.5)


# ----------------------------------------------------------------------------- losses


def _ce(logits_row, target):
    """-log softmax(logits_row)[target], in plain Python floats."""
    row = [float(v) for v in logits_row]
    top = max(row)
    return top + math.log(sum(math.exp(v - top) for v in row)) - row[target]


def test_next_item_loss_matches_a_loop():
    m = net()
    x = torch.tensor([[0, 0, 3, 4, 5], [1, 2, 3, 4, 5]])
    y = torch.tensor([[0, 0, 4, 5, 6], [2, 3, 4, 5, 7]])
    with torch.no_grad():
        loss = next_item_loss(m, x, y)
        logits = m.item_logits(m(x))  # (2, 5, N_ITEMS)
    terms = [_ce(logits[b, t], int(y[b, t]) - 1) for b in range(2) for t in range(5) if y[b, t]]
    assert len(terms) == 8 and float(loss) == pytest.approx(sum(terms) / 8, rel=1e-5)


def test_mask_items_and_cloze_loss_match_a_loop():
    seqs = torch.tensor([[0, 0, 3, 4, 5, 6], [0, 0, 0, 0, 0, 7], [0] * 6, [1, 2, 3, 4, 5, 6]])
    masked, targets = mask_items(seqs, 0.4, N_ITEMS, torch.Generator().manual_seed(0))
    hit = targets != PAD
    assert (masked[hit] == N_ITEMS + 1).all() and (targets[hit] == seqs[hit]).all()
    assert (masked[~hit] == seqs[~hit]).all()
    assert hit[[0, 1, 3]].any(1).all() and not hit[2].any()  # every non-empty row masked
    m = net(causal=True)  # cloze_loss must attend both ways whatever the default
    with torch.no_grad():
        loss = cloze_loss(m, masked, targets)
        logits = m.item_logits(m(masked, causal=False))
    terms = [_ce(logits[b, t], int(targets[b, t]) - 1)
             for b in range(4) for t in range(6) if targets[b, t]]
    assert float(loss) == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_info_nce_matches_a_loop():
    gen = torch.Generator().manual_seed(0)
    z1, z2, tau = torch.randn(4, 3, generator=gen), torch.randn(4, 3, generator=gen), 0.7
    views = [v / v.norm() for v in torch.cat([z1, z2])]
    total = 0.0
    for i in range(8):
        sims = [float(views[i] @ views[j]) / tau for j in range(8) if j != i]
        pos = float(views[i] @ views[(i + 4) % 8]) / tau
        total += math.log(sum(math.exp(s) for s in sims)) - pos
    assert float(info_nce(z1, z2, tau)) == pytest.approx(total / 8, rel=1e-5)
    with pytest.raises(ValueError, match="B >= 2"):
        info_nce(z1[:1], z2[:1])
    with pytest.raises(ValueError, match="temperature"):
        info_nce(z1, z2, 0.0)


# ----------------------------------------------------------------------------- augmentations


def test_augmentations_do_only_what_they_say():
    seqs = user_sequences(frame(2, n_users=30), 30, 10)  # some truncated, one empty
    gen = torch.Generator().manual_seed(0)
    for r in range(len(seqs)):
        items = [int(v) for v in seqs[r] if v != PAD]
        n = len(items)
        c, m, o = (crop(seqs, 0.6, gen)[r], mask(seqs, 0.3, N_ITEMS, gen)[r],
                   reorder(seqs, 0.6, gen)[r])
        for view in (c, m, o):  # same width, still left-padded
            assert view.shape == (10,) and check_sequences(view[None]) is not None
        kept = [int(v) for v in c if v != PAD]
        assert len(kept) == (max(1, math.floor(0.6 * n)) if n else 0)
        assert any(items[s:s + len(kept)] == kept for s in range(n - len(kept) + 1))
        got = [int(v) for v in m if v != PAD]
        assert len(got) == n and sum(v == N_ITEMS + 1 for v in got) == math.floor(0.3 * n)
        assert all(g in (i, N_ITEMS + 1) for g, i in zip(got, items, strict=True))
        got = [int(v) for v in o if v != PAD]
        assert sorted(got) == sorted(items)
        moved = [t for t in range(n) if got[t] != items[t]]
        if moved:  # only one contiguous run of floor(0.6 n) items is shuffled
            assert moved[-1] - moved[0] + 1 <= math.floor(0.6 * n)
    views = augment(seqs, N_ITEMS, gen)
    assert views.shape == seqs.shape and ((views != PAD).sum(1) <= (seqs != PAD).sum(1)).all()
    with pytest.raises(ValueError, match="ratio"):
        crop(seqs, 1.5, gen)


# ----------------------------------------------------------------------------- SASRec


def test_sasrec_learns_a_cycle_and_is_deterministic():
    df = cyclic_frame()
    cfg = SASRecConfig(**TINY, n_epochs=30, lr=1e-2, batch_size=16)
    a = SASRec(40, N_ITEMS, cfg).fit(df)
    last = df.sort_values("timestamp").groupby("user_idx")["item_idx"].last()
    top1 = a.score(torch.arange(40)).argmax(1)
    assert (top1 == torch.tensor((last.to_numpy() + 1) % N_ITEMS)).float().mean() > 0.9
    b = SASRec(40, N_ITEMS, cfg).fit(df)
    assert torch.equal(a.score(torch.arange(40)), b.score(torch.arange(40)))
    c = SASRec(40, N_ITEMS, cfg, seed=1, dropout=0.3).fit(df)
    d = SASRec(40, N_ITEMS, cfg, seed=1, dropout=0.3).fit(df)  # dropout draws are seeded too
    assert torch.equal(c.score(torch.arange(40)), d.score(torch.arange(40)))
    assert not torch.equal(a.score(torch.arange(40)), c.score(torch.arange(40)))


def test_sasrec_early_stopping_and_users_without_history():
    df = cyclic_frame(n_users=12)
    df = df[df["user_idx"] != 5]  # users 5 and 12 have no history
    valid = df[df["timestamp"] == 8]
    train = df.drop(valid.index)
    m = SASRec(13, N_ITEMS, **TINY, n_epochs=4, eval_every=1, patience=2).fit(train, valid)
    assert m.best_epoch_ is not None and len(m.history_) <= 4
    s = m.score(torch.arange(13))
    assert s.shape == (13, N_ITEMS) and torch.isfinite(s).all()
    with pytest.raises(ValueError, match="user_idx"):
        m.score(torch.tensor([13]))
    # use_history: the validation item becomes the last input, without retraining
    before = m.score(torch.arange(13))
    m.use_history(df)
    assert torch.equal(m.sequences_, user_sequences(df, 13, 8, N_ITEMS))
    assert not torch.equal(m.score(torch.arange(13)), before)
    torch.testing.assert_close(m.score(torch.tensor([5, 12])), before[[5, 12]])  # no history


def test_bert4rec_scores_an_appended_mask_and_is_deterministic():
    df = cyclic_frame(n_users=12)
    valid = df[df["timestamp"] == df["timestamp"].max()]
    train = df.drop(valid.index)
    cfg = BERT4RecConfig(**TINY, n_epochs=3, eval_every=1, patience=2, lr=1e-2, batch_size=8)
    a = BERT4Rec(13, N_ITEMS, cfg).fit(train, valid)  # user 12 has no history
    # the scored row is the last max_len - 1 items followed by one [MASK]
    expect = torch.cat([user_sequences(train, 13, 7, N_ITEMS),
                        torch.full((13, 1), mask_token(N_ITEMS))], 1)
    assert torch.equal(a.sequences_, expect)
    s = a.score(torch.arange(13))
    assert s.shape == (13, N_ITEMS) and torch.isfinite(s).all()
    by_hand = a.net_.item_logits(a.net_(expect, causal=False)[:, -1])
    torch.testing.assert_close(s, by_hand)  # bidirectional, read at the [MASK]
    b = BERT4Rec(13, N_ITEMS, cfg).fit(train, valid)
    assert torch.equal(s, b.score(torch.arange(13)))
    before = s.clone()
    a.use_history(df)  # the validation item becomes the last input
    assert not torch.equal(a.score(torch.arange(13)), before)
    # starting from an encoder copies its weights (and leaves it unchanged)
    init = SASRecConfig(**TINY).backbone(N_ITEMS, torch.Generator().manual_seed(3))
    kept = {k: v.clone() for k, v in init.state_dict().items()}
    BERT4Rec(13, N_ITEMS, cfg, n_epochs=1).fit(train, init=init)
    assert all(torch.equal(v, init.state_dict()[k]) for k, v in kept.items())


def test_bert4rec_bad_input():
    with pytest.raises(ValueError, match="mask_prob"):
        BERT4RecConfig(mask_prob=0.0)
    df = cyclic_frame(n_users=4)
    wrong = SASRecConfig(**(TINY | {"dim": 8})).backbone(N_ITEMS)
    with pytest.raises(ValueError, match="init"):
        BERT4Rec(4, N_ITEMS, **TINY, n_epochs=1).fit(df, init=wrong)
    with pytest.raises(ValueError, match="max_len"):
        BERT4Rec(4, N_ITEMS, **(TINY | {"max_len": 1}), n_epochs=1).fit(df)


# ----------------------------------------------------------------------------- pretraining


@pytest.mark.parametrize("objective", ["cloze", "contrastive", "next"])
def test_pretrain_and_finetune(objective):
    df = cyclic_frame(n_users=24)
    backbone_cfg = SASRecConfig(**TINY)
    bb = pretrain(backbone_cfg, df, N_ITEMS, objective=objective, n_epochs=2, batch_size=8)
    assert bb.causal == (objective != "cloze") and not bb.training
    assert all(math.isfinite(h["loss"]) for h in bb.history_)
    # a tiny step size keeps the fine-tuned weights at the backbone's: init was used
    ft = finetune(bb, df, n_users=24, config=backbone_cfg, n_epochs=1, lr=1e-9)
    assert ft.net_.causal and ft.score(torch.arange(24)).shape == (24, N_ITEMS)
    torch.testing.assert_close(ft.net_.tokens.weight, bb.tokens.weight, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="init"):
        SASRec(24, N_ITEMS, backbone_cfg, dim=8).fit(df, init=bb)


def test_save_load_round_trip(tmp_path):
    m = net(causal=False, seed=3)
    path = save_backbone(m, tmp_path / "sub" / "b.pt")
    back = load_backbone(path)
    assert back.arch == m.arch and not back.causal
    seqs = torch.tensor([[0, 1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(back(seqs), m(seqs))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="no checksum"):
        load_backbone(tmp_path / "bad.pt")
    # one flipped byte inside the weights loads without complaint in torch: the checksum
    # written with the file catches it
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupted"):
        load_backbone(path)


def test_cached_backbone_writes_once_and_reloads(tmp_path, monkeypatch):
    import recsys_ref.pretraining as pt

    monkeypatch.setenv("RECSYS_REF_DATA", str(tmp_path))
    calls = []
    real = pt.pretrain
    monkeypatch.setattr(pt, "pretrain", lambda *a, **k: calls.append(1) or real(*a, **k))
    df, cfg = cyclic_frame(n_users=12), SASRecConfig(**TINY)
    first = cached_backbone(cfg, df, N_ITEMS, n_epochs=1)
    # the weights and their checksum (and the empty lock file of recsys_ref.data.cache.locked)
    files = sorted(f for f in (tmp_path / "backbones").iterdir() if f.suffix != ".lock")
    assert len(calls) == 1 and [f.suffix for f in files] == [".pt", ".sha256"]
    again = cached_backbone(cfg, df, N_ITEMS, n_epochs=1)  # loaded, not retrained
    assert len(calls) == 1
    assert all(torch.equal(a, b) for a, b in
               zip(first.state_dict().values(), again.state_dict().values(), strict=True))
    cached_backbone(cfg, df.iloc[:-1], N_ITEMS, n_epochs=1)  # other data: another file
    weights = [f for f in (tmp_path / "backbones").iterdir() if f.suffix != ".lock"]
    assert len(calls) == 2 and len(weights) == 4
    files[0].write_bytes(b"half")  # a corrupted file is retrained and replaced
    cached_backbone(cfg, df, N_ITEMS, n_epochs=1)
    assert len(calls) == 3 and load_backbone(files[0]).arch == first.arch
    assert not [p for p in (tmp_path / "backbones").iterdir() if p.name.endswith(".part")]


def test_last_computes_only_the_last_column_and_matches_forward():
    """``last`` runs the final block for the last query only; in eval mode it equals the
    last column of ``forward``, for both attention patterns and two layers."""
    net = SASRecConfig(**(TINY | {"n_layers": 2, "dropout": 0.2})).backbone(
        N_ITEMS, torch.Generator().manual_seed(0)).eval()
    seqs = user_sequences(frame(), 7, 8, N_ITEMS)
    for causal in (True, False):
        torch.testing.assert_close(net.last(seqs, causal), net(seqs, causal)[:, -1])
    with pytest.raises(ValueError, match="max_len"):
        net.last(torch.ones(2, 9, dtype=torch.long))
