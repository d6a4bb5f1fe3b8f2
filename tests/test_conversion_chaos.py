"""CHAOS converter on a synthetic archive in the real layout: DICOM series + PNG ground truth, file-name slice order."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from archives import (
    CHAOS_MR_GREY_OFF_NOMINAL,
    FLIPPED_INPLANE,
    IDENTITY,
    assert_lps,
    case_files,
    chaos_mr_case_dir,
    check_splits,
    load_json,
    make_image,
    map_values,
    read,
    sample_at,
    tree_digest,
    write_chaos_ct_case,
    write_chaos_mr_series,
)

from nnunet_unpaired.conversion.chaos import convert_chaos, read_dicom_stack
from nnunet_unpaired.conversion.cli import main
from nnunet_unpaired.errors import UserError

LIVER_ONLY = {1: 1}


def _labels(image: sitk.Image, seed: int) -> np.ndarray:
    """Liver, right kidney, left kidney, spleen as boxes at slice-dependent, asymmetric places."""
    sx, sy, sz = image.GetSize()
    labels = np.zeros((sz, sy, sx), np.uint8)
    labels[0:sz - 1, 1:5, 1:6] = 1  # liver, absent from the last slice
    labels[1:3, 6:8, 2:4] = 2
    labels[2:4, 6:8, 7:9] = 3
    labels[sz - 1, 0:2, (seed % 3):(seed % 3) + 3] = 4  # spleen only on the last slice
    return labels


def _label_image(labels: np.ndarray, image: sitk.Image) -> sitk.Image:
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(image)
    return out


# patient -> (direction, reverse file order for T2, origin)
MR_PATIENTS = {1: (IDENTITY, False, (-100.0, -80.0, 20.0)),
               2: (IDENTITY, True, (-90.0, -70.0, -10.0)),  # DICOM positions run against the file names
               5: (FLIPPED_INPLANE, True, (120.0, 90.0, 35.5))}


@pytest.fixture
def archive(tmp_path):
    root = tmp_path / "CHAOS_Train_Sets"
    truth = {}
    for patient, (direction, reverse, origin) in MR_PATIENTS.items():
        case = chaos_mr_case_dir(root, patient)
        t2 = make_image((12, 10, 5), (1.54, 1.54, 8.0), origin, direction, np.uint16, 0, 1500, seed=patient)
        labels = _labels(t2, patient)
        grey = CHAOS_MR_GREY_OFF_NOMINAL if patient == 5 else None
        kwargs = {"grey": grey} if grey else {}
        write_chaos_mr_series(case / "T2SPIR" / "DICOM_anon", case / "T2SPIR" / "Ground", t2, labels, 2 * patient,
                              reverse, **kwargs)
        t1_in = make_image((11, 10, 4), (1.6, 1.6, 7.5), origin, direction, np.uint16, 0, 900, seed=10 + patient)
        t1_out = make_image((11, 10, 4), (1.6, 1.6, 7.5), origin, direction, np.uint16, 0, 900, seed=20 + patient)
        t1_labels = _labels(t1_in, patient + 1)
        # in-phase files carry the label PNGs' names, out-of-phase ones other series numbers (as in the archive)
        write_chaos_mr_series(case / "T1DUAL" / "DICOM_anon" / "InPhase", case / "T1DUAL" / "Ground", t1_in,
                              t1_labels, 2 * patient + 1, reverse=not reverse)
        write_chaos_mr_series(case / "T1DUAL" / "DICOM_anon" / "OutPhase", case / "T1DUAL" / "unused", t1_out, None,
                              2 * patient + 41, reverse=not reverse)
        truth[patient] = {"T2SPIR": (t2, _label_image(labels, t2)), "T1in": (t1_in, _label_image(t1_labels, t1_in)),
                          "T1out": (t1_out, _label_image(t1_labels, t1_out))}
    return root, truth


@pytest.fixture
def ct_archive(tmp_path):
    root = tmp_path / "CHAOS_Train_Sets"
    truth = {}
    for patient, direction, reverse, one_bit in ((1, IDENTITY, False, False), (6, FLIPPED_INPLANE, True, True)):
        image = make_image((13, 11, 6), (0.7, 0.7, 2.5), (-50.0, 30.0, -400.0 + patient), direction, np.int16,
                           -1024, 1500, seed=30 + patient)
        liver = (_labels(image, patient) == 1).astype(np.uint8)
        write_chaos_ct_case(root, patient, image, liver, reverse=reverse, one_bit=one_bit)
        truth[patient] = image, _label_image(liver, image)
    return root, truth


def _check_case(dataset, case, truth_image, truth_label, mapping, test=False, channel=0):
    images, labels = ("imagesTs", "labelsTs") if test else ("imagesTr", "labelsTr")
    image = read(dataset / images / f"{case}_{channel:04d}.nii.gz")
    label = read(dataset / labels / f"{case}.nii.gz")
    assert_lps(image)
    assert label.GetOrigin() == image.GetOrigin() and label.GetSpacing() == image.GetSpacing()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sample_at(image, truth_image))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label), map_values(sample_at(label, truth_label), mapping))
    assert np.allclose(sorted(image.GetSpacing()), sorted(truth_image.GetSpacing()), atol=1e-5)


def test_dicom_stack_geometry_follows_file_names_and_headers(archive):
    root, truth = archive
    folder = chaos_mr_case_dir(root, 2) / "T2SPIR" / "DICOM_anon"  # positions run against file names
    image, files = read_dicom_stack(folder)
    assert [f.name for f in files][:2] == ["IMG-0004-00001.dcm", "IMG-0004-00002.dcm"]
    src = truth[2]["T2SPIR"][0]
    # file 0 holds the last physical slice: the stack starts there and its slice axis points the other way
    assert np.allclose(image.GetOrigin(), src.TransformIndexToPhysicalPoint((0, 0, 4)), atol=1e-6)
    assert np.allclose(np.array(image.GetDirection()).reshape(3, 3)[:, 2], (0, 0, -1))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(src)[::-1])


def test_t2spir_values_labels_and_alignment(archive, tmp_path):
    root, truth = archive
    out = convert_chaos(root, output_root=str(tmp_path / "raw"))
    dataset = out["mr"]
    assert dataset.name == "Dataset703_CHAOS_MR"
    for patient in MR_PATIENTS:
        image, label = truth[patient]["T2SPIR"]
        _check_case(dataset, f"chaos_{patient:03d}_T2SPIR", image, label, {1: 1, 2: 2, 3: 3, 4: 4}, test=patient == 1)
    meta = load_json(dataset / "dataset.json")
    assert meta["labels"] == {"background": 0, "liver": 1, "right_kidney": 2, "left_kidney": 3, "spleen": 4}
    assert meta["channel_names"] == {"0": "T2SPIR"}
    assert meta["nnunet_unpaired"] == {"modality": "MR", "label_protocol": "abdomen-4", "converter": "chaos",
                                       "orientation": "LPS", "test_cases": ["chaos_001_T2SPIR"]}
    assert "Kavur" in meta["reference"] and "CC BY-SA" in meta["licence"]
    assert case_files(dataset, "imagesTs") == ["chaos_001_T2SPIR_0000.nii.gz"]
    check_splits(dataset, ["chaos_002_T2SPIR", "chaos_005_T2SPIR"])


def test_t1dual_as_two_channels(archive, tmp_path):
    root, truth = archive
    out = convert_chaos(root, output_root=str(tmp_path / "raw"), sequence="T1DUAL", test_ids={"mr": []})
    dataset = out["mr"]
    meta = load_json(dataset / "dataset.json")
    assert meta["channel_names"] == {"0": "T1_in", "1": "T1_out"} and meta["numTraining"] == 3
    for patient in MR_PATIENTS:
        case = f"chaos_{patient:03d}_T1DUAL"
        _check_case(dataset, case, *truth[patient]["T1in"], {1: 1, 2: 2, 3: 3, 4: 4}, channel=0)
        _check_case(dataset, case, *truth[patient]["T1out"], {1: 1, 2: 2, 3: 3, 4: 4}, channel=1)


def test_t1dual_and_t2_as_cases_keep_patients_together(archive, tmp_path, capsys):
    root, truth = archive
    out = convert_chaos(root, output_root=str(tmp_path / "raw"), sequence="all", t1_layout="cases",
                        test_ids={"mr": []}, n_folds=3)
    dataset = out["mr"]
    meta = load_json(dataset / "dataset.json")
    assert meta["channel_names"] == {"0": "MR"} and meta["numTraining"] == 9
    for patient in MR_PATIENTS:
        for kind in ("T2SPIR", "T1in", "T1out"):
            _check_case(dataset, f"chaos_{patient:03d}_{kind}", *truth[patient][kind], {1: 1, 2: 2, 3: 3, 4: 4})
    cases = [f"chaos_{p:03d}_{k}" for p in MR_PATIENTS for k in ("T2SPIR", "T1in", "T1out")]
    splits = check_splits(dataset, cases, groups={c: c[:9] for c in cases})
    assert len(splits) == 3


def test_liver_protocol_pairs_with_chaos_ct(archive, ct_archive, tmp_path, capsys):
    root, truth = archive
    raw = tmp_path / "raw"
    convert_chaos(ct_archive[0], output_root=str(raw), modalities=["ct"])
    out = convert_chaos(root, output_root=str(raw), protocol="liver")
    for patient in (2, 5):
        _check_case(out["mr"], f"chaos_{patient:03d}_T2SPIR", *truth[patient]["T2SPIR"], LIVER_ONLY)
    mr, ct = load_json(out["mr"] / "dataset.json"), load_json(raw / "Dataset704_CHAOS_CT" / "dataset.json")
    assert mr["labels"] == ct["labels"] == {"background": 0, "liver": 1}
    assert "nnunet_unpaired plan-pair -d 704 703 -c 3d_fullres" in capsys.readouterr().out


def test_ct_liver_from_dicom_and_one_bit_png(ct_archive, tmp_path):
    root, truth = ct_archive
    out = convert_chaos(root, output_root=str(tmp_path / "raw"), modalities=["ct"])
    dataset = out["ct"]
    assert dataset.name == "Dataset704_CHAOS_CT"
    meta = load_json(dataset / "dataset.json")
    assert meta["channel_names"] == {"0": "CT"} and meta["nnunet_unpaired"]["label_protocol"] == "liver"
    for patient, (image, label) in truth.items():
        _check_case(dataset, f"chaos_{patient:03d}_CT", image, label, LIVER_ONLY)
        assert read(dataset / "imagesTr" / f"chaos_{patient:03d}_CT_0000.nii.gz").GetPixelID() == sitk.sitkInt16


def test_refuses_slice_count_mismatch(archive, tmp_path):
    root, _ = archive
    ground = chaos_mr_case_dir(root, 5) / "T2SPIR" / "Ground"
    (ground / "IMG-0010-00005.png").unlink()
    with pytest.raises(UserError, match=r"5/T2SPIR/Ground: 4 ground-truth PNGs but 5 DICOM slices"):
        convert_chaos(root, output_root=str(tmp_path / "raw"))


def test_refuses_file_names_that_do_not_order_the_stack(archive, tmp_path):
    root, _ = archive
    folder = chaos_mr_case_dir(root, 1) / "T2SPIR" / "DICOM_anon"
    a, b = folder / "IMG-0002-00002.dcm", folder / "IMG-0002-00004.dcm"
    a.rename(folder / "swap.dcm")
    b.rename(a)
    (folder / "swap.dcm").rename(b)
    with pytest.raises(UserError, match=r"DICOM_anon: slice positions do not advance monotonically in file name order "
                                        r"\(IMG-0002-00002\.dcm -> IMG-0002-00003\.dcm\)"):
        convert_chaos(root, output_root=str(tmp_path / "raw"))


def test_refuses_unknown_grey_value_naming_file_and_value(archive, tmp_path):
    from PIL import Image

    root, _ = archive
    png = chaos_mr_case_dir(root, 2) / "T2SPIR" / "Ground" / "IMG-0004-00003.png"
    grey = np.array(Image.open(png))
    grey[0, 0] = 100
    Image.fromarray(grey).save(png)
    with pytest.raises(UserError, match=r"IMG-0004-00003\.png: grey value\(s\) 100 are not CHAOS MR ground truth"):
        convert_chaos(root, output_root=str(tmp_path / "raw"))


def test_refuses_png_of_another_size_and_missing_folders(archive, tmp_path):
    from PIL import Image

    root, _ = archive
    png = chaos_mr_case_dir(root, 2) / "T2SPIR" / "Ground" / "IMG-0004-00002.png"
    Image.fromarray(np.zeros((10, 11), np.uint8)).save(png)
    with pytest.raises(UserError, match=r"IMG-0004-00002\.png: ground truth is 10 x 11 pixels but its DICOM slice is "
                                        r"10 x 12"):
        convert_chaos(root, output_root=str(tmp_path / "raw"))
    with pytest.raises(UserError, match=r"Train_Sets/CT: folder not found"):
        convert_chaos(root, output_root=str(tmp_path / "raw"), modalities=["ct"])
    (chaos_mr_case_dir(root, 1) / "T1DUAL" / "Ground").rename(chaos_mr_case_dir(root, 1) / "T1DUAL" / "Gnd")
    with pytest.raises(UserError, match=r"1/T1DUAL/Ground: folder not found"):
        convert_chaos(root, output_root=str(tmp_path / "raw"), sequence="T1DUAL")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=r"folder not found: Train_Sets/MR"):
        convert_chaos(empty, output_root=str(tmp_path / "raw"))


def test_refuses_incompatible_options_and_phases_on_different_grids(archive, tmp_path):
    root, _ = archive
    with pytest.raises(UserError, match="--sequence all needs --t1-layout cases"):
        convert_chaos(root, output_root=str(tmp_path / "raw"), sequence="all")
    out_phase = chaos_mr_case_dir(root, 5) / "T1DUAL" / "DICOM_anon" / "OutPhase"
    shifted = make_image((11, 10, 4), (1.6, 1.6, 7.5), (0.0, 0.0, 0.0), IDENTITY, np.uint16, 0, 900, seed=1)
    for f in out_phase.iterdir():
        f.unlink()
    write_chaos_mr_series(out_phase, out_phase.parent / "unused", shifted, None, 51)
    with pytest.raises(UserError, match="InPhase and OutPhase series differ .* Use --t1-layout cases"):
        convert_chaos(root, output_root=str(tmp_path / "raw"), sequence="T1DUAL")
    convert_chaos(root, output_root=str(tmp_path / "raw"), sequence="T1DUAL", t1_layout="cases")


def test_input_untouched_and_command_line(archive, tmp_path, capsys):
    root, _ = archive
    before = tree_digest(root)
    raw = tmp_path / "raw"
    args = ["chaos", "--input", str(root), "--output-root", str(raw), "--ids", "2", "5", "--mr-test-ids", "none"]
    assert main(args) == 0
    assert main(args) == 0  # a rerun replaces the dataset
    assert tree_digest(root) == before
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset703_CHAOS_MR"]
    printed = capsys.readouterr().out
    assert "chaos_005_T2SPIR" in printed and "labels [1, 2, 3, 4]" in printed
    assert "convert btcv" in printed  # how to get the CT side
    assert main(["chaos", "--input", str(root), "--output-root", str(raw), "--ids", "4"]) == 2
    assert "no patient folders for case(s) 4" in capsys.readouterr().err
