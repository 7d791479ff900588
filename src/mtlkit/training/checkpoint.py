"""Reading and writing training checkpoints with clear errors."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from mtlkit.errors import CheckpointError

__all__ = ["FORMAT", "load_checkpoint", "save_checkpoint"]

FORMAT = "mtlkit-checkpoint"
VERSION = 1


def save_checkpoint(payload: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``payload`` atomically (temp file + rename), so a crash never leaves half a checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": FORMAT, "version": VERSION, **payload}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(data, fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors and plain containers only)."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.exists():
        raise CheckpointError(f"Checkpoint {str(path)!r} does not exist. Pass a run directory or a .pt file.")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated file, wrong format, pickle error
        raise CheckpointError(
            f"Checkpoint {str(path)!r} could not be read ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
            "The file is corrupt, truncated or not an mtlkit checkpoint; re-create it by training again."
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is not an mtlkit checkpoint (no {FORMAT!r} marker). "
            "Load it with torch.load, or pass a checkpoint written by mtlkit."
        )
    if data.get("version", 0) > VERSION:
        raise CheckpointError(
            f"Checkpoint {str(path)!r} has format version {data.get('version')}, newer than this mtlkit "
            f"understands ({VERSION}); upgrade mtlkit."
        )
    return data
