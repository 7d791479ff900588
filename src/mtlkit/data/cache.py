"""An on-disk cache of parsed dataset arrays, keyed by the content of the source files.

Parsing a large text file once per run is wasted time; loaders that parse slowly (census-income)
store the parsed arrays here as an uncompressed ``.npz`` under a key built from the source
files' SHA-256 digests, so the cache can never serve arrays of a different file. The cache lives
in ``$MTLKIT_CACHE`` (default ``$XDG_CACHE_HOME/mtlkit`` or ``~/.cache/mtlkit``). Writes are
atomic (a temporary file renamed into place), so concurrent processes (e.g. DDP ranks) are safe.
A cache that cannot be written is skipped; an unreadable entry is parsed again and rewritten.
Loaders take ``cache=False`` to bypass it.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = ["CACHE_ENV", "cache_dir", "load_arrays", "save_arrays"]

CACHE_ENV = "MTLKIT_CACHE"
"""Environment variable naming the cache directory."""


def cache_dir() -> Path:
    """The cache directory (not created here)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "mtlkit"


def _path(kind: str, key: str) -> Path:
    return cache_dir() / kind / f"{key}.npz"


def load_arrays(kind: str, key: str) -> dict[str, np.ndarray] | None:
    """The arrays stored under ``kind/key``, or None when absent or unreadable."""
    path = _path(kind, key)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None


def save_arrays(kind: str, key: str, arrays: Mapping[str, np.ndarray]) -> Path | None:
    """Store ``arrays`` under ``kind/key`` atomically; returns the path, or None if it cannot be written."""
    path = _path(kind, key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **dict(arrays))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError:
        return None
    return path
