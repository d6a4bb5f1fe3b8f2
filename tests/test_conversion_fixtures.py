"""Real volumes through the real layouts: the TotalSegmentator CT and MR fixtures written as BTCV (NIfTI) and CHAOS
(DICOM + PNG) archives, converted back, and compared voxel by voxel with the originals.

Skipped when ../shared/fixtures/totalsegmentator is absent (a user's clone).
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from archives import (
    CHAOS_MR_GREY,
    assert_lps,
    chaos_mr_case_dir,
    load_json,
    map_values,
    read,
    sample_at,
    tree_digest,
    write_btcv_case,
    write_chaos_ct_case,
    write_chaos_mr_series,
)

from nnunet_unpaired.conversion.btcv import convert_btcv
from nnunet_unpaired.conversion.chaos import convert_chaos

pytestmark = pytest.mark.fixtures

# TotalSegmentator "total" / "total_mr" values shared by both fixtures (see the fixtures' README)
TS_SPLEEN, TS_RIGHT_KIDNEY, TS_LEFT_KIDNEY, TS_GALLBLADDER, TS_LIVER, TS_STOMACH, TS_PANCREAS = 1, 2, 3, 4, 5, 6, 7
TS_TO_BTCV = {TS_SPLEEN: 1, TS_RIGHT_KIDNEY: 2, TS_LEFT_KIDNEY: 3, TS_GALLBLADDER: 4, TS_LIVER: 6, TS_STOMACH: 7,
              TS_PANCREAS: 11}
TS_TO_ABDOMEN_4 = {TS_LIVER: 1, TS_RIGHT_KIDNEY: 2, TS_LEFT_KIDNEY: 3, TS_SPLEEN: 4}


@pytest.fixture
def real(totalseg_fixtures):
    names = ("ct", "ct_seg", "mr", "mr_seg")
    return {name: sitk.ReadImage(str(totalseg_fixtures / f"{name}.nii.gz")) for name in names}


def _as_label(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.CopyInformation(reference)
    return image


def _assert_geometry(out: sitk.Image, src: sitk.Image, atol: float = 1e-4) -> None:
    """LPS output of an axis-aligned source: same spacing, first voxel at the source voxel nearest to L, P, S min."""
    assert_lps(out)
    assert np.allclose(out.GetSpacing(), src.GetSpacing(), atol=1e-6)
    size = np.array(src.GetSize()) - 1
    corners = np.array([src.TransformIndexToPhysicalPoint([int(c) for c in size * np.array(b)])
                        for b in np.ndindex(2, 2, 2)])
    assert np.allclose(out.GetOrigin(), corners.min(axis=0), atol=atol)


def test_real_ct_through_the_btcv_layout(real, tmp_path):
    ct, seg = real["ct"], real["ct_seg"]
    archive = tmp_path / "btcv"
    btcv_label = _as_label(map_values(sitk.GetArrayFromImage(seg), TS_TO_BTCV), seg)
    write_btcv_case(archive, 1, ct, btcv_label)
    before = tree_digest(archive)
    raw = tmp_path / "raw"
    dataset = convert_btcv(archive, output_root=str(raw), protocol="btcv-13", test_ids=[])
    image = read(dataset / "imagesTr" / "btcv_0001_0000.nii.gz")
    label = read(dataset / "labelsTr" / "btcv_0001.nii.gz")
    _assert_geometry(image, ct)
    assert image.GetPixelID() == ct.GetPixelID()
    # the fixture's direction is (-1, -1, +1): LPS means both in-plane axes reversed, nothing else
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(ct)[:, ::-1, ::-1])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sample_at(image, ct))
    expected = map_values(sitk.GetArrayFromImage(seg), TS_TO_BTCV)[:, ::-1, ::-1]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label), expected)
    assert label.GetOrigin() == image.GetOrigin()

    dataset = convert_btcv(archive, output_root=str(raw), protocol="abdomen-4", test_ids=[])
    label = read(dataset / "labelsTr" / "btcv_0001.nii.gz")
    expected = map_values(sitk.GetArrayFromImage(seg), TS_TO_ABDOMEN_4)[:, ::-1, ::-1]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label), expected)
    assert tree_digest(archive) == before


def test_real_mr_through_the_chaos_dicom_png_layout(real, tmp_path):
    mr, seg = real["mr"], real["mr_seg"]
    archive = tmp_path / "chaos"
    case = chaos_mr_case_dir(archive, 2)
    abdomen = map_values(sitk.GetArrayFromImage(seg), TS_TO_ABDOMEN_4)
    # DICOM positions run against the file names, as in some CHAOS series
    write_chaos_mr_series(case / "T2SPIR" / "DICOM_anon", case / "T2SPIR" / "Ground", mr, abdomen, 4, reverse=True)
    dataset = convert_chaos(archive, output_root=str(tmp_path / "raw"))["mr"]
    image = read(dataset / "imagesTr" / "chaos_002_T2SPIR_0000.nii.gz")
    label = read(dataset / "labelsTr" / "chaos_002_T2SPIR.nii.gz")
    _assert_geometry(image, mr)
    assert image.GetPixelID() == sitk.sitkInt16
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(mr))  # identity direction
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label), abdomen)
    assert sorted(np.unique(abdomen).tolist()) == [0, 1, 2, 3, 4]  # all four organs made the round trip
    assert set(CHAOS_MR_GREY) == {1, 2, 3, 4}


def test_real_ct_through_the_chaos_ct_layout(real, tmp_path):
    ct, seg = real["ct"], real["ct_seg"]
    archive = tmp_path / "chaos"
    ct16 = sitk.Cast(ct, sitk.sitkInt16)  # CHAOS CT DICOMs are 16-bit; the fixture's HU fit
    liver = (sitk.GetArrayFromImage(seg) == TS_LIVER).astype(np.uint8)
    write_chaos_ct_case(archive, 1, ct16, liver, reverse=False)
    dataset = convert_chaos(archive, output_root=str(tmp_path / "raw"), modalities=["ct"])["ct"]
    image = read(dataset / "imagesTr" / "chaos_001_CT_0000.nii.gz")
    label = read(dataset / "labelsTr" / "chaos_001_CT.nii.gz")
    _assert_geometry(image, ct)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(ct)[:, ::-1, ::-1])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label), liver[:, ::-1, ::-1])


@pytest.mark.slow
def test_real_pair_passes_nnunet_dataset_checks(real, tmp_path):
    """The converted CHAOS MR + BTCV CT pair passes nnU-Net's own verify_dataset_integrity, labels identical."""
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    raw = tmp_path / "raw"
    btcv, chaos = tmp_path / "btcv", tmp_path / "chaos"
    ct_labels = _as_label(map_values(sitk.GetArrayFromImage(real["ct_seg"]), TS_TO_BTCV), real["ct_seg"])
    write_btcv_case(btcv, 2, real["ct"], ct_labels)
    abdomen = map_values(sitk.GetArrayFromImage(real["mr_seg"]), TS_TO_ABDOMEN_4)
    case = chaos_mr_case_dir(chaos, 2)
    write_chaos_mr_series(case / "T2SPIR" / "DICOM_anon", case / "T2SPIR" / "Ground", real["mr"], abdomen, 4)
    ct_dataset = convert_btcv(btcv, output_root=str(raw), protocol="abdomen-4")
    mr_dataset = convert_chaos(chaos, output_root=str(raw))["mr"]
    ct_meta, mr_meta = load_json(ct_dataset / "dataset.json"), load_json(mr_dataset / "dataset.json")
    assert ct_meta["labels"] == mr_meta["labels"]
    assert len(ct_meta["channel_names"]) == len(mr_meta["channel_names"]) == 1
    for dataset in (ct_dataset, mr_dataset):
        verify_dataset_integrity(str(dataset), num_processes=1)
