"""MM-WHS converter on a synthetic archive in the real layout (names, label values, 421 quirk, MR orientations)."""

from __future__ import annotations

import numpy as np
import pytest
from archives import (
    FLIPPED_INPLANE,
    IDENTITY,
    SAGITTAL,
    assert_lps,
    assert_same_grid_extent,
    case_files,
    check_splits,
    load_json,
    make_image,
    make_label,
    map_values,
    oblique,
    read,
    sample_at,
    tree_digest,
    write_mmwhs_case,
)

from nnunet_unpaired.conversion.cli import main
from nnunet_unpaired.conversion.mmwhs import convert_mmwhs
from nnunet_unpaired.errors import UserError

ALL7 = [205, 420, 500, 550, 600, 820, 850]
MAP7 = {205: 1, 420: 2, 421: 2, 500: 3, 550: 4, 600: 5, 820: 6, 850: 7}
MAP4 = {820: 1, 420: 2, 421: 2, 500: 3, 205: 4}

# (modality, number) -> (size, spacing, origin, direction, label values)
CASES = {
    ("ct", 1001): ((9, 8, 7), (0.44, 0.44, 0.625), (-30.0, 12.5, -100.0), FLIPPED_INPLANE, ALL7),
    ("ct", 1002): ((8, 9, 6), (0.5, 0.5, 0.8), (10.0, -5.0, 40.0), IDENTITY, ALL7[:5]),
    ("ct", 1003): ((7, 8, 6), (0.4, 0.4, 0.6), (0.0, 0.0, 0.0), IDENTITY, ALL7),  # protocol test case
    ("mr", 1007): ((8, 7, 6), (1.0, 1.0, 1.1), (5.0, 5.0, 5.0), IDENTITY, ALL7),  # protocol test case
    ("mr", 1010): ((8, 8, 6), (0.9, 0.9, 1.2), (-4.0, 3.0, 2.0), IDENTITY, [205, 421, 500, 420, 820]),  # 421 quirk
    ("mr", 1011): ((10, 7, 6), (2.0, 0.8, 1.3), (20.0, -40.0, 60.0), SAGITTAL, ALL7),  # unusual orientation
    ("mr", 1012): ((8, 9, 7), (1.0, 1.1, 1.6), (1.0, 2.0, 3.0), oblique(7.0), ALL7),  # slightly oblique
}


def _volumes(modality, number):
    size, spacing, origin, direction, values = CASES[(modality, number)]
    image = make_image(size, spacing, origin, direction, seed=number + (0 if modality == "ct" else 50),
                       low=-1000 if modality == "ct" else 0, high=2000)
    return image, make_label(image, values)


@pytest.fixture
def archive(tmp_path):
    root = tmp_path / "MM-WHS 2017 Dataset"
    truth = {}
    for modality, number in CASES:
        image, label = _volumes(modality, number)
        write_mmwhs_case(root, modality, number, image, label)
        truth[(modality, number)] = image, label
    (root / "ct_test").mkdir()  # present in the real archive, unlabelled, ignored
    return root, truth


def test_values_orientation_and_alignment_voxel_by_voxel(archive, tmp_path):
    root, truth = archive
    out = convert_mmwhs(root, output_root=str(tmp_path / "raw"))
    assert sorted(out) == ["ct", "mr"]
    assert out["ct"].name == "Dataset701_MMWHS_CT" and out["mr"].name == "Dataset702_MMWHS_MR"
    for (modality, number), (src_image, src_label) in truth.items():
        dataset = out[modality]
        test = number in (1003, 1007)
        case = f"mmwhs_{modality}_{number}"
        image = read(dataset / ("imagesTs" if test else "imagesTr") / f"{case}_0000.nii.gz")
        label = read(dataset / ("labelsTs" if test else "labelsTr") / f"{case}.nii.gz")
        assert image.GetPixelID() == src_image.GetPixelID()
        assert_same_grid_extent(image, src_image)
        if number != 1012:
            assert_lps(image)
        else:  # oblique: closest orientation, rotation kept (no resampling)
            direction = np.array(image.GetDirection()).reshape(3, 3)
            assert np.all(np.diag(direction) > 0.99)
        # geometry of image and label identical; both moved only through the header
        assert image.GetOrigin() == label.GetOrigin() and image.GetDirection() == label.GetDirection()
        assert image.GetSpacing() == label.GetSpacing()
        np.testing.assert_array_equal(sitk_array(image), sample_at(image, src_image))
        np.testing.assert_array_equal(sitk_array(label), map_values(sample_at(label, src_label), MAP7))


def test_sagittal_mr_is_reoriented_through_the_header(archive, tmp_path):
    root, truth = archive
    out = convert_mmwhs(root, output_root=str(tmp_path / "raw"), modalities=["mr"], ids=[1011])
    image = read(out["mr"] / "imagesTr" / "mmwhs_mr_1011_0000.nii.gz")
    src = truth[("mr", 1011)][0]
    # SAGITTAL has voxel axes (x->A, y->I, z->L): LPS order is (z, x, y) with y and x reversed
    assert image.GetSize() == (6, 10, 7)
    assert np.allclose(image.GetSpacing(), (1.3, 2.0, 0.8))
    expected = np.transpose(sitk_array(src), (1, 2, 0))[::-1, ::-1, :]  # independent of the converter's maths
    np.testing.assert_array_equal(sitk_array(image), expected)
    corner = src.TransformIndexToPhysicalPoint((9, 6, 0))  # voxel that becomes the new first voxel
    assert np.allclose(image.GetOrigin(), corner, atol=1e-4)


def test_label_421_is_read_as_420(archive, tmp_path, capsys):
    root, truth = archive
    out = convert_mmwhs(root, output_root=str(tmp_path / "raw"), modalities=["mr"], ids=[1010])
    label = sitk_array(read(out["mr"] / "labelsTr" / "mmwhs_mr_1010.nii.gz"))
    src = sample_at(read(out["mr"] / "labelsTr" / "mmwhs_mr_1010.nii.gz"), truth[("mr", 1010)][1])
    assert (src == 421).any() and (src == 420).any()
    assert (label[src == 421] == 2).all() and (label[src == 420] == 2).all()
    assert "mr_train_1010_label.nii.gz: label value 421 read as 420" in capsys.readouterr().out


def test_four_structure_protocol(archive, tmp_path):
    root, truth = archive
    out = convert_mmwhs(root, output_root=str(tmp_path / "raw"), protocol="mmwhs-4", modalities=["mr"])
    meta = load_json(out["mr"] / "dataset.json")
    assert meta["labels"] == {"background": 0, "ascending_aorta": 1, "LA_blood_cavity": 2, "LV_blood_cavity": 3,
                              "LV_myocardium": 4}
    assert meta["nnunet_unpaired"]["label_protocol"] == "mmwhs-4"
    for number in (1010, 1011):
        label = read(out["mr"] / "labelsTr" / f"mmwhs_mr_{number}.nii.gz")
        np.testing.assert_array_equal(sitk_array(label), map_values(sample_at(label, truth[("mr", number)][1]), MAP4))


def test_dataset_json_splits_and_protocol_test_cases(archive, tmp_path, capsys):
    root, _ = archive
    out = convert_mmwhs(root, output_root=str(tmp_path / "raw"))
    ct, mr = (load_json(out[m] / "dataset.json") for m in ("ct", "mr"))
    assert ct["channel_names"] == {"0": "CT"} and mr["channel_names"] == {"0": "MR"}
    assert ct["labels"] == mr["labels"] and list(ct["labels"].values()) == list(range(8))
    assert ct["nnunet_unpaired"]["modality"] == "CT" and mr["nnunet_unpaired"]["modality"] == "MR"
    assert ct["nnunet_unpaired"]["label_protocol"] == mr["nnunet_unpaired"]["label_protocol"] == "mmwhs-7"
    assert ct["numTraining"] == 2 and mr["numTraining"] == 3 and ct["file_ending"] == ".nii.gz"
    assert "Zhuang" in ct["reference"] and ct["licence"]
    assert case_files(out["ct"], "imagesTs") == ["mmwhs_ct_1003_0000.nii.gz"]
    assert case_files(out["ct"], "labelsTs") == ["mmwhs_ct_1003.nii.gz"]
    assert case_files(out["mr"], "imagesTs") == ["mmwhs_mr_1007_0000.nii.gz"]
    assert "mmwhs_ct_1003_0000.nii.gz" not in case_files(out["ct"], "imagesTr")
    check_splits(out["ct"], ["mmwhs_ct_1001", "mmwhs_ct_1002"])
    check_splits(out["mr"], ["mmwhs_mr_1010", "mmwhs_mr_1011", "mmwhs_mr_1012"])
    printed = capsys.readouterr().out
    assert "nnunet_unpaired plan-pair -d 701 702 -c 3d_fullres" in printed
    assert "mmwhs_mr_1011" in printed and "spacing range" in printed


def test_no_test_cases_when_asked(archive, tmp_path):
    root, _ = archive
    out = convert_mmwhs(root, output_root=str(tmp_path / "raw"), modalities=["ct"], test_ids={"ct": []})
    assert not (out["ct"] / "imagesTs").exists()
    assert load_json(out["ct"] / "dataset.json")["numTraining"] == 3


def test_rerun_replaces_and_input_is_never_modified(archive, tmp_path):
    root, _ = archive
    before = tree_digest(root)
    raw = tmp_path / "raw"
    convert_mmwhs(root, output_root=str(raw), modalities=["ct"])
    (raw / "Dataset701_MMWHS_CT" / "stale_file").write_text("from an earlier run")
    convert_mmwhs(root, output_root=str(raw), modalities=["ct"], protocol="mmwhs-4")
    assert tree_digest(root) == before
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset701_MMWHS_CT"]  # no partial or old folders left
    assert not (raw / "Dataset701_MMWHS_CT" / "stale_file").exists()
    assert load_json(raw / "Dataset701_MMWHS_CT" / "dataset.json")["nnunet_unpaired"]["label_protocol"] == "mmwhs-4"


def test_failed_run_leaves_previous_result(archive, tmp_path):
    root, _ = archive
    raw = tmp_path / "raw"
    convert_mmwhs(root, output_root=str(raw), modalities=["ct"])
    before = tree_digest(raw)
    bad = make_label(make_image((7, 8, 6)), [205, 333])
    write_mmwhs_case(root, "ct", 1020, make_image((7, 8, 6)), bad)
    with pytest.raises(UserError):
        convert_mmwhs(root, output_root=str(raw), modalities=["ct"])
    assert tree_digest(raw) == before


def test_refuses_unknown_label_value_naming_file_and_value(archive, tmp_path):
    root, _ = archive
    image = make_image((7, 8, 6), seed=3)
    write_mmwhs_case(root, "mr", 1013, image, make_label(image, [205, 333]))
    with pytest.raises(UserError, match=r"mr_train_1013_label\.nii\.gz: label value\(s\) 333 are not MM-WHS labels"):
        convert_mmwhs(root, output_root=str(tmp_path / "raw"), modalities=["mr"])


def test_refuses_label_on_another_grid(archive, tmp_path):
    root, _ = archive
    image = make_image((7, 8, 6), origin=(0, 0, 0), seed=4)
    label = make_label(image, [205])
    label.SetOrigin((0.0, 0.0, 5.0))
    write_mmwhs_case(root, "ct", 1004, image, label)
    with pytest.raises(UserError, match=r"ct_train_1004_label\.nii\.gz: the label does not lie on the voxel grid of "
                                        r".*ct_train_1004_image\.nii\.gz: origin"):
        convert_mmwhs(root, output_root=str(tmp_path / "raw"), modalities=["ct"])
    label = make_label(image, [205])
    label.SetOrigin((0.0, 0.0, 1e-5))  # float rounding in a header is tolerated; the label gets the image's header
    write_mmwhs_case(root, "ct", 1004, image, label)
    out = convert_mmwhs(root, output_root=str(tmp_path / "raw"), modalities=["ct"], ids=[1004])
    written = read(out["ct"] / "labelsTr" / "mmwhs_ct_1004.nii.gz")
    assert written.GetOrigin() == read(out["ct"] / "imagesTr" / "mmwhs_ct_1004_0000.nii.gz").GetOrigin()


def test_refuses_missing_folder_missing_file_and_unknown_id(archive, tmp_path):
    root, _ = archive
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=r"empty/ct_train: folder not found"):
        convert_mmwhs(empty, output_root=str(tmp_path / "raw"))
    with pytest.raises(UserError, match=r"no .* for case\(s\) 1015"):
        convert_mmwhs(root, output_root=str(tmp_path / "raw"), ids=[1001, 1015])
    (root / "mr_train" / "mr_train_1011_label.nii.gz").unlink()
    with pytest.raises(UserError, match=r"mr_train_1011_label\.nii\.gz is missing"):
        convert_mmwhs(root, output_root=str(tmp_path / "raw"), modalities=["mr"])
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").iterdir())


def test_refuses_without_output_root_and_foreign_dataset_id(archive, tmp_path, monkeypatch):
    root, _ = archive
    monkeypatch.delenv("nnUNet_raw", raising=False)
    with pytest.raises(UserError, match="set nnUNet_raw"):
        convert_mmwhs(root)
    with pytest.raises(UserError, match="inside the input"):
        convert_mmwhs(root, output_root=str(root / "out"))
    raw = tmp_path / "raw"
    (raw / "Dataset701_SomethingElse").mkdir(parents=True)
    with pytest.raises(UserError, match="Dataset701_SomethingElse: dataset id 701 is already taken"):
        convert_mmwhs(root, output_root=str(raw), modalities=["ct"])
    monkeypatch.setenv("nnUNet_raw", str(raw))
    out = convert_mmwhs(root, modalities=["ct"], dataset_ids={"ct": 711})
    assert out["ct"] == raw / "Dataset711_MMWHS_CT"


def test_command_line(archive, tmp_path, capsys):
    root, _ = archive
    raw = tmp_path / "raw"
    common = ["mmwhs", "--input", str(root), "--output-root", str(raw), "--protocol", "mmwhs-4"]
    assert main(common + ["--modality", "ct", "--ids", "1001", "1002", "--dataset-id", "721"]) == 0
    assert "No partner dataset" in capsys.readouterr().out
    mr = ["--modality", "mr", "--ids", "1010,1011", "--dataset-id", "722", "--mr-test-ids", "1011"]
    assert main(common + mr) == 0
    assert case_files(raw / "Dataset722_MMWHS_MR", "imagesTs") == ["mmwhs_mr_1011_0000.nii.gz"]
    assert "plan-pair -d 721 722 -c 3d_fullres" in capsys.readouterr().out
    assert main(["mmwhs", "--input", str(tmp_path / "nowhere"), "--output-root", str(raw)]) == 2
    assert "nowhere: folder not found" in capsys.readouterr().err


def sitk_array(image):
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(image)
