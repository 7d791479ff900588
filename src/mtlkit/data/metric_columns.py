"""The metric options of a tabular data section (``tasks.<name>.metrics``) and the group columns
the grouped metrics read, for the in-memory and the streamed builders alike.

:func:`metric_options` checks every task's metric list and that each group column exists in the
training data, and raises one :class:`~mtlkit.errors.ConfigError` listing every problem (so
``validate`` and ``run`` report the same, all at once). :func:`group_ids` turns a group column's
values into int64 ids: the 64-bit FNV-1a hash (:mod:`mtlkit.data.hashing`) of each value as a
category string, the same in every split, batch, worker and process. A blank value is a group of
its own (the hash of ``""``). Values are compared as text, a number written one way whatever its
column type (``7``, ``007``, ``7.0`` and ``" 7"`` are one group), so ids agree between the in-memory
reader and the streamed one (which may read the column as integers).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mtlkit.data._columns import CodedColumn
from mtlkit.data.hashing import fnv1a_64
from mtlkit.errors import ConfigError, DataError
from mtlkit.metrics.select import parse_metrics

__all__ = ["group_ids", "header_columns", "metric_options"]


def metric_options(specs: Mapping[str, Any], columns: Sequence[str] | None, *, file: str = "") -> list[str]:
    """The group columns of every task's ``metrics`` (each once), after checking the lists.

    ``columns``: the training data's columns (``None``: not checked here, e.g. a missing file,
    which the reader reports).

    Raises:
        ConfigError: one ``data.tasks.<name>.metrics...`` line per problem of every task.
    """
    problems: list[str] = []
    groups: list[str] = []
    for name, spec in specs.items():
        entries = getattr(spec, "metrics", None)
        if entries is None:
            continue
        _, cols, bad = parse_metrics(spec.kind, entries)
        problems += [f"data.tasks.{name}.metrics{'' if p.startswith('[') else ': '}{p}" for p in bad]
        for c in cols:
            if columns is not None and c not in columns:
                problems.append(
                    f"data.tasks.{name}.metrics: gauc's group column {c!r} is not in {file}; its columns are: "
                    f"{', '.join(map(repr, columns))}."
                )
            groups.append(c)
    if problems:
        raise ConfigError(problems)
    return list(dict.fromkeys(groups))


def header_columns(path: str | Path, delimiter: str) -> list[str] | None:
    """The column names of a CSV (header row) or Parquet file; ``None`` when it cannot be read
    (the reader then names the problem)."""
    from mtlkit.data.arrow_io import file_columns

    p = Path(path).expanduser()
    if not p.is_file():
        return None
    try:
        return file_columns(p, delimiter=delimiter)
    except (DataError, OSError, ValueError):
        return None


def _canonical_text(values: np.ndarray) -> np.ndarray:
    """Each distinct text stripped, and a number written one way: an integer with every digit
    (``007``, ``+7``, ``7.0`` -> ``7``), another number with 12 significant digits."""
    from mtlkit.data.preprocessing import number_strings

    uniq, inverse = np.unique(np.char.strip(values.astype(str)), return_inverse=True)
    out = []
    for text in uniq.tolist():
        try:
            out.append(str(int(text)))
            continue
        except ValueError:
            pass
        try:
            x = float(text)
        except ValueError:
            out.append(text)
            continue
        out.append(str(number_strings(np.array([x]))[0]) if np.isfinite(x) else text)
    return np.asarray(out, dtype=str)[inverse.reshape(-1)] if out else np.zeros(0, dtype=str)


def _strings(values: Any) -> np.ndarray:
    from mtlkit.data.preprocessing import number_strings

    if isinstance(values, CodedColumn):
        return _canonical_text(values.values)[values.codes] if len(values.values) else np.zeros(0, dtype=str)
    if hasattr(values, "to_numpy") and hasattr(values, "type"):  # a pyarrow array or chunked array
        import pyarrow as pa

        if pa.types.is_integer(values.type):  # every digit, nulls blank
            return np.asarray(values.cast(pa.string()).fill_null("").to_numpy(zero_copy_only=False), dtype=str)
        if pa.types.is_floating(values.type):
            return number_strings(values.fill_null(float("nan")).to_numpy(zero_copy_only=False))
        text = values.cast(pa.string()).fill_null("")
        return _canonical_text(np.asarray(text.to_numpy(zero_copy_only=False), dtype=str))
    arr = np.asarray(values)
    if arr.dtype.kind in "biuf":
        return number_strings(arr)
    return _canonical_text(arr)


def group_ids(values: Any) -> np.ndarray:
    """int64 group ids of a column's values (see the module doc): a numpy array, a
    :class:`~mtlkit.data._columns.CodedColumn` or a pyarrow array (see the module doc)."""
    s = _strings(values)
    if s.size == 0:
        return np.zeros(0, dtype=np.int64)
    uniq, inverse = np.unique(s, return_inverse=True)
    return fnv1a_64(uniq).view(np.int64)[inverse.reshape(-1)]
