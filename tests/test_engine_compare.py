import pytest
import torch
from safetensors.torch import save_file

from blockmae.cli import main


def _weights(tmp_path, name, **changes):
    tensors = {"encoder.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4), "encoder.bias": torch.ones(4)}
    tensors.update(changes)
    path = tmp_path / name
    save_file(tensors, str(path))
    return path


def test_identical_files(tmp_path, capsys):
    a, b = _weights(tmp_path, "a.safetensors"), _weights(tmp_path, "b.safetensors")
    assert main(["ckpt", "compare", str(a), str(b)]) == 0
    assert capsys.readouterr().out.startswith("identical (2 tensors, 16 values)")


def test_reports_largest_difference_and_where(tmp_path, capsys):
    changed = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    changed[2, 1] += 0.5
    changed[0, 0] += 0.125
    a = _weights(tmp_path, "a.safetensors")
    b = _weights(tmp_path, "b.safetensors", **{"encoder.weight": changed})
    assert main(["ckpt", "compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "different: max abs diff 0.5 at encoder.weight[2, 1]; 1 of 2 tensors differ" in out
    assert main(["ckpt", "compare", str(a), str(b), "--check"]) == 1
    assert main(["ckpt", "compare", str(a), str(b), "--atol", "0.5", "--check"]) == 0
    assert "close: max abs diff 0.5" in capsys.readouterr().out


def test_run_dir_and_checkpoint_dir_resolve_to_last(tmp_path, capsys):
    last = tmp_path / "run" / "checkpoints" / "last"
    last.mkdir(parents=True)
    _weights(last, "model.safetensors")
    a = _weights(tmp_path, "a.safetensors")
    assert main(["ckpt", "compare", str(tmp_path / "run"), str(last)]) == 0
    assert main(["ckpt", "compare", str(tmp_path / "run"), str(a)]) == 0
    assert capsys.readouterr().out.count("identical") == 2


def test_missing_tensor_is_a_difference(tmp_path, capsys):
    a = _weights(tmp_path, "a.safetensors")
    b = _weights(tmp_path, "b.safetensors", extra=torch.zeros(2))
    assert main(["ckpt", "compare", str(a), str(b)]) == 0
    assert "only in B: extra" in capsys.readouterr().out


@pytest.mark.parametrize("bad", ["missing", "notweights.txt", "emptydir", "corrupt.safetensors"])
def test_bad_input_exits_2(tmp_path, capsys, bad):
    (tmp_path / "notweights.txt").write_text("x")
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x00" * 20)
    a = _weights(tmp_path, "a.safetensors")
    assert main(["ckpt", "compare", str(a), str(tmp_path / bad)]) == 2
    assert capsys.readouterr().err.startswith("blockmae: error:")
