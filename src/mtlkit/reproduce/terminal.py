"""Print a report's markdown in the terminal with its tables whole: rich's markdown tables cut
cells to the width (``single_t…``); here every table is a rich table whose text columns (model
or setting names) never wrap or truncate and whose numeric cells fold onto more lines."""

from __future__ import annotations

from collections.abc import Iterator

from rich import box
from rich.console import Console, RenderableType
from rich.markdown import Markdown
from rich.table import Table

__all__ = ["markdown_renderables", "print_markdown", "table_from_markdown"]


def _cells(line: str) -> list[str]:
    body = line.strip()
    body = body[1:] if body.startswith("|") else body
    body = body[:-1] if body.endswith("|") else body
    return [c.strip().replace("**", "") for c in body.split("|")]


def _is_rule(line: str) -> bool:
    return all(set(c) <= set(":- ") and "-" in c for c in _cells(line))


def table_from_markdown(lines: list[str]) -> Table:
    """A rich table from a markdown table's lines (header, ``|---|``, rows). The first column keeps
    its names on one line at their full width; the others fold (no character is dropped)."""
    header = _cells(lines[0])
    rule = _cells(lines[1]) if len(lines) > 1 and _is_rule(lines[1]) else []
    rows = [_cells(x) for x in lines[(2 if rule else 1) :]]
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1))
    for i, name in enumerate(header):
        right = i < len(rule) and rule[i].endswith(":")
        if not right:  # a text column (model or setting names): whole, on one line
            words = [len(w) for w in name.split()] or [0]
            width = max([*words, *(len(r[i]) for r in rows if i < len(r))])
            table.add_column(name, no_wrap=True, min_width=width, style="bold" if i == 0 else None)
        else:
            table.add_column(name, justify="right", overflow="fold")
    for r in rows:
        table.add_row(*(r + [""] * (len(header) - len(r)))[: len(header)])
    return table


def markdown_renderables(markdown: str) -> Iterator[RenderableType]:
    """The markdown as rich renderables: runs of table lines as :func:`table_from_markdown`, the
    text between them as :class:`rich.markdown.Markdown`."""
    text: list[str] = []
    table: list[str] = []
    for line in [*markdown.splitlines(), ""]:
        if line.lstrip().startswith("|"):
            if text:
                yield Markdown("\n".join(text))
                text = []
            table.append(line)
            continue
        if table:
            yield table_from_markdown(table)
            table = []
        text.append(line)
    if any(t.strip() for t in text):
        yield Markdown("\n".join(text))


def print_markdown(console: Console, markdown: str) -> None:
    """Print a report in the terminal with whole tables (see the module's docstring)."""
    for part in markdown_renderables(markdown):
        console.print(part)
