"""Does the phase-vs-amplitude readout separate a shape-trained from a texture-trained classifier?

The ShapeTex controls of tests/test_shapetex.py (the same small CNN recipe): a classifier trained on
`texture_only` (texture labels) and one trained on `shape_only` (shape labels, no texture family). Each
sees phase(A) + amplitude(B) images made from ShapeTex `val` with texture independent of shape, B
differing from A in both shape and texture; the shape classifier is scored on shape labels, the texture
classifier on texture labels. The numbers are printed (docs/diagnostics.md quotes them).
"""

import pytest
import torch

from blockmae.data.shapetex import generate_shapetex
from blockmae.diagnostics.filters import amplitude_swap
from blockmae.diagnostics.stylized import conflict_donors, phase_amplitude_bias

from test_shapetex import SHAPE_ONLY_TRAIN, _predict, _train  # the existing controls' recipe


@pytest.fixture(scope="module")
def conflict():
    val = generate_shapetex("val", num_images=800, texture_correlation=0.0, seed=110)
    labels = torch.stack([val.labels, val.extra_labels["texture"]], dim=1)
    donors = conflict_donors(labels, seed=0)
    mixed = amplitude_swap(val.images.double() / 255, val.images[donors].double() / 255, 1.0)
    images = (mixed.clamp(0, 1) * 255).round().to(torch.uint8)  # the controls read uint8 images
    return images, labels, labels[donors]


@pytest.mark.slow
def test_phase_amplitude_bias_separates_shape_and_texture_classifiers(conflict):
    torch.set_num_threads(2)
    images, phase, amplitude = conflict
    texture_train = generate_shapetex("texture_only", num_images=5000, seed=101)
    texture_model = _train(texture_train.images, texture_train.labels, epochs=3)
    shape_train = generate_shapetex("shape_only", num_images=SHAPE_ONLY_TRAIN[0], seed=105)
    shape_model = _train(shape_train.images, shape_train.labels, epochs=SHAPE_ONLY_TRAIN[1])
    shape = phase_amplitude_bias(_predict(shape_model, images), phase[:, 0], amplitude[:, 0])
    texture = phase_amplitude_bias(_predict(texture_model, images), phase[:, 1], amplitude[:, 1])
    for name, b in (("shape_only classifier", shape), ("texture classifier", texture)):
        print(f"{name}: phase bias {b['phase_bias']:.3f} [{b['phase_bias_low']:.3f}, {b['phase_bias_high']:.3f}] "
              f"phase {b['frac_phase']:.3f} amplitude {b['frac_amplitude']:.3f} neither {b['frac_neither']:.3f}")
    # separated: the intervals do not overlap, the shape classifier following the phase more
    assert shape["phase_bias_low"] > texture["phase_bias_high"]
