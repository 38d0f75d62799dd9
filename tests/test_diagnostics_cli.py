"""End-to-end: a smoke checkpoint through each eval/*.py diagnostic script; files, registry rows, errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from blockmae.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["data.num_images=256", "train.batch_size=32", "train.cpu_threads=1", "run.recon_images=0",
         "run.milestones=[]"]
# A quick probe (trained by the first diagnostic, reused by the others) and few evaluation images.
QUICK = ["--probe-set", "linear.epochs=3", "--probe-set", "linear.warmup_epochs=1", "--probe-set",
         "data.num_images=200", "--num-images", "60", "--batch-size", "64", "--device", "cpu"]


# Several subprocesses, each importing torch and timm: about a minute in all on an idle 2-core machine.
pytestmark = pytest.mark.slow


def _run(*args, cwd=ROOT):
    # One thread: tiny models and batches, where more threads only add synchronisation on a shared CPU.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """A configs/smoke.yaml pretraining run (smaller) with its registry in `outputs`."""
    base = tmp_path_factory.mktemp("diag")
    run_dir, outputs = base / "smoke", base / "outputs"
    proc = _run("-m", "blockmae", "pretrain", "--config", "configs/smoke.yaml", *SMALL, f"run.dir={run_dir}",
                f"run.output_root={outputs}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pretrain_id = Registry(outputs).list_runs(kind="pretrain")[0].id
    smoke = run_dir, outputs, pretrain_id
    out, _, results = _diagnose("lowpass", smoke, "--curves", "fourier", "--radii", "inf", "0.5")
    assert "probe trained" in out and results["probe"]["origin"] == "trained"
    return smoke


def _diagnose(script, smoke, *extra):
    run_dir, outputs, _ = smoke
    proc = _run(f"eval/{script}.py", "--checkpoint", str(run_dir), "--output-root", str(outputs), *QUICK, *extra)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = [x for x in proc.stdout.splitlines() if x.startswith("run: ")][-1]
    return proc.stdout, Path(line.split()[1]), json.loads((Path(line.split()[1]) / "results.json").read_text())


def _check_common(results, run_path, smoke, kind):
    _, outputs, pretrain_id = smoke
    assert results["diagnostic"] == kind and results["encoder"]["parent"] == pretrain_id
    assert results["probe"]["run_id"] and results["settings"]["weights_hash"]
    for figure in results["figures"]:
        png = run_path / figure
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.with_suffix(".csv").read_text().count("\n") >= 2  # header + at least one row
    rows = Registry(outputs).list_runs(kind=kind)
    assert rows and rows[-1].id == results["run_id"] and rows[-1].status == "completed"
    assert rows[-1].parent == pretrain_id and set(rows[-1].metrics) == set(results["summary"])


def test_lowpass_script_writes_curves_auc_figures_and_a_registry_row(smoke):
    out, run_path, results = _diagnose("lowpass", smoke)
    assert "probe reused" in out  # the fixture's run trained it: same weights hash, same settings
    levels = results["levels"]
    assert set(levels) == {"colour", "greyscale", "fourier"}
    grey = levels["greyscale"]
    # sigma 1 (at 224 px) scales to 0.14 px at 32 px, a delta kernel: left out, with a note
    assert [r["sigma_224"] for r in grey] == [0, 3, 5, 7, 10, 15, 40]
    assert any(note.startswith("sigma 1 (at 224 px) dropped") for note in results["settings"]["dropped_levels"])
    assert "note: sigma 1 (at 224 px) dropped" in out
    assert grey[-1]["level"] == pytest.approx(40 * 32 / 224)  # scaled to the 32 px input
    assert all(r["n"] == 60 and r["top1_low"] <= r["top1"] <= r["top1_high"] for r in grey)
    for curve in levels:
        summary = results["summary"]
        assert 0 <= summary[f"{curve}_auc_low"] <= summary[f"{curve}_auc"] <= summary[f"{curve}_auc_high"] <= 1
    assert summary["human_auc_normalised_low"] < summary["human_auc_normalised"] < summary["human_auc_normalised_high"]
    assert "human_auc_normalised" in results["summary"]
    assert set(results["figures"]) == {"figures/lowpass_gaussian.png", "figures/lowpass_fourier.png",
                                       "figures/lowpass_vs_human.png"}
    human = (run_path / "figures" / "lowpass_vs_human.csv").read_text()
    assert "0.920312" in human and "model-vs-human" in human
    _check_common(results, run_path, smoke, "lowpass")
    listed = _run("-m", "blockmae", "runs", "--root", str(smoke[1]), "--kind", "lowpass")
    assert listed.returncode == 0 and results["run_id"] in listed.stdout and smoke[2] in listed.stdout


def test_highpass_reuses_the_probe_and_starts_unfiltered(smoke):
    out, run_path, results = _diagnose("highpass", smoke, "--curves", "greyscale", "fourier")
    assert "probe reused" in out
    assert results["levels"]["greyscale"][0]["sigma_224"] == float("inf")
    assert results["levels"]["fourier"][0]["radius_nyquist"] == 0.0
    # at 32 px only sigma 3 of model-vs-human's high-pass levels filters anything; radius 0.05 keeps what 0 keeps
    assert [r["sigma_224"] for r in results["levels"]["greyscale"]] == [float("inf"), 3]
    assert 0.05 not in [r["radius_nyquist"] for r in results["levels"]["fourier"]]
    _check_common(results, run_path, smoke, "highpass")


def test_a_level_that_filters_nothing_is_refused_when_asked_for(smoke):
    run_dir, outputs, _ = smoke
    proc = _run("eval/lowpass.py", "--checkpoint", str(run_dir), "--output-root", str(outputs), *QUICK,
                "--curves", "greyscale", "--sigmas", "0", "1", "5")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--sigmas 1: at 32 px" in proc.stderr and "use sigmas >= 2.6" in proc.stderr


def test_stylized_built_in_and_from_a_folder(smoke, tmp_path):
    from PIL import Image

    from blockmae.data import load_dataset

    val = load_dataset("shapetex", "val", num_images=40, seed=7)
    folder = tmp_path / "stylized" / "val"
    for i, (image, label) in enumerate(zip(val.images, val.labels)):
        (folder / val.class_names[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).resize((48, 48)).save(folder / val.class_names[label] / f"{i}.png")
    (folder / "n99999999").mkdir()  # a class the probe does not have: left out
    Image.fromarray(val.images[0].permute(1, 2, 0).numpy()).save(folder / "n99999999" / "x.png")
    _, run_path, results = _diagnose("stylized_in", smoke, "--stylized-root", str(tmp_path / "stylized"),
                                     "--alphas", "0", "0.5", "1")
    s = results["summary"]
    assert 0 <= s["phase_bias_low"] <= s["phase_bias"] <= s["phase_bias_high"] <= 1
    assert s["frac_phase"] + s["frac_amplitude"] + s["frac_neither"] == pytest.approx(1)
    assert [r["level"] for r in results["levels"]["alpha"]] == [0, 0.5, 1]
    assert s["stylized_images"] == 40 and s["stylized_classes"] == len(set(val.labels.tolist()))
    assert s["drop_top1"] == pytest.approx(s["clean_top1"] - s["stylized_top1"])
    assert s["drop_top1_low"] <= s["drop_top1"] <= s["drop_top1_high"]
    assert "figures/stylized_imagenet.png" in results["figures"]
    _check_common(results, run_path, smoke, "stylized")


def test_dtd_transfer_on_the_mini_set(smoke, shared_data):
    _, run_path, results = _diagnose("dtd_transfer", smoke, "--root", str(shared_data / "dtd-mini"))
    s = results["summary"]
    assert s["partitions"] == 1 and results["levels"]["partitions"][0]["n"] == 6
    assert results["levels"]["partitions"][0]["num_train"] == 12
    assert s["object_dataset"] == "shapetex" and s["dtd_to_object_ratio"] == pytest.approx(
        s["dtd_top1_mean"] / s["object_top1"])
    assert results["probe"]["dataset"] == "shapetex"  # --root is DTD's, the probe stays on the pretraining data
    _check_common(results, run_path, smoke, "dtd")


def test_bad_input_is_one_line_and_exit_2(smoke, tmp_path):
    _, outputs, _ = smoke
    proc = _run("eval/lowpass.py", "--checkpoint", str(tmp_path / "nope"), "--output-root", str(outputs))
    assert proc.returncode == 2 and proc.stderr.startswith("blockmae: error:") and "Traceback" not in proc.stderr
    proc = _run("eval/dtd_transfer.py", "--checkpoint", str(smoke[0]), "--output-root", str(outputs))
    assert proc.returncode == 2 and "--root" in proc.stderr
    assert _run("eval/stylized_in.py", "--help").returncode == 0
