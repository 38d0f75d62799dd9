"""Build this tree as a wheel and install it, non-editable, into a bare folder (for the tests that check
what an installed blockmae carries: shipped configs, reference encoders)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class InstalledWheel:
    target: Path  # where the wheel is installed
    work: Path  # an empty folder to run from (no configs/ beside it)
    env: dict[str, str]  # the environment that imports the installed copy only

    def blockmae(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "blockmae", *args], cwd=self.work, env=self.env,
                              capture_output=True, text=True, timeout=120)


def install_wheel(tmp_path: Path, prepare: Callable[[Path], None] | None = None) -> InstalledWheel:
    """Install a wheel of this tree under `tmp_path`; `prepare(source)` may add files to the copy of the
    tree that the wheel is built from."""
    source = tmp_path / "source"  # built from a copy, so the build leaves nothing in the checkout
    shutil.copytree(REPO_ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    if prepare is not None:
        prepare(source)
    wheels, target, work = tmp_path / "wheels", tmp_path / "target", tmp_path / "work"
    work.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
                   check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = wheels.glob("blockmae-*.whl")
    subprocess.run(pip + ["install", "--no-deps", "--target", str(target), str(wheel)], check=True, capture_output=True)
    # Only the installed copy: not this tree's src (conftest puts it on PYTHONPATH for other tests).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(target)}
    return InstalledWheel(target, work, env)
