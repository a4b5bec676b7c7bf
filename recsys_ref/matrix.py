"""Dense user-item matrices built from a ratings frame.

MovieLens-100K's 943 x 1,682 matrix has 1.6M cells, so dense tensors are both the simplest
and the fastest representation on a CPU; a larger catalogue would need sparse ones.
"""

from __future__ import annotations

import pandas as pd
import torch

from recsys_ref.checks import check_frame, check_index


def column(df: pd.DataFrame, name: str, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """A frame column as a tensor (a copy: pandas hands out read-only arrays)."""
    return torch.tensor(df[name].to_numpy(), dtype=dtype)


def interaction_mask(df: pd.DataFrame, n_users: int, n_items: int) -> torch.Tensor:
    """``(n_users, n_items)`` bool tensor, True where the user interacted with the item."""
    check_frame(df, "df", ["user_idx", "item_idx"])
    check_index(df["user_idx"].to_numpy(), "df.user_idx", n_users)
    check_index(df["item_idx"].to_numpy(), "df.item_idx", n_items)
    mask = torch.zeros(n_users, n_items, dtype=torch.bool)
    mask[column(df, "user_idx"), column(df, "item_idx")] = True
    return mask


def rating_matrix(df: pd.DataFrame, n_users: int, n_items: int) -> torch.Tensor:
    """``(n_users, n_items)`` float tensor of ratings, 0 where unrated (see ``interaction_mask``).

    A repeated (user, item) pair keeps its last rating in frame order.
    """
    check_frame(df, "df", ["user_idx", "item_idx", "rating"])
    check_index(df["user_idx"].to_numpy(), "df.user_idx", n_users)
    check_index(df["item_idx"].to_numpy(), "df.item_idx", n_items)
    r = torch.zeros(n_users, n_items)
    r[column(df, "user_idx"), column(df, "item_idx")] = column(df, "rating", torch.float32)
    return r
