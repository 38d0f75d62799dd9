"""model-vs-human's per-trial CSV files: one row per trial, one file per dataset and decision maker.

Schema (header row; some human files spell ``Session``)::

    subj,session,trial,rt,object_response,category,condition,imagename

``subj`` is the decision maker (``subject-XX`` for a human observer, else a model's name), ``category``
the true 16-class category (for cue-conflict: the shape's), ``object_response`` the decision (``na``: the
observer gave none), ``condition`` the distortion level as the dataset names it (``0`` or ``NaN`` where a
dataset has one level), ``rt`` the reaction time in seconds (``NaN`` for models).

File names (model-vs-human's convention; its ``raw-data/<dataset>/`` folders hold them)::

    <dataset>_subject-XX_session_<n>.csv      a human observer
    <dataset>_<model>_session-<n>.csv         a model; underscores of its name become hyphens

Image names: a human file's names carry a prefix (trial number, the dataset's short name, the session, the
condition, ...) before the original name; `image_id` strips it the way model-vs-human does, so that trials
of different decision makers are matched on the same image.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from blockmae.errors import BlockMAEError
from blockmae.fileio import atomic_path, writing

TRIAL_COLUMNS = ("subj", "session", "trial", "rt", "object_response", "category", "condition", "imagename")
NO_ANSWER = "na"
HUMAN_PREFIX = "subject-"
PERFORMANCES = "performances"  # raw-data/performances/<model>.csv: model-vs-human's per-dataset summaries


@dataclass(frozen=True)
class Trial:
    subj: str
    session: int
    trial: int
    rt: float  # seconds; NaN for models
    object_response: str
    category: str
    condition: str  # as the file writes it; `blockmae.mvh.metrics` maps spellings ("3" / "3.0") to one
    imagename: str

    @property
    def correct(self) -> bool:
        return self.object_response == self.category  # "na" (no answer) never matches a category

    @property
    def image_id(self) -> str:
        return image_id(self.imagename)


def is_human(subject: str) -> bool:
    return subject.startswith(HUMAN_PREFIX)


def image_id(imagename: str) -> str:
    """The image's own name without the experiment's prefix: the last "_"-separated part, or the last two
    where they are an ImageNet file name (``n02951358_5952.JPEG``). model-vs-human's matching rule."""
    parts = imagename.split("_")
    if len(parts) == 1:
        return imagename
    if parts[-2].startswith("n0"):
        return f"{parts[-2]}_{parts[-1]}"
    return parts[-1]


def decision_maker(subj: str) -> str:
    """The name a decision maker goes by: a human's ``subject-XX``, a model's name as its file name spells it
    (model-vs-human writes ``simclr_resnet50x1`` in the rows and ``simclr-resnet50x1`` in the file name)."""
    return subj if is_human(subj) else subj.replace("_", "-")


def trial_file_name(dataset: str, subject: str, session: int = 1) -> str:
    """model-vs-human's file name for `subject`'s trials on `dataset` (see the module docstring)."""
    for what, name in (("dataset", dataset), ("decision maker", subject)):
        if not name or "/" in name or "\\" in name:
            raise BlockMAEError(f"{name!r} cannot be a {what} name in a trial file name")
    if is_human(subject):
        return f"{dataset}_{subject}_session_{session}.csv"
    return f"{dataset}_{decision_maker(subject)}_session-{session}.csv"


def _parse_row(row: dict[str, str], where: str) -> Trial:
    try:
        session, trial, rt = int(row["session"]), int(row["trial"]), float(row["rt"])
    except ValueError:
        raise BlockMAEError(f"{where}: session and trial must be whole numbers and rt a number (or NaN), "
                            f"got {row['session']!r}, {row['trial']!r}, {row['rt']!r}") from None
    text = {name: row[name].strip() for name in ("subj", "object_response", "category", "condition", "imagename")}
    empty = [name for name, value in text.items() if not value]
    if empty:
        raise BlockMAEError(f"{where}: empty {', '.join(empty)}")
    return Trial(session=session, trial=trial, rt=rt, **text)


def read_trials(path: str | Path) -> list[Trial]:
    """The trials of one CSV file in model-vs-human's schema; a malformed file is a BlockMAEError naming
    the file and line."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError) as err:
        raise BlockMAEError(f"cannot read trial file {path}: {err}") from None
    if not rows:
        raise BlockMAEError(f"{path} is empty; a trial file starts with the header {','.join(TRIAL_COLUMNS)}")
    header = [name.strip().lower() for name in rows[0]]
    if sorted(header) != sorted(TRIAL_COLUMNS):
        raise BlockMAEError(f"{path}: header {','.join(rows[0])} is not model-vs-human's "
                            f"{','.join(TRIAL_COLUMNS)}")
    trials = []
    for line, values in enumerate(rows[1:], start=2):
        if not values:
            continue
        if len(values) != len(header):
            raise BlockMAEError(f"{path} line {line}: {len(values)} fields, the header has {len(header)}")
        trials.append(_parse_row(dict(zip(header, values)), f"{path} line {line}"))
    if not trials:
        raise BlockMAEError(f"{path} holds no trials")
    return trials


def _format_rt(rt: float) -> str:
    return "NaN" if math.isnan(rt) else repr(rt)


def write_trials(path: str | Path, trials: list[Trial]) -> Path:
    """Write `trials` in model-vs-human's schema, atomically (a crash leaves the old file or the new one)."""
    path = Path(path)
    with writing(path), atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(TRIAL_COLUMNS)
            for t in trials:
                writer.writerow([t.subj, t.session, t.trial, _format_rt(t.rt), t.object_response, t.category,
                                 t.condition, t.imagename])
    return path


def read_raw_data(root: str | Path) -> dict[str, dict[str, list[Trial]]]:
    """dataset -> decision maker -> trials, from model-vs-human's layout ``root/<dataset>/*.csv``.

    Trials are grouped by their ``subj`` column (as model-vs-human does), named by `decision_maker`; humans
    are the ``subject-XX`` ones (`is_human`). Datasets and decision makers come sorted by name. The
    ``performances`` folder, where model-vs-human's evaluation writes summary CSVs, is not a dataset."""
    root = Path(root)
    if not root.is_dir():
        raise BlockMAEError(f"raw-data folder {root} does not exist; pass model-vs-human's raw-data folder "
                            f"(one folder of trial CSVs per dataset)")
    data: dict[str, dict[str, list[Trial]]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name != PERFORMANCES):
        files = sorted(folder.glob("*.csv"))
        if not files:
            continue
        by_maker: dict[str, list[Trial]] = {}
        for file in files:
            for trial in read_trials(file):
                by_maker.setdefault(decision_maker(trial.subj), []).append(trial)
        data[folder.name] = dict(sorted(by_maker.items()))
    if not data:
        raise BlockMAEError(f"{root} holds no dataset folders with trial CSVs (expected <dataset>/*.csv, as in "
                            f"model-vs-human's raw-data)")
    return data
