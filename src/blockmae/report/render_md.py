"""A Document as Markdown (report.md): tables as pipe tables, figures as files beside it, linked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from blockmae.report.document import (Bullets, Details, Document, Figure, Image, Links, Paragraph, Section, Table,
                                      relative_link)


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    def clean(x: Any) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(clean(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(clean(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(doc: Document, path: Path, figure_files: dict[str, Path]) -> str:
    """The markdown text of `doc` for a file at `path`; `figure_files` maps figure names to written files."""
    base = path.parent
    parts = [f"# {doc.title}", ""]
    for p in doc.intro:
        parts += [p.strip(), ""]

    def block(b: Any) -> list[str]:
        if isinstance(b, Paragraph):
            prefix = {"warning": "> **Warning:** ", "note": "> "}.get(b.kind, "")
            return [prefix + b.text, ""]
        if isinstance(b, Table):
            rows = [[b.get(r, k).text for k, _ in b.columns] for r in b.rows]
            out = [f"**{b.caption}**", "", markdown_table([label for _, label in b.columns], rows), ""]
            return out + ([f"_{b.note}_", ""] if b.note else [])
        if isinstance(b, Figure):
            if b.name not in figure_files:
                return [f"_{b.caption} (figure in the HTML report)_", ""]
            return [f"**{b.caption}**", "", f"![{b.caption}]({relative_link(figure_files[b.name], base)})", ""]
        if isinstance(b, Image):
            return [f"**{b.caption}**", "", f"![{b.caption}]({relative_link(b.path, base)})", ""]
        if isinstance(b, Links):
            return [f"- [{label}]({relative_link(target, base)})" for label, target in b.items] + [""]
        if isinstance(b, Bullets):
            return [f"- {item}" for item in b.items] + [""]
        if isinstance(b, Details):
            return [f"<details><summary>{b.summary}</summary>", "", "```", b.text.rstrip(), "```", "", "</details>", ""]
        raise TypeError(f"unknown block {type(b).__name__}")

    def section(s: Section) -> None:
        parts.extend(["#" * s.level + " " + s.heading, ""])
        for b in s.blocks:
            parts.extend(block(b))
        for sub in s.subsections:
            section(sub)

    for s in doc.sections:
        section(s)
    return "\n".join(parts)
