"""Reading raw columns for prediction and writing predictions chunk by chunk (``mtlkit predict``).

:class:`PredictionWriter` appends chunks of columns to a Parquet file (``pyarrow.parquet.ParquetWriter``,
one row group per chunk) or a CSV file (anything else), so that prediction over inputs of any size
never holds more than one chunk. It writes ``<out>.partial`` and renames it to ``out`` when
:meth:`~PredictionWriter.close` succeeds; :meth:`~PredictionWriter.abort` removes it, so a failed
prediction leaves no half-written output.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from mtlkit.errors import DataError

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

__all__ = ["PredictionWriter", "arrow_values", "format_value", "shift_rows"]


def arrow_values(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A raw input column as the preprocessing reads it: numbers as float64 (nulls as NaN), anything
    else as strings (nulls as ``""``), as :func:`mtlkit.data.tabular.read_table` reads Parquet."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from mtlkit.data.arrow_io import is_numeric_type

    if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):  # a list-valued feature
        from mtlkit.data.feature_encode import ListColumn

        return ListColumn.from_arrow(array)  # type: ignore[return-value]
    if is_numeric_type(array.type):
        return np.asarray(pc.cast(array, pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False))
    text = array if pa.types.is_string(array.type) else pc.cast(array, pa.string())
    return np.asarray(text.fill_null("").to_numpy(zero_copy_only=False), dtype=str)


_ROW = re.compile(r"\brow (\d+)")


def shift_rows(message: str, offset: int) -> str:
    """``message`` with each ``row N`` (1-based within a chunk) turned into the file's data row
    ``N + offset``."""
    if not offset:
        return message
    return _ROW.sub(lambda m: f"row {int(m.group(1)) + offset}", message)


def format_value(v: Any) -> str:
    """A CSV cell: floats with 9 significant digits (float32 round-trips), None as blank."""
    if v is None:
        return ""
    if isinstance(v, (float, np.floating)):
        return format(float(v), ".9g")
    return str(v)


class PredictionWriter:
    """Appends chunks ``{column: values}`` (numpy arrays or pyarrow arrays) to ``out``: Parquet when its
    suffix is ``.parquet`` / ``.pq``, else CSV. Every chunk must have the columns of the first."""

    def __init__(self, out: str | os.PathLike[str]) -> None:
        self.out = Path(out)
        self.parquet = self.out.suffix.lower() in (".parquet", ".pq")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.partial = self.out.with_name(self.out.name + ".partial")
        self.rows = 0
        self._names: list[str] | None = None
        self._pq: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None
        self._fh: TextIO | None = None
        self._csv: Any = None

    def write(self, columns: Mapping[str, Any]) -> None:
        names = list(columns)
        if self._names is None:
            self._names = names
        elif names != self._names:
            raise DataError(f"prediction chunk has columns {names}, expected {self._names}.")
        n = len(next(iter(columns.values()))) if columns else 0
        if self.parquet:
            self._write_parquet(columns)
        else:
            self._write_csv(columns, n)
        self.rows += n

    def _write_parquet(self, columns: Mapping[str, Any]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({k: v if isinstance(v, (pa.Array, pa.ChunkedArray)) else pa.array(v) for k, v in columns.items()})
        if self._pq is None:
            self._schema = table.schema
            self._pq = pq.ParquetWriter(str(self.partial), table.schema)
        elif table.schema != self._schema:
            try:
                table = table.cast(self._schema)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
                raise DataError(
                    f"{self.out}: a kept column changes type between input files ({exc}); keep columns of one type, "
                    "or write CSV."
                ) from None
        self._pq.write_table(table)

    def _write_csv(self, columns: Mapping[str, Any], n: int) -> None:
        if self._fh is None:
            self._fh = self.partial.open("w", newline="")
            self._csv = csv.writer(self._fh)
            self._csv.writerow(list(columns))
        cells = [v.to_pylist() if hasattr(v, "to_pylist") else v.tolist() for v in columns.values()]
        self._csv.writerows([format_value(v) for v in row] for row in zip(*cells))

    def close(self) -> Path:
        """Finish the file and move it to ``out``."""
        if self._pq is not None:
            self._pq.close()
        if self._fh is not None:
            self._fh.close()
        os.replace(self.partial, self.out)
        return self.out

    def abort(self) -> None:
        """Close and remove the partial file (after an error)."""
        try:
            if self._pq is not None:
                self._pq.close()
            if self._fh is not None:
                self._fh.close()
        finally:
            self.partial.unlink(missing_ok=True)
