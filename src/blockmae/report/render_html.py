"""A Document as one self-contained HTML file: inline CSS, SVG figures, PNGs as data URIs and a few lines of
script for sortable tables; light and dark by the reader's preference. Nothing is fetched when it opens."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from blockmae.report.document import (
    Bullets, Details, Document, Figure, Image, Links, Paragraph, Section, Table, relative_link,
)
from blockmae.report.figures import figure_svg, png_data_uri


def _sort_value(value: Any) -> str:
    """data-sort of a cell: numbers as numbers (the script compares numerically), text as text."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, bool):
        return str(int(value))
    return repr(value) if isinstance(value, (int, float)) else str(value)


def _block(b: Any, base: Path) -> dict[str, Any]:
    if isinstance(b, Paragraph):
        return {"type": "paragraph", "text": b.text, "kind": b.kind}
    if isinstance(b, Table):
        rows = [[{"text": b.get(r, k).text, "sort": _sort_value(b.get(r, k).sort_key if b.get(r, k).value is not None
                                                              else None if b.get(r, k).text == "-" else b.get(r, k).text)}
                 for k, _ in b.columns] for r in b.rows]
        return {"type": "table", "id": b.id, "caption": b.caption, "note": b.note,
                "headers": [label for _, label in b.columns], "rows": rows}
    if isinstance(b, Figure):
        return {"type": "figure", "id": b.name, "caption": b.caption, "svg": Markup(figure_svg(b.figure, b.name))}
    if isinstance(b, Image):
        return {"type": "image", "caption": b.caption, "src": png_data_uri(b.path)}
    if isinstance(b, Links):
        return {"type": "links", "links": [(label, relative_link(p, base)) for label, p in b.items]}
    if isinstance(b, Bullets):
        return {"type": "bullets", "bullets": list(b.items)}
    if isinstance(b, Details):
        return {"type": "details", "summary": b.summary, "text": b.text}
    raise TypeError(f"unknown block {type(b).__name__}")


def _section(s: Section, base: Path, counter: list[int]) -> dict[str, Any]:
    counter[0] += 1
    return {"heading": s.heading, "level": min(s.level, 6), "anchor": f"s{counter[0]}",
            "blocks": [_block(b, base) for b in s.blocks],
            "subsections": [_section(sub, base, counter) for sub in s.subsections]}


def render_html(doc: Document, path: Path, exports: dict[str, str] | None = None) -> str:
    """The HTML text of `doc` for a file at `path` (links are relative to it); `exports`: table id -> the
    relative stem of its CSV/JSON/LaTeX files, linked under each table."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("blockmae.report", "templates"),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True)
    counter = [0]
    sections = [_section(s, path.parent, counter) for s in doc.sections]
    return env.get_template("report.html.j2").render(title=doc.title, intro=list(doc.intro), sections=sections,
                                                     exports=exports or {})
