"""End to end with nnU-Net's own commands: nnUNetv2_train -tr nnUNetTrainerUnpairedJoint, then nnUNetv2_predict for
both modalities; geometry, Dice against all-background, strict load, clean worker shutdown, --c and --val."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_unpaired.benchmark.metrics import evaluate_folder
from nnunet_unpaired.phantom import LABELS

from conftest import JOINT_EPOCHS, JOINT_FOLD
from pairs import IDS, NAMES, run_many, section
from stock_commands import run_console_scripts

pytestmark = pytest.mark.slow
TRAINER = "nnUNetTrainerUnpairedJoint"
FOLD = JOINT_FOLD


def _processes_with(marker: str):
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                if marker.encode() in Path(f"/proc/{pid}/environ").read_bytes():
                    found.append(pid)
            except OSError:
                pass
    return found


def test_workers_stopped_after_training(joint_model):
    _, _, marker = joint_model
    assert _processes_with(marker) == [], "data-augmentation workers outlived nnUNetv2_train"


def test_model_folders_for_both_datasets(joint_model):
    _, env, _ = joint_model
    for name in NAMES:
        folder = Path(env["nnUNet_results"]) / name / f"{TRAINER}__nnUNetPlans__2d"
        assert (folder / f"fold_{FOLD}" / "checkpoint_final.pth").is_file()
        assert (folder / f"fold_{FOLD}" / "validation" / "summary.json").is_file()
        assert load_json(folder / "plans.json")["dataset_name"] == name
        checkpoint = torch.load(folder / f"fold_{FOLD}" / "checkpoint_final.pth", weights_only=False)
        pm = PlansManager(load_json(folder / "plans.json"))
        net = nnUNetTrainer.build_network_architecture(pm, pm.get_configuration("2d"), 1, len(LABELS), False)
        net.load_state_dict(checkpoint["network_weights"], strict=True)


@pytest.fixture(scope="module")
def predictions(joint_model, tmp_path_factory):
    """nnUNetv2_predict on the test images of each modality, both in one interpreter (one start-up of torch and
    nnU-Net instead of two; each command runs as the shell would run it)."""
    root, env, _ = joint_model
    out = tmp_path_factory.mktemp("e2e_joint_pred")
    run_many([["nnUNetv2_predict", "-i", str(root / "nnUNet_raw" / name / "imagesTs"), "-o", str(out / name),
               "-d", str(IDS[which]), "-c", "2d", "-f", FOLD, "-tr", TRAINER, "-device", "cpu", "-npp", "0", "-nps",
               "0"] for which, name in enumerate(NAMES)], env)
    return out


@pytest.mark.parametrize("which", [0, 1])
def test_predict_each_modality(joint_model, predictions, which):
    root, env, _ = joint_model
    name = NAMES[which]
    images = root / "nnUNet_raw" / name / "imagesTs"
    out = predictions / name
    for image in sorted(images.glob("*_0000.nii.gz")):
        src = sitk.ReadImage(str(image))
        pred = sitk.ReadImage(str(out / image.name.replace("_0000", "")))
        assert pred.GetSize() == src.GetSize()
        assert np.allclose(pred.GetSpacing(), src.GetSpacing()) and np.allclose(pred.GetOrigin(), src.GetOrigin())
        assert np.allclose(pred.GetDirection(), src.GetDirection())
    rows = evaluate_folder(out, root / "nnUNet_raw" / name / "labelsTs", {k: v for k, v in LABELS.items() if v})
    mean_dice = np.nanmean([r["dice"] for r in rows])
    # an all-background prediction scores Dice 0 on every structure present in the reference
    assert mean_dice > 0.1, rows


def test_continue_and_validate_again(joint_model, tmp_path):
    _, env, _ = joint_model
    results = tmp_path / "nnUNet_results"  # a copy: the session's model folders stay as trained (test_share_deploy)
    shutil.copytree(env["nnUNet_results"], results)
    more = dict(env, nnUNet_results=str(results), nnUNet_unpaired_epochs=str(JOINT_EPOCHS + 1), nnUNet_n_proc_DA="0")
    train = ["nnUNetv2_train", str(IDS[0]), "2d", FOLD, "-tr", TRAINER, "-device", "cpu"]
    # one interpreter for both; the continued run skips its final validation: the --val run does exactly that one
    output = run_console_scripts([{"cmd": [*train, "--c"], "env": {"nnUNet_unpaired_skip_final_validation": "1"}},
                                  {"cmd": [*train, "--val"]}], more)
    continued, validated = (section(output, " ".join([*train, flag])) for flag in ("--c", "--val"))
    assert f"Epoch {JOINT_EPOCHS}" in continued and f"Epoch {JOINT_EPOCHS - 1}\n" not in continued
    # the setting applies to its own command only: the continued run skips A's and B's validation (one skip line, no
    # header of a validation that does not run), --val runs both
    assert continued.count("final validation skipped") == 1 and "Mean Validation Dice" not in continued
    assert "Final validation of" not in continued
    assert f"Final validation of {NAMES[1]} (B)" in validated and "final validation skipped" not in validated
    assert validated.count("Mean Validation Dice") == 2


def test_unregistered_trainer_error_names_the_fix(planned_pair):
    _, env = planned_pair
    env = {k: v for k, v in env.items() if k != "nnUNet_extTrainer"}
    exe = Path(sys.executable).parent / "nnUNetv2_train"
    proc = subprocess.run([str(exe), str(IDS[0]), "2d", "0", "-tr", TRAINER, "-device", "cpu"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "nnUNet_extTrainer" in proc.stderr + proc.stdout
