"""The reference store: the folders of reference encoders (``resources/references/<id>/``, or
$BLOCKMAE_REFERENCES), their manifests, listing, finding and reading them. Light on purpose: `blockmae
weights list` and the quickstart's lookups load neither the engine nor the models (blockmae.references.verify
checks a reference against its manifest; blockmae.references.package builds one).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blockmae.errors import BlockMAEError
from blockmae.masking import block_spec

REFERENCES_DIR: Path = Path(__file__).resolve().parent.parent / "resources" / "references"
ROOT_ENV = "BLOCKMAE_REFERENCES"  # another folder of references (your own, or a test's) instead of the shipped ones


def references_root() -> Path:
    """Where the references are read from: $BLOCKMAE_REFERENCES when set, else the package's own folder."""
    return Path(os.environ[ROOT_ENV]) if os.environ.get(ROOT_ENV) else REFERENCES_DIR


SCHEMA = 1
MANIFEST_NAME = "manifest.json"
WEIGHTS_NAME = "model.safetensors"
METRICS_NAME = "metrics.jsonl"
WEIGHTS_DTYPE = "float16"
REQUIRED_FILES = ("config.yaml", "env.json", METRICS_NAME)


def reference_id(block: int, seed: int) -> str:
    return f"quickstart-block{block}-s{seed}"


def block_label(block: int) -> str:
    """'1x1 (MAE)', '2x2 blocks' ...: the quickstart's arm names, so tables and figures agree."""
    return block_spec(block).arm_name


@dataclass
class Reference:
    """One shipped (or packaged) reference encoder: its folder and its manifest."""

    id: str
    path: Path
    manifest: dict[str, Any]

    @property
    def weights_path(self) -> Path:
        return self.path / self.manifest["weights"]["file"]

    @property
    def metrics_path(self) -> Path:
        return self.path / self.manifest["metrics_file"]["file"]

    @property
    def block(self) -> int:
        return int(self.manifest["block"])

    @property
    def seed(self) -> int:
        return int(self.manifest["seed"])

    @property
    def label(self) -> str:
        return block_label(self.block)

    @property
    def images_seen(self) -> int | None:
        value = self.manifest.get("images_seen")
        return None if value is None else int(value)

    @property
    def final_loss(self) -> float | None:
        value = self.manifest.get("final_loss")
        return None if value is None else float(value)


def plain_file_name(value: Any) -> bool:
    """A file name inside the folder (a manifest may not point outside its reference)."""
    return isinstance(value, str) and bool(value) and value == Path(value).name and value not in (".", "..")


def _manifest_problem(manifest: Any, folder: Path) -> str | None:
    if not isinstance(manifest, dict):
        return "is not a JSON object"
    schema = manifest.get("schema")
    if schema != SCHEMA:
        newer = isinstance(schema, int) and schema > SCHEMA
        return (f"has schema {schema!r}, this blockmae reads schema {SCHEMA}"
                f"{' (written by a newer blockmae: upgrade it)' if newer else ''}")
    if manifest.get("id") != folder.name:
        return f"names id {manifest.get('id')!r}, not its folder's name {folder.name!r}"
    for key in ("block", "seed"):
        if not isinstance(manifest.get(key), int) or isinstance(manifest.get(key), bool):
            return f"has no integer {key!r}"
    for key, fields in (("weights", ("file", "sha256", "bytes")), ("metrics_file", ("file", "sha256"))):
        entry = manifest.get(key)
        if not isinstance(entry, dict) or any(f not in entry for f in fields):
            return f"has no {key!r} entry with {', '.join(fields)}"
        if not plain_file_name(entry["file"]):
            return f"{key}.file {entry['file']!r} is not a file name inside the folder"
    if not isinstance(manifest.get("config"), dict):
        return "has no 'config' mapping (the training run's config)"
    return None


def load_reference(folder: str | Path) -> Reference:
    """The reference in `folder`; BlockMAEError naming it when its manifest is missing, unreadable or malformed."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BlockMAEError(f"reference folder {folder} has no {MANIFEST_NAME}; package it with "
                            f"`blockmae weights package` or remove the folder") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise BlockMAEError(f"{path} is unreadable ({type(err).__name__}: {str(err).splitlines()[0]}); "
                            f"package the reference again with `blockmae weights package`") from None
    problem = _manifest_problem(manifest, folder)
    if problem:
        raise BlockMAEError(f"{path} {problem}; package the reference again with `blockmae weights package`")
    return Reference(folder.name, folder, manifest)


def reference_folders(root: str | Path | None = None) -> list[Path]:
    """The reference folders under `root` (default: references_root(); hidden ones, such as a packaging in
    progress, are not)."""
    root = Path(root) if root is not None else references_root()
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_references(root: str | Path | None = None) -> list[Reference]:
    """Every reference under `root`, sorted by (block, seed); none when `root` does not exist."""
    refs = [load_reference(folder) for folder in reference_folders(root)]
    return sorted(refs, key=lambda r: (r.block, r.seed, r.id))


def find_reference(block: int, seed: int = 0, root: str | Path | None = None) -> Reference:
    """The reference pretrained with `block` x `block` masking (1: random masking) and `seed`."""
    refs = list_references(root)
    for ref in refs:
        if ref.block == block and ref.seed == seed:
            return ref
    have = ", ".join(f"{r.id} (block {r.block}, seed {r.seed})" for r in refs) or "none"
    raise BlockMAEError(f"no reference encoder with block {block} and seed {seed} in "
                        f"{root if root is not None else references_root()}; available: {have}")


def monitor_curve(ref: Reference, key: str = "linear_top1_shape_only") -> tuple[list[int], list[float]]:
    """(images seen, value) of one online-monitor metric of the reference's training run (empty when the run
    was not monitored): its learning curve, e.g. shape-only accuracy against images seen."""
    rows = [r for r in metrics_rows(ref.metrics_path) if r.get("kind") == "monitor" and key in r]
    return [int(r["images_seen"]) for r in rows], [float(r[key]) for r in rows]


def metrics_rows(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a metrics.jsonl, one per line; BlockMAEError naming the file when one is not."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        rows = [json.loads(line) for line in lines if line.strip()]
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise BlockMAEError(f"{path} is unreadable ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    if not all(isinstance(r, dict) for r in rows):
        raise BlockMAEError(f"{path}: every line must be a JSON object")
    return rows


def config_sha256(config: dict[str, Any]) -> str:
    """The manifest's claim about its config: sha256 of its canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
