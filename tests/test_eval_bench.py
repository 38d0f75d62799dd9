import re

from blockmae.cli import main


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def test_bench_probe_prints_speedup_from_its_own_figures(tmp_path, monkeypatch, capsys):
    """Tiny sizes (a few seconds); the last line's ratio is forward time / cached time, checked against the
    throughputs printed above it (each the same images over its own time), and both probes report a top-1."""
    monkeypatch.setenv("BLOCKMAE_CACHE_DIR", str(tmp_path))
    assert main(["bench", "probe", "--images", "40", "--eval-images", "20", "--epochs", "2", "--batch-size", "20",
                 "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("task: ShapeTex 40 train / 20 val images at 32 px, 10 classes; encoder vit_nano")
    figures = {}
    for line in lines[1:-1]:
        match = re.fullmatch(r"(cached-feature|forward) probe.*: (\d+\.\d+) s \(([\d,]+) train img/s\), top1 (\d\.\d+)",
                             line)
        assert match, line
        seconds, rate, top1 = float(match.group(2)), _number(match.group(3)), float(match.group(4))
        assert 0.0 <= top1 <= 1.0
        assert abs(rate * seconds - 2 * 40) <= 0.01 * rate + 2  # img/s x s = epochs x images (rounding)
        figures[match.group(1)] = rate
    ratio = float(re.fullmatch(r"speedup_vs_forward_probe: (\d+\.\d+)", lines[-1]).group(1))
    expected = figures["cached-feature"] / figures["forward"]  # time ratio = inverse throughput ratio
    assert abs(ratio - expected) <= 0.01 + 0.02 * expected, (ratio, expected)
