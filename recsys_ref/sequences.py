"""Per-user item sequences in time order, as padded token tensors for sequence models.

A ratings frame (``user_idx, item_idx, rating, timestamp``) becomes one row per user: the
user's items sorted by timestamp (a stable sort, so ties keep their frame order, as
:func:`recsys_ref.splits.leave_last_out` does), truncated to the *last* ``max_len`` items and
left-padded. Rows hold *tokens*, not item indices:

* ``PAD = 0`` is padding,
* item ``i`` is token ``i + 1`` (so ``0..n_items-1`` become ``1..n_items``),
* ``mask_token(n_items) = n_items + 1`` is the [MASK] of cloze training and augmentations.

Left padding puts every user's most recent item in the last column, so "the next item after
the sequence" is always read at column ``-1``. See the chapter "Self-supervised pretraining".
"""

from __future__ import annotations

import pandas as pd
import torch

from recsys_ref.checks import check_frame, check_index, check_positive_int

PAD = 0  # the padding token


def mask_token(n_items: int) -> int:
    """The [MASK] token of a catalogue of ``n_items`` items: ``n_items + 1``.

    See the chapter "Self-supervised pretraining".
    """
    return check_positive_int(n_items, "n_items") + 1


def user_sequences(ratings: pd.DataFrame, n_users: int, max_len: int,
                   n_items: int | None = None) -> torch.Tensor:
    """Each user's last ``max_len`` items in time order, left-padded, as tokens.

    Args:
        ratings: ``user_idx, item_idx, timestamp`` (other columns are ignored).
        n_users: rows of the result; users absent from ``ratings`` get an all-``PAD`` row.
        max_len: columns of the result; longer histories keep their most recent items.
        n_items: if given, ``item_idx`` is checked to lie in ``0..n_items-1``.

    Returns:
        ``(n_users, max_len)`` long tensor; row ``u`` ends with ``u``'s most recent item
        (as token ``item_idx + 1``) and starts with ``PAD`` when ``u`` has fewer than
        ``max_len`` items. See the chapter "Self-supervised pretraining".
    """
    check_frame(ratings, "ratings", ["user_idx", "item_idx", "timestamp"])
    n_users = check_positive_int(n_users, "n_users")
    max_len = check_positive_int(max_len, "max_len")
    check_index(ratings["user_idx"].to_numpy(), "ratings.user_idx", n_users)
    if n_items is not None:
        check_index(ratings["item_idx"].to_numpy(), "ratings.item_idx", n_items)
    elif (ratings["item_idx"].to_numpy() < 0).any():
        raise ValueError("ratings.item_idx must be >= 0")
    order = ratings.sort_values(["user_idx", "timestamp"], kind="stable")
    # position from the end within each user: 0 = the most recent item
    from_end = order.groupby("user_idx").cumcount(ascending=False).to_numpy()
    keep = from_end < max_len
    users = torch.tensor(order["user_idx"].to_numpy()[keep], dtype=torch.long)  # (n,)
    cols = torch.tensor(max_len - 1 - from_end[keep], dtype=torch.long)  # (n,)
    tokens = torch.tensor(order["item_idx"].to_numpy()[keep], dtype=torch.long) + 1
    seqs = torch.full((n_users, max_len), PAD, dtype=torch.long)
    seqs[users, cols] = tokens
    return seqs


def check_sequences(seqs, name: str = "seqs") -> torch.Tensor:
    """Check a 2-D long tensor of left-padded tokens (no ``PAD`` after an item); return it.

    See the chapter "Self-supervised pretraining".
    """
    if not isinstance(seqs, torch.Tensor) or seqs.dim() != 2 or seqs.dtype != torch.long:
        shape = tuple(seqs.shape) if isinstance(seqs, torch.Tensor) else type(seqs).__name__
        raise ValueError(f"{name} must be a 2-D long tensor of tokens, got {shape}")
    if (seqs < 0).any():
        raise ValueError(f"{name} must hold tokens >= 0 (PAD = 0)")
    real = seqs != PAD
    if (real[:, :-1] & ~real[:, 1:]).any():
        raise ValueError(f"{name} must be left-padded: a PAD follows an item in some row")
    return seqs


def lengths(seqs: torch.Tensor) -> torch.Tensor:
    """``(batch, L) -> (batch,)``: the number of non-``PAD`` tokens of each row.

    See the chapter "Self-supervised pretraining".
    """
    return (seqs != PAD).sum(1)


def next_item_examples(seqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and shifted targets of next-item prediction, one row per usable user.

    From rows of ``L + 1`` tokens ``s_1..s_n`` (left-padded), the input is the first ``L``
    columns and the target at each column is the token one column to the right: position
    ``t`` must predict ``s_{t+1}`` from ``s_1..s_t``. A target whose input is ``PAD`` has no
    history and is set to ``PAD`` (ignored); rows left without any target (users with fewer
    than two items) are dropped.

    Args:
        seqs: ``(n_users, L + 1)`` tokens from :func:`user_sequences` with ``max_len + 1``.

    Returns:
        ``(inputs, targets)``, each ``(n, L)``; ``targets == PAD`` where nothing is predicted.
        See the chapter "Self-supervised pretraining".
    """
    seqs = check_sequences(seqs)
    if seqs.shape[1] < 2:
        raise ValueError(f"seqs must have >= 2 columns, got {seqs.shape[1]}")
    inputs, targets = seqs[:, :-1], seqs[:, 1:]  # (n_users, L)
    targets = targets.masked_fill(inputs == PAD, PAD)
    keep = (targets != PAD).any(1)
    return inputs[keep], targets[keep]


def trim_padding(seqs: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Drop the leading columns that are ``PAD`` in every row of ``seqs`` (and of ``others``).

    A minibatch of left-padded rows is only as wide as its longest row needs; sequence models
    that count positions from the right end (:class:`recsys_ref.models.sasrec.SeqTransformer`)
    give the same outputs on the trimmed batch, faster.

    Args:
        seqs: ``(batch, L)`` tokens.
        others: tensors aligned with ``seqs`` in their first two dimensions (e.g. targets).

    Returns:
        ``(seqs[:, start:], *(o[:, start:] for o in others))``, at least one column wide.
        See the chapter "Self-supervised pretraining".
    """
    used = (seqs != PAD).any(0)  # (L,)
    start = int(used.long().argmax()) if used.any() else seqs.shape[1] - 1
    return (seqs[:, start:], *(o[:, start:] for o in others))


def bucket_order(seqs: torch.Tensor, batch_size: int, generator: torch.Generator | None = None,
                 jitter: float = 0.2) -> torch.Tensor:
    """A permutation of the rows that batches sequences of similar length together.

    Rows are sorted by length times a random factor in ``[1, 1 + jitter)`` (so batches are
    not the same every epoch), cut into runs of ``batch_size`` and the runs shuffled (a
    shorter run of the shortest rows comes last). Used
    with ``minibatches(..., shuffle=False)`` and :func:`trim_padding`, a batch is only as
    wide as its longest row: on MovieLens-100K with ``max_len = 200`` this halves the padded
    cells a random batching would compute on.

    Args:
        seqs: ``(n, L)`` tokens.
        batch_size: rows per batch.
        generator: the source of the jitter and of the batch order.
        jitter: relative noise on the lengths; 0 sorts strictly (ties in random order).

    Returns:
        ``(n,)`` long tensor, a permutation of ``0..n-1``. See the chapter
        "Self-supervised pretraining".
    """
    batch_size = check_positive_int(batch_size, "batch_size")
    if not jitter >= 0:
        raise ValueError(f"jitter must be >= 0, got {jitter}")
    n = len(seqs)
    ties = torch.randperm(n, generator=generator)  # random order among equal keys
    key = lengths(seqs)[ties] * (1 + jitter * torch.rand(n, generator=generator))
    order = ties[torch.argsort(key, stable=True)]  # (n,) by noisy length
    # the short run (n % batch_size rows, the shortest sequences) goes last, so that every
    # slice of batch_size rows that minibatches() cuts is one run
    short = n % batch_size
    runs = order[short:].split(batch_size)
    shuffled = [runs[i] for i in torch.randperm(len(runs), generator=generator)]
    return torch.cat([*shuffled, order[:short]])
