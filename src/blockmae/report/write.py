"""Write a Document: the HTML file, report.md beside it, the figures for the markdown and every table's
CSV/JSON/LaTeX export. All writes are atomic (blockmae.fileio), so a failure leaves the old report whole."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from blockmae.fileio import write_text_atomic
from blockmae.report.document import Document, relative_link
from blockmae.report.exports import export_tables
from blockmae.report.render_html import render_html
from blockmae.report.render_md import render_markdown
from blockmae.visualisation import save_figure


@dataclass
class Written:
    html: Path | None
    markdown: Path | None
    tables: list[Path] = field(default_factory=list)
    figures: dict[str, Path] = field(default_factory=dict)


def write_document(
    doc: Document,
    html: str | Path | None,
    markdown: str | Path | None,
    tables_dir: str | Path | None = None,
    figures_dir: str | Path | None = None,
    figure_format: str = "svg",
) -> Written:
    """Write `doc` as HTML and/or markdown. `figures_dir`: where the markdown's figure files go (one per
    figure, `<name>.<figure_format>`); `tables_dir`: the table exports (linked from the HTML)."""
    out = Written(Path(html) if html else None, Path(markdown) if markdown else None)
    if tables_dir is not None:
        out.tables = export_tables(doc, tables_dir)
    if out.html is not None:
        exports = {}
        if tables_dir is not None:
            rel = relative_link(tables_dir, out.html.parent)
            exports = {t.id: f"{rel}/{t.id}" for t in doc.tables()}
        write_text_atomic(out.html, render_html(doc, out.html, exports))
    if out.markdown is not None:
        if figures_dir is not None:
            for fig in doc.figures():
                kwargs = {"dpi": 150} if figure_format == "png" else {"metadata": {"Date": None}}
                out.figures[fig.name] = save_figure(fig.figure, Path(figures_dir) / f"{fig.name}.{figure_format}",
                                                    bbox_inches="tight", **kwargs)
        write_text_atomic(out.markdown, render_markdown(doc, out.markdown, out.figures))
    return out


def write_markdown_report(path: str | Path, doc: Document, figure_format: str = "png") -> Written:
    """`doc` as `path` (report.md, its figures in `figures/` beside it), the same as one offline HTML file
    (`path` with .html) and the tables' CSV/JSON/LaTeX in `<stem>_tables/`."""
    path = Path(path)
    return write_document(doc, path.with_suffix(".html"), path, path.parent / f"{path.stem}_tables",
                          path.parent / "figures", figure_format=figure_format)
