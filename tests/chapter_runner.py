"""Execute a chapter at SMOKE settings and read the values it recorded with myst-nb ``glue``."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "_build" / "smoke"


def chapters_in_toc() -> list[str]:
    """Stems of every chapter listed in ``_toc.yml`` that has code cells, in book order."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    stems = []
    for f in files:
        md = ROOT / f"{f}.md"
        if md.exists() and "```{code-cell}" in md.read_text():
            stems.append(md.stem)
    return stems


def execute(stem: str, build: Path = BUILD) -> Path:
    """jupytext the chapter into ``build`` (default ``_build/smoke``), execute it with papermill
    (``SMOKE=True``); the kernel inherits this process's environment."""
    run = start(stem, build)
    if run.wait() != 0:
        raise subprocess.CalledProcessError(run.returncode, run.args)
    return build / f"{stem}.ipynb"


def start(stem: str, build: Path, tree: Path = ROOT, env: dict | None = None,
          smoke: bool = True) -> subprocess.Popen:
    """jupytext ``tree``'s chapter into ``build`` and start papermill on it (the caller
    waits), in ``tree/chapters``, with ``env`` (default: this process's environment)."""
    build.mkdir(parents=True, exist_ok=True)
    raw, out = build / f"{stem}.raw.ipynb", build / f"{stem}.ipynb"
    out.unlink(missing_ok=True)
    py = sys.executable
    subprocess.run([py, "-m", "jupytext", "--to", "ipynb", "-q", "-o", str(raw),
                    str(tree / "chapters" / f"{stem}.md")], check=True, env=env)
    return subprocess.Popen([py, "-m", "papermill", str(raw), str(out), "-p", "SMOKE", str(smoke),
                             "--cwd", str(tree / "chapters"), "--kernel", "python3",
                             "--no-progress-bar", "--log-level", "WARNING"], env=env)


def glued(notebook: Path) -> dict:
    """Every ``glue(name, value)`` of an executed notebook, parsed back to Python values."""
    values = {}
    for cell in json.loads(notebook.read_text())["cells"]:
        for output in cell.get("outputs", []):
            meta = output.get("metadata", {}).get("scrapbook")
            if not meta:
                continue
            data = output["data"]
            text = data.get("text/plain", data.get("application/papermill.record/text/plain"))
            try:
                values[meta["name"]] = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                values[meta["name"]] = text
    return values
