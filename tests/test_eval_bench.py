import re

import pytest

from blockmae.cli import main


@pytest.mark.slow
def test_bench_probe_prints_speedup_last(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BLOCKMAE_CACHE_DIR", str(tmp_path))
    assert main(["bench", "probe", "--images", "64", "--eval-images", "32", "--epochs", "3", "--batch-size", "32",
                 "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("task: ShapeTex 64 train / 32 val")
    assert any(line.startswith("cached-feature probe:") for line in lines)
    assert any(line.startswith("forward probe") for line in lines)
    match = re.fullmatch(r"speedup_vs_forward_probe: (\d+\.\d+)", lines[-1])
    assert match and float(match.group(1)) > 0
