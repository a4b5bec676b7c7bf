"""Where data lives, how it is fetched, and how it is checked.

Data sets are cached under ``RECSYS_REF_DATA`` (default ``~/.cache/recsys_ref``). Every file
is written to a temporary name in the same folder and moved into place only once complete
and verified, so an interrupted run never leaves a half-written file behind.
See the chapter "Introduction and data".
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path


class DataUnavailableError(RuntimeError):
    """Raised when a data set cannot be obtained from any source."""


def data_home() -> Path:
    """The cache folder: ``$RECSYS_REF_DATA`` or ``~/.cache/recsys_ref``."""
    return Path(os.environ.get("RECSYS_REF_DATA", Path.home() / ".cache" / "recsys_ref"))


def sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def download_url(url: str, timeout: float = 5.0) -> bytes:
    """Fetch a URL into memory (short timeout: the caller has fallbacks)."""
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - fixed https URLs
        return r.read()


def pip_download_wheel(requirement: str, workdir: Path) -> Path:
    """Download one wheel with ``pip download --no-deps`` (never installs it).

    Args:
        requirement: e.g. ``"recbole==1.2.1"``.
        workdir: folder to download into.

    Returns:
        Path of the downloaded ``.whl``.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(workdir), requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
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
        if p.exists() and digest is not None and sha256(p) != digest:
            p.unlink()  # corrupted or stale: it will be fetched again
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
           hint: str) -> tuple[Path, str]:
    """Return a verified cache folder for a data set, fetching it if needed.

    Args:
        name: the data set's name for messages.
        sources: ``(source name, description, files, fetch)`` in order of preference; each
            source caches under ``<data_home>/<source name>``.
        hint: what the user can do when every source fails.

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
