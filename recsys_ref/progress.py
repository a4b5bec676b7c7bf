"""Progress bars for people watching: shown in a terminal or a Jupyter front end, never in the book.

Every loop of the package that takes a ``progress`` flag wraps its iterable with
:func:`progress_bar`. A bar is drawn only when the flag is on *and* someone can see it: a
terminal, or a notebook kernel driven by a front end (JupyterLab, VS Code, ...). A kernel
executed by papermill, nbclient or ``jupyter-book build`` has no front end, so the executed
notebooks, and the pages rendered from them, keep no bar.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from tqdm.std import tqdm


def interactive() -> bool:
    """Whether a person can watch a progress bar in this process.

    In a Jupyter kernel: whether the cell running now was sent by a front end that can answer
    ``input()`` (``allow_stdin``); papermill, nbclient and jupyter-book execute with stdin off.
    Elsewhere: whether stderr, where tqdm writes, is a terminal.
    """
    shell = sys.modules.get("IPython")
    shell = shell.get_ipython() if shell is not None else None
    kernel = getattr(shell, "kernel", None)
    if kernel is not None:
        return bool(getattr(kernel, "_allow_stdin", False))
    return sys.stderr is not None and sys.stderr.isatty()


def progress_bar(iterable: Iterable, progress: bool, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)``, disabled unless ``progress`` is on and :func:`interactive`.

    Args:
        iterable: what the loop iterates over.
        progress: the caller's ``progress`` flag (off by default everywhere in the package).
        **kwargs: passed to ``tqdm`` (``desc``, ``total``, ``leave``, ...).
    """
    return tqdm(iterable, disable=not (progress and interactive()), **kwargs)
