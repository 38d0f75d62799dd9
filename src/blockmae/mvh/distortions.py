"""model-vs-human's twelve parametric distortions, applied by blockmae to any images at their levels.

colour, contrast, high-pass, low-pass, phase-scrambling, power-equalisation, false-colour, rotation,
uniform-noise (`blockmae.diagnostics.filters`) and eidolonI/II/III (`blockmae.diagnostics.eidolon`), with
model-vs-human's levels and their spellings (`blockmae.mvh.conditions`). Gaussian sigmas are given at 224 px
and scaled to the image size (x size / 224); eidolon reach and grain are given at 256 px, the Eidolon
toolbox's working size, and the image is worked on at that size; the other levels do not depend on it.
Two distortions rest on measurements of model-vs-human's set-up that it keeps as files: power
equalisation's target spectrum (its mean over its own images, `mean_power_spectrum_grey.npy`; without it,
the mean over the images distorted) and false colour's monitor gamma table (`x_gamma_function.npy`; without
it, a standard sRGB display). Given those files, the recipe is model-vs-human's.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from blockmae.diagnostics import filters
from blockmae.diagnostics.eidolon import eidolon
from blockmae.errors import BlockMAEError
from blockmae.mvh.conditions import LEVELS

DISTORTIONS = ("colour", "contrast", "high-pass", "low-pass", "phase-scrambling", "power-equalisation",
               "false-colour", "rotation", "uniform-noise", "eidolonI", "eidolonII", "eidolonIII")


def levels(name: str) -> tuple[str, ...]:
    """The distortion's conditions as model-vs-human names them, least distorted first."""
    if name not in DISTORTIONS:
        raise BlockMAEError(f"blockmae cannot apply distortion {name!r}; choose among {', '.join(DISTORTIONS)}")
    return LEVELS[name].conditions


def _array_file(path: str | Path, what: str) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise BlockMAEError(f"{what} {path}: not a readable .npy array ({err})") from None
    if not np.issubdtype(array.dtype, np.number) or not np.isfinite(array).all():
        raise BlockMAEError(f"{what} {path}: expected finite numbers, got dtype {array.dtype}")
    return array.astype(np.float64)


def load_amplitude_spectrum(path: str | Path) -> torch.Tensor:
    """Power equalisation's target from a file in model-vs-human's form (its `mean_power_spectrum_grey.npy`: the
    (size, size) mean amplitude spectrum of greyscale images in [0, 1], zero frequency centred), uncentred."""
    array = _array_file(path, "power spectrum")
    if array.ndim != 2 or array.shape[0] != array.shape[1] or (array < 0).any():
        raise BlockMAEError(f"power spectrum {path}: expected a square array of amplitudes >= 0 (one per "
                            f"frequency of the images), got shape {array.shape}")
    return torch.fft.ifftshift(torch.from_numpy(array))


def load_gamma_table(path: str | Path) -> torch.Tensor:
    """False colour's monitor table from a file in model-vs-human's form (its `x_gamma_function.npy`: the light
    output in [0, 1] of each 8-bit value, increasing)."""
    array = _array_file(path, "gamma table").reshape(-1)
    if array.shape != (256,) or (np.diff(array) <= 0).any() or array.min() < 0 or array.max() > 1:
        raise BlockMAEError(f"gamma table {path}: expected 256 increasing values in [0, 1], got {array.size} "
                            f"values in [{array.min():.3g}, {array.max():.3g}]")
    return torch.from_numpy(array)


def needs_amplitude(name: str, condition: str) -> bool:
    """Whether `distort` needs the images' mean amplitude spectrum for this level."""
    return name == "power-equalisation" and condition == "pow"


def distort(name: str, condition: str, images: torch.Tensor, generator: torch.Generator | None = None,
            amplitude: torch.Tensor | None = None, gamma_table: torch.Tensor | None = None) -> torch.Tensor:
    """`images` (B, 3, H, W) float in [0, 1] under distortion `name` at level `condition`.

    `generator` draws the noise of uniform-noise, phase-scrambling and the eidolons; `amplitude` (H, W) is
    power equalisation's target spectrum (`load_amplitude_spectrum`, or `filters.mean_amplitude_spectrum` of
    the images distorted); `gamma_table` false colour's monitor table (`load_gamma_table`; None: sRGB)."""
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
        try:
            return filters.phase_scramble(images, float(condition), generator)
        except ValueError as err:  # an odd image size: the recipe is defined for even ones
            raise BlockMAEError(str(err)) from None
    if name == "power-equalisation":
        if condition == "0":
            return filters.grey3(images)
        if amplitude is None:
            raise ValueError("power equalisation needs the mean amplitude spectrum")
        return filters.power_equalise(images, amplitude)
    if name == "false-colour":
        return images.clone() if condition == "True" else filters.false_colour(images, gamma_table)
    if name.startswith("eidolon"):
        reach, coherence, grain = condition.split("-")  # e.g. "8-3-10": reach 8, coherence 0.3, grain 10
        return eidolon(images, float(reach), int(coherence) / 10, float(grain), generator)
    if name == "rotation":
        return filters.rotate(images, int(condition))
    return filters.uniform_noise(images, float(condition), generator)
