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
# On an xdist worker of a run with several workers (scripts/test.sh: 2 on 2 cores): one torch thread per process, in
# the tests and in the nnU-Net trainings they start (nnU-Net's run_training sets as many threads as cores, which this
# package's setting overrides in every training step), so the two workers do not run 4 threads on 2 cores. A user's
# own value of either variable wins.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) >= 2:  # xdist sets it before this file is imported
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("nnUNet_unpaired_torch_threads", "1")

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


def _shared_pair_folder(tmp_path_factory) -> Path:
    """Where the xdist workers of one run share the planned pair: in the run's base temporary folder (pytest-N/, the
    parent of each worker's own popen-gwK/)."""
    return tmp_path_factory.getbasetemp().parent / "planned_pair_shared"


def _start_pair_planning(config) -> None:
    """On an xdist worker whose tests need ``planned_pair``: start planning it in a background process, once per run
    (the first worker to get here takes the lock and hands it to that process, which holds it until it is done).
    Meanwhile the workers run the long files that do not need the pair (see :func:`pytest_collection_modifyitems`)."""
    import fcntl
    import subprocess

    shared = _shared_pair_folder(config._tmp_path_factory)
    shared.mkdir(exist_ok=True)
    fd = os.open(shared / "lock", os.O_CREAT | os.O_RDWR)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # the other worker is starting it
        if (shared / "started").exists():
            return
        (shared / "started").write_text(str(os.getpid()))
        with open(shared / "planning.log", "w") as log:
            subprocess.Popen([sys.executable, str(Path(__file__).with_name("pairs.py")), "plan-session-pair",
                              str(shared / "pair"), str(shared / "done")], pass_fds=(fd,), stdout=log,
                             stderr=subprocess.STDOUT)
    finally:
        os.close(fd)  # the planning process keeps its copy of the locked descriptor until it exits


@pytest.fixture(scope="session")
def planned_pair(tmp_path_factory, pytestconfig):
    """One phantom pair planned with plan-pair (2d and 3d_fullres, tiny network) for the whole session.

    Returns ``(root, env)``; ``env`` holds the nnU-Net folder variables, the trainer registration and a tiny budget.
    Tests that train must use their own trainer/fold so their model folders do not collide.

    Under pytest-xdist the pair is planned ONCE per run, in the background from the start of the run
    (:func:`_start_pair_planning`), into the run's shared temporary folder; every worker waits for it here (the file
    lock) and gets its own copy of the folders (well under a second; planning takes about a minute of CPU), so no two
    workers ever write into the same nnU-Net folders. If the background planning failed, the fixture plans itself
    (and fails with nnU-Net's message); the background log is ``planned_pair_shared/planning.log``.
    """
    import fcntl

    from pairs import SESSION_PAIR, make_planned_pair, nnunet_env

    root = tmp_path_factory.mktemp("planned_pair")
    if not hasattr(pytestconfig, "workerinput"):  # not an xdist worker: plan here
        return root, make_planned_pair(root, **SESSION_PAIR)
    shared = _shared_pair_folder(tmp_path_factory)
    shared.mkdir(exist_ok=True)
    with open(shared / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # waits for the background planning; released when the file closes
        if not (shared / "done").exists():
            shutil.rmtree(shared / "pair", ignore_errors=True)
            make_planned_pair(shared / "pair", **SESSION_PAIR)
            (shared / "done").write_text("ok")
    for name in ("nnUNet_raw", "nnUNet_preprocessed"):
        shutil.copytree(shared / "pair" / name, root / name, symlinks=True)
    return root, nnunet_env(root)


#: files that share a session fixture's expensive work run on ONE xdist worker: file -> group
#: (:func:`pytest_xdist_make_scheduler`). Every other file is its own group. Without the grouping (one process, or
#: another --dist mode) each worker builds the fixture itself: slower, never wrong.
SHARED_GROUPS = {"test_e2e_joint.py": "joint_model", "test_share_deploy.py": "joint_model"}


def _shared_file_groups():
    """xdist's ``--dist loadfile`` scheduler with the files of :data:`SHARED_GROUPS` as one unit of work (one scope)."""
    from xdist.scheduler import LoadFileScheduling

    class SharedFileGroups(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            return SHARED_GROUPS.get(scope.rsplit("/", 1)[-1], scope)

    return SharedFileGroups


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile`` with the files of :data:`SHARED_GROUPS` as one unit of work, so they run on one worker (one
    after the other, in collection order) and share their session fixture. xdist's own ``--dist loadgroup`` would do
    it with marks, but with pytest 9.2 its marks no longer change the test ids it groups by (it sets
    ``item._nodeid``, which pytest 9.2's ``Node.nodeid`` does not read), so every file stayed on its own."""
    if config.getvalue("dist") != "loadfile":
        return None
    return _shared_file_groups()(config, log)


#: the fold and epochs (x 10 iterations) of the session's tiny joint training (:func:`joint_model`)
JOINT_FOLD = "4"
JOINT_EPOCHS = 4


@pytest.fixture(scope="session")
def joint_model(planned_pair, tmp_path_factory):
    """One tiny joint training of the session's pair (``nnUNetv2_train -tr nnUNetTrainerUnpairedJoint``: 4 epochs x 10
    iterations, 2 augmentation workers, fold :data:`JOINT_FOLD`) into its own nnUNet_results, shared by the end-to-end
    tests (test_e2e_joint) and the share/deploy tests (test_share_deploy), which :data:`SHARED_GROUPS` keeps on one
    worker. Tests must not change its model folders (continue a copy).

    Returns ``(root, env, marker)``; ``marker`` is set in the training's environment only, so a test can find
    processes the training left behind."""
    import uuid

    from pairs import IDS, run

    root, env = planned_pair
    marker = f"nnunet_unpaired_test_{uuid.uuid4().hex}"
    results = tmp_path_factory.mktemp("joint_model") / "nnUNet_results"
    results.mkdir()
    env = dict(env, nnUNet_results=str(results), nnUNet_unpaired_epochs=str(JOINT_EPOCHS), nnUNet_unpaired_iters="10",
               nnUNet_n_proc_DA="2")
    run(["nnUNetv2_train", str(IDS[0]), "2d", JOINT_FOLD, "-tr", "nnUNetTrainerUnpairedJoint", "-device", "cpu"],
        dict(env, NNUNET_UNPAIRED_TEST_MARKER=marker), timeout=900)
    return root, env, marker


#: measured seconds per test file (written by a run with TEST_RECORD_DURATIONS=1, see pytest_sessionfinish)
DURATIONS_FILE = Path(__file__).with_name("file_durations.json")
_recorded: dict[str, float] = {}


def _known_durations() -> dict[str, float]:
    import json

    try:
        return {str(k): float(v) for k, v in json.loads(DURATIONS_FILE.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return {}


#: files at least this long (measured seconds) that do not use ``planned_pair`` run first, while it is planned
EARLY_SECONDS = 60.0


def pytest_collection_modifyitems(config, items):
    """Long files that do not need the session's planned pair first (it is planned in the background meanwhile, see
    :func:`planned_pair`), then the rest; within each group longest first (measured seconds from
    :data:`DURATIONS_FILE`; files not in it after those, files with slow tests first among them), each file's tests
    kept together and in order.

    ``scripts/test.sh`` runs the suite on two workers (pytest-xdist, ``--dist loadfile``: a file's tests and its
    module fixtures stay on one worker, and so do the files of :data:`SHARED_GROUPS`, which share a session
    fixture's work). The workers take the files in this order, so starting with the long ones keeps one worker from
    finishing a long file alone at the end (longest first is the classic rule for two machines).
    """
    known = _known_durations()
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    order = {path: i for i, path in enumerate(dict.fromkeys(item.path for item in items))}
    pair_files = {item.path for item in items if "planned_pair" in item.fixturenames}

    group = {path: SHARED_GROUPS.get(path.name, path.name) for path in order}
    group_seconds: dict[str, float] = {}
    for path in order:  # a group's files run one after the other: the group is placed by their sum
        if path.name in known:
            group_seconds[group[path]] = group_seconds.get(group[path], 0.0) + known[path.name]

    def key(item):
        seconds = group_seconds.get(group[item.path])
        early = item.path not in pair_files and (seconds or 0.0) >= EARLY_SECONDS
        return (not early, seconds is None, -(seconds or 0.0), group[item.path], item.path not in slow_files,
                order[item.path])

    items.sort(key=key)


def pytest_collection_finish(session):
    """On an xdist worker: start planning the session's pair if a selected test (after -k/-m) needs it."""
    if hasattr(session.config, "workerinput") and any("planned_pair" in item.fixturenames for item in session.items):
        _start_pair_planning(session.config)


#: with TEST_RECORD_DURATIONS=1: file -> [worker, first report time, last report time] (the terminal summary's timeline)
_timeline: dict[str, list] = {}


def pytest_runtest_logreport(report):
    """With TEST_RECORD_DURATIONS=1: add up each file's setup, call and teardown time (under xdist the controller
    receives every worker's reports), and when each file started and ended on which worker."""
    if os.environ.get("TEST_RECORD_DURATIONS") == "1":
        import time

        name = report.nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
        _recorded[name] = _recorded.get(name, 0.0) + float(report.duration)
        node = getattr(report, "node", None)
        worker = node.gateway.id if node is not None else "main"
        now = time.time()
        entry = _timeline.setdefault(name, [worker, now - float(report.duration), now])
        entry[2] = now


def pytest_terminal_summary(terminalreporter):
    """With TEST_RECORD_DURATIONS=1: each worker's files in the order they ran, with start (s after the first) and
    wall seconds, so idle workers and late long files show."""
    if not _timeline:
        return
    origin = min(start for _, start, _ in _timeline.values())
    terminalreporter.section("file timeline (TEST_RECORD_DURATIONS=1)")
    for worker in sorted({w for w, _, _ in _timeline.values()}):
        rows = sorted((start, end, name) for name, (w, start, end) in _timeline.items() if w == worker)
        terminalreporter.write_line(f"{worker}: " + ", ".join(
            f"{name} @{start - origin:.0f}+{end - start:.0f}" for start, end, name in rows if end - start >= 5))
        terminalreporter.write_line(f"{worker}: last file ended at {max(e for _, e, _ in rows) - origin:.0f} s")


def pytest_sessionfinish(session, exitstatus):
    """With TEST_RECORD_DURATIONS=1, on the controller (not in a worker): write :data:`DURATIONS_FILE`."""
    import json

    if os.environ.get("TEST_RECORD_DURATIONS") != "1" or hasattr(session.config, "workerinput") or not _recorded:
        return
    ordered = dict(sorted(((k, round(v, 1)) for k, v in _recorded.items()), key=lambda kv: -kv[1]))
    tmp = DURATIONS_FILE.with_suffix(".tmp")
    tmp.write_text(json.dumps(ordered, indent=1) + "\n")
    os.replace(tmp, DURATIONS_FILE)
