"""`blockmae eval highpass`: linear-probe accuracy under high-pass filtering (the low-pass sweep's shape).

Gaussian high-pass = image minus its blur (constant padding at the mean grey), shifted so that its mean is
the grey, clipped; model-vs-human's sigmas (inf = unfiltered, 3 ... 0.4 px at 224 px, scaled x size/224)
in colour and in their greyscale protocol; Fourier high-pass keeps the frequencies outside a radius
(fraction of Nyquist), mean shifted to the grey. The greyscale curve is drawn beside the human one.
"""

from __future__ import annotations

import torch

from blockmae.diagnostics import filters
from blockmae.diagnostics.lowpass import Lowpass
from blockmae.diagnostics.runner import command


class Highpass(Lowpass):
    name = "highpass"
    description = "accuracy under Gaussian and Fourier high-pass filtering, beside humans"
    keep = "high"
    sigmas_224 = filters.HIGHPASS_SIGMAS_224
    radii = filters.FOURIER_HIGHPASS_RADII
    human_experiment = "high-pass"

    def gaussian(self, images: torch.Tensor, sigma: float, grey: bool) -> torch.Tensor:
        return filters.gaussian_highpass(images, sigma, grey)


add_arguments, run = command(Highpass)
