"""Fitting and applying feature specs (:mod:`mtlkit.data.features`): hashed, shared, list-valued,
log1p and bucketized columns.

One implementation for every source: the in-memory ``tabular`` dataset, ``TabularPreprocessor``
on raw arrays, and the streaming encoder all hand their columns over as numpy arrays,
:class:`~mtlkit.data._columns.CodedColumn` s or :class:`ListColumn` s, so their encodings are
equal by construction. Everything is vectorised: vocabulary lookups and hashes once per distinct
value, list values gathered with offsets (no Python loop per row).

Outputs: ``categorical`` ``(N, C)`` int64 (single-valued categorical columns, then bucketized
numeric columns), ``numeric`` ``(N, D)`` float32 (the other numeric columns) and one
``list:<column>`` ``(N, L)`` int64 per list column, -1 padding.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from mtlkit.data.features import CategoricalFeature, NumericFeature
from mtlkit.data.hashing import hash_codes
from mtlkit.data.preprocessing import MISSING_VALUES, number_strings, standardise, vocabulary
from mtlkit.data.schema import CATEGORICAL, LIST_PREFIX, NUMERIC, FeatureSchema, ListInput
from mtlkit.errors import DataError

if TYPE_CHECKING:
    from mtlkit.data.preprocessing import TabularPreprocessor

__all__ = ["FeatureFitter", "ListColumn", "feature_schema", "transform_features", "unseen_features"]

_MISSING = sorted(MISSING_VALUES)


@dataclass(frozen=True)
class ListColumn:
    """A list-valued column: the values of every row one after the other (``flat``, text or
    numbers) and each row's number of values (``lens``)."""

    flat: np.ndarray
    lens: np.ndarray

    def __len__(self) -> int:
        return int(self.lens.shape[0])

    def take(self, rows: np.ndarray) -> ListColumn:
        starts = np.concatenate([[0], np.cumsum(self.lens)[:-1]]).astype(np.int64)
        lens = self.lens[rows]
        return ListColumn(self.flat[_ranges(starts[rows], lens)], lens)

    @classmethod
    def from_arrow(cls, array: Any) -> ListColumn:
        """A pyarrow list array (nulls: empty lists)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
        lens = pc.list_value_length(array).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        flat = pc.list_flatten(array)
        t = flat.type
        if pa.types.is_integer(t) and not flat.null_count:
            values = flat.cast(pa.int64()).to_numpy()
        elif pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
            values = flat.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
        else:
            values = np.asarray(
                flat.cast(pa.string()).fill_null("").to_numpy(zero_copy_only=False), dtype=str
            )
        return cls(values, lens)


def _ranges(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + n) for s, n in zip(starts, lens)])``, vectorised."""
    total = int(lens.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    row_start = np.repeat(np.cumsum(lens) - lens, lens)
    return np.repeat(starts, lens) + (np.arange(total, dtype=np.int64) - row_start)


def as_list_column(col: Any, delimiter: str) -> ListColumn:
    """A list column from a :class:`ListColumn`, a pyarrow list array, or text (coded or an array)
    whose cells are ``delimiter``-separated values (a blank cell is an empty list)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from mtlkit.data._columns import CodedColumn

    if isinstance(col, ListColumn):
        return col
    if isinstance(col, (pa.Array, pa.ChunkedArray)) and (
        pa.types.is_list(col.type) or pa.types.is_large_list(col.type)
    ):
        return ListColumn.from_arrow(col)
    if isinstance(col, CodedColumn):
        rows = col.values[col.codes] if col.values.size else np.full(len(col), "", dtype=str)
    elif _holds_lists(col):  # Python lists (or arrays) per row: [["a", "b"], [], ...]
        cells = [[] if c is None else list(c) for c in col]
        lens = np.array([len(c) for c in cells], dtype=np.int64)
        flat = [v for c in cells for v in c]
        values = np.asarray(flat) if flat else np.zeros(0, dtype=str)
        if values.dtype.kind not in "fciubU":
            values = np.asarray([str(v) for v in flat], dtype=str)
        return ListColumn(values, lens)
    else:
        arr = np.asarray(col)
        rows = number_strings(arr) if arr.dtype.kind in "fciub" else arr.astype(str)
    text = pa.array(rows.tolist(), pa.string()) if rows.size else pa.array([], pa.string())
    return ListColumn.from_arrow(pc.split_pattern(text, pattern=delimiter))


def _holds_lists(col: Any) -> bool:
    if isinstance(col, np.ndarray) and col.dtype != object:
        return False
    return any(isinstance(c, (list, tuple, np.ndarray)) for c in col)


def canonical(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Category strings as the vocabulary sees them (numbers by ``number_strings``, text stripped)
    and whether each is missing."""
    arr = np.asarray(values)
    s = number_strings(arr) if arr.dtype.kind in "fciub" else np.char.strip(arr.astype(str))
    return s, np.isin(np.char.lower(s), _MISSING)


def _category_column(col: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(distinct strings, per-row index)`` of a single-valued categorical column."""
    from mtlkit.data._columns import as_coded

    c = as_coded(col)
    values = c.values.astype(str)
    if not c.clean:
        values = np.char.strip(values)
    return values, c.codes.astype(np.int64)


def _numbers(col: Any, name: str, source: str) -> np.ndarray:
    from mtlkit.data._columns import _numeric_values

    return _numeric_values(col, column=name, source=source)


def _log1p(x: np.ndarray, name: str, source: str) -> np.ndarray:
    bad = np.flatnonzero(x <= -1)
    if bad.size:
        raise DataError(
            f"{source}: numeric column {name!r} has transform log1p but holds {float(x[bad[0]])!r} in row "
            f"{int(bad[0]) + 1}; log1p needs values > -1. Clean the value or use another transform."
        )
    return np.log1p(x)


def _numeric_input(f: NumericFeature, col: Any, source: str) -> np.ndarray:
    x = _numbers(col, f.name, source)
    return _log1p(x, f.name, source) if f.transform == "log1p" else x


# ---------------------------------------------------------------------------------------------- fitting
class FeatureFitter:
    """Accumulates what fitting needs over one or many batches of training columns: value counts
    per vocabulary table (the columns sharing a table count together), numeric moments after the
    transform, and the longest list per list column; :meth:`finish` writes the fitted state into
    the preprocessor."""

    def __init__(self, pre: TabularPreprocessor) -> None:
        from mtlkit.data.streaming_stats import RunningMoments

        self.pre, self.specs = pre, pre.features
        self.counts: dict[str, tuple[np.ndarray, np.ndarray]] = {
            f.name: (np.zeros(0, dtype=str), np.zeros(0, dtype=np.int64))
            for f in self.specs.categorical
            if f.share is None and f.hash_buckets is None
        }
        self.moments = {f.name: RunningMoments() for f in self.specs.numeric if f.bucketize is None}
        self.longest = {f.name: 0 for f in self.specs.categorical if f.list}

    def update(self, columns: Mapping[str, Any], *, source: str = "data") -> None:
        for f in self.specs.categorical:
            owner = self.specs.owner(f.name)
            if f.list:
                lc = as_list_column(columns[f.name], f.delimiter)
                s, missing = canonical(lc.flat)
                kept = _kept_lens(lc.lens, ~missing)
                self.longest[f.name] = max(self.longest[f.name], int(kept.max()) if kept.size else 0)
                values, counts = np.unique(s[~missing], return_counts=True)
            else:
                uniq, codes = _category_column(columns[f.name])
                counts = np.bincount(codes, minlength=uniq.shape[0])
                _, missing = canonical(uniq)
                keep = (counts > 0) & ~missing
                values, counts = uniq[keep], counts[keep]
            if owner.name in self.counts:
                self._add(owner.name, values, counts)
        for f in self.specs.numeric:
            x = _numeric_input(f, columns[f.name], source)
            if f.bucketize is None:
                self.moments[f.name].update(x)

    def _add(self, table: str, values: np.ndarray, counts: np.ndarray) -> None:
        old_v, old_c = self.counts[table]
        v = np.concatenate([old_v.astype(str), values.astype(str)])
        c = np.concatenate([old_c, counts.astype(np.int64)])
        uniq, inverse = np.unique(v, return_inverse=True)
        self.counts[table] = (
            uniq,
            np.bincount(inverse.reshape(-1), weights=c, minlength=uniq.shape[0]).astype(np.int64),
        )

    def finish(self, *, source: str = "data") -> None:
        pre = self.pre
        vocabularies = {}
        for t, (v, c) in self.counts.items():
            f = self.specs.cat(t)
            vocabularies[t] = vocabulary(
                v,
                c,
                min_frequency=f.min_frequency or pre.min_frequency,
                max_categories=f.max_categories or pre.max_categories,
            )
        pre.vocabularies = vocabularies
        stats = {}
        for name, m in self.moments.items():
            if m.count == 0:
                raise DataError(
                    f"{source}: numeric column {name!r} has no values in the training data; "
                    "drop it or list it as categorical."
                )
            stats[name] = m.standardisation()
        pre.stats = stats
        pre.list_lengths = {
            f.name: max(1, min(f.max_length, self.longest[f.name])) for f in self.specs.categorical if f.list
        }


def _kept_lens(lens: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Per row, how many of its values are kept."""
    if keep.size == 0:
        return np.zeros_like(lens)
    row = np.repeat(np.arange(lens.shape[0]), lens)
    return np.bincount(row, weights=keep, minlength=lens.shape[0]).astype(np.int64)


# ---------------------------------------------------------------------------------------------- transforming
def _lookup(
    pre: TabularPreprocessor, owner: CategoricalFeature, strings: np.ndarray, missing: np.ndarray
) -> np.ndarray:
    """Table indices of category strings: hash buckets or the vocabulary; missing -> 0, unseen -> 0."""
    if owner.hash_buckets is not None:
        out = np.zeros(strings.shape[0], dtype=np.int64)
        out[~missing] = hash_codes(strings[~missing], owner.hash_buckets)
        return out
    index = pre._vocab_index(owner.name)
    uniq, inverse = np.unique(strings, return_inverse=True)
    lookup = np.array([index.get(v, 0) for v in uniq.tolist()], dtype=np.int64)
    out = lookup[inverse.reshape(-1)] if lookup.size else np.zeros(strings.shape[0], dtype=np.int64)
    out[missing] = 0
    return out


def list_codes(pre: TabularPreprocessor, f: CategoricalFeature, col: Any, length: int) -> np.ndarray:
    """``(N, length)`` table indices of a list column's values (missing values dropped, the first
    ``length`` kept), -1 padding."""
    lc = as_list_column(col, f.delimiter)
    s, missing = canonical(lc.flat)
    keep = ~missing
    codes = _lookup(pre, pre.features.owner(f.name), s[keep], missing[keep])
    n = len(lc)
    kept = _kept_lens(lc.lens, keep)
    row = np.repeat(np.arange(n), kept)
    pos = np.arange(row.shape[0]) - np.repeat(np.cumsum(kept) - kept, kept)
    out = np.full((n, length), -1, dtype=np.int64)
    inside = pos < length
    out[row[inside], pos[inside]] = codes[inside]
    return out


def transform_features(
    pre: TabularPreprocessor, columns: Mapping[str, Any], *, source: str = "data"
) -> dict[str, Tensor]:
    """The model inputs of ``columns`` under ``pre``'s feature specs (see the module doc)."""
    if not pre.fitted:
        raise DataError("TabularPreprocessor is not fitted; call fit(train_columns) first.")
    specs = pre.features
    n = len(next(iter(columns.values())))
    out: dict[str, Tensor] = {}
    cat_cols: list[np.ndarray] = []
    for f in specs.categorical:
        if f.list:
            out[LIST_PREFIX + f.name] = torch.from_numpy(
                list_codes(pre, f, columns[f.name], pre.list_lengths[f.name])
            )
        else:
            uniq, codes = _category_column(columns[f.name])
            s, missing = canonical(uniq)
            per_value = _lookup(pre, specs.owner(f.name), s, missing)
            cat_cols.append(per_value[codes] if per_value.size else np.zeros(n, dtype=np.int64))
    num_cols: list[np.ndarray] = []
    stats = pre.stats or {}
    for f in specs.numeric:
        x = _numeric_input(f, columns[f.name], source)
        if f.bucketize is not None:
            b = np.asarray(f.bucketize, dtype=np.float64)
            codes = np.searchsorted(b, x, side="right").astype(np.int64) + 1
            cat_cols.append(np.where(np.isnan(x), 0, codes))
        else:
            mean, std = stats[f.name]
            num_cols.append(standardise(x, mean, std, column=f.name, source=source))
    ordered: dict[str, Tensor] = {}
    if cat_cols:
        ordered[CATEGORICAL] = torch.from_numpy(np.stack(cat_cols, axis=1).astype(np.int64))
    if num_cols:
        ordered[NUMERIC] = torch.from_numpy(np.stack(num_cols, axis=1).astype(np.float32))
    ordered.update(out)
    return ordered


def unseen_features(pre: TabularPreprocessor, columns: Mapping[str, Any]) -> tuple[dict[str, int], int]:
    """``TabularPreprocessor.unseen_counts`` under feature specs: present values outside the
    vocabulary per column (hashed columns have none; list columns count their values), and the
    rows holding any."""
    specs = pre.features
    n = len(next(iter(columns.values())))
    per_column: dict[str, int] = {}
    any_row = np.zeros(n, dtype=bool)
    for f in specs.categorical:
        owner = specs.owner(f.name)
        if owner.hash_buckets is not None:
            per_column[f.name] = 0
            continue
        if f.list:
            lc = as_list_column(columns[f.name], f.delimiter)
            s, missing = canonical(lc.flat)
            hit = (_lookup(pre, owner, s, missing) == 0) & ~missing
            per_column[f.name] = int(hit.sum())
            any_row |= _kept_lens(lc.lens, hit) > 0
        else:
            uniq, codes = _category_column(columns[f.name])
            s, missing = canonical(uniq)
            flag = (_lookup(pre, owner, s, missing) == 0) & ~missing
            hit = flag[codes] if flag.size else np.zeros(n, dtype=bool)
            per_column[f.name] = int(hit.sum())
            any_row |= hit
    return per_column, int(any_row.sum())


def feature_schema(pre: TabularPreprocessor) -> FeatureSchema:
    """The :class:`FeatureSchema` of :func:`transform_features`' output."""
    specs = pre.features
    vocab = pre.vocabularies or {}

    def card(owner: CategoricalFeature) -> int:
        return owner.hash_buckets + 1 if owner.hash_buckets is not None else len(vocab[owner.name]) + 1

    names, cards, dims, tables = [], [], [], []
    lists = []
    for f in specs.categorical:
        owner = specs.owner(f.name)
        if f.list:
            lists.append(
                ListInput(
                    f.name, card(owner), pre.list_lengths[f.name], f.pooling, owner.dim or 0, f.share or ""
                )
            )
        else:
            (
                names.append(f.name),
                cards.append(card(owner)),
                dims.append(owner.dim or 0),
                tables.append(f.share or ""),
            )
    for g in specs.numeric:
        if g.bucketize is not None:
            (
                names.append(g.name),
                cards.append(len(g.bucketize) + 2),
                dims.append(g.dim or 0),
                tables.append(""),
            )
    numeric = [g.name for g in specs.numeric if g.bucketize is None]
    return FeatureSchema(tuple(names), tuple(cards), tuple(numeric), tuple(dims), tuple(tables), tuple(lists))


# ---------------------------------------------------------------------------------------------- arrow columns
def arrow_columns(pre: TabularPreprocessor, table: Any, origin: Any) -> dict[str, Any]:
    """The feature columns of a pyarrow table or record batch in the forms the in-memory ``tabular``
    dataset reads them (text coded and stripped, integer ids exact, numbers as float64 with NaN,
    list columns as :class:`ListColumn`), so that streaming and in-memory encodings are equal."""
    import pyarrow as pa

    from mtlkit.data.arrow_io import column_floats
    from mtlkit.data.tabular import _coded_arrow

    out: dict[str, Any] = {}
    for f in pre.features.categorical:
        col = table.column(f.name)
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
        t = col.type
        if f.list:
            if pa.types.is_list(t) or pa.types.is_large_list(t):
                out[f.name] = ListColumn.from_arrow(col)
            else:
                out[f.name] = _coded_arrow(col.cast(pa.string()))[0]
        elif pa.types.is_integer(t) and not col.null_count:
            out[f.name] = col.cast(pa.int64()).to_numpy()
        elif pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
            out[f.name] = col.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
        else:
            out[f.name] = _coded_arrow(col.cast(pa.string()))[0]
    for g in pre.features.numeric:
        out[g.name] = column_floats(table.column(g.name), column=g.name, origin=origin)
    return out
