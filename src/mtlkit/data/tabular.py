"""Your own tabular data: CSV or Parquet files and a config naming the columns.

Example config::

    data:
      name: tabular
      train: data/train.csv          # or .csv.gz / .csv.bz2 / .parquet
      test: data/test.csv            # optional; or test_fraction: 0.1
      val_fraction: 0.1              # or val: data/val.csv
      categorical: [city, device]
      numeric: [age, price]
      tasks:
        click: {column: clicked, kind: binary}
        segment: {column: segment, kind: multiclass}        # string labels are mapped to 0..K-1
        spend: {column: spend, kind: regression}

Features are preprocessed by a :class:`~mtlkit.data.preprocessing.TabularPreprocessor` fitted on
the training rows only (categorical vocabularies with an unknown bucket, standardised numeric
columns), which is returned as ``DataSplits.preprocessor`` and saved with trained models.
Labels: a blank or NaN label is missing (the sample does not count for that task); samples
without any label are left out. Parquet needs ``pyarrow`` (``pip install 'mtlkit[parquet]'``).

Input rules (each refused with a :class:`~mtlkit.errors.DataError` naming the file, the column,
the data row and the fix; see ``docs/datasets.md``): a file with no data rows, two columns of
the same name, a configured column the file lacks (listed with ``repr`` and the closest match),
non-numeric or infinite numeric features, non-finite regression labels, labels outside a
task's classes, a task without any label in a split, and splits too small (fewer than 2
training rows, or a held-out fraction that holds out no row). A UTF-8 byte-order mark is
ignored. The training split replaces ``unknown_fraction`` (1 %) of its categorical cells by the
unknown bucket in each epoch, so the embedding of unseen values is trained.
"""

from __future__ import annotations

import itertools
import json
import lzma
import mmap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, NonNegativeInt, PositiveInt, ValidationError

from mtlkit.data._checks import (
    MIN_TRAIN_ROWS,
    SPLIT_NAMES,
    Fraction,
    Origin,
    check_numeric,
    check_split_sizes,
    check_task_labels,
)
from mtlkit.data._columns import CodedColumn, as_coded, fit_coded, transform_coded
from mtlkit.data.arrow_io import expand_paths
from mtlkit.data.dataset import MultiTaskDataset
from mtlkit.data.features import FeatureSpecs, parse_features
from mtlkit.data.metric_columns import group_ids, header_columns, metric_options
from mtlkit.data.preprocessing import MISSING_VALUES, TabularPreprocessor, UnknownCategoryDropout
from mtlkit.data.sources import csv_header_row, read_csv, require_columns
from mtlkit.data.splits import DataSplits
from mtlkit.data.task_options import WeightsSpec, apply_task_options, weight_columns, weight_values
from mtlkit.errors import DataError
from mtlkit.registries import DATASETS
from mtlkit.tasks import Task

__all__ = ["TaskColumn", "load_preprocessor", "read_table", "tabular"]

Column = CodedColumn | np.ndarray
DEFAULT_SHUFFLE_BUFFER = 65_536
"""Rows per shuffle window of a streamed training split (``shuffle_buffer``)."""
_PRE = "TabularPreprocessor"  # the source named by preprocessing errors (as TabularPreprocessor.fit names it)


class TaskColumn(BaseModel):
    """One task of a tabular dataset: its label column and kind.

    Attributes:
        column: the label column.
        kind: ``binary`` (labels 0/1, or the two ``classes``), ``multiclass`` or ``regression``.
        num_classes: multiclass with integer labels: the number of classes (default: max + 1).
        classes: the label values in class order (binary: ``[negative, positive]``); default for
            multiclass string labels: the sorted values seen in training.
        loss: the task's loss by name, or ``{name: ..., <parameters>}`` (see :mod:`mtlkit.task_loss`).
        pos_weight: binary: the weight of the positive labels in BCE.
        class_weights: multiclass: one cross-entropy weight per class.
        transform: regression: ``log1p`` or ``standardise`` (fitted on the training labels) of the
            labels for training; predictions and metrics stay on the label's scale.
        weight_column: this task's sample-weight column (default: ``weights.column`` of the data section).
        metrics: the task's metrics by name, e.g. ``[auc, {gauc: {group: user_id}}, ne,
            {calibration: {bins: 10}}]`` (default: its kind's; see :mod:`mtlkit.metrics.select`). A
            ``gauc`` group column may be a feature or any other column of the data.
        auxiliary: an auxiliary task (see :class:`~mtlkit.tasks.Task`): trained, but left out of
            Δm, of the default ``mean/...`` early-stopping monitor and of the main comparison table.
    """

    model_config = ConfigDict(extra="forbid")

    column: str
    kind: Literal["binary", "multiclass", "regression"]
    num_classes: PositiveInt | None = None
    classes: list[str] | None = None
    loss: str | dict[str, Any] | None = None
    pos_weight: float | None = None
    class_weights: list[float] | None = None
    transform: Literal["log1p", "standardise", "standardize"] | None = None
    weight_column: str | None = None
    metrics: list[Any] | None = None
    auxiliary: bool = False


# ---------------------------------------------------------------------------------------------- reading
def read_table(path: str | Path, columns: Sequence[str], *, delimiter: str = ",") -> dict[str, np.ndarray]:
    """The ``columns`` of a CSV (plain, .gz, .bz2, .xz) or Parquet file: ``{name: array}``.

    CSV cells are strings; Parquet columns keep numbers as float64 (nulls as NaN) and turn
    everything else into strings (nulls as ``""``).

    Raises:
        DataError: the file is missing, unreadable, empty, has no data rows, has two columns of
            the same name, or lacks a column (the message lists the file's columns with ``repr``,
            so invisible characters show, and the closest match).
        ImportError: a Parquet file without pyarrow installed.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(
            f"{p}: no such data file. Check the path in the data section (relative to the working directory)."
        )
    if p.suffix.lower() in (".parquet", ".pq"):
        table, names = _read_parquet(p, columns)
    else:
        table = read_csv(p, delimiter=delimiter)
        names = list(table)
    require_columns(p, names, columns, delimiter)
    if columns and len(table[columns[0]]) == 0:
        raise DataError(f"{p} has a header but no data rows; it holds nothing to train or evaluate on.")
    return {c: table[c] for c in columns}


def _read_parquet(path: Path, columns: Sequence[str]) -> tuple[dict[str, np.ndarray], list[str]]:
    """The wanted ``columns`` that the file has, and the names of all its columns."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(
            f"Reading Parquet files ({path.name}) needs pyarrow: pip install 'mtlkit[parquet]' (or pip install "
            "pyarrow), or convert the file to CSV."
        ) from None
    try:
        schema = pq.read_schema(path)
        dup = sorted({c for c in schema.names if schema.names.count(c) > 1})
        if dup:
            raise DataError(
                f"{path} has several columns named {', '.join(map(repr, dup))}; column names must be unique. "
                "Rename or remove the duplicates."
            )
        wanted = [c for c in columns if c in schema.names]
        table = pq.read_table(path, columns=wanted)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(
            f"{path} could not be read as Parquet ({exc}); the file is corrupt or truncated."
        ) from None
    out: dict[str, np.ndarray] = {}
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type):
            out[name] = col.cast(pa.float64()).fill_null(np.nan).to_numpy()
        else:
            out[name] = np.asarray(col.cast(pa.string()).fill_null("").to_pylist(), dtype=str)
    return out, list(schema.names)


# ---------------------------------------------------------------------------------------------- fast reading
_NULL_MARKERS = sorted(
    {"".join(c) for w in MISSING_VALUES for c in itertools.product(*[(ch.lower(), ch.upper()) for ch in w])}
)
"""Every spelling (any case) of the missing markers: pyarrow reads them as null in numeric columns."""


def _read_frame(
    path: str | Path, columns: Sequence[str], features: Sequence[str], numeric: Sequence[str], *, delimiter: str
) -> dict[str, Column]:
    """The ``columns`` of a data file for :func:`tabular`: numeric features as float64 arrays where the
    file allows (else strings), the other columns coded (:class:`CodedColumn`).

    CSV is read by pyarrow when the file is regular (the common case); a file that pyarrow reads
    differently from the csv module, or that breaks a rule, is read by :func:`read_table`, whose
    checks name the problem. Both give the same values (tested)."""
    p = Path(path).expanduser()
    labels = [c for c in columns if c not in features]
    if p.is_file():
        frame = (
            _parquet_frame(p, columns, numeric, labels)
            if _is_parquet(p)
            else _fast_csv(p, columns, numeric, labels, delimiter)
        )
        if frame is not None:
            return frame
    return dict(read_table(p, columns, delimiter=delimiter))


def _is_parquet(p: Path) -> bool:
    return p.suffix.lower() in (".parquet", ".pq")


def _coded_arrow(col: Any, *, strip: bool = True) -> tuple[CodedColumn, np.ndarray]:
    """A pyarrow string column as a :class:`CodedColumn` (nulls as ``""``; ``strip``: values stripped
    of surrounding blanks and merged), encoded in C++; and per distinct value whether it is blank."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    enc = pc.dictionary_encode(col.fill_null("") if col.null_count else col)
    raw = enc.dictionary.to_pylist()
    codes = enc.indices.to_numpy(zero_copy_only=False)
    stripped = [v.strip() for v in raw]
    blank = np.array([not v for v in stripped], dtype=bool)
    if not strip:
        return CodedColumn(np.array(raw, dtype=str), codes), blank
    if stripped == raw:
        return CodedColumn(np.array(raw, dtype=str), codes, clean=True), blank
    values, inverse = np.unique(np.array(stripped, dtype=str), return_inverse=True)
    inverse = inverse.reshape(-1)
    merged_blank = np.zeros(values.shape[0], dtype=bool)
    merged_blank[inverse] = blank
    return CodedColumn(values, inverse[codes].astype(np.int32), clean=True), merged_blank


def _parquet_frame(
    p: Path, columns: Sequence[str], numeric: Sequence[str], labels: Sequence[str]
) -> dict[str, Column] | None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return None
    try:
        names = pq.read_schema(p).names
        if len(set(names)) != len(names) or any(c not in names for c in columns):
            return None
        table = pq.read_table(p, columns=list(columns))
    except (OSError, pa.ArrowException):
        return None
    if table.num_rows == 0:
        return None
    out: dict[str, Column] = {}
    for name in columns:
        col = table.column(name)
        t = col.type
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            from mtlkit.data.feature_encode import ListColumn

            out[name] = ListColumn.from_arrow(col)  # type: ignore[assignment]
        elif pa.types.is_integer(t) and name not in numeric and name not in labels and not col.null_count:
            out[name] = col.cast(pa.int64()).to_numpy()  # ids stay exact (float64 rounds beyond 2**53)
        elif pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
            out[name] = col.cast(pa.float64()).fill_null(np.nan).to_numpy()
        elif name in numeric:
            out[name] = np.asarray(col.cast(pa.string()).fill_null("").to_pylist(), dtype=str)
        else:
            out[name] = _coded_arrow(col.cast(pa.string()), strip=name not in labels)[0]
    return out


def _fast_csv(
    p: Path, columns: Sequence[str], numeric: Sequence[str], labels: Sequence[str], delimiter: str
) -> dict[str, Column] | None:
    """The columns of a regular CSV file read by pyarrow, or None (read it with :func:`read_table`)."""
    try:
        import pyarrow as pa
        import pyarrow.csv as pacsv
    except ImportError:
        return None
    if len(delimiter) != 1:
        return None
    try:
        header = csv_header_row(p, delimiter)
    except DataError:
        return None
    names = [h.strip() for h in header]
    if len(set(names)) != len(names) or len(set(header)) != len(header) or any(c not in names for c in columns):
        return None
    raw = {n.strip(): n for n in header}
    include = [raw[c] for c in columns]
    parse = pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=_may_quote(p))
    table = None
    # numeric features, and labels when they are all numbers, are parsed by pyarrow; other labels and
    # the categorical columns are read as text
    for as_numbers in ([*numeric, *labels], list(numeric)):
        types = {raw[c]: pa.float64() if c in as_numbers else pa.string() for c in columns}
        convert = pacsv.ConvertOptions(
            include_columns=include,
            column_types=types,
            null_values=_NULL_MARKERS,
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        )
        try:
            table = pacsv.read_csv(_csv_input(p), parse_options=parse, convert_options=convert)
            break
        except (pa.ArrowException, OSError, EOFError, ValueError, lzma.LZMAError):
            continue
    if table is None or table.num_rows == 0 or table.column_names != include:
        return None
    out: dict[str, Column] = {}
    blank = np.ones(table.num_rows, dtype=bool)
    for name, r in zip(columns, include):
        col = table.column(r)
        if pa.types.is_floating(col.type):
            x = col.to_numpy()
            if name in labels and np.isnan(x).sum() != col.null_count:
                return None  # a NaN written as a number ("-nan"): a label the csv-module path refuses
            blank &= np.isnan(x)
            out[name] = x
        else:
            coded, empty = _coded_arrow(col, strip=name not in labels)
            blank &= empty[coded.codes]
            out[name] = coded
    if blank.any():  # a row with nothing in the wanted columns: the csv module skips all-blank rows
        return None
    return out


def _csv_input(p: Path) -> Any:
    import pyarrow as pa

    if p.suffix.lower() in (".xz", ".lzma"):
        return pa.PythonFile(lzma.open(p, "rb"), mode="r")
    return pa.input_stream(str(p), compression="detect")


def _may_quote(p: Path) -> bool:
    """Whether the file may hold a quoted field (pyarrow then allows newlines inside values, as the
    csv module does); a plain file without any ``"`` cannot."""
    if p.suffix.lower() in (".gz", ".bz2", ".xz", ".lzma", ".zst", ".lz4", ".br"):
        return True
    if p.stat().st_size == 0:
        return False
    with p.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        return mm.find(b'"') >= 0


def _all_rows(rows: np.ndarray, n: int) -> bool:
    """Whether ``rows`` (sorted, distinct) is every row ``0..n-1``."""
    return rows.shape[0] == n


def _take(col: Column, rows: np.ndarray) -> Column:
    if _all_rows(rows, len(col)):
        return col
    return col[rows] if isinstance(col, np.ndarray) else col.take(rows)  # CodedColumn, ListColumn


# ---------------------------------------------------------------------------------------------- labels
@dataclass(frozen=True)
class _Labels:
    """A label column by distinct value: per row ``codes``; per distinct value the raw value, whether it
    is missing, its canonical label string (1, 1.0 and " 1" are the same label) and its number."""

    codes: np.ndarray
    raw: np.ndarray
    missing: np.ndarray
    label: np.ndarray
    number: np.ndarray

    @property
    def row_missing(self) -> np.ndarray:
        return self.missing[self.codes]


def _labels(values: Column) -> _Labels:
    if isinstance(values, np.ndarray) and values.dtype.kind in "biuf":
        x = values.astype(np.float64)
        nan = np.isnan(x)
        if np.all((x == 0.0) | (x == 1.0) | nan):  # the usual binary column: no sort needed
            u = np.array([0.0, 1.0, np.nan])
            codes = np.where(nan, 2, x).astype(np.int64)
        else:
            u, codes = np.unique(x, return_inverse=True)
            codes = codes.reshape(-1)
        label = np.char.mod("%.12g", np.nan_to_num(u)).astype(str)
        return _Labels(codes, u, np.isnan(u), label, u)
    col = values if isinstance(values, CodedColumn) else as_coded(np.asarray(values).astype(str))
    stripped = [v.strip() for v in col.values.tolist()]
    canon = [_canonical_number(v) for v in stripped]
    return _Labels(
        codes=col.codes.astype(np.int64),
        raw=col.values,
        missing=np.array([v.lower() in MISSING_VALUES for v in stripped], dtype=bool),
        label=np.array([c if c is not None else v for c, v in zip(canon, stripped)], dtype=str),
        number=np.array([float(c) if c is not None else np.nan for c in canon], dtype=np.float64),
    )


def _canonical_number(v: str) -> str | None:
    try:
        return f"{float(v):.12g}"
    except ValueError:
        return None


def _encode_labels(
    name: str, spec: TaskColumn, splits: Mapping[str, Column], origins: Mapping[str, Origin]
) -> tuple[dict[str, torch.Tensor], Task, dict[str, Any]]:
    """Targets per split (NaN / -1 = missing), the Task and facts about the labels.

    Labels are decided once per distinct value. Errors name the file and data row a bad label
    comes from (``origins``)."""
    coded = {s: _labels(v) for s, v in splits.items()}
    missing = {s: c.row_missing for s, c in coded.items()}
    info: dict[str, Any] = {"column": spec.column, "kind": spec.kind}
    train_file = origins["train"].file
    if spec.kind == "regression":
        out = {}
        for s, c in coded.items():
            bad = np.flatnonzero(~c.missing & np.isnan(c.number))
            rows_bad = np.flatnonzero(np.isin(c.codes, bad)) if bad.size else bad
            if rows_bad.size:
                i = int(rows_bad[0])
                raise DataError(
                    f"{origins[s].file}: task {name!r} is a regression but its column {spec.column!r} holds the "
                    f"non-numeric label {str(c.raw[c.codes[i]])!r} in {origins[s].row(i)}. Clean the label, leave "
                    "it blank (missing), or declare the task binary/multiclass."
                )
            x = np.where(missing[s], np.nan, c.number[c.codes])
            ok = np.flatnonzero(~missing[s])
            inf = np.flatnonzero(np.isinf(x))
            if inf.size:
                i = int(inf[0])
                raise DataError(
                    f"{origins[s].file}: task {name!r} (column {spec.column!r}) has the label {float(x[i])!r} in "
                    f"{origins[s].row(i)}; regression labels must be finite numbers (blank = missing)."
                )
            if np.any(np.abs(x[ok]) > np.finfo(np.float32).max):
                i = int(ok[np.flatnonzero(np.abs(x[ok]) > np.finfo(np.float32).max)[0]])
                raise DataError(
                    f"{origins[s].file}: task {name!r} (column {spec.column!r}) has the label {float(x[i])!r} in "
                    f"{origins[s].row(i)}, beyond the float32 range of the model; rescale the column."
                )
            out[s] = torch.from_numpy(x.astype(np.float32))
        return out, Task(name=name, kind="regression"), info
    train = coded["train"]
    used = np.flatnonzero(np.bincount(train.codes[~missing["train"]], minlength=train.label.shape[0]))
    train_present = np.unique(train.label[used])
    if spec.classes is not None:
        classes = [str(_canonical_number(c) or c).strip() for c in spec.classes]
    elif spec.kind == "binary":
        classes = ["0", "1"]
    else:
        numbers = [_canonical_number(v) for v in train_present.tolist()]
        if numbers and all(n is not None and float(n).is_integer() and float(n) >= 0 for n in numbers):
            k = spec.num_classes or int(max(float(n) for n in numbers if n is not None)) + 1
            classes = [f"{i:.12g}" for i in range(k)]
        else:
            classes = sorted(train_present.tolist())
    if spec.kind == "binary" and len(classes) != 2:
        raise DataError(
            f"{train_file}: task {name!r} is binary, so classes must list 2 values; got {spec.classes}."
        )
    if spec.kind == "multiclass" and spec.num_classes is not None and spec.num_classes != len(classes):
        raise DataError(
            f"{train_file}: task {name!r} has num_classes={spec.num_classes} but {len(classes)} classes "
            f"{classes[:10]}."
        )
    if spec.kind == "multiclass" and len(classes) < 2:
        raise DataError(
            f"{train_file}: task {name!r} (column {spec.column!r}) has fewer than 2 classes in the training "
            f"rows ({classes}); a multiclass task needs at least 2. List them with classes: [...], or make the "
            "task binary."
        )
    index = {c: i for i, c in enumerate(classes)}
    out = {}
    for s, c in coded.items():
        per_value = np.array([index.get(v, -2) for v in c.label.tolist()], dtype=np.int64)
        codes = per_value[c.codes]
        codes[missing[s]] = -1
        unknown = np.flatnonzero(codes == -2)
        if unknown.size:
            bad = sorted(set(c.label[np.unique(c.codes[unknown])].tolist()))[:5]
            learned = (
                "its classes"
                if spec.classes is not None or spec.kind == "binary"
                else f"the classes found in the training file {train_file}"
            )
            raise DataError(
                f"{origins[s].file} ({SPLIT_NAMES[s]} data): task {name!r} (column {spec.column!r}) has labels "
                f"{bad} outside {learned} {classes[:10]}{'...' if len(classes) > 10 else ''} (first in "
                f"{origins[s].row(int(unknown[0]))}). "
                + (
                    "List every class in classes: [...]."
                    if spec.kind == "multiclass" or spec.classes is not None
                    else "Binary labels must be 0/1, or set classes: [negative, positive]."
                )
            )
        if spec.kind == "binary":
            out[s] = torch.from_numpy(np.where(codes < 0, np.nan, codes).astype(np.float32))
        else:
            out[s] = torch.from_numpy(codes)
    info["classes"] = classes
    task = (
        Task(name=name, kind=spec.kind)
        if spec.kind == "binary"
        else Task(name=name, kind="multiclass", num_classes=len(classes))
    )
    return out, task, info


def task_specs(tasks: Mapping[str, Any]) -> dict[str, TaskColumn]:
    """``{task: TaskColumn}`` from the ``tasks`` mapping of a tabular data section (in memory or
    streamed); a bad entry is a DataError naming ``tasks.<name>.<key>``."""
    if not tasks:
        raise DataError("tabular: tasks must name at least one task: {name: {column: ..., kind: ...}}.")
    specs: dict[str, TaskColumn] = {}
    for name, spec in tasks.items():
        try:
            specs[name] = spec if isinstance(spec, TaskColumn) else TaskColumn.model_validate(spec)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(x) for x in first["loc"])
            raise DataError(f"tabular: tasks.{name}.{where}: {first['msg']}.") from None
    return specs


# ---------------------------------------------------------------------------------------------- builder
@DATASETS.register("tabular", aliases=("csv", "parquet"))
def tabular(
    *,
    train: str | list[str],
    tasks: dict[str, TaskColumn],
    numeric: Sequence[str | dict[str, Any]] = (),
    categorical: Sequence[str | dict[str, Any]] = (),
    val: str | list[str] | None = None,
    test: str | list[str] | None = None,
    val_fraction: Fraction = 0.0,
    test_fraction: Fraction = 0.0,
    split_seed: int = 0,
    delimiter: str = ",",
    min_frequency: int = 1,
    max_categories: PositiveInt | None = None,
    unknown_fraction: Fraction = 0.01,
    preprocessor: str | None = None,
    streaming: bool = False,
    shuffle_buffer: PositiveInt = DEFAULT_SHUFFLE_BUFFER,
    num_workers: NonNegativeInt | None = None,
    fit_rows: PositiveInt | None = None,
    weights: WeightsSpec | None = None,
) -> DataSplits:
    """Your CSV / Parquet files: named numeric and categorical feature columns, one label column per task.

    Args:
        train: the training file (CSV with a header row, optionally compressed, or Parquet).
        tasks: ``{task name: {column, kind, num_classes?, classes?}}`` (see :class:`TaskColumn`).
        numeric: numeric feature columns (standardised with training statistics), names or specs
            (``{name, transform: log1p}``, ``{name, bucketize: [...]}``; see :mod:`mtlkit.data.features`).
        categorical: categorical feature columns (embedded; unseen values share index 0), names or
            specs (``hash_buckets``, ``dim``, ``share``, ``list``; see :mod:`mtlkit.data.features`).
        val: a validation file; or ``val_fraction`` of the training rows.
        test: a test file; or ``test_fraction`` of the training rows.
        val_fraction: share of the training file held out for validation (when ``val`` is not given).
        test_fraction: share of the training file held out for testing (when ``test`` is not given).
        split_seed: seeds the held-out rows.
        delimiter: CSV field separator.
        min_frequency: categories seen fewer times in training map to the unknown bucket.
        max_categories: keep at most this many categories per column (the most frequent).
        unknown_fraction: share of the training split's categorical cells replaced by the unknown
            bucket in each epoch (:class:`~mtlkit.data.preprocessing.UnknownCategoryDropout`,
            seeded by the trainer's seed and the epoch), so the embedding used for unseen values
            is trained; 0 turns it off.
        preprocessor: a saved preprocessor (``preprocessor.json`` or the run directory holding it)
            to use instead of fitting one.
        streaming: read the files window by window instead of whole (data larger than memory):
            returns :func:`mtlkit.data.streaming.tabular_stream`'s splits. ``train``/``val``/``test``
            may then be a file, a folder, a glob pattern or a list of them; ``val_fraction`` and
            ``test_fraction`` are refused (give ``val``/``test`` files).
        shuffle_buffer: streaming: rows per shuffle window (default 65,536).
        num_workers: streaming: DataLoader worker processes (default: chosen from the core count).
        fit_rows: streaming: fit the preprocessor on the first ``fit_rows`` labelled training rows
            only (default: all of them).
        weights: ``{column: w}``: a sample-weight column for every task (a task's ``weight_column``
            overrides it); losses and metrics are then weighted means.
    """
    specs = task_specs(tasks)
    if not numeric and not categorical:
        raise DataError("tabular: name the feature columns: numeric: [...] and/or categorical: [...].")
    feature_specs, categorical_names, numeric_names = _feature_specs(categorical, numeric)
    features = [*categorical_names, *numeric_names]
    UnknownCategoryDropout(unknown_fraction)  # checks the value
    overlap = sorted({s.column for s in specs.values()} & set(features))
    if overlap:
        raise DataError(
            f"tabular: label column(s) {overlap} are also listed as features; a model must not see its labels."
        )
    for what, frac, given in (("val", val_fraction, val), ("test", test_fraction, test)):
        if not 0.0 <= frac < 1.0:
            raise DataError(f"tabular: {what}_fraction must be in [0, 1); got {frac!r}.")
        if frac and given is not None:
            raise DataError(f"tabular: give {what}= (a file) or {what}_fraction=, not both.")
    if val_fraction + test_fraction >= 1.0:
        raise DataError("tabular: val_fraction + test_fraction must leave training rows (sum < 1).")
    task_weights = weight_columns(specs, weights)
    if streaming:
        return _streamed(
            train=train,
            val=val,
            test=test,
            specs=specs,
            numeric=numeric,
            categorical=categorical,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            delimiter=delimiter,
            min_frequency=min_frequency,
            max_categories=max_categories,
            unknown_fraction=unknown_fraction,
            preprocessor=preprocessor,
            shuffle_buffer=shuffle_buffer,
            num_workers=num_workers,
            fit_rows=fit_rows,
            **({"weights": weights} if weights is not None else {}),
        )
    _refuse_streaming_options(
        train=train, val=val, test=test, shuffle_buffer=shuffle_buffer, num_workers=num_workers, fit_rows=fit_rows
    )
    assert isinstance(train, str)
    label_columns = list(dict.fromkeys(s.column for s in specs.values()))
    groups = metric_options(specs, header_columns(train, delimiter), file=str(train))
    wanted = list(dict.fromkeys([*features, *label_columns, *task_weights.values(), *groups]))
    files = {"train": str(train), "val": val, "test": test}
    frames = {"train": _read_frame(train, wanted, features, numeric_names, delimiter=delimiter)}
    for what in ("val", "test"):
        if files[what] is not None:
            frames[what] = _read_frame(files[what], wanted, features, numeric_names, delimiter=delimiter)
    origins = {s: Origin(str(files[s]), np.arange(len(f[wanted[0]]))) for s, f in frames.items()}
    for s, f in frames.items():
        for c in numeric_names:
            check_numeric(f[c], column=c, origin=origins[s])
    n = len(frames["train"][wanted[0]])
    perm = np.random.default_rng(split_seed).permutation(n)
    n_val, n_test = round(val_fraction * n), round(test_fraction * n)
    check_split_sizes(
        n,
        train=str(train),
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        n_val=n_val,
        n_test=n_test,
    )
    held = {"val": np.sort(perm[:n_val]), "test": np.sort(perm[n_val : n_val + n_test])}
    train_rows = np.sort(perm[n_val + n_test :])
    held_out = [what for what in ("val", "test") if what not in frames and len(held[what])]
    for what in held_out:
        frames[what] = {c: _take(v, held[what]) for c, v in frames["train"].items()}
        origins[what] = Origin(str(train), held[what])
    frames["train"] = {c: _take(v, train_rows) for c, v in frames["train"].items()}
    origins["train"] = Origin(str(train), train_rows)

    targets: dict[str, dict[str, torch.Tensor]] = {s: {} for s in frames}
    task_list: list[Task] = []
    label_info: dict[str, Any] = {}
    for name, spec in specs.items():
        per_split, task, info = _encode_labels(
            name, spec, {s: f[spec.column] for s, f in frames.items()}, origins
        )
        train_labels = per_split["train"] if spec.transform is not None else None
        task = apply_task_options(task, spec, train_labels)
        task_list.append(replace(task, auxiliary=True) if spec.auxiliary else task)
        label_info[name] = info
        for s, t in per_split.items():
            targets[s][name] = t
    task_tuple = tuple(task_list)
    present = {
        s: {k: ~np.isnan(t.numpy()) if t.is_floating_point() else t.numpy() >= 0 for k, t in ts.items()}
        for s, ts in targets.items()
    }
    check_task_labels(present, {k: v.column for k, v in specs.items()}, origins, held_out)
    keep = {s: np.flatnonzero(np.any(np.stack(list(p.values())), axis=0)) for s, p in present.items()}
    if len(keep["train"]) < MIN_TRAIN_ROWS:
        raise DataError(
            f"{train}: only {len(keep['train'])} training row(s) have a label for any task; training needs at "
            f"least {MIN_TRAIN_ROWS}. Fill in labels, or add rows."
        )
    if preprocessor is not None:
        pre = load_preprocessor(preprocessor, categorical=categorical_names, numeric=numeric_names)
    else:
        pre = TabularPreprocessor(
            categorical=feature_specs.categorical,
            numeric=feature_specs.numeric,
            min_frequency=min_frequency,
            max_categories=max_categories,
        )
        fit_coded(pre, {c: _take(frames["train"][c], keep["train"]) for c in features}, source=_PRE)
    augment = UnknownCategoryDropout(unknown_fraction) if categorical and unknown_fraction > 0 else None
    datasets: dict[str, MultiTaskDataset | None] = {"val": None, "test": None}
    for s, rows in keep.items():
        inputs = transform_coded(pre, {c: _take(frames[s][c], rows) for c in features}, source=_PRE)
        where = Origin(origins[s].file, origins[s].rows[rows])
        columns = {
            c: torch.from_numpy(weight_values(_take(frames[s][c], rows), column=c, file=where.file, row=where.row))
            for c in dict.fromkeys(task_weights.values())
        }
        datasets[s] = MultiTaskDataset(
            inputs,
            {k: v if _all_rows(rows, len(v)) else v[rows] for k, v in targets[s].items()},
            tasks=task_tuple,
            augment=augment if s == "train" else None,
            weights={t: columns[c] for t, c in task_weights.items()} or None,
            columns={c: torch.from_numpy(group_ids(_take(frames[s][c], rows))) for c in groups} or None,
            info={"origin": where},  # each row's file and data row (errors found later name them)
        )
    info = {
        "dataset": "tabular",
        "files": {"train": str(train), "val": val, "test": test},
        "rows": {s: (len(d) if d is not None else 0) for s, d in datasets.items()},
        "dropped_unlabelled": {s: len(frames[s][wanted[0]]) - len(keep[s]) for s in frames},
        "tasks": label_info,
        "categorical": categorical_names,
        "numeric": numeric_names,
        **({"weights": task_weights} if task_weights else {}),
    }
    assert datasets["train"] is not None
    return DataSplits(
        train=datasets["train"],
        val=datasets["val"],
        test=datasets["test"],
        tasks=task_tuple,
        input_spec=pre.schema,
        info=info,
        preprocessor=pre,
    )


def _feature_specs(
    categorical: Sequence[Any], numeric: Sequence[Any]
) -> tuple[FeatureSpecs, list[str], list[str]]:
    """The parsed feature specs and the categorical and numeric column names, each listed once."""
    specs = parse_features(categorical, numeric, who="tabular")
    cat, num = [f.name for f in specs.categorical], [f.name for f in specs.numeric]
    features = [*cat, *num]
    dup = sorted({c for c in features if features.count(c) > 1})
    if dup:
        raise DataError(
            f"tabular: feature column(s) {dup} are listed more than once (in categorical and/or numeric); "
            "list each column once, as categorical or as numeric."
        )
    return specs, cat, num


def _streamed(
    *,
    train: str | list[str],
    val: str | list[str] | None,
    test: str | list[str] | None,
    specs: dict[str, TaskColumn],
    numeric: Sequence[Any],
    categorical: Sequence[Any],
    val_fraction: float,
    test_fraction: float,
    delimiter: str,
    **options: Any,
) -> DataSplits:
    """``streaming: true``: :func:`mtlkit.data.streaming.tabular_stream` builds the streams (it
    checks every file's header or Parquet schema first); a split naming no file is refused here,
    naming the split."""
    for what, frac in (("val", val_fraction), ("test", test_fraction)):
        if frac:
            raise DataError(
                f"tabular: {what}_fraction cannot be used with streaming: true (streamed rows are never held "
                f"in memory to be split); give the {SPLIT_NAMES[what]} rows as files: {what}: <file, folder, "
                "glob or list>."
            )
    for what, spec in (("train", train), ("val", val), ("test", test)):
        if spec is not None:
            try:
                expand_paths(spec)
            except DataError as exc:  # name the split
                raise DataError(f"tabular: {what}: {exc}") from None
    from mtlkit.data.streaming import tabular_stream  # checks every file's columns before reading rows

    return tabular_stream(
        train=train,
        tasks=specs,
        numeric=numeric,
        categorical=categorical,
        val=val,
        test=test,
        delimiter=delimiter,
        **options,
    )


def _refuse_streaming_options(
    *,
    train: str | list[str],
    val: str | list[str] | None,
    test: str | list[str] | None,
    shuffle_buffer: int,
    num_workers: int | None,
    fit_rows: int | None,
) -> None:
    """Without ``streaming: true``: one file per split, and no streaming-only option."""
    for what, spec in (("train", train), ("val", val), ("test", test)):
        if spec is None:
            continue
        one_file = isinstance(spec, str) and (
            Path(spec).expanduser().is_file() or not (Path(spec).expanduser().is_dir() or any(c in spec for c in "*?["))
        )
        if not one_file:
            raise DataError(
                f"tabular: {what}: {spec!r} names several files (a list, a folder or a glob pattern); that needs "
                "streaming: true. Without streaming, give one file."
            )
    given = {
        "shuffle_buffer": shuffle_buffer != DEFAULT_SHUFFLE_BUFFER,
        "num_workers": num_workers is not None,
        "fit_rows": fit_rows is not None,
    }
    for name, set_ in given.items():
        if set_:
            raise DataError(f"tabular: {name} applies to streaming: true only; add streaming: true or remove it.")


def load_preprocessor(
    path: str | Path, *, categorical: Sequence[str], numeric: Sequence[str]
) -> TabularPreprocessor:
    """A saved :class:`TabularPreprocessor` (``preprocessor.json`` or a run directory holding one),
    checked to be fitted on these columns."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "preprocessor.json"
    try:
        state = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"Cannot read the saved preprocessor {p} ({exc}).") from None
    pre = TabularPreprocessor.from_state_dict(state)
    if list(pre.categorical) != list(categorical) or list(pre.numeric) != list(numeric):
        raise DataError(
            f"The saved preprocessor {p} was fitted on columns {list(pre.categorical)} + {list(pre.numeric)}, "
            f"not on these data's {list(categorical)} + {list(numeric)}; it was saved for other data."
        )
    return pre
