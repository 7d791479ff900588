"""Writing predictions chunk by chunk (Parquet or CSV), and reading raw columns for prediction."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mtlkit.errors import DataError
from mtlkit.predict_io import PredictionWriter, arrow_values, shift_rows


def chunks() -> list[dict[str, object]]:
    rng = np.random.default_rng(0)
    return [
        {"id": pa.array(np.arange(lo, lo + n, dtype=np.int64)), "p": rng.random(n).astype(np.float32)}
        for lo, n in ((0, 5), (5, 3), (8, 4))
    ]


def test_parquet_chunks_are_appended_in_order(tmp_path: Path) -> None:
    parts = chunks()
    writer = PredictionWriter(tmp_path / "out" / "p.parquet")
    for c in parts:
        writer.write(c)
    path = writer.close()
    table = pq.read_table(path)
    assert table.column_names == ["id", "p"] and writer.rows == 12
    np.testing.assert_array_equal(table.column("id").to_numpy(), np.arange(12))
    np.testing.assert_array_equal(table.column("p").to_numpy(), np.concatenate([c["p"] for c in parts]))
    assert pq.ParquetFile(path).metadata.num_row_groups == 3  # one per chunk: never held whole
    assert not (tmp_path / "out" / "p.parquet.partial").exists()


def test_csv_chunks_round_trip_float32(tmp_path: Path) -> None:
    parts = chunks()
    writer = PredictionWriter(tmp_path / "p.csv")
    for c in parts:
        writer.write(c)
    writer.close()
    with (tmp_path / "p.csv").open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["id", "p"] and [int(r[0]) for r in rows[1:]] == list(range(12))
    got = np.array([float(r[1]) for r in rows[1:]], dtype=np.float32)
    np.testing.assert_array_equal(got, np.concatenate([c["p"] for c in parts]))  # 9 digits: exact float32


def test_abort_leaves_no_file_and_columns_must_not_change(tmp_path: Path) -> None:
    writer = PredictionWriter(tmp_path / "p.parquet")
    writer.write(chunks()[0])
    with pytest.raises(DataError, match="expected \\['id', 'p'\\]"):
        writer.write({"p": np.zeros(2, dtype=np.float32)})
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_arrow_values_and_row_numbers() -> None:
    np.testing.assert_array_equal(arrow_values(pa.array([1, None, 3])), [1.0, np.nan, 3.0])
    assert arrow_values(pa.array(["a", None])).tolist() == ["a", ""]
    assert shift_rows("column 'x' holds inf in row 3", 0) == "column 'x' holds inf in row 3"
    assert shift_rows("column 'x' holds inf in row 3; see row 4", 100) == "column 'x' holds inf in row 103; see row 104"
