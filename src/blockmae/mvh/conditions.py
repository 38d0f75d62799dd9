"""model-vs-human's 17 datasets: the distortion levels of the 12 parametric ones, the levels its benchmark
leaves out, and how a trial file's spelling of a level is read.

Facts from model-vs-human's ``datasets/experiments.py`` (levels, axis labels) and ``plotting/plot.py``
(``EXCLUDE_CONDITIONS``: the undistorted control level, and the levels where human accuracy is below 0.2,
where consistency is not meaningful). The five other datasets have one condition: every trial counts.
"""

from __future__ import annotations

from dataclasses import dataclass

from blockmae.errors import BlockMAEError


@dataclass(frozen=True)
class Levels:
    conditions: tuple[str, ...]  # as model-vs-human names them, in plotting order
    labels: tuple[str, ...]  # the x-axis tick labels
    xlabel: str
    excluded: tuple[str, ...]  # left out of the benchmark tables

    @property
    def benchmark(self) -> tuple[str, ...]:
        return tuple(c for c in self.conditions if c not in self.excluded)


_EIDOLON_LABELS = ("0", "1", "2", "3", "4", "5", "6", "7")
_EIDOLON_XLABEL = "log2 of 'reach'"


def _eidolon(coherence: str, excluded_reach: tuple[int, ...]) -> Levels:
    reach = (1, 2, 4, 8, 16, 32, 64, 128)
    return Levels(tuple(f"{r}-{coherence}-10" for r in reach), _EIDOLON_LABELS, _EIDOLON_XLABEL,
                  tuple(f"{r}-{coherence}-10" for r in excluded_reach))


LEVELS: dict[str, Levels] = {
    "colour": Levels(("cr", "bw"), ("colour", "greyscale"), "colour", ("cr",)),
    "contrast": Levels(("c100", "c50", "c30", "c15", "c10", "c05", "c03", "c01"),
                       ("100", "50", "30", "15", "10", "5", "3", "1"), "contrast in percent", ("c100", "c03", "c01")),
    "high-pass": Levels(("inf", "3.0", "1.5", "1.0", "0.7", "0.55", "0.45", "0.4"),
                        ("inf", "3.0", "1.5", "1.0", ".7", ".55", ".45", ".4"), "filter standard deviation",
                        ("inf", "0.55", "0.45", "0.4")),
    "low-pass": Levels(("0", "1", "3", "5", "7", "10", "15", "40"), ("0", "1", "3", "5", "7", "10", "15", "40"),
                       "filter standard deviation", ("0", "15", "40")),
    "phase-scrambling": Levels(("0", "30", "60", "90", "120", "150", "180"),
                               ("0", "30", "60", "90", "120", "150", "180"), "phase noise width [deg]",
                               ("0", "150", "180")),
    "power-equalisation": Levels(("0", "pow"), ("original", "equalised"), "power spectrum", ("0",)),
    "false-colour": Levels(("True", "False"), ("true", "opponent"), "colour", ("True",)),
    "rotation": Levels(("0", "90", "180", "270"), ("0", "90", "180", "270"), "rotation angle [deg]", ("0",)),
    "eidolonI": _eidolon("10", (1, 64, 128)),
    "eidolonII": _eidolon("3", (1, 32, 64, 128)),
    "eidolonIII": _eidolon("0", (1, 16, 32, 64, 128)),
    "uniform-noise": Levels(("0.0", "0.03", "0.05", "0.1", "0.2", "0.35", "0.6", "0.9"),
                            ("0.0", ".03", ".05", ".1", ".2", ".35", ".6", ".9"), "uniform noise width",
                            ("0.0", "0.6", "0.9")),
}
SINGLE_CONDITION = ("cue-conflict", "edge", "silhouette", "sketch", "stylized")
# model-vs-human's benchmark datasets, in its order (constants.DEFAULT_DATASETS)
BENCHMARK_DATASETS = ("edge", "silhouette", "cue-conflict", *LEVELS, "sketch", "stylized")
ONE_CONDITION = ""  # the condition key of a single-condition dataset's trials (the files write 0 or NaN)


def _same_level(written: str, level: str) -> bool:
    try:
        return float(written) == float(level)  # "3" and "0.10" are the levels "3.0" and "0.1"
    except ValueError:
        return written.lower() == level.lower()  # "true" is "True"


def canonical_condition(dataset: str, written: str) -> str:
    """The level a trial file's `written` condition names: model-vs-human's spelling for its parametric
    datasets, `ONE_CONDITION` for its single-condition ones, `written` itself for any other dataset."""
    if dataset in SINGLE_CONDITION:
        return ONE_CONDITION
    levels = LEVELS.get(dataset)
    if levels is None or written in levels.conditions:
        return written
    for level in levels.conditions:
        if _same_level(written, level):
            return level
    raise BlockMAEError(f"{dataset}: condition {written!r} is not one of its levels ({', '.join(levels.conditions)})")
