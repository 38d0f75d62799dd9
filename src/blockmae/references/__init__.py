"""Reference encoders shipped with the package: trained MAEs (encoder + decoder, float16) with what made them.

Each reference is a folder ``resources/references/<id>/`` (id ``quickstart-block{b}-s{seed}``) holding
``model.safetensors`` (written by ``blockmae.models.io.save_mae``, so
``blockmae.models.factory.load_encoder`` takes its path as is and loads it into the float32 model),
``metrics.jsonl`` (the training run's, verbatim) and ``manifest.json``: checksums, the run's full config,
the command that trained it, versions, device, images seen, final loss, wall time and, when it was
measured, the evaluation. ``package_reference`` builds a folder from a finished pretraining run dir;
``verify_reference`` checks one against its manifest. The commands are ``blockmae weights list | verify |
package`` (blockmae.references.cli).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from blockmae.errors import BlockMAEError
from blockmae.fileio import replace_dir, sha256_file, write_text_atomic, writing
from blockmae.masking import block_spec, canonical_mask

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


# ---------------------------------------------------------------------------------------------
# Reading


def _plain_file_name(value: Any) -> bool:
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
        if not _plain_file_name(entry["file"]):
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


def loss_curve(ref: Reference) -> tuple[list[int], list[float]]:
    """(images seen, loss) at every logged optimiser step of the reference's training run.

    Images seen = step x train.batch_size: the engine's batch_size is the global batch of one optimiser
    step (per-rank batch x ranks x accum_steps), so it is not multiplied by the world size again."""
    from blockmae.engine.logs import loss_curve as curve_of

    return curve_of(_metrics_rows(ref.metrics_path), int(ref.manifest["config"]["train"]["batch_size"]))


def monitor_curve(ref: Reference, key: str = "linear_top1_shape_only") -> tuple[list[int], list[float]]:
    """(images seen, value) of one online-monitor metric of the reference's training run (empty when the run
    was not monitored): its learning curve, e.g. shape-only accuracy against images seen."""
    rows = [r for r in _metrics_rows(ref.metrics_path) if r.get("kind") == "monitor" and key in r]
    return [int(r["images_seen"]) for r in rows], [float(r[key]) for r in rows]


def _metrics_rows(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        rows = [json.loads(line) for line in lines if line.strip()]
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise BlockMAEError(f"{path} is unreadable ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    if not all(isinstance(r, dict) for r in rows):
        raise BlockMAEError(f"{path}: every line must be a JSON object")
    return rows


# ---------------------------------------------------------------------------------------------
# Verifying


def _pretrain_config(config: dict[str, Any]) -> Any:
    """The manifest's config as the engine's PretrainConfig (checked by OmegaConf against the schema)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from blockmae.engine.config import PretrainConfig

    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(PretrainConfig), config))
    except OmegaConfBaseException as err:
        raise BlockMAEError(f"not a pretraining config ({str(err).splitlines()[0]})") from None


def expected_arch(config: dict[str, Any]) -> dict[str, Any]:
    """The architecture (models.mae arch keys) that a pretraining run of `config` builds."""
    from blockmae.models import PRESETS

    cfg = _pretrain_config(config)
    if cfg.model.preset not in PRESETS:
        raise BlockMAEError(f"unknown model.preset {cfg.model.preset!r}")
    overrides = {k: v for k, v in cfg.model_kwargs().items() if v is not None}  # None: the preset's value
    return {**PRESETS[cfg.model.preset], **overrides}


def weights_arch(ref: Reference) -> dict[str, Any]:
    """The architecture recorded in the reference's weights file (what models.factory.load_encoder builds)."""
    header, _ = _weights_header(ref.weights_path)
    if "arch" not in header:
        raise BlockMAEError(f"{ref.weights_path} has no blockmae architecture in its header")
    return dict(json.loads(header["arch"]))


def _weights_header(path: Path) -> tuple[dict[str, str], set[str]]:
    """(safetensors header metadata, the tensors' dtypes) without reading the tensors."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {}), {handle.get_slice(k).get_dtype() for k in handle.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise BlockMAEError(f"not a readable safetensors file ({str(err).splitlines()[0]})") from None


def _architecture_problems(ref: Reference) -> list[str]:
    from blockmae.models.io import FORMAT

    try:
        header, dtypes = _weights_header(ref.weights_path)
    except BlockMAEError as err:
        return [f"{ref.weights_path.name}: {err}"]
    problems = []
    if dtypes != {"F16"}:
        problems.append(f"{ref.weights_path.name}: tensors are {', '.join(sorted(dtypes)) or 'absent'}, "
                        f"not {WEIGHTS_DTYPE} (F16) only")
    if header.get("format") != FORMAT or "arch" not in header:
        return problems + [f"{ref.weights_path.name}: no blockmae architecture in its header (not written by save_mae)"]
    try:
        arch = json.loads(header["arch"])
        expected = expected_arch(ref.manifest["config"])
    except ValueError:
        return problems + [f"{ref.weights_path.name}: the header's architecture is not valid JSON"]
    except BlockMAEError as err:
        return problems + [f"the manifest's config: {err}"]
    for key, value in expected.items():
        if arch.get(key) != value:
            problems.append(f"{ref.weights_path.name}: architecture has {key}={arch.get(key)!r} but the manifest's "
                            f"config gives {value!r}")
    return problems


def _identity_problems(ref: Reference) -> list[str]:
    """The manifest's block and seed agree with its config (and its id with both)."""
    config = ref.manifest["config"]
    mask, run = config.get("mask", {}), config.get("run", {})
    problems = []
    try:
        family, block = canonical_mask(mask.get("family"), int(mask.get("block")))
    except (TypeError, ValueError):
        return ["the manifest's config has no mask.family and mask.block"]
    if family not in ("random", "block") or block != ref.block:
        problems.append(f"manifest block {ref.block} disagrees with the config's mask ({family}, block {block})")
    if run.get("seed") != ref.seed:
        problems.append(f"manifest seed {ref.seed} disagrees with the config's run.seed {run.get('seed')}")
    if ref.id != reference_id(ref.block, ref.seed):
        problems.append(f"id {ref.id!r} is not {reference_id(ref.block, ref.seed)!r} (block {ref.block}, seed {ref.seed})")
    return problems


def verify_reference(ref: Reference) -> list[str]:
    """What is wrong with `ref` (an empty list: nothing): missing files, checksums or sizes that differ from
    the manifest, weights whose architecture or dtype disagree with it."""
    problems = []
    weights, metrics = ref.manifest["weights"], ref.manifest["metrics_file"]
    if weights.get("dtype") != WEIGHTS_DTYPE:
        problems.append(f"manifest weights.dtype is {weights.get('dtype')!r}, not {WEIGHTS_DTYPE!r}")
    problems += _identity_problems(ref)
    if not ref.weights_path.is_file():
        problems.append(f"{ref.weights_path.name} is missing")
    else:
        size = ref.weights_path.stat().st_size
        if size != weights["bytes"]:
            problems.append(f"{ref.weights_path.name} has {size} bytes, the manifest says {weights['bytes']}")
        if sha256_file(ref.weights_path) != weights["sha256"]:
            problems.append(f"{ref.weights_path.name}: sha256 mismatch with the manifest (damaged or replaced)")
        problems += _architecture_problems(ref)
    if not ref.metrics_path.is_file():
        problems.append(f"{ref.metrics_path.name} is missing")
    elif sha256_file(ref.metrics_path) != metrics["sha256"]:
        problems.append(f"{ref.metrics_path.name}: sha256 mismatch with the manifest (damaged or replaced)")
    else:
        problems += _claim_problems(ref)
    return problems


def config_sha256(config: dict[str, Any]) -> str:
    """The manifest's claim about its config: sha256 of its canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _claim_problems(ref: Reference) -> list[str]:
    """The manifest's numbers that metrics.jsonl (checksummed), the weights and the config can recompute:
    final loss, epochs, steps, images seen, parameters, the config's hash. (Its evaluation would need the
    probe rerun.)"""
    try:
        epochs = [r for r in _metrics_rows(ref.metrics_path) if r.get("kind") == "epoch"]
    except BlockMAEError as err:
        return [str(err)]
    if not epochs:
        return [f"{ref.metrics_path.name} has no epoch rows to check the manifest's numbers against"]
    last, m = epochs[-1], ref.manifest
    problems = []
    if m.get("final_loss") is not None and not math.isclose(float(m["final_loss"]), float(last.get("loss", "nan")),
                                                             rel_tol=1e-9):
        problems.append(f"manifest final_loss {m['final_loss']} is not the last epoch's loss in "
                        f"{ref.metrics_path.name} ({last.get('loss')})")
    if m.get("epochs") is not None and m["epochs"] != last.get("epoch"):
        problems.append(f"manifest epochs {m['epochs']} is not the last epoch in {ref.metrics_path.name} "
                        f"({last.get('epoch')})")
    if m.get("steps") is not None and m["steps"] != last.get("step"):
        problems.append(f"manifest steps {m['steps']} is not the last step in {ref.metrics_path.name} "
                        f"({last.get('step')})")
    try:
        images = int(last["step"]) * int(m["config"]["train"]["batch_size"])
    except (KeyError, TypeError, ValueError):
        images = None
    if m.get("images_seen") is not None and images is not None and m["images_seen"] != images:
        problems.append(f"manifest images_seen {m['images_seen']} is not steps x train.batch_size = {images} "
                        f"(from {ref.metrics_path.name})")
    claimed = m["weights"].get("parameters")
    if claimed is not None and ref.weights_path.is_file():
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(ref.weights_path), framework="pt") as handle:
                counted = sum(math.prod(handle.get_slice(k).get_shape()) for k in handle.keys())
        except (SafetensorError, OSError, ValueError):
            counted = claimed  # an unreadable file is reported by the architecture check
        if counted != claimed:
            problems.append(f"manifest weights.parameters {claimed:,} is not the {counted:,} values in "
                            f"{ref.weights_path.name}")
    if m.get("config_sha256") is not None and m["config_sha256"] != config_sha256(m["config"]):
        problems.append("manifest config_sha256 does not match its config (the config was edited)")
    return problems


# ---------------------------------------------------------------------------------------------
# Packaging


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise BlockMAEError(f"{path} is unreadable ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise BlockMAEError(f"{path} is not a JSON object")
    return data


def _finished_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any]]:
    """checkpoints/last of a complete, intact run (looked at only: the run dir is not repaired or changed)."""
    from blockmae.engine import checkpoint as ckpt

    last = ckpt.checkpoints_dir(run_dir) / "last"
    problem = ckpt.checkpoint_problem(last)
    if problem:
        raise BlockMAEError(f"{last}: {problem}; package a finished pretraining run dir")
    meta = ckpt.read_meta(last)
    if not meta.get("complete"):
        raise BlockMAEError(f"the run in {run_dir} is not finished (epoch {meta.get('epoch')} of "
                            f"{meta.get('config', {}).get('train', {}).get('epochs')}); finish it first")
    return last, meta


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _device_record(env: dict[str, Any]) -> dict[str, Any]:
    device = {**env.get("device", {}), "precision": env.get("precision"), "world_size": env.get("world_size")}
    # /proc/cpuinfo describes the machine packaging now: it is the training CPU only on the training host.
    if device.get("type") == "cpu" and env.get("host") == socket.gethostname():
        model = _cpu_model()
        if model:
            device["cpu_model"] = model
            device["cpu_model_source"] = "/proc/cpuinfo of the training host, read when packaging"
    return device


def _wall_time(epochs: list[dict[str, Any]], record: dict[str, Any] | None) -> tuple[float | None, str]:
    times = [r.get("epoch_time_s") for r in epochs]
    if epochs and all(isinstance(t, (int, float)) for t in times):
        return float(sum(times)), (f"sum of epoch_time_s over the {len(epochs)} epoch rows of metrics.jsonl: the "
                                   "training loop only (no start-up, data generation or checkpoint writing)")
    row = (record or {}).get("row", {})
    if isinstance(row.get("started_at"), (int, float)) and isinstance(row.get("ended_at"), (int, float)):
        return float(row["ended_at"] - row["started_at"]), "run_record.json started_at -> ended_at (whole run)"
    return None, "unknown: metrics.jsonl has no epoch_time_s and there is no run_record.json"


def _check_identity(config: Any, block: int | None, seed: int | None, run_dir: Path) -> tuple[int, int]:
    family, run_block = canonical_mask(config.mask.family, config.mask.block)
    if family not in ("random", "block"):
        raise BlockMAEError(f"the run in {run_dir} masks with mask.family={config.mask.family}; reference encoders "
                            f"are random (1x1) or square-block masking")
    if block is not None and block != run_block:
        raise BlockMAEError(f"--block {block} but the run in {run_dir} was trained with {family} masking, "
                            f"block {run_block}")
    if seed is not None and seed != config.run.seed:
        raise BlockMAEError(f"--seed {seed} but the run in {run_dir} has run.seed={config.run.seed}")
    return run_block, config.run.seed


def write_half_precision(checkpoint: Path, path: Path, metadata: dict[str, Any]) -> int:
    """The checkpoint's MAE in float16 at `path` (save_mae); returns its parameter count."""
    import torch

    from blockmae.models.factory import load_encoder
    from blockmae.models.io import save_mae

    model = load_encoder(checkpoint).mae
    model = model.to(torch.float16)
    if not all(torch.isfinite(t).all() for t in model.state_dict().values()):
        raise BlockMAEError(f"{checkpoint}: a weight does not fit in float16 (overflow); this run cannot be shipped "
                            f"as a float16 reference")
    save_mae(model, path, metadata=metadata)
    sort_header_metadata(path)
    return sum(p.numel() for p in model.parameters())


def sort_header_metadata(path: Path) -> None:
    """Rewrite a safetensors file's header with its metadata keys sorted, in place and at the same length.

    safetensors writes the metadata in hash-map order, which changes from one process to the next, so the
    same weights would get another sha256 at each packaging; sorted, the bytes depend on the weights only."""
    with open(path, "r+b") as fh:
        size = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(size))
        metadata = header.get("__metadata__")
        if not metadata:
            return
        header["__metadata__"] = dict(sorted(metadata.items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > size:  # a reordering keeps the length; anything else leaves the file as written
            return
        fh.seek(8)
        fh.write(text.ljust(size, b" "))  # safetensors pads its header with spaces


def package_reference(
    run_dir: str | Path, out_root: str | Path, ref_id: str, command: str, evaluation: dict[str, Any] | None = None,
    *, package_command: list[str] | None = None, block: int | None = None, seed: int | None = None,
    evaluate: Callable[[Path], dict[str, Any]] | None = None,
) -> Reference:
    """Build `out_root/ref_id/` from the finished pretraining run in `run_dir`.

    `command` is the command that trained the run; `block`/`seed`, when given, must match its config.
    `evaluate(weights_path)`, when given, is called on the float16 weights before the manifest is written
    and its result is stored as `evaluation` (in place of the dict passed). The folder is built beside its
    target under a hidden name, manifest last, then renamed into place: an earlier reference of that id
    stays whole until the new one is complete."""
    from blockmae.config import load_config, to_dict
    from blockmae.engine.config import PretrainConfig

    run_dir, out_root = Path(run_dir), Path(out_root)
    if not _plain_file_name(ref_id) or ref_id.startswith("."):
        raise BlockMAEError(f"reference id {ref_id!r} must be a plain folder name")
    missing = [name for name in REQUIRED_FILES if not (run_dir / name).is_file()]
    if missing:
        raise BlockMAEError(f"{run_dir} is not a pretraining run dir: {', '.join(missing)} missing")
    config = load_config(PretrainConfig, run_dir / "config.yaml")
    run_block, run_seed = _check_identity(config, block, seed, run_dir)
    last, meta = _finished_checkpoint(run_dir)
    env = _read_json(run_dir / "env.json")
    rows = _metrics_rows(run_dir / METRICS_NAME)
    epochs = [r for r in rows if r.get("kind") == "epoch"]
    steps = [r for r in rows if r.get("kind") == "step"]
    if not epochs:
        raise BlockMAEError(f"{run_dir / METRICS_NAME} has no epoch rows; is the run finished?")
    record_path = run_dir / "run_record.json"
    record = _read_json(record_path) if record_path.is_file() else None
    wall_time, wall_note = _wall_time(epochs, record)
    batch = config.train.batch_size
    images_seen = meta.get("images_seen", steps[-1]["step"] * batch if steps else None)
    packages = env.get("packages", {})

    target = out_root / ref_id
    # Hidden (list_references passes over it) and per process (two packagings of one id do not mix).
    staging = out_root / f".{ref_id}.staging-{os.getpid()}"
    try:
        with writing(target):
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            weights_file = staging / WEIGHTS_NAME
            parameters = write_half_precision(last, weights_file, {"reference": ref_id, "epoch": meta.get("epoch"),
                                                                   "step": meta.get("step")})
            shutil.copyfile(run_dir / METRICS_NAME, staging / METRICS_NAME)
        if evaluate is not None:
            evaluation = evaluate(weights_file)
        manifest = {
            "schema": SCHEMA,
            "id": ref_id,
            "block": run_block,
            "seed": run_seed,
            "mask": {"family": config.mask.family, "block": config.mask.block, "ratio": config.mask.ratio,
                     "align": config.mask.align},
            "weights": {"file": WEIGHTS_NAME, "sha256": sha256_file(weights_file),
                        "bytes": weights_file.stat().st_size, "dtype": WEIGHTS_DTYPE, "parameters": parameters},
            "metrics_file": {"file": METRICS_NAME, "sha256": sha256_file(staging / METRICS_NAME)},
            "config": to_dict(config),
            "config_sha256": config_sha256(to_dict(config)),
            "command": command,
            "env_command": env.get("command"),
            "package_command": package_command,
            "git_commit": env.get("git_commit"),
            "versions": {"python": env.get("python"),
                         **{name: packages.get(name) for name in ("torch", "torchvision", "timm", "blockmae")}},
            "device": _device_record(env),
            "trained_on": env.get("device", {}).get("type"),
            "run_id": (record or {}).get("row", {}).get("id"),
            "images_seen": images_seen,
            "images_seen_note": "optimiser steps x train.batch_size (the global batch), from checkpoints/last/meta.json",
            "steps": meta.get("step"),
            "epochs": meta.get("epoch"),
            "final_loss": epochs[-1]["loss"],
            "final_loss_note": "mean training loss of the last epoch (its epoch row in metrics.jsonl)",
            "wall_time_s": wall_time,
            "wall_time_note": wall_note,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "trained_at": env.get("started_at"),
            "resumes": len(env.get("resumes", [])),  # env.json's device and command are of the first start
            "evaluation": evaluation,
        }
        if evaluation is not None and not isinstance(evaluation, dict):
            raise BlockMAEError(f"the evaluation must be a mapping of results, got {type(evaluation).__name__}")
        try:
            text = json.dumps(manifest, indent=2)
        except (TypeError, ValueError) as err:
            raise BlockMAEError(f"the manifest of {ref_id} is not JSON-serialisable ({err})") from None
        with writing(target):
            write_text_atomic(staging / MANIFEST_NAME, text + "\n")  # last: a folder with a manifest is complete
            replace_dir(staging, target, out_root / f".{ref_id}.old")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return load_reference(target)
