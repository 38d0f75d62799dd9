"""Diagnostic filters and recombination against independent references; curve summaries; human table."""

import math

import numpy as np
import pytest
import torch

from blockmae.diagnostics import filters
from blockmae.diagnostics.curves import curve_summary, half_level, normalised
from blockmae.diagnostics.human_reference import compute_table, human_curve, load_table
from blockmae.diagnostics.stylized import conflict_donors, difference_interval, phase_amplitude_bias

scipy_ndimage = pytest.importorskip("scipy.ndimage")


def _images(b=2, h=20, w=17, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("sigma", [0.3, 1.0, 2.5, 7.0, 12.0])
@pytest.mark.parametrize("mode", ["constant", "reflect"])
def test_gaussian_blur_matches_scipy(sigma, mode):
    x = _images()
    ours = filters.gaussian_blur(x, sigma, mode=mode, cval=filters.MEAN_GREY).numpy()
    ref = np.stack([[scipy_ndimage.gaussian_filter(x[b, c].numpy(), sigma, mode=mode, cval=filters.MEAN_GREY)
                     for c in range(3)] for b in range(2)])
    assert np.abs(ours - ref).max() < 1e-12


def test_model_vs_human_lowpass_and_highpass_match_their_recipe():
    x = _images(1, 24, 24)
    grey = (0.2125 * x[0, 0] + 0.7154 * x[0, 1] + 0.0721 * x[0, 2]).numpy()
    blur = scipy_ndimage.gaussian_filter(grey, 2.0, mode="constant", cval=0.4423)
    low = filters.gaussian_lowpass(x, 2.0, grey=True)
    assert low.shape == x.shape and torch.equal(low[0, 0], low[0, 2])
    assert np.abs(low[0, 0].numpy() - np.clip(blur, 0, 1)).max() < 1e-12
    high_ref = grey - blur
    high_ref = np.clip(high_ref + (0.4423 - high_ref.mean()), 0, 1)
    assert np.abs(filters.gaussian_highpass(x, 2.0, grey=True)[0, 1].numpy() - high_ref).max() < 1e-12
    assert torch.allclose(filters.gaussian_highpass(x, math.inf, grey=True)[0, 0], torch.from_numpy(grey))
    assert torch.equal(filters.gaussian_lowpass(x, 0.0), x)  # sigma 0 is the identity in colour mode


def test_levels_scale_with_the_input_size():
    assert filters.scale_levels(filters.LOWPASS_SIGMAS_224, 64)[-1] == pytest.approx(40 * 64 / 224)
    assert filters.scale_levels([math.inf, 0], 32) == [math.inf, 0.0]


def _sinusoid(n, ky, kx):
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    wave = torch.cos(2 * math.pi * (ky * i + kx * j) / n).double()
    return (0.5 + 0.25 * wave).expand(1, 3, n, n).clone()


@pytest.mark.parametrize("n", [32, 64])
@pytest.mark.parametrize("ky,kx", [(0, 3), (4, 4), (10, 2), (15, 15)])
@pytest.mark.parametrize("radius", [0.2, 0.45, 0.8])
def test_fourier_lowpass_passes_a_sinusoid_iff_inside_the_radius(n, ky, kx, radius):
    x = _sinusoid(n, ky, kx)
    rho = math.hypot(ky / n, kx / n) / 0.5  # fraction of Nyquist
    out = filters.fourier_filter(x, radius, "low")
    if rho <= radius:
        assert torch.allclose(out, x, atol=1e-9)
    else:
        assert torch.allclose(out, torch.full_like(x, 0.5), atol=1e-9)  # only the mean survives
    high = filters.fourier_filter(x, radius, "high")
    expected = x - 0.5 + filters.MEAN_GREY if rho > radius else torch.full_like(x, filters.MEAN_GREY)
    assert torch.allclose(high, expected, atol=1e-9)


def test_fourier_radius_is_a_fraction_of_nyquist_at_any_size():
    # the same relative frequency is kept at 32 px and 64 px
    for n in (32, 64):
        assert torch.allclose(filters.fourier_filter(_sinusoid(n, n // 8, 0), 0.3, "low"), _sinusoid(n, n // 8, 0))


def test_amplitude_swap_keeps_the_phase_exactly_and_alpha_zero_is_identity():
    x, donor = _images(3, 16, 16, 1), _images(3, 16, 16, 2)
    assert torch.equal(filters.amplitude_swap(x, donor, 0.0), x)
    for alpha in (0.3, 1.0):
        out = filters.amplitude_swap(x, donor, alpha)
        fx, fo = torch.fft.fft2(x), torch.fft.fft2(out)
        assert torch.allclose(torch.angle(fo), torch.angle(fx), atol=1e-9)  # phase kept
        expected = (1 - alpha) * fx.abs() + alpha * torch.fft.fft2(donor).abs()
        assert torch.allclose(fo.abs(), expected, atol=1e-9)  # amplitude interpolated
    assert not torch.allclose(filters.amplitude_swap(x, donor, 1.0), x, atol=1e-3)
    with pytest.raises(ValueError):
        filters.amplitude_swap(x, donor, 1.5)


def test_conflict_donors_are_deterministic_and_of_another_class():
    labels = torch.arange(200) % 7
    a, b = conflict_donors(labels, seed=3), conflict_donors(labels, seed=3)
    assert torch.equal(a, b) and not torch.equal(a, conflict_donors(labels, seed=4))
    assert bool((labels[a] != labels).all())
    both = torch.stack([labels, (torch.arange(200) // 7) % 5], dim=1)
    d = conflict_donors(both, seed=0)
    assert bool((both[d] != both).all(dim=1).all())


def test_phase_amplitude_bias_counts_and_interval():
    phase, amp = torch.zeros(100, dtype=torch.long), torch.ones(100, dtype=torch.long)
    decisions = torch.tensor([0] * 60 + [1] * 20 + [2] * 20)
    bias = phase_amplitude_bias(decisions, phase, amp)
    assert bias["phase_bias"] == pytest.approx(0.75) and bias["n_neither"] == 20
    assert bias["phase_bias_low"] < 0.75 < bias["phase_bias_high"]


def test_difference_interval_contains_the_difference():
    low, high = difference_interval(0.6, 500, 0.4, 400)
    assert low < 0.2 < high and 0.1 < low and high < 0.3


def test_curve_summary_on_hand_made_curves():
    levels = [0, 1, 3, 5]
    s = curve_summary(levels, [0.9, 0.8, 0.5, 0.1], chance=0.1)
    # half-way = 0.1 + 0.4 = 0.5: reached exactly at level 3
    assert s["half_level"] == pytest.approx(3.0) and s["half_reached"]
    assert s["auc"] == pytest.approx(((0.9 + 0.8) / 2 + (0.8 + 0.5) / 2 + (0.5 + 0.1) / 2) / 3)
    assert s["auc_normalised"] == pytest.approx(((1 + 0.875) / 2 + (0.875 + 0.5) / 2 + 0.5 / 2) / 3)
    assert s["last_relative"] == pytest.approx(0.1 / 0.9)
    # interpolated between levels: acc 0.7 at 1, 0.3 at 3, target 0.5 -> level 2
    assert half_level([0, 1, 3], [0.9, 0.7, 0.3], 0.1)[0] == pytest.approx(2.0)
    # never falls half-way; clean at chance
    assert math.isnan(curve_summary(levels, [0.9, 0.9, 0.8, 0.7], 0.1)["half_level"])
    assert math.isnan(half_level(levels, [0.1, 0.1, 0.1, 0.1], 0.1)[0])
    # inf first level (high-pass): the crossing maps to the finite level
    assert half_level([math.inf, 3, 1], [0.8, 0.3, 0.2], 0.1)[0] == 3.0
    assert normalised([0.5], 0.9, 0.1) == [pytest.approx(0.5)]


def test_shipped_human_table_has_the_published_numbers():
    low = {r["condition"]: r["accuracy"] for r in load_table("low-pass")}
    assert low == pytest.approx({"0": 0.920, "1": 0.914, "3": 0.795, "5": 0.630, "7": 0.588, "10": 0.380,
                                 "15": 0.200, "40": 0.061}, abs=6e-4)
    high = load_table("high-pass")
    assert [r["condition"] for r in high] == ["inf", "3", "1.5", "1", "0.7", "0.55", "0.45", "0.4"]
    assert all(r["trials"] == 640 and r["source"] and r["citation"] for r in high)
    assert human_curve("low-pass", [0, 1, 3]) is not None and human_curve("low-pass", [0, 2]) is None


def test_human_table_recomputed_from_the_raw_trials(shared_data):
    raw = shared_data / "human-reference"
    if not (raw / "low-pass").is_dir():
        pytest.skip("no raw human trials in ../shared/data/human-reference")
    shipped = load_table("low-pass") + load_table("high-pass")
    recomputed = compute_table(raw)
    assert [(r["experiment"], r["condition"], r["trials"], r["correct"]) for r in recomputed] == \
        [(r["experiment"], r["condition"], r["trials"], r["correct"]) for r in shipped]
    assert [r["accuracy"] for r in recomputed] == pytest.approx([r["accuracy"] for r in shipped])


def _real_images(size: int) -> torch.Tensor:
    from blockmae.data.shapetex import generate_shapetex

    return generate_shapetex("val", image_size=size, num_images=40, seed=3).images.float() / 255


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("keep", ["low", "high"])
def test_every_default_level_at_32_and_64_px_is_a_distinct_non_blank_image(size, keep):
    """What the model is shown: no level equals its neighbour, none is flat (per-image std > 0)."""
    images = _real_images(size)
    sigmas = filters.LOWPASS_SIGMAS_224 if keep == "low" else filters.HIGHPASS_SIGMAS_224
    kept = [s for s in sigmas if filters.gaussian_level_exists(s, size)]
    assert kept[0] in (0, math.inf) and len(kept) >= 2
    radii = filters.FOURIER_LOWPASS_RADII if keep == "low" else filters.FOURIER_HIGHPASS_RADII
    kept_radii, _ = filters.fourier_levels(radii, size, keep)
    for grey in (False, True):
        fn = filters.gaussian_lowpass if keep == "low" else filters.gaussian_highpass
        shown = [fn(images, s * size / 224, grey) for s in kept]
        shown_fourier = [filters.fourier_filter(images, r, keep) for r in kept_radii]
        for sequence in (shown, shown_fourier):
            for previous, current in zip(sequence, sequence[1:]):
                assert (current - previous).abs().amax(dim=(1, 2, 3)).min() > 1e-3
            for level in sequence:
                assert level.std(dim=(1, 2, 3)).amin() > 2e-4  # sigma 40 at 32 px leaves a faint blob, as at 224 px


def test_the_levels_dropped_are_the_ones_that_filtered_nothing():
    """Before levels were checked, sigma 1 at 32 px showed the clean image and high-pass 0.4 at 64 px a blank one."""
    images = _real_images(32)
    assert torch.equal(filters.gaussian_lowpass(images, 1 * 32 / 224), images)
    assert not filters.gaussian_level_exists(1, 32) and filters.gaussian_level_exists(3, 32)
    blank = filters.gaussian_highpass(_real_images(64), 0.4 * 64 / 224)
    assert blank.std(dim=(2, 3)).amax() < 1e-3
    assert not filters.gaussian_level_exists(0.4, 64) and filters.gaussian_level_exists(1.5, 64)
    # at model-vs-human's own size every one of its levels exists
    assert all(filters.gaussian_level_exists(s, 224) for s in filters.LOWPASS_SIGMAS_224 + filters.HIGHPASS_SIGMAS_224)
    assert filters.nyquist_response(0) == 1.0 and filters.nyquist_response(3.0) < 1e-4
    kept, dropped = filters.fourier_levels(filters.FOURIER_LOWPASS_RADII, 32, "low")
    assert dropped == [(0.05, "keeps only the mean at 32 px (a flat image)")] and 0.1 in kept


def test_auc_intervals_cover_the_auc_and_shrink_with_more_images():
    from blockmae.diagnostics.curves import auc_intervals, curve_summary

    rng = np.random.default_rng(0)
    p = np.array([0.9, 0.7, 0.4, 0.2])
    small = rng.random((100, 4)) < p
    large = rng.random((2000, 4)) < p
    for hits in (small, large):
        s = curve_summary(list(range(4)), list(hits.mean(0)), 0.1)
        s.update(auc_intervals(hits, 0.1))
        assert s["auc_low"] < s["auc"] < s["auc_high"]
        assert s["auc_normalised_low"] < s["auc_normalised"] < s["auc_normalised_high"]
    width = lambda h: (lambda i: i["auc_high"] - i["auc_low"])(auc_intervals(h, 0.1))
    assert width(large) < width(small) / 3

# -- the rest of model-vs-human's distortions ---------------------------------------------------------


def test_contrast_and_uniform_noise_follow_their_formulas():
    x = _images(2, 16, 16, seed=0)
    grey = filters.greyscale(x)
    assert torch.allclose(filters.contrast(x, 0.1), (0.45 + 0.1 * grey).expand(-1, 3, -1, -1))
    assert torch.allclose(filters.contrast(x, 1.0), grey.expand(-1, 3, -1, -1))
    assert torch.allclose(filters.uniform_noise(x, 0.0), filters.contrast(x, 0.3))
    a = filters.uniform_noise(x, 0.2, torch.Generator().manual_seed(1))
    b = filters.uniform_noise(x, 0.2, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and torch.equal(a[:, 0], a[:, 2])  # seeded; one draw for the three channels
    noise = a - filters.contrast(x, 0.3)  # 30% contrast lies in [0.35, 0.65]: w = 0.2 never clips
    assert noise.abs().max() <= 0.2 and noise.abs().max() > 0.15 and abs(float(noise.mean())) < 0.03
    with pytest.raises(ValueError):
        filters.contrast(x, 1.5)


def _published_phase_scramble(grey: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """model-vs-human's recipe, written out in numpy as its image-manipulation code describes it."""
    f = np.fft.fftshift(np.fft.fft2(grey))
    amplitude, phase = np.abs(f), np.angle(f)
    block = phase[1:, 1:].flatten()
    half = block.size // 2
    block[:half] += shifts
    block[half + 1:] -= shifts
    phase[1:, 1:] = block.reshape(phase[1:, 1:].shape)
    return np.clip(np.fft.ifft2(np.fft.ifftshift(amplitude * np.exp(1j * phase))).real, 0, 1)


def test_phase_scrambling_follows_model_vs_humans_recipe():
    x = 0.45 + 0.1 * _images(2, 16, 16, seed=2)  # low contrast: the scrambled image stays in [0, 1], unclipped
    assert torch.allclose(filters.phase_scramble(x, 0.0), filters.grey3(x))
    out = filters.phase_scramble(x, 90.0, torch.Generator().manual_seed(0))
    draws = (torch.rand((2, 15 * 15 // 2), generator=torch.Generator().manual_seed(0)).double() * 2 - 1) * np.pi / 2
    grey = filters.greyscale(x)[:, 0].numpy()
    for i in range(2):
        assert np.allclose(out[i, 0].numpy(), _published_phase_scramble(grey[i], draws[i].numpy()), atol=1e-12)
    assert torch.equal(out[:, 0], out[:, 2])
    assert torch.allclose(out.mean(dim=(2, 3)), filters.greyscale(x).mean(dim=(2, 3)))  # the mean is kept
    # a pair's two bins get independent draws: the amplitude shrinks as the width grows (contrast is lost)
    contrast = [float(filters.phase_scramble(x, w, torch.Generator().manual_seed(1)).std(dim=(2, 3)).mean())
                for w in (0.0, 30.0, 90.0, 180.0)]
    assert contrast[0] > contrast[1] > contrast[2] > contrast[3] and contrast[3] < 0.8 * contrast[0]
    with pytest.raises(ValueError, match="even sizes"):
        filters.phase_scramble(x[..., :15, :15], 90.0)


def test_power_equalisation_sets_the_amplitude_spectrum():
    x = 0.45 + 0.1 * _images(2, 16, 16, seed=3)
    target = filters.mean_amplitude_spectrum(x)
    out = filters.power_equalise(x, target)
    assert torch.allclose(torch.fft.fft2(out[:, 0]).abs(), target.expand(2, -1, -1), atol=1e-9)
    assert torch.allclose(torch.fft.fft2(out[:, 0]).angle()[:, 1:, 1:],
                          torch.fft.fft2(filters.greyscale(x)[:, 0]).angle()[:, 1:, 1:], atol=1e-6)
    with pytest.raises(ValueError, match="does not fit"):
        filters.power_equalise(x, target[:8])


def test_rotation():
    x = _images(2, 16, 16, seed=4)
    grey = filters.greyscale(x)[:, 0].numpy()
    for degrees in (0, 90, 180, 270):
        assert np.allclose(filters.rotate(x, degrees)[:, 1].numpy(), np.rot90(grey, k=degrees // 90, axes=(1, 2)))
    with pytest.raises(ValueError):
        filters.rotate(x, 45)


def test_false_colour_goes_through_the_monitor_table():
    x = (0.4 + 0.2 * _images(2, 16, 16, seed=4)).mul(255).round().div(255)  # 8-bit values inside the gamut
    linear = torch.linspace(0, 1, 256, dtype=torch.float64)
    once = filters.false_colour(x, linear)
    assert torch.equal(once * 255, (once * 255).round())  # back to 8-bit values
    assert (filters.false_colour(once, linear) - x).abs().max() <= 2 / 255  # an involution, up to the rounding
    assert (once - x).abs().max() > 0.05
    srgb = filters.srgb_gamma_table()
    assert srgb[0] == 0 and srgb[255] == 1 and (srgb.diff() > 0).all() and abs(float(srgb[128]) - 0.2158) < 1e-3
    assert (filters.false_colour(x) - once).abs().max() > 0.02  # the table matters
    grey = torch.full((1, 3, 2, 2), float(filters.nearest_entry(srgb, torch.tensor([0.5], dtype=torch.float64))) / 255)
    assert (filters.false_colour(grey) - grey).abs().max() <= 2 / 255  # the white point stays
    table = torch.tensor([0.0, 0.1, 0.4, 1.0], dtype=torch.float64)
    values = torch.tensor([-1.0, 0.04, 0.06, 0.25, 0.26, 0.9, 2.0], dtype=torch.float64)
    assert filters.nearest_entry(table, values).tolist() == [0, 0, 1, 1, 2, 3, 3]


def test_distortions_at_model_vs_humans_levels():
    from blockmae.errors import BlockMAEError
    from blockmae.mvh.conditions import LEVELS
    from blockmae.mvh.distortions import DISTORTIONS, distort, levels, needs_amplitude

    x = _images(1, 32, 32, seed=5).float()
    amplitude = filters.mean_amplitude_spectrum(x)
    for name in DISTORTIONS:
        assert levels(name) == LEVELS[name].conditions
        for condition in levels(name):
            out = distort(name, condition, x, torch.Generator().manual_seed(0),
                          amplitude if needs_amplitude(name, condition) else None)
            assert out.shape == x.shape and torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert torch.equal(distort("colour", "cr", x), x) and torch.equal(distort("false-colour", "True", x), x)
    # Gaussian sigmas are given at 224 px: sigma 3 at 32 px is 3 x 32 / 224
    assert torch.allclose(distort("low-pass", "3", x), filters.gaussian_lowpass(x, 3 * 32 / 224, grey=True))
    from blockmae.diagnostics.eidolon import eidolon

    assert torch.equal(distort("eidolonII", "8-3-10", x, torch.Generator().manual_seed(3)),
                       eidolon(x, 8.0, 0.3, 10.0, torch.Generator().manual_seed(3)))  # reach-coherence x 10-grain
    with pytest.raises(BlockMAEError, match="cannot apply distortion 'eidolonIV'"):
        levels("eidolonIV")
    with pytest.raises(BlockMAEError, match="even image sizes"):
        distort("phase-scrambling", "90", x[..., :31, :31])
    with pytest.raises(BlockMAEError, match="no level '7'"):
        distort("rotation", "7", x)


def test_model_vs_humans_measurement_files(tmp_path):
    """Power equalisation's spectrum and false colour's gamma table, read from files in model-vs-human's form."""
    from blockmae.errors import BlockMAEError
    from blockmae.mvh.distortions import distort, load_amplitude_spectrum, load_gamma_table

    x = _images(2, 16, 16, seed=6)
    target = filters.mean_amplitude_spectrum(x)
    np.save(tmp_path / "spectrum.npy", np.fft.fftshift(target.numpy()))  # stored centred, as model-vs-human does
    loaded = load_amplitude_spectrum(tmp_path / "spectrum.npy")
    assert torch.allclose(loaded, target)
    assert torch.equal(distort("power-equalisation", "pow", x, amplitude=loaded), filters.power_equalise(x, target))
    gamma = np.linspace(0, 1, 256) ** 2.2
    np.save(tmp_path / "gamma.npy", gamma)
    table = load_gamma_table(tmp_path / "gamma.npy")
    assert torch.equal(distort("false-colour", "False", x, gamma_table=table), filters.false_colour(x, table))
    bad = {"flat.npy": np.ones(256), "short.npy": gamma[:100], "wide.npy": np.ones((16, 8)),
           "negative.npy": -np.ones((16, 16)), "objects.npy": np.array([{"a": 1}], dtype=object)}
    for name, array in bad.items():
        np.save(tmp_path / name, array, allow_pickle=True)
    (tmp_path / "text.npy").write_text("not an array")
    for loader, name, message in [(load_gamma_table, "flat.npy", "256 increasing values"),
                                  (load_gamma_table, "short.npy", "got 100 values"),
                                  (load_amplitude_spectrum, "wide.npy", r"got shape \(16, 8\)"),
                                  (load_amplitude_spectrum, "negative.npy", "amplitudes >= 0"),
                                  (load_amplitude_spectrum, "objects.npy", "not a readable .npy array"),
                                  (load_gamma_table, "text.npy", "not a readable .npy array"),
                                  (load_gamma_table, "missing.npy", "not a readable .npy array")]:
        with pytest.raises(BlockMAEError, match=message):
            loader(tmp_path / name)
