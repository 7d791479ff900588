"""Result tables of the reproductions, each written as markdown, CSV and JSON.

A table is a list of row dicts and a list of :class:`Column` s. A ``mean_std`` column reads
``row[key]`` (the mean over seeds) and ``row[key + "_std"]``; in markdown they become one
``mean ± std`` cell, in CSV and JSON they stay two numbers.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mtlkit.jsonio import dumps

__all__ = ["Column", "markdown_table", "mean_std", "write_table"]

Kind = Literal["text", "int", "float", "mean_std", "percent", "percent_std", "seconds"]


@dataclass(frozen=True, slots=True)
class Column:
    """One column: the row key, the header and how to format it in markdown.

    Attributes:
        key: the row dict key.
        header: the markdown and CSV header (CSV uses ``key`` when ``csv_key`` is not set).
        kind: ``text``, ``int``, ``float`` (``digits`` decimals), ``mean_std`` (mean ± std),
            ``percent`` (signed, with %), ``percent_std`` (signed % ± std) or ``seconds``.
        digits: decimals of ``float`` and ``mean_std`` cells.
    """

    key: str
    header: str
    kind: Kind = "float"
    digits: int = 4


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (Bessel-corrected; 0 for one value; NaN if any is NaN)."""
    vals = [float(v) for v in values]
    if not vals or any(math.isnan(v) for v in vals):
        return math.nan, math.nan
    mean = math.fsum(vals) / len(vals)
    if len(vals) < 2:
        return mean, 0.0
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (len(vals) - 1))


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _cell(row: Mapping[str, Any], col: Column) -> str:
    v = row.get(col.key)
    if col.kind == "text":
        return "" if v is None else str(v)
    if _missing(v):
        return "n/a" if col.key in row else ""
    if col.kind == "int":
        return f"{int(v):,}"
    if col.kind == "seconds":
        return f"{float(v):.1f}"
    if col.kind == "float":
        return f"{float(v):.{col.digits}f}"
    std = row.get(f"{col.key}_std")
    if col.kind == "percent":
        return f"{float(v):+.2f}%"
    if col.kind == "percent_std":
        base = f"{float(v):+.2f}%"
        return base if _missing(std) else f"{base} ± {float(std):.2f}"
    base = f"{float(v):.{col.digits}f}"  # mean_std
    return base if _missing(std) else f"{base} ± {float(std):.{col.digits}f}"


def markdown_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[Column],
    *,
    title: str | None = None,
    notes: Sequence[str] = (),
    level: int = 2,
) -> str:
    """The table in GitHub markdown (``title`` as a heading of ``level``, notes below)."""
    lines = [f"{'#' * level} {title}", ""] if title else []
    lines.append("| " + " | ".join(c.header for c in columns) + " |")
    lines.append("|" + "|".join("---" if c.kind == "text" else "---:" for c in columns) + "|")
    for row in rows:
        lines.append("| " + " | ".join(_cell(row, c) for c in columns) + " |")
    for note in notes:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def _csv_keys(columns: Sequence[Column]) -> list[str]:
    keys = []
    for c in columns:
        keys.append(c.key)
        if c.kind in ("mean_std", "percent_std"):
            keys.append(f"{c.key}_std")
    return keys


def _csv_value(v: Any) -> Any:
    if _missing(v):
        return "nan" if isinstance(v, float) else ""
    return repr(float(v)) if isinstance(v, float) else v


def write_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[Column],
    out_dir: str | os.PathLike[str],
    stem: str,
    *,
    title: str,
    notes: Sequence[str] = (),
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``<stem>.md``, ``<stem>.csv`` and ``<stem>.json`` into ``out_dir``.

    The CSV has one column per ``key`` (and ``key_std`` for mean ± std columns), numbers at
    full precision, NaN as ``nan``. The JSON holds ``title``, ``columns`` (key, header, kind),
    ``rows`` (every key of every row, NaN as ``null``), ``notes`` and ``extra``.

    Returns:
        ``{"md": path, "csv": path, "json": path}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {ext: out / f"{stem}.{ext}" for ext in ("md", "csv", "json")}
    paths["md"].write_text(markdown_table(rows, columns, title=title, notes=notes, level=1), encoding="utf-8")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    keys = _csv_keys(columns)
    writer.writerow(keys)
    for row in rows:
        writer.writerow([_csv_value(row.get(k)) for k in keys])
    paths["csv"].write_text(buf.getvalue(), encoding="utf-8")
    payload = {
        "title": title,
        "columns": [{"key": c.key, "header": c.header, "kind": c.kind} for c in columns],
        "rows": [dict(r) for r in rows],
        "notes": list(notes),
        "extra": dict(extra or {}),
    }
    paths["json"].write_text(dumps(payload), encoding="utf-8")
    return paths
