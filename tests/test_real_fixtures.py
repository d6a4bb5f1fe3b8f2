"""Real CT and MR (../shared/fixtures/totalsegmentator): convert to a 4-organ CT and MR dataset, plan-pair, a short
joint training on fold 'all', and prediction of both; skipped when the fixtures are absent."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from pairs import FINGERPRINT_SAMPLES, nnunet_env, run_many, section

pytestmark = [pytest.mark.slow, pytest.mark.fixtures]

# TotalSegmentator values -> the unpaired abdominal protocol (1 liver, 2 right kidney, 3 left kidney, 4 spleen)
PROTOCOL = {5: 1, 2: 2, 3: 3, 1: 4}
LABELS = {"background": 0, "liver": 1, "kidney_right": 2, "kidney_left": 3, "spleen": 4}


def _crop_to_organs(image, seg):
    """Keep the axial slices that hold one of the four organs (with SimpleITK slicing: the header stays right)."""
    values = sitk.GetArrayFromImage(seg)
    z = np.where(np.isin(values, list(PROTOCOL)).any(axis=(1, 2)))[0]
    return image[:, :, int(z.min()):int(z.max()) + 1], seg[:, :, int(z.min()):int(z.max()) + 1]


def _write_dataset(raw, dataset, modality, image_file, seg_file, case):
    folder = raw / dataset
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    image, seg = _crop_to_organs(sitk.ReadImage(str(image_file)), sitk.ReadImage(str(seg_file)))
    values = sitk.GetArrayFromImage(seg)
    mapped = np.zeros_like(values, dtype=np.uint8)
    for src, dst in PROTOCOL.items():
        mapped[values == src] = dst
    out = sitk.GetImageFromArray(mapped)
    out.CopyInformation(seg)
    sitk.WriteImage(image, str(folder / "imagesTr" / f"{case}_0000.nii.gz"))
    sitk.WriteImage(out, str(folder / "labelsTr" / f"{case}.nii.gz"))
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": modality}, "labels": LABELS, "numTraining": 1, "file_ending": ".nii.gz"}))
    return folder, mapped


def test_real_ct_and_mr_pair_train_and_predict(totalseg_fixtures, tmp_path):
    # no final validation: with fold 'all' it predicts both full-resolution training volumes again (tested elsewhere)
    env = nnunet_env(tmp_path, {"nnUNet_unpaired_epochs": "1", "nnUNet_unpaired_iters": "3",
                                "nnUNet_unpaired_skip_final_validation": "1"})
    raw = tmp_path / "nnUNet_raw"
    ct, ct_labels = _write_dataset(raw, "Dataset931_RealCT", "CT", totalseg_fixtures / "ct.nii.gz",
                                   totalseg_fixtures / "ct_seg.nii.gz", "realct_000")
    mr, mr_labels = _write_dataset(raw, "Dataset932_RealMR", "MR", totalseg_fixtures / "mr.nii.gz",
                                   totalseg_fixtures / "mr_seg.nii.gz", "realmr_000")
    for labels in (ct_labels, mr_labels):
        assert set(np.unique(labels)) == {0, 1, 2, 3, 4}, "all four shared organs are in both real label maps"

    # plan, train and predict in one interpreter (pairs.run_many: each as the shell runs it, one torch start-up)
    out = tmp_path / "pred_931"
    output = run_many([
        ["nnunet_unpaired", "plan-pair", "-d", "931", "932", "-c", "2d", "--max-features", "16", "--batch-size", "2",
         "-np", "1", "--no-verify",  # integrity: test_conversion_fixtures
         "--fingerprint-samples", str(FINGERPRINT_SAMPLES)],
        ["nnUNetv2_train", "931", "2d", "all", "-tr", "nnUNetTrainerUnpairedJoint", "-device", "cpu"],
        ["nnUNetv2_predict", "-i", str(ct / "imagesTr"), "-o", str(out), "-d", "931", "-c", "2d", "-f", "all",
         "-tr", "nnUNetTrainerUnpairedJoint", "-device", "cpu", "-npp", "0", "-nps", "0"]], env)
    # one case per dataset: the 5-fold split is impossible, and plan-pair says so
    assert "fold 'all'" in section(output, "nnunet_unpaired plan-pair")
    plans_mr = json.loads((tmp_path / "nnUNet_preprocessed" / "Dataset932_RealMR" / "nnUNetPlans.json").read_text())
    assert plans_mr["configurations"]["2d"]["normalization_schemes"] == ["ZScoreNormalization"]
    # fold 0 is impossible with one case: the trainer's split check says so (in process: an nnUNetv2_train that fails
    # costs a 13 s start-up; the trainer calls this check in do_split, see tests/test_joint_trainer.py::test_fold_check)
    from nnunet_unpaired.errors import UserError
    from nnunet_unpaired.splits import check_fold_possible

    with pytest.raises(UserError, match="(?s)1 training case.*fold 'all'"):
        check_fold_possible(str(tmp_path / "nnUNet_preprocessed" / "Dataset931_RealCT"), 0)

    # the real CT here; a real MR case is predicted (and its geometry checked) in tests/test_real_data.py
    src = sitk.ReadImage(str(ct / "imagesTr" / "realct_000_0000.nii.gz"))
    pred = sitk.ReadImage(str(out / "realct_000.nii.gz"))
    assert pred.GetSize() == src.GetSize() and np.allclose(pred.GetDirection(), src.GetDirection())
    assert np.allclose(pred.GetSpacing(), src.GetSpacing()) and np.allclose(pred.GetOrigin(), src.GetOrigin())
    assert set(np.unique(sitk.GetArrayFromImage(pred))) <= set(LABELS.values())
