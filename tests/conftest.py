from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# Subprocesses (`python -m blockmae ...`, torchrun) must import this tree's sources too.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH")]))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real dataset samples in ../shared/data (see its README)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data samples not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test may write to the user's ~/.cache: caches go to a session temp folder."""
    os.environ["BLOCKMAE_CACHE_DIR"] = str(tmp_path_factory.mktemp("blockmae-cache"))


def transformers_or_skip():
    """transformers when installed and able to use this torch (releases >= 5.14 need torch >= 2.5), else skip."""
    transformers = pytest.importorskip("transformers")
    if not transformers.is_torch_available():
        pytest.skip(f"transformers {transformers.__version__} cannot use the torch installed here (it needs a newer one)",
                    allow_module_level=True)
    return transformers
