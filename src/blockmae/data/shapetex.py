"""ShapeTex: a procedural shape-versus-texture dataset, generated in batches with torch.

Every image is drawn analytically on a coordinate grid: shapes are signed-distance functions,
textures are periodic (or random smooth) ink fields with per-sample phase, scale, orientation and
colours, and every edge is anti-aliased by a one-pixel ramp on the distance. The foreground shape is
filled with one texture and the background with another; both textures share one colour pair and
are shifted to the same mean colour, so the shape shows only through the texture boundary.

All geometry lives in normalised coordinates ([-1, 1] across the image), so a 64 px image is the
32 px image drawn at twice the resolution.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import torch
from torch import Tensor

from blockmae.data.base import ImageTensorDataset, default_cache_root
from blockmae.errors import BlockMAEError
from blockmae.fileio import atomic_path

SHAPE_CLASSES: list[str] = [
    "circle", "square", "triangle", "star", "cross", "heart", "hourglass", "ring", "crescent", "arrow",
]
TEXTURE_CLASSES: list[str] = [
    "stripes", "checkerboard", "dots", "waves", "zigzag", "grid", "bricks", "crosshatch", "blobs", "rings",
]
SPLITS: tuple[str, ...] = ("train", "val", "cue_conflict", "shape_only", "texture_only")
DEFAULT_NUM_IMAGES: dict[str, int] = {
    "train": 10_000, "val": 2_000, "cue_conflict": 990, "shape_only": 1_000, "texture_only": 1_000,
}
# Bump whenever the drawing changes: it is part of the cache key, so old caches are rebuilt.
GENERATOR_VERSION = 4  # 4: the ground is flat by default (background_contrast 0; docs/shapetex.md)
_CHUNK = 1024  # images drawn per batch; part of the generator's definition (random draws are per chunk)

# Shape size: radius of the shape's bounding circle in normalised units (the image is 2 wide).
_RADIUS_RANGE = (0.65, 0.9)
# Texture period per family, in pixels of a 32 px image (scaled with the image).
_PERIOD_PX = {
    "stripes": (4.0, 5.0), "checkerboard": (6.0, 7.0), "dots": (5.5, 6.5), "waves": (5.5, 6.5),
    "zigzag": (5.0, 6.0), "grid": (7.0, 8.0), "bricks": (8.0, 9.0), "crosshatch": (4.5, 5.5),
    "blobs": (8.0, 10.0), "rings": (5.0, 6.0),
}
_NUM_BLOB_WAVES = 6
# The ground's texture contrast relative to the figure's. The figure never differs from the ground in mean
# colour; with a flat ground (0, the default since generator version 4) it stands out by its texture
# energy, which MAE learns to segment within tens of thousands of images; at 0.5 (versions <= 3) the cue
# was second-order and MAE's features stayed at chance on shape for 900,000 images (docs/shapetex.md).
DEFAULT_BACKGROUND_CONTRAST = 0.0


# ----------------------------------------------------------------------------- geometry helpers

def _grid(size: int) -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates in [-1, 1]; y grows downwards like image rows."""
    axis = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    return x, y


def _rotate(x: Tensor, y: Tensor, angle: Tensor) -> tuple[Tensor, Tensor]:
    c, s = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    return c * x + s * y, -s * x + c * y


def _line_distance(v: Tensor) -> Tensor:
    """Distance (in cell units) from v to the nearest integer."""
    return (v - torch.round(v)).abs()


def _ramp(distance: Tensor, pixel: float) -> Tensor:
    """Anti-aliased coverage of a region given its signed distance (positive inside)."""
    return (0.5 + distance / pixel).clamp(0.0, 1.0)


# ----------------------------------------------------------------------------- shapes (SDF < 0 inside)

def _sdf_box(x: Tensor, y: Tensor, hx: float, hy: float) -> Tensor:
    qx, qy = x.abs() - hx, y.abs() - hy
    outside = torch.sqrt(qx.clamp(min=0) ** 2 + qy.clamp(min=0) ** 2)
    return outside + torch.maximum(qx, qy).clamp(max=0)


def _sdf_polygon(x: Tensor, y: Tensor, sides: int, apothem: float) -> Tensor:
    """Regular polygon with a vertex pointing up (intersection of half-planes; exact near edges)."""
    dist = None
    for k in range(sides):
        theta = 2 * math.pi * (k + 0.5) / sides - math.pi / 2
        d = x * math.cos(theta) + y * math.sin(theta) - apothem
        dist = d if dist is None else torch.maximum(dist, d)
    return dist


def _sdf_star(x: Tensor, y: Tensor, points: int = 5, outer: float = 1.0, inner: float = 0.45) -> Tensor:
    # Fold the plane into one wedge, then measure against the edge outer-vertex -> inner-vertex.
    angle = torch.atan2(y, x) + math.pi / 2
    wedge = 2 * math.pi / points
    a = torch.remainder(angle + wedge / 2, wedge) - wedge / 2
    r = torch.sqrt(x * x + y * y)
    px, py = r * torch.cos(a), (r * torch.sin(a)).abs()
    ax, ay = outer, 0.0
    bx, by = inner * math.cos(wedge / 2), inner * math.sin(wedge / 2)
    ex, ey = bx - ax, by - ay
    t = (((px - ax) * ex + (py - ay) * ey) / (ex * ex + ey * ey)).clamp(0, 1)
    dist = torch.sqrt((px - ax - t * ex) ** 2 + (py - ay - t * ey) ** 2)
    side = (px - ax) * ey - (py - ay) * ex  # > 0 on the outer side of the edge
    return torch.where(side > 0, dist, -dist)


def _shape_sdf(shape: int, x: Tensor, y: Tensor) -> Tensor:
    """Signed distance of shape class `shape` in its own frame (bounding circle of radius ~1)."""
    name = SHAPE_CLASSES[shape]
    r = torch.sqrt(x * x + y * y)
    if name == "circle":
        return r - 0.9
    if name == "square":
        return _sdf_box(x, y, 0.7, 0.7)
    if name == "triangle":
        return _sdf_polygon(x, y + 0.15, 3, 0.5)
    if name == "star":
        return _sdf_star(x, y)
    if name == "cross":
        return torch.minimum(_sdf_box(x, y, 0.95, 0.3), _sdf_box(x, y, 0.3, 0.95))
    if name == "heart":
        # A diamond with two round lobes on its upper edges.
        diamond = _sdf_box(*_rotate_xy(x, y - 0.1, math.pi / 4), 0.55, 0.55)
        lobe_l = torch.sqrt((x + 0.39) ** 2 + (y + 0.29) ** 2) - 0.55
        lobe_r = torch.sqrt((x - 0.39) ** 2 + (y + 0.29) ** 2) - 0.55
        return torch.minimum(diamond, torch.minimum(lobe_l, lobe_r))
    if name == "hourglass":
        # Two triangles meeting tip to tip (slanted sides divided by their gradient norm).
        slant = (x.abs() - 0.85 * y.abs() - 0.1) / math.sqrt(1 + 0.85**2)
        return torch.maximum(slant, y.abs() - 0.85)
    if name == "ring":
        return (r - 0.68).abs() - 0.3
    if name == "crescent":
        return torch.maximum(r - 0.95, -(torch.sqrt((x - 0.45) ** 2 + (y + 0.2) ** 2) - 0.75))
    if name == "arrow":
        # Head: a triangle whose tip points to +x (the polygon's vertex points to its frame's -y).
        shaft = _sdf_box(x + 0.55, y, 0.45, 0.2)
        head = _sdf_polygon(y, 0.15 - x, 3, 0.4)
        return torch.minimum(shaft, head)
    raise AssertionError(name)


def _rotate_xy(x: Tensor, y: Tensor, angle: float) -> tuple[Tensor, Tensor]:
    c, s = math.cos(angle), math.sin(angle)
    return c * x + s * y, -s * x + c * y


# ----------------------------------------------------------------------------- textures (ink distance > 0)

def _texture_ink(family: int, x: Tensor, y: Tensor, params: Tensor, blob: Tensor, size: int) -> Tensor:
    """Signed distance (normalised units, > 0 on ink) of texture `family` for a group of samples.

    `params` (n, 6) are uniform [0, 1) draws: angle, period, phase x, phase y, two family extras;
    `blob` (n, 3 * _NUM_BLOB_WAVES) are the extra draws for random smooth patterns.
    """
    name = TEXTURE_CLASSES[family]
    lo, hi = _PERIOD_PX[name]
    period = ((lo + (hi - lo) * params[:, 1]) * 2 / 32)[:, None, None]  # normalised units
    angle = params[:, 0] * 2 * math.pi
    u, v = _rotate(x, y, angle)
    u = u / period + params[:, 2, None, None] * 8
    v = v / period + params[:, 3, None, None] * 8
    e1, e2 = params[:, 4, None, None], params[:, 5, None, None]
    if name == "stripes":
        return (0.25 - _line_distance(u)) * period
    if name == "checkerboard":
        parity = (torch.floor(u) + torch.floor(v)).remainder(2) * 2 - 1
        edge = torch.minimum(_line_distance(u), _line_distance(v))
        return parity * edge * period
    if name == "dots":
        du, dv = _line_distance(u), _line_distance(v)
        return (0.3 - torch.sqrt(du * du + dv * dv)) * period
    if name == "waves":
        wavelength, amp = 2.5, 0.35
        phase = 2 * math.pi * u / wavelength + e1 * 2 * math.pi
        w = v + amp * torch.sin(phase)
        slope = amp * 2 * math.pi / wavelength * torch.cos(phase)
        return (0.25 - _line_distance(w)) * period / torch.sqrt(1 + slope * slope)
    if name == "zigzag":
        wavelength, amp = 1.5, 0.4
        tri = (u / wavelength + e1 - torch.floor(u / wavelength + e1) - 0.5).abs() * 2  # in [0, 1]
        w = v + amp * tri
        slope = 2 * amp / wavelength
        return (0.25 - _line_distance(w)) * period / math.sqrt(1 + slope * slope)
    if name == "grid":
        return (0.13 - torch.minimum(_line_distance(u), _line_distance(v))) * period
    if name == "bricks":
        rows = v * 2  # bricks are half as tall as wide
        row_index = torch.floor(rows + 0.5)
        across = _line_distance(rows) / 2
        along = _line_distance(u + 0.5 * row_index.remainder(2))
        return (0.07 - torch.minimum(across, along)) * period
    if name == "crosshatch":
        a1, b1 = _rotate(u, v, torch.full_like(params[:, 0], math.pi / 6))
        a2, b2 = _rotate(u, v, torch.full_like(params[:, 0], -math.pi / 6))
        return (0.17 - torch.minimum(_line_distance(b1), _line_distance(b2))) * period
    if name == "blobs":
        # A sum of cosines with random directions, thresholded at zero; divided by its mean
        # gradient norm so the value approximates a distance.
        omega = 2 * math.pi / period
        field = torch.zeros_like(x.expand_as(u))
        k = _NUM_BLOB_WAVES
        for i in range(k):
            theta = blob[:, i, None, None] * 2 * math.pi
            phi = blob[:, k + i, None, None] * 2 * math.pi
            freq = omega * (0.8 + 0.4 * blob[:, 2 * k + i, None, None])
            field = field + torch.cos(freq * (torch.cos(theta) * x + torch.sin(theta) * y) + phi)
        return field / (omega * math.sqrt(k / 2))
    if name == "rings":
        cx, cy = (e1 * 2 - 1) * 0.8, (e2 * 2 - 1) * 0.8
        rho = torch.sqrt((x - cx) ** 2 + (y - cy) ** 2) / period
        return (0.25 - _line_distance(rho + params[:, 2, None, None])) * period
    raise AssertionError(name)


def _draw_textures(families: Tensor, x: Tensor, y: Tensor, gen: torch.Generator, size: int) -> Tensor:
    """Coverage in [0, 1] of each sample's texture family: (n, H, W)."""
    n = families.shape[0]
    params = torch.rand(n, 6, generator=gen)
    blob = torch.rand(n, 3 * _NUM_BLOB_WAVES, generator=gen)
    out = torch.empty(n, size, size)
    pixel = 2.0 / size
    for family in range(len(TEXTURE_CLASSES)):
        idx = (families == family).nonzero(as_tuple=True)[0]
        if idx.numel():
            out[idx] = _ramp(_texture_ink(family, x, y, params[idx], blob[idx], size), pixel)
    return out


def _draw_shapes(shapes: Tensor, x: Tensor, y: Tensor, gen: torch.Generator, size: int) -> Tensor:
    """Anti-aliased silhouette coverage (n, H, W) at random position, scale and rotation."""
    n = shapes.shape[0]
    draws = torch.rand(n, 4, generator=gen)
    radius = _RADIUS_RANGE[0] + (_RADIUS_RANGE[1] - _RADIUS_RANGE[0]) * draws[:, 0]
    reach = 1 - radius  # keep the bounding circle inside the image
    cx, cy = (draws[:, 1] * 2 - 1) * reach, (draws[:, 2] * 2 - 1) * reach
    angle = draws[:, 3] * 2 * math.pi
    out = torch.empty(n, size, size)
    pixel = 2.0 / size
    for shape in range(len(SHAPE_CLASSES)):
        idx = (shapes == shape).nonzero(as_tuple=True)[0]
        if idx.numel():
            r = radius[idx, None, None]
            lx, ly = _rotate(x - cx[idx, None, None], y - cy[idx, None, None], angle[idx])
            sdf = _shape_sdf(shape, lx / r, ly / r) * r
            out[idx] = _ramp(-sdf, pixel)
    return out


def _colour_pair(n: int, gen: torch.Generator, hue: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """A mid colour, a contrast vector (luminance plus chroma) and its chroma hue, per image.

    Given `hue` (the other texture's), the new hue is roughly opposite it: with luminance and
    chroma of similar size the two contrast vectors are then nearly orthogonal in RGB, so the two
    textures of one image differ in colour although they share the mid colour.
    """
    draws = torch.rand(n, 6, generator=gen)
    mid = 0.4 + 0.2 * draws[:, 0:3]
    # One luminance polarity per image (the same for both textures, or they would be anti-parallel).
    lum = 0.2 + 0.1 * draws[:, 3]
    if hue is None:
        new_hue = draws[:, 5] * 2 * math.pi
    else:
        new_hue = hue + math.pi + (draws[:, 5] - 0.5) * math.pi / 2
    chroma = 0.45 * (torch.cos(new_hue)[:, None] * _CHROMA_AXES[0] + torch.sin(new_hue)[:, None] * _CHROMA_AXES[1])
    return mid, lum[:, None] + chroma, new_hue


# Two orthonormal directions in RGB orthogonal to grey: chroma without luminance change.
_CHROMA_AXES = torch.tensor([[1.0, -1.0, 0.0], [1.0, 1.0, -2.0]]) / torch.tensor([[math.sqrt(2)], [math.sqrt(6)]])


def _to_uint8(img: Tensor) -> Tensor:
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def _compose_textured(
    shapes: Tensor, fg: Tensor, bg: Tensor, x: Tensor, y: Tensor, gen: torch.Generator, size: int,
    background_contrast: float,
) -> tuple[Tensor, Tensor]:
    """Shape filled with texture `fg` on texture `bg`; both with the same mean colour. Returns the
    images and the silhouettes' coverage (n, H, W) in [0, 1]."""
    alpha = _draw_shapes(shapes, x, y, gen, size)
    ink_fg = _draw_textures(fg, x, y, gen, size)
    ink_bg = _draw_textures(bg, x, y, gen, size)
    return _colourise(alpha, ink_fg, ink_bg, gen, background_contrast), alpha


def _colourise(alpha: Tensor, ink_fg: Tensor, ink_bg: Tensor, gen: torch.Generator,
               background_contrast: float) -> Tensor:
    """Figure ink inside `alpha`, ground ink outside, in differing colour pairs around one mean colour."""
    n = alpha.shape[0]
    mid, delta_fg, hue_fg = _colour_pair(n, gen)
    _, delta_bg, _ = _colour_pair(n, gen, hue=hue_fg)
    # Centre each ink on its own mean coverage: both then average to the shared `mid`, while
    # their colour pairs differ, so the boundary shows without a mean-colour blob.
    ink_fg = ink_fg - ink_fg.mean(dim=(1, 2), keepdim=True)
    ink_bg = ink_bg - ink_bg.mean(dim=(1, 2), keepdim=True)
    delta_fg = _fit_contrast(mid, delta_fg, ink_fg.flatten(1))
    delta_bg = _fit_contrast(mid, delta_bg, ink_bg.flatten(1)) * background_contrast
    colour_fg = delta_fg[:, :, None, None] * ink_fg[:, None]
    colour_bg = delta_bg[:, :, None, None] * ink_bg[:, None]
    alpha = alpha[:, None]
    return _to_uint8(mid[:, :, None, None] + alpha * colour_fg + (1 - alpha) * colour_bg)


def _fit_contrast(mid: Tensor, delta: Tensor, centred_ink: Tensor) -> Tensor:
    """Scale the contrast down where mid + delta * ink would leave [0, 1] (it would bias the mean)."""
    lo, hi = centred_ink.min(1).values[:, None], centred_ink.max(1).values[:, None]
    extreme_hi = mid + torch.maximum(delta * hi, delta * lo)
    extreme_lo = mid + torch.minimum(delta * hi, delta * lo)
    scale_hi = ((1 - mid) / (extreme_hi - mid).clamp(min=1e-6)).clamp(max=1)
    scale_lo = (mid / (mid - extreme_lo).clamp(min=1e-6)).clamp(max=1)
    scale = torch.minimum(scale_hi, scale_lo).min(1, keepdim=True).values
    return delta * scale


def _neutral_ink(n: int, gen: torch.Generator, size: int) -> Tensor:
    """Coin-flip ink per cell of a 32 x 32 grid: full ink contrast, like the textures, but no spatial
    structure, so no texture family's statistics. Cells (not pixels) keep 64 px the 32 px scene."""
    cells = min(size, 32)
    coins = (torch.rand(n, 1, cells, cells, generator=gen) < 0.5).float()
    return torch.nn.functional.interpolate(coins, size=(size, size), mode="nearest")[:, 0]


def _compose_neutral(shapes: Tensor, x: Tensor, y: Tensor, gen: torch.Generator, size: int,
                     background_contrast: float) -> tuple[Tensor, Tensor]:
    """Silhouette on a background, both filled with neutral noise in the textured splits' colour scheme.

    The figure/ground boundary is the one of the textured splits (a change of colour direction and
    contrast at one mean colour), but neither side carries a texture class.
    """
    n = shapes.shape[0]
    alpha = _draw_shapes(shapes, x, y, gen, size)
    ink_fg = _neutral_ink(n, gen, size)
    ink_bg = _neutral_ink(n, gen, size)
    return _colourise(alpha, ink_fg, ink_bg, gen, background_contrast), alpha


def _compose_texture_only(families: Tensor, x: Tensor, y: Tensor, gen: torch.Generator, size: int) -> Tensor:
    ink = _draw_textures(families, x, y, gen, size)
    ink = ink - ink.mean(dim=(1, 2), keepdim=True)
    mid, delta, _ = _colour_pair(families.shape[0], gen)
    delta = _fit_contrast(mid, delta, ink.flatten(1))
    return _to_uint8(mid[:, :, None, None] + delta[:, :, None, None] * ink[:, None])


# ----------------------------------------------------------------------------- labels per split

def _balanced(n: int, classes: int, gen: torch.Generator) -> Tensor:
    """Each class n // classes times, the remainder from a random subset of classes; shuffled."""
    labels = torch.cat([torch.arange(classes).repeat(n // classes), torch.randperm(classes, generator=gen)[: n % classes]])
    return labels[torch.randperm(n, generator=gen)]


def _other_than(excluded: list[Tensor], classes: int, gen: torch.Generator) -> Tensor:
    """A uniform class per sample that differs from every tensor in `excluded` (each (n,))."""
    n = excluded[0].shape[0]
    scores = torch.rand(n, classes, generator=gen)
    for ex in excluded:
        scores[torch.arange(n), ex] = -1.0
    return scores.argmax(1)


def _split_labels(split: str, n: int, correlation: float, gen: torch.Generator) -> dict[str, Tensor]:
    k = len(SHAPE_CLASSES)
    if split in ("train", "val"):
        shape = _balanced(n, k, gen)
        keep = torch.rand(n, generator=gen) < correlation
        texture = torch.where(keep, shape, _other_than([shape], k, gen))
        return {"shape": shape, "texture": texture, "background": _other_than([texture], k, gen)}
    if split == "cue_conflict":
        pairs = torch.tensor([(i, j) for i in range(k) for j in range(k) if i != j])
        index = _balanced(n, len(pairs), gen)
        shape, texture = pairs[index, 0], pairs[index, 1]
        # The background avoids both cues so that a decision for it counts as neither.
        return {"shape": shape, "texture": texture, "background": _other_than([shape, texture], k, gen)}
    if split == "shape_only":
        return {"shape": _balanced(n, k, gen)}
    if split == "texture_only":
        return {"texture": _balanced(n, k, gen)}
    raise AssertionError(split)


def split_seed(seed: int, split: str) -> int:
    """The generator seed of one split: distinct splits never share a random stream."""
    digest = hashlib.sha256(f"shapetex:{seed}:{split}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generate_shapetex(
    split: str, image_size: int = 32, num_images: int | None = None, texture_correlation: float = 0.8, seed: int = 0,
    figure_masks: bool = False, background_contrast: float = DEFAULT_BACKGROUND_CONTRAST,
) -> ImageTensorDataset:
    """Draw a ShapeTex split in memory (no cache). See `load_shapetex` for the arguments."""
    _validate(split, image_size, num_images, texture_correlation, background_contrast)
    if figure_masks and split == "texture_only":
        raise BlockMAEError("ShapeTex texture_only images have no figure: figure masks exist for the other splits")
    n = DEFAULT_NUM_IMAGES[split] if num_images is None else num_images
    gen = torch.Generator().manual_seed(split_seed(seed, split))
    labels = _split_labels(split, n, texture_correlation, gen)
    x, y = _grid(image_size)
    images = torch.empty(n, 3, image_size, image_size, dtype=torch.uint8)
    figures = torch.empty(n, image_size, image_size, dtype=torch.uint8) if figure_masks else None
    for start in range(0, n, _CHUNK):
        part = slice(start, min(start + _CHUNK, n))
        if split == "texture_only":
            images[part] = _compose_texture_only(labels["texture"][part], x, y, gen, image_size)
            continue
        if split == "shape_only":
            images[part], alpha = _compose_neutral(labels["shape"][part], x, y, gen, image_size, background_contrast)
        else:
            images[part], alpha = _compose_textured(
                labels["shape"][part], labels["texture"][part], labels["background"][part], x, y, gen, image_size,
                background_contrast,
            )
        if figures is not None:
            figures[part] = _to_uint8(alpha)
    if split == "texture_only":
        texture = labels["texture"]
        return ImageTensorDataset(images, texture.clone(), list(TEXTURE_CLASSES), "shapetex", {"texture": texture})
    texture = labels.get("texture", torch.full((n,), -1, dtype=torch.int64))
    extra = {"texture": texture, **({"figure": figures} if figures is not None else {})}
    return ImageTensorDataset(images, labels["shape"], list(SHAPE_CLASSES), "shapetex", extra)


def _validate(split: str, image_size: int, num_images: int | None, texture_correlation: float,
              background_contrast: float = DEFAULT_BACKGROUND_CONTRAST) -> None:
    if split not in SPLITS:
        raise BlockMAEError(f"unknown ShapeTex split {split!r}; choose one of {', '.join(SPLITS)}")
    if not isinstance(image_size, int) or image_size < 8 or image_size % 8:
        raise BlockMAEError(f"ShapeTex image_size must be a multiple of 8 (>= 8), got {image_size}")
    if num_images is not None and (not isinstance(num_images, int) or num_images < 1):
        raise BlockMAEError(f"ShapeTex num_images must be a positive integer, got {num_images}")
    if not 0.0 <= texture_correlation <= 1.0:
        raise BlockMAEError(f"ShapeTex texture_correlation must lie in [0, 1], got {texture_correlation}")
    if not 0.0 <= background_contrast <= 1.0:  # also refuses nan
        raise BlockMAEError(f"ShapeTex background_contrast must lie in [0, 1], got {background_contrast}")


# ----------------------------------------------------------------------------- cache

def _cache_params(split: str, image_size: int, num_images: int, texture_correlation: float, seed: int,
                  background_contrast: float = DEFAULT_BACKGROUND_CONTRAST) -> dict:
    params = {"dataset": "shapetex", "version": GENERATOR_VERSION, "split": split, "image_size": image_size,
              "num_images": num_images, "seed": seed}
    if split in ("train", "val"):  # the only splits the correlation changes
        params["texture_correlation"] = float(texture_correlation)
    if split != "texture_only" and background_contrast != DEFAULT_BACKGROUND_CONTRAST:
        params["background_contrast"] = float(background_contrast)
    return params


def cache_path(params: dict, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the split with these generation parameters is cached (the name hashes them)."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_root() / "shapetex"
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    return root / f"shapetex-{params['split']}-{params['image_size']}px-{digest}.pt"


def _read_cache(path: Path, params: dict) -> ImageTensorDataset | None:
    """The cached dataset, or None when the file is missing, unreadable or built with other parameters."""
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if json.loads(blob["params"]) != params:
            return None
        return ImageTensorDataset(blob["images"], blob["labels"], list(blob["class_names"]), "shapetex",
                                  {"texture": blob["texture"]})
    except Exception:  # a truncated or foreign file is rebuilt, never trusted
        return None


def _write_cache(path: Path, params: dict, data: ImageTensorDataset) -> None:
    blob = {"params": json.dumps(params, sort_keys=True), "images": data.images, "labels": data.labels,
            "texture": data.extra_labels["texture"], "class_names": list(data.class_names)}
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)


def load_shapetex(
    split: str,
    image_size: int = 32,
    num_images: int | None = None,
    texture_correlation: float = 0.8,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    figure_masks: bool = False,
    background_contrast: float = DEFAULT_BACKGROUND_CONTRAST,
) -> ImageTensorDataset:
    """Load (generating and caching on first use) one ShapeTex split.

    labels: the shape class, except for `texture_only` where it is the texture class.
    extra_labels["texture"]: the foreground texture class (-1 for `shape_only`).
    Splits: train and val (the foreground of shape k is texture k with probability
    `texture_correlation`, else another texture, uniformly), cue_conflict (shape i with texture
    j != i, the 90 pairs balanced), shape_only (silhouette and ground in neutral noise, no
    texture), texture_only (texture alone).
    figure_masks: also return each image's silhouette as extra_labels["figure"], uint8 (N, H, W), the
    anti-aliased coverage of the figure (255 inside, 0 on the ground). The split is then drawn afresh
    (the same seeds, so the same images as the cache holds); texture_only has no figure.
    background_contrast: the ground's texture contrast relative to the figure's (default 0: a flat ground
    in the shared mean colour, so the figure stands out by its texture energy; 0.5 draws generator
    version 3's textured ground).
    """
    _validate(split, image_size, num_images, texture_correlation, background_contrast)
    n = DEFAULT_NUM_IMAGES[split] if num_images is None else num_images
    params = _cache_params(split, image_size, n, texture_correlation, seed, background_contrast)
    path = cache_path(params, cache_dir)
    if figure_masks:  # the cache holds no masks; drawing again gives the same images with them
        return generate_shapetex(split, image_size, n, texture_correlation, seed, figure_masks=True,
                                 background_contrast=background_contrast)
    cached = _read_cache(path, params)
    if cached is not None:
        return cached
    data = generate_shapetex(split, image_size, n, texture_correlation, seed, background_contrast=background_contrast)
    _write_cache(path, params, data)
    return data
