"""The logger of the unified loop: every impression and onboarding answer, as a DataFrame.

One row per shown item (``kind="slate"``) or asked question (``kind="answer"``), with the
day, the user, the position, the item, the propensity of the policy's draw (NaN when the
logger does not record propensities, or for questions), the click (or the answer), the true
click probability of that impression (known to the simulator only, kept for analysis; a
system must never read it) and the version of the deployed model. See the chapter "The
unified loop".
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

COLUMNS = ["day", "user_idx", "new_visit", "kind", "position", "item_idx", "propensity",
           "label", "p_true", "version"]


class Logger:
    """Collects rows day by day; ``frame()`` is the log so far.

    Args:
        propensities: record the serving policy's propensities (an off-policy gate needs them).
    """

    def __init__(self, propensities: bool = True):
        self.propensities = bool(propensities)
        self._parts: list[pd.DataFrame] = []
        self._frame: pd.DataFrame | None = None

    def log(self, day: int, users: torch.Tensor, new_visit: torch.Tensor, kind: str,
            items: torch.Tensor, labels: torch.Tensor, p_true: torch.Tensor,
            propensities: torch.Tensor | None = None, version: int = 0) -> None:
        """Add a day's ``(b, m)`` block: ``items``, ``labels``, ``p_true`` and (slates only)
        ``propensities``, for ``users`` ``(b,)`` with their ``new_visit`` ``(b,)``."""
        b, m = items.shape
        if not labels.shape == p_true.shape == (b, m) or users.shape != (b,):
            raise ValueError("users (b,), items, labels and p_true (b, m) must agree")
        prop = np.full(b * m, np.nan)
        if propensities is not None and self.propensities:
            prop = propensities.reshape(-1).double().numpy()
        self._parts.append(pd.DataFrame({
            "day": np.full(b * m, day), "user_idx": users.repeat_interleave(m).numpy(),
            "new_visit": new_visit.repeat_interleave(m).numpy(), "kind": kind,
            "position": np.tile(np.arange(m), b) if kind == "slate" else -1,
            "item_idx": items.reshape(-1).numpy(), "propensity": prop,
            "label": labels.reshape(-1).double().numpy(),
            "p_true": p_true.reshape(-1).double().numpy(), "version": version}))
        self._frame = None

    def frame(self) -> pd.DataFrame:
        """Every row logged so far (columns :data:`COLUMNS`)."""
        if self._frame is None:
            self._frame = (pd.concat(self._parts, ignore_index=True) if self._parts
                           else pd.DataFrame({c: [] for c in COLUMNS}))
        return self._frame
