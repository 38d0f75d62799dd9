"""`--config NAME` finds a shipped config; a path wins over a name; an installed wheel carries the configs."""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest

from blockmae.config import (
    check_numbers, load_config, number, resolve_config_path, shipped_config_names, shipped_configs_dir,
)
from blockmae.engine.config import PretrainConfig
from blockmae.errors import BlockMAEError
from wheel_install import install_wheel

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["smoke", "smoke.yaml", "configs/smoke.yaml"])
def test_a_shipped_config_is_found_by_name(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the checkout: no configs/ folder here
    assert resolve_config_path(name) == shipped_configs_dir() / "smoke.yaml"


def test_subfolder_names_resolve_and_are_listed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_config_path("ablations/smoke_block_size") == shipped_configs_dir() / "ablations" / "smoke_block_size.yaml"
    names = shipped_config_names()
    assert {"smoke", "quickstart", "quickstart_gpu", "linear_probe", "ablations/block_size"} <= set(names)
    assert names == sorted(names)


def test_the_repository_configs_folder_is_the_shipped_one():
    """One source of truth: configs/ at the repository root is a symlink to the package's folder."""
    assert (REPO_ROOT / "configs").is_symlink()
    assert (REPO_ROOT / "configs").resolve() == shipped_configs_dir().resolve()


def test_an_existing_path_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smoke").write_text("train:\n  epochs: 7\n")
    assert resolve_config_path("smoke") == Path("smoke")
    assert load_config(PretrainConfig, "smoke").train.epochs == 7
    shipped = load_config(PretrainConfig, shipped_configs_dir() / "smoke.yaml").train.epochs
    assert shipped != 7 and load_config(PretrainConfig, "smoke.yaml").train.epochs == shipped


def test_an_unknown_name_is_one_line_listing_the_shipped_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BlockMAEError) as err:
        load_config(PretrainConfig, "smok")
    message = str(err.value)
    assert "\n" not in message and "smok" in message
    assert "smoke" in message and "ablations/block_size" in message


def test_a_spec_naming_configs_paths_plans_outside_the_checkout(tmp_path, monkeypatch):
    """The shipped specs say `base: configs/smoke.yaml`; from any folder they resolve to the shipped files."""
    from blockmae.sweep.evaluations import probe_config
    from blockmae.sweep.load import load_spec

    monkeypatch.chdir(tmp_path)
    spec = load_spec("ablations/smoke_block_size")
    assert spec.base == "configs/smoke.yaml" and len(spec.arms()) >= 2
    ev = spec.evaluations[0]
    cfg = probe_config(spec.probe_config, spec.probe_overrides, ev, "random", tmp_path, tmp_path / "r", "n", 0)
    assert cfg.checkpoint == "random"


@pytest.mark.slow
def test_an_installed_wheel_finds_its_configs(tmp_path):
    """Non-editable install: build a wheel, install it into a bare target, run from a folder without configs/."""
    installed = install_wheel(tmp_path)
    target, env, work, blockmae = installed.target, installed.env, installed.work, installed.blockmae
    where = subprocess.run([sys.executable, "-c", "import blockmae; print(blockmae.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert Path(where.strip()).is_relative_to(target)
    printed = blockmae("pretrain", "--config", "smoke", "--print-config")
    assert printed.returncode == 0, printed.stderr
    assert "preset: vit_nano" in printed.stdout
    assert blockmae("quickstart", "--help").returncode == 0
    quick = blockmae("quickstart", "--print-config")  # the default config (CPU or GPU) resolves in the wheel
    assert quick.returncode == 0, quick.stderr
    assert "budget_seconds" in quick.stdout and str(target) in quick.stderr
    plan = blockmae("sweep", "plan", "ablations/smoke_block_size")
    assert plan.returncode == 0, plan.stderr
    missing = blockmae("pretrain", "--config", "nope", "--print-config")
    assert missing.returncode == 2 and "shipped: " in missing.stderr and "Traceback" not in missing.stderr


@dataclass
class _Inner:
    k: int = 1
    RANGES: ClassVar[dict[str, str]] = {"k": ">=1"}


@dataclass
class _Outer:
    inner: _Inner = field(default_factory=_Inner)
    lr: float = 0.1


def test_number_options_and_declared_ranges():
    """config.number: NaN, infinity and out-of-range values refused naming the rule; RANGES checked by
    check_numbers with the dotted key."""
    ratio = number(float, "(0..1)")
    assert ratio("0.5") == 0.5
    for text, message in (("1", r"in \(0, 1\)"), ("0", r"in \(0, 1\)"), ("nan", "finite"), ("inf", "finite"),
                          ("x", "a number")):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            ratio(text)
    with pytest.raises(argparse.ArgumentTypeError, match="at least 1, got 0"):
        number(int, ">=1")("0")
    assert number(int, "1..10")("10") == 10

    check_numbers(_Outer())
    with pytest.raises(BlockMAEError, match=r"inner.k must be at least 1, got 0"):
        check_numbers(_Outer(_Inner(0)))
    with pytest.raises(BlockMAEError, match=r"lr must be a finite number"):
        check_numbers(_Outer(lr=float("nan")))
