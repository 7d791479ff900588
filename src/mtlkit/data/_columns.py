"""Vectorised parsing of delimited text into coded columns, and preprocessing on coded columns.

A :class:`CodedColumn` holds a column as its distinct values plus one integer code per row
(``column == values[codes]``). Parsing a large unquoted CSV (census-income: 200k rows x 42
fields) this way needs no per-row Python: the field boundaries come from ``np.flatnonzero``
over the bytes, each column's fields are gathered into a fixed-width byte matrix with one
index operation, and the distinct values are found by hashing the matrix rows (checked exactly
against the rows, so a hash collision can never merge two values). Python only touches the
distinct values of a column.

:func:`fit_coded` and :func:`transform_coded` apply :class:`TabularPreprocessor`'s rules to coded
columns (counts by ``np.bincount``, lookups per distinct value), with results identical to
``TabularPreprocessor.fit`` / ``transform`` on the same values as strings (tested).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mtlkit.data.preprocessing import (
    MISSING_VALUES,
    TabularPreprocessor,
    first_non_finite,
    number_strings,
    standardisation,
    standardise,
    vocabulary,
)
from mtlkit.data.schema import CATEGORICAL, NUMERIC
from mtlkit.errors import DataError

__all__ = ["CodedColumn", "as_coded", "fit_coded", "parse_delimited", "transform_coded"]

_WHITESPACE = (32, 9, 13)  # space, tab, carriage return
_MIX = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True, slots=True)
class CodedColumn:
    """One column: its distinct ``values`` (str; sorted when made by :func:`parse_delimited` or
    :func:`as_coded`) and ``codes`` (one per row)."""

    values: np.ndarray
    codes: np.ndarray
    clean: bool = False
    """The values are distinct and stripped of surrounding blanks already."""

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    def strings(self) -> np.ndarray:
        """The column as an array of strings (one per row)."""
        return self.values[self.codes]

    def take(self, index: np.ndarray) -> CodedColumn:
        """The rows ``index`` (same distinct values, possibly some unused)."""
        return CodedColumn(self.values, self.codes[index], self.clean)

    def missing_values(self) -> np.ndarray:
        """Boolean per distinct value: True for the missing markers (``?``, empty, ``NA``...)."""
        values = self.values.tolist()
        if self.clean:
            return np.array([v.lower() in MISSING_VALUES for v in values], dtype=bool)
        return np.array([v.strip().lower() in MISSING_VALUES for v in values], dtype=bool)

    def value_floats(self, *, column: str, source: str) -> np.ndarray:
        """The distinct values as float64 (missing markers -> NaN)."""
        out = np.full(self.values.shape[0], np.nan)
        present = ~self.missing_values()
        try:
            out[present] = self.values[present].astype(np.float64)
        except ValueError:
            bad = next(v for v in self.values[present].tolist() if not _is_float(v))
            raise DataError(
                f"{source}: numeric column {column!r} holds a non-numeric value {bad!r}; "
                "list the column as categorical, or clean the data."
            ) from None
        return out


def _is_float(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


def as_coded(values: np.ndarray | CodedColumn) -> CodedColumn:
    """A column as a :class:`CodedColumn` of category strings, as ``TabularPreprocessor`` reads them:
    numbers by :func:`~mtlkit.data.preprocessing.number_strings` (NaN -> ``""``, missing), text as it is."""
    if isinstance(values, CodedColumn):
        return values
    arr = np.asarray(values)
    if arr.dtype.kind in "fciu":  # as TabularPreprocessor: numbers by number_strings, other values as str()
        uniq, inverse = np.unique(arr, return_inverse=True)  # NaN values sort last, one entry each
        strings = number_strings(uniq)
    else:
        uniq, inverse = np.unique(arr.astype(str), return_inverse=True)
        strings = uniq
    merged, back = np.unique(strings, return_inverse=True)  # 3.0000000000001 and 3 are one category
    return CodedColumn(merged, back.reshape(-1)[inverse.reshape(-1)].astype(np.int32))


def _numeric_values(col: np.ndarray | CodedColumn, *, column: str, source: str) -> np.ndarray:
    """A numeric column as float64 (missing -> NaN), infinite values refused."""
    if isinstance(col, np.ndarray) and col.dtype.kind in "biuf":
        x = col.astype(np.float64)
    else:
        c = as_coded(col)
        x = c.value_floats(column=column, source=source)[c.codes]
    first_non_finite(x, column=column, source=source)
    return x


def _strip(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> None:
    """Move ``starts``/``ends`` (in place) past leading/trailing blanks."""
    ws = np.zeros(256, dtype=bool)
    ws[list(_WHITESPACE)] = True
    while True:
        m = (starts < ends) & ws[buf[np.minimum(starts, buf.shape[0] - 1)]]
        if not m.any():
            break
        starts[m] += 1
    while True:
        m = (ends > starts) & ws[buf[np.maximum(ends - 1, 0)]]
        if not m.any():
            break
        ends[m] -= 1


def _factorize(
    data: bytes, pad: np.ndarray, starts: np.ndarray, ends: np.ndarray, *, encoding: str, source: str
) -> CodedColumn:
    """Distinct values and codes of the fields ``data[starts[i]:ends[i]]``, without per-row Python."""
    n = starts.shape[0]
    if n == 0:
        return CodedColumn(np.array([], dtype=str), np.zeros(0, dtype=np.int32))
    lens = ends - starts
    words_per_field = max(1, -(-int(lens.max()) // 8))
    width = 8 * words_per_field
    # every byte offset of `pad` viewed as the start of a width-byte record: one gather per column
    records = np.ndarray(
        (pad.shape[0] - width + 1,), dtype=np.dtype((np.void, width)), buffer=pad, strides=(1,)
    )
    mat = records[starts].view(np.uint8).reshape(n, width)
    mat *= np.arange(width, dtype=np.int32) < lens[:, None].astype(np.int32)  # zero the bytes past each field
    words = mat.view("<u8")
    mult = (np.arange(1, words_per_field + 1, dtype=np.uint64) * _MIX) | np.uint64(1)
    h = (words * mult).sum(axis=1, dtype=np.uint64) ^ (lens.astype(np.uint64) * _MIX)
    _, first, inverse = np.unique(h, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    rep = first[inverse]
    if not (
        np.array_equal(mat, mat[rep]) and np.array_equal(lens, lens[rep])
    ):  # a hash collision: exact path
        keys = np.concatenate([words, lens[:, None].astype(np.uint64)], axis=1)
        _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
        inverse = inverse.reshape(-1)
    try:
        values = np.array([data[starts[r] : ends[r]].decode(encoding) for r in first.tolist()], dtype=str)
    except UnicodeDecodeError as exc:
        raise DataError(f"{source} is not valid {encoding} text ({exc}); the file is corrupt.") from None
    order = np.argsort(values, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.shape[0])
    dtype = np.int16 if values.shape[0] < 2**15 else np.int32
    return CodedColumn(values[order], rank[inverse].astype(dtype))


def parse_delimited(
    data: bytes,
    names: Sequence[str],
    *,
    usecols: Sequence[str] | None = None,
    delimiter: str = ",",
    encoding: str = "utf-8",
    source: str = "data",
) -> dict[str, CodedColumn]:
    """Parse headerless, unquoted delimited text into coded columns.

    Fields are stripped of surrounding blanks (census-income separates fields by ``", "``);
    blank lines are skipped; quoting is not interpreted (use
    :func:`mtlkit.data.sources.read_csv` for quoted CSV).

    Args:
        data: the (decompressed) file content.
        names: the name of every field of a row, in order.
        usecols: the columns to return (default: all).
        delimiter: a one-byte field separator.
        encoding: text encoding of the values.
        source: the file, for error messages.

    Raises:
        DataError: a row has the wrong number of fields (the message gives the line number), or
            the text cannot be decoded.
    """
    sep = delimiter.encode()
    if len(sep) != 1:
        raise ValueError(f"parse_delimited needs a one-byte delimiter; got {delimiter!r}.")
    wanted = list(names) if usecols is None else list(usecols)
    unknown = [c for c in wanted if c not in names]
    if unknown:
        raise ValueError(f"parse_delimited: usecols {unknown} are not among the names {list(names)}.")
    if data and not data.endswith(b"\n"):
        data += b"\n"
    buf = np.frombuffer(data, dtype=np.uint8)
    ncol = len(names)
    newlines = np.flatnonzero(buf == 10)
    line_starts = np.concatenate([[0], newlines[:-1] + 1]).astype(np.int64)
    seps = np.flatnonzero(buf == sep[0])
    line_of_sep = np.searchsorted(newlines, seps)
    counts = np.bincount(line_of_sep, minlength=newlines.shape[0])
    bad = np.flatnonzero(counts != ncol - 1)
    blank = [i for i in bad.tolist() if not data[line_starts[i] : newlines[i]].strip()]
    wrong = np.setdiff1d(bad, np.asarray(blank, dtype=np.int64))
    if wrong.size:
        i = int(wrong[0])
        raise DataError(
            f"{source}, line {i + 1}: {int(counts[i]) + 1} fields, expected {ncol} "
            f"({', '.join(names[:4])}, ...). The file is truncated or not in the expected format."
        )
    keep = counts == ncol - 1
    seps = (
        seps[keep[line_of_sep]].reshape(-1, ncol - 1)
        if ncol > 1
        else np.zeros((int(keep.sum()), 0), np.int64)
    )
    row_starts, row_ends = line_starts[keep], newlines[keep]
    bounds: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in wanted:
        j = names.index(name)
        s = (row_starts if j == 0 else seps[:, j - 1] + 1).astype(np.int64)
        e = (row_ends if j == ncol - 1 else seps[:, j]).astype(np.int64)
        _strip(buf, s, e)
        bounds[name] = (s, e)
    longest = max((int((e - s).max()) for s, e in bounds.values() if s.size), default=0)
    pad = np.concatenate([buf, np.zeros(longest + 16, dtype=np.uint8)])
    return {
        name: _factorize(data, pad, s, e, encoding=encoding, source=source) for name, (s, e) in bounds.items()
    }


# ---------------------------------------------------------------------------------------------- preprocessing
Column = CodedColumn | np.ndarray
"""A coded column, or an array (numbers, or text) as ``TabularPreprocessor.fit`` takes it."""


def fit_coded(pre: TabularPreprocessor, columns: Mapping[str, Column], *, source: str = "data") -> None:
    """Fit ``pre`` on coded training columns, in place, exactly as ``pre.fit`` would on the strings.

    Columns may also be arrays (as ``pre.fit`` takes them): numeric ones are used as they are,
    categorical ones are coded first (:func:`as_coded`)."""
    pre._index_cache = {}
    if not pre.plain:  # feature specs (hashed, shared, list, log1p, bucketized columns)
        from mtlkit.data.feature_encode import FeatureFitter

        fitter = FeatureFitter(pre)
        fitter.update(columns, source=source)
        fitter.finish(source=source)
        return
    vocabularies: dict[str, list[str]] = {}
    for name in pre.categorical:
        col = as_coded(columns[name])
        counts = np.bincount(col.codes, minlength=col.values.shape[0])
        keep = (counts > 0) & ~col.missing_values()
        values, counts = col.values[keep].astype(str), counts[keep]
        if not col.clean:
            values, inverse = np.unique(np.char.strip(values), return_inverse=True)  # " a" and "a": one category
            counts = np.bincount(inverse.reshape(-1), weights=counts, minlength=values.shape[0]).astype(np.int64)
        vocabularies[name] = vocabulary(
            values, counts, min_frequency=pre.min_frequency, max_categories=pre.max_categories
        )
    stats: dict[str, tuple[float, float]] = {}
    for name in pre.numeric:
        x = _numeric_values(columns[name], column=name, source=source)
        x = x[~np.isnan(x)]
        if x.size == 0:
            raise DataError(
                f"{source}: numeric column {name!r} has no values in the training data; "
                "drop it or list it as categorical."
            )
        stats[name] = standardisation(x)
    pre.vocabularies, pre.stats = vocabularies, stats


def transform_coded(
    pre: TabularPreprocessor, columns: Mapping[str, Column], *, source: str = "data"
) -> dict[str, Tensor]:
    """``pre.transform`` on coded columns: one lookup per distinct value, one gather per column."""
    if not pre.fitted:
        raise DataError("TabularPreprocessor is not fitted; call fit(train_columns) first.")
    assert pre.vocabularies is not None
    assert pre.stats is not None
    if not pre.plain:
        from mtlkit.data.feature_encode import transform_features

        return transform_features(pre, columns, source=source)
    n = len(next(iter(columns.values())))
    out: dict[str, Tensor] = {}
    if pre.categorical:
        codes = np.zeros((n, len(pre.categorical)), dtype=np.int64)
        for j, name in enumerate(pre.categorical):
            col = as_coded(columns[name])
            index = {v: i + 1 for i, v in enumerate(pre.vocabularies[name])}
            values = col.values.tolist()
            lookup = np.array(
                [index.get(v, 0) for v in values] if col.clean else [index.get(v.strip(), 0) for v in values],
                dtype=np.int64,
            )
            codes[:, j] = lookup[col.codes] if lookup.size else 0
        out[CATEGORICAL] = torch.from_numpy(codes)
    if pre.numeric:
        mat = np.zeros((n, len(pre.numeric)), dtype=np.float32)
        for j, name in enumerate(pre.numeric):
            mean, std = pre.stats[name]
            x = _numeric_values(columns[name], column=name, source=source)
            mat[:, j] = standardise(x, mean, std, column=name, source=source)
        out[NUMERIC] = torch.from_numpy(mat)
    return out
