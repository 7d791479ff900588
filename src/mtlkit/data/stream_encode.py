"""Record batches -> tensors, vectorised, by the rules of the in-memory ``tabular`` dataset.

:class:`StreamEncoder` applies a fitted :class:`~mtlkit.data.preprocessing.TabularPreprocessor`'s
state to pyarrow columns (categorical values looked up in the vocabulary with
``pyarrow.compute.index_in``; unknown and missing -> 0; numeric values standardised, missing -> 0)
and encodes labels as :func:`mtlkit.data.tabular._encode_labels` does (binary: float 0/1, NaN
missing; multiclass: long class index, -1 missing; regression: float32, NaN missing). Labels are
decided once per distinct value of a batch, never per row in Python. The result equals
``TabularPreprocessor.transform`` on the same rows (tested). Errors name the file, the column and
the data row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mtlkit.data.arrow_io import BatchOrigin, column_floats, is_numeric_type
from mtlkit.data.preprocessing import MISSING_VALUES, TabularPreprocessor, standardise
from mtlkit.data.schema import CATEGORICAL, NUMERIC
from mtlkit.errors import DataError

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["LabelSpec", "StreamEncoder", "canonical_label"]

_F32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class LabelSpec:
    """How one task's label column is encoded: ``kind`` and, for binary / multiclass, the classes
    (canonical label strings, in class order)."""

    task: str
    column: str
    kind: str
    classes: tuple[str, ...] = ()


def canonical_label(value: str) -> tuple[bool, str]:
    """``(missing, label)`` of a raw label text as ``tabular`` reads it: stripped; a number written
    with ``%.12g`` (1, 1.0 and " 1" are one label)."""
    s = value.strip()
    try:
        return s.lower() in MISSING_VALUES, f"{float(s):.12g}"
    except ValueError:
        return s.lower() in MISSING_VALUES, s


def _distinct(array: pa.Array | pa.ChunkedArray) -> tuple[list[Any], np.ndarray, bool]:
    """``(distinct values, per-row index into them, numeric)``; numbers as float64 (null -> NaN),
    anything else as text (null -> "")."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
    if is_numeric_type(array.type):
        x = pc.cast(array, pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
        u, inverse = np.unique(x, return_inverse=True)
        return u.tolist(), inverse.reshape(-1), True
    text = pc.cast(array, pa.string()) if not pa.types.is_string(array.type) else array
    enc = pc.dictionary_encode(text.fill_null(""))
    return enc.dictionary.to_pylist(), enc.indices.to_numpy(zero_copy_only=False).astype(np.int64), False


class StreamEncoder:
    """Encodes pyarrow tables of raw columns into feature and target arrays (picklable).

    Args:
        preprocessor: the fitted preprocessor (its state is copied).
        labels: how each task's label is encoded (empty for prediction).
    """

    def __init__(
        self,
        preprocessor: TabularPreprocessor,
        labels: Sequence[LabelSpec] = (),
        weights: Mapping[str, str] | None = None,
        groups: Sequence[str] = (),
    ) -> None:
        self.state = preprocessor.state_dict()
        self.preprocessor = (
            None if preprocessor.plain else preprocessor
        )  # feature specs: encoded by feature_encode
        self.categorical: tuple[str, ...] = tuple(preprocessor.categorical)
        self.numeric: tuple[str, ...] = tuple(preprocessor.numeric)
        self.labels = tuple(labels)
        self.weights = dict(weights or {})  # {task: sample-weight column}
        self.groups = tuple(groups)  # group columns of grouped metrics (int64 ids in "g:<column>")
        self.funnel: Any = None  # a FunnelLabels deriving ESMM/AITM labels (mtlkit.data.funnel), or None
        self._vocab: dict[str, Any] | None = None

    @property
    def feature_columns(self) -> list[str]:
        return [*self.categorical, *self.numeric]

    @property
    def label_columns(self) -> list[str]:
        """The label and sample-weight columns (those that are not features)."""
        wanted = [*(s.column for s in self.labels), *self.weights.values(), *self.groups]
        return list(dict.fromkeys(c for c in wanted if c not in self.feature_columns))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_vocab": None}

    def _vocabularies(self) -> dict[str, Any]:
        import pyarrow as pa

        if self._vocab is None:
            self._vocab = {c: pa.array(self.state["vocabularies"][c], pa.string()) for c in self.categorical}
        return self._vocab

    # ------------------------------------------------------------------ features
    def features(self, table: pa.Table | pa.RecordBatch, origin: BatchOrigin) -> dict[str, np.ndarray]:
        """``{"categorical": (n, C) int64, "numeric": (n, D) float32}`` (keys without columns left out)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if self.preprocessor is not None:
            from mtlkit.data.feature_encode import arrow_columns, transform_features

            columns = arrow_columns(self.preprocessor, table, origin)
            source = f"{origin.file} (from {origin.row(0)})"
            return {
                k: v.numpy() for k, v in transform_features(self.preprocessor, columns, source=source).items()
            }
        n = table.num_rows
        out: dict[str, np.ndarray] = {}
        if self.categorical:
            vocab = self._vocabularies()
            codes = np.zeros((n, len(self.categorical)), dtype=np.int64)
            for j, c in enumerate(self.categorical):
                col = table.column(c)
                if is_numeric_type(col.type):
                    codes[:, j] = self._numeric_codes(c, col)
                else:
                    text = pc.cast(col, pa.string()) if not pa.types.is_string(col.type) else col
                    trimmed = pc.utf8_trim_whitespace(text.fill_null(""))
                    idx = pc.index_in(trimmed, value_set=vocab[c])
                    codes[:, j] = idx.fill_null(-1).to_numpy(zero_copy_only=False) + 1
            out[CATEGORICAL] = codes
        if self.numeric:
            stats = self.state["stats"]
            mat = np.zeros((n, len(self.numeric)), dtype=np.float32)
            for j, c in enumerate(self.numeric):
                x = column_floats(table.column(c), column=c, origin=origin)
                mean, std = stats[c]
                mat[:, j] = standardise(
                    x, mean, std, column=c, source=f"{origin.file} (from {origin.row(0)})"
                )
            out[NUMERIC] = mat
        return out

    def _integer_vocabulary(self, c: str) -> tuple[Any, np.ndarray]:
        """The entries of ``c``'s vocabulary that are integers written as ``%.12g`` writes them
        (``"42"``), as float64 values, and their codes."""
        import pyarrow as pa

        key = f"int:{c}"
        vocab = self._vocabularies()
        if key not in vocab:
            values, codes = [], []
            for i, v in enumerate(self.state["vocabularies"][c]):
                try:
                    x = float(v)
                except ValueError:
                    continue
                if x.is_integer() and abs(x) < 1e12 and f"{x:.12g}" == v:
                    values.append(x), codes.append(i + 1)
            vocab[key] = (pa.array(values, pa.float64()), np.asarray(codes, dtype=np.int64))
        return vocab[key]

    def _numeric_codes(self, c: str, col: Any) -> np.ndarray:
        """Codes of a numeric-typed categorical column: a value is the category ``"%.12g" % value``.
        Integers below 1e12 (ids) are looked up as numbers; other values by their text, once per
        distinct value."""
        import pyarrow as pa
        import pyarrow.compute as pc

        x = pc.cast(col, pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
        out = np.zeros(x.shape[0], dtype=np.int64)
        with np.errstate(invalid="ignore"):
            whole = np.isfinite(x) & (np.abs(x) < 1e12) & (x == np.floor(x))
        values, codes = self._integer_vocabulary(c)
        if whole.any():
            pos = (
                pc.index_in(pa.array(x[whole]), value_set=values).fill_null(-1).to_numpy(zero_copy_only=False)
            )
            out[whole] = np.where(pos >= 0, codes[np.maximum(pos, 0)] if codes.size else 0, 0)
        rest = np.flatnonzero(~whole & ~np.isnan(x))
        if rest.size:
            u, inverse = np.unique(x[rest], return_inverse=True)
            text = np.char.mod("%.12g", u).astype(str)
            idx = pc.index_in(pa.array(text.tolist(), pa.string()), value_set=self._vocabularies()[c])
            out[rest] = (idx.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64) + 1)[
                inverse.reshape(-1)
            ]
        return out

    # ------------------------------------------------------------------ labels
    def targets(self, table: pa.Table | pa.RecordBatch, origin: BatchOrigin) -> dict[str, np.ndarray]:
        """``{task: targets}`` (binary float32 0/1 or NaN, multiclass int64 or -1, regression float32 or NaN)."""
        out = {s.task: self._label(s, table.column(s.column), origin) for s in self.labels}
        if self.funnel is not None:  # the funnel's labels from the click and purchase columns
            f = self.funnel
            click, purchase = out[f.ctr], out.pop(f.cvr)
            out.update(f.derive(click, purchase, lambda i: f"{origin.file}: {origin.row(i)}"))
        return out

    def _label(self, spec: LabelSpec, col: Any, origin: BatchOrigin) -> np.ndarray:
        values, inverse, numeric = _distinct(col)
        if spec.kind == "regression":
            return self._regression(spec, values, inverse, numeric, origin)
        index = {c: i for i, c in enumerate(spec.classes)}
        per_value = np.empty(len(values), dtype=np.int64)
        for k, v in enumerate(values):
            if numeric:
                per_value[k] = -1 if np.isnan(v) else index.get(f"{v:.12g}", -2)
            else:
                missing, label = canonical_label(v)
                per_value[k] = -1 if missing else index.get(label, -2)
        codes = per_value[inverse] if len(values) else np.zeros(0, dtype=np.int64)
        bad = np.flatnonzero(codes == -2)
        if bad.size:
            i = int(bad[0])
            raw = values[inverse[i]]
            shown = f"{raw:.12g}" if numeric else str(raw).strip()
            raise DataError(
                f"{origin.file}: task {spec.task!r} (column {spec.column!r}) has the label {shown!r} in "
                f"{origin.row(i)}, outside its classes {list(spec.classes)[:10]}"
                f"{'...' if len(spec.classes) > 10 else ''}. "
                + (
                    "Binary labels must be 0/1, or set classes: [negative, positive]."
                    if spec.kind == "binary"
                    else "List every class in classes: [...]."
                )
            )
        if spec.kind == "binary":
            return np.where(codes < 0, np.nan, codes).astype(np.float32)
        return codes

    @staticmethod
    def _regression(
        spec: LabelSpec, values: list[Any], inverse: np.ndarray, numeric: bool, origin: BatchOrigin
    ) -> np.ndarray:
        if numeric:
            per_value = np.asarray(values, dtype=np.float64)
        else:
            per_value = np.empty(len(values), dtype=np.float64)
            for k, v in enumerate(values):
                missing, label = canonical_label(v)
                try:
                    per_value[k] = np.nan if missing else float(label)
                except ValueError:
                    per_value[k] = np.nan  # not a number: refused below
                if not missing and np.isnan(per_value[k]):
                    i = int(np.flatnonzero(inverse == k)[0])
                    raise DataError(
                        f"{origin.file}: task {spec.task!r} is a regression but its column {spec.column!r} holds "
                        f"the non-numeric label {v.strip()!r} in {origin.row(i)}. Clean the label, leave it "
                        "blank (missing), or declare the task binary/multiclass."
                    )
        x = per_value[inverse] if len(values) else np.zeros(0)
        big = np.flatnonzero(np.isinf(x) | (np.abs(np.nan_to_num(x)) > _F32_MAX))
        if big.size:
            i = int(big[0])
            what = (
                "regression labels must be finite numbers (blank = missing)"
                if np.isinf(x[i])
                else ("beyond the float32 range of the model; rescale the column")
            )
            raise DataError(
                f"{origin.file}: task {spec.task!r} (column {spec.column!r}) has the label {float(x[i])!r} in "
                f"{origin.row(i)}; {what}."
            )
        return x.astype(np.float32)

    # ------------------------------------------------------------------ both
    def encode(self, table: pa.Table | pa.RecordBatch, origin: BatchOrigin) -> dict[str, np.ndarray]:
        """Features, ``"y:<task>"`` targets, ``"w:<task>"`` sample weights and ``"g:<column>"``
        group ids of one slice of one file."""
        from mtlkit.data.metric_columns import group_ids

        out = self.features(table, origin)
        out.update({f"y:{k}": v for k, v in self.targets(table, origin).items()})
        out.update({f"w:{k}": v for k, v in self.sample_weights(table, origin).items()})
        out.update({f"g:{c}": group_ids(table.column(c)) for c in self.groups})
        return out

    def sample_weights(self, table: pa.Table | pa.RecordBatch, origin: BatchOrigin) -> dict[str, np.ndarray]:
        """``{task: float32 weights}`` from the weight columns (each column read once), refusing a
        blank, non-numeric, infinite or negative weight with its file and data row, as ``tabular``."""
        from mtlkit.data.arrow_io import column_floats
        from mtlkit.data.task_options import weight_values

        by_column = {
            c: weight_values(
                column_floats(table.column(c), column=c, origin=origin), column=c, file=str(origin.file),
                row=origin.row,
            ).astype(np.float32)
            for c in dict.fromkeys(self.weights.values())
        }
        return {task: by_column[c] for task, c in self.weights.items()}


def label_specs(specs: Mapping[str, Any], classes: Mapping[str, Sequence[str]]) -> tuple[LabelSpec, ...]:
    """:class:`LabelSpec` s from ``{task: TaskColumn}`` and the classes of binary / multiclass tasks."""
    return tuple(LabelSpec(name, s.column, s.kind, tuple(classes.get(name, ()))) for name, s in specs.items())
