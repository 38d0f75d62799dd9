"""model-vs-human's parametric distortions, applied by blockmae to any images at their levels.

Nine of its twelve: colour, contrast, high-pass, low-pass, phase-scrambling, power-equalisation,
false-colour, rotation, uniform-noise, with its levels and their spellings (`blockmae.mvh.conditions`);
the filters are `blockmae.diagnostics.filters`. Gaussian sigmas are given at 224 px and scaled to the
image size (x size / 224); the other levels do not depend on it. Power equalisation's target is the mean
amplitude spectrum of the images distorted (model-vs-human's was the mean over its own stimuli).
The Eidolon distortions (eidolonI/II/III) are left out: they need the Eidolon factory (Koenderink et al.,
JoV 2017), a separate package of its own; their published datasets are still evaluated as they are.
"""

from __future__ import annotations

import math

import torch

from blockmae.diagnostics import filters
from blockmae.errors import BlockMAEError
from blockmae.mvh.conditions import LEVELS

DISTORTIONS = ("colour", "contrast", "high-pass", "low-pass", "phase-scrambling", "power-equalisation",
               "false-colour", "rotation", "uniform-noise")
LEFT_OUT = ("eidolonI", "eidolonII", "eidolonIII")


def levels(name: str) -> tuple[str, ...]:
    """The distortion's conditions as model-vs-human names them, least distorted first."""
    if name not in DISTORTIONS:
        hint = " (the Eidolon factory is not part of blockmae)" if name in LEFT_OUT else ""
        raise BlockMAEError(f"blockmae cannot apply distortion {name!r}{hint}; choose among {', '.join(DISTORTIONS)}")
    return LEVELS[name].conditions


def needs_amplitude(name: str, condition: str) -> bool:
    """Whether `distort` needs the images' mean amplitude spectrum for this level."""
    return name == "power-equalisation" and condition == "pow"


def distort(name: str, condition: str, images: torch.Tensor, generator: torch.Generator | None = None,
            amplitude: torch.Tensor | None = None) -> torch.Tensor:
    """`images` (B, 3, H, W) float in [0, 1] under distortion `name` at level `condition`.

    `generator` draws the noise of uniform-noise and phase-scrambling; `amplitude` (H, W) is power
    equalisation's target spectrum (`filters.mean_amplitude_spectrum` of the images distorted)."""
    if condition not in levels(name):
        raise BlockMAEError(f"{name} has no level {condition!r}; its levels: {', '.join(levels(name))}")
    size = images.shape[-1]
    if name == "colour":
        return images.clone() if condition == "cr" else filters.grey3(images)
    if name == "contrast":
        return filters.contrast(images, int(condition[1:]) / 100)
    if name in ("low-pass", "high-pass"):
        (sigma,) = filters.scale_levels([float(condition)], size)
        if name == "low-pass":
            return filters.gaussian_lowpass(images, sigma, grey=True)
        return filters.gaussian_highpass(images, math.inf if condition == "inf" else sigma, grey=True)
    if name == "phase-scrambling":
        return filters.phase_scramble(images, float(condition), generator)
    if name == "power-equalisation":
        if condition == "0":
            return filters.grey3(images)
        if amplitude is None:
            raise ValueError("power equalisation needs the mean amplitude spectrum")
        return filters.power_equalise(images, amplitude)
    if name == "false-colour":
        return images.clone() if condition == "True" else filters.false_colour(images)
    if name == "rotation":
        return filters.rotate(images, int(condition))
    return filters.uniform_noise(images, float(condition), generator)
