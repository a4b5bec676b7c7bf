"""Execute every chapter at SMOKE settings, assert its claims, and check it reproduces.

For each chapter in ``_toc.yml``: jupytext converts the MyST source into ``_build/smoke``,
papermill executes it with ``-p SMOKE True`` (the executed notebook is kept and later staged
for the strict book build), the test below asserts the claims its prose makes from the values
it recorded with ``glue``, and ``pytest --nbval-lax`` re-executes the executed notebook so the
cells marked ``# NBVAL_CHECK_OUTPUT`` must reproduce exactly.
"""

import subprocess
import sys
from collections.abc import Callable

import pytest
from chapter_runner import BUILD, ROOT, chapters_in_toc, execute, glued

pytestmark = pytest.mark.chapters

CLAIMS: dict[str, Callable[[dict], None]] = {}
_EXECUTED = {}


def claims(stem: str):
    """Register the function that asserts a chapter's claims from its glued values."""

    def register(check):
        CLAIMS[stem] = check
        return check

    return register


def executed(stem: str):
    if stem not in _EXECUTED:
        _EXECUTED[stem] = execute(stem)
    return _EXECUTED[stem]


@claims("introduction")
def introduction(g):
    assert (g["n_ratings"], g["n_users"], g["n_items"]) == (100_000, 943, 1682)
    assert g["density_pct"] == pytest.approx(6.30, abs=0.01)
    assert g["min_user_ratings"] == 20
    assert g["n_test_users"] == 943  # leave-last-out: one test item per user
    assert g["top10_share"] > 30  # "a long tail": the top 10% of items have > 30% of ratings
    assert g["temporal_cold_users"] > 0
    # OBD: clicks are rare under both logging policies (< 1%)
    assert 0 < g["obd_ctr_random"] < 1 and 0 < g["obd_ctr_bts"] < 1
    # popularity: full-ranking numbers in the range published for this split (RecBole-style
    # leave-last-out, popularity NDCG@10 ~0.044), and the bootstrap interval brackets the mean
    assert 0.03 < g["pop_full_ndcg10"] < 0.06
    assert g["pop_ndcg10_low"] < g["pop_full_ndcg10"] < g["pop_ndcg10_high"]
    # "sampling inflates the hit rate several-fold"
    assert g["sampled_inflation"] > 3
    assert g["pop_sampled_ndcg10"] > 3 * g["pop_full_ndcg10"]
    assert g["pop_coverage10"] < 0.1


def test_every_chapter_has_claims():
    assert set(chapters_in_toc()) == set(CLAIMS), "a chapter without asserted claims"


@pytest.mark.parametrize("stem", chapters_in_toc())
def test_chapter_claims(stem):
    CLAIMS[stem](glued(executed(stem)))


@pytest.mark.parametrize("stem", chapters_in_toc())
def test_chapter_reproduces(stem):
    notebook = executed(stem)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
         "--nbval-current-env", "--rootdir", str(BUILD), str(notebook)],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
