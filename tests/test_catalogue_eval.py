"""The catalogue of bad input and faults for `blockmae probe`, `quickstart` and `data prepare` (issue 9):
each case is a command, its exit status, a fragment of its message, and a check that nothing good changed
(the files of the folder the case aims at keep their hashes; nothing is added beside them).

Errors must be one line (`blockmae: error: ...`, status 2), never a traceback.
"""

import argparse
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROBE = ["probe", "--config", str(ROOT / "configs" / "linear_probe.yaml"), "checkpoint=random",
         "encoder.preset=vit_nano", "data.num_images=100", "linear.epochs=1", "linear.warmup_epochs=0",
         "linear.batch_size=50", "data.cache_features=false", "device=cpu"]
QUICKSTART_TINY = ["pretrain.model.preset=vit_nano", "pretrain.data.num_images=128", "pretrain.train.epochs=1"]


def _blockmae(args, env_cache: Path, timeout=240):
    import os

    env = {**os.environ, "BLOCKMAE_CACHE_DIR": str(env_cache), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "blockmae", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)
    return proc.returncode, proc.stdout, proc.stderr


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def good(tmp_path_factory, shared_data):
    """Folders that no case may change: a probe run, a quickstart folder, a prepared Tiny-ImageNet root."""
    base = tmp_path_factory.mktemp("good")
    code, out, err = _blockmae([*PROBE, f"output_root={base / 'out'}", f"run_dir={base / 'probe'}"], base / "cache")
    assert code == 0, out + err

    from blockmae.quickstart import add_arguments, load_quickstart_config, prepare_output
    from blockmae.registry import Registry

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--out", str(base / "qs"), *QUICKSTART_TINY])
    prepare_output(base / "qs", load_quickstart_config(args))
    Registry(base / "qs")
    (base / "qs" / "quickstart_state.json").write_text('{"runs": {"pretrain-')  # cut short by a crash

    tin = shared_data / "tiny-imagenet-200-mini"
    code, out, err = _blockmae(["data", "prepare", "tiny-imagenet", "--root", str(base / "tin"), "--source", str(tin),
                                "--workers", "0"], base / "cache")
    assert code == 0, out + err
    return base


def _truncated_tiny_imagenet(tmp_path: Path, shared_data: Path, archive: bool) -> Path:
    """A copy of the mini set with one JPEG cut in half; zipped like the official archive if `archive`."""
    copy = tmp_path / "tiny-imagenet-200"
    shutil.copytree(shared_data / "tiny-imagenet-200-mini", copy)
    jpeg = sorted((copy / "val" / "images").glob("*.JPEG"))[3]
    jpeg.write_bytes(jpeg.read_bytes()[:200])
    if not archive:
        return copy
    return Path(shutil.make_archive(str(tmp_path / "tin"), "zip", tmp_path, "tiny-imagenet-200"))


def _probe_head_only(g: Path, t: Path, s: Path) -> list[str]:
    """A copy of the good probe with only its head (as if interrupted before results.json), probed with
    other weights (another encoder seed)."""
    shutil.copytree(g / "probe", t / "probe")
    (t / "probe" / "results.json").unlink()
    return [*PROBE, f"output_root={t / 'out'}", f"run_dir={t / 'probe'}", "encoder.seed=7"]


def _file(t: Path) -> Path:
    (t / "file").write_text("not a folder")
    return t / "file"


# id, target (the good folder the case must not change, or a tmp_path one), args (good, tmp_path, shared
# data), exit status, message fragment
CASES = [
    ("probe-run-dir-holds-another-probe", "probe",
     lambda g, t, s: [*PROBE, f"output_root={g / 'out'}", f"run_dir={g / 'probe'}", "linear.epochs=2"], 2,
     "probe already holds another probe's results (linear.epochs 1 -> 2); use another run_dir"),
    ("probe-run-dir-holds-another-probe-checkpoint", "probe",
     lambda g, t, s: [*PROBE, f"output_root={g / 'out'}", f"run_dir={g / 'probe'}", "encoder.preset=vit_micro"], 2,
     "encoder.preset vit_nano -> vit_micro"),
    ("probe-run-dir-holds-another-head", "tmp:probe", _probe_head_only, 2,
     "already holds another probe's head (head.safetensors)"),
    ("quickstart-truncated-state", "qs",
     lambda g, t, s: ["quickstart", "--out", str(g / "qs"), *QUICKSTART_TINY], 2,
     "quickstart_state.json is unreadable (truncated or damaged); delete it"),
    ("quickstart-out-is-a-file", "tmp:", lambda g, t, s: ["quickstart", "--out", str(_file(t)), *QUICKSTART_TINY], 2,
     "file: a file is in the way (a folder is needed)"),
    ("quickstart-out-under-a-file", "tmp:",
     lambda g, t, s: ["quickstart", "--out", str(_file(t) / "qs"), *QUICKSTART_TINY], 2, "a file is in the way"),
    ("prepare-truncated-jpeg-folder", "tin",
     lambda g, t, s: ["data", "prepare", "tiny-imagenet", "--root", str(g / "tin"), "--workers", "0",
                      "--source", str(_truncated_tiny_imagenet(t, s, archive=False))], 2,
     "Truncated File Read; replace or delete the file and rerun"),
    ("prepare-truncated-jpeg-archive", "tin",
     lambda g, t, s: ["data", "prepare", "tiny-imagenet", "--root", str(g / "tin"), "--workers", "0",
                      "--source", str(_truncated_tiny_imagenet(t, s, archive=True))], 2,
     "tin.zip is refused and nothing of it was kept in"),
    ("prepare-archive-without-the-dataset", "tin",
     lambda g, t, s: ["data", "prepare", "tiny-imagenet", "--root", str(g / "tin"), "--workers", "0", "--source",
                      shutil.make_archive(str(t / "other"), "zip", s / "dtd-mini")], 2, "does not contain tiny-imagenet"),
]


@pytest.mark.parametrize("case_id, target, make_args, status, fragment", CASES, ids=[c[0] for c in CASES])
def test_catalogue(good, tmp_path, shared_data, case_id, target, make_args, status, fragment):
    args = make_args(good, tmp_path, shared_data)
    folder = tmp_path / target[4:] if target.startswith("tmp:") else good / target
    before = _snapshot(folder)
    code, out, err = _blockmae(args, good / "cache")
    assert code == status, out + err
    assert fragment in err
    assert "Traceback" not in err
    errors = [line for line in err.strip().splitlines() if line.startswith("blockmae: error: ")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err  # notes before it are allowed
    assert _snapshot(folder) == before


def test_prepared_root_still_loads_after_a_refused_source(good, tmp_path, shared_data):
    """After the refusals above (or on their own), the good root still reads the good data."""
    code, _, err = _blockmae(["data", "prepare", "tiny-imagenet", "--root", str(good / "tin"), "--workers", "0",
                              "--source", str(_truncated_tiny_imagenet(tmp_path, shared_data, archive=True))],
                             good / "cache")
    assert code == 2, err
    from blockmae.data import load_dataset

    val = load_dataset("tiny-imagenet", "val", root=good / "tin")
    assert len(val) == 100 and val.num_classes == 10
