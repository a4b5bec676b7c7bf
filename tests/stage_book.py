"""Stage a copy of the book whose chapters are the notebooks the chapter tests executed.

    python tests/stage_book.py _build/smoke _build/smoke_book

Every chapter with code cells is replaced by its executed ``.ipynb`` (SMOKE settings), and
execution is switched off, so ``jupyter-book build --all -W -n`` renders real outputs (glue
values resolve) without running any chapter a third time.
"""

import shutil
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def has_code(md: Path) -> bool:
    return "```{code-cell}" in md.read_text()


def main(executed: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    (out / "chapters").mkdir(parents=True)
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = "off"
    config["exclude_patterns"] = [p for p in config["exclude_patterns"] if p != "**.ipynb"]
    (out / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    for name in ("_toc.yml", "references.bib"):
        shutil.copy(ROOT / name, out / name)
    shutil.copytree(ROOT / "_static", out / "_static")  # the site's CSS and favicon
    shutil.copytree(ROOT / "_ext", out / "_ext")  # the build's local Sphinx extension
    (out / "recsys_ref").symlink_to(ROOT / "recsys_ref")  # for the API reference pages
    missing = []
    for md in sorted((ROOT / "chapters").glob("*.md")):
        if has_code(md):
            nb = executed / f"{md.stem}.ipynb"
            if not nb.exists():
                missing.append(nb)
                continue
            shutil.copy(nb, out / "chapters" / nb.name)
        else:
            shutil.copy(md, out / "chapters" / md.name)
    # pages without code (the results page) glue values from other chapters as
    # ``{glue:text}`chapter.md::key```: here those chapters are executed notebooks
    staged = {nb.stem for nb in (out / "chapters").glob("*.ipynb")}
    for page in (out / "chapters").glob("*.md"):
        text = page.read_text()
        for stem in staged:
            text = text.replace(f"{stem}.md::", f"{stem}.ipynb::")
        page.write_text(text)
    for extra in (ROOT / "chapters").iterdir():  # figures and other assets
        if extra.is_file() and extra.suffix not in {".md", ".ipynb"}:
            shutil.copy(extra, out / "chapters" / extra.name)
    if missing:
        sys.exit(f"not executed yet (run the chapter tests first): {missing}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
