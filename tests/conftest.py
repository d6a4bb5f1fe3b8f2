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
def planned_pair(tmp_path_factory, worker_id):
    """One phantom pair planned with plan-pair (2d and 3d_fullres, tiny network) for the whole session.

    Returns ``(root, env)``; ``env`` holds the nnU-Net folder variables, the trainer registration and a tiny budget.
    Tests that train must use their own trainer/fold so their model folders do not collide.

    Under pytest-xdist the pair is planned ONCE per run (by whichever worker asks first, under a file lock, in the
    run's shared temporary folder) and every worker gets its own copy of the folders (a copy takes well under a
    second; planning takes about a minute of CPU), so no two workers ever write into the same nnU-Net folders.
    """
    from pairs import make_planned_pair, nnunet_env

    root = tmp_path_factory.mktemp("planned_pair")
    if worker_id == "master":  # no xdist: plan here
        return root, make_planned_pair(root, num_train=5, num_test=2, configurations=("2d", "3d_fullres"))
    import fcntl

    shared = tmp_path_factory.getbasetemp().parent / "planned_pair_shared"
    shared.mkdir(exist_ok=True)
    with open(shared / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes (also if planning fails)
        if not (shared / "done").exists():
            make_planned_pair(shared / "pair", num_train=5, num_test=2, configurations=("2d", "3d_fullres"))
            (shared / "done").write_text("ok")
    for name in ("nnUNet_raw", "nnUNet_preprocessed"):
        shutil.copytree(shared / "pair" / name, root / name, symlinks=True)
    return root, nnunet_env(root)


#: measured seconds per test file (written by a run with TEST_RECORD_DURATIONS=1, see pytest_sessionfinish)
DURATIONS_FILE = Path(__file__).with_name("file_durations.json")
_recorded: dict[str, float] = {}


def _known_durations() -> dict[str, float]:
    import json

    try:
        return {str(k): float(v) for k, v in json.loads(DURATIONS_FILE.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def pytest_collection_modifyitems(config, items):
    """Longest files first (measured seconds from :data:`DURATIONS_FILE`; files not in it after those, files with slow
    tests first among them), each file's tests kept together and in order.

    ``scripts/test.sh`` runs the suite on two workers (pytest-xdist, ``--dist loadfile``: a file's tests and its
    module fixtures stay on one worker). The workers take files in this order, so starting with the long ones keeps
    one worker from finishing a long file alone at the end (longest first is the classic rule for two machines).
    """
    known = _known_durations()
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    order = {path: i for i, path in enumerate(dict.fromkeys(item.path for item in items))}

    def key(item):
        seconds = known.get(item.path.name)
        return (seconds is None, -(seconds or 0.0), item.path not in slow_files, order[item.path])

    items.sort(key=key)


def pytest_runtest_logreport(report):
    """With TEST_RECORD_DURATIONS=1: add up each file's setup, call and teardown time (under xdist the controller
    receives every worker's reports)."""
    if os.environ.get("TEST_RECORD_DURATIONS") == "1":
        name = report.nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
        _recorded[name] = _recorded.get(name, 0.0) + float(report.duration)


def pytest_sessionfinish(session, exitstatus):
    """With TEST_RECORD_DURATIONS=1, on the controller (not in a worker): write :data:`DURATIONS_FILE`."""
    import json

    if os.environ.get("TEST_RECORD_DURATIONS") != "1" or hasattr(session.config, "workerinput") or not _recorded:
        return
    ordered = dict(sorted(((k, round(v, 1)) for k, v in _recorded.items()), key=lambda kv: -kv[1]))
    tmp = DURATIONS_FILE.with_suffix(".tmp")
    tmp.write_text(json.dumps(ordered, indent=1) + "\n")
    os.replace(tmp, DURATIONS_FILE)
