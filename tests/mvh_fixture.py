"""Small archives of model-vs-human datasets in its published layout (``<name>.tar.gz`` -> ``<name>/...``)."""

from __future__ import annotations

import io
import tarfile

import numpy as np
from PIL import Image

from blockmae.data.cue_conflict import CATEGORIES

ABBREVIATIONS = {"colour": "cl", "contrast": "co", "low-pass": "lp", "sketch": "ske", "stylized": "sty"}


def png_bytes(seed: int, size: int = 32) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def stimulus_names(name: str, conditions: tuple[str, ...] = ("0",), per_category: int = 1) -> list[tuple[str, str, str]]:
    """(path inside the archive, category, condition) of every image, in model-vs-human's naming."""
    names = []
    if name in ("edge", "silhouette"):
        for c in CATEGORIES:
            names += [(f"{name}/{c}/{c}{k}.png", c, "NaN") for k in range(1, per_category + 1)]
    elif name == "cue-conflict":
        for i, c in enumerate(CATEGORIES):
            texture = CATEGORIES[(i + 1) % len(CATEGORIES)]
            names += [(f"{name}/{c}/{c}{k}-{texture}{k}.png", c, "NaN") for k in range(1, per_category + 1)]
        names.append((f"{name}/cat/cat9-cat3.png", "cat", "NaN"))  # shape and texture agree
    else:
        abbr = ABBREVIATIONS.get(name, "xx")
        trial = 0
        for condition in conditions:
            for c in CATEGORIES:
                for k in range(per_category):
                    trial += 1
                    names.append((f"{name}/dnn/session-1/{trial:04d}_{abbr}_dnn_{condition}_{c}_00_{c}-{k:04d}-"
                                  f"n01234567_{trial}.png", c, condition))
    return names


def mvh_archive(name: str, conditions: tuple[str, ...] = ("0",), per_category: int = 1) -> bytes:
    """`<name>.tar.gz` as model-vs-human publishes it (random 32-px PNGs)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for seed, (path, _, _) in enumerate(stimulus_names(name, conditions, per_category)):
            data = png_bytes(seed)
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
