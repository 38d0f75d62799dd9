"""MAE's training augmentation, batched on the batch's device.

RandomResizedCrop (scale 0.2..1, log-uniform aspect ratio 3/4..4/3, torchvision's sampling and
centre-crop fallback) + horizontal flip + normalisation, with per-sample random parameters and
no per-image Python loop.

The crop-and-resize is separable, so each sample is resampled by two small matrices
(rows: ``R_y`` (H_out, H), columns: ``R_x`` (W_out, W)) holding the same antialiased filter
weights torchvision/PIL use (``interpolate(..., antialias=True)``): ``out = R_y @ img @ R_x^T``,
two batched matmuls. That reproduces ``torchvision.transforms.v2.functional.resized_crop`` for
the same box to float precision, for up- and downscaling alike, and the flip is free (reverse
the rows of ``R_x``). ``backend="grid_sample"`` (affine_grid + grid_sample, no antialiasing)
is kept for large images, where dense matrices cost more than a bilinear gather.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from blockmae.errors import BlockMAEError
from blockmae.normalisation import IMAGENET_MEAN, IMAGENET_STD  # noqa: F401  (data.augment's users read them here too)


INTERPOLATIONS = ("bilinear", "bicubic")
BACKENDS = ("matmul", "grid_sample")
_MAX_TABLE_BYTES = 64 * 2**20  # window-matrix lookup tables up to this size (64 px images: 4 MiB)
_MAX_TRIES = 10  # torchvision's RandomResizedCrop attempts before the centre-crop fallback


def _check_uint8_batch(batch: torch.Tensor) -> None:
    if batch.dtype != torch.uint8 or batch.ndim != 4 or batch.shape[1] != 3:
        raise BlockMAEError(
            f"expected a uint8 image batch (B, 3, H, W), got {tuple(batch.shape)} {batch.dtype}; "
            "pass the cached uint8 images, not normalised floats"
        )


def _normalize_coefficients(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), each (3,), with (x / 255 - mean) / std == x * scale + shift."""
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], device=device)
    shift = torch.tensor([-m / s for m, s in zip(mean, std)], device=device)
    return scale, shift


def _normalize_float(
    x: torch.Tensor,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> torch.Tensor:
    """(x / 255 - mean) / std in place on a float (B, 3, H, W) batch in 0..255 units."""
    scale, shift = _normalize_coefficients(mean, std, x.device)
    return x.mul_(scale.view(1, 3, 1, 1)).add_(shift.view(1, 3, 1, 1))


def normalize(
    batch: torch.Tensor,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32 normalised with `mean`/`std`, on the batch's device."""
    _check_uint8_batch(batch)
    return _normalize_float(batch.float(), mean, std)


def denormalize(
    batch: torch.Tensor,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> torch.Tensor:
    """The inverse of `normalize`, as floats in [0, 1] (for figures)."""
    mean_t = torch.as_tensor(mean, dtype=batch.dtype, device=batch.device).view(1, 3, 1, 1)
    std_t = torch.as_tensor(std, dtype=batch.dtype, device=batch.device).view(1, 3, 1, 1)
    return (batch * std_t + mean_t).clamp(0.0, 1.0)


def unit_float(batch: torch.Tensor, image_size: int) -> torch.Tensor:
    """Images as floats in [0, 1] at `image_size` (antialiased bilinear, the evaluation resize): uint8 batches
    are divided by 255, float ones taken as already in [0, 1] (the diagnostics filter these)."""
    x = batch.float().div_(255.0) if batch.dtype == torch.uint8 else batch.float()
    if tuple(x.shape[-2:]) != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp_(0.0, 1.0)


def normalize_unit(
    x: torch.Tensor,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> torch.Tensor:
    """Float images in [0, 1] -> the encoder's input, (x - mean) / std, as `normalize` gives for uint8."""
    return _normalize_float(x * 255.0, mean, std)


def resize_normalize(
    batch: torch.Tensor,
    image_size: int,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> torch.Tensor:
    """Evaluation transform: antialiased bilinear resize to `image_size` (if needed) + normalize."""
    _check_uint8_batch(batch)
    x = batch.float()
    if tuple(x.shape[-2:]) != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    return _normalize_float(x, mean, std)


@dataclass(frozen=True)
class CropParams:
    """Per-sample crop boxes in input pixels (int64, shape (B,)) and flips (bool, (B,))."""

    top: torch.Tensor
    left: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor
    flip: torch.Tensor

    def to(self, device: torch.device | str) -> "CropParams":
        return CropParams(*(t.to(device) for t in (self.top, self.left, self.height, self.width, self.flip)))


def sample_crop_params(
    batch_size: int,
    height: int,
    width: int,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: bool = True,
    generator: torch.Generator | None = None,
) -> CropParams:
    """torchvision's RandomResizedCrop.get_params for a whole batch, on the CPU.

    All 10 candidate boxes of every sample are drawn at once; each sample takes its first valid
    candidate, or torchvision's centre-crop fallback when none is valid. Drawing on the CPU keeps
    the parameters identical whatever device the images are on.
    """
    shape = (batch_size, _MAX_TRIES)
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    target_area = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(shape, generator=generator, dtype=torch.float64))
    aspect = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(shape, generator=generator, dtype=torch.float64))
    # torch.round and Python's round() both round half to even.
    cand_w = torch.round(torch.sqrt(target_area * aspect)).long()
    cand_h = torch.round(torch.sqrt(target_area / aspect)).long()
    valid = (cand_w > 0) & (cand_w <= width) & (cand_h > 0) & (cand_h <= height)
    first = valid.long().argmax(dim=1, keepdim=True)  # index of the first valid try (0 if none)
    any_valid = valid.any(dim=1)

    in_ratio = width / height
    if in_ratio < min(ratio):
        fb_w, fb_h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fb_w, fb_h = int(round(height * max(ratio))), height
    else:
        fb_w, fb_h = width, height
    w = torch.where(any_valid, cand_w.gather(1, first).squeeze(1), torch.full((batch_size,), fb_w))
    h = torch.where(any_valid, cand_h.gather(1, first).squeeze(1), torch.full((batch_size,), fb_h))
    # Uniform integer offsets in [0, size - crop], as randint(0, size - crop + 1).
    u_top = torch.rand(batch_size, generator=generator, dtype=torch.float64)
    u_left = torch.rand(batch_size, generator=generator, dtype=torch.float64)
    top = torch.where(any_valid, (u_top * (height - h + 1)).long(), (height - h) // 2)
    left = torch.where(any_valid, (u_left * (width - w + 1)).long(), (width - w) // 2)
    if hflip:
        flip = torch.rand(batch_size, generator=generator) < 0.5
    else:
        flip = torch.zeros(batch_size, dtype=torch.bool)
    return CropParams(top=top, left=left, height=h, width=w, flip=flip)


def _filter(x: torch.Tensor, interpolation: str) -> torch.Tensor:
    """The antialiasing kernels of torch's `interpolate(antialias=True)` (and PIL)."""
    ax = x.abs()
    if interpolation == "bilinear":
        return (1.0 - ax).clamp_(min=0.0)
    a = -0.5  # the antialiased bicubic uses PIL's a = -0.5 (plain bicubic uses -0.75)
    near = ((a + 2.0) * ax - (a + 3.0)) * ax * ax + 1.0
    far = (((ax - 5.0) * ax + 8.0) * ax - 4.0) * a
    return torch.where(ax < 1.0, near, torch.where(ax < 2.0, far, torch.zeros_like(ax)))


def resample_matrices(
    start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int, interpolation: str, device: torch.device
) -> torch.Tensor:
    """(B, out_size, in_size) weights resizing the window [start, start + length) to out_size.

    Row i holds the normalised filter taps of output pixel i, exactly as torch's antialiased
    interpolation computes them on the cropped window (so the window's edges clamp).
    """
    start = start.to(device=device, dtype=torch.float32).view(-1, 1, 1)
    length = length.to(device=device, dtype=torch.float32).view(-1, 1, 1)
    out_pos = torch.arange(out_size, device=device, dtype=torch.float32).view(1, -1, 1)
    in_pos = torch.arange(in_size, device=device, dtype=torch.float32).view(1, 1, -1) - start  # window coords
    step = length / out_size  # input pixels per output pixel
    centre = step * (out_pos + 0.5)
    inv = torch.where(step >= 1.0, 1.0 / step, torch.ones_like(step))  # widen the filter when shrinking
    w = _filter((in_pos + 0.5 - centre) * inv, interpolation)
    w = w * ((in_pos >= 0) & (in_pos < length))
    return w / w.sum(dim=-1, keepdim=True)


@functools.lru_cache(maxsize=16)
def _window_table(in_size: int, out_size: int, interpolation: str, device: torch.device) -> torch.Tensor:
    """Every window's resampling matrix, unflipped and flipped, left-padded with `in_size` zeros.

    Shape (in_size + 1, 2, out_size, 2 * in_size): [length, flip]; the window starting at
    `start` is the slice [..., in_size - start : 2 * in_size - start] of its length's entry.
    Looking matrices up is a single gather, cheaper than evaluating the filter for every sample.
    """
    lengths = torch.arange(1, in_size + 1)
    mats = resample_matrices(torch.zeros_like(lengths), lengths, in_size, out_size, interpolation, device)
    table = torch.zeros(in_size + 1, 2, out_size, 2 * in_size, device=device)
    table[1:, 0, :, in_size:] = mats
    table[1:, 1, :, in_size:] = mats.flip(1)
    return table


def window_matrices(
    start: torch.Tensor, length: torch.Tensor, flip: torch.Tensor, in_size: int, out_size: int,
    interpolation: str, device: torch.device,
) -> torch.Tensor:
    """(B, out_size, in_size) resampling matrices of the windows, output order reversed where `flip`."""
    if (in_size + 1) * 4 * out_size * in_size * 4 > _MAX_TABLE_BYTES:  # large images: evaluate the filter
        mats = resample_matrices(start, length, in_size, out_size, interpolation, torch.device(device))
        return torch.where(flip.to(device).view(-1, 1, 1), mats.flip(1), mats)
    table = _window_table(in_size, out_size, interpolation, torch.device(device))
    windows = table.unfold(-1, in_size, 1)  # (in_size + 1, 2, out_size, in_size + 1, in_size), a view
    start, length, flip = (t.to(device) for t in (start, length, flip))
    return windows[length, flip.long(), :, in_size - start]


class BatchAugment:
    """Random resized crop + horizontal flip + normalisation of a uint8 batch, on its device.

    ``aug(uint8 (B, 3, H, W), generator) -> float32 (B, 3, image_size, image_size)``, normalised.
    The random parameters come from `generator` (a CPU torch.Generator; the global CPU RNG when
    None), so a batch's augmentation is a pure function of the generator's state.
    """

    def __init__(
        self,
        image_size: int,
        scale: tuple[float, float] = (0.2, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: bool = True,
        interpolation: str = "bilinear",
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        backend: str = "matmul",
    ) -> None:
        if interpolation not in INTERPOLATIONS:
            raise BlockMAEError(f"unknown interpolation {interpolation!r}; use one of {', '.join(INTERPOLATIONS)}")
        if backend not in BACKENDS:
            raise BlockMAEError(f"unknown augmentation backend {backend!r}; use one of {', '.join(BACKENDS)}")
        if not (0.0 < scale[0] <= scale[1] <= 1.0):
            raise BlockMAEError(f"crop scale {scale} must satisfy 0 < min <= max <= 1")
        if not (0.0 < ratio[0] <= ratio[1]):
            raise BlockMAEError(f"crop ratio {ratio} must satisfy 0 < min <= max")
        if image_size <= 0:
            raise BlockMAEError(f"image_size must be positive, got {image_size}")
        self.image_size = int(image_size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.hflip = hflip
        self.interpolation = interpolation
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.backend = backend

    def __repr__(self) -> str:
        return (
            f"BatchAugment(image_size={self.image_size}, scale={self.scale}, ratio={self.ratio}, "
            f"hflip={self.hflip}, interpolation={self.interpolation!r}, backend={self.backend!r})"
        )

    def sample_params(
        self, batch_size: int, height: int, width: int, generator: torch.Generator | None = None
    ) -> CropParams:
        return sample_crop_params(batch_size, height, width, self.scale, self.ratio, self.hflip, generator)

    def __call__(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_uint8_batch(batch)
        params = self.sample_params(batch.shape[0], batch.shape[2], batch.shape[3], generator)
        return self.apply(batch, params)

    def apply(self, batch: torch.Tensor, params: CropParams) -> torch.Tensor:
        """Crop, resize, flip and normalise `batch` with the given per-sample parameters."""
        _check_uint8_batch(batch)
        scale, shift = _normalize_coefficients(self.mean, self.std, batch.device)
        if self.backend == "matmul":
            out = self._resample_matmul(batch, params, scale, shift)
        else:
            out = self._resample_grid(batch, params).mul_(scale.view(1, 3, 1, 1)).add_(shift.view(1, 3, 1, 1))
        if self.interpolation == "bicubic":
            # Saturate the overshoot at 0 and 255 (in normalised units), as uint8 PIL/torchvision do.
            lo, hi = shift.view(1, 3, 1, 1), (255.0 * scale + shift).view(1, 3, 1, 1)
            out = torch.maximum(torch.minimum(out, hi, out=out), lo, out=out)
        return out

    def _resample_matmul(
        self, batch: torch.Tensor, p: CropParams, scale: torch.Tensor, shift: torch.Tensor
    ) -> torch.Tensor:
        b, c, h, w = batch.shape
        s = self.image_size
        no_flip = torch.zeros_like(p.flip)
        rows = window_matrices(p.top, p.height, no_flip, h, s, self.interpolation, batch.device)  # (B, S, H)
        cols = window_matrices(p.left, p.width, p.flip, w, s, self.interpolation, batch.device)  # (B, S, W)
        x = torch.bmm(batch.float().view(b, c * h, w), cols.transpose(1, 2)).view(b * c, h, s)
        # The normalisation rides along: its per-channel scale goes into the row matrices and its
        # shift is the accumulator's initial value (every row of a resampling matrix sums to 1).
        rows = (rows.unsqueeze(1) * scale.view(1, c, 1, 1)).view(b * c, s, h)
        init = shift.view(1, c, 1, 1).expand(b, c, 1, 1).reshape(b * c, 1, 1)
        return torch.baddbmm(init, rows, x).view(b, c, s, s)

    def _resample_grid(self, batch: torch.Tensor, p: CropParams) -> torch.Tensor:
        b, _, h, w = batch.shape
        p = p.to(batch.device)
        # With align_corners=False, normalised coordinate u of the output maps to input pixel
        # left + (u + 1) / 2 * width - 0.5: the same pixel-centre convention as interpolate().
        sx = p.width.float() / w
        sy = p.height.float() / h
        tx = (2 * p.left.float() + p.width.float()) / w - 1
        ty = (2 * p.top.float() + p.height.float()) / h - 1
        theta = torch.zeros(b, 2, 3, device=batch.device)
        theta[:, 0, 0] = torch.where(p.flip, -sx, sx)
        theta[:, 0, 2] = tx
        theta[:, 1, 1] = sy
        theta[:, 1, 2] = ty
        grid = F.affine_grid(theta, [b, 3, self.image_size, self.image_size], align_corners=False)
        # Clamp the sampling points to the centres of the window's edge pixels, as resizing the
        # cropped image would, rather than blending in the pixels just outside the crop.
        lo = torch.stack([(2 * p.left + 1) / w - 1, (2 * p.top + 1) / h - 1], dim=-1).float().view(b, 1, 1, 2)
        hi = torch.stack(
            [(2 * (p.left + p.width) - 1) / w - 1, (2 * (p.top + p.height) - 1) / h - 1], dim=-1
        ).float().view(b, 1, 1, 2)
        grid = torch.maximum(torch.minimum(grid, hi), lo)
        return F.grid_sample(batch.float(), grid, mode=self.interpolation, padding_mode="border", align_corners=False)
