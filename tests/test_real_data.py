"""The real unpaired abdominal pair (../shared/realdata: BTCV CT 951, CHAOS T2 MR 952) through the plugin: plan-pair at
the cpu-real preset's in-plane spacing, a short joint training, and the stock nnUNetv2_predict of a real MR test case
whose prediction must have the input's geometry. Skipped when ../shared/realdata is absent (a user's clone).

To stay within the suite's budget the datasets are subsets: a temporary nnUNet_raw holds dataset folders of the same
names whose files are LINKS to the two smallest training cases of each modality and one MR test case (the real
files are never copied or written)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import REPO
from pairs import FINGERPRINT_SAMPLES, nnunet_env, run_many

from nnunet_unpaired.benchmark.config import PRESETS

pytestmark = [pytest.mark.slow]

REALDATA = REPO.parent / "shared" / "realdata" / "abdomen"
CT, MR = "Dataset951_AbdomenCT", "Dataset952_AbdomenMR"


@pytest.fixture(scope="module")
def real_subset(tmp_path_factory):
    if not all((REALDATA / name / "dataset.json").is_file() for name in (CT, MR)):
        pytest.skip(f"the real abdominal pair is not at {REALDATA} (it sits in ../shared beside a CI checkout)")
    root = tmp_path_factory.mktemp("realdata")
    env = nnunet_env(root, {"nnUNet_unpaired_epochs": "1", "nnUNet_unpaired_iters": "2",
                            "nnUNet_unpaired_val_iters": "1", "nnUNet_n_proc_DA": "0",
                            "nnUNet_unpaired_skip_final_validation": "1"})
    raw = root / "nnUNet_raw"
    for name in (CT, MR):
        source = REALDATA / name
        folder = raw / name
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            (folder / sub).mkdir(parents=True)
        labels = sorted((source / "labelsTr").iterdir(), key=lambda p: p.stat().st_size)[:2]
        for label in labels:
            case = label.name[: -len(".nii.gz")]
            (folder / "labelsTr" / label.name).symlink_to(label)
            (folder / "imagesTr" / f"{case}_0000.nii.gz").symlink_to(source / "imagesTr" / f"{case}_0000.nii.gz")
        test = sorted((source / "labelsTs").iterdir())[0]
        case = test.name[: -len(".nii.gz")]
        (folder / "labelsTs" / test.name).symlink_to(test)
        (folder / "imagesTs" / f"{case}_0000.nii.gz").symlink_to(source / "imagesTs" / f"{case}_0000.nii.gz")
        dataset = json.loads((source / "dataset.json").read_text())
        dataset["numTraining"] = len(labels)
        (folder / "dataset.json").write_text(json.dumps(dataset))
    return root, env


def test_real_pair_plans_at_the_cpu_preset_spacing_trains_and_predicts_an_mr_case(real_subset):
    root, env = real_subset
    spacing = PRESETS["cpu-real"].in_plane_spacing
    images = root / "nnUNet_raw" / MR / "imagesTs"
    out = root / "predicted_mr"
    # the three commands in one interpreter (pairs.run_many: each as the shell runs it, one torch start-up)
    run_many([["nnunet_unpaired", "plan-pair", "-d", "951", "952", "-c", "2d", "--in-plane-spacing", str(spacing),
               "--max-features", "8", "--batch-size", "2", "-np", "1", "--no-verify",
               "--fingerprint-samples", str(FINGERPRINT_SAMPLES)],
              ["nnUNetv2_train", "951", "2d", "all", "-tr", "nnUNetTrainerUnpairedJoint", "-device", "cpu"],
              ["nnUNetv2_predict", "-i", str(images), "-o", str(out), "-d", "952", "-c", "2d", "-f", "all",
               "-tr", "nnUNetTrainerUnpairedJoint", "-device", "cpu", "-npp", "0", "-nps", "0",
               "--disable_progress_bar"]], env)
    pre = root / "nnUNet_preprocessed"
    plans_ct = json.loads((pre / CT / "nnUNetPlans.json").read_text())
    plans_mr = json.loads((pre / MR / "nnUNetPlans.json").read_text())
    assert plans_ct["configurations"]["2d"]["spacing"] == [spacing, spacing]
    assert plans_mr["configurations"]["2d"]["spacing"] == [spacing, spacing]
    assert plans_mr["nnunet_unpaired_pairing"]["in_plane_spacing"] == spacing
    assert plans_ct["configurations"]["2d"]["normalization_schemes"] == ["CTNormalization"]
    assert plans_mr["configurations"]["2d"]["normalization_schemes"] == ["ZScoreNormalization"]

    folder_mr = root / "nnUNet_results" / MR / "nnUNetTrainerUnpairedJoint__nnUNetPlans__2d" / "fold_all"
    assert (folder_mr / "checkpoint_final.pth").is_file()

    (image_file,) = sorted(images.iterdir())
    predicted = out / image_file.name.replace("_0000.nii.gz", ".nii.gz")
    image, prediction = sitk.ReadImage(str(image_file)), sitk.ReadImage(str(predicted))
    assert prediction.GetSize() == image.GetSize()
    assert np.allclose(prediction.GetSpacing(), image.GetSpacing())
    assert np.allclose(prediction.GetOrigin(), image.GetOrigin())
    assert np.allclose(prediction.GetDirection(), image.GetDirection())
    assert set(np.unique(sitk.GetArrayFromImage(prediction))) <= {0, 1, 2, 3, 4}
    # the real files were linked, never written
    assert all(p.is_symlink() for p in (root / "nnUNet_raw" / MR / "imagesTs").iterdir())
