"""The Open Bandit Dataset sample (Saito et al. 2021): real logged bandit feedback.

ZOZOTOWN's fashion e-commerce logs, 10,000 impressions per policy and campaign, for two
logging policies: uniform ``random`` and Bernoulli Thompson sampling (``bts``). The sample
ships inside the ``obp==0.4.1`` wheel on PyPI, which we download with
``pip download --no-deps`` and read with :mod:`zipfile` (never installed).
See the chapters "Introduction and data" and "Exploration".
"""

from __future__ import annotations

import pandas as pd

from recsys_ref.data.cache import obtain, wheel_source

OBP = "obp==0.4.1"
POLICIES = ("random", "bts")
CAMPAIGNS = ("all", "men", "women")
OBD_FILES = {
    "bts/all/all.csv": "0ad874e4dbf6902f0845dd478ad8dde5ef6903583d3ffaace78411bdad064106",
    "bts/all/item_context.csv":
        "5d4359ba1cfa3ae88f0f1bae66bd633859fe6323817183632ee57b83539d9153",
    "bts/men/item_context.csv":
        "3b411ed6b0471316321a6b93f4f756bb25888eac6218cd71d0b603d41d85732d",
    "bts/men/men.csv": "db6d1f7ed2d591ba521533e45286d4c1fba7fe57a8ad2e80342210335f43c527",
    "bts/women/item_context.csv":
        "a56295bad066a558eb783055afd9279f5f4e209a4776eafc22151c53f0ac89d4",
    "bts/women/women.csv": "e5d1b49a39b608585a2f3014a3f54970430cd37a495c1b73fceb85cdf428a5b8",
    "random/all/all.csv": "7168295b6e0a9eabcf3392320a5dd434e542b68e705d5cd9491499af589812f1",
    "random/all/item_context.csv":
        "eba04cc23d5f130a93ff174c5392986882b94c3839433cb8143870eaa6221358",
    "random/men/item_context.csv":
        "6d855c2b7e917d0448d71bbe62c023147495882c0fdc8c41e86fef86abf9fe09",
    "random/men/men.csv": "ede6d08c6877f99cd3770f7d09e26c738e6aa6de4445ccccfb1356ba5d06b1eb",
    "random/women/item_context.csv":
        "b1ca4905f97703d196004f2ad4552c1e90c2afad8b50688d333b0d2dc0b33147",
    "random/women/women.csv": "e65f3bd3beb17664fa69cc129bf7bf852a775f8ffa630506e505fc905315bb34",
}
HINT = ("You can: check that pip can reach PyPI (`pip download --no-deps obp==0.4.1`), or "
        "point the RECSYS_REF_DATA environment variable at a folder that already holds it.")


def open_bandit_folder(report=None):
    """Fetch (if needed) the Open Bandit Dataset sample; return its cache folder.

    ``report`` is called with a line before each fetch is tried (see
    :func:`recsys_ref.data.cache.obtain`).
    """
    members = {rel: f"obp/dataset/obd/{rel}" for rel in OBD_FILES}
    folder, _ = obtain("the Open Bandit Dataset sample", [
        ("obd", f"`pip download --no-deps {OBP}`", OBD_FILES, wheel_source(OBP, members))
    ], HINT, report)
    return folder


def load_open_bandit(policy: str = "random", campaign: str = "all"):
    """Load one policy's logs of one campaign.

    Args:
        policy: ``"random"`` (uniform logging) or ``"bts"`` (Bernoulli Thompson sampling).
        campaign: ``"all"``, ``"men"`` or ``"women"``.

    Returns:
        ``(logs, item_context)``: ``logs`` has one row per impression with ``timestamp``
        (UTC), ``item_id``, ``position`` (1-3), ``click`` (0/1), ``propensity_score`` (the
        logging policy's probability of that item at that position), ``user_feature_0..3``
        (hashed categories) and ``user-item_affinity_<item>``; ``item_context`` has
        ``item_id`` and ``item_feature_0..3``.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if campaign not in CAMPAIGNS:
        raise ValueError(f"campaign must be one of {CAMPAIGNS}, got {campaign!r}")
    folder = open_bandit_folder() / policy / campaign
    logs = pd.read_csv(folder / f"{campaign}.csv", index_col=0)
    logs["timestamp"] = pd.to_datetime(logs["timestamp"], utc=True)
    item_context = pd.read_csv(folder / "item_context.csv", index_col=0)
    return logs, item_context
