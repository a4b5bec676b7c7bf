"""Fill Jupyter Book's execution cache with every chapter, ``--jobs`` chapters at a time.

``make book`` runs this before ``jupyter-book build``: Jupyter Book executes notebooks one
after another, but with its cache already holding every chapter the build only reads them
back ("Using cached notebook"). The cache behaviour stays Jupyter Book's own: a chapter is
looked up the way myst-nb looks it up (the same reader, the same jupyter-cache hash of its
code cells), executed only when its code changed or it was never run, with the same
working directory, timeout and error rule as the build, and stored the way myst-nb stores
it. An unchanged book is therefore not executed again by either step. Each executed chapter's
slowest code cells are printed (and every cell's seconds kept in its cache record), so the
log of a build says where its time went.

Usage: ``python tests/execute_chapters.py [BOOK_ROOT] [--jobs 2]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from pathlib import Path

import yaml
from jupyter_cache import get_cache
from jupyter_cache.base import CacheBundleIn
from jupyter_cache.executors.utils import single_nb_execution
from myst_nb.core.read import read_myst_markdown_notebook
from myst_parser.config.main import MdParserConfig

# Seconds each chapter took at full settings in the last full `make book` with empty execution
# and model caches on the book's 2-core machine (one thread per kernel); only the order of
# execution depends on them.
EXPECTED_SECONDS = {"own_data": 363, "deep_recommenders": 347, "few_shot": 282,
                    "pretraining": 276, "exploration": 186, "unified_loop": 153,
                    "collaborative_filtering": 133, "active_selection": 97,
                    "matrix_factorization": 35, "item_item_top_n": 13, "introduction": 8}
# Started before the others: the pretraining chapter runs the encoder search that the few-shot
# and exploration chapters read back (a chapter that reached the search while another one ran
# it would wait on the cache lock, leaving a core idle), next to the own-data appendix, which
# shares with the others only the matrix factorization chapter's iALS search: it runs that
# search in its first minute, long before the pretraining chapter reads it back.
FIRST = ("pretraining", "own_data")
SLOWEST = 3  # cells whose seconds are reported per executed chapter


def chapters(root: Path) -> list[Path]:
    """The ``.md`` files listed in ``_toc.yml`` that have code cells, in book order."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    entries = [toc.get("root")] if toc.get("root") else []
    for part in toc.get("parts", []):
        entries += [c["file"] for c in part.get("chapters", [])]
    entries += [c["file"] for c in toc.get("chapters", [])]
    paths = [root / f"{e}.md" for e in entries if e]
    return [p for p in paths if p.exists() and "```{code-cell}" in p.read_text()]


def settings(root: Path) -> dict:
    """The execution settings of ``_config.yml`` (with Jupyter Book's defaults)."""
    book = yaml.safe_load((root / "_config.yml").read_text())
    execute = book.get("execute", {}) or {}
    cache = execute.get("cache") or str(root / "_build" / ".jupyter_cache")
    extensions = (book.get("parse", {}) or {}).get("myst_enable_extensions", [])
    return {"cache": cache, "timeout": execute.get("timeout", 30),
            "allow_errors": bool(execute.get("allow_errors", False)),
            "extensions": list(extensions)}


def read(path: Path, config: dict):
    """The notebook myst-nb builds from a MyST-markdown file (its reader, the book's MyST
    extensions)."""
    md = MdParserConfig(enable_extensions=set(config["extensions"]))
    return read_myst_markdown_notebook(path.read_text(), md, add_source_map=True, path=path)


def execute_one(path: str, config: dict) -> tuple[str, float, str | None, list]:
    """Execute one chapter into the cache unless it is there already: (path, seconds, error,
    its slowest cells)."""
    cache = get_cache(config["cache"])
    nb = read(Path(path), config)
    try:
        cache.match_cache_notebook(nb)
        return path, 0.0, None, []  # unchanged since it was executed
    except KeyError:
        pass
    result = single_nb_execution(nb, cwd=str(Path(path).parent), timeout=config["timeout"],
                                 allow_errors=config["allow_errors"], meta_override=True,
                                 record_timing=True)
    if result.err is not None:
        return path, result.time, result.exc_string, []
    cells = cell_seconds(nb)
    cache.cache_notebook_bundle(CacheBundleIn(nb, path, data={"execution_seconds": result.time,
                                                              "cell_seconds": cells}),
                                check_validity=False, overwrite=True)
    return path, result.time, None, cells[:SLOWEST]


def cell_seconds(nb) -> list[tuple[int, float, str]]:
    """(code cell number from 1, seconds, first line), slowest first, from the timestamps
    nbclient records; they are removed from the notebook, which is stored without them as
    myst-nb would store it."""
    cells = []
    code = [c for c in nb.cells if c.cell_type == "code"]
    for number, cell in enumerate(code, 1):
        stamps = cell.metadata.pop("execution", {})
        start, end = stamps.get("iopub.execute_input"), stamps.get("shell.execute_reply")
        if start and end:
            seconds = (datetime.fromisoformat(end.replace("Z", "+00:00"))
                       - datetime.fromisoformat(start.replace("Z", "+00:00"))).total_seconds()
            first = next((line for line in cell.source.splitlines()
                          if line.strip() and not line.startswith("#")), "")
            cells.append((number, round(seconds, 1), first[:60]))
    return sorted(cells, key=lambda c: -c[1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", nargs="?", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("--jobs", type=int, default=2, help="chapters executed at once")
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()
    config = settings(root)
    cache = get_cache(config["cache"])  # created here, once, before the workers open it
    # FIRST, then longest first (by the last recorded run time, else by EXPECTED_SECONDS), so
    # that the lanes end together; a chapter that reuses an earlier one's fits
    # (recsys_ref.model_cache) and starts first fits them itself, and the other then waits for
    # them on the cache lock
    last = {r.uri: r.data.get("execution_seconds", 0) for r in cache.list_cache_records()}
    todo = sorted(chapters(root), key=lambda p: (p.stem not in FIRST, -(
        last.get(str(p)) or EXPECTED_SECONDS.get(p.stem, 0))))
    t0, failed = time.perf_counter(), []
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        jobs = [pool.submit(execute_one, str(p), config) for p in todo]
        for job in jobs:
            path, seconds, error, slowest = job.result()
            name = Path(path).stem
            if error:
                failed.append(name)
                print(f"{name}: FAILED after {seconds:.0f} s\n{error}", file=sys.stderr)
            else:
                print(f"{name}: " + (f"executed in {seconds:.0f} s" if seconds
                                     else "unchanged, from the cache"))
                for number, cell_s, first in slowest:
                    print(f"    code cell {number}: {cell_s:.0f} s  {first}")
    print(f"{len(todo)} chapters in {time.perf_counter() - t0:.0f} s, {args.jobs} at a time")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
