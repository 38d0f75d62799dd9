"""Eidolons: partially coherent disarray (Koenderink, van Doorn, Gegenfurtner & Wagemans, "Eidolons: Novel
stimuli for vision research", JoV 2017), the distortion of model-vs-human's eidolonI, eidolonII and eidolonIII
(coherence 1.0, 0.3 and 0.0; grain 10; reach 1 to 128).

The greyscale image is cut into difference-of-Gaussian slices over the scales sigma_k = 2^(k/2) / sqrt(2),
k = 0 .. K-1 (D_k = G_k - G_(k+1), the last slice the coarsest blur itself), which sum back to the image
blurred at sigma_0. Every slice is displaced by its own random field and the displaced slices are summed.
The field of slice k (one for rows, one for columns) is

    d_k = (1 - coherence) * n_k + sum_(j >= k) (sigma_j / sigma_max) m_j

n_k: white noise blurred at the grain and standardised, drawn anew for each slice (incoherent: local jitter
of that scale's receptive fields); m_j: white noise blurred at sigma_j and standardised, shared by every
finer slice (coherent: a coarse slice drags the finer ones along, so contours bend rather than break).
A pixel of slice k takes the slice's value at its position + reach * d_k, rounded down and clamped to the
working plane.

Geometry as the Eidolon toolbox's Python port runs it for model-vs-human (its wrapper's size 256): the image
is resampled so that its long side is 256 px and mirrored into a plane of the next power of two of 1.5 times
that (512 px), the scales run from 1/sqrt(2) to 32 px (K = 12, sigma_max = 256 / 4), and the centre is
cropped, clipped and quantised to 8 bits, then resampled back to the input size. Reach and grain are in
pixels of the 256-px image, so an image of any size is distorted alike relative to its width.

Coherence means what model-vs-human's wrapper documents ("1 = full coherence"): the incoherent jitter weighs
1 - coherence. The port as published weighs it by the number passed instead, and model-vs-human's wrapper
passes its coherence through, to a port it says it patched (a bug-fix pull request, not published with it).
Its human observers agree only with the documented reading: their accuracy falls fastest for eidolonIII
(coherence 0), e.g. 0.69, 0.56 and 0.41 at reach 8 for eidolonI, II and III (docs/mvh.md).
Two smaller differences from the port: blurring is a 2-d circular convolution (the port convolves the
flattened plane, which wraps rows into each other at the left and right borders of the 512-px plane, far
from the crop), and the noise planes are standardised, (c - mean) / std, as the paper defines them (the
port computes c - mean / std). model-vs-human's eidolon images are not in this project's data, so the
stimuli are not compared pixel for pixel.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from blockmae.diagnostics.filters import greyscale, symmetric_pad

WORKING_SIZE = 256  # the long side at which the toolbox works, and in whose pixels reach and grain are given
MIN_SIGMA = 1 / math.sqrt(2)
SIGMA_FACTOR = math.sqrt(2)
MAX_SIGMA = WORKING_SIZE / 4


def scale_levels() -> list[float]:
    """The scales of the difference-of-Gaussian slices, finest first (12 at the working size)."""
    count = math.ceil(2 * math.log2(MAX_SIGMA))
    return [MIN_SIGMA * SIGMA_FACTOR**k for k in range(count)]


def plane_size(side: int) -> int:
    """The side of the mirrored working plane: the power of two at least 1.5 x `side`."""
    return 1 << math.ceil(math.log2(1.5 * side))


def working_shape(h: int, w: int) -> tuple[int, int]:
    """(H, W) resampled so that the long side is the working size, the aspect ratio kept."""
    if w >= h:
        return round(h / w * WORKING_SIZE), WORKING_SIZE
    return WORKING_SIZE, round(w / h * WORKING_SIZE)


@functools.lru_cache(maxsize=64)
def gaussian_transfer(sigma: float, h: int, w: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """rfft2 of the periodic (H, W) Gaussian kernel of `sigma` px, sampled and scaled by 1 / (sqrt(2 pi) sigma)
    per axis (the toolbox's continuous normalisation, not a sum of 1). Cached: every image reuses them."""
    def axis(n: int) -> torch.Tensor:
        v = torch.fft.fftfreq(n, d=1.0 / n, device=device).abs()  # circular distances 0, 1, .., n/2, .., 1
        return torch.exp(-(v**2) / (2 * sigma**2)) / (math.sqrt(2 * math.pi) * sigma)

    return torch.fft.rfft2(axis(h).view(-1, 1) * axis(w).view(1, -1))


def _scale_transfers(h: int, w: int, device: torch.device | str) -> torch.Tensor:
    return torch.stack([gaussian_transfer(s, h, w, device) for s in scale_levels()])


def _blur(planes: torch.Tensor, transfer: torch.Tensor) -> torch.Tensor:
    return torch.fft.irfft2(torch.fft.rfft2(planes) * transfer, s=planes.shape[-2:])


def _standardised(planes: torch.Tensor) -> torch.Tensor:
    mean = planes.mean(dim=(-2, -1), keepdim=True)
    return (planes - mean) / planes.std(dim=(-2, -1), correction=0, keepdim=True)


def displacement_fields(coherence: float, grain: float, shape: tuple[int, int], generator: torch.Generator,
                        device: torch.device | str = "cpu", axes: int = 1) -> torch.Tensor:
    """(axes, K, H, W) partially coherent displacement fields of the K slices, in units of the reach: one set
    per axis displaced (rows, columns), drawn independently."""
    h, w = shape
    scale = torch.tensor([s / MAX_SIGMA for s in scale_levels()], device=device).view(-1, 1, 1)

    def noise() -> torch.Tensor:
        return torch.randn((axes, len(scale), h, w), generator=generator, dtype=torch.float32).to(device)

    coarse = _standardised(_blur(noise(), _scale_transfers(h, w, device))) * scale
    fields = coarse.flip(1).cumsum(1).flip(1)  # slice k: the sum over its own and every coarser scale
    if coherence < 1:
        fields = fields + (1 - coherence) * _standardised(_blur(noise(), gaussian_transfer(grain, h, w, device)))
    return fields


def _disarray(plane: torch.Tensor, reach: float, coherence: float, grain: float,
              generator: torch.Generator) -> torch.Tensor:
    """One mirrored (H, W) working plane (grey values 0..255) disarrayed: the sum of its displaced slices."""
    h, w = plane.shape
    blurred = torch.fft.irfft2(torch.fft.rfft2(plane) * _scale_transfers(h, w, plane.device), s=(h, w))
    slices = torch.cat([blurred[:-1] - blurred[1:], blurred[-1:]])
    to_row, to_col = reach * displacement_fields(coherence, grain, (h, w), generator, plane.device, axes=2)
    to_row = to_row + torch.arange(h, device=plane.device, dtype=torch.float32).view(1, -1, 1)
    to_col = to_col + torch.arange(w, device=plane.device, dtype=torch.float32).view(1, 1, -1)
    source = to_row.clamp(0, h - 1).floor().long() * w + to_col.clamp(0, w - 1).floor().long()
    return slices.flatten(1).gather(1, source.flatten(1)).sum(0).view(h, w)


def _embed(x: torch.Tensor, size: int, before: int, dim: int) -> torch.Tensor:
    """`x` mirrored along `dim` to `size`, `before` of it ahead of the original."""
    radius = size - x.shape[dim] - before  # the larger margin
    return symmetric_pad(x, radius, dim).narrow(dim, radius - before, size)


def eidolon(images: torch.Tensor, reach: float, coherence: float, grain: float,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """`images` (B, 3, H, W) in [0, 1] as greyscale eidolons stacked to three channels, in [0, 1].

    reach: the displacement's scale in pixels of the 256-px working image; coherence in [0, 1]: 1 displaces by
    the coherent field alone, lower values add the incoherent (per-slice) jitter with weight 1 - coherence;
    grain: that jitter's blur in pixels of the working image."""
    if reach < 0 or grain <= 0 or not 0.0 <= coherence <= 1.0:
        raise ValueError(f"eidolon needs reach >= 0, grain > 0 and coherence in [0, 1]; got reach {reach}, "
                         f"grain {grain}, coherence {coherence}")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    b, _, h, w = images.shape
    wh, ww = working_shape(h, w)
    grey = F.interpolate(greyscale(images.float()) * 255, size=(wh, ww), mode="bicubic", antialias=True,
                         align_corners=False).clamp(0, 255).round()  # the toolbox's 8-bit 'L' image
    ph, pw = plane_size(wh), plane_size(ww)
    top, left = (ph - wh) // 2, (pw - ww) // 2
    # mirrored with the edge repeated, as the toolbox embeds (the plane is at most three times the image)
    planes = _embed(_embed(grey, pw, left, 3), ph, top, 2)
    out = torch.stack([_disarray(planes[i, 0], reach, coherence, grain, generator) for i in range(b)])
    crop = out[:, top:top + wh, left:left + ww].clamp(0, 255).floor().unsqueeze(1) / 255
    back = F.interpolate(crop, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
    return back.clamp(0.0, 1.0).to(images.dtype).expand(-1, 3, -1, -1).contiguous()
