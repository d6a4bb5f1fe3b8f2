"""The README's main command, with a tiny budget: every step runs and the Dice tables come out."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_demo_runs_end_to_end(tmp_path):
    exe = Path(sys.executable).parent / "nnunet_unpaired"
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet")}  # the demo sets up its own folders
    # nnU-Net's final validation is not part of what the demo shows (test Dice); tested in test_e2e_joint
    env.update(nnUNet_n_proc_DA="0", nnUNet_def_n_proc="1", nnUNet_unpaired_skip_final_validation="1")
    proc = subprocess.run([str(exe), "demo", "--work-dir", str(tmp_path / "demo"), "--epochs", "1", "--iters", "3",
                           "--num-train", "5", "--num-test", "1", "--max-features", "8", "--batch-size", "2",
                           "--device", "cpu", "-np", "1"], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for step in ("1/5", "2/5", "3/5", "4/5", "5/5", "$ ", "nnUNetv2_train", "nnUNetv2_predict"):
        assert step in proc.stdout
    results = (tmp_path / "demo" / "demo_results.md").read_text()
    for name in ("Dataset901_PhantomCT", "Dataset902_PhantomMR", "organ_a", "organ_b", "wall", "cavity", "mean"):
        assert name in results
    assert results in proc.stdout
    assert (tmp_path / "demo" / "logs" / "train.log").stat().st_size > 0
