"""model-vs-human's 17 out-of-distribution datasets (Geirhos et al., NeurIPS 2021), as its loaders read them.

Published as one archive per dataset, ``<release>/<name>.tar.gz`` (:data:`RELEASE_URL`), which extracts to
``<name>/``. Two layouts, the one its code reads for each dataset:

* edge, silhouette, cue-conflict (category folders; condition ``NaN``)::

      <name>/<category>/<image>.png                          e.g. cue-conflict/cat/cat1-bear3.png

  The edge and filled-silhouette stimuli of rgeirhos/texture-vs-shape (``stimuli/edges``,
  ``stimuli/filled-silhouettes``, or those folders alone) are the same images in the same layout and
  are accepted as the source of ``edge`` and ``silhouette``.
* the 12 parametric distortions, sketch and stylized (one session folder of the model's images)::

      <name>/dnn/session-1/<NNNN>_<abbr>_dnn_<condition>_<category>_<xx>_<original>.png

  condition and category are the 4th and 5th ``_``-separated fields of the file name.

The image name a trial file records is the file name; trial order = ImageFolder's (sorted folders, then
sorted file names), as model-vs-human writes its model files. As a `load_dataset` name each dataset is
``mvh-<name>`` (split ``test``): labels = the category's index among the 16 sorted categories; extra label
``condition`` = the index into :func:`conditions` of the stimulus' condition; for cue-conflict
``texture`` (index among the 16) too. :func:`load_stimuli` also gives each image's name and condition.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from blockmae.data import tiny_imagenet
from blockmae.data.cache import cached_image_dataset
from blockmae.data.cue_conflict import CATEGORIES, load_category_mapping
from blockmae.data.download import RemoteFile
from blockmae.data.roots import resolve_root, split_cache_dir
from blockmae.data.tiny_imagenet import list_items, read_wnids
from blockmae.errors import BlockMAEError

if TYPE_CHECKING:  # torch is imported only when a dataset is loaded
    from blockmae.data.base import ImageTensorDataset

RELEASE_URL = "https://github.com/bethgelab/model-vs-human/releases/download/v0.1/{name}.tar.gz"
NOISE_DATASETS = ("colour", "contrast", "high-pass", "low-pass", "phase-scrambling", "power-equalisation",
                  "false-colour", "rotation", "eidolonI", "eidolonII", "eidolonIII", "uniform-noise")
CATEGORY_FOLDER_DATASETS = ("edge", "silhouette", "cue-conflict")
# model-vs-human's default evaluation order
DATASETS = CATEGORY_FOLDER_DATASETS + NOISE_DATASETS + ("sketch", "stylized")
PREFIX = "mvh-"  # load_dataset / data prepare names: mvh-<name>
SPLITS = ("test",)
# blockmae's own datasets that `load_stimuli` also serves in the 16 categories (not model-vs-human's)
OWN_DATASETS = ("tiny-imagenet",)
NO_CONDITION = "NaN"  # the condition model-vs-human records for a dataset of one condition
# where rgeirhos/texture-vs-shape keeps the same stimuli (under stimuli/)
TEXTURE_VS_SHAPE_FOLDERS = {"edge": "edges", "silhouette": "filled-silhouettes",
                            "cue-conflict": "style-transfer-preprocessed-512"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_CUE_CONFLICT_NAME = re.compile(r"^([a-z]+)\d+-([a-z]+)\d+\.png$")


@dataclass(frozen=True)
class Stimulus:
    """One image of a model-vs-human dataset, with what its trial row records."""

    path: Path
    imagename: str  # the file name: the trial file's `imagename`
    category: str  # true category (one of the 16)
    condition: str  # distortion level as model-vs-human names it, NaN for one-condition datasets
    session: int = 1
    texture: str | None = None  # cue-conflict: the texture category


def dataset_name(name: str) -> str:
    """A model-vs-human dataset name from `name` or `mvh-<name>`; one-line error listing the 17 otherwise."""
    bare = name[len(PREFIX):] if name.startswith(PREFIX) else name
    if bare not in DATASETS:
        raise BlockMAEError(f"unknown model-vs-human dataset {name!r}; choose among {', '.join(DATASETS)}")
    return bare


def official_archive(name: str) -> RemoteFile:
    """The published archive of dataset `name` (no checksum is published: the contents are checked)."""
    bare = dataset_name(name)
    return RemoteFile(url=RELEASE_URL.format(name=bare), filename=f"{bare}.tar.gz")


def layout(name: str) -> str:
    bare = dataset_name(name)
    if bare in CATEGORY_FOLDER_DATASETS:
        return f"{bare}/<category>/<image>.png for the 16 categories"
    return f"{bare}/dnn/session-1/<NNNN>_<abbr>_dnn_<condition>_<category>_<xx>_<name>.png"


def _has_category_folders(folder: Path) -> bool:
    return folder.is_dir() and any((folder / c).is_dir() for c in CATEGORIES)


def _has_sessions(folder: Path) -> bool:
    dnn = folder / "dnn"
    return dnn.is_dir() and any(p.is_dir() and p.name.startswith("session-") for p in dnn.iterdir())


def data_dir_finder(name: str) -> Callable[[Path], Path | None]:
    """find_data_dir for dataset `name`: the folder holding its layout (see the module docstring)."""
    bare = dataset_name(name)

    def find(folder: Path) -> Path | None:
        candidates = [folder, folder / bare]
        if bare in TEXTURE_VS_SHAPE_FOLDERS:
            original = TEXTURE_VS_SHAPE_FOLDERS[bare]
            candidates += [folder / original, folder / "stimuli" / original,
                           *sorted(folder.glob(f"*/stimuli/{original}"))]
            test = _has_category_folders
        else:
            test = _has_sessions
        return next((c for c in candidates if test(c)), None)

    return find


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def list_stimuli(name: str, data_dir: Path) -> list[Stimulus]:
    """Every stimulus of dataset `name` in `data_dir` (as `data_dir_finder` returns it), in trial order."""
    bare = dataset_name(name)
    known = set(CATEGORIES)
    stimuli: list[Stimulus] = []
    if bare in CATEGORY_FOLDER_DATASETS:
        unknown = sorted(p.name for p in data_dir.iterdir() if p.is_dir() and p.name not in known)
        if unknown:
            raise BlockMAEError(f"{data_dir / unknown[0]} is not one of the 16 categories ({', '.join(CATEGORIES)}); "
                                f"remove it or pass the dataset's folder itself")
        for category in sorted(p.name for p in data_dir.iterdir() if p.is_dir()):
            for path in _images(data_dir / category):
                texture = None
                if bare == "cue-conflict":
                    match = _CUE_CONFLICT_NAME.match(path.name)
                    if match is None or match.group(2) not in known:
                        raise BlockMAEError(f"{path} is not named <shapeN>-<textureM>.png with a texture among the "
                                            f"16 categories; rename or remove it")
                    texture = match.group(2)
                stimuli.append(Stimulus(path, path.name, category, NO_CONDITION, 1, texture))
    else:
        sessions = sorted((p for p in (data_dir / "dnn").iterdir() if p.is_dir() and p.name.startswith("session-")),
                          key=lambda p: p.name)
        for folder in sessions:
            number = folder.name[len("session-"):]
            if not number.isdigit():
                raise BlockMAEError(f"{folder}: session folders are named session-<N>; rename it")
            for path in _images(folder):
                fields = path.name.split("_")
                if len(fields) < 6 or fields[4] not in known:
                    raise BlockMAEError(f"{path} is not named <NNNN>_<abbr>_<subject>_<condition>_<category>_<xx>_"
                                        f"<name> with a category among the 16; rename or remove it")
                stimuli.append(Stimulus(path, path.name, fields[4], fields[3], int(number)))
    if not stimuli:
        raise BlockMAEError(f"no images of {bare} in {data_dir} (expected {layout(bare)})")
    return stimuli


def _condition_key(condition: str) -> tuple[int, float, str]:
    """Numeric levels in numeric order (contrast's c100 as 100), then the others by name."""
    try:
        return 0, float(condition.lstrip("c")), condition
    except ValueError:
        return 1, 0.0, condition


def conditions(names: Iterable[str]) -> list[str]:
    """Condition names, each once, numeric ones in numeric order first (the `condition` labels' index)."""
    return sorted(set(names), key=_condition_key)


def find_stimuli(name: str, root: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                 ) -> tuple[Path, Path, list[Stimulus]]:
    """(dataset folder, cache folder, stimuli) of dataset `name` under `root`, nothing decoded. `name` may
    also be one of OWN_DATASETS (see :func:`tiny_imagenet_stimuli`)."""
    if name == "tiny-imagenet":
        data_dir, cache_root = resolve_root(name, root, tiny_imagenet.find_data_dir, tiny_imagenet.LAYOUT, cache_dir)
        return data_dir, cache_root, tiny_imagenet_stimuli(data_dir)
    bare = dataset_name(name)
    data_dir, cache_root = resolve_root(PREFIX + bare, root, data_dir_finder(bare), layout(bare), cache_dir)
    return data_dir, cache_root, list_stimuli(bare, data_dir)


def tiny_imagenet_stimuli(data_dir: Path) -> list[Stimulus]:
    """Tiny-ImageNet's val images of the classes in the 16 categories (the shipped mapping: 26 classes in 11
    categories), category = their class's, one condition."""
    wnids = read_wnids(data_dir)
    category = {w: c for c, members in load_category_mapping().items() for w in members}
    stimuli = [Stimulus(path, path.name, category[wnids[label]], NO_CONDITION)
               for path, label in list_items(data_dir, "val", wnids) if wnids[label] in category]
    if not stimuli:
        raise BlockMAEError(f"none of the Tiny-ImageNet classes in {data_dir} belongs to one of the 16 categories")
    return stimuli


def load_stimuli(name: str, root: str | os.PathLike | None = None, image_size: int = 224, *,
                 cache_dir: str | os.PathLike | None = None, resize: str = "center-crop", workers: int = 0,
                 progress: bool = True) -> tuple["ImageTensorDataset", list[Stimulus]]:
    """Dataset `name` at `image_size` (decoded once into the uint8 cache) and its stimuli, index for index.

    `root`: a folder prepared by `blockmae data prepare mvh-<name>` (tiny-imagenet: `... tiny-imagenet`), or
    the dataset's own folder."""
    own = name in OWN_DATASETS
    bare = name if own else dataset_name(name)
    data_dir, cache_root, stimuli = find_stimuli(bare, root, cache_dir)
    index = {c: i for i, c in enumerate(CATEGORIES)}
    levels = {c: i for i, c in enumerate(conditions(s.condition for s in stimuli))}
    extra = {"condition": [levels[s.condition] for s in stimuli]}
    if bare == "cue-conflict":
        extra["texture"] = [index[s.texture] for s in stimuli if s.texture is not None]
    items = [(s.path, index[s.category]) for s in stimuli]
    folder = split_cache_dir(cache_root, "val", image_size, resize, "-16-categories") if own else \
        split_cache_dir(cache_root, "test", image_size, resize)
    dataset = cached_image_dataset(items, folder, image_size, list(CATEGORIES),
                                   name=f"{bare}-16-categories" if own else PREFIX + bare, source=data_dir,
                                   resize=resize,
                                   extra_labels=extra, workers=workers, progress=progress)
    return dataset, stimuli


def load_mvh(split: str = "test", root: str | os.PathLike | None = None, image_size: int = 224, *, variant: str,
             cache_dir: str | os.PathLike | None = None, resize: str = "center-crop", workers: int = 0,
             progress: bool = True) -> "ImageTensorDataset":
    """`load_dataset("mvh-<name>", "test", ...)`: the images of :func:`load_stimuli`."""
    if split not in SPLITS:
        raise BlockMAEError(f"{variant} has one split, test; not {split!r}")
    return load_stimuli(variant, root, image_size, cache_dir=cache_dir, resize=resize, workers=workers,
                        progress=progress)[0]
