"""`blockmae report --root DIR [--spec SPEC] --out report.html`: the report of a sweep (its sweep.json) or of
any output root (its registry), as one offline HTML file plus report.md, the tables as CSV/JSON/LaTeX and
the markdown's figures beside it (docs/report.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm import tqdm

from blockmae.errors import BlockMAEError
from blockmae.report.analysis import study_document
from blockmae.report.hparams import export_hparams
from blockmae.report.model import load_studies
from blockmae.report.write import write_document


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, help="a sweep's --out folder (with sweep.json), a folder of sweep "
                                                       "folders, or any output root with a registry")
    parser.add_argument("--spec", default=None, help="the sweep spec (YAML): its title, description and baseline are used and "
                                                     "its text is kept in the report's provenance")
    parser.add_argument("--out", default=None, help="the HTML file to write (default: ROOT/report.html); report.md, "
                                                    "<stem>_tables/ and <stem>_figures/ go beside it")
    parser.add_argument("--baseline", default=None, help="arm to pair the others against (default: the sweep's)")
    parser.add_argument("--title", default=None, help="report title")
    parser.add_argument("--tensorboard", default=None, metavar="DIR",
                        help="also export the arms to TensorBoard's HParams view in DIR (tensorboard --logdir DIR)")


def run(args: argparse.Namespace) -> int:
    root = Path(args.root)
    out = Path(args.out) if args.out else root / "report.html"
    if out.suffix.lower() not in (".html", ".htm"):
        raise BlockMAEError(f"--out {out} must be an .html file (report.md and the tables are written beside it)")
    if out.is_dir():
        raise BlockMAEError(f"--out {out} is a folder; give the HTML file's path, e.g. {out / 'report.html'}")
    studies = load_studies(root, args.spec)  # bad input fails here, before any progress output
    if args.baseline is not None:
        for study in studies:
            study.arm(args.baseline)
            study.baseline = args.baseline
    with tqdm(total=2, desc="report", unit="step", leave=False) as bar:
        doc = study_document(studies, args.title)
        bar.update()
        written = write_document(doc, out, out.with_suffix(".md"), out.parent / f"{out.stem}_tables",
                                 out.parent / f"{out.stem}_figures")
        bar.update()
    if args.tensorboard:
        runs = export_hparams(studies, args.tensorboard)
        print(f"tensorboard: {len(runs)} runs in {args.tensorboard} (tensorboard --logdir {args.tensorboard}, HPARAMS tab)")
    arms = sum(len(s.arms) for s in studies)
    print(f"report: {written.html} ({len(studies)} stud{'y' if len(studies) == 1 else 'ies'}, {arms} arms); "
          f"markdown: {written.markdown}; {len(written.tables) // 3} tables in {out.parent / (out.stem + '_tables')}")
    return 0
