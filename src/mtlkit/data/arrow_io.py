"""Reading tabular files with pyarrow: file lists, projected record batches, vectorised conversions.

- :func:`expand_paths`: a file, a directory, a glob (``data/train/*.parquet``) or a list of them
  -> the data files, in a fixed (sorted) order.
- :func:`iter_batches`: the wanted columns of each file as ``pyarrow.RecordBatch`` es, never the
  whole file: Parquet through ``pyarrow.dataset`` (column projection, row-group granularity), CSV
  (plain or ``.gz`` / ``.bz2`` / ``.xz``) through pyarrow's streaming CSV reader with every cell
  read as a string (so the values are interpreted by mtlkit's rules, not pyarrow's type guess).
- :func:`column_floats`: one column of a batch as float64 under the rules of
  :class:`~mtlkit.data.preprocessing.TabularPreprocessor` (blanks and the missing markers of
  :data:`~mtlkit.data.preprocessing.MISSING_VALUES` -> NaN, infinite values refused with the file
  and data row named).

CSV header names are stripped of surrounding blanks and a UTF-8 byte-order mark is ignored, as in
:func:`mtlkit.data.sources.read_csv`.
"""

from __future__ import annotations

import glob as globlib
import lzma
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from mtlkit.data._checks import refuse_infinite
from mtlkit.data.preprocessing import MISSING_VALUES
from mtlkit.data.sources import csv_header_row, require_columns
from mtlkit.errors import DataError

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["BatchOrigin", "column_floats", "expand_paths", "file_columns", "file_format", "iter_batches"]

DATA_SUFFIXES = (".parquet", ".pq", ".csv", ".csv.gz", ".csv.bz2", ".csv.xz", ".tsv", ".txt")


@dataclass(frozen=True, slots=True)
class BatchOrigin:
    """Where a batch comes from: its file and the data row (0-based) of its first row in that file."""

    file: Path
    first_row: int

    def row(self, i: int) -> str:
        """``"data row 7"`` for the batch's ``i``-th row."""
        return f"data row {self.first_row + int(i) + 1}"


def file_format(path: Path) -> Literal["parquet", "csv"]:
    """``parquet`` for ``.parquet`` / ``.pq`` files, else ``csv``."""
    return "parquet" if path.suffix.lower() in (".parquet", ".pq") else "csv"


def expand_paths(spec: str | Path | Sequence[str | Path]) -> list[Path]:
    """The data files named by ``spec``: a file, a directory (its data files, not recursing), a glob
    pattern, or a list of any of these; sorted within each directory or pattern, in list order.

    Raises:
        DataError: a path that does not exist, a pattern or directory that matches no data file, or a
            file listed twice.
    """
    items = [spec] if isinstance(spec, (str, Path)) else list(spec)
    if not items:
        raise DataError("No data files given: name a file, a folder, a glob pattern or a list of them.")
    out: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            found = sorted(
                f
                for f in p.iterdir()
                if f.is_file()
                and not f.name.startswith((".", "_"))
                and f.name.lower().endswith(DATA_SUFFIXES)
            )
            if not found:
                raise DataError(
                    f"{p} holds no data files ({', '.join(DATA_SUFFIXES)}); point at the folder with the files."
                )
            out.extend(found)
        elif any(ch in str(item) for ch in "*?["):
            found = sorted(Path(f) for f in globlib.glob(str(p)) if Path(f).is_file())
            if not found:
                raise DataError(f"The pattern {str(item)!r} matches no file. Check the path and the pattern.")
            out.extend(found)
        else:
            raise DataError(
                f"{p}: no such data file or folder. Check the path (relative to the working directory)."
            )
    seen: set[Path] = set()
    for f in out:
        key = f.resolve()
        if key in seen:
            raise DataError(f"{f} is listed twice; each data file may be read only once per epoch.")
        seen.add(key)
    return out


# ---------------------------------------------------------------------------------------------- CSV
def _csv_stream(path: Path) -> pa.NativeFile:
    import pyarrow as pa

    if path.suffix.lower() in (".xz", ".lzma"):
        return pa.PythonFile(lzma.open(path, "rb"), mode="r")
    return pa.input_stream(str(path), compression="detect")


def _arrow_error(path: Path, exc: Exception) -> DataError:
    return DataError(
        f"{path} could not be read ({exc}); the file is corrupt, truncated, or not in the expected format."
    )


def _csv_reader(
    path: Path,
    *,
    delimiter: str,
    include: Sequence[str],
    block_size: int | None = None,
) -> pa.csv.CSVStreamingReader:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    read = pacsv.ReadOptions(block_size=block_size) if block_size else pacsv.ReadOptions()
    parse = pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True)
    convert = pacsv.ConvertOptions(
        include_columns=list(include),
        column_types={c: pa.string() for c in include},
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    try:
        return pacsv.open_csv(
            _csv_stream(path), read_options=read, parse_options=parse, convert_options=convert
        )
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" in str(exc):
            raise DataError(f"{path} is empty; expected a CSV header row.") from None
        raise _arrow_error(path, exc) from None
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise _arrow_error(path, exc) from None


def file_columns(path: Path, *, delimiter: str = ",") -> list[str]:
    """The column names of a CSV (stripped) or Parquet file, refusing duplicates."""
    import pyarrow as pa

    if file_format(path) == "parquet":
        import pyarrow.parquet as pq

        try:
            names = list(pq.read_schema(path).names)
        except (OSError, pa.ArrowException) as exc:
            raise DataError(
                f"{path} could not be read as Parquet ({exc}); the file is corrupt or truncated."
            ) from None
    else:
        raw = _csv_header(path, delimiter)
        names = [n.strip() for n in raw]
    dup = sorted({c for c in names if names.count(c) > 1})
    if dup:
        raise DataError(
            f"{path} has several columns named {', '.join(map(repr, dup))}; column names must be unique "
            "(which one to use would be a guess). Rename or remove the duplicates in the header row."
        )
    return names


def _csv_header(path: Path, delimiter: str) -> list[str]:
    """The raw (unstripped) header names of a CSV file, read from its first block only."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    parse = pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True)
    try:
        reader = pacsv.open_csv(
            _csv_stream(path),
            parse_options=parse,
        )
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" in str(exc):
            raise DataError(f"{path} is empty; expected a CSV header row.") from None
        return csv_header_row(path, delimiter)
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise _arrow_error(path, exc) from None
    names = list(reader.schema.names)
    reader.close()
    return names


def iter_batches(
    files: Sequence[Path],
    columns: Sequence[str],
    *,
    delimiter: str = ",",
    batch_rows: int = 65_536,
) -> Iterator[tuple[BatchOrigin, pa.RecordBatch]]:
    """The ``columns`` of each file, batch by batch (at most ``batch_rows`` rows for Parquet; CSV is
    read in blocks of ``64 * batch_rows`` bytes, at least 1 KiB), with the origin of every batch.

    CSV columns arrive as strings (blank cells as ``""``), Parquet columns in their stored type.
    Batches of a file hold the columns in the order ``columns``.

    Raises:
        DataError: a file is empty, unreadable or corrupt, has duplicate column names, or lacks a
            wanted column.
    """
    import pyarrow as pa

    for path in files:
        names = file_columns(path, delimiter=delimiter)
        require_columns(path, names, columns, delimiter)
        row = 0
        if file_format(path) == "parquet":
            import pyarrow.dataset as pads

            try:
                dataset = pads.dataset(str(path), format="parquet")
                for batch in dataset.to_batches(columns=list(columns), batch_size=batch_rows):
                    if batch.num_rows:
                        yield BatchOrigin(path, row), batch
                        row += batch.num_rows
            except (OSError, pa.ArrowException) as exc:
                raise DataError(
                    f"{path} could not be read as Parquet ({exc}); the file is corrupt or truncated."
                ) from None
            continue
        raw = _csv_header(path, delimiter)
        by_name = {n.strip(): n for n in raw}
        include = [by_name[c] for c in columns]
        reader = _csv_reader(
            path, delimiter=delimiter, include=include, block_size=max(1 << 10, 64 * batch_rows)
        )
        try:
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    break
                if batch.num_rows:
                    yield BatchOrigin(path, row), batch.rename_columns(list(columns))
                    row += batch.num_rows
        except pa.ArrowInvalid as exc:
            raise DataError(
                f"{path}: {exc} (in or after data row {row + 1}). The file is truncated, not in the expected "
                f"format, or its separator is not {delimiter!r}."
            ) from None
        except (OSError, EOFError, lzma.LZMAError) as exc:
            raise _arrow_error(path, exc) from None
        finally:
            reader.close()


# ---------------------------------------------------------------------------------------------- conversions
def is_numeric_type(t: pa.DataType) -> bool:
    import pyarrow as pa

    return (
        pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_decimal(t)
    )


def column_floats(array: pa.Array | pa.ChunkedArray, *, column: str, origin: BatchOrigin) -> np.ndarray:
    """A column as float64 with missing values as NaN, by :class:`TabularPreprocessor`'s rules.

    Numeric columns are cast (nulls -> NaN). Text is stripped; the markers of ``MISSING_VALUES``
    (any case) are missing; everything else must parse as a float (as Python's ``float``).

    Raises:
        DataError: a non-numeric or infinite value, naming the file, the column and the data row.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if is_numeric_type(array.type):
        x = pc.cast(array, pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
    else:
        text = pc.cast(array, pa.string()) if not pa.types.is_string(array.type) else array
        x = _text_floats(text, column=column, origin=origin)
    x = np.asarray(x, dtype=np.float64)
    refuse_infinite(x, column, origin)
    return x


def _text_floats(text: pa.Array | pa.ChunkedArray, *, column: str, origin: BatchOrigin) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    trimmed = pc.utf8_trim_whitespace(text.fill_null(""))
    missing = pc.is_in(pc.utf8_lower(trimmed), value_set=pa.array(sorted(MISSING_VALUES)))
    try:
        values = pc.cast(pc.if_else(missing, pa.scalar(None, pa.string()), trimmed), pa.float64())
        return values.fill_null(np.nan).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:
        pass
    # pyarrow refused some value: Python's float decides, once per distinct value
    encoded = pc.dictionary_encode(text.fill_null(""))
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    distinct = encoded.dictionary.to_pylist()
    floats = np.empty(len(distinct))
    for k, v in enumerate(distinct):
        s = v.strip()
        if s.lower() in MISSING_VALUES:
            floats[k] = np.nan
            continue
        try:
            floats[k] = float(s)
        except ValueError:
            i = int(np.flatnonzero(encoded.indices.to_numpy(zero_copy_only=False) == k)[0])
            raise DataError(
                f"{origin.file}: numeric column {column!r} holds the non-numeric value {s!r} in "
                f"{origin.row(i)}; list the column as categorical, or clean the value."
            ) from None
    return floats[encoded.indices.to_numpy(zero_copy_only=False)]
