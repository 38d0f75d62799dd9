import pytest
import torch

from blockmae.cli import main
from blockmae.errors import BlockMAEError
from blockmae.visualisation.cli import checkpoint_label, standard_masks


def test_standard_masks_follow_the_grid():
    masks = standard_masks({"img_size": 32, "patch_size": 4, "mask_ratio": 0.75}, count=3)
    assert list(masks) == ["random", "2x2 blocks", "4x4 blocks"]
    assert all(m.mask.shape == (3, 64) and m.mask.sum(1).eq(48).all() for m in masks.values())
    small = standard_masks({"img_size": 16, "patch_size": 4, "mask_ratio": 0.75}, count=2)
    assert "4x4 blocks" not in small  # a 4x4 block is the whole 4x4 grid
    assert checkpoint_label("run/checkpoints/epoch_0050", {}) == "epoch 50"
    assert checkpoint_label("x", {"epoch": 7}) == "epoch 7"


@pytest.mark.slow
def test_viz_single_and_several_checkpoints(tmp_path, shared_data, monkeypatch):
    from blockmae.models import build_mae
    from blockmae.models.io import save_mae

    monkeypatch.setenv("BLOCKMAE_CACHE_DIR", str(tmp_path / "cache"))
    paths = []
    for epoch in (1, 2):
        torch.manual_seed(epoch)
        paths.append(str(save_mae(build_mae("vit_nano", img_size=32, patch_size=4),
                                  tmp_path / f"epoch_{epoch:04d}" / "model.safetensors", {"epoch": epoch})))
    data = ["--data", "tiny-imagenet", "--root", str(shared_data / "tiny-imagenet-200-mini"), "--images", "2"]
    assert main(["viz", "reconstructions", "--checkpoint", paths[0], "--out", str(tmp_path / "one.png"), *data]) == 0
    assert main(["viz", "reconstructions", "--checkpoint", *paths, "--out", str(tmp_path / "epochs.png"), *data]) == 0
    from PIL import Image

    one, epochs = Image.open(tmp_path / "one.png"), Image.open(tmp_path / "epochs.png")
    assert one.size[0] > 200 and epochs.size[1] > one.size[1] * 0.5
    other = build_mae("vit_nano", img_size=16, patch_size=4)
    save_mae(other, tmp_path / "small.safetensors")
    with pytest.raises(BlockMAEError, match="one run"):
        from blockmae.visualisation.cli import draw_reconstructions

        draw_reconstructions([paths[0], str(tmp_path / "small.safetensors")], tmp_path / "x.png")
