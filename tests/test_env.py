"""environment.yml and pyproject.toml list the same packages; the torch pin is the Makefile's."""

import re
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
