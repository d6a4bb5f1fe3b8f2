"""Shared test helpers: temporary nnU-Net folders, the real fixtures, the venv's console scripts."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

# PyTorch's OpenMP threads spin while waiting by default; on a loaded 2-core machine that made training steps 10-100x
# slower. Passive waiting costs nothing on a quiet machine. Set before any test imports torch (children inherit it).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"
TOTALSEG = FIXTURES / "totalsegmentator"
BIN = Path(sys.executable).parent


def bin_path(name: str) -> str:
    """A console script installed next to the running interpreter (nnUNetv2_train, nnunet_unpaired, ...)."""
    candidate = BIN / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"console script {name} not found next to {sys.executable}; install with: pip install -e '.[test]'")
    return found


@pytest.fixture
def totalseg_fixtures() -> Path:
    """The real CT and MR volumes in ../shared/fixtures/totalsegmentator (skips when absent, e.g. a user's clone)."""
    needed = ["ct.nii.gz", "ct_seg.nii.gz", "mr.nii.gz", "mr_seg.nii.gz"]
    if not all((TOTALSEG / f).is_file() for f in needed):
        pytest.skip(f"real-data fixtures not found at {TOTALSEG} (they sit in ../shared beside a CI checkout)")
    return TOTALSEG


@pytest.fixture
def nnunet_dirs(tmp_path, monkeypatch):
    """Fresh nnUNet_raw / nnUNet_preprocessed / nnUNet_results folders, exported to this process and children."""
    dirs = {}
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        d = tmp_path / name
        d.mkdir()
        monkeypatch.setenv(name, str(d))
        dirs[name] = d
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    monkeypatch.setenv("nnUNet_compile", "false")
    return dirs


@pytest.fixture(scope="session")
def planned_pair(tmp_path_factory):
    """One phantom pair planned with plan-pair (2d and 3d_fullres, tiny network) for the whole session.

    Returns ``(root, env)``; ``env`` holds the nnU-Net folder variables, the trainer registration and a tiny budget.
    Tests that train must use their own trainer/fold so their model folders do not collide.
    """
    from pairs import make_planned_pair

    root = tmp_path_factory.mktemp("planned_pair")
    return root, make_planned_pair(root, num_train=5, num_test=2, configurations=("2d", "3d_fullres"))


def pytest_collection_modifyitems(config, items):
    """Files with slow (end-to-end) tests first, the rest after, each file's tests kept together and in order.

    ``scripts/test.sh`` runs the suite on two workers (pytest-xdist, ``--dist loadfile``: a file's tests and its
    module fixtures stay on one worker). The workers take files in this order, so starting with the long ones keeps
    one worker from finishing a long file alone at the end (longest first is the classic rule for two machines).
    """
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    order = {path: i for i, path in enumerate(dict.fromkeys(item.path for item in items))}
    items.sort(key=lambda item: (item.path not in slow_files, order[item.path]))
