"""`blockmae eval attention` end to end on a smoke checkpoint: the script, its outputs, the registry row,
several checkpoints compared, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from blockmae.cli import main
from blockmae.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
# A pretraining, two probes and three diagnostic runs: about a minute on a free CPU.
pytestmark = pytest.mark.slow
# A quick probe and few occluder passes: the pipeline, not the numbers, is under test here.
QUICK = ["--probe-set", "data.num_images=200", "--probe-set", "linear.epochs=3",
         "--probe-set", "linear.warmup_epochs=1", "--sliding-images", "3",
         "--drop-fractions", "0.25", "0.75", "--blocks", "1", "2", "--samples", "2", "--batch-size", "64",
         "--device", "cpu"]
FIGURES = ("samples", "trajectories", "occlusion_accuracy", "occlusion_heatmap", "displacement_histogram",
           "attention_entropy", "attention_distance")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("attention")
    run_dir = root / "smoke"
    subprocess.run([sys.executable, "-m", "blockmae", "pretrain", "--config", str(ROOT / "configs" / "smoke.yaml"),
                    f"run.dir={run_dir}", f"run.output_root={root / 'outputs'}", "train.epochs=1",
                    "data.num_images=128"], cwd=ROOT, check=True, capture_output=True)
    return run_dir, root / "outputs"


@pytest.fixture(scope="module")
def script_run(smoke_run) -> tuple[Path, dict, str]:
    run_dir, outputs = smoke_run
    out = outputs / "attention" / "first"
    done = subprocess.run([sys.executable, str(ROOT / "eval" / "attention_rollout.py"), "--checkpoint", str(run_dir),
                           "--output-root", str(outputs), "--out", str(out), *QUICK],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return out, json.loads((out / "results.json").read_text()), done.stdout


def test_script_writes_results_figures_maps_and_registry_row(smoke_run, script_run):
    _, outputs = smoke_run
    out, results, stdout = script_run
    assert "probe trained" in stdout and "stability" in stdout
    summary = results["summary"]
    for key in ("com_displacement_mean_patches", "com_displacement_p90_fraction_of_side", "rollout_entropy",
                "stability_score", "mean_attention_distance_layer0", "mean_attention_distance_layer1",
                "figure_mass_clean", "figure_area", "top1_clean"):
        assert key in summary
    assert 0 <= summary["rollout_entropy"] <= 1 and summary["stability_block"] == 2
    assert summary["stability_low"] <= summary["stability_score"] <= summary["stability_high"]
    assert 0 < summary["figure_mass_clean"] < 1
    layers = results["levels"]["layers"]
    assert [r["layer"] for r in layers] == [0, 1]  # the smoke encoder's two blocks
    assert all(0 < r["distance_patches"] < 8 * 2**0.5 for r in layers)
    drop = results["levels"]["patch_drop"]
    assert [r["level"] for r in drop] == [0.0, 0.25, 0.75]
    assert all(r["top1_low"] <= r["top1"] <= r["top1_high"] and r["n"] == drop[0]["n"] for r in drop)
    sliding = results["levels"]["sliding"]
    assert [(r["level"], r["positions"]) for r in sliding] == [(1, 64), (2, 49)]
    assert len(results["levels"]["sliding_positions"]) == 64 + 49
    assert len(results["levels"]["heads"]) == 2 * 2  # layers x heads
    for stem in FIGURES:
        assert (out / "figures" / f"{stem}.png").stat().st_size > 1000
        assert (out / "figures" / f"{stem}.csv").read_text().count("\n") >= 2
        assert f"figures/{stem}.png" in results["figures"]
    maps = load_file(str(out / "rollout_maps.safetensors"))
    assert maps["clean_maps"].shape == (drop[0]["n"], 8, 8)
    assert maps["clean_maps"].sum((1, 2)).sub(1).abs().max() < 1e-4
    registry = Registry(outputs)
    (row,) = registry.list_runs(kind="attention")
    (pretrain,) = registry.list_runs(kind="pretrain")
    assert row.parent == pretrain.id and row.status == "completed"
    assert row.metrics["stability_score"] == pytest.approx(summary["stability_score"])


def test_several_checkpoints_are_run_and_compared_in_one_figure(smoke_run, script_run, capsys):
    run_dir, outputs = smoke_run
    out = outputs / "attention" / "compare"
    assert main(["eval", "attention", "--checkpoint", str(run_dir), "random", "--arch-from", str(run_dir),
                 "--output-root", str(outputs), "--out", str(out), *QUICK]) == 0
    printed = capsys.readouterr().out
    assert "probe reused" in printed  # the smoke checkpoint's probe from the first run, same settings
    comparison = json.loads((out / "comparison.json").read_text())
    assert len(comparison["runs"]) == 2
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["0-smoke", "1-random", "figures"]
    assert (out / "figures" / "comparison.png").is_file()
    csv = (out / "figures" / "comparison.csv").read_text()
    assert "0-smoke" in csv and "1-random" in csv and "stability" in csv
    assert len(Registry(outputs).list_runs(kind="attention")) == 3


def test_bad_options_are_one_line_errors(smoke_run, capsys):
    run_dir, outputs = smoke_run
    for bad, message in ((["--blocks", "9"], "does not fit"), (["--drop-fractions", "1.5"], "must be in (0, 1)"),
                         (["--trajectory-block", "4"], "not among")):
        assert main(["eval", "attention", "--checkpoint", str(run_dir), "--output-root", str(outputs),
                     "--out", str(outputs / "attention" / "bad"), *QUICK, *bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("blockmae: error:") and message in err and "Traceback" not in err
    assert not (outputs / "attention" / "bad").exists()  # refused before any output
