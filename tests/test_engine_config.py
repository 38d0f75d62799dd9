from pathlib import Path

import pytest

from blockmae.config import load_config, to_dict
from blockmae.engine.config import PretrainConfig
from blockmae.errors import BlockMAEError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_unknown_key_names_key_and_valid_keys():
    with pytest.raises(BlockMAEError) as err:
        load_config(PretrainConfig, None, ["train.epoch=5"])
    msg = str(err.value)
    assert "train.epoch" in msg and "epochs" in msg and "batch_size" in msg


def test_unknown_section_lists_sections():
    with pytest.raises(BlockMAEError, match="model, mask, data, train, optim, run"):
        load_config(PretrainConfig, None, ["optimizer.lr=1"])


def test_wrong_type_names_key():
    with pytest.raises(BlockMAEError, match="train.batch_size"):
        load_config(PretrainConfig, None, ["train.batch_size=lots"])


def test_block_that_does_not_fit_names_the_grid():
    with pytest.raises(BlockMAEError, match="4x4 patch grid"):
        load_config(PretrainConfig, None, ["model.patch_size=16", "mask.block=8"])


@pytest.mark.parametrize("override, fragment", [
    ("train.precision=fp8", "train.precision"),
    ("mask.ratio=1.0", "mask.ratio"),
    ("mask.family=random", "mask.block=1"),
    ("train.accum_steps=3", "accum_steps"),
    ("data.crop_scale=[0.5]", "crop_scale"),
    ("data.interpolation=lanczos", "interpolation"),
    ("model.patch_size=7", "multiple"),
    ("optim.betas=[0.9]", "optim.betas"),
    ("run.milestones=[0]", "milestones"),
    # NaN and infinity pass every `x <= 0` check and failed only later (the lr schedule, the first step)
    ("optim.lr=nan", "optim.lr must be a finite number, got nan"),
    ("optim.base_lr=inf", "optim.base_lr must be a finite number"),
    ("optim.min_lr=nan", "optim.min_lr must be a finite"),
    ("optim.warmup_epochs=inf", "optim.warmup_epochs must be a finite"),
    ("optim.weight_decay=nan", "optim.weight_decay must be a finite"),
    ("optim.clip_grad=inf", "optim.clip_grad must be a finite"),
    ("optim.betas=[0.9,nan]", "optim.betas must be a finite"),
    ("data.crop_scale=[0.2,inf]", "data.crop_scale must be a finite"),
    ("mask.ratio=nan", "mask.ratio must be a finite"),
    ("run.ckpt_every_minutes=inf", "run.ckpt_every_minutes must be a finite"),
])
def test_bad_values_are_named(override, fragment):
    with pytest.raises(BlockMAEError, match=fragment.replace(".", r"\.")):
        load_config(PretrainConfig, None, [override])


def test_lr_scales_with_effective_batch():
    cfg = load_config(PretrainConfig, None, [])
    assert cfg.optim.resolved_lr(cfg.train.batch_size) == pytest.approx(1.5e-4 * 512 / 256)
    cfg = load_config(PretrainConfig, None, ["optim.lr=0.01"])
    assert cfg.optim.resolved_lr(4096) == 0.01


def test_shipped_configs_load_and_differ_only_in_masking():
    block = to_dict(load_config(PretrainConfig, CONFIGS / "pretrain_block.yaml"))
    rand = to_dict(load_config(PretrainConfig, CONFIGS / "pretrain_random.yaml"))
    assert block["mask"] == {"family": "block", "block": 2, "ratio": 0.75, "align": "free"}
    assert (rand["mask"]["family"], rand["mask"]["block"]) == ("random", 1)
    assert block["model"]["preset"] == "vit_small" and block["model"]["patch_size"] == 8
    assert block["data"]["dataset"] == "tiny-imagenet" and block["data"]["image_size"] == 64
    for section in ("model", "data", "train", "optim"):
        assert block[section] == rand[section]


def test_model_kwargs_pass_only_set_overrides():
    cfg = load_config(PretrainConfig, None, ["model.decoder_depth=2", "data.image_size=32", "model.patch_size=4",
                                             "mask.block=4"])
    kwargs = cfg.model_kwargs()
    assert kwargs["decoder_depth"] == 2 and kwargs["img_size"] == 32 and kwargs["mask_block"] == 4
    assert "embed_dim" not in kwargs and "decoder_embed_dim" not in kwargs


@pytest.mark.parametrize("text, where, problem", [
    ("train:\n  epochs: 3\n  batch_size: [1, 2\nrun:\n  seed: 1\n", ":4:4:", "did not find expected ',' or ']'"),
    ("train:\n  epochs: 3\n   batch_size: 4\n", ":3:14:", "mapping values are not allowed"),
    ("train: {epochs: 3\n", ":2:1:", "expected ',' or '}'"),
])
def test_yaml_syntax_error_is_one_line_with_file_line_column(tmp_path, text, where, problem):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(BlockMAEError) as err:
        load_config(PretrainConfig, path)
    message = str(err.value)
    assert message.startswith(f"{path}{where} YAML syntax error: ") and problem in message
    assert "\n" not in message


def test_yaml_that_is_not_a_mapping_is_named(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(BlockMAEError, match="must be a mapping of sections"):
        load_config(PretrainConfig, path)


def test_masked_count_rule_is_the_generators_half_up_rule():
    # 0.125 of a 2x2 grid is 0.5 patches: half-up masks 1 (Python's round would give 0 and refuse it).
    cfg = load_config(PretrainConfig, None, ["data.image_size=16", "model.patch_size=8", "mask.family=random",
                                             "mask.block=1", "mask.ratio=0.125"])
    assert cfg.mask_generator().num_masked == 1


def test_block_hint_names_an_accepted_block():
    with pytest.raises(BlockMAEError, match="use a block <= 7") as err:
        load_config(PretrainConfig, None, ["mask.block=16"])  # 64 px / patch 8: an 8x8 grid
    block = int(str(err.value).rsplit("<= ", 1)[1].split()[0])
    load_config(PretrainConfig, None, [f"mask.block={block}"])


def test_env_json_records_the_mask_statistics_of_the_run():
    from blockmae.engine.environment import MASK_STATS_DRAWS, mask_record

    record = mask_record(load_config(PretrainConfig, CONFIGS / "smoke.yaml"))
    assert record["draws"] == MASK_STATS_DRAWS == 2_000 and "2000 draws" in record["note"]
    assert record["setting"] == "block masks (2x2, free placement) on the 8x8 patch grid, ratio 0.75"
    assert record["distinct_masks"] >= 1_990 and record["ratio"] == pytest.approx(0.75)
    assert 1 < record["mean_regions"] < 2 and 1.2 < record["avg_dist"] < 1.8
