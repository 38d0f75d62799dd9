"""The report's interpretation rules, its table and figures, and a reduced quickstart end to end."""

from __future__ import annotations

import re

import pytest

from blockmae.report import (
    ArmResult,
    Interval,
    accuracy_figure,
    interpret,
    parse_results_table,
    probe_verdict,
    shape_bias_figure,
    wilson_interval,
    write_report,
)


def arm(name: str, linear: float, knn: float, bias: tuple[float, float, float], pretrained: bool = True, n: int = 1000):
    return ArmResult(
        name=name,
        pretrained=pretrained,
        linear_top1=linear,
        linear_top5=min(1.0, linear + 0.2),
        knn_top1=knn,
        probe_images=n,
        shape_bias=Interval(*bias),
        shape_only_accuracy=0.4,
        texture_only_accuracy=0.7,
        run_ids={"pretrain": f"{name}-pre", "linear": f"{name}-lin"} if pretrained else {"linear": f"{name}-lin"},
    )


def test_wilson_interval_matches_known_values():
    iv = wilson_interval(0.5, 100)
    # Wilson 95% interval for 50/100: [0.4038, 0.5962].
    assert iv.low == pytest.approx(0.4038, abs=1e-4) and iv.high == pytest.approx(0.5962, abs=1e-4)
    assert wilson_interval(0.0, 50).low == pytest.approx(0.0, abs=1e-12)
    assert wilson_interval(1.0, 50).high == pytest.approx(1.0, abs=1e-12)


def test_overlapping_shape_bias_intervals_are_reported_as_inside_the_intervals():
    arms = [
        arm("1x1", 0.60, 0.55, (0.30, 0.26, 0.34)),
        arm("2x2", 0.61, 0.56, (0.32, 0.28, 0.36)),
        arm("4x4", 0.62, 0.57, (0.33, 0.29, 0.37)),
        arm("random-init", 0.30, 0.28, (0.31, 0.27, 0.35), pretrained=False),
    ]
    text = " ".join(interpret(arms))
    assert "are inside the 95% bootstrap intervals" in text
    assert "does not show that the masking changes shape bias" in text
    assert "higher shape bias" not in text
    assert "All pretrained encoders beat the random-init baseline on the linear probe" in text


def test_separated_shape_bias_intervals_are_claimed_and_the_rest_are_inside():
    arms = [
        arm("1x1", 0.60, 0.55, (0.20, 0.17, 0.23)),
        arm("2x2", 0.61, 0.56, (0.24, 0.21, 0.27)),
        arm("4x4", 0.62, 0.57, (0.40, 0.36, 0.44)),
        arm("random-init", 0.30, 0.28, (0.31, 0.27, 0.35), pretrained=False),
    ]
    text = " ".join(interpret(arms))
    assert "4x4 has a higher shape bias than 1x1" in text
    assert "4x4 has a higher shape bias than 2x2" in text
    assert "1x1 vs 2x2" in text and "inside the 95% bootstrap intervals" in text
    assert "2x2 has a higher" not in text and "1x1 has a higher" not in text
    # Decisions follow texture only where the whole interval is below 0.5.
    assert "decide by texture more often than by shape" in text


def test_pretrained_not_beating_random_init_is_said_plainly():
    arms = [
        arm("1x1", 0.31, 0.27, (0.30, 0.26, 0.34)),
        arm("2x2", 0.29, 0.28, (0.32, 0.28, 0.36)),
        arm("random-init", 0.30, 0.28, (0.31, 0.27, 0.35), pretrained=False),
    ]
    paragraphs = interpret(arms)
    assert paragraphs[0].startswith("The pretrained encoders do not beat the random-init baseline on the linear probe")
    assert "do not beat the random-init baseline on the k-NN probe" in paragraphs[0]
    assert "did not produce better features than random weights" in paragraphs[1]


def test_partial_win_names_the_winner_and_the_others():
    base = arm("random-init", 0.30, 0.30, (0.3, 0.25, 0.35), pretrained=False)
    arms = [arm("1x1", 0.45, 0.30, (0.3, 0.25, 0.35)), arm("4x4", 0.31, 0.30, (0.3, 0.25, 0.35)), base]
    sentence = probe_verdict(arms, base, "linear")
    assert sentence.startswith("Only 1x1 beats the random-init baseline on the linear probe")
    assert "4x4 is inside the baseline's interval" in sentence
    # An arm clearly worse than the baseline is called worse, not "inside".
    arms = [arm("1x1", 0.10, 0.30, (0.3, 0.25, 0.35)), base]
    assert "1x1 is below it" in probe_verdict(arms, base, "linear")


def test_report_table_round_trips_and_figures_are_written(tmp_path):
    arms = [
        arm("1x1", 0.6123, 0.55, (0.30, 0.26, 0.34)),
        arm("4x4", 0.6234, 0.57, (0.41, 0.37, 0.45)),
        arm("random-init", 0.30, 0.28, (0.31, 0.27, 0.35), pretrained=False),
    ]
    figs = [
        ("Shape bias", shape_bias_figure(arms, tmp_path / "figures" / "shape_bias.png")),
        ("Accuracy", accuracy_figure(arms, tmp_path / "figures" / "accuracy.png")),
    ]
    report = write_report(tmp_path / "report.md", "Test report", arms, figures=figs)
    text = report.read_text()
    table = parse_results_table(text)
    assert set(table) == {"1x1", "4x4", "random-init"}
    assert float(table["1x1"]["Linear top-1 (%)"]) == pytest.approx(61.2)
    assert table["4x4"]["Shape bias [95% CI]"] == "0.410 [0.370, 0.450]"
    for _, fig in figs:
        assert fig.stat().st_size > 5000 and fig.read_bytes()[:4] == b"\x89PNG"
        assert f"]({fig.relative_to(tmp_path)})" in text
    # No temporary files left behind by the atomic writes.
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()]
    assert re.search(r"\| 4x4 \| 4x4-lin \| 4x4-pre \|", text)
