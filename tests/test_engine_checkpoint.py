import random

import numpy as np
import pytest
import torch

from blockmae.engine import checkpoint as ckpt
from blockmae.errors import BlockMAEError
from blockmae.fileio import write_json_atomic


def test_rng_state_round_trips_through_weights_only_load(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    state = ckpt.rng_state()
    torch.save({"rng": state}, tmp_path / "state.pt")
    expected = (random.random(), np.random.standard_normal(), np.random.rand(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    loaded = torch.load(tmp_path / "state.pt", weights_only=True)
    ckpt.set_rng_state(loaded["rng"])
    again = (random.random(), np.random.standard_normal(), np.random.rand(), torch.rand(3))
    assert expected[:3] == again[:3]
    assert torch.equal(expected[3], again[3])


def _fake_checkpoint(directory, step):
    directory.mkdir(parents=True)
    for name in (ckpt.WEIGHTS, ckpt.STATE):
        (directory / name).write_bytes(b"x")
    write_json_atomic(directory / ckpt.META, {"step": step})


@pytest.mark.parametrize("leftovers, expected_step", [
    ({"last": 2}, 2),
    ({"last.old": 1, "last.tmp": 2}, 2),  # killed between the two renames: the new one is whole
    ({"last.old": 1}, 1),  # killed while the new one was being written (.tmp incomplete below)
])
def test_find_checkpoint_recovers_an_interrupted_swap(tmp_path, leftovers, expected_step):
    ckpts = tmp_path / "checkpoints"
    for name, step in leftovers.items():
        _fake_checkpoint(ckpts / name, step)
    if "last.tmp" not in leftovers:
        (ckpts / "last.tmp").mkdir(parents=True)
        (ckpts / "last.tmp" / ckpt.WEIGHTS).write_bytes(b"partial")
    found = ckpt.find_checkpoint(tmp_path)
    assert found == ckpts / "last"
    assert ckpt.read_meta(found)["step"] == expected_step


def test_find_checkpoint_none_for_fresh_dir(tmp_path):
    assert ckpt.find_checkpoint(tmp_path) is None


def test_architecture_mismatch_is_named(tmp_path):
    meta = {"arch": {"embed_dim": 384, "depth": 12}}
    ckpt.check_architecture(meta, {"embed_dim": 384, "depth": 12}, tmp_path)
    with pytest.raises(BlockMAEError, match="model.embed_dim 384 vs 192"):
        ckpt.check_architecture(meta, {"embed_dim": 192, "depth": 12}, tmp_path)


def test_config_changes_lists_trajectory_keys_only():
    """Anything that changes what is computed is a change (epochs too: the cosine would jump); where the run
    writes, how often it logs or checkpoints, threads and device are not; milestones only for epochs run."""
    saved = {"mask": {"block": 2}, "train": {"epochs": 5, "accum_steps": 1, "cpu_threads": 1, "device": "cpu"},
             "optim": {"base_lr": 1.5e-4}, "run": {"log_every": 20, "dir": "a", "milestones": [2, 4]}}
    free = {"mask": {"block": 2}, "train": {"epochs": 5, "accum_steps": 1, "cpu_threads": 8, "device": "cuda"},
            "optim": {"base_lr": 1.5e-4}, "run": {"log_every": 1, "dir": "b", "milestones": [2, 4, 5]}}
    assert ckpt.config_changes(saved, free, epoch=3) == {}
    changed = {"mask": {"block": 4}, "train": {"epochs": 6, "accum_steps": 2, "cpu_threads": 1, "device": "cpu"},
               "optim": {"base_lr": 1e-3}, "run": {"log_every": 20, "dir": "a", "milestones": [1, 2, 4]}}
    assert ckpt.config_changes(saved, changed, epoch=3) == {
        "mask.block": (2, 4), "optim.base_lr": (1.5e-4, 1e-3), "run.milestones": ([2, 4], [1, 2, 4]),
        "train.accum_steps": (1, 2), "train.epochs": (5, 6)}
