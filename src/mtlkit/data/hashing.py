"""A stable string hash for ``hash_buckets`` columns: 64-bit FNV-1a over the UTF-8 bytes.

The hash of a category is the same on every process, machine, platform and Python version
(Python's ``hash()`` of a string is salted per process and is never used)::

    h = 0xcbf29ce484222325                       # FNV-1a 64-bit offset basis
    for byte in value.encode("utf-8"):
        h = ((h ^ byte) * 0x100000001b3) % 2**64  # FNV 64-bit prime

and the category's index is ``1 + h % hash_buckets`` (index 0 stays the missing-value bucket).
:func:`fnv1a_64` computes it vectorised with numpy: one step per byte position over all values at
once, no Python loop per value. Values are hashed as the vocabulary path sees them: text stripped
of surrounding blanks, numbers written by :func:`~mtlkit.data.preprocessing.number_strings`
(``3``, ``3.0`` and ``" 3"`` hash alike).
"""

from __future__ import annotations

import numpy as np

__all__ = ["FNV_OFFSET", "FNV_PRIME", "fnv1a_64", "hash_codes"]

FNV_OFFSET = 0xCBF29CE484222325
"""The FNV-1a 64-bit offset basis."""
FNV_PRIME = 0x100000001B3
"""The FNV 64-bit prime."""


def fnv1a_64(values: np.ndarray) -> np.ndarray:
    """The 64-bit FNV-1a hash (``uint64``) of each string of ``values`` (UTF-8 bytes)."""
    arr = np.asarray(values).astype(str).reshape(-1)
    if arr.size == 0:
        return np.zeros(0, dtype=np.uint64)
    enc = np.char.encode(arr, "utf-8")
    width = enc.dtype.itemsize
    lens = np.char.str_len(enc)
    h = np.full(arr.size, FNV_OFFSET, dtype=np.uint64)
    if width == 0:
        return h
    mat = np.frombuffer(np.ascontiguousarray(enc).tobytes(), dtype=np.uint8).reshape(arr.size, width)
    prime = np.uint64(FNV_PRIME)
    with np.errstate(over="ignore"):
        for k in range(width):  # one vectorised step per byte position (wraps modulo 2**64)
            step = (h ^ mat[:, k].astype(np.uint64)) * prime
            h = np.where(lens > k, step, h)
    return h


def hash_codes(values: np.ndarray, buckets: int) -> np.ndarray:
    """``1 + fnv1a_64(value) % buckets`` per value (int64 in ``1..buckets``); each distinct value
    is hashed once."""
    arr = np.asarray(values).astype(str).reshape(-1)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    uniq, inverse = np.unique(arr, return_inverse=True)
    codes = (fnv1a_64(uniq) % np.uint64(buckets)).astype(np.int64) + 1
    return codes[inverse.reshape(-1)]
