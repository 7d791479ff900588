"""Locating, verifying and reading dataset files."""

from __future__ import annotations

import bz2
import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest

from mtlkit.data.sources import DataFile, FileSet, locate, read_csv
from mtlkit.errors import DataError

CSV = b"a,b,c\n1,x,2.5\n3,y,?\n"


def _fileset(tmp: Path, name: str = "t.csv", data: bytes = CSV) -> FileSet:
    folder = tmp / "toy"
    folder.mkdir(exist_ok=True)
    (folder / name).write_bytes(data)
    return FileSet("toy", (DataFile(name, hashlib.sha256(data).hexdigest(), len(data)),))


def test_locate_accepts_the_folder_its_parent_and_the_env_var(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs = _fileset(tmp_path)
    assert locate(fs, tmp_path)["t.csv"] == tmp_path / "toy" / "t.csv"
    assert locate(fs, tmp_path / "toy")["t.csv"] == tmp_path / "toy" / "t.csv"
    monkeypatch.setenv("MTLKIT_DATA", str(tmp_path))
    assert locate(fs)["t.csv"].exists()
    monkeypatch.delenv("MTLKIT_DATA")
    with pytest.raises(DataError, match="No data directory given.*MTLKIT_DATA"):
        locate(fs)


def test_missing_files_are_listed_with_where_to_put_them(tmp_path: Path) -> None:
    fs = FileSet(
        "toy", (DataFile("a.gz", "0" * 64, 10, url="https://example.org/a.gz"), DataFile("b", "0" * 64))
    )
    with pytest.raises(
        DataError, match=r"missing file\(s\) a.gz \(10 bytes\), b in .*Put them there"
    ) as info:
        locate(fs, tmp_path)
    assert "download" not in str(info.value)  # b has no URL, so downloading cannot help
    with pytest.raises(DataError, match=r"b cannot be downloaded \(no public URL known\)"):
        locate(fs, tmp_path, download=True)


def test_corrupt_and_truncated_files_are_named(tmp_path: Path) -> None:
    fs = _fileset(tmp_path)
    (tmp_path / "toy" / "t.csv").write_bytes(CSV[:-3])
    with pytest.raises(DataError, match=r"t.csv has 17 bytes, expected 20: the file is truncated"):
        locate(fs, tmp_path)
    (tmp_path / "toy" / "t.csv").write_bytes(CSV.replace(b"x", b"z"))
    with pytest.raises(DataError, match=r"t.csv has SHA-256 .* the file is corrupt"):
        locate(fs, tmp_path)
    assert locate(fs, tmp_path, verify=False)["t.csv"].exists()


def test_read_csv_plain_gzip_bz2(tmp_path: Path) -> None:
    for name, data in (("t.csv", CSV), ("t.csv.gz", gzip.compress(CSV)), ("t.csv.bz2", bz2.compress(CSV))):
        (tmp_path / name).write_bytes(data)
        cols = read_csv(tmp_path / name)
        assert list(cols) == ["a", "b", "c"]
        assert cols["b"].tolist() == ["x", "y"] and cols["c"].tolist() == ["2.5", "?"]
    cols = read_csv(tmp_path / "t.csv", header=False, names=["p", "q", "r"])
    assert cols["p"].tolist() == ["a", "1", "3"]
    spaced = tmp_path / "s.csv"
    spaced.write_text("1, a b, 2\n3, c, 4\n")
    cols = read_csv(spaced, header=False, names=["x", "y", "z"], skipinitialspace=True)
    np.testing.assert_array_equal(cols["y"], ["a b", "c"])


def test_truncated_gzip_and_ragged_rows_give_clear_errors(tmp_path: Path) -> None:
    data = gzip.compress(CSV * 50)
    (tmp_path / "t.csv.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"t.csv.gz could not be read .* corrupt or truncated"):
        read_csv(tmp_path / "t.csv.gz")
    (tmp_path / "r.csv").write_text("a,b\n1,2\n3\n")
    with pytest.raises(DataError, match=r"r.csv, line 3: 1 fields, expected 2"):
        read_csv(tmp_path / "r.csv")
