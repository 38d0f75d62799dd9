"""`blockmae eval lowpass`: linear-probe accuracy of a frozen encoder under low-pass filtering.

Three curves (filters in `blockmae.diagnostics.filters`, summaries in `blockmae.diagnostics.curves`):
``colour`` (Gaussian blur of each channel), ``greyscale`` (model-vs-human's protocol: luminance,
blur with constant padding at the mean grey, clipped, stacked to three channels) and ``fourier`` (ideal
low-pass on the centred spectrum, radius as a fraction of Nyquist; Wang et al., CVPR 2020). The
Gaussian sigmas are model-vs-human's, given at 224 px and scaled to the encoder's input size; a level that
filters nothing at that size is left out with a note (`filters.gaussian_level_exists`). The
greyscale curve is drawn beside the human one on a normalised footing. `highpass.py` reuses this class.
"""

from __future__ import annotations

import argparse
import math
from typing import Any, Callable

import torch

from blockmae.config import number
from blockmae.diagnostics import filters
from blockmae.diagnostics.context import Context
from blockmae.diagnostics.curves import (accuracy_figure, auc_intervals, curve_summary, human_auc,
                                        human_comparison_figure, level_label, normalised)
from blockmae.diagnostics.human_reference import human_curve
from blockmae.diagnostics.plugin import Diagnostic, DiagnosticResult, accuracy_row, correct_count
from blockmae.diagnostics.runner import command
from blockmae.errors import BlockMAEError
from blockmae.evaluation.metrics import top1_predictions

CURVES = ("colour", "greyscale", "fourier")


def _level(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (inf allowed)") from None
    if value < 0 or math.isnan(value):
        raise argparse.ArgumentTypeError(f"levels must be >= 0, got {text}")
    return value


class Lowpass(Diagnostic):
    name = "lowpass"
    description = "accuracy under Gaussian and Fourier low-pass filtering, beside humans"
    needs_probe = True
    # what distinguishes the high-pass subclass
    keep = "low"
    sigmas_224 = filters.LOWPASS_SIGMAS_224
    radii = filters.FOURIER_LOWPASS_RADII
    human_experiment = "low-pass"

    @classmethod
    def add_options(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--curves", nargs="+", choices=CURVES, default=list(CURVES),
                            help="which sweeps to run (default: all)")
        parser.add_argument("--sigmas", nargs="+", type=number(float, ">=0"),
                            default=list(cls.sigmas_224), metavar="SIGMA",
                            help="Gaussian sigmas in pixels at 224 px, scaled x size/224; least filtered first "
                                 f"(default: model-vs-human's {' '.join(level_label(s) for s in cls.sigmas_224)})")
        parser.add_argument("--radii", nargs="+", type=_level, default=list(cls.radii), metavar="R",
                            help="Fourier radii as fractions of Nyquist, least filtered first "
                                 f"(default: {' '.join(level_label(r) for r in cls.radii)})")

    def gaussian(self, images: torch.Tensor, sigma: float, grey: bool) -> torch.Tensor:
        return filters.gaussian_lowpass(images, sigma, grey)

    def evaluate(self, ctx: Context) -> DiagnosticResult:
        args = ctx.args
        if not args.sigmas or not args.radii:
            raise BlockMAEError("--sigmas and --radii need at least one level")
        ds = ctx.dataset()
        chance = 1.0 / ctx.num_classes
        size = ctx.image_size
        sigmas, radii, notes = self._levels_at(size, args.sigmas, args.radii, args.curves)
        sigmas_px = filters.scale_levels(sigmas, size)
        levels: dict[str, list[dict[str, Any]]] = {}
        correct: dict[str, torch.Tensor] = {}  # per curve: (images, levels) top-1 hits, for the AUC intervals
        for curve in args.curves:
            if curve == "fourier":
                if len(radii) < 2:
                    continue
                steps = [(r, {"radius_nyquist": r}, self._fourier(r)) for r in radii]
            else:
                if len(sigmas) < 2:
                    continue
                grey = curve == "greyscale"
                steps = [(s_px, {"sigma_224": s224, "fraction_of_side": s_px / size}, self._gauss(s_px, grey))
                         for s224, s_px in zip(sigmas, sigmas_px)]
            rows, hits = [], []
            for level, extra, transform in steps:
                scores = ctx.scores(ds, transform, desc=f"{self.name} {curve} {level_label(level)}")
                hits.append(top1_predictions(scores) == ds.labels.cpu())
                rows.append(accuracy_row(level, int(hits[-1].sum()), len(ds),
                                         top5=correct_count(scores, ds.labels, 5) / len(ds), curve=curve, **extra))
            levels[curve] = rows
            correct[curve] = torch.stack(hits, dim=1)
        if not levels:
            raise BlockMAEError(f"no {self.name} curve has a filtered level at {size} px: " + "; ".join(notes))
        summary, lines = self._summarise(levels, correct, chance, ds, size, notes)
        self._figures(ctx, levels, chance, summary)
        settings = {"filter": self.keep, "curves": list(levels), "sigmas_224": sigmas, "sigmas_px": sigmas_px,
                    "radii_nyquist": radii, "dropped_levels": notes, "image_size": size, "num_images": len(ds),
                    "chance": chance, "mean_grey": filters.MEAN_GREY}
        return DiagnosticResult(settings, levels, summary, lines)

    def _levels_at(self, size: int, sigmas: list[float], radii: list[float],
                   curves: list[str]) -> tuple[list[float], list[float], list[str]]:
        """The levels that filter something at `size` px, and a note per level left out.

        A default level without a counterpart at this size is dropped with a note; a level the user asked
        for (not the defaults) is refused in one line, as it would show the model the clean (low-pass) or a
        blank (high-pass) image and report it as filtered."""
        notes: list[str] = []
        kept_sigmas = [s for s in sigmas if filters.gaussian_level_exists(s, size)]
        missing = [s for s in sigmas if s not in kept_sigmas]
        gaussian_curves = [c for c in curves if c != "fourier"]
        if missing and gaussian_curves:
            floor = filters.smallest_existing_sigma_224(size)
            if list(sigmas) != list(self.sigmas_224):
                raise BlockMAEError(
                    f"--sigmas {' '.join(level_label(s) for s in missing)}: at {size} px these scale below "
                    f"{floor * size / 224:.2f} px and filter nothing (the clean image for a low-pass, a blank one for a "
                    f"high-pass); use sigmas >= {floor:g} at this size (docs/diagnostics.md, 'Levels')")
            notes.append(f"sigma {', '.join(level_label(s) for s in missing)} (at 224 px) dropped: below {floor:g} it "
                         f"scales to under {floor * size / 224:.2f} px at {size} px and changes the finest detail by "
                         f"less than 10%")
        if len(kept_sigmas) < 2 and gaussian_curves:
            notes.append(f"no filtered Gaussian level exists at {size} px: the {', '.join(gaussian_curves)} "
                         f"curve{'s' if len(gaussian_curves) > 1 else ''} left out")
        kept_radii, dropped_radii = filters.fourier_levels(radii, size, self.keep)
        if dropped_radii and "fourier" in curves:
            if list(radii) != list(self.radii):
                raise BlockMAEError("--radii " + "; ".join(f"{r:g} {why}" for r, why in dropped_radii))
            notes += [f"radius {r:g} dropped: {why}" for r, why in dropped_radii]
        return kept_sigmas, kept_radii, notes

    def _gauss(self, sigma: float, grey: bool) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        return lambda images, index: self.gaussian(images, sigma, grey)

    def _fourier(self, radius: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        return lambda images, index: filters.fourier_filter(images, radius, self.keep)

    def _summarise(self, levels: dict[str, list[dict[str, Any]]], correct: dict[str, torch.Tensor], chance: float,
                   ds: Any, size: int, notes: list[str]) -> tuple[dict[str, Any], list[str]]:
        summary: dict[str, Any] = {}
        lines = [f"{self.name} on {len(ds)} {ds.name} images at {size} px, chance {chance:.3f} "
                 f"(top-1, 95% Wilson interval; auc_norm: area of (acc - chance)/(clean - chance), 1 = no loss; "
                 f"AUC intervals: bootstrap over images)"]
        lines += [f"  note: {note}" for note in notes]
        for curve, rows in levels.items():
            s = curve_summary([r["level"] for r in rows], [r["top1"] for r in rows], chance)
            s.update(auc_intervals(correct[curve].numpy(), chance))
            for row, norm in zip(rows, normalised([r["top1"] for r in rows], s["clean"], chance)):
                row["relative"] = row["top1"] / s["clean"] if s["clean"] > 0 else math.nan
                row["normalised"] = norm
            summary.update({f"{curve}_auc": s["auc"], f"{curve}_auc_normalised": s["auc_normalised"],
                            f"{curve}_auc_low": s["auc_low"], f"{curve}_auc_high": s["auc_high"],
                            f"{curve}_auc_normalised_low": s["auc_normalised_low"],
                            f"{curve}_auc_normalised_high": s["auc_normalised_high"],
                            f"{curve}_clean": s["clean"], f"{curve}_half_level": s["half_level"],
                            f"{curve}_half_fraction": s["half_level"] / size if curve != "fourier" else s["half_level"],
                            f"{curve}_mean_relative": s["mean_relative"], f"{curve}_last_relative": s["last_relative"]})
            if not s["half_reached"]:
                half = "not reached"
            elif curve == "fourier":
                half = f"radius {s['half_level']:.3g} x Nyquist"
            else:
                half = f"sigma {s['half_level']:.3g} px = {s['half_level'] / size:.4f} of the side"
            lines.append(f"  {curve:9s} " + "  ".join(
                f"{level_label(r.get('sigma_224', r['level']))}:{r['top1']:.3f}[{r['top1_low']:.3f},{r['top1_high']:.3f}]"
                for r in rows) + f"   auc {s['auc']:.3f} [{s['auc_low']:.3f}, {s['auc_high']:.3f}]  auc_norm "
                f"{s['auc_normalised']:.3f} [{s['auc_normalised_low']:.3f}, {s['auc_normalised_high']:.3f}]  half-way at {half}")
        human = self._human_rows(levels)
        if human is not None:
            h = human_auc(human)
            summary.update(h)
            lines.append(f"  humans at the same levels (normalised, levels as fractions of the side): auc_norm "
                         f"{h['human_auc_normalised']:.3f} [{h['human_auc_normalised_low']:.3f}, "
                         f"{h['human_auc_normalised_high']:.3f}] vs greyscale {summary['greyscale_auc_normalised']:.3f} "
                         f"[{summary['greyscale_auc_normalised_low']:.3f}, {summary['greyscale_auc_normalised_high']:.3f}]")
        first = next(iter(levels))
        ordered = {"clean_top1": levels[first][0]["top1"]}
        ordered.update({k: summary[k] for k in summary if k.endswith("auc_normalised")})
        ordered.update(summary)
        return ordered, lines

    def _human_rows(self, levels: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]] | None:
        """Model (greyscale curve) and human normalised accuracy per level, where humans were tested there."""
        rows = levels.get("greyscale")
        if rows is None:
            return None
        human = human_curve(self.human_experiment, [r["sigma_224"] for r in rows])
        if human is None:
            return None
        model_norm = [r["normalised"] for r in rows]  # set by _summarise: against the curve's own clean
        human_norm = normalised([h["accuracy"] for h in human], human[0]["accuracy"], human[0]["chance"])
        return [{"level": r["level"], "sigma_224": r["sigma_224"], "fraction_of_side": r["fraction_of_side"],
                 "model_top1": r["top1"], "model_normalised": m, "human_accuracy": h["accuracy"],
                 "human_trials": h["trials"], "human_chance": h["chance"], "human_normalised": hn,
                 "human_source": h["source"]}
                for r, m, h, hn in zip(rows, model_norm, human, human_norm)]

    def _figures(self, ctx: Context, levels: dict[str, list[dict[str, Any]]], chance: float,
                 summary: dict[str, Any]) -> None:
        gaussian = {c: rows for c, rows in levels.items() if c != "fourier"}
        if gaussian:
            rows = [dict(r, label=level_label(r["sigma_224"])) for c in gaussian for r in gaussian[c]]
            labelled = {c: [dict(r, label=level_label(r["sigma_224"])) for r in rs] for c, rs in gaussian.items()}
            fig = accuracy_figure(labelled, chance, f"{self.name}: Gaussian, {ctx.image_size} px input",
                                  "sigma in px at 224 px (scaled x size/224)")
            ctx.save_figure(f"{self.name}_gaussian", fig, rows)
        if "fourier" in levels:
            fig = accuracy_figure({"fourier": levels["fourier"]}, chance, f"{self.name}: Fourier (Wang et al. 2020)",
                                  "radius / Nyquist")
            ctx.save_figure(f"{self.name}_fourier", fig, levels["fourier"])
        human = self._human_rows(levels)
        if human is not None:
            fig = human_comparison_figure(human, f"{self.name}, greyscale protocol: encoder vs humans")
            ctx.save_figure(f"{self.name}_vs_human", fig, human)


add_arguments, run = command(Lowpass)
