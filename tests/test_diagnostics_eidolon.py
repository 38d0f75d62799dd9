"""Eidolons (partially coherent disarray), model-vs-human's eidolonI/II/III: geometry, fields, behaviour."""

from __future__ import annotations

import math

import pytest
import torch

from blockmae.diagnostics import eidolon as E
from blockmae.diagnostics.filters import grey3


def _scene(size: int = 64) -> torch.Tensor:
    """A structured image: a bright disk with stripes on a darker ramp (structure at several scales)."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    disk = ((x**2 + y**2) < 0.4).float()
    stripes = 0.5 + 0.5 * torch.sin(12 * x)
    image = 0.2 + 0.2 * (y + 1) / 2 + disk * (0.3 + 0.3 * stripes)
    return image.clamp(0, 1).expand(1, 3, -1, -1).contiguous()


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float((a @ b) / (a.norm() * b.norm()))


def test_the_toolboxs_geometry():
    sigmas = E.scale_levels()
    assert len(sigmas) == 12 and math.isclose(sigmas[0], 1 / math.sqrt(2)) and math.isclose(sigmas[-1], 32)
    assert E.plane_size(256) == 512 and E.plane_size(128) == 256 and E.plane_size(170) == 256
    assert E.working_shape(224, 224) == (256, 256) and E.working_shape(100, 200) == (128, 256)
    assert E.working_shape(200, 100) == (256, 128)
    # the kernel's continuous normalisation: its sum is 1 for a sigma of a few pixels
    assert abs(float(E.gaussian_transfer(3.0, 64, 64)[0, 0].real) - 1) < 1e-6


def test_displacement_fields_are_coherent_sums_plus_weighted_jitter():
    shape = (256, 256)
    coherent = E.displacement_fields(1.0, 10.0, shape, torch.Generator().manual_seed(0), axes=2)
    mixed = E.displacement_fields(0.3, 10.0, shape, torch.Generator().manual_seed(0), axes=2)
    assert coherent.shape == (2, 12, 256, 256)
    finest = coherent[:, 0] - coherent[:, 1]  # each axis's own plane at the finest scale
    assert abs(_correlation(finest[0], finest[1])) < 0.05  # the two axes are drawn independently
    coherent, mixed = coherent[0], mixed[0]
    # slice k's field minus slice k+1's is scale k's own plane: standardised, times sigma_k / sigma_max
    own = torch.cat([coherent[:-1] - coherent[1:], coherent[-1:]])
    expected = torch.tensor([s / E.MAX_SIGMA for s in E.scale_levels()])
    assert torch.allclose(own.std(dim=(1, 2), correction=0), expected, rtol=1e-4)
    assert torch.allclose(own.mean(dim=(1, 2)), torch.zeros(12), atol=1e-5)
    # the same draws, plus the incoherent jitter (standardised, one per slice) with weight 1 - coherence
    jitter = (mixed - coherent) / 0.7
    assert torch.allclose(jitter.std(dim=(1, 2), correction=0), torch.ones(12), rtol=1e-4)
    # drawn anew for each slice (about 50 independent blobs of the grain per plane: chance correlations ~0.1),
    # where the coherent fields of neighbouring slices share most of their sum
    jittered = sum(abs(_correlation(jitter[k], jitter[k + 1])) for k in range(11)) / 11
    shared = sum(_correlation(coherent[k], coherent[k + 1]) for k in range(11)) / 11
    assert jittered < 0.25 and shared > 0.8, (jittered, shared)
    # blurred at the grain: neighbours move together
    assert _correlation(jitter[0, :, :-1], jitter[0, :, 1:]) > 0.9


def test_reach_zero_is_the_image_and_distortion_grows_with_reach():
    x = _scene()
    generator = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    clean = E.eidolon(x, 0.0, 1.0, 10.0, generator())
    assert clean.shape == x.shape and torch.equal(clean[:, 0], clean[:, 2])
    assert (clean - grey3(x)).abs().mean() < 0.02  # the slices sum back to the image (blurred at 0.7 px)
    assert torch.equal(clean, E.eidolon(x, 0.0, 0.0, 10.0, generator()))  # nothing moves at reach 0
    for coherence in (1.0, 0.0):
        kept = [_correlation(E.eidolon(x, r, coherence, 10.0, generator()), clean) for r in (2, 16, 128)]
        assert kept[0] > kept[1] > kept[2], kept
    # the coherent field bends contours instead of breaking them: more of the image survives at the same reach
    # (model-vs-human's observers: 0.69 correct for eidolonI, 0.41 for eidolonIII at reach 8)
    coherent = _correlation(E.eidolon(x, 8, 1.0, 10.0, generator()), clean)
    incoherent = _correlation(E.eidolon(x, 8, 0.0, 10.0, generator()), clean)
    assert 1 - incoherent > 1.5 * (1 - coherent), (coherent, incoherent)
    assert torch.equal(E.eidolon(x, 8, 0.3, 10.0, generator()), E.eidolon(x, 8, 0.3, 10.0, generator()))
    assert not torch.equal(E.eidolon(x, 8, 0.3, 10.0, generator()),
                           E.eidolon(x, 8, 0.3, 10.0, torch.Generator().manual_seed(1)))
    out = E.eidolon(x, 64, 0.0, 10.0, generator())
    assert out.min() >= 0 and out.max() <= 1


def test_any_size_and_bad_parameters():
    rect = torch.rand(2, 3, 40, 24, generator=torch.Generator().manual_seed(0))
    out = E.eidolon(rect, 4, 0.3, 10)
    assert out.shape == rect.shape and out.min() >= 0 and out.max() <= 1
    for reach, coherence, grain in ((-1, 0.5, 10), (4, 1.5, 10), (4, 0.5, 0)):
        with pytest.raises(ValueError, match="eidolon needs"):
            E.eidolon(rect, reach, coherence, grain)
