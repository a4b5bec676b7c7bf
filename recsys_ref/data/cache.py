"""Where data lives, how it is fetched, and how it is checked.

Data sets are cached under ``RECSYS_REF_DATA`` (default ``~/.cache/recsys_ref``). Every file
is written to a temporary name in the same folder and moved into place only once complete
and verified, so an interrupted run never leaves a half-written file behind.
See the chapter "Introduction and data".
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

# how long a package index may take to serve one wheel before we give up on that source
PIP_TIMEOUT = 180.0
# hidden ``.part`` files older than this were left by a killed run: they are removed
STALE_PART_SECONDS = 3600.0


class DataUnavailableError(RuntimeError):
    """Raised when a data set cannot be obtained from any source."""


def data_home() -> Path:
    """The cache folder: ``$RECSYS_REF_DATA`` (if set and not empty) or ``~/.cache/recsys_ref``."""
    home = os.environ.get("RECSYS_REF_DATA", "").strip()
    return Path(home).expanduser() if home else Path.home() / ".cache" / "recsys_ref"


def _unreadable(path: Path, e: OSError) -> DataUnavailableError:
    return DataUnavailableError(
        f"cannot read or write {path} ({type(e).__name__}: {e}). The cache belongs to another "
        f"user or is read-only: point RECSYS_REF_DATA at a folder you can write, e.g. "
        f"RECSYS_REF_DATA=$HOME/.cache/recsys_ref")


def sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def remove_stale_parts(folder: Path, max_age: float = STALE_PART_SECONDS) -> int:
    """Delete the hidden ``.part`` files a killed run left in ``folder``; return how many.

    Only files older than ``max_age`` seconds go, so a concurrent writer is left alone.
    """
    removed = 0
    if not folder.is_dir():
        return 0
    now = time.time()
    for part in folder.glob(".*.part"):
        try:
            if now - part.stat().st_mtime > max_age:
                part.unlink()
                removed += 1
        except OSError:
            pass  # gone already, or not ours to delete
    return removed


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and an atomic rename.

    The file is readable by everyone (mode 0644, as ``open`` would create it with the usual
    umask), so a shared cache works for other users; stale ``.part`` files of killed runs in
    the same folder are removed first.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_parts(path.parent)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    except PermissionError as e:
        raise _unreadable(path, e) from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def write_checked(path: Path, data: bytes) -> None:
    """:func:`write_atomic` plus a ``<name>.sha256`` file that :func:`read_checked` verifies.

    The checksum is written second, so a run killed in between leaves a file without one,
    which reads as corrupted.
    """
    path = Path(path)
    write_atomic(path, data)
    write_atomic(_checksum_path(path), hashlib.sha256(data).hexdigest().encode())


def read_checked(path: Path) -> bytes:
    """The bytes of a file written by :func:`write_checked`, verified against its checksum.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: its checksum file is missing or does not match (a flipped byte, a
            truncated write): the caller should delete it and compute it again.
        DataUnavailableError: it cannot be read (permissions).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
        expected = _checksum_path(path).read_text().strip()
    except FileNotFoundError:
        if path.exists():
            raise ValueError(f"{path} has no checksum file: written by an interrupted run") \
                from None
        raise
    except PermissionError as e:
        raise _unreadable(path, e) from e
    if hashlib.sha256(data).hexdigest() != expected:
        raise ValueError(f"{path}: sha256 differs from the one recorded when it was written "
                         f"(the file is corrupted)")
    return data


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` + ``.lock`` for the duration of the block, so
    that two processes producing the same cached file produce it once (the second waits and
    then finds it). The OS releases the lock if the process dies."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def remove_checked(path: Path) -> None:
    """Delete a file written by :func:`write_checked` and its checksum file."""
    for p in (Path(path), _checksum_path(Path(path))):
        p.unlink(missing_ok=True)


def download_url(url: str, timeout: float = 5.0) -> bytes:
    """Fetch a URL into memory (short timeout: the caller has fallbacks)."""
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - fixed https URLs
        return r.read()


def _die_with_parent() -> None:
    """In the pip child (Linux): receive SIGTERM when the parent dies, so a killed fetch
    leaves no orphan download running."""
    import ctypes

    PR_SET_PDEATHSIG = 1  # noqa: N806 - the name prctl(2) gives it
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def pip_download_wheel(requirement: str, workdir: Path) -> Path:
    """Download one wheel with ``pip download --no-deps`` (never installs it).

    Args:
        requirement: e.g. ``"recbole==1.2.1"``.
        workdir: folder to download into.

    Returns:
        Path of the downloaded ``.whl``.
    """
    # pip's own socket timeout and one retry, and a limit on the whole download: an index
    # that accepts the connection but never answers must not stall the book for long
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--timeout", "30", "--retries", "1", "-q",
           "-d", str(workdir), requirement]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT,
                              preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    except subprocess.TimeoutExpired:  # run() has killed the child already
        raise OSError(f"`{' '.join(cmd)}` did not finish within {PIP_TIMEOUT:.0f} s (the "
                      f"package index does not answer)") from None
    if proc.returncode != 0:
        raise OSError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip()[-500:]}")
    wheels = sorted(workdir.glob("*.whl"))
    if not wheels:
        raise OSError(f"`{' '.join(cmd)}` produced no wheel")
    return wheels[0]


def cached(name: str, files: Mapping[str, str | None]) -> Path | None:
    """The data set's cache folder if every file is there and verified, else ``None``.

    Args:
        name: the data set's folder under :func:`data_home`.
        files: relative file name -> expected sha256 (``None``: checked by the parser).

    A file whose checksum does not match is deleted, so the next fetch replaces it.
    """
    folder = data_home() / name
    ok = True
    for rel, digest in files.items():
        p = folder / rel
        try:
            if p.exists() and digest is not None and sha256(p) != digest:
                p.unlink()  # corrupted or stale: it will be fetched again
        except PermissionError as e:
            raise _unreadable(p, e) from e
        ok &= p.exists()
    return folder if ok else None


def fetch_into(
    name: str, files: Mapping[str, str | None], fetch: Callable[[Path], dict[str, bytes]]
) -> Path:
    """Fetch a data set's files, verify every checksum, then write them atomically.

    Args:
        name: the data set's folder under :func:`data_home`.
        files: relative file name -> expected sha256 (``None``: checked by the parser).
        fetch: ``fetch(tmpdir)`` returns ``{relative name: bytes}`` for every file.

    Returns:
        The cache folder. Raises ``OSError`` (or the fetcher's error) when a file is missing
        or its checksum differs; nothing is written unless every file checks out.
    """
    with tempfile.TemporaryDirectory() as tmp:
        blobs = fetch(Path(tmp))
    for rel, digest in files.items():
        if rel not in blobs:
            raise OSError(f"{rel} missing from the source")
        got = hashlib.sha256(blobs[rel]).hexdigest()
        if digest is not None and got != digest:
            raise OSError(f"{rel}: sha256 {got[:12]}... differs from expected {digest[:12]}...")
    folder = data_home() / name
    for rel in files:
        write_atomic(folder / rel, blobs[rel])
    return folder


def obtain(name: str, sources: list[tuple[str, str, Mapping[str, str | None], Callable]],
           hint: str, report: Callable[[str], None] | None = None) -> tuple[Path, str]:
    """Return a verified cache folder for a data set, fetching it if needed.

    Args:
        name: the data set's name for messages.
        sources: ``(source name, description, files, fetch)`` in order of preference; each
            source caches under ``<data_home>/<source name>``.
        hint: what the user can do when every source fails.
        report: called with a line before each fetch is tried (``python -m recsys_ref.data``
            passes ``print``; the library itself never prints).

    Returns:
        ``(folder, source name)``. A cached source is used first (in order); otherwise each
        source is fetched in turn. When all fail, :class:`DataUnavailableError` lists what
        was tried and why each failed.
    """
    for source, _, files, _ in sources:
        folder = cached(source, files)
        if folder is not None:
            return folder, source
    errors = []
    for source, description, files, fetch in sources:
        if report is not None:
            report(f"{name}: trying {description} ...")
        try:
            return fetch_into(source, files, fetch), source
        except Exception as e:  # noqa: BLE001 - every failure is reported below
            errors.append(f"  - {description}: {type(e).__name__}: {e}")
    tried = "\n".join(errors)
    raise DataUnavailableError(
        f"Could not obtain {name} into {data_home()}.\nTried:\n{tried}\n{hint}"
    )


def wheel_source(requirement: str, members: Mapping[str, str]) -> Callable[[Path], dict]:
    """A fetch function reading files out of a PyPI wheel.

    Args:
        requirement: the wheel to download, e.g. ``"obp==0.4.1"``.
        members: relative cache name -> path inside the wheel.
    """

    def fetch(tmp: Path) -> dict[str, bytes]:
        wheel = pip_download_wheel(requirement, tmp)
        with zipfile.ZipFile(wheel) as z:
            return {rel: z.read(inner) for rel, inner in members.items()}

    return fetch
