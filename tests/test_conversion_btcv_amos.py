"""BTCV and AMOS converters on synthetic archives in the real layouts, and the label-set pairs they form."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from archives import (
    FLIPPED_INPLANE,
    IDENTITY,
    SAGITTAL,
    assert_lps,
    case_files,
    chaos_mr_case_dir,
    check_splits,
    load_json,
    make_image,
    make_label,
    map_values,
    read,
    sample_at,
    tree_digest,
    write_amos_case,
    write_btcv_case,
    write_chaos_mr_series,
)
from conftest import REPO

from nnunet_unpaired.conversion.amos import convert_amos
from nnunet_unpaired.conversion.btcv import convert_btcv
from nnunet_unpaired.conversion.chaos import convert_chaos
from nnunet_unpaired.conversion.cli import main
from nnunet_unpaired.errors import UserError

BTCV_TO_4 = {6: 1, 2: 2, 3: 3, 1: 4}
IDENTITY_13 = {v: v for v in range(1, 14)}
IDENTITY_15 = {v: v for v in range(1, 16)}


@pytest.fixture
def btcv(tmp_path):
    root = tmp_path / "Abdomen"
    truth = {}
    for number, direction in ((1, FLIPPED_INPLANE), (2, IDENTITY), (3, IDENTITY), (9, FLIPPED_INPLANE),
                              (21, IDENTITY)):
        image = make_image((10, 9, 6), (0.78, 0.78, 3.0), (170.0, 160.0, -300.0 + number), direction,
                           seed=number, low=-1024, high=2000)
        label = make_label(image, list(range(1, 14)) if number != 3 else [1, 6], dtype=np.uint8)
        write_btcv_case(root, number, image, label)
        truth[number] = image, label
    (root / "RawData" / "Testing" / "img").mkdir(parents=True)  # unlabelled test images are ignored
    return root, truth


@pytest.fixture
def amos(tmp_path):
    root = tmp_path / "download"
    truth = {}
    for number, split, direction in ((5, "Tr", FLIPPED_INPLANE), (7, "Tr", IDENTITY), (408, "Va", IDENTITY),
                                     (540, "Tr", SAGITTAL), (555, "Tr", IDENTITY), (596, "Va", IDENTITY)):
        mr = number > 500
        image = make_image((9, 10, 7), (1.2, 1.2, 2.0) if mr else (0.7, 0.7, 5.0), (1.0, -2.0, 3.0), direction,
                           seed=number, low=0 if mr else -1024, high=1500)
        label = make_label(image, list(range(1, 16)), dtype=np.uint8)
        write_amos_case(root, number, image, label, split)
        truth[number] = image, label
    write_amos_case(root, 9, make_image((5, 5, 5)), None, "Ts")  # unlabelled test image, ignored
    return root, truth


def _check(dataset, case, truth, mapping, test=False):
    image = read(dataset / ("imagesTs" if test else "imagesTr") / f"{case}_0000.nii.gz")
    label = read(dataset / ("labelsTs" if test else "labelsTr") / f"{case}.nii.gz")
    assert_lps(image)
    assert label.GetOrigin() == image.GetOrigin() and label.GetDirection() == image.GetDirection()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sample_at(image, truth[0]))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label), map_values(sample_at(label, truth[1]), mapping))


def test_btcv_13_organs(btcv, tmp_path, capsys):
    root, truth = btcv
    dataset = convert_btcv(root, output_root=str(tmp_path / "raw"))
    assert dataset.name == "Dataset705_BTCV"
    for number in truth:
        _check(dataset, f"btcv_{number:04d}", truth[number], IDENTITY_13)
    meta = load_json(dataset / "dataset.json")
    assert list(meta["labels"]) == ["background", "spleen", "right_kidney", "left_kidney", "gallbladder",
                                    "esophagus", "liver", "stomach", "aorta", "inferior_vena_cava",
                                    "portal_and_splenic_vein", "pancreas", "right_adrenal_gland",
                                    "left_adrenal_gland"]
    assert meta["channel_names"] == {"0": "CT"} and meta["numTraining"] == 5
    assert meta["nnunet_unpaired"]["label_protocol"] == "btcv-13" and "Landman" in meta["reference"]
    assert not (dataset / "imagesTs").exists()
    assert "No MR dataset has the 13 BTCV labels" in capsys.readouterr().out


def test_btcv_4_organ_protocol_and_sifa_test_cases(btcv, tmp_path):
    root, truth = btcv
    dataset = convert_btcv(root, output_root=str(tmp_path / "raw"), protocol="abdomen-4")
    for number in truth:
        _check(dataset, f"btcv_{number:04d}", truth[number], BTCV_TO_4, test=number in (1, 9))
    assert case_files(dataset, "labelsTs") == ["btcv_0001.nii.gz", "btcv_0009.nii.gz"]
    check_splits(dataset, ["btcv_0002", "btcv_0003", "btcv_0021"])
    label = sitk.GetArrayFromImage(read(dataset / "labelsTr" / "btcv_0003.nii.gz"))
    assert set(np.unique(label)) == {0, 1, 4}  # case 3 has only spleen (1 -> 4) and liver (6 -> 1)


def test_chaos_mr_and_btcv_ct_form_a_pair(btcv, tmp_path, capsys):
    root, _ = btcv
    chaos = tmp_path / "chaos"
    case = chaos_mr_case_dir(chaos, 2)
    image = make_image((8, 8, 3), (1.5, 1.5, 6.0), dtype=np.uint16, low=0, high=900)
    labels = np.zeros((3, 8, 8), np.uint8)
    labels[1, 2:4, 2:5] = 1
    write_chaos_mr_series(case / "T2SPIR" / "DICOM_anon", case / "T2SPIR" / "Ground", image, labels, 2)
    raw = tmp_path / "raw"
    convert_chaos(chaos, output_root=str(raw))
    capsys.readouterr()
    convert_btcv(root, output_root=str(raw), protocol="abdomen-4")
    assert "nnunet_unpaired plan-pair -d 705 703 -c 3d_fullres" in capsys.readouterr().out
    mr, ct = (load_json(raw / name / "dataset.json") for name in ("Dataset703_CHAOS_MR", "Dataset705_BTCV"))
    assert mr["labels"] == ct["labels"] and len(mr["channel_names"]) == len(ct["channel_names"]) == 1
    assert ct["channel_names"]["0"] == "CT" and mr["channel_names"]["0"] != "CT"


def test_btcv_refusals(btcv, tmp_path):
    root, truth = btcv
    training = root / "RawData" / "Training"
    image = truth[2][0]
    write_btcv_case(root, 22, image, make_label(image, [1, 14], dtype=np.uint8))
    with pytest.raises(UserError, match=r"label0022\.nii\.gz: label value\(s\) 14 are not BTCV labels"):
        convert_btcv(root, output_root=str(tmp_path / "raw"))
    (training / "label" / "label0022.nii.gz").unlink()
    with pytest.raises(UserError, match=r"label0022\.nii\.gz is missing"):
        convert_btcv(root, output_root=str(tmp_path / "raw"))
    other = make_image((10, 9, 5), (0.78, 0.78, 3.0))
    write_btcv_case(root, 22, image, make_label(other, [1], dtype=np.uint8))
    with pytest.raises(UserError, match=r"label0022\.nii\.gz: the label does not lie on the voxel grid .* size"):
        convert_btcv(root, output_root=str(tmp_path / "raw"))
    with pytest.raises(UserError, match="RawData/Training/img and RawData/Training/label"):
        convert_btcv(training / "img", output_root=str(tmp_path / "raw"))
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").iterdir())


def test_amos_ct_and_mr_split_by_case_id(amos, tmp_path, capsys):
    root, truth = amos
    before = tree_digest(root)
    out = convert_amos(root, output_root=str(tmp_path / "raw"))
    assert out["ct"].name == "Dataset706_AMOS_CT" and out["mr"].name == "Dataset707_AMOS_MR"
    assert case_files(out["ct"], "imagesTr") == ["amos_0005_0000.nii.gz", "amos_0007_0000.nii.gz",
                                                 "amos_0408_0000.nii.gz"]
    assert case_files(out["mr"], "imagesTr") == ["amos_0540_0000.nii.gz", "amos_0555_0000.nii.gz",
                                                 "amos_0596_0000.nii.gz"]
    for number in truth:
        _check(out["ct" if number <= 500 else "mr"], f"amos_{number:04d}", truth[number], IDENTITY_15)
    ct, mr = (load_json(out[m] / "dataset.json") for m in ("ct", "mr"))
    assert ct["labels"] == mr["labels"] and len(ct["labels"]) == 16
    assert ct["channel_names"] == {"0": "CT"} and mr["channel_names"] == {"0": "MR"}
    assert ct["nnunet_unpaired"]["label_protocol"] == mr["nnunet_unpaired"]["label_protocol"] == "amos-15"
    assert "nnunet_unpaired plan-pair -d 706 707 -c 3d_fullres" in capsys.readouterr().out
    check_splits(out["mr"], ["amos_0540", "amos_0555", "amos_0596"])
    assert tree_digest(root) == before


def test_amos_4_organ_protocol_validation_as_test_and_ids(amos, tmp_path):
    root, truth = amos
    out = convert_amos(root / "amos22", output_root=str(tmp_path / "raw"), protocol="abdomen-4", va_as_test=True,
                       modalities=["mr"], ids=[540, 596])
    dataset = out["mr"]
    _check(dataset, "amos_0540", truth[540], BTCV_TO_4)
    _check(dataset, "amos_0596", truth[596], BTCV_TO_4, test=True)
    assert load_json(dataset / "dataset.json")["labels"] == {"background": 0, "liver": 1, "right_kidney": 2,
                                                             "left_kidney": 3, "spleen": 4}
    with pytest.raises(UserError, match="none is a MR case"):
        convert_amos(root, output_root=str(tmp_path / "raw"), modalities=["mr"], ids=[5])


def test_amos_refusals(amos, tmp_path):
    root, truth = amos
    base = root / "amos22"
    write_amos_case(root, 600, truth[555][0], make_label(truth[555][0], [3, 16], dtype=np.uint8))
    with pytest.raises(UserError, match=r"labelsTr/amos_0600\.nii\.gz: label value\(s\) 16 are not AMOS labels"):
        convert_amos(root, output_root=str(tmp_path / "raw"))
    (base / "labelsTr" / "amos_0600.nii.gz").unlink()
    with pytest.raises(UserError, match=r"amos_0600\.nii\.gz: label file missing"):
        convert_amos(root, output_root=str(tmp_path / "raw"))
    with pytest.raises(UserError, match="folder not found: imagesTr and labelsTr"):
        convert_amos(base / "imagesTr", output_root=str(tmp_path / "raw"))


def test_command_line_and_script(amos, btcv, tmp_path, capsys):
    raw = tmp_path / "raw"
    assert main(["amos", "--input", str(amos[0]), "--output-root", str(raw), "--modality", "ct",
                 "--dataset-id", "716", "--test-ids", "7"]) == 0
    assert case_files(raw / "Dataset716_AMOS_CT", "imagesTs") == ["amos_0007_0000.nii.gz"]
    assert main(["amos", "--input", str(amos[0]), "--output-root", str(raw), "--dataset-id", "716"]) == 2
    assert "give 2 id(s)" in capsys.readouterr().err
    script = REPO / "dataset_conversion" / "Dataset705_BTCV.py"
    done = subprocess.run([sys.executable, str(script), "--input", str(btcv[0]), "--output-root", str(raw),
                           "--protocol", "abdomen-4", "--ids", "2", "3"], check=False, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert "Dataset705_BTCV" in done.stdout and (raw / "Dataset705_BTCV" / "splits_final.json").is_file()
    done = subprocess.run([sys.executable, str(script), "--input", str(tmp_path / "missing"), "--output-root",
                           str(raw)], check=False, capture_output=True, text=True)
    assert done.returncode == 2 and "missing: folder not found" in done.stderr and "Traceback" not in done.stderr


def test_registered_as_nnunet_unpaired_convert(btcv, tmp_path, capsys):
    from nnunet_unpaired.cli import main as top_level

    raw = tmp_path / "raw"
    assert top_level(["convert", "btcv", "--input", str(btcv[0]), "--output-root", str(raw), "--ids", "2"]) == 0
    assert (raw / "Dataset705_BTCV" / "labelsTr" / "btcv_0002.nii.gz").is_file()
    assert top_level(["convert", "btcv", "--input", str(tmp_path / "nowhere"), "--output-root", str(raw)]) == 2
    assert "nnunet_unpaired convert: error:" in capsys.readouterr().err
