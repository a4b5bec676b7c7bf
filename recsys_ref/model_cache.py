"""A cache of fitted models, so a model that several chapters fit on the same data with the
same settings is fitted once per build.

:func:`cached_fit` is ``model.fit(train[, valid])`` with the fitted model kept under
``data_home()/models``, named by :func:`model_key`: the model's class and settings, the
training (and validation) rows, torch's version and the source of ``recsys_ref`` itself, so
another setting, other data, another torch or an edited library never reuses a file. Two processes
asking for the same fit at once (two chapters executed side by side) fit it once: the
second waits on a lock file for the first and reads its result. Files
are written atomically with their sha256 (:func:`recsys_ref.data.cache.write_checked`): an
interrupted run leaves nothing half-written, and a corrupted file is detected and refitted.
Like the pretrained-backbone cache of :mod:`recsys_ref.pretraining`, it only saves time:
a model read back scores exactly as the one that was written.

The file is a pickle of the whole fitted model (``torch.save``), read back with
``weights_only=False``: only point ``folder`` (or ``RECSYS_REF_DATA``) at a folder you trust.
See the chapter "Matrix factorization".
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import asdict, is_dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from recsys_ref.checks import check_frame
from recsys_ref.data.cache import (
    data_home,
    locked,
    read_checked,
    remove_checked,
    write_checked,
)
from recsys_ref.features import Features

_COLUMNS = ("user_idx", "item_idx", "rating", "timestamp")  # what a fit can read
_SIMPLE = (bool, int, float, str, type(None))


@lru_cache(maxsize=1)
def library_hash() -> str:
    """sha256 of every ``.py`` file of the installed ``recsys_ref`` (paths and contents)."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _settings(model) -> dict:
    """The JSON-able settings of an unfitted model: its config dataclass (without the
    progress bar switch) or its plain attributes."""
    config = getattr(model, "config", None)
    raw = dict(vars(model))
    if is_dataclass(config):
        raw.pop("config")
        raw |= {f"config.{k}": v for k, v in asdict(config).items() if k != "progress"}
    out = {}
    for name, value in raw.items():
        if name.startswith("_"):
            continue
        if isinstance(value, tuple | list) and all(isinstance(v, _SIMPLE) for v in value):
            value = list(value)
        elif isinstance(value, Features):  # a feature table, keyed by its contents
            value = {"features": value.digest()}
        elif not isinstance(value, _SIMPLE):
            raise TypeError(f"cannot cache {type(model).__name__}: its setting {name!r} is a "
                            f"{type(value).__name__} (only numbers, strings, their tuples and "
                            f"feature tables can be keyed; fitted models cannot be cached again)")
        out[name] = value
    return out


def model_key(model, *frames: pd.DataFrame | None) -> str:
    """sha256 of everything a fit depends on: the class, its settings, the rows of the
    frames (their ``user_idx, item_idx, rating, timestamp`` columns, in order), torch's
    version and :func:`library_hash`.

    Raises:
        TypeError: a setting of ``model`` is not a number, string, tuple of them or
            :class:`recsys_ref.features.Features` table (e.g. another model), or ``model`` is
            already fitted.
    """
    cls = type(model)
    head = {"class": f"{cls.__module__}.{cls.__qualname__}", "settings": _settings(model),
            "torch": torch.__version__.split("+")[0], "library": library_hash()}
    h = hashlib.sha256(json.dumps(head, sort_keys=True).encode())
    for j, frame in enumerate(frames):
        if frame is None:
            h.update(b"none")
            continue
        check_frame(frame, f"frames[{j}]", ["user_idx", "item_idx"])
        cols = [c for c in _COLUMNS if c in frame.columns]
        h.update(json.dumps([cols, len(frame)]).encode())
        rows = frame[cols].to_numpy(dtype=np.float64)  # ids and timestamps exact below 2**53
        h.update(np.ascontiguousarray(rows).tobytes())
    return h.hexdigest()


def cached_fit(model, train: pd.DataFrame, valid: pd.DataFrame | None = None, folder=None):
    """``model.fit(train)`` (or ``model.fit(train, valid)``), read from the cache if this
    model was already fitted on these rows with these settings.

    Args:
        model: an unfitted model whose settings are numbers, strings or tuples of them
            (every model of :mod:`recsys_ref.models` built from ids and a config).
        train: the training frame; valid: optional validation frame (early stopping).
        folder: the cache folder (default ``data_home() / "models"``).

    Returns:
        ``model`` itself after a fit, or the copy read from the cache (a different
        object). Its ``fit_seconds_`` is the wall time of the fit that produced
        it, so a table of fit times reads the same whether or not the cache was used.
        See the chapter "Matrix factorization".
    """
    key = model_key(model, train, valid)
    path = Path(folder) if folder is not None else data_home() / "models"
    path = path / f"{type(model).__name__}-{key[:32]}.pt"
    with locked(path):  # another process fitting the same key finishes first
        fitted = _read(path, type(model))
        if fitted is not None:
            return fitted
        t0 = time.perf_counter()
        model.fit(train) if valid is None else model.fit(train, valid)
        model.fit_seconds_ = time.perf_counter() - t0
        buf = io.BytesIO()
        torch.save(model, buf)
        write_checked(path, buf.getvalue())
    return model


def _read(path: Path, cls: type):
    """The model cached at ``path`` if it is intact and of class ``cls``, else ``None``
    (a corrupted or stale file is removed)."""
    if not path.exists():
        return None
    try:
        data = read_checked(path)  # ValueError on a corrupted or half-written file
        fitted = torch.load(io.BytesIO(data), weights_only=False)
        if type(fitted) is cls:
            return fitted
    except ValueError:
        pass
    except Exception:  # noqa: BLE001 - e.g. a class that no longer unpickles: refit
        pass
    remove_checked(path)
    return None

