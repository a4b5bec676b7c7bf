"""recsys_ref.progress: bars only where someone watches (terminal or a Jupyter front end)."""

import sys
import types

from recsys_ref.progress import interactive, progress_bar


def fake_ipython(monkeypatch, allow_stdin):
    kernel = types.SimpleNamespace(_allow_stdin=allow_stdin)
    shell = types.SimpleNamespace(kernel=kernel)
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))


def test_kernel_without_front_end_draws_no_bar(monkeypatch):
    # papermill, nbclient and jupyter-book execute with stdin off
    fake_ipython(monkeypatch, allow_stdin=False)
    assert not interactive()
    assert progress_bar(range(3), True).disable


def test_kernel_with_front_end_draws_the_bar_only_when_asked(monkeypatch):
    fake_ipython(monkeypatch, allow_stdin=True)
    assert interactive()
    assert not progress_bar(range(3), True, file=sys.stdout).disable
    assert progress_bar(range(3), False).disable


def test_outside_jupyter_a_terminal_decides(monkeypatch):
    monkeypatch.setitem(sys.modules, "IPython", None)
    monkeypatch.setattr(sys, "stderr", types.SimpleNamespace(isatty=lambda: False))
    assert not interactive()
    monkeypatch.setattr(sys, "stderr", types.SimpleNamespace(isatty=lambda: True))
    assert interactive()


def test_the_bar_iterates_everything(monkeypatch):
    fake_ipython(monkeypatch, allow_stdin=False)
    assert list(progress_bar(range(4), True, desc="x")) == [0, 1, 2, 3]
