"""`blockmae report --root DIR [--spec SPEC] --out report.html`: the report of a sweep (its sweep.json) or of
any output root (its registry), as one offline HTML file plus report.md, the tables as CSV/JSON/LaTeX and
the markdown's figures beside it (docs/report.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from tqdm import tqdm

from blockmae.errors import BlockMAEError
from blockmae.fileio import claim_output_file
from blockmae.lock import output_lock
from blockmae.report.analysis import study_document
from blockmae.report.hparams import export_hparams
from blockmae.report.model import load_studies
from blockmae.report.write import write_document
from blockmae.sweep.load import load_spec
from blockmae.sweep.state import check_evaluations_current, check_identity


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
    # report.md and the tables go beside it; a sweep's or a quickstart's folder holds its own report
    claim_output_file(out, (".html", ".htm"), kind="report", accept=("sweep", "quickstart"))
    studies = load_studies(root, args.spec)  # bad input fails here, before any progress output
    if args.spec:
        check_spec(args.spec, studies)
    for line in missing_run_dirs(studies):
        print(f"blockmae: warning: {line}", file=sys.stderr)
    if args.baseline is not None:
        for study in studies:
            study.arm(args.baseline)
            study.baseline = args.baseline
    with tqdm(total=2, desc="report", unit="step", leave=False) as bar:
        doc = study_document(studies, args.title)
        bar.update()
        with output_lock(out):  # two reports to one path would mix their tables
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


def check_spec(spec: str, studies: Sequence[Any]) -> None:
    """`--spec` must be the spec the sweep ran: the same sweep name, and arms and evaluations it would make the
    same way (sweep.state's checks), else the report would credit the numbers to another design."""
    sweep = load_spec(spec)
    for study in studies:
        if study.source != "sweep.json":
            raise BlockMAEError(f"--spec {spec} describes a sweep, and {study.root} holds none (sweep.json)")
        if sweep.name != study.name:
            raise BlockMAEError(f"--spec {spec} is the sweep '{sweep.name}', but {study.root} holds the sweep "
                                f"'{study.name}'; pass the spec it ran (recorded: {study.spec})")
        try:
            check_identity(sweep, study.root)
            check_evaluations_current(sweep, study.root)
        except BlockMAEError as err:
            raise BlockMAEError(f"--spec {spec} is not the spec {study.root} ran: {err}") from None


def missing_run_dirs(studies: Sequence[Any]) -> list[str]:
    """A line per run dir a study names that is gone (its numbers then come from sweep.json alone)."""
    lines = []
    for study in studies:
        for arm in study.arms:
            for seed, run in arm.runs.items():
                dirs = [("", run.run_dir)] + [(f" evaluation {e.name}", e.run_dir) for e in run.evaluations]
                for what, path in dirs:
                    if path is not None and run.status != "planned" and not path.exists():
                        lines.append(f"arm {arm.name} seed {seed}{what}: its run dir {path} is missing; the report "
                                     f"shows the numbers recorded in sweep.json")
    return lines
