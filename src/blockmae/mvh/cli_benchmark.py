"""`blockmae mvh benchmark --raw-data DIR [--models NAME ...] --out DIR`.

model-vs-human's two benchmark tables, computed from its per-trial CSV files (humans included): OOD
robustness (OOD accuracy, accuracy difference, observed consistency, error consistency) and shape bias, plus
human-vs-human consistency and every model's metrics per dataset. Writes `results.json` and a report
(`report.html`, `report.md` with `figures/`, tables in `report_tables/`) to --out. Formulas: docs/mvh.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from blockmae.errors import BlockMAEError
from blockmae.fileio import write_json_atomic, writing
from blockmae.mvh.conditions import LEVELS
from blockmae.mvh.figures import accuracy_figure, shape_bias_figure
from blockmae.mvh.metrics import HUMANS, LABELS, METRICS, benchmark
from blockmae.mvh.trials import read_raw_data
from blockmae.report.document import Cell, Document, Figure, Paragraph, Table
from blockmae.report.write import write_markdown_report

CITATION = ("Geirhos et al., Partial success in closing the gap between human and machine vision, NeurIPS 2021 "
            "(bethgelab/model-vs-human)")
BETTER = {"ood_accuracy": "higher", "accuracy_difference": "lower", "observed_consistency": "higher",
          "error_consistency": "higher", "shape_bias": "humans: high"}


def interval_cell(iv: dict[str, Any] | None) -> Cell:
    if iv is None or iv["value"] is None:
        return Cell("-", None)
    bounds = "" if iv["low"] is None else f" [{iv['low']:.3f}, {iv['high']:.3f}]"
    return Cell(f"{iv['value']:.3f}{bounds}", iv["value"])


def _metric_columns(metrics: tuple[str, ...]) -> list[tuple[str, str]]:
    return [(m, f"{LABELS[m]} ({BETTER[m]})") for m in metrics]


def build_document(record: dict[str, Any]) -> Document:
    """The report of a `metrics.benchmark` record: its tables, figures and the conventions they follow."""
    interval_text = (f"95% percentile bootstrap intervals over images ({record['resamples']} resamples, images "
                     f"drawn again within each dataset and condition; observers fixed)" if record["resamples"]
                     else "no intervals (--resamples 0)")
    doc = Document("model-vs-human benchmark", intro=[
        f"Trial files: {record['raw_data']}. Metrics and conventions of {CITATION}; formulas in docs/mvh.md.",
        f"Brackets: {interval_text}."] + ([
        "Every dataset is compared on the images all of its decision makers saw (--common-images): numbers of "
        "models with full trial files differ from their published ones where another maker saw fewer images."]
        if any(d.get("common_images_only") for d in record["datasets"].values()) else []))

    section = doc.section("OOD robustness")
    table = Table("ood-robustness", "Out-of-distribution robustness, averaged over datasets",
                  [("maker", "decision maker"), *_metric_columns(METRICS), ("datasets", "datasets")])
    for maker, values in record["benchmark"].items():
        table.add(maker=maker, datasets=max((v["datasets"] for v in values.values()), default=0),
                  **{m: interval_cell(values.get(m)) for m in METRICS})
    excluded = "; ".join(f"{d}: {', '.join(LEVELS[d].excluded)}" for d in record["datasets"] if d in LEVELS)
    table.note = (f"Accuracy difference, observed and error consistency: against each human observer, averaged "
                  f"over conditions, then observers, then datasets; the humans' row: every pair of observers. "
                  f"Conditions left out (model-vs-human's exclusions): {excluded or 'none here'}.")
    section.add(table)

    section = doc.section("Shape bias")
    shape = record["shape_bias"]
    if not shape:
        section.add(Paragraph("No cue-conflict trials in the raw data: no shape bias.", kind="note"))
    else:
        table = Table("shape-bias", "Shape bias on cue-conflict (pooled over each decision maker's trials)",
                      [("maker", "decision maker"), ("shape_bias", "shape bias"),
                       ("shape", "shape decisions"), ("texture", "texture decisions")])
        for maker, values in shape.items():
            table.add(maker=maker, shape_bias=interval_cell(values["shape_bias"]), shape=values["shape_decisions"],
                      texture=values["texture_decisions"])
        if HUMANS in shape and shape[HUMANS]["observers_mean"] is not None:
            observers = [v for v in shape[HUMANS]["observers"].values() if v is not None]
            table.note = (f"Images whose shape and texture categories differ. Humans: {len(observers)} observers "
                          f"pooled; per observer {min(observers):.3f} to {max(observers):.3f}, their mean "
                          f"{shape[HUMANS]['observers_mean']:.3f}.")
        section.add(table, Figure("shape-bias-per-category", "Fraction of shape decisions per shape category "
                                  "(vertical lines: overall shape bias), in the style of model-vs-human.",
                                  shape_bias_figure(shape)))

    section = doc.section("Humans among themselves")
    table = Table("human-consistency", "Human observers per dataset: accuracy and consistency between pairs",
                  [("dataset", "dataset"), ("observers", "observers"), *_metric_columns(METRICS)])
    for dataset, values in record["per_dataset"].items():
        if HUMANS in values:
            table.add(dataset=dataset, observers=len(record["datasets"][dataset]["humans"]),
                      **{m: interval_cell(values[HUMANS].get(m)) for m in METRICS})
    section.add(table)

    section = doc.section("Models per dataset")
    table = Table("per-dataset", "Each model per dataset (benchmark conditions)",
                  [("dataset", "dataset"), ("maker", "model"), *_metric_columns(METRICS)])
    for dataset, values in record["per_dataset"].items():
        for maker, metrics in values.items():
            if maker != HUMANS:
                table.add(dataset=dataset, maker=maker, **{m: interval_cell(metrics.get(m)) for m in METRICS})
    section.add(table)
    figure = accuracy_figure(record["accuracy_by_condition"])
    if figure is not None:
        section.add(Figure("accuracy-by-condition", "16-class accuracy against condition (all conditions, "
                           "including those the benchmark leaves out); dotted: chance.", figure))
    return doc


def format_tables(record: dict[str, Any]) -> str:
    """The two benchmark tables as plain text (point estimates)."""
    def value(iv: dict[str, Any] | None) -> str:
        return "-" if iv is None or iv["value"] is None else f"{iv['value']:.3f}"

    width = max([len(m) for m in record["benchmark"]] + [len("decision maker")])
    header = "  ".join(f"{LABELS[m]:>20}" for m in METRICS)
    lines = [f"{'decision maker':<{width}}  {header}  {'shape bias':>10}"]
    for maker, values in record["benchmark"].items():
        shape = record["shape_bias"].get(maker, {}).get("shape_bias")
        lines.append(f"{maker:<{width}}  " + "  ".join(f"{value(values.get(m)):>20}" for m in METRICS)
                     + f"  {value(shape):>10}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--raw-data", required=True, type=Path, metavar="DIR",
                        help="model-vs-human's raw-data folder: one folder of trial CSVs per dataset")
    parser.add_argument("--models", nargs="+", metavar="NAME",
                        help="only these models, named as their trial files name them (e.g. bagnet33 "
                             "simclr-resnet50x1); default: every model in the raw data")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR",
                        help="output folder (results.json, report.html, report.md)")
    parser.add_argument("--resamples", type=int, default=1000, metavar="N",
                        help="bootstrap resamples of the images for the 95%% intervals (0: no intervals)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--common-images", action="store_true",
                        help="compare every decision maker of a dataset on the images all of them saw (e.g. a "
                             "Tiny-ImageNet probe's covered categories beside humans); default: refuse files "
                             "that saw different images")


def run(args: argparse.Namespace) -> int:
    if args.resamples < 0:
        raise BlockMAEError(f"--resamples must be 0 or more, not {args.resamples}")
    raw = read_raw_data(args.raw_data)
    record = benchmark(raw, args.models, args.resamples, args.seed, common_images=args.common_images,
                       progress=lambda datasets: tqdm(datasets, desc="datasets", unit="dataset",
                                                      disable=not sys.stderr.isatty(), leave=False))
    record = {"raw_data": str(args.raw_data.resolve()), "citation": CITATION, **record}
    doc = build_document(record)
    with writing(args.out):
        written = write_markdown_report(args.out / "report.md", doc)
        write_json_atomic(args.out / "results.json", record)
    print(format_tables(record))
    print(f"results: {args.out / 'results.json'}\nreport: {written.html}")
    return 0
