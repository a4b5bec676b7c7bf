"""environment.yml and pyproject.toml list the same packages; the torch pin is the Makefile's;
`make book`'s chapter runner reports where the time goes."""

import re
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~ \[]", req, maxsplit=1)[0].lower().replace("_", "-")


def test_environment_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        wanted += extra
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = [p for p in pip if not p.startswith("-e")]
    assert "python=3.11" in env["dependencies"]
    assert sorted(map(_name, listed)) == sorted(map(_name, wanted))
    specs = {_name(p): p.replace(" ", "") for p in listed}
    for req in wanted:
        if _name(req) == "torch":
            continue  # pinned below
        assert specs[_name(req)] == req.replace(" ", ""), req


def test_torch_pin_is_the_same_everywhere():
    pin = "torch==2.13.0"
    assert pin in (ROOT / "Makefile").read_text()
    env = (ROOT / "environment.yml").read_text()
    assert f"- {pin}" in env


def test_execute_chapters_reports_its_slowest_cells():
    """``make book`` prints each executed chapter's slowest cells, from nbclient's timestamps,
    and stores the notebook without them."""
    import importlib.util

    import nbformat

    spec = importlib.util.spec_from_file_location(
        "execute_chapters", Path(__file__).with_name("execute_chapters.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    nb = nbformat.v4.new_notebook()
    stamps = [("2026-12-02T08:00:00.000Z", "2026-12-02T08:00:01.500Z"),
              ("2026-12-02T08:00:01.600Z", "2026-12-02T08:01:01.600Z")]
    nb.cells = [nbformat.v4.new_markdown_cell("text")]
    for n, (start, end) in enumerate(stamps):
        cell = nbformat.v4.new_code_cell(f"# a comment\nx{n} = {n}")
        cell.metadata["execution"] = {"iopub.execute_input": start, "shell.execute_reply": end}
        nb.cells.append(cell)
    assert module.cell_seconds(nb) == [(2, 60.0, "x1 = 1"), (1, 1.5, "x0 = 0")]
    assert all("execution" not in c.metadata for c in nb.cells)


def test_site_build_loads_the_local_extension(monkeypatch):
    """Named in local_extensions only, the extension would be dropped: the book's own list of
    extensions replaces Jupyter Book's, which local_extensions appends to."""
    from jupyter_book.config import get_final_config

    monkeypatch.setattr(sys, "path", list(sys.path))  # get_final_config appends _ext
    config, _ = get_final_config(user_yaml=ROOT / "_config.yml", sourcedir=ROOT,
                                 cli_config={"latex_individualpages": False})
    assert "autoapi_no_dependencies" in config["extensions"]
    import autoapi_no_dependencies  # importable from the path Jupyter Book added
    from astroid import MANAGER

    monkeypatch.setattr(MANAGER, "module_denylist", set())
    autoapi_no_dependencies.setup(None)
    assert {"torch", "numpy", "pandas"} <= MANAGER.module_denylist
