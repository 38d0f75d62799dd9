"""Human 16-class accuracy per filter level (model-vs-human), computed from the raw trials and shipped.

The shipped table `blockmae/resources/human-reference-filters.csv` is what the diagnostics plot; it
was made by this module from the raw trial CSVs of bethgelab/model-vs-human (raw-data/low-pass and
raw-data/high-pass, commit 79ed7cd1; 4 observers, 640 trials per level), one row per
(experiment, level): trials, correct answers (an answer "na", no answer, counts as wrong), accuracy,
chance (1/16), and the source and citation of the numbers. Regenerate (the test suite checks that
recomputing from the raw data gives the shipped numbers):

    python -m blockmae.diagnostics.human_reference ../shared/data/human-reference [--out FILE]
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

from blockmae.diagnostics.context import write_csv
from blockmae.errors import BlockMAEError, error_line

EXPERIMENTS = ("low-pass", "high-pass")
CHANCE = 1 / 16
SOURCE = "bethgelab/model-vs-human raw-data (commit 79ed7cd1), 4 observers"
CITATION = ("Geirhos et al., Generalisation in humans and deep neural networks, NeurIPS 2018; "
            "Geirhos et al., Partial success in closing the gap between human and machine vision, NeurIPS 2021")
RESOURCE = "human-reference-filters.csv"
COLUMNS = ("experiment", "condition", "sigma_224", "fraction_of_side", "trials", "correct", "accuracy", "chance",
           "source", "citation")


def compute_table(raw_dir: str | Path) -> list[dict[str, Any]]:
    """One row per (experiment, condition) from the raw trial CSVs under `raw_dir`/<experiment>/."""
    raw_dir = Path(raw_dir)
    rows = []
    for experiment in EXPERIMENTS:
        files = sorted((raw_dir / experiment).glob("*.csv"))
        if not files:
            raise BlockMAEError(f"no raw trial CSVs in {raw_dir / experiment}")
        trials: Counter[str] = Counter()
        correct: Counter[str] = Counter()
        for file in files:
            with open(file, newline="") as fh:
                for trial in csv.DictReader(fh):
                    level = trial["condition"]
                    trials[level] += 1
                    correct[level] += trial["object_response"] == trial["category"]  # "na" never matches
        for level in sorted(trials, key=lambda c: -float(c) if experiment == "high-pass" else float(c)):
            sigma = float(level)
            rows.append({
                "experiment": experiment, "condition": level, "sigma_224": sigma,
                "fraction_of_side": sigma / 224, "trials": trials[level], "correct": correct[level],
                "accuracy": round(correct[level] / trials[level], 6), "chance": round(CHANCE, 6),
                "source": SOURCE, "citation": CITATION,
            })
    return rows


def load_table(experiment: str) -> list[dict[str, Any]]:
    """The shipped rows of `experiment` (low-pass or high-pass), typed, in the experiment's level order."""
    if experiment not in EXPERIMENTS:
        raise BlockMAEError(f"no human reference for {experiment!r}; choose one of {', '.join(EXPERIMENTS)}")
    text = resources.files("blockmae").joinpath("resources", RESOURCE).read_text(encoding="utf-8")
    out = []
    for row in csv.DictReader(text.splitlines()):
        if row["experiment"] != experiment:
            continue
        typed: dict[str, Any] = dict(row)
        for key in ("sigma_224", "fraction_of_side", "accuracy", "chance"):
            typed[key] = float(row[key])
        for key in ("trials", "correct"):
            typed[key] = int(row[key])
        out.append(typed)
    return out


def human_curve(experiment: str, sigmas_224: list[float]) -> list[dict[str, Any]] | None:
    """The human rows at exactly these levels (sigma at 224 px), or None when humans were not tested there."""
    rows = {r["sigma_224"]: r for r in load_table(experiment)}
    if not all(s in rows or (math.isinf(s) and math.inf in rows) for s in sigmas_224):
        return None
    return [rows[s] for s in sigmas_224]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m blockmae.diagnostics.human_reference", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("raw_dir", help="folder with low-pass/ and high-pass/ raw trial CSVs")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "resources" / RESOURCE))
    args = parser.parse_args(argv)
    try:
        rows = compute_table(args.raw_dir)
    except BlockMAEError as err:
        print(error_line(err), file=sys.stderr)
        return 2
    write_csv(Path(args.out), rows)
    print(f"wrote {len(rows)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
