import torch

from blockmae.data.augment import normalize
from blockmae.masking import MaskGenerator
from blockmae.models import build_mae
from blockmae.visualisation.reconstructions import MASKED_GREY, reconstruction_figure, reconstruction_panels


def _setup():
    torch.manual_seed(0)
    model = build_mae("vit_nano", img_size=32, patch_size=4)
    images = normalize(torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8))
    mask = MaskGenerator(8, 0.75, "block", 2)(3, generator=torch.Generator().manual_seed(0))
    return model, images, mask


def test_panels_paste_visible_patches_and_grey_out_masked_ones():
    model, images, mask = _setup()
    model.train()
    panels = reconstruction_panels(model, images, mask)
    assert model.training  # restored
    pixel_mask = mask.mask.reshape(3, 1, 8, 8).repeat_interleave(4, 2).repeat_interleave(4, 3).bool()
    pixel_mask = pixel_mask.expand(-1, 3, -1, -1)
    pasted, recon, masked = panels["visible + reconstruction"], panels["reconstruction"], panels["masked"]
    assert torch.equal(pasted[pixel_mask], recon[pixel_mask])
    assert torch.allclose(pasted[~pixel_mask], masked[~pixel_mask])
    assert torch.all(masked[pixel_mask] == MASKED_GREY)
    # visible pixels are the (de-normalised) input
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(pasted[~pixel_mask], (images * std + mean).clamp(0, 1)[~pixel_mask], atol=1e-6)
    assert all(p.shape == (3, 3, 32, 32) and p.min() >= 0 and p.max() <= 1 for p in panels.values())


def test_figure_is_written_atomically(tmp_path):
    model, images, mask = _setup()
    path = reconstruction_figure(model, images, {"2x2": mask, "again": mask}, tmp_path / "figs" / "r.png", title="t")
    assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in path.parent.iterdir()] == ["r.png"]  # no temporary file left behind
