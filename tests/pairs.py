"""Builds a small, planned phantom pair for the tests (fixed seeds; a few seconds on 2 cores)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Sequence

from nnunet_unpaired.phantom import ModalityGeometry, PhantomConfig, dataset_folder_name, write_phantom_pair
from nnunet_unpaired.plan_pair import SMALL_DATASET_FINGERPRINT_SAMPLES
from nnunet_unpaired.registration import env_with_trainers

IDS = (911, 912)
NAMES = (dataset_folder_name(IDS[0], "CT"), dataset_folder_name(IDS[1], "MR"))

# small field of view: 32 x 32 in-plane CT voxels, 8 slices -> fast planning, training and prediction
SMALL = dict(field_of_view_mm=(64.0, 64.0, 24.0), ct=ModalityGeometry((2.0, 2.0, 3.0), False),
             mr=ModalityGeometry((2.4, 2.4, 4.0), True))

#: foreground intensities per dataset for plan-pair's fingerprint (``--fingerprint-samples``; nnU-Net draws 10^8,
#: which on these small datasets repeats voxels and costs about 10 s per dataset)
FINGERPRINT_SAMPLES = SMALL_DATASET_FINGERPRINT_SAMPLES
#: the session's planned pair (conftest.planned_pair)
SESSION_PAIR = dict(num_train=5, num_test=2, configurations=("2d", "3d_fullres"))

TINY_BUDGET = {"nnUNet_unpaired_seed": "0", "nnUNet_unpaired_epochs": "2", "nnUNet_unpaired_iters": "4", "nnUNet_unpaired_val_iters": "1",
               "nnUNet_unpaired_no_mirroring": "1", "nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1",
               "nnUNet_compile": "false", "PYTHONUNBUFFERED": "1",
               # GLUA stage 1's translation phase: 2 steps (its default, 20 000, is hours on a CPU)
               "nnUNet_unpaired_glua_style_steps": "2", "nnUNet_unpaired_glua_style_check_every": "1"}


def nnunet_env(root: Path, extra: Dict[str, str] = None) -> Dict[str, str]:
    """Environment with nnU-Net folders under ``root``, our trainers registered and a tiny training budget."""
    env = env_with_trainers()
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (root / name).mkdir(parents=True, exist_ok=True)
        env[name] = str(root / name)
    env.update(TINY_BUDGET)
    env.update(extra or {})
    return env


def run(cmd: Sequence[str], env: Dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a console script of this venv; fail the test with the output tail when it fails."""
    exe = Path(sys.executable).parent / cmd[0]
    proc = subprocess.run([str(exe), *cmd[1:]], env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n"
                             f"--- stderr\n{proc.stderr[-4000:]}")
    return proc


def run_many(commands: Sequence[Sequence[str]], env: Dict[str, str], timeout: int = 900) -> str:
    """Run console scripts of this venv one after the other in ONE interpreter, each as the shell would run it
    (``stock_commands``): torch and nnU-Net start once (about 8-13 s a start on 2 cores) instead of once per
    command. Returns the combined output; a failing command fails the test with the output tail."""
    from stock_commands import run_console_scripts

    return run_console_scripts([{"cmd": list(c)} for c in commands], env, timeout=timeout)


def section(output: str, script: str) -> str:
    """The part of :func:`run_many`'s output that the first command starting with ``script`` printed."""
    start = output.index(f"=== {script}")
    end = output.find("\n=== done", start)
    return output[start:] if end < 0 else output[start:end]


def make_planned_pair(root: Path, num_train: int = 6, num_test: int = 2, configurations=("2d",),
                      max_features: int = 16, batch_size: int = 4) -> Dict[str, str]:
    """Phantom pair + plan-pair under ``root``; returns the environment to run nnU-Net commands in.

    Without nnU-Net's dataset integrity check (``--no-verify``; nnU-Net's own planning skips it by default too): the
    phantom writer's output goes through it in the demo test, and the check starts a worker process per dataset
    (seconds of torch imports each)."""
    env = nnunet_env(root)
    write_phantom_pair(env["nnUNet_raw"], IDS, PhantomConfig(num_train=num_train, num_test=num_test, **SMALL),
                       log=lambda *a: None)
    run(["nnunet_unpaired", "plan-pair", "-d", str(IDS[0]), str(IDS[1]), "-c", *configurations,
         "--max-features", str(max_features), "--batch-size", str(batch_size), "-np", "1", "--no-verify",
         "--fingerprint-samples", str(FINGERPRINT_SAMPLES)], env)
    return env


def set_env(env: Dict[str, str], monkeypatch) -> None:
    """Export an environment to the current process (for in-process use of nnU-Net's folder variables)."""
    for key, value in env.items():
        if key.startswith("nnUNet"):
            monkeypatch.setenv(key, value)
    assert os.environ["nnUNet_preprocessed"] == env["nnUNet_preprocessed"]


if __name__ == "__main__":
    # python pairs.py plan-session-pair ROOT DONE_FILE: conftest's background planning of the session's pair
    if len(sys.argv) != 4 or sys.argv[1] != "plan-session-pair":
        sys.exit("usage: python pairs.py plan-session-pair ROOT DONE_FILE")
    make_planned_pair(Path(sys.argv[2]), **SESSION_PAIR)
    Path(sys.argv[3]).write_text("ok")
