"""Test helpers for the dataset loaders: where the shared real data lives, and tiny fake copies.

The real files are looked up in ``$MTLKIT_SHARED_DATA`` or ``<repo root>/../shared/data``; tests
that need them skip cleanly when they are absent. The fake writers produce files in each
dataset's real format (but with other content, so they are loaded with ``verify=False``).
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data(*folders: str) -> Path:
    """The shared data root holding ``folders``; skips the test when it is absent."""
    env = os.environ.get("MTLKIT_SHARED_DATA")
    root = Path(env) if env else REPO.parent / "shared" / "data"
    missing = [f for f in folders if not (root / f).is_dir()]
    if not root.is_dir() or missing:
        pytest.skip(f"shared data {missing or ''} not found in {root} (set MTLKIT_SHARED_DATA)")
    return root


# ---------------------------------------------------------------------------------------------- census
def census_row(rng: np.random.Generator, **fixed: str) -> str:
    """One census-income line with plausible values (``fixed`` overrides columns by name)."""
    from mtlkit.data.census import COLLEGE_VALUES, COLUMNS, MARITAL_VALUES, NUMERIC_COLUMNS, OTHER_EDUCATION

    values = []
    for c in COLUMNS:
        if c in fixed:
            v = fixed[c]
        elif c in NUMERIC_COLUMNS or c == "instance_weight":
            v = str(int(rng.integers(0, 90)))
        elif c == "income_50k":
            v = "50000+." if rng.random() < 0.3 else "- 50000."
        elif c == "marital_stat":
            v = str(rng.choice(MARITAL_VALUES))
        elif c == "education":
            v = str(rng.choice([*COLLEGE_VALUES, *OTHER_EDUCATION, "Some college but no degree"]))
        else:
            v = f"{c}-{int(rng.integers(0, 4))}" if rng.random() > 0.05 else "?"
        values.append(v)
    return ", ".join(values)


def write_fake_census(folder: Path, n_train: int = 300, n_test: int = 200, seed: int = 0) -> Path:
    """``census-income.data`` / ``census-income.test`` (plain text) with random rows."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("census-income.data", n_train), ("census-income.test", n_test)):
        (folder / name).write_text("".join(census_row(rng) + "\n" for _ in range(n)))
    return folder


# ---------------------------------------------------------------------------------------------- MNIST
def idx_bytes(array: np.ndarray) -> bytes:
    """``array`` (uint8) in the IDX format."""
    code = {1: 2049, 3: 2051}[array.ndim]
    return struct.pack(f">I{array.ndim}I", code, *array.shape) + array.astype(np.uint8).tobytes()


def write_fake_mnist(root: Path, n_train: int = 120, n_test: int = 40, seed: int = 0) -> Path:
    """``mnist/`` and ``fashion-mnist/`` with random images whose class sets a bright row."""
    rng = np.random.default_rng(seed)
    for folder in ("mnist", "fashion-mnist"):
        d = root / folder
        d.mkdir(parents=True, exist_ok=True)
        for prefix, n in (("train", n_train), ("t10k", n_test)):
            y = rng.integers(0, 10, n).astype(np.uint8)
            x = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
            x[np.arange(n), 2 * y + 4, :] = 255  # learnable: the class sets one bright row
            (d / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(x)))
            (d / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(y)))
    return root


# ---------------------------------------------------------------------------------------------- CIFAR
def cifar_batch_bytes(x: np.ndarray, y: np.ndarray, label: bytes = b"batch") -> bytes:
    """A CIFAR-10 python batch (protocol 2, bytes keys) holding uint8 ``x`` (N, 3, 32, 32)."""
    batch = {
        b"batch_label": label,
        b"labels": [int(v) for v in y],
        b"data": x.reshape(len(x), 3072),
        b"filenames": [f"{i}.png".encode() for i in range(len(x))],
    }
    return pickle.dumps(batch, protocol=2)


def write_fake_cifar(folder: Path, n: int = 100, seed: int = 0) -> Path:
    """``data_batch_1/2.gz`` and ``test_batch.gz`` with random images (class 3 and 5 brighter)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("data_batch_1", "data_batch_2", "test_batch"):
        y = rng.integers(0, 10, n)
        x = rng.integers(0, 100, (n, 3, 32, 32)).astype(np.uint8)
        x[y == 3, 0] += 120  # cats: red; dogs: green
        x[y == 5, 1] += 120
        (folder / f"{name}.gz").write_bytes(gzip.compress(cifar_batch_bytes(x, y)))
    return folder
