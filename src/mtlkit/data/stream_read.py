"""Fragments of a stream's files and reading row slices of them, never a whole file.

A *fragment* is a Parquet row group or a whole CSV file. :func:`fragment_table` lists them with
their row counts (Parquet: from the file's metadata, nothing decoded; CSV: one counting pass over
the file at construction). :class:`FragmentReader` reads rows ``lo:hi`` of a fragment, with only
the wanted columns: a Parquet row group is decoded once and kept (the last one per reader), so
many windows slicing one large row group do not re-read it; a CSV file is read sequentially with
pyarrow's streaming reader, the rows before ``lo`` skipped block by block, and the open reader
kept for the next slice of the same file (slices of a file come in increasing order within an
epoch, so each file is read about once per epoch and reader).
"""

from __future__ import annotations

import lzma
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mtlkit.data.arrow_io import BatchOrigin, _csv_header, _csv_reader, file_format
from mtlkit.errors import DataError

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["FragmentReader", "Fragments", "fragment_table"]

CSV_BLOCK = 1 << 20
"""Bytes per CSV block read at a time."""


@dataclass(frozen=True)
class Fragments:
    """The fragment table of a list of files (plain arrays: cheap to pickle to worker processes).

    Attributes:
        files: the files.
        file: per fragment, the index of its file.
        group: per fragment, its Parquet row group (-1: a whole CSV file).
        offset: per fragment, the data row (0-based) of its first row in its file.
        sizes: per fragment, its rows.
    """

    files: tuple[Path, ...]
    file: np.ndarray
    group: np.ndarray
    offset: np.ndarray
    sizes: np.ndarray

    @property
    def num_rows(self) -> int:
        return int(self.sizes.sum())


def _parquet_error(path: Path, exc: Exception) -> DataError:
    return DataError(f"{path} could not be read as Parquet ({exc}); the file is corrupt or truncated.")


def _csv_rows(path: Path, column: str, delimiter: str) -> int:
    from mtlkit.data.arrow_io import iter_batches

    return sum(
        b.num_rows for _, b in iter_batches([path], [column], delimiter=delimiter, batch_rows=CSV_BLOCK // 64)
    )


def fragment_table(files: Sequence[Path], *, count_column: str, delimiter: str = ",") -> Fragments:
    """The fragments of ``files`` with their row counts (``count_column``: a column every CSV file
    has, read by the counting pass). Empty row groups are left out."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    file_idx: list[int] = []
    group: list[int] = []
    offset: list[int] = []
    sizes: list[int] = []
    for i, path in enumerate(files):
        if file_format(path) == "parquet":
            try:
                meta = pq.ParquetFile(path).metadata
            except (OSError, pa.ArrowException) as exc:
                raise _parquet_error(path, exc) from None
            row = 0
            for g in range(meta.num_row_groups):
                n = meta.row_group(g).num_rows
                if n:
                    file_idx.append(i), group.append(g), offset.append(row), sizes.append(n)
                row += n
        else:
            n = _csv_rows(path, count_column, delimiter)
            if n:
                file_idx.append(i), group.append(-1), offset.append(0), sizes.append(n)
    as_int = lambda v: np.asarray(v, dtype=np.int64)  # noqa: E731
    return Fragments(tuple(files), as_int(file_idx), as_int(group), as_int(offset), as_int(sizes))


class FragmentReader:
    """Reads row slices of fragments (only ``columns``), caching the last Parquet row group and the
    open CSV reader. One per process (not shared between workers)."""

    def __init__(self, fragments: Fragments, columns: Sequence[str], *, delimiter: str = ",") -> None:
        self.fragments = fragments
        self.columns = list(columns)
        self.delimiter = delimiter
        self._pq_file: tuple[int, Any] | None = None
        self._group: tuple[int, pa.Table] | None = None
        self._csv: _CsvCursor | None = None

    def read(self, fragment: int, lo: int, hi: int) -> tuple[BatchOrigin, pa.Table]:
        """Rows ``lo:hi`` of fragment ``fragment`` and their origin (file, first data row)."""
        f = self.fragments
        i = int(f.file[fragment])
        path = f.files[i]
        origin = BatchOrigin(path, int(f.offset[fragment]) + lo)
        if int(f.group[fragment]) < 0:
            return origin, self._read_csv(i, lo, hi)
        if self._group is None or self._group[0] != fragment:
            self._group = None  # free the previous row group before decoding the next
            self._group = (fragment, self._read_group(i, int(f.group[fragment])))
        return origin, self._group[1].slice(lo, hi - lo)

    def _read_group(self, i: int, g: int) -> pa.Table:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = self.fragments.files[i]
        try:
            if self._pq_file is None or self._pq_file[0] != i:
                self._pq_file = (i, pq.ParquetFile(path))
            return self._pq_file[1].read_row_group(g, columns=self.columns)
        except (OSError, pa.ArrowException) as exc:
            raise _parquet_error(path, exc) from None

    def _read_csv(self, i: int, lo: int, hi: int) -> pa.Table:
        if self._csv is None or self._csv.file != i or lo < self._csv.row:
            if self._csv is not None:
                self._csv.close()
            self._csv = _CsvCursor(i, self.fragments.files[i], self.columns, self.delimiter)
        return self._csv.take(lo, hi)

    def close(self) -> None:
        if self._csv is not None:
            self._csv.close()
        self._csv = self._group = self._pq_file = None


class _CsvCursor:
    """A CSV file read forward: ``row`` is the data row of the first row still held."""

    def __init__(self, file: int, path: Path, columns: Sequence[str], delimiter: str) -> None:
        raw = _csv_header(path, delimiter)
        by_name = {n.strip(): n for n in raw}
        self.file, self.path, self.columns = file, path, list(columns)
        self.delimiter = delimiter
        self._reader = _csv_reader(
            path, delimiter=delimiter, include=[by_name[c] for c in columns], block_size=CSV_BLOCK
        )
        self.row = 0
        self._held: pa.RecordBatch | None = None  # rows row .. row + len(held)

    def _next(self) -> pa.RecordBatch | None:
        import pyarrow as pa

        try:
            batch = self._reader.read_next_batch()
        except StopIteration:
            return None
        except pa.ArrowInvalid as exc:
            raise DataError(
                f"{self.path}: {exc} (in or after data row {self.row + 1}). The file is truncated, not in the "
                f"expected format, or its separator is not {self.delimiter!r}."
            ) from None
        except (OSError, EOFError, lzma.LZMAError) as exc:
            raise DataError(
                f"{self.path} could not be read ({exc}); the file is corrupt or truncated."
            ) from None
        return batch.rename_columns(self.columns)

    def take(self, lo: int, hi: int) -> pa.Table:
        import pyarrow as pa

        parts: list[pa.RecordBatch] = []
        while True:
            if self._held is None or self.row + self._held.num_rows <= lo:
                if self._held is not None:
                    self.row += self._held.num_rows
                self._held = self._next()
                if self._held is None:
                    raise DataError(
                        f"{self.path} ended at data row {self.row}, before row {hi} that its row count promised; "
                        "the file changed while it was being read."
                    )
                continue
            a = max(lo, self.row) - self.row
            b = min(hi, self.row + self._held.num_rows) - self.row
            parts.append(self._held.slice(a, b - a))
            if self.row + self._held.num_rows >= hi:
                break
            self.row += self._held.num_rows
            self._held = None
        return pa.Table.from_batches(parts)

    def close(self) -> None:
        self._reader.close()
