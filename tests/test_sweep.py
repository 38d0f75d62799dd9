"""Sweep specs, plan, run/status (debug, local and submitit-local executors), sweep.json."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from blockmae.cli import main
from blockmae.errors import BlockMAEError
from blockmae.sweep.executors import slot_devices
from blockmae.sweep.load import load_spec
from blockmae.sweep.state import effective_status

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"
PROBE = REPO / "configs" / "linear_probe.yaml"

TINY_BASE = f"""
base: {SMOKE}
overrides:
  data.num_images: 128
  train.epochs: 2
  run.recon_images: 0
  run.ckpt_every_minutes: 0
"""
TINY_EVALS = f"""
probe:
  config: {PROBE}
  overrides: {{device: cpu, data.num_images: 100, linear.epochs: 3, linear.warmup_epochs: 1, linear.batch_size: 50}}
evaluations:
  - {{name: linear, dataset: shapetex}}
  - {{name: knn, dataset: shapetex}}
  - {{name: shape_bias, data: shapetex, num_images: 60}}
"""


def write_spec(tmp_path: Path, body: str, name: str = "spec") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(TINY_BASE + body)
    return path


def test_grid_zip_include_exclude_and_names(tmp_path):
    spec = load_spec(write_spec(tmp_path, """
grid: {mask.block: [1, 2, 4]}
zip: {mask.ratio: [0.6, 0.8], train.batch_size: [32, 64]}
exclude: [{mask.block: 4, mask.ratio: 0.8}]
include: [{mask.block: 3, mask.ratio: 0.7, train.batch_size: 32}]
seeds: [0, 1]
baseline: {mask.block: 1, mask.ratio: 0.6}
"""))
    names = list(dict.fromkeys(a.name for a in spec.arms()))
    assert names == ["b1-r0.6-batch_size32", "b1-r0.8-batch_size64", "b2-r0.6-batch_size32", "b2-r0.8-batch_size64",
                     "b4-r0.6-batch_size32", "b3-r0.7-batch_size32"]
    assert spec.ablated() == ["mask.block", "mask.ratio", "train.batch_size"]
    assert len(spec.arms()) == 12 and {a.seed for a in spec.arms()} == {0, 1}
    arm = spec.arms()[-1]
    assert arm.run_dir == "b3-r0.7-batch_size32/s1" and arm.values == {"mask.block": 3, "mask.ratio": 0.7,
                                                                       "train.batch_size": 32}
    cfg = arm.configs[2]
    assert (cfg.mask.block, cfg.mask.ratio, cfg.train.batch_size, cfg.run.seed) == (3, 0.7, 32, 1)
    assert spec.baseline_arm() == "b1-r0.6-batch_size32"


def test_hash_ignores_paths_and_logging_but_not_seed_or_semantics(tmp_path):
    def hashes(extra: str, seeds: str = "[0, 1]") -> list[str]:
        path = write_spec(tmp_path, f"grid: {{mask.block: [1, 2]}}\nseeds: {seeds}\n")
        path.write_text(path.read_text().replace("overrides:\n", "overrides:\n" + extra))
        return [a.hash for a in load_spec(path).arms()]

    plain = hashes("")
    assert len(set(plain)) == 4  # seed is part of the identity
    assert hashes("  run.log_every: 7\n  run.dir: /elsewhere\n  run.output_root: x\n  train.device: cpu\n") == plain
    changed = hashes("  mask.ratio: 0.7\n")
    assert all(a != b for a, b in zip(changed, plain))


@pytest.mark.parametrize("body, message", [
    ("grid: {mask.blok: [1, 2]}", "'mask.blok' is not a pretraining config key"),
    ("zip: {mask.block: [1, 2], mask.ratio: [0.7]}", "zip lists must have equal lengths"),
    ("grid: {mask.block: [1, 2]}\nmilestones: [1, 2]", "milestones need an explicit milestone_mode"),
    ("grid: {mask.block: [1, 99]}", "a 99x99 mask block does not fit in the 8x8 patch grid"),
    ("grid: {mask.block: [1, 2]}\nbaseline: b7", "baseline 'b7' is not an arm; arms: b1, b2"),
    ("evaluations: [{name: lowpas}]", "unknown evaluation 'lowpas'; known: "),
    ("evaluations: [{name: shape_bias}]", "shape_bias reads a linear probe head"),
    (f"probe: {{config: {PROBE}}}\nevaluations: [{{name: linear, overrides: [linear.epoch=3]}}]",
     "unknown config key 'linear.epoch'"),
    ("sweeps: 3", "unknown spec key 'sweeps'"),
    ("evaluations: [{name: lowpass, bogus: 1}]", "evaluation 'lowpass': unrecognized arguments: --bogus 1"),
])
def test_bad_specs_are_one_line_errors_at_plan_time(tmp_path, capsys, body, message):
    path = write_spec(tmp_path, body)
    assert main(["sweep", "plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("blockmae: error: ")


def test_plan_prints_arms_cost_and_snapshot_caveat(tmp_path, capsys):
    path = write_spec(tmp_path, "grid: {mask.block: [1, 4]}\nmilestones: [1, 2]\nmilestone_mode: snapshots\n" + TINY_EVALS)
    assert main(["sweep", "plan", str(path), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith(("b1 ", "b4 "))]
    assert [(r[0], r[1], r[3], r[4], r[5]) for r in rows] == [("b1", "0", "1", "2", "256"), ("b4", "0", "4", "2", "256")]
    # 128 ShapeTex images x 2 epochs per arm
    assert "cost: 2 pretraining arm(s), 512 images to process" in out
    assert "a snapshot of a 2-epoch run" in out and "not a 1-epoch run" in out
    assert "12 evaluation runs" in out
    record = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert record["schema"] == 1 and [a["status"] for a in record["arms"]] == ["planned", "planned"]
    assert [(e["name"], e["milestone"]) for e in record["arms"][0]["evaluations"]] == [
        ("linear", 1), ("knn", 1), ("shape_bias", 1), ("linear", 2), ("knn", 2), ("shape_bias", 2)]


def test_separate_mode_runs_each_length(tmp_path):
    spec = load_spec(write_spec(tmp_path, "milestones: [1, 2]\nmilestone_mode: separate\n"))
    (arm,) = spec.arms()
    assert sorted(arm.configs) == [1, 2]
    assert [(c.train.epochs, c.run.milestones) for _, c in sorted(arm.configs.items())] == [(1, [1]), (2, [2])]
    assert spec.milestones_of(arm) == [1, 2]


def test_slot_devices():
    assert slot_devices(None, [], 1) == [None]
    assert slot_devices(3, [], 1) == [None, None, None]
    assert slot_devices(None, ["0", "1"], 2) == ["0", "1", "0", "1"]
    assert slot_devices(3, ["0", "1"], 2) == ["0", "1", "0"]
    with pytest.raises(BlockMAEError, match="more than 2 GPU"):
        slot_devices(5, ["0", "1"], 2)
    with pytest.raises(BlockMAEError, match="needs GPUs"):
        slot_devices(None, [], 2)


def test_dead_running_arm_reads_interrupted_and_new_evaluations_replan():
    wanted = [["linear", "linear", 2]]
    assert effective_status({}, wanted) == "planned"
    dead = {"status": "running", "host": os.uname().nodename, "pid": 2**22 + 12345, "proc_start": None}
    assert effective_status(dead, wanted) == "interrupted"
    done = {"status": "completed", "evaluations": {"linear@2": {"status": "completed"}}}
    assert effective_status(done, wanted) == "completed"
    assert effective_status(done, wanted + [["knn", "knn", 2]]) == "planned"


@pytest.mark.slow
def test_debug_sweep_end_to_end_idempotent_and_guarded(tmp_path, capsys):
    spec = write_spec(tmp_path, "grid: {mask.block: [1, 2]}\nbaseline: b1\nmilestones: [1, 2]\n"
                                "milestone_mode: snapshots\ntitle: Tiny\n" + TINY_EVALS)
    out = tmp_path / "out"
    assert main(["sweep", "run", str(spec), "--out", str(out), "--executor", "debug"]) == 0
    record = json.loads((out / "sweep.json").read_text())
    assert (record["name"], record["title"], record["ablated"], record["baseline"], record["milestone_mode"]) == (
        "spec", "Tiny", ["mask.block"], "b1", "snapshots")
    for arm in record["arms"]:
        assert arm["status"] == "completed" and arm["pretrain_run_id"]
        assert (out / arm["run_dir"] / "metrics.jsonl").is_file() and (out / arm["run_dir"] / "config.yaml").is_file()
        assert [e["status"] for e in arm["evaluations"]] == ["completed"] * 6
        by = {(e["name"], e["milestone"]): e for e in arm["evaluations"]}
        assert 0.0 <= by[("linear", 2)]["metrics"]["top1"] <= 1.0 and by[("linear", 2)]["metrics"]["n"] == 100
        assert "top1" in by[("knn", 1)]["metrics"] and "knn_top1" not in by[("knn", 1)]["metrics"]
        assert 0.0 <= by[("shape_bias", 2)]["metrics"]["shape_bias"] <= 1.0
        assert by[("linear", 1)]["run_dir"] == f"{arm['run_dir']}/eval/linear-e1"
        assert (out / by[("linear", 1)]["run_dir"] / "head.safetensors").is_file()
    from blockmae.registry import Registry

    reg = Registry(out)
    pre = reg.get(record["arms"][0]["pretrain_run_id"])
    assert pre.name == "spec/b1" and [h["epoch"] for h in pre.history] == [1, 2]  # every milestone kept
    capsys.readouterr()

    # Again: nothing runs.
    assert main(["sweep", "run", str(spec), "--out", str(out), "--executor", "debug"]) == 0
    assert "2 completed (skipped), 0 to run" in capsys.readouterr().out
    assert len(reg.list_runs(kind="pretrain")) == 2
    assert main(["sweep", "status", str(spec), "--out", str(out)]) == 0
    assert "arms: 2 completed (of 2); evaluations: 12/12 completed" in capsys.readouterr().out

    # A failed arm stays failed until --retry-failed.
    state_path = out / "b2" / "s0" / "arm_state.json"
    state = json.loads(state_path.read_text())
    state["status"] = "failed"
    del state["evaluations"]["knn@2"]
    state_path.write_text(json.dumps(state))
    assert main(["sweep", "run", str(spec), "--out", str(out), "--executor", "debug"]) == 1
    assert "1 failed (rerun with --retry-failed: b2/s0)" in capsys.readouterr().out
    assert main(["sweep", "run", str(spec), "--out", str(out), "--executor", "debug", "--retry-failed"]) == 0
    assert len(reg.list_runs(kind="pretrain")) == 2 and len(reg.list_runs(kind="knn")) == 5
    assert json.loads((out / "sweep.json").read_text())["arms"][1]["status"] == "completed"

    # The spec changed under the folder: refused, naming the arm and the key.
    spec.write_text(spec.read_text().replace("  train.epochs: 2\n", "  train.epochs: 2\n  mask.ratio: 0.7\n"))
    assert main(["sweep", "run", str(spec), "--out", str(out), "--executor", "debug"]) == 2
    err = capsys.readouterr().err
    assert "arm b1/s0" in err and "mask.ratio: 0.75 -> 0.7" in err


@pytest.mark.slow
def test_a_diagnostic_is_an_evaluation_by_name_and_reads_the_arms_probe(tmp_path, capsys):
    spec = write_spec(tmp_path, "milestones: [2]\nmilestone_mode: snapshots\n" + TINY_EVALS.replace(
        "  - {name: knn, dataset: shapetex}\n  - {name: shape_bias, data: shapetex, num_images: 60}\n",
        "  - {name: lowpass, num_images: 40, curves: [colour], sigmas: [0, 10]}\n"))
    out = tmp_path / "out"
    assert main(["sweep", "run", str(spec), "--out", str(out), "--executor", "debug"]) == 0
    (arm,) = json.loads((out / "sweep.json").read_text())["arms"]
    linear, lowpass = arm["evaluations"]
    assert lowpass["name"] == "lowpass" and lowpass["status"] == "completed"
    results = json.loads((out / lowpass["run_dir"] / "results.json").read_text())
    assert [row["level"] for row in results["levels"]["colour"]] == pytest.approx([0, 10 * 32 / 224])  # sigma at 224 px, scaled
    assert results["summary"] and set(lowpass["metrics"]) <= set(results["summary"])
    # It read the arm's linear probe of that milestone instead of training another one.
    assert results["probe"]["run_dir"] == str(out / linear["run_dir"])


@pytest.mark.slow
def test_local_slots_and_submitit_local_executor(tmp_path, capsys):
    """The local executor's parallel slots, and the SLURM path through submitit's local cluster: a job array
    of checkpointable jobs running from a code snapshot."""
    submitit = pytest.importorskip("submitit")
    from blockmae.sweep.executors import ArmJob

    spec = write_spec(tmp_path, "grid: {mask.block: [1, 2]}\n")
    spec.write_text(spec.read_text().replace("train.epochs: 2", "train.epochs: 1"))
    out = tmp_path / "local"
    assert main(["sweep", "run", str(spec), "--out", str(out), "--slots", "2"]) == 0
    assert all(a["status"] == "completed" for a in json.loads((out / "sweep.json").read_text())["arms"])
    assert (out / "b1" / "s0" / "sweep.log").is_file()

    out = tmp_path / "slurm"
    assert main(["sweep", "run", str(spec), "--out", str(out), "--executor", "slurm", "--cluster", "local",
                 "--max-parallel", "1", "--timeout-min", "10"]) == 0
    assert all(a["status"] == "completed" for a in json.loads((out / "sweep.json").read_text())["arms"])
    assert (next((out / "code").iterdir()) / "blockmae" / "sweep" / "runner.py").is_file()
    job = ArmJob("/snapshot")
    assert isinstance(job, submitit.helpers.Checkpointable)
    resubmission = job.checkpoint(str(out / "b1" / "s0" / "arm.json"))
    assert isinstance(resubmission, submitit.helpers.DelayedSubmission) and resubmission.function.code_dir == "/snapshot"


@pytest.mark.slow
def test_interrupted_arm_resumes_without_redoing_finished_work(tmp_path, capsys):
    """An arm stopped mid-evaluation (SIGTERM reads as KeyboardInterrupt) is interrupted; the next run keeps
    its pretraining and finished evaluations and runs only the rest. A diagnostic plugs in by name."""
    from blockmae.sweep import evaluations as ev_mod
    from blockmae.sweep.evaluations import EvalOutcome, register_evaluation

    calls = []

    def flaky(ctx):
        calls.append(ctx.milestone)
        if len(calls) == 1:
            raise KeyboardInterrupt
        ctx.run_dir.mkdir(parents=True, exist_ok=True)
        return EvalOutcome(None, ctx.run_dir, {"score": float(ctx.milestone), "n": 1})

    register_evaluation("flaky", flaky)
    try:
        spec = write_spec(tmp_path, f"probe: {{config: {PROBE}, overrides: {{device: cpu, data.num_images: 60, "
                                    "linear.epochs: 2, linear.warmup_epochs: 0, linear.batch_size: 30}}\n"
                                    "evaluations: [{name: linear, dataset: shapetex}, flaky]\n")
        out = tmp_path / "out"
        assert main(["sweep", "run", str(spec), "--out", str(out), "--executor", "debug"]) == 1
        (arm,) = json.loads((out / "sweep.json").read_text())["arms"]
        assert arm["status"] == "interrupted"
        assert [e["status"] for e in arm["evaluations"]] == ["completed", "interrupted"]
        assert main(["sweep", "run", str(spec), "--out", str(out), "--executor", "debug"]) == 0
        (arm,) = json.loads((out / "sweep.json").read_text())["arms"]
        assert arm["status"] == "completed" and arm["evaluations"][1]["metrics"] == {"score": 2.0, "n": 1}
        from blockmae.registry import Registry

        reg = Registry(out)
        assert len(reg.list_runs(kind="pretrain")) == 1 and len(reg.list_runs(kind="probe")) == 1
        assert calls == [2, 2]
    finally:
        ev_mod.EVALUATIONS.pop("flaky", None)
