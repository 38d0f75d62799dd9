"""Reference encoders: package a tiny finished run, list and verify it, catch damage, load it as an encoder."""

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
import torch

from blockmae.cli import main
from blockmae.errors import BlockMAEError
from blockmae.references import REFERENCES_DIR, find_reference, list_references, load_reference, reference_folders
from blockmae.references.package import package_reference
from blockmae.references.verify import loss_curve, verify_reference

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"  # vit_nano, 32 px, 2x2 free blocks, seed 0
# 128 images in batches of 32: 4 steps per epoch, 2 epochs; one thread (the CI box is shared).
TINY = ["data.num_images=128", "train.batch_size=32", "train.epochs=2", "train.cpu_threads=1", "run.log_every=1",
        "run.recon_images=0", "run.milestones=[]"]
TRAIN_COMMAND = "blockmae pretrain --config configs/smoke.yaml (tiny test run)"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished two-epoch pretraining run, recorded in a registry (so it has run_record.json)."""
    out = tmp_path_factory.mktemp("pretrain")
    run = out / "run"
    assert main(["pretrain", "--config", str(SMOKE), *TINY, f"run.dir={run}", f"run.output_root={out}"]) == 0
    return run


@pytest.fixture(scope="module")
def packaged(run_dir, tmp_path_factory):
    """The run packaged through the command, without evaluation."""
    root = tmp_path_factory.mktemp("refs")
    code = main(["weights", "package", "--run-dir", str(run_dir), "--block", "2", "--seed", "0",
                 "--command", TRAIN_COMMAND, "--out-root", str(root), "--no-evaluate"])
    assert code == 0
    return root


def _copy(root: Path, tmp_path: Path) -> Path:
    """A private copy of the packaged root, for tests that damage it."""
    shutil.copytree(root, tmp_path / "refs")
    return tmp_path / "refs"


def test_package_writes_the_folder_and_its_manifest(packaged, run_dir):
    folder = packaged / "quickstart-block2-s0"
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "metrics.jsonl", "model.safetensors"]
    assert [p.name for p in packaged.iterdir()] == ["quickstart-block2-s0"]  # no staging or aside left behind
    assert (folder / "metrics.jsonl").read_bytes() == (run_dir / "metrics.jsonl").read_bytes()
    m = json.loads((folder / "manifest.json").read_text())
    assert m["schema"] == 1 and m["id"] == "quickstart-block2-s0" and (m["block"], m["seed"]) == (2, 0)
    assert m["mask"] == {"family": "block", "block": 2, "ratio": 0.75, "align": "free"}
    assert m["weights"]["dtype"] == "float16" and m["weights"]["bytes"] == (folder / "model.safetensors").stat().st_size
    from blockmae.models import load_encoder

    model = load_encoder(run_dir).mae
    assert m["weights"]["parameters"] == sum(p.numel() for p in model.parameters())
    assert m["config"]["train"]["batch_size"] == 32 and m["config"]["model"]["preset"] == "vit_nano"
    assert m["command"] == TRAIN_COMMAND and m["package_command"][:3] == ["blockmae", "weights", "package"]
    assert "--no-evaluate" in m["package_command"] and m["evaluation"] is None
    env = json.loads((run_dir / "env.json").read_text())
    assert m["env_command"] == env["command"] and m["git_commit"] == env["git_commit"]
    assert m["versions"] == {"python": env["python"], **{k: env["packages"][k] for k in ("torch", "torchvision", "timm", "blockmae")}}
    assert m["trained_on"] == "cpu" and m["device"]["precision"] == "fp32" and m["device"]["torch_threads"] == 1
    assert m["trained_at"] == env["started_at"] and m["date"].endswith("+00:00")
    assert m["steps"] == 8 and m["images_seen"] == 8 * 32
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in epochs if r["kind"] == "epoch"]
    assert m["final_loss"] == epochs[-1]["loss"]
    assert m["wall_time_s"] == pytest.approx(sum(r["epoch_time_s"] for r in epochs))
    assert "epoch_time_s" in m["wall_time_note"]
    assert m["run_id"] == json.loads((run_dir / "run_record.json").read_text())["row"]["id"]


def test_list_find_and_verify(packaged, capsys):
    (ref,) = list_references(packaged)
    assert ref == find_reference(2, 0, root=packaged)
    assert ref.block == 2 and ref.seed == 0 and ref.label == "2x2 blocks" and ref.images_seen == 256
    assert ref.weights_path == packaged / ref.id / "model.safetensors"
    assert verify_reference(ref) == []
    with pytest.raises(BlockMAEError, match="no reference encoder with block 4 .*quickstart-block2-s0"):
        find_reference(4, 0, root=packaged)

    assert main(["weights", "list", "--root", str(packaged)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("quickstart-block2-s0"))
    assert "2x2 blocks 75%" in row and "256" in row and f"{ref.final_loss:.4f}" in row and "cpu" in row
    assert ref.manifest["weights"]["sha256"][:12] in row
    assert f"1 reference encoder(s) in {packaged}" in out
    assert main(["weights", "verify", "--root", str(packaged)]) == 0
    assert "OK    quickstart-block2-s0" in capsys.readouterr().out


def test_one_changed_byte_fails_verify(packaged, tmp_path, capsys):
    root = _copy(packaged, tmp_path)
    weights = root / "quickstart-block2-s0" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # inside the last tensor: the header still parses
    weights.write_bytes(bytes(data))
    problems = verify_reference(load_reference(weights.parent))
    assert problems == ["model.safetensors: sha256 mismatch with the manifest (damaged or replaced)"]
    assert main(["weights", "verify", "--root", str(root), "quickstart-block2-s0"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == ["FAIL  quickstart-block2-s0: model.safetensors: sha256 mismatch with the manifest (damaged or "
                   "replaced)", f"0 of 1 reference(s) OK in {root}"]


def test_verify_catches_size_dtype_architecture_and_metrics(packaged, tmp_path):
    from blockmae.models import load_encoder, save_mae

    root = _copy(packaged, tmp_path)
    folder = root / "quickstart-block2-s0"
    model = load_encoder(folder).mae  # float32 again
    save_mae(model, folder / "model.safetensors")
    with open(folder / "metrics.jsonl", "a") as fh:
        fh.write("\n")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["config"]["model"]["patch_size"] = 8
    (folder / "manifest.json").write_text(json.dumps(manifest))
    problems = verify_reference(load_reference(folder))
    text = "\n".join(problems)
    assert "bytes, the manifest says" in text and "sha256 mismatch" in text
    assert "tensors are F32, not float16" in text
    assert "architecture has patch_size=4 but the manifest's config gives 8" in text
    assert "metrics.jsonl: sha256 mismatch" in text
    (folder / "metrics.jsonl").unlink()
    assert "metrics.jsonl is missing" in verify_reference(load_reference(folder))


def test_truncated_manifest_is_a_one_line_error(packaged, tmp_path, capsys):
    root = _copy(packaged, tmp_path)
    manifest = root / "quickstart-block2-s0" / "manifest.json"
    manifest.write_text(manifest.read_text()[:100])
    with pytest.raises(BlockMAEError, match="manifest.json is unreadable"):
        list_references(root)
    assert main(["weights", "list", "--root", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("blockmae: error: ") and "manifest.json is unreadable" in err and "\n" not in err
    assert main(["weights", "verify", "--root", str(root)]) == 1
    (line, summary) = capsys.readouterr().out.splitlines()
    assert line.startswith("FAIL  quickstart-block2-s0: ") and "manifest.json is unreadable" in line
    manifest.write_text(json.dumps({"schema": 1, "id": "another-name"}))
    with pytest.raises(BlockMAEError, match="names id 'another-name', not its folder's name"):
        load_reference(manifest.parent)


def test_packaged_weights_load_as_the_encoder_within_fp16_tolerance(packaged, run_dir):
    from blockmae.models.factory import load_encoder

    ref = find_reference(2, 0, root=packaged)
    full = load_encoder(str(run_dir))
    half = load_encoder(str(ref.weights_path))
    assert half.arch == full.arch and next(half.model.parameters()).dtype == torch.float32
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = full.model.forward_features(images, pool="avg")
        b = half.model.forward_features(images, pool="avg")
    assert half.weights_hash != full.weights_hash  # the weights were rounded to float16 ...
    assert torch.allclose(a, b, rtol=1e-2, atol=1e-2)  # ... and still give the same features
    assert (a - b).abs().max() > 0


def test_loss_curve_matches_the_metrics_file(packaged, run_dir):
    ref = find_reference(2, 0, root=packaged)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["kind"] == "step"]
    images, losses = loss_curve(ref)
    assert images == [32 * r["step"] for r in steps] == [32 * s for s in range(1, 9)]
    assert losses == [r["loss"] for r in steps]
    assert images[-1] == ref.images_seen


def test_package_refuses_a_wrong_label_or_an_unfinished_run(run_dir, tmp_path, capsys):
    out = tmp_path / "refs"
    with pytest.raises(BlockMAEError, match="--block 4 but the run .* block 2"):
        package_reference(run_dir, out, "quickstart-block4-s0", "x", block=4)
    assert main(["weights", "package", "--run-dir", str(run_dir), "--block", "2", "--seed", "3",
                 "--command", "x", "--out-root", str(out), "--no-evaluate"]) == 2
    assert "--seed 3 but the run" in capsys.readouterr().err
    unfinished = tmp_path / "run"
    shutil.copytree(run_dir, unfinished)
    meta_path = unfinished / "checkpoints" / "last" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["complete"] = False
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(BlockMAEError, match="not finished"):
        package_reference(unfinished, out, "quickstart-block2-s0", "x")
    assert not out.exists() or reference_folders(out) == []


def test_evaluation_is_stored_and_a_failed_one_keeps_the_old_folder(run_dir, packaged, tmp_path, monkeypatch):
    import blockmae.quickstart as quickstart

    root = _copy(packaged, tmp_path)
    before = (root / "quickstart-block2-s0" / "manifest.json").read_bytes()
    sha256 = json.loads(before)["weights"]["sha256"]
    seen = []

    def failing(weights, work_dir):
        raise BlockMAEError("evaluation failed")

    monkeypatch.setattr(quickstart, "reference_evaluation", failing, raising=False)
    args = ["weights", "package", "--run-dir", str(run_dir), "--block", "2", "--seed", "0", "--command", "x",
            "--out-root", str(root), "--work-dir", str(tmp_path / "work")]
    assert main(args) == 2  # the reference exists: replaced only with --force
    assert main([*args, "--force"]) == 2  # the evaluation fails
    args.append("--force")
    assert (root / "quickstart-block2-s0" / "manifest.json").read_bytes() == before
    assert [p.name for p in root.iterdir()] == ["quickstart-block2-s0"]

    def evaluation(weights, work_dir):
        seen.append((weights, work_dir, weights.read_bytes()))
        return {"linear": {"top1": 0.425}, "knn_top1": 0.3}

    monkeypatch.setattr(quickstart, "reference_evaluation", evaluation, raising=False)
    assert main(args) == 0
    ref = find_reference(2, 0, root=root)
    assert ref.manifest["evaluation"] == {"linear": {"top1": 0.425}, "knn_top1": 0.3}
    ((weights, work_dir, data),) = seen
    assert weights == tmp_path / "work" / "model.safetensors" and work_dir == tmp_path / "work" / "evaluation"
    assert data == ref.weights_path.read_bytes() and verify_reference(ref) == []
    assert ref.manifest["weights"]["sha256"] == sha256  # the same run packages to the same bytes
    from blockmae.references.cli_list import _row

    assert "42.5%" in _row(ref)


@pytest.mark.slow
def test_an_installed_wheel_ships_and_verifies_its_references(packaged, tmp_path):
    from wheel_install import install_wheel

    def plant(source: Path) -> None:
        shutil.copytree(packaged, source / "src" / "blockmae" / "resources" / "references", dirs_exist_ok=True)

    installed = install_wheel(tmp_path, plant)
    verified = installed.blockmae("weights", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    shipped = installed.target / "blockmae" / "resources" / "references"
    counted = re.search(r"(\d+) of (\d+) reference\(s\) OK in (.+)", verified.stdout)
    assert counted and counted[1] == counted[2] and counted[3].strip() == str(shipped), verified.stdout
    assert "quickstart-block2-s0" in installed.blockmae("weights", "list").stdout


def test_shipped_references_verify_against_their_manifests():
    shipped = list_references(REFERENCES_DIR)
    assert {r.block for r in shipped} == {1, 2, 4}, "the quickstart's three arms ship as references"
    seeds = {b: {r.seed for r in shipped if r.block == b} for b in (1, 2, 4)}
    assert seeds[1] == seeds[2] == seeds[4] and 0 in seeds[1], f"every arm ships the same seeds: {seeds}"
    recipe = yaml.safe_load((ROOT / "configs" / "pretrain_shapetex.yaml").read_text())
    batch = recipe["train"]["batch_size"]
    per_arm = recipe["train"]["epochs"] * (recipe["data"]["num_images"] // batch) * batch  # equal for every arm
    for ref in shipped:
        assert verify_reference(ref) == [], ref.id
        m = ref.manifest
        assert m["weights"]["dtype"] == "float16" and m["mask"]["align"] == "free"
        assert m["images_seen"] == m["steps"] * m["config"]["train"]["batch_size"] == per_arm
        assert m["config"]["data"]["dataset"] == "shapetex" and m["config"]["run"]["seed"] == ref.seed
        assert m["evaluation"]["linear_top1_low"] <= m["evaluation"]["linear_top1"] <= m["evaluation"]["linear_top1_high"]
    total = sum(p.stat().st_size for ref in shipped for p in ref.path.iterdir())
    assert total <= 25 * 2**20, f"references take {total / 2**20:.1f} MB; the package allows 25"


@pytest.mark.slow
def test_a_shipped_reference_reproduces_its_manifest_probe(tmp_path, monkeypatch):
    """The CPU quickstart's linear probe on the shipped weights gives the accuracy the manifest records."""
    from blockmae.quickstart import reference_evaluation

    monkeypatch.setenv("BLOCKMAE_CACHE_DIR", str(tmp_path / "cache"))
    ref = find_reference(4, 0, REFERENCES_DIR)
    measured = reference_evaluation(ref.weights_path, tmp_path / "eval")
    recorded = ref.manifest["evaluation"]
    assert measured["num_eval"] == recorded["num_eval"]
    assert abs(measured["linear_top1"] - recorded["linear_top1"]) <= 0.01
    assert abs(measured["knn_top1"] - recorded["knn_top1"]) <= 0.01


def test_weights_list_loads_neither_the_quickstart_nor_the_sweep():
    """The store sits below the apps: listing three folders imports no app (and no engine or model)."""
    import subprocess
    import sys

    code = ("import sys; from blockmae.cli import main; main(['weights', 'list']); "
            "print(sorted(m for m in sys.modules if m.startswith('blockmae')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded = eval(out.stdout.splitlines()[-1])
    assert "blockmae.references" in loaded and "quickstart-block2-s0" in out.stdout
    apps = [m for m in loaded if m.split(".")[1:2] in (["quickstart"], ["sweep"], ["engine"], ["models"], ["report"])]
    assert not apps, apps
