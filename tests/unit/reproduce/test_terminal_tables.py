"""Tables printed in an 80-column terminal keep the model names whole (no 'single_t…')."""

from __future__ import annotations

import io
import re

from rich.console import Console

from mtlkit.report import comparison_table
from mtlkit.reproduce.terminal import print_markdown, table_from_markdown

NAMES = ["single_task", "shared_bottom", "omoe", "mmoe"]


def _render(renderable: object, width: int = 80) -> str:
    console = Console(width=width, record=True, color_system=None, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(renderable)
    return console.export_text()


def _wide_markdown() -> str:
    header = "| p | Pearson(y1, y2) | model | lr | runs | params | y1 test MSE ↓ | y2 test MSE ↓ | final train loss ↓ | final min | final max | Δm vs single_task (paired) | s/run |"
    lines = ["# Results", "", "Some text.", "", header, "|" + "---:|" * 2 + "---|" + "---:|" * 10]
    for i, name in enumerate(NAMES):
        lines.append(
            f"| 0.5 | 0.253 | {name} | 0.01 | 3 | 13,058 | 0.339{i} ± 0.0352 | 0.3668 ± 0.0294 | "
            f"0.1699 ± 0.0154 | 0.1606 | 0.1877 | +12.34% ± 5.67 | 2.6 |"
        )
    return "\n".join(lines) + "\n\nPlots: `figure4.png`.\n"


def test_reproduction_tables_keep_full_names_at_width_80() -> None:
    md = _wide_markdown()
    console = Console(width=80, record=True, color_system=None, file=open("/dev/null", "w"))  # noqa: SIM115
    print_markdown(console, md)
    text = console.export_text()
    assert "…" not in text
    for name in NAMES:
        assert re.search(rf"\b{name}\b", text), name  # whole, on one line
    assert "Some text." in text and "figure4.png" in text
    # every digit of the numbers is still there (folded onto more lines, not cut)
    assert text.count("±") == 4 * len(NAMES)  # numbers fold onto more lines, never cut
    assert text.count("%") == len(NAMES)


def test_markdown_table_parse_keeps_cells_and_alignment() -> None:
    table = table_from_markdown(["| model | mse |", "|---|---:|", "| **mmoe** | 0.1 |"])
    assert [c.header for c in table.columns] == ["model", "mse"]
    assert table.columns[0].no_wrap and table.columns[1].justify == "right" and not table.columns[1].no_wrap
    assert list(table.columns[0].cells) == ["mmoe"]  # bold markers dropped


def test_comparison_table_keeps_full_names_at_width_80() -> None:
    labels = {}
    for name in NAMES:
        labels[name] = {
            "metrics": {t: {"mse": {"mean": 0.0448, "std": 0.0051, "values": []}} for t in ("y1", "y2")},
            "seeds": [0, 1, 2, 3, 4],
            "params": 13_255,
            "seconds": 8.0,
            "delta_m": 68.25,
            "delta_m_std": 3.16,
        }
    comparison = {
        "labels": labels,
        "baseline": "shared_bottom",
        "primary": {"y1": "mse", "y2": "mse"},
        "directions": {"y1": {"mse": False}, "y2": {"mse": False}},
        "delta_m_metrics": {"y1": ["mse"], "y2": ["mse"]},
    }
    text = _render(comparison_table(comparison, title="t"), width=80)
    assert "…" not in text
    for name in NAMES:
        assert re.search(rf"\b{name}\b", text), name


def test_run_metrics_table_never_cuts_names_or_values() -> None:
    from mtlkit.report import metrics_table

    m = {
        "click": {"loss": 0.41, "auc": 0.6855, "gauc": 0.6468, "gauc_skipped": 648.0, "ne": 0.952, "calibration": 1.0},
        "purchase": {"loss": 0.1, "auc": 0.5656, "gauc": 0.58, "gauc_skipped": 700.0},
        "watch_time": {"loss": 3.0, "mse": 25346.2},
    }
    cells = ["click", "purchase", "watch_time", "gauc_skipped", "calibration", "0.6855", "648", "25346.2000"]
    table = metrics_table(m, title="run")
    layouts = []
    for width in (160, 60, 24):
        console = Console(width=width, record=True, file=io.StringIO())
        console.print(table)
        text = console.export_text()
        assert "…" not in text, width
        assert max(len(line) for line in text.splitlines()) <= width
        layouts.append(table.choose(console, width).columns[0].header)
        if width >= 60:  # the wide and the transposed layouts fit: every name and value whole
            for c in cells:
                assert c in text, (width, c)
        else:  # one row per (task, metric); long cells fold onto more lines (no character dropped)
            long = table.choose(console, width)
            assert all(col.overflow == "fold" for col in long.columns)
            assert "25346" in text and "648" in text
    assert layouts == ["task", "metric", "task"]
