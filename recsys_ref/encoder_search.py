"""The validation search that chooses the sequence encoder's width, depth and dropout.

Successive halving in two rounds: every configuration of :func:`encoder_space` trains SASRec
for a few epochs, and the best two continue to early stopping; the better finalist wins.
Each fit sees the training interactions only and is scored on the validation item (full
ranking, training items removed). Fits go through
:func:`recsys_ref.model_cache.cached_fit`, so another chapter that needs the encoder the
pretraining chapter chose (the exploration chapter's bandit features) calls
:func:`search_encoder` with the same arguments and refits nothing.

The history length, the number of heads and AdamW's step size are fixed, not searched
(:data:`MAX_LEN`, :data:`N_HEADS`, :data:`LR`). See the chapter "Self-supervised pretraining".
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pandas as pd

from recsys_ref.evaluation import evaluate_ranking
from recsys_ref.models.sasrec import SASRec, SASRecConfig
from recsys_ref.tuning import best_config, grid, search

MAX_LEN = 50  # the last 50 items of a history
N_HEADS = 2  # attention heads
LR = 1e-3  # AdamW's step size
N_FINALISTS = 2  # configurations of the first round that continue to early stopping


def encoder_space(smoke: bool) -> list[dict]:
    """The configurations searched: width, depth and dropout (two widths under ``smoke``)."""
    if smoke:
        return grid(dim=(32, 64), n_layers=(1,), dropout=(0.1,))
    return (grid(dim=(32, 64, 128), n_layers=(1,), dropout=(0.1, 0.3))
            + grid(dim=(64,), n_layers=(2,), dropout=(0.1,)))


def search_epochs(smoke: bool) -> int:
    """Epochs of the first round."""
    return 2 if smoke else 8


def training(smoke: bool) -> dict:
    """SASRec's training settings for a finalist (and for the fine-tunes of the chapter):
    at full size up to 100 epochs, evaluated every second, stopped after three evaluations
    without improvement."""
    if smoke:
        return dict(lr=LR, n_epochs=4, eval_every=1, patience=None)
    return dict(lr=LR, n_epochs=100, eval_every=2, patience=3)


def pretraining(smoke: bool) -> dict:
    """The self-supervised pretraining's epochs and step size
    (:class:`recsys_ref.pretraining.PretrainConfig` keyword arguments)."""
    return dict(n_epochs=2 if smoke else 30, lr=LR)


def sasrec_with(n_users: int, n_items: int, *, smoke: bool, seed: int, **config) -> SASRec:
    """An unfitted SASRec with the fixed settings, :func:`training` and ``config``."""
    return SASRec(n_users, n_items, seed=seed, max_len=MAX_LEN, n_heads=N_HEADS,
                  **(training(smoke) | config))


def n_parameters(config: dict, n_items: int) -> int:
    """Parameters of the encoder of one configuration (item table included)."""
    arch = SASRecConfig(max_len=MAX_LEN, n_heads=N_HEADS, **config)
    return sum(p.numel() for p in arch.backbone(n_items).parameters())


@dataclass
class EncoderSearch:
    """What :func:`search_encoder` found.

    Attributes:
        first: the first round, one row per configuration (with ``parameters``).
        second: the finalists trained to early stopping (with ``best_epoch_``).
        finalists: the finalists' configurations, in the order of ``second``.
        best: the winning configuration (``dim``, ``n_layers``, ``dropout``).
        arch: the keyword arguments of :class:`recsys_ref.models.sasrec.SASRecConfig` for
            the chosen encoder (fixed settings and ``best``).
        seconds: wall time of the search (fits read from the cache cost almost nothing).
    """

    first: pd.DataFrame
    second: pd.DataFrame
    finalists: list[dict]
    best: dict
    arch: dict
    seconds: float


def search_encoder(train: pd.DataFrame, valid: pd.DataFrame, n_users: int, n_items: int, *,
                   smoke: bool, seed: int) -> EncoderSearch:
    """Run the two rounds on ``train`` with early stopping and scoring on ``valid``.

    Args:
        train: training interactions (with timestamps); valid: one validation item per user
            (:func:`recsys_ref.splits.leave_last_out`).
        n_users, n_items: id ranges. smoke: the tests' small search. seed: of every fit.
    """
    space, epochs = encoder_space(smoke), search_epochs(smoke)

    def on_valid(model):  # full ranking of the validation item, training items removed
        return evaluate_ranking(model, valid, exclude=train, ks=(10,))

    t0 = time.perf_counter()
    first = search(lambda **c: sasrec_with(n_users, n_items, smoke=smoke, seed=seed, **c,
                                           n_epochs=epochs, eval_every=epochs, patience=None),
                   space, train, on_valid, metric="NDCG@10", valid=valid)
    first["parameters"] = [n_parameters(c, n_items) for c in space]
    ahead = first["NDCG@10"].to_numpy().argsort(kind="stable")[::-1][:N_FINALISTS]
    finalists = [space[j] for j in sorted(ahead)]
    second = search(lambda **c: sasrec_with(n_users, n_items, smoke=smoke, seed=seed, **c),
                    finalists, train, on_valid, metric="NDCG@10", valid=valid,
                    record=("best_epoch_",))
    best = best_config(second)
    arch = dict(max_len=MAX_LEN, n_heads=N_HEADS) | best
    return EncoderSearch(first, second, finalists, best, arch, time.perf_counter() - t0)
