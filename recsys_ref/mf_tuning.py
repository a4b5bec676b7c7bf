"""The validation searches of the chapter "Matrix factorization", callable by later chapters.

Each search states its space and its protocol here, once: the chapter "Matrix
factorization" runs them and shows their tables, and every later chapter that uses one of
these models asks the same function for its setting instead of retyping it. The fits go
through :func:`recsys_ref.model_cache.cached_fit` (by :func:`recsys_ref.tuning.search`),
so when the matrix-factorization chapter ran first a later chapter refits nothing, and when
it did not, the later chapter runs the same search and gets the same answer.

Protocols (the test data is never touched):

- explicit :class:`recsys_ref.models.mf.BiasedMF` (ALS): fit on 90% of one fold's training
  ratings, RMSE on the other 10% (:func:`recsys_ref.splits.random_split`); the number of
  sweeps by early stopping on that RMSE. Each of u1..u5 gets its own search: a fold's
  training data holds the other folds' test ratings, so a setting chosen on u1 would have
  seen the test ratings of u2..u5.
- implicit models (BPR, iALS, EASE, ItemKNN): leave-last-out
  (:func:`recsys_ref.splits.leave_last_out`), fit on the training interactions, NDCG@10 of
  the validation item under full ranking with the training items excluded; BPR's epochs and
  iALS's sweeps by early stopping on that NDCG@10.
"""

from __future__ import annotations

import pandas as pd

from recsys_ref.evaluation import evaluate_ranking, evaluate_ratings
from recsys_ref.models import BPR, EASE, IALS, BiasedMF, ItemKNN
from recsys_ref.splits import leave_last_out, random_split, u_fold
from recsys_ref.tuning import best_config, grid, random_configs, search

IMPLICIT_MODELS = ("BPR", "iALS", "EASE", "ItemKNN")


def explicit_space(smoke: bool = False) -> tuple[list[dict], dict]:
    """The configurations of BiasedMF's search and the settings they share.

    The penalty of a user is :math:`\\lambda n_u^{\\nu}`, so a good :math:`\\lambda` shrinks
    as :math:`\\nu` grows; each :math:`\\nu` gets the :math:`\\lambda` values that give a user
    with about 100 ratings a comparable penalty (100 ** 0.5 = 10 between neighbouring rows).

    Returns:
        The configurations (of ``nu``, ``reg`` and ``reg_bias``) and, second, the settings
        they share (solver, factors, maximum sweeps, patience).
    """
    regs = {0.0: (5.0, 15.0), 0.5: (0.5, 1.25), 1.0: (0.05, 0.15)}
    if smoke:
        regs = {0.0: (15.0,), 0.5: (1.25,), 1.0: (0.15,)}
    biases = (0.5,) if smoke else (0.5, 2.0)
    configs = [{"nu": nu, "reg": reg, "reg_bias": rb}
               for nu, values in regs.items() for reg in values for rb in biases]
    fixed = {"solver": "als", "n_factors": 32 if smoke else 100, "n_epochs": 4 if smoke else 10,
             "patience": 2}
    return configs, fixed


def implicit_space(name: str, smoke: bool = False, seed: int = 0) -> tuple[list[dict], dict]:
    """The configurations searched for one implicit model and the settings they share
    (a pair, as :func:`explicit_space` returns).

    Args:
        name: one of ``"BPR"``, ``"iALS"``, ``"EASE"``, ``"ItemKNN"``.
        smoke: the small space the tests run.
        seed: seeds the sample of iALS's grid that SMOKE searches.
    """
    if name == "BPR":  # (optimizer, step size) pairs: each optimizer at the steps it suits,
        # crossed with lambda from 1e-3 to 1e-2 (the default of the implicit library's BPR)
        steps = ((("adam", 0.01), ("adagrad", 0.1), ("sgd", 0.05)) if smoke else
                 (("adam", 0.003), ("adam", 0.01), ("adagrad", 0.1), ("adagrad", 0.2),
                  ("sgd", 0.05), ("sgd", 0.1)))
        configs = [{"optimizer": o, "lr": lr, "reg": reg} for o, lr in steps
                   for reg in ((1e-3,) if smoke else (1e-3, 1e-2))]
        fixed = {"n_factors": 32 if smoke else 64, "n_negatives": 1, "batch_size": 4096,
                 "n_epochs": 8 if smoke else 60, "eval_every": 1, "patience": 5}
    elif name == "iALS":  # the full grid at full size, a seeded sample of it under SMOKE
        space = {"n_factors": (32,) if smoke else (64, 128), "reg": (1e-3, 3e-3, 1e-2),
                 "alpha0": (0.3, 1.0)}
        configs = random_configs(space, n=2 if smoke else 12, seed=seed)
        fixed = {"n_epochs": 8 if smoke else 20, "patience": 3}
    elif name == "EASE":
        configs = grid(lam=(100, 300) if smoke else (10, 30, 100, 300, 1000, 3000))
        fixed = {}
    elif name == "ItemKNN":
        configs = grid(k=(10, 20) if smoke else (5, 10, 20, 50, 100),
                       shrinkage=(0,) if smoke else (0, 20))
        fixed = {}
    else:
        raise ValueError(f"name must be one of {IMPLICIT_MODELS}, got {name!r}")
    return configs, fixed


def explicit_search(ratings: pd.DataFrame, n_users: int, n_items: int, *,
                    smoke: bool = False, seed: int = 0, fold: int = 1) -> pd.DataFrame:
    """BiasedMF's search on the training data of u-fold ``fold`` (see the module's
    protocol): one row per configuration with its validation RMSE and MAE and its
    early-stopping sweep ``best_epoch_``."""
    configs, fixed = explicit_space(smoke)
    fit_part, valid_part = random_split(u_fold(ratings, fold)[0], test_size=0.1, seed=seed)
    return search(lambda **c: BiasedMF(n_users, n_items, seed=seed, **(fixed | c)), configs,
                  fit_part, lambda m: evaluate_ratings(m, valid_part), metric="RMSE",
                  higher_is_better=False, valid=valid_part, record=("best_epoch_",))


def implicit_search(name: str, ratings: pd.DataFrame, n_users: int, n_items: int, *,
                    smoke: bool = False, seed: int = 0) -> pd.DataFrame:
    """One implicit model's search (see the module's protocol): one row per configuration
    with its validation HR@10 and NDCG@10 (and ``best_epoch_`` for BPR and iALS)."""
    configs, fixed = implicit_space(name, smoke, seed)
    train, valid, _ = leave_last_out(ratings)
    cls = {"BPR": BPR, "iALS": IALS, "EASE": EASE, "ItemKNN": ItemKNN}[name]
    if cls in (BPR, IALS):
        fixed = fixed | {"seed": seed}
        stop, record = valid, ("best_epoch_",)
    else:
        stop, record = None, ()
    return search(lambda **c: cls(n_users, n_items, **(fixed | c)), configs, train,
                  lambda m: evaluate_ranking(m, valid, exclude=train, ks=(10,)),
                  metric="NDCG@10", valid=stop, record=record)


def chosen(table: pd.DataFrame, fixed: dict) -> dict:
    """The setting a chapter fits with, read from a search table: the best configuration,
    the shared settings that matter without validation data, and, for a model stopped early,
    the best epoch as its number of epochs (no ``patience``: a final fit has no validation
    data)."""
    config = best_config(table)
    keep = {k: v for k, v in fixed.items() if k not in ("n_epochs", "patience", "eval_every")}
    if "best_epoch_" in table.columns:
        j = next(j for j, c in enumerate(table.attrs["configs"]) if c == config)
        keep["n_epochs"] = int(table["best_epoch_"].iloc[j])
    return keep | config


def mf_settings(ratings: pd.DataFrame, n_users: int, n_items: int, *, smoke: bool = False,
                seed: int = 0, fold: int = 1) -> dict:
    """BiasedMF's setting for u-fold ``fold``, chosen by :func:`explicit_search` on that
    fold's training data (keyword arguments of :class:`recsys_ref.models.mf.BiasedMF`,
    ``seed`` excluded)."""
    table = explicit_search(ratings, n_users, n_items, smoke=smoke, seed=seed, fold=fold)
    return chosen(table, explicit_space(smoke)[1])


def implicit_settings(ratings: pd.DataFrame, n_users: int, n_items: int, *,
                      models=IMPLICIT_MODELS, smoke: bool = False, seed: int = 0) -> dict:
    """``{name: keyword arguments}`` chosen by :func:`implicit_search` for each of ``models``
    (``seed`` excluded), e.g. ``IALS(n_users, n_items, seed=0, **settings["iALS"])``."""
    out = {}
    for name in models:
        table = implicit_search(name, ratings, n_users, n_items, smoke=smoke, seed=seed)
        out[name] = chosen(table, implicit_space(name, smoke, seed)[1])
    return out
