"""Image filters of the diagnostics, batched on tensors on the device (never one image at a time).

All take and return float images (B, C, H, W) in [0, 1].

* Gaussian blur as scipy.ndimage.gaussian_filter computes it (sampled kernel, truncated at 4 sigma,
  normalised to sum 1, separable), with constant padding at `cval` (model-vs-human's mean grey
  0.4423) or reflection.
* model-vs-human's protocols (Geirhos et al., NeurIPS 2018; the model-vs-human toolbox, NeurIPS 2021):
  greyscale by luminance (skimage's rgb2gray weights 0.2125, 0.7154, 0.0721), low-pass = Gaussian blur
  with constant padding at the grey, clipped; high-pass = image minus its blur, shifted so that its mean
  is the grey, clipped; the grey image is stacked to three channels. Their sigmas are given in pixels
  at 224 px: :func:`scale_levels` scales them to the input size.
* Fourier low- and high-pass (Wang et al., "High-frequency component helps explain the generalization
  of convolutional neural networks", CVPR 2020): per channel, keep the frequencies inside (low) or
  outside (high) a circle on the centred spectrum. The radius is a fraction of the Nyquist frequency
  (0.5 cycles per pixel), so 32 px and 64 px images are filtered alike; radius >= sqrt(2) keeps every
  frequency. High-pass output gets the Gaussian high-pass's treatment: mean shifted to the grey, clipped.
* Levels that exist at an input size (:func:`gaussian_level_exists`, :func:`fourier_levels`): a 224-px
  sigma scaled below about half a pixel samples to a kernel that is nearly a delta, so low-pass shows the
  clean image and high-pass a blank one; the band that level filters (finer than the image's Nyquist
  frequency) does not exist at that size. A Gaussian level counts only where its sampled kernel changes
  the finest frequency the image holds by at least 10% (response at Nyquist at most 0.9; the mildest of
  model-vs-human's own levels at 224 px, high-pass sigma 0.4, changes it by 16%); a Fourier radius counts only where it keeps another set of
  frequency bins than the level before it, and not only the mean (docs/diagnostics.md, "Levels").
* Amplitude-phase recombination (:func:`amplitude_swap`): an image's Fourier phase (layout, edges,
  shape) with an amplitude spectrum (texture statistics) interpolated towards a donor's.
* The rest of model-vs-human's parametric distortions (Geirhos et al., NeurIPS 2018, its
  image-manipulation definitions), all on the greyscale image stacked to three channels unless said:
  contrast c: (1 - c) / 2 + c x; uniform noise of width w: contrast 0.3, plus U(-w, w) per pixel,
  clipped; phase scrambling of width w degrees: every frequency's phase shifted by U(-w, w), the
  bins paired as model-vs-human's recipe pairs them (:func:`phase_scramble`), clipped; power
  equalisation: the amplitude spectrum replaced by a given mean one (model-vs-human's mean over its
  images, or the caller's), clipped; rotation by multiples of 90 degrees (counter-clockwise); false colour
  (colour): through a monitor's gamma table to light, the opponent colours L-M and S-(L+M) inverted in the
  DKL space through the cone matrix of their monitor, clipped, back through the table to 8-bit values.
  Eidolons are in `blockmae.diagnostics.eidolon`.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

MEAN_GREY = 0.4423  # model-vs-human's mean pixel value, the padding and the grey of the high-pass images
LUMINANCE = (0.2125, 0.7154, 0.0721)  # skimage.color.rgb2gray, used by model-vs-human
REFERENCE_SIZE = 224  # the image side at which model-vs-human's sigmas are given

# model-vs-human's levels (sigma in pixels at 224 px); high-pass inf = unfiltered.
LOWPASS_SIGMAS_224: tuple[float, ...] = (0, 1, 3, 5, 7, 10, 15, 40)
HIGHPASS_SIGMAS_224: tuple[float, ...] = (math.inf, 3, 1.5, 1, 0.7, 0.55, 0.45, 0.4)
# Fourier radii as fractions of Nyquist; the first level keeps everything (the clean image).
FOURIER_LOWPASS_RADII: tuple[float, ...] = (math.inf, 0.75, 0.5, 0.35, 0.25, 0.15, 0.1, 0.05)
FOURIER_HIGHPASS_RADII: tuple[float, ...] = (0.0, 0.05, 0.1, 0.15, 0.25, 0.35, 0.5, 0.75)


# A Gaussian level exists at a size when its kernel's response to the Nyquist frequency is at most this
# (every one of model-vs-human's levels does at 224 px: the mildest, high-pass sigma 0.4, responds 0.84).
NYQUIST_RESPONSE_LIMIT = 0.9


def nyquist_response(sigma: float) -> float:
    """Response of scipy's sampled Gaussian (sigma in pixels) to the finest frequency an image holds,
    0.5 cycles per pixel (alternating pixels): sum_k w_k (-1)^k. 1 = passed unchanged, 0 = removed."""
    if sigma == 0:
        return 1.0
    if math.isinf(sigma):
        return 0.0
    kernel = gaussian_kernel(sigma)
    radius = (kernel.numel() - 1) // 2
    signs = 1.0 - 2.0 * (torch.arange(-radius, radius + 1, dtype=torch.float64).abs() % 2)
    return float((kernel * signs).sum())


def gaussian_level_exists(sigma_224: float, size: int) -> bool:
    """Whether model-vs-human's level `sigma_224` (pixels at 224 px) filters anything at `size` px.

    The unfiltered levels (0 for low-pass, inf for high-pass) always exist. A filtered level exists when
    the scaled kernel (sigma_224 x size / 224) responds to the Nyquist frequency with at most
    NYQUIST_RESPONSE_LIMIT: the low-pass removes, the high-pass keeps, at least a tenth of the finest detail."""
    if sigma_224 == 0 or math.isinf(sigma_224):
        return True
    return nyquist_response(scale_levels([sigma_224], size)[0]) <= NYQUIST_RESPONSE_LIMIT


def smallest_existing_sigma_224(size: int) -> float:
    """The smallest sigma at 224 px that exists at `size` px (to two decimals, rounded up)."""
    sigma = 0.01
    while not gaussian_level_exists(sigma, size):
        sigma = round(sigma + 0.01, 2)
    return sigma


def fourier_levels(radii: Sequence[float], size: int, keep: str) -> tuple[list[float], list[tuple[float, str]]]:
    """The radii (fractions of Nyquist) that filter distinctly at `size` px, and the others with why.

    A radius is dropped when the frequency bins it keeps equal those of the last level kept (the images
    would be identical) or, for a low-pass, when it keeps only the mean (a flat image)."""
    rho = frequency_radius(size, size)
    kept: list[float] = []
    dropped: list[tuple[float, str]] = []
    previous = None
    for radius in radii:
        bins = rho <= radius if keep == "low" else rho > radius
        if keep == "low" and int(bins.sum()) <= 1:
            dropped.append((radius, f"keeps only the mean at {size} px (a flat image)"))
        elif previous is not None and torch.equal(bins, previous):
            dropped.append((radius, f"keeps the same frequencies as radius {kept[-1]:g} at {size} px"))
        else:
            kept.append(radius)
            previous = bins
    return kept, dropped


def scale_levels(sigmas_224: Sequence[float], size: int) -> list[float]:
    """Sigmas given at 224 px for images of `size` px (x size / 224; 0 and inf stay)."""
    return [float(s) * size / REFERENCE_SIZE for s in sigmas_224]


def gaussian_kernel(sigma: float, truncate: float = 4.0, device: torch.device | str = "cpu") -> torch.Tensor:
    """scipy.ndimage's 1-d Gaussian: radius int(truncate * sigma + 0.5), sampled, normalised (float64)."""
    radius = int(truncate * float(sigma) + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    weights = torch.exp(-0.5 * (x / sigma) ** 2)
    return weights / weights.sum()


def gaussian_blur(images: torch.Tensor, sigma: float, mode: str = "constant", cval: float = MEAN_GREY,
                  truncate: float = 4.0) -> torch.Tensor:
    """Separable Gaussian blur of every channel (scipy.ndimage.gaussian_filter over H and W).

    mode "constant" pads with `cval`, "reflect" mirrors the edge (scipy's reflect: edge pixel repeated).
    sigma 0 returns the images unchanged."""
    if sigma < 0 or not math.isfinite(sigma):
        raise ValueError(f"sigma must be finite and >= 0, got {sigma}")
    if sigma == 0:
        return images.clone()
    b, c, h, w = images.shape
    kernel = gaussian_kernel(sigma, truncate, images.device).to(images.dtype)
    radius = (kernel.numel() - 1) // 2
    x = images.reshape(b * c, 1, h, w)
    for dim in (3, 2):  # along W, then along H
        if mode == "constant":
            pad = (radius, radius, 0, 0) if dim == 3 else (0, 0, radius, radius)
            x = F.pad(x, pad, mode="constant", value=cval)
        elif mode == "reflect":
            x = symmetric_pad(x, radius, dim)
        else:
            raise ValueError(f"mode must be constant or reflect, not {mode!r}")
        weight = kernel.view(1, 1, 1, -1) if dim == 3 else kernel.view(1, 1, -1, 1)
        x = F.conv2d(x, weight)
    return x.reshape(b, c, h, w)


def symmetric_pad(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """scipy's 'reflect' (d c b a | a b c d | d c b a), for any radius (repeats the mirrored image)."""
    n = x.shape[dim]
    index = torch.arange(-radius, n + radius, device=x.device)
    period = 2 * n
    index = index % period
    index = torch.where(index >= n, period - 1 - index, index)
    return x.index_select(dim, index)


def greyscale(images: torch.Tensor) -> torch.Tensor:
    """Luminance (B, 1, H, W) of RGB images (skimage's rgb2gray weights)."""
    weights = torch.tensor(LUMINANCE, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def _stack3(grey: torch.Tensor) -> torch.Tensor:
    return grey.expand(-1, 3, -1, -1).contiguous()


def gaussian_lowpass(images: torch.Tensor, sigma: float, grey: bool = False) -> torch.Tensor:
    """Low-pass: blur with constant padding at the mean grey, clipped; `grey`: model-vs-human's protocol
    (luminance first, the result stacked to three channels)."""
    x = greyscale(images) if grey else images
    x = gaussian_blur(x, sigma, mode="constant", cval=MEAN_GREY).clamp_(0.0, 1.0)
    return _stack3(x) if grey else x


def shift_to_grey(images: torch.Tensor) -> torch.Tensor:
    """Shift each image channel so its mean is the mean grey, then clip (the high-pass images' rule)."""
    return (images + (MEAN_GREY - images.mean(dim=(2, 3), keepdim=True))).clamp_(0.0, 1.0)


def gaussian_highpass(images: torch.Tensor, sigma: float, grey: bool = False) -> torch.Tensor:
    """High-pass: image minus its blur (constant padding at the grey), mean shifted to the grey, clipped.

    sigma inf returns the (greyscale, when `grey`) image unfiltered."""
    x = greyscale(images) if grey else images
    if math.isinf(sigma):
        out = x.clone()
    else:
        out = shift_to_grey(x - gaussian_blur(x, sigma, mode="constant", cval=MEAN_GREY))
    return _stack3(out) if grey else out


def frequency_radius(h: int, w: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(H, W) distance of each FFT bin from zero frequency, as a fraction of Nyquist (0.5 cycles/px)."""
    fy = torch.fft.fftfreq(h, device=device).view(-1, 1)
    fx = torch.fft.fftfreq(w, device=device).view(1, -1)
    return torch.sqrt(fy**2 + fx**2) / 0.5


def fourier_filter(images: torch.Tensor, radius: float, keep: str = "low") -> torch.Tensor:
    """Keep the frequencies with |f| <= radius x Nyquist (keep="low") or > it (keep="high"), per channel.

    Low-pass output is clipped to [0, 1]; high-pass output is shifted to the mean grey and clipped."""
    if keep not in ("low", "high"):
        raise ValueError(f"keep must be low or high, not {keep!r}")
    h, w = images.shape[-2:]
    rho = frequency_radius(h, w, images.device)
    mask = rho <= radius if keep == "low" else rho > radius
    spectrum = torch.fft.fft2(images.to(_fft_dtype(images.device)))
    out = torch.fft.ifft2(spectrum * mask).real.to(images.dtype)
    return out.clamp_(0.0, 1.0) if keep == "low" else shift_to_grey(out)


def _fft_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


def amplitude_swap(images: torch.Tensor, donors: torch.Tensor, alpha: float) -> torch.Tensor:
    """Keep each image's Fourier phase, interpolate its amplitude towards the donor's, per channel:
    amplitude = (1 - alpha) |F(image)| + alpha |F(donor)|, phase = angle F(image).

    alpha 0 returns the images unchanged; alpha 1 is the donor's amplitude with the image's phase.
    Both amplitude spectra are those of real images (symmetric), so the result is real. It is not
    clipped (clipping would alter the phase): values may leave [0, 1] a little."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if images.shape != donors.shape:
        raise ValueError(f"images {tuple(images.shape)} and donors {tuple(donors.shape)} differ in shape")
    if alpha == 0:
        return images.clone()
    dtype = _fft_dtype(images.device)
    spectrum = torch.fft.fft2(images.to(dtype))
    amplitude = (1 - alpha) * spectrum.abs() + alpha * torch.fft.fft2(donors.to(dtype)).abs()
    mixed = torch.polar(amplitude, spectrum.angle())
    return torch.fft.ifft2(mixed).real.to(images.dtype)


# -- the rest of model-vs-human's parametric distortions ---------------------------------------------

UNIFORM_NOISE_CONTRAST = 0.3  # uniform-noise images are first reduced to 30% contrast
# false colour: RGB -> LMS cone activations of model-vs-human's monitor, its white point, and LMS -> DKL
# opponent channels (Brainard 1996); facts of their set-up (Geirhos et al. 2018)
RGB_TO_CONES = ((0.1619982647, 0.208049264, 0.0389347448),
                (0.0330275785, 0.2496504557, 0.0618343518),
                (0.0015524055, 0.0198861001, 0.1890224274))
CONES_WHITE_POINT = (0.20449114, 0.17225619, 0.10523047)
CONES_TO_DKL = ((9.27590805, 9.27590805, 0.0),
                (7.86421647, -9.33587662, 0.0),
                (-3.39709047, -3.39709047, 12.16230246))


def grey3(images: torch.Tensor) -> torch.Tensor:
    """The luminance image stacked to three channels (model-vs-human's greyscale stimuli)."""
    return _stack3(greyscale(images))


def contrast(images: torch.Tensor, level: float) -> torch.Tensor:
    """Greyscale at contrast `level` in [0, 1]: (1 - level) / 2 + level x (1 = unchanged grey image)."""
    if not 0.0 <= level <= 1.0:
        raise ValueError(f"contrast level must lie in [0, 1], got {level}")
    return (1 - level) / 2 + level * grey3(images)


def uniform_noise(images: torch.Tensor, width: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Greyscale at 30% contrast plus uniform noise in [-width, width] per pixel (one draw for the three
    channels), clipped."""
    x = contrast(images, UNIFORM_NOISE_CONTRAST)
    b, _, h, w = x.shape
    noise = (torch.rand((b, 1, h, w), generator=generator, device=generator.device if generator else "cpu")
             .to(x.device, x.dtype) * 2 - 1) * width
    return (x + noise).clamp_(0.0, 1.0)


def phase_scramble(images: torch.Tensor, width_degrees: float,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Greyscale, phases shifted as model-vs-human's stimuli were made, clipped (even sizes only).

    On the centred spectrum without its first row and column (n bins, the mean in the middle), the first
    (n - 1) / 2 bins in row-major order are shifted by U(-width, width) degrees and the last (n - 1) / 2 by the
    same draws negated, in the same order; the image is the real part of the inverse transform. The two
    bins of a conjugate pair thus get independent draws a and b, which comes to a phase shift of (a + b) / 2
    and the pair's amplitude times |cos((a - b) / 2)|: the published stimuli lose contrast as the width
    grows (docs/mvh.md), which an exactly conjugate scramble would not."""
    x = greyscale(images)
    b, _, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"phase-scrambling needs even sizes (model-vs-human's recipe is defined for even "
                         f"image sizes); got {h}x{w}")
    n = (h - 1) * (w - 1)
    half = n // 2
    shifts = (torch.rand((b, half), generator=generator, device=generator.device if generator else "cpu")
              .to(x.device, _fft_dtype(x.device)) * 2 - 1) * math.radians(width_degrees)
    block = torch.zeros((b, n), dtype=shifts.dtype, device=x.device)
    block[:, :half] = shifts
    block[:, half + 1:] = -shifts
    phase = torch.zeros((b, 1, h, w), dtype=shifts.dtype, device=x.device)
    phase[:, 0, 1:, 1:] = block.view(b, h - 1, w - 1)
    spectrum = torch.fft.fftshift(torch.fft.fft2(x.to(_fft_dtype(x.device))), dim=(-2, -1))
    rotated = torch.fft.ifftshift(spectrum * torch.polar(torch.ones_like(phase), phase), dim=(-2, -1))
    return _stack3(torch.fft.ifft2(rotated).real.to(images.dtype).clamp_(0.0, 1.0))


def mean_amplitude_spectrum(images: torch.Tensor) -> torch.Tensor:
    """(H, W) mean amplitude spectrum of the greyscale images (power equalisation's target)."""
    return torch.fft.fft2(greyscale(images).to(_fft_dtype(images.device))).abs().mean(dim=(0, 1))


def power_equalise(images: torch.Tensor, amplitude: torch.Tensor) -> torch.Tensor:
    """Greyscale with its amplitude spectrum replaced by `amplitude` (H, W), its phase kept, clipped."""
    x = greyscale(images)
    if tuple(amplitude.shape) != tuple(x.shape[-2:]):
        raise ValueError(f"amplitude spectrum {tuple(amplitude.shape)} does not fit images {tuple(x.shape[-2:])}")
    spectrum = torch.fft.fft2(x.to(_fft_dtype(x.device)))
    mixed = torch.polar(amplitude.to(spectrum.real.device, spectrum.real.dtype).expand_as(spectrum.real), spectrum.angle())
    return _stack3(torch.fft.ifft2(mixed).real.to(images.dtype).clamp_(0.0, 1.0))


def rotate(images: torch.Tensor, degrees: int) -> torch.Tensor:
    """Greyscale rotated counter-clockwise by a multiple of 90 degrees."""
    if degrees % 90:
        raise ValueError(f"rotation must be a multiple of 90 degrees, got {degrees}")
    return torch.rot90(grey3(images), k=(degrees // 90) % 4, dims=(-2, -1))


def srgb_gamma_table() -> torch.Tensor:
    """(256,) light output of a standard sRGB display for each 8-bit value, in [0, 1]: false colour's monitor
    table unless model-vs-human's measured one is given."""
    v = torch.arange(256, dtype=torch.float64) / 255
    return torch.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def false_colour(images: torch.Tensor, gamma_table: torch.Tensor | None = None) -> torch.Tensor:
    """Opponent colours, as model-vs-human made them: each 8-bit value to its monitor's light output
    (`gamma_table`, (256,) increasing; default a standard sRGB display), L-M and S-(L+M) inverted around the
    white point in DKL space, back to RGB, clipped, and each value back to the 8-bit value whose output is
    nearest."""
    table = (srgb_gamma_table() if gamma_table is None else gamma_table).to(images.device, _fft_dtype(images.device))
    dtype = table.dtype
    to_cones = torch.tensor(RGB_TO_CONES, dtype=dtype, device=images.device)
    to_dkl = torch.tensor(CONES_TO_DKL, dtype=dtype, device=images.device)
    white = torch.tensor(CONES_WHITE_POINT, dtype=dtype, device=images.device).view(1, 3, 1, 1)
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=dtype, device=images.device))
    # one linear map on the cone differences: M^-1 N^-1 F N
    cones_map = torch.linalg.inv(to_dkl) @ flip @ to_dkl
    light = table[(images.clamp(0.0, 1.0) * 255).round().long()]
    cones = torch.einsum("ij,bjhw->bihw", to_cones, light) - white
    new_cones = torch.einsum("ij,bjhw->bihw", cones_map, cones) + white
    rgb = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(to_cones), new_cones).clamp_(0.0, 1.0)
    return (nearest_entry(table, rgb).to(images.dtype) / 255)


def nearest_entry(table: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Index of the entry of the increasing `table` nearest to each of `values` (the lower one on a tie)."""
    upper = torch.searchsorted(table, values.contiguous()).clamp_(1, table.numel() - 1)
    lower = upper - 1
    return torch.where((values - table[lower]) <= (table[upper] - values), lower, upper)
