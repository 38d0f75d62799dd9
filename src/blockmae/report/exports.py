"""Every table of a report as CSV, JSON and LaTeX (booktabs), one file each per table."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from blockmae.fileio import write_text_atomic
from blockmae.report.document import Document, Table

_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}


def latex_escape(text: str) -> str:
    out = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)
    return out.replace("±", r"$\pm$")


def table_csv(table: Table) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    records = table.records()
    writer.writerow([label for _, label in table.columns])
    for rec in records:
        writer.writerow(["" if v is None else v for v in rec.values()])
    return buf.getvalue()


def table_json(table: Table) -> str:
    return json.dumps({"id": table.id, "caption": table.caption, "note": table.note, "rows": table.records()},
                      indent=2, default=str) + "\n"


def table_latex(table: Table) -> str:
    """A booktabs tabular of the cells as shown (the caption as a comment and \\caption)."""
    cols = len(table.columns)
    lines = [
        r"% needs \usepackage{booktabs}",
        r"\begin{table}[t]", r"\centering",
        r"\caption{" + latex_escape(table.caption) + "}",
        r"\begin{tabular}{l" + "r" * (cols - 1) + "}", r"\toprule",
        " & ".join(latex_escape(label) for _, label in table.columns) + r" \\", r"\midrule",
    ]
    for row in table.rows:
        lines.append(" & ".join(latex_escape(table.get(row, key).text) for key, _ in table.columns) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def export_tables(doc: Document, folder: str | Path) -> list[Path]:
    """Write <folder>/<table id>.csv/.json/.tex for every table of `doc`; returns the paths."""
    folder = Path(folder)
    written = []
    for table in doc.tables():
        for suffix, text in ((".csv", table_csv(table)), (".json", table_json(table)), (".tex", table_latex(table))):
            written.append(write_text_atomic(folder / f"{table.id}{suffix}", text))
    return written
