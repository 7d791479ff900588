"""The package's one JSON writer: strict JSON only (RFC 8259), never ``NaN`` or ``Infinity``.

Every JSON file mtlkit writes (``metrics.json``, ``history.json``, ``comparison.json``,
``gates.json``, manifests, signatures) goes through :func:`dumps`. Non-finite floats (NaN, +inf,
-inf; e.g. the metric of a task with no labels) are written as ``null``; tensors and numpy
arrays become lists, paths and other objects strings. Any JSON parser reads the result.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["dumps", "json_safe", "write_json"]


def json_safe(obj: Any) -> Any:
    """A copy of ``obj`` that strict JSON accepts: NaN/inf become ``None``, tensors and arrays
    lists, paths and other objects (devices) strings."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist"):  # tensors and numpy arrays (and numpy scalars)
        return json_safe(obj.tolist())
    if hasattr(obj, "item"):
        return json_safe(obj.item())
    return str(obj)  # e.g. a torch.device


def dumps(obj: Any, *, indent: int | None = 1) -> str:
    """``obj`` as strict JSON text (non-finite floats as ``null``; see the module docstring)."""
    return json.dumps(json_safe(obj), indent=indent, allow_nan=False)


def write_json(obj: Any, path: str | os.PathLike[str], *, indent: int | None = 1) -> Path:
    """Write ``obj`` to ``path`` as strict JSON, atomically (a reader never sees half a file)."""
    from mtlkit.training.checkpoint import atomic_write_bytes

    p = Path(path)
    atomic_write_bytes(dumps(obj, indent=indent).encode("utf-8"), p)
    return p
