"""`blockmae report` on a fixture sweep (the sweep.json contract) and on a registry-only root: the numbers
of every table, the paired differences, the warnings, the exports and the one-line errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
from report_fixture import MISSING, linear_top1, make_sweep

from blockmae.errors import BlockMAEError
from blockmae.report.analysis import arm_summary, differences_table, study_document
from blockmae.report.model import load_studies
from blockmae.report.stats import t_quantile
from blockmae.report.write import write_document


@pytest.fixture()
def sweep(tmp_path):
    return make_sweep(tmp_path / "sweep")


def test_study_reads_the_contract_with_a_missing_seed(sweep):
    (study,) = load_studies(sweep)
    assert [a.name for a in study.arms] == ["b1", "b2", "b4"]
    assert study.baseline == "b1" and study.ablated == ["mask.block"] and study.seeds == [1, 2]
    assert list(study.arm("b4").runs) == [1]
    assert study.metric_keys() == ["linear.top1", "linear.top5", "lowpass.auc", "pretrain.loss"]
    assert study.final_milestone("linear") == 3 and study.milestones("linear") == [2, 3]
    s = arm_summary(study, study.arm("b2"), "linear.top1")
    v = [linear_top1(2, 1, 3), linear_top1(2, 2, 3)]
    half = t_quantile(0.975, 1) * abs(v[0] - v[1]) / 2 ** 0.5 / 2 ** 0.5
    assert s["n"] == 2 and s["mean"] == pytest.approx(sum(v) / 2)
    assert (s["low"], s["high"]) == pytest.approx((sum(v) / 2 - half, sum(v) / 2 + half))
    # The earlier milestone is read when asked for.
    assert arm_summary(study, study.arm("b2"), "linear.top1", 2)["mean"] == pytest.approx(sum(v) / 2 - 0.05)


def test_paired_differences_pair_by_seed_and_say_when_inside_the_noise(sweep):
    (study,) = load_studies(sweep)
    table, sentences = differences_table(study, "linear.top1", "t")
    rows = {r["arm"].text: r for r in table.rows}
    assert set(rows) == {"b2", "b4"}
    assert rows["b2"]["n"].value == 2 and rows["b4"]["n"].value == 1  # b4 lacks seed 2
    assert rows["b2"]["mean"].value == pytest.approx(0.105)
    # Higher on both seeds (McNemar p < 0.001 on each seed's images), but two seeds with Holm across the
    # study's two verdicts do not resolve it: the one decision policy (blockmae.report.decisions).
    assert rows["b2"]["verdict"].text.startswith("not resolved with 2 seeds (interval over seeds excludes 0")
    assert rows["b2"]["holm"].value == pytest.approx(2 * rows["b2"]["t_p"].value)
    # b4's one seed: its per-image test only, labelled as such, and no seed-level interval.
    assert "conditional on seed 1; says nothing about training seeds" in rows["b4"]["verdict"].text
    assert rows["b4"]["low"].value is None and "interval over seeds" not in rows["b4"]["verdict"].text
    assert rows["b2"]["flip_p"].value == 0.5  # two seeds: the sign-flip test cannot go lower
    assert "cannot go below p = 0.5 with 2 seeds" in sentences[0]
    assert "one pair gives no interval" in sentences[1]
    # Per-image McNemar from predictions.json (top1 only; top5 has no per-image file).
    assert rows["b2"]["mcnemar"].text.startswith("s1: ")
    table5, _ = differences_table(study, "linear.top5", "t5")
    assert all(r["mcnemar"].text == "-" for r in table5.rows)
    # Baseline b2 instead: b1 is lower on both seeds, b4 paired on seed 1 only.
    study.baseline = "b2"
    table, sentences = differences_table(study, "linear.top1", "t")
    assert {r["arm"].text: r["mean"].value for r in table.rows}["b1"] == pytest.approx(-0.105)


def test_deltas_of_mixed_sign_are_inside_the_noise(sweep):
    data = json.loads((sweep / "sweep.json").read_text())
    for arm in data["arms"]:
        if arm["arm"] == "b2":
            arm["evaluations"][1]["metrics"]["top1"] = {1: 0.35, 2: 0.30}[arm["seed"]]
    (sweep / "sweep.json").write_text(json.dumps(data))
    (study,) = load_studies(sweep)
    table, sentences = differences_table(study, "linear.top1", "t")
    assert "inside the noise" in table.rows[0]["verdict"].text
    assert "includes 0: the difference is inside the noise" in sentences[0]


def test_report_command_writes_html_markdown_and_exports(sweep):
    out = sweep / "report.html"
    done = subprocess.run([sys.executable, "-m", "blockmae", "report", "--root", str(sweep), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"report: {out}" in done.stdout
    html = out.read_text()
    assert html.count("<svg") >= 8 and "<script>" in html and "http://" not in html.replace("http://www.w3.org", "")
    assert "0.415 ± 0.021 (n=2)" in html  # b2's linear top-1 over its two seeds
    assert "has no run for seed 2" in html
    assert html.count("data:image/png;base64,") == 6  # reconstructions of each arm's first seed at epochs 2 and 3
    assert 'href="b1/s1"' in html and 'href="b4/s1/eval/lowpass-e3"' in html  # relative run-dir links
    md = (sweep / "report.md").read_text()
    assert "| b2 | 2 | 1, 2 | 0.415 ± 0.021 (n=2) |" in md
    assert (sweep / "report_figures" / "linear-top1-by-variable.svg").is_file()
    tables = sweep / "report_tables"
    with open(tables / "linear-top1-by-arm.csv") as fh:
        rows = {r["arm"]: r for r in csv.DictReader(fh)}
    assert float(rows["b2"]["mean"]) == pytest.approx(0.415) and rows["b4"]["n"] == "1" and rows["b4"]["std"] == ""
    half = t_quantile(0.975, 1) * 0.03 / 2  # b2's seeds 0.400 and 0.430: std 0.0212, se 0.015
    assert (float(rows["b2"]["95% CI low"]), float(rows["b2"]["95% CI high"])) == pytest.approx((0.415 - half, 0.415 + half))
    exported = json.loads((tables / "linear-top1-paired.json").read_text())
    assert exported["rows"][0]["mean delta"] == pytest.approx(0.105)
    tex = (tables / "overview.tex").read_text()
    assert r"\toprule" in tex and r"0.415 $\pm$ 0.021" in tex and r"linear.top1 (mean $\pm$ std)" in tex


def test_report_figures_and_reconstructions(sweep):
    (study,) = load_studies(sweep)
    doc = study_document([study])
    names = [f.name for f in doc.figures()]
    assert "linear-top1-by-variable" in names and "linear-top1-by-epoch" in names
    assert "lowpass-auc-by-epoch" not in names  # one milestone: no epoch plot
    assert "pretraining-loss" in names and "lowpass-lowpass" in names  # results.json curves overlaid
    images = [b for b in doc.walk() if type(b).__name__ == "Image"]
    assert [i.path.name for i in images] == ["reconstructions_epoch_0002.png", "reconstructions_epoch_0003.png"] * 3


def test_curves_from_csv_files(sweep):
    lp = sweep / "b1" / "s1" / "eval" / "lowpass-e3"
    (lp / "results.json").write_text("{}")
    (lp / "lowpass_colour.csv").write_text("level,accuracy,ci_low,ci_high,n\n0,0.5,0.4,0.6,100\n3,0.2,0.1,0.3,100\n")
    (study,) = load_studies(sweep)
    (run,) = [study.arm("b1").runs[1]]
    curve = run.evaluation("lowpass", 3).curves["lowpass_colour"]
    assert (curve.x, curve.y, curve.lo, curve.hi, curve.x_label) == ([0, 3], [0.5, 0.2], [0.4, 0.1], [0.6, 0.3], "level")


def test_curves_from_a_diagnostics_levels_and_figure_csvs(sweep):
    """The diagnostics' results.json `levels` (curve -> rows with top1 and its Wilson bounds) and their
    figures/*.csv are read as curves too; a non-finite level (high-pass 'inf' = clean) is left out."""
    hp = sweep / "b1" / "s1" / "eval" / "lowpass-e3"
    rows = [{"level": "inf", "n": 100, "top1": 0.6, "top1_low": 0.5, "top1_high": 0.7},
            {"level": 3.0, "n": 100, "top1": 0.4, "top1_low": 0.3, "top1_high": 0.5},
            {"level": 1.0, "n": 100, "top1": 0.2, "top1_low": 0.12, "top1_high": 0.3}]
    (hp / "results.json").write_text(json.dumps({"levels": {"highpass_grey": rows}, "summary": {}}))
    (hp / "figures").mkdir()
    (hp / "figures" / "fourier.csv").write_text("radius,top1,top1_low,top1_high\n0.25,0.3,0.2,0.4\n0.5,0.5,0.4,0.6\n")
    (study,) = load_studies(sweep)
    curves = study.arm("b1").runs[1].evaluation("lowpass", 3).curves
    assert (curves["highpass_grey"].x, curves["highpass_grey"].y, curves["highpass_grey"].lo) == ([3.0, 1.0], [0.4, 0.2], [0.3, 0.12])
    assert (curves["fourier"].x, curves["fourier"].hi, curves["fourier"].x_label) == ([0.25, 0.5], [0.4, 0.6], "radius")


def test_registry_only_root_groups_runs_by_name(tmp_path):
    from blockmae.registry import Registry

    registry = Registry(tmp_path)
    for name, block in (("b1", 1), ("b2", 2)):
        for seed in (0, 1):
            run_dir = tmp_path / f"{name}-s{seed}"
            (run_dir / "checkpoints" / "epoch_0002").mkdir(parents=True)
            (run_dir / "metrics.jsonl").write_text(json.dumps({"kind": "epoch", "epoch": 2, "loss": 1.0 + block / 10}))
            cfg = {"mask": {"block": block}, "run": {"seed": seed, "dir": str(run_dir)}, "train": {"epochs": 2}}
            pre = registry.start_run("pretrain", run_dir, cfg, name=name, heartbeat=False)
            registry.finish_run(pre, "completed", {"loss": 1.0})
            probe = registry.start_run("probe", tmp_path / f"probe-{name}-{seed}", {"linear": {"seed": seed}},
                                       parent=run_dir / "checkpoints" / "epoch_0002", name=f"p-{name}", heartbeat=False)
            registry.finish_run(probe, "completed", {"top1": 0.2 + 0.1 * block + 0.01 * seed, "num_eval": 100})
    # A random-init encoder: no pretraining behind its evaluations, which form one arm named after it.
    for kind, metric in (("probe", "top1"), ("knn", "knn_top1")):
        rid = registry.start_run(kind, tmp_path / f"{kind}-random", {"encoder": {"seed": 0}, "train_seconds": 1.5},
                                 parent="random", name=f"{kind}-random", heartbeat=False)
        registry.finish_run(rid, "completed", {metric: 0.1, "train_seconds": 2.5})
    (study,) = load_studies(tmp_path)
    assert study.source == "registry" and [a.name for a in study.arms] == ["b1", "b2", "random"]
    assert study.values("knn.knn_top1") == {"b1": {}, "b2": {}, "random": {0: 0.1}}
    assert study.values("probe.top1")["random"] == {0: 0.1}  # answers at the pretrained arms' milestone
    study.arms.pop()
    assert study.ablated == ["mask.block"] and study.arm("b2").values == {"mask.block": 2}
    assert study.metric_keys() == ["probe.top1", "pretrain.loss"]  # train_seconds is bookkeeping, not a result
    assert study.values("probe.top1", 2) == {"b1": {0: pytest.approx(0.3), 1: pytest.approx(0.31)},
                                             "b2": {0: pytest.approx(0.4), 1: pytest.approx(0.41)}}
    study.baseline = "b1"
    table, _ = differences_table(study, "probe.top1", "t")
    assert table.rows[0]["mean"].value == pytest.approx(0.1)
    written = write_document(study_document([study]), tmp_path / "r.html", tmp_path / "r.md")
    assert "No baseline arm named" not in written.html.read_text()


def _registry_root(root, top1: dict[int, list[float]]):
    """A registry-only root: per block (arm b<block>) one pretraining run and its probe per seed index, the
    probe's top-1 from `top1[block][seed]`."""
    from blockmae.registry import Registry

    registry = Registry(root)
    for block, values in top1.items():
        for seed, value in enumerate(values):
            run_dir = root / f"b{block}-s{seed}"
            (run_dir / "checkpoints" / "epoch_0002").mkdir(parents=True)
            (run_dir / "metrics.jsonl").write_text(json.dumps({"kind": "epoch", "epoch": 2, "loss": 1.0 + block / 10}))
            cfg = {"mask": {"block": block}, "run": {"seed": seed, "dir": str(run_dir)}, "train": {"epochs": 2}}
            pre = registry.start_run("pretrain", run_dir, cfg, name=f"b{block}", heartbeat=False)
            registry.finish_run(pre, "completed", {"loss": 1.0})
            probe = registry.start_run("probe", root / f"probe-b{block}-{seed}", {"linear": {"seed": seed}},
                                       parent=run_dir / "checkpoints" / "epoch_0002", heartbeat=False)
            registry.finish_run(probe, "completed", {"top1": value, "num_eval": 100})
    (study,) = load_studies(root)
    study.baseline = "b1"
    return study


def test_three_seeds_per_arm_get_a_seed_level_verdict(tmp_path):
    # b2 - b1 per seed: +10, +11, +11 points: 95% t-interval over 3 seeds excludes 0, paired t p ~ 0.001.
    study = _registry_root(tmp_path, {1: [0.30, 0.31, 0.30], 2: [0.40, 0.42, 0.41]})
    table, sentences = differences_table(study, "probe.top1", "t")
    (row,) = table.rows
    assert row["n"].value == 3 and row["low"].value > 0
    assert row["verdict"].text.startswith("higher than the baseline (interval over seeds excludes 0, Holm p")
    assert "95% interval over seeds" in sentences[0] and "Holm-adjusted p" in sentences[0]
    assert "conditional on seed" not in sentences[0]
    # The whole report decides every metric of the study as one family (probe top-1 and pretraining loss).
    written = write_document(study_document([study]), tmp_path / "r.html", tmp_path / "r.md")
    md = written.markdown.read_text()
    assert md.count("higher than the baseline (interval over seeds excludes 0") == 2


def test_one_seed_per_arm_gets_no_seed_level_claim_and_says_so(tmp_path):
    study = _registry_root(tmp_path, {1: [0.30], 2: [0.45]})
    table, sentences = differences_table(study, "probe.top1", "t")
    (row,) = table.rows
    assert row["n"].value == 1 and row["low"].value is None and row["t_p"].value is None
    assert row["verdict"].text == ("one shared seed: no seed-level interval, no per-image test (conditional on "
                                   "seed 0; says nothing about training seeds)")
    assert "one pair gives no interval over seeds, so this says nothing beyond the single seed" in sentences[0]
    assert "higher" not in row["verdict"].text and "higher" not in sentences[0]


def test_bad_roots_and_sweep_files_are_one_line_errors(tmp_path, sweep):
    with pytest.raises(BlockMAEError, match="no sweep.json"):
        load_studies(tmp_path / "empty" if (tmp_path / "empty").mkdir() is None else None)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "sweep.json").write_text('{"schema": 7, "arms": []}')
    with pytest.raises(BlockMAEError, match="schema 7"):
        load_studies(tmp_path / "bad")
    with pytest.raises(BlockMAEError, match="no arm named 'b9'"):
        load_studies(sweep, spec=_spec(tmp_path, "baseline: b9\n"))
    (study,) = load_studies(sweep, spec=_spec(tmp_path, "title: Blocks\nbaseline: b2\ndescription: Patch 16 at 128 px.\n"))
    assert (study.title, study.baseline) == ("Blocks", "b2")
    assert "Patch 16 at 128 px." in [getattr(b, "text", None) for b in study_document([study]).walk()]
    done = subprocess.run([sys.executable, "-m", "blockmae", "report", "--root", str(sweep), "--out",
                           str(sweep / "r.txt")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.startswith("blockmae: error: --out") and "Traceback" not in done.stderr


def _spec(tmp_path, text):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def test_missing_seed_is_warned(sweep):
    (study,) = load_studies(sweep)
    text = json.dumps([getattr(b, "text", "") for b in study_document([study]).walk()])
    arm, seed = MISSING
    assert f"Arm {arm} has no run for seed {seed}" in text


def test_hparams_export_reads_back_in_tensorboard(sweep, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from blockmae.report.hparams import export_hparams

    written = export_hparams(load_studies(sweep), tmp_path / "tb")
    assert sorted(p.relative_to(tmp_path / "tb").as_posix() for p in written) == [
        "block_size/b1/s1", "block_size/b1/s2", "block_size/b2/s1", "block_size/b2/s2", "block_size/b4/s1"]
    events = EventAccumulator(str(tmp_path / "tb" / "block_size" / "b2" / "s2"))
    events.Reload()
    assert events.Scalars("report/linear.top1")[0].value == pytest.approx(linear_top1(2, 2, 3))
    assert "_hparams_/session_start_info" in events.summary_metadata


def test_a_sweep_in_progress_reports_what_is_done_and_warns_about_the_rest(sweep, tmp_path):
    data = json.loads((sweep / "sweep.json").read_text())
    data["arms"].append({"arm": "b8", "seed": 1, "hash": "h81", "values": {"mask.block": 8}, "run_dir": "b8/s1",
                         "status": "planned", "pretrain_run_id": None, "evaluations": []})
    data["arms"][0]["evaluations"][1].update(status="failed", metrics={})
    (sweep / "sweep.json").write_text(json.dumps(data))
    (study,) = load_studies(sweep)
    doc = study_document([study])
    texts = [getattr(b, "text", "") for b in doc.walk()]
    assert "Arm b8, seed 1: pretraining is planned." in texts
    assert "Arm b1, seed 1: evaluation linear at milestone 3 is failed." in texts
    assert study.values("linear.top1")["b1"] == {2: pytest.approx(linear_top1(1, 2, 3))}  # the failed seed is left out
    written = write_document(doc, tmp_path / "r.html", tmp_path / "r.md", tmp_path / "t", tmp_path / "f")
    assert "| b8 | 8 | 1 | - | - | - | - |" in written.markdown.read_text()


def test_per_image_correctness_from_a_probes_own_predictions(tmp_path):
    """`blockmae probe` writes labels and per-probe classes; the report reads top1 (linear, else k-NN) and
    knn_top1 from them for McNemar."""
    from blockmae.report.model import EvalResult

    both, knn_only = tmp_path / "both", tmp_path / "knn"
    for folder, probes in ((both, {"linear": [0, 1, 1], "knn": [0, 2, 2]}), (knn_only, {"knn": [1, 1, 2]})):
        folder.mkdir()
        (folder / "predictions.json").write_text(json.dumps({"labels": [0, 1, 2], **probes}))
    run = EvalResult("linear", 3, "completed", None, both, {})
    assert run.per_image("top1") == {0: True, 1: True, 2: False}
    assert run.per_image("knn_top1") == {0: True, 1: False, 2: True} and run.per_image("top5") is None
    assert EvalResult("knn", 3, "completed", None, knn_only, {}).per_image("top1") == {0: False, 1: True, 2: True}


def test_registry_runs_sharing_a_name_are_arms_by_their_settings(tmp_path):
    """Two pretraining runs named `pretrain` (the default) with other masks are two arms, named by what tells
    them apart; a second seed of the same settings joins its arm whatever its run dir."""
    from blockmae.registry import Registry

    registry = Registry(tmp_path)
    for block, seed in ((1, 0), (4, 0), (4, 1)):
        run_dir = tmp_path / f"b{block}-s{seed}"
        run_dir.mkdir()
        (run_dir / "metrics.jsonl").write_text(json.dumps({"kind": "epoch", "epoch": 2, "loss": 1.0 + block / 10}))
        cfg = {"mask": {"block": block}, "run": {"seed": seed, "dir": str(run_dir)}, "train": {"epochs": 2,
                                                                                               "cpu_threads": seed}}
        rid = registry.start_run("pretrain", run_dir, cfg, name="pretrain", heartbeat=False)
        registry.finish_run(rid, "completed", {"loss": 1.0 + block / 10})
    (study,) = load_studies(tmp_path)
    assert [a.name for a in study.arms] == ["pretrain (mask.block=1)", "pretrain (mask.block=4)"]
    assert [sorted(a.runs) for a in study.arms] == [[0], [0, 1]] and not study.notes
    assert study.values("pretrain.loss") == {"pretrain (mask.block=1)": {0: 1.1},
                                             "pretrain (mask.block=4)": {0: 1.4, 1: 1.4}}
