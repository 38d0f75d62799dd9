"""The report as data: a Document of sections holding paragraphs, tables, figures and images.

Every report (a sweep's, a single study's, the quickstart's) is built as a :class:`Document` and handed
to the renderers (render_html, render_md) and the table exports, so that all of them say the same
thing. A figure is a matplotlib ``Figure`` until a renderer writes it (inline SVG in the HTML, a file
beside report.md); an image is a PNG already on disk (reconstructions), embedded as a data URI.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union


@dataclass(frozen=True)
class Cell:
    """One table cell: `text` as shown; `value` (a number, string or None) for sorting and exports."""

    text: str
    value: Any = None

    @property
    def sort_key(self) -> Any:
        return self.text if self.value is None else self.value


def cell(value: Any, text: str | None = None) -> Cell:
    """A cell from a raw value (numbers formatted by :func:`fmt`); `text` overrides the shown text."""
    if isinstance(value, Cell):
        return value
    if text is None:
        text = "-" if value is None else fmt(value) if isinstance(value, float) else str(value)
    return Cell(text, value)


def fmt(x: float | None, digits: int = 3) -> str:
    """A number for a table: `digits` decimals for ordinary magnitudes, significant figures otherwise."""
    if x is None:
        return "-"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if isinstance(x, int):
        return str(x)
    if not math.isfinite(x):
        return str(x)
    if x != 0 and (abs(x) >= 10 ** 4 or abs(x) < 10 ** -digits):
        return f"{x:.{digits}g}"
    return f"{x:.{digits}f}"


@dataclass
class Table:
    """A table with an id (the stem of its exports), a caption and rows of cells keyed by column."""

    id: str
    caption: str
    columns: list[tuple[str, str]]  # (key, label)
    rows: list[dict[str, Cell]] = field(default_factory=list)
    note: str = ""

    def add(self, **cells: Any) -> None:
        unknown = set(cells) - {k for k, _ in self.columns}
        if unknown:
            raise KeyError(f"table {self.id} has no columns {sorted(unknown)}")
        self.rows.append({k: cell(v) for k, v in cells.items()})

    def get(self, row: dict[str, Cell], key: str) -> Cell:
        return row.get(key, Cell("-", None))

    def records(self) -> list[dict[str, Any]]:
        """Rows as {column label: raw value (or the text where a cell has none)} for the exports."""
        return [{label: (c.value if c.value is not None else (None if c.text == "-" else c.text))
                 for key, label in self.columns for c in [self.get(r, key)]} for r in self.rows]


@dataclass
class Paragraph:
    text: str
    kind: str = "text"  # text | warning | note


@dataclass
class Figure:
    """A matplotlib figure, its caption and a file stem for the renderers that write files."""

    name: str
    caption: str
    figure: Any  # matplotlib.figure.Figure


@dataclass
class Image:
    """A PNG on disk (embedded, not linked, in the HTML)."""

    path: Path
    caption: str


@dataclass
class Links:
    """Labelled links to files or folders (made relative to the report)."""

    items: list[tuple[str, Path]]


@dataclass
class Bullets:
    """A bulleted list of plain sentences."""

    items: list[str]


@dataclass
class Details:
    """Collapsed preformatted text (configs, specs) under a summary line."""

    summary: str
    text: str


Block = Union[Paragraph, Table, Figure, Image, Links, Bullets, Details]


@dataclass
class Section:
    heading: str
    blocks: list[Block] = field(default_factory=list)
    level: int = 2
    subsections: list["Section"] = field(default_factory=list)

    def add(self, *blocks: Block) -> "Section":
        self.blocks.extend(blocks)
        return self

    def sub(self, heading: str) -> "Section":
        section = Section(heading, level=self.level + 1)
        self.subsections.append(section)
        return section


@dataclass
class Document:
    title: str
    intro: Sequence[str] = ()
    sections: list[Section] = field(default_factory=list)

    def section(self, heading: str) -> Section:
        section = Section(heading)
        self.sections.append(section)
        return section

    def walk(self) -> list[Block]:
        """Every block, in reading order."""
        out: list[Block] = []

        def visit(section: Section) -> None:
            out.extend(section.blocks)
            for sub in section.subsections:
                visit(sub)

        for s in self.sections:
            visit(s)
        return out

    def tables(self) -> list[Table]:
        return [b for b in self.walk() if isinstance(b, Table)]

    def figures(self) -> list[Figure]:
        return [b for b in self.walk() if isinstance(b, Figure)]


def slug(text: str) -> str:
    """A file- and id-safe name: 'linear.top1 by arm' -> 'linear-top1-by-arm'."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "x"


def relative_link(target: str | Path, base_dir: str | Path) -> str:
    """`target` as a link relative to the folder `base_dir` (forward slashes), for reports that move with
    their run folders."""
    return Path(os.path.relpath(Path(target).resolve(), Path(base_dir).resolve())).as_posix()
