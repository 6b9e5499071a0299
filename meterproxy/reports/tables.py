"""The command line's tables: drawn exactly as rich draws them, without loading rich when it can.

Importing rich and drawing a table with it costs a read-only command about a third of its time.
When the output is not a terminal (piped or redirected: no colours, no terminal width), every
cell is printable ASCII and the table fits the width, :meth:`Table.plain` draws the very
characters rich would (a test compares both on many tables); otherwise :meth:`Table.to_rich`
hands the table to rich. Only what the command line uses is supported: a title on the left, the
heavy-headed box or none, sections, left and right columns.

Cells and titles are text, shown as they are: never read as rich markup or emoji codes (names
from the ledger such as ``each_agent[ana]`` or ``model:latest:`` stay whole).
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

if TYPE_CHECKING:
    import rich.table

Justify = Literal["left", "right"]

HEAVY_HEAD = ("┏━┳┓", "┃┃┃", "┡━╇┩", "│││", "├─┼┤", "└─┴┘")
"""rich's ``box.HEAVY_HEAD``: top, header row, under the header, rows, between sections, bottom."""
_PLAIN = re.compile(r"[ -~·]*")
"""Printable ASCII (and the middle dot of report titles): one column per character."""


class Column(NamedTuple):
    header: str
    justify: Justify = "left"
    no_wrap: bool = False


class Row:
    __slots__ = ("cells", "style", "end_section")

    def __init__(self, cells: list[str], style: str | None = None):
        self.cells, self.style, self.end_section = cells, style, False


class Table:
    """A table as ``rich.table.Table`` takes it (the few options the command line uses; plain
    classes here: dataclasses cost the start of the command line more)."""

    def __init__(
        self, title: str | None = None, title_justify: Justify = "left",
        box: Literal["heavy_head"] | None = "heavy_head", pad_edge: bool = True, header_style: str | None = None,
    ):
        self.title, self.title_justify, self.box = title, title_justify, box
        self.pad_edge, self.header_style = pad_edge, header_style
        self.columns: list[Column] = []
        self.rows: list[Row] = []

    def __repr__(self) -> str:
        return f"Table(title={self.title!r}, columns={[c.header for c in self.columns]!r}, rows={len(self.rows)})"

    def add_column(self, header: str = "", justify: Justify = "left", no_wrap: bool = False) -> None:
        self.columns.append(Column(header, justify, no_wrap))

    def add_row(self, *cells: str, style: str | None = None) -> None:
        self.rows.append(Row([*cells, *[""] * (len(self.columns) - len(cells))], style))

    def add_section(self) -> None:
        if self.rows:
            self.rows[-1].end_section = True

    def to_rich(self) -> rich.table.Table:
        """The table for rich, its texts as they are (rich.text.Text: no markup, no emoji codes)."""
        from rich import box
        from rich.table import Table as RichTable
        from rich.text import Text

        kwargs: dict[str, Any] = {"box": box.HEAVY_HEAD if self.box else None, "pad_edge": self.pad_edge}
        if self.title is not None:
            title = Text(self.title, style="table.title") if self.title else self.title
            kwargs |= {"title": title, "title_justify": self.title_justify}
        if self.header_style is not None:
            kwargs["header_style"] = self.header_style
        out = RichTable(**kwargs)
        for column in self.columns:
            out.add_column(Text(column.header), justify=column.justify, no_wrap=column.no_wrap)
        for row in self.rows:
            out.add_row(*(Text(cell) for cell in row.cells), style=row.style, end_section=row.end_section)
        return out

    def plain(self, width: int) -> str | None:
        """The table as rich draws it on a console ``width`` wide that is not a terminal; None when
        only rich can draw it (text other than printable ASCII, too wide)."""
        texts = [column.header for column in self.columns] + [cell for row in self.rows for cell in row.cells]
        if self.title:
            texts.append(self.title)
        if not self.columns or not all(_plain(text) for text in texts) or self.title_justify != "left":
            return None
        if any(len(row.cells) != len(self.columns) for row in self.rows):  # rich would add columns
            return None
        last = len(self.columns) - 1
        pads = [(int(self.pad_edge or i > 0), int(self.pad_edge or i < last)) for i in range(last + 1)]
        widths = [
            max([len(column.header), *(len(row.cells[i]) for row in self.rows)]) + sum(pads[i]) or 1
            for i, column in enumerate(self.columns)
        ]
        box = HEAVY_HEAD if self.box else None
        table_width = sum(widths) + (last + 2 if box else 0)
        if table_width > width or (self.title and len(self.title) > table_width):
            return None
        lines = [self.title.ljust(table_width)] if self.title else []

        def rule(chars: str) -> str:
            return chars[0] + chars[2].join(chars[1] * w for w in widths) + chars[3]

        def line(cells: list[str], edges: str | None) -> str:
            parts = []
            for cell, column, w, (left, right) in zip(cells, self.columns, widths, pads):
                inner = w - left - right
                text = cell.rstrip().rjust(inner) if column.justify == "right" else cell.ljust(inner)
                parts.append(" " * left + text + " " * right)
            return edges[0] + edges[1].join(parts) + edges[2] if edges else "".join(parts)

        if box:
            lines.append(rule(box[0]))
        lines.append(line([column.header for column in self.columns], box[1] if box else None))
        if box:
            lines.append(rule(box[2]))
        for index, row in enumerate(self.rows):
            lines.append(line(row.cells, box[3] if box else None))
            if box and row.end_section and index < len(self.rows) - 1:
                lines.append(rule(box[4]))
        if box:
            lines.append(rule(box[5]))
        return "\n".join(lines) + "\n"


def _plain(text: str) -> bool:
    """Text one column per character (printable ASCII), so its width is its length."""
    return isinstance(text, str) and _PLAIN.fullmatch(text) is not None


def plain_output() -> bool:
    """Whether rich would write to stdout as to a file (no terminal: no colours, no styles), in UTF-8."""
    import sys

    stdout = sys.stdout
    encoding = (getattr(stdout, "encoding", None) or "utf-8").lower()
    if encoding.replace("-", "") not in ("utf8", "utf8sig"):
        return False
    tty_compatible = os.environ.get("TTY_COMPATIBLE", "")
    if tty_compatible in ("0", "1"):
        return tty_compatible == "0"
    if os.environ.get("FORCE_COLOR") is not None:
        return os.environ["FORCE_COLOR"] == ""
    try:
        return not stdout.isatty()
    except ValueError:
        return True
