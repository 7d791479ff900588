"""Where dataset files live, checking them, and reading them.

Dataset loaders describe their files with a :class:`FileSet` and call :func:`locate`, which
finds them under the path the user gives (or the ``MTLKIT_DATA`` directory), verifies their
SHA-256 checksums and, when files are absent, says exactly which files to put where. Files are
downloaded from their original public location only when asked (``download=True``).

A data root may be the dataset's own folder or a parent holding one folder per dataset
(``$MTLKIT_DATA/census-income/census-income.test.gz``).
"""

from __future__ import annotations

import bz2
import csv
import gzip
import hashlib
import io
import lzma
import os
import shutil
import tempfile
import urllib.request
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from mtlkit.errors import DataError, did_you_mean

__all__ = [
    "DATA_ENV",
    "DataFile",
    "FileSet",
    "columns_as_float",
    "download",
    "download_folder",
    "locate",
    "open_binary",
    "open_text",
    "read_bytes",
    "read_csv",
    "resolve_root",
    "sha256sum",
]

DATA_ENV = "MTLKIT_DATA"
"""Environment variable naming the default data root."""


@dataclass(frozen=True, slots=True)
class DataFile:
    """One file of a dataset: its name, size, SHA-256 and (optionally) where to download it."""

    name: str
    sha256: str
    size: int | None = None
    url: str | None = None


@dataclass(frozen=True, slots=True)
class FileSet:
    """The files of one dataset, in the folder ``folder`` of a data root."""

    folder: str
    files: tuple[DataFile, ...]
    description: str = ""

    def file(self, name: str) -> DataFile:
        for f in self.files:
            if f.name == name:
                return f
        raise KeyError(name)


def resolve_root(path: str | os.PathLike[str] | None, fileset: FileSet | None = None) -> Path:
    """The directory to read a dataset from: ``path``, else ``$MTLKIT_DATA``.

    With a ``fileset``, a root that holds a folder named ``fileset.folder`` resolves to that folder.
    """
    if path is None:
        env = os.environ.get(DATA_ENV)
        if not env:
            what = f"the {fileset.folder} files" if fileset else "the data files"
            raise DataError(
                f"No data directory given: pass the folder that holds {what} (path=... in Python, "
                f"data.path=... in configs), or set the {DATA_ENV} environment variable to a directory "
                + (f"containing a {fileset.folder}/ folder." if fileset else "of datasets.")
            )
        path = env
    root = Path(path).expanduser()
    if fileset is not None and (root / fileset.folder).is_dir():
        root = root / fileset.folder
    return root


def sha256sum(path: Path, *, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _download(url: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            shutil.copyfileobj(resp, out)
        os.replace(tmp, dest)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise DataError(
            f"Downloading {url} to {dest} failed ({exc}). Fetch it by hand and place it there."
        ) from None


def download_folder(root: Path, fileset: FileSet) -> Path:
    """Where to download ``fileset``'s files under a resolved ``root``: the root itself when it is the
    dataset's folder (named like it, or already holding some of its files), else a new
    ``root/<folder>`` (a data root holding one folder per dataset)."""
    if root.name == fileset.folder or any((root / f.name).is_file() for f in fileset.files):
        return root
    return root / fileset.folder


def download(url: str, dest: Path) -> None:
    """Fetch ``url`` to ``dest`` atomically (a partial download never takes the file's name)."""
    _download(url, dest)


def locate(
    fileset: FileSet,
    path: str | os.PathLike[str] | None = None,
    *,
    names: Sequence[str] | None = None,
    download: bool = False,
    verify: bool = True,
) -> dict[str, Path]:
    """Paths of the dataset's files, checked.

    Args:
        fileset: the dataset's files.
        path: the data root (see :func:`resolve_root`).
        names: only these files (default: all of the file set).
        download: fetch absent files from their URL (never done otherwise).
        verify: check every file's SHA-256 (and size).

    Raises:
        DataError: files are absent (the message lists them and where they belong), a checksum
            does not match (corrupt or truncated file), or a download failed.
    """
    root = resolve_root(path, fileset)
    wanted = [fileset.file(n) for n in names] if names is not None else list(fileset.files)
    missing = [f for f in wanted if not (root / f.name).is_file()]
    if missing and download:
        root = download_folder(root, fileset)
        missing = [f for f in wanted if not (root / f.name).is_file()]
        no_url = [f.name for f in missing if not f.url]
        if no_url:
            raise DataError(
                f"{fileset.folder}: {', '.join(no_url)} cannot be downloaded (no public URL known); "
                f"place the file(s) in {root}."
            )
        for f in missing:
            assert f.url is not None
            _download(f.url, root / f.name)
        missing = []
    if missing:
        lines = ", ".join(f.name + (f" ({f.size:,} bytes)" if f.size else "") for f in missing)
        hint = (
            " or pass download=True (--download / data.download=true) to fetch them from their public source"
            if all(f.url for f in missing)
            else ""
        )
        raise DataError(
            f"{fileset.folder}: missing file(s) {lines} in {root}. Put them there{hint}. "
            f"Set the data path (or {DATA_ENV}) to the folder holding them, or to its parent."
        )
    out = {}
    for f in wanted:
        p = root / f.name
        if verify:
            size = p.stat().st_size
            if f.size is not None and size != f.size:
                raise DataError(
                    f"{p} has {size:,} bytes, expected {f.size:,}: the file is truncated or not the "
                    f"original {f.name}. Replace it (or re-download it)."
                )
            digest = sha256sum(p)
            if digest != f.sha256:
                raise DataError(
                    f"{p} has SHA-256 {digest[:16]}..., expected {f.sha256[:16]}...: the file is corrupt or a "
                    f"different version. Replace it (or re-download it), or pass verify=False to skip the check."
                )
        out[f.name] = p
    return out


def open_binary(path: Path) -> IO[bytes]:
    """Open a plain, ``.gz``, ``.bz2`` or ``.xz`` file for binary reading."""
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return gzip.open(path, "rb")
    if suffix == ".bz2":
        return bz2.open(path, "rb")
    if suffix in (".xz", ".lzma"):
        return lzma.open(path, "rb")
    return path.open("rb")


def read_bytes(path: Path) -> bytes:
    """The whole (decompressed) content of a plain, ``.gz``, ``.bz2`` or ``.xz`` file.

    Raises:
        DataError: the file cannot be read or decompressed (corrupt or truncated); the message
            names the file.
    """
    try:
        with open_binary(path) as fh:
            return fh.read()
    except (EOFError, OSError, lzma.LZMAError, zlib.error) as exc:
        raise DataError(
            f"{path} could not be read ({type(exc).__name__}: {exc}); the file is corrupt or truncated. "
            "Replace it with the original."
        ) from None


@contextmanager
def open_text(path: Path, *, encoding: str = "utf-8") -> Iterator[IO[str]]:
    """Open a (possibly compressed) text file; decompression and decoding errors name the file."""
    try:
        with open_binary(path) as raw, io.TextIOWrapper(raw, encoding=encoding, newline="") as fh:
            yield fh
    except (EOFError, OSError, UnicodeDecodeError, lzma.LZMAError) as exc:
        raise DataError(
            f"{path} could not be read ({type(exc).__name__}: {exc}); the file is corrupt or truncated. "
            "Replace it with the original."
        ) from None


def read_csv(
    path: Path,
    *,
    header: bool = True,
    names: Sequence[str] | None = None,
    delimiter: str = ",",
    skipinitialspace: bool = False,
) -> dict[str, np.ndarray]:
    """Read a (possibly compressed) CSV into ``{column: array of str}``.

    Args:
        path: the file.
        header: the first row holds the column names.
        names: column names (required without a header; with one, overrides it).
        delimiter: field separator.
        skipinitialspace: strip the blanks after each separator (census-income uses ``", "``).

    A UTF-8 byte-order mark (as spreadsheet programs write) is dropped, and header names are
    stripped of surrounding blanks.

    Raises:
        DataError: the file is unreadable, empty, has two columns of the same name, or a row has
            the wrong number of fields.
    """
    with open_text(path, encoding="utf-8-sig") as fh:
        reader = csv.reader(fh, delimiter=delimiter, skipinitialspace=skipinitialspace)
        rows, lines = [], []  # lines[i]: the (last) line number of rows[i], blank lines counted
        for r in reader:
            if r and any(c.strip() for c in r):
                rows.append(r)
                lines.append(reader.line_num)
    if header:
        if not rows:
            raise DataError(f"{path} is empty; expected a CSV header row.")
        head, rows, lines = rows[0], rows[1:], lines[1:]
        cols = list(names) if names is not None else [h.strip() for h in head]
    else:
        if names is None:
            raise DataError(f"read_csv({path}): a file without a header needs names=.")
        cols = list(names)
    dup = sorted({c for c in cols if cols.count(c) > 1})
    if dup:
        raise DataError(
            f"{path} has several columns named {', '.join(map(repr, dup))}; column names must be unique "
            "(which one to use would be a guess). Rename or remove the duplicates in the header row."
        )
    width = len(cols)
    for i, r in enumerate(rows):
        if len(r) != width:
            raise DataError(
                f"{path}, line {lines[i]}: {len(r)} fields, expected {width} ({', '.join(cols[:5])}...). "
                f"The file is truncated, not in the expected format, or its separator is not {delimiter!r}"
                f"{delimiter_hint(cols, delimiter)}."
            )
    # column by column: each array is only as wide as its own longest string
    return {c: np.array([r[j] for r in rows], dtype=str) for j, c in enumerate(cols)}


def delimiter_hint(header: Sequence[str], delimiter: str) -> str:
    """`` (it looks like ';': set delimiter: ';')`` when a one-column header holds another separator."""
    if len(header) != 1:
        return ""
    for sep in (";", "\t", "|", ","):
        if sep != delimiter and sep in header[0]:
            return f" (the header looks {sep!r}-separated: set delimiter: {sep!r})"
    return ""


def columns_as_float(columns: Mapping[str, np.ndarray], names: Sequence[str], *, source: str) -> np.ndarray:
    """Stack ``names`` as a float32 ``(N, len(names))`` array; a non-numeric cell names its column."""
    out = np.empty((len(next(iter(columns.values()))), len(names)), dtype=np.float32)
    for j, n in enumerate(names):
        try:
            out[:, j] = columns[n].astype(np.float32)
        except ValueError:
            raise DataError(f"{source}: column {n!r} holds non-numeric values.") from None
        except KeyError:
            raise DataError(f"{source}: no column {n!r} (available: {', '.join(columns)}).") from None
    return out


def csv_header_row(path: Path, delimiter: str) -> list[str]:
    """The header row of a CSV file as the csv module reads it (the first row with a non-blank cell)."""
    with open_text(path, encoding="utf-8-sig") as fh:
        for row in csv.reader(fh, delimiter=delimiter):
            if row and any(c.strip() for c in row):
                return row
    raise DataError(f"{path} is empty; expected a CSV header row.")


def require_columns(path: Path, names: Sequence[str], wanted: Sequence[str], delimiter: str) -> None:
    """Refuse a file that lacks some ``wanted`` columns, listing its columns with ``repr`` (invisible
    characters show), the closest match and a delimiter hint."""
    absent = [c for c in wanted if c not in names]
    if absent:
        hints = "".join(
            did_you_mean(c, names).replace(" Did you mean", f" For {c!r}, did you mean") for c in absent
        )
        raise DataError(
            f"{path} has no column(s) {', '.join(map(repr, absent))}.{hints} Its columns are: "
            f"{', '.join(map(repr, names))}{delimiter_hint(names, delimiter)}."
        )


# ---------------------------------------------------------------------------------------------- batches
