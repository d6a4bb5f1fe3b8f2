"""Metrics against hand-computed cases: shifted cubes, concentric spheres, empty masks, NIfTI folders."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from medpy.metric import binary as medpy_binary

from nnunet_unpaired.benchmark.metrics import case_metrics, dice, evaluate_folder, surface_distances
from nnunet_unpaired.errors import UserError

N = 10  # cube side in voxels


def cube_pair(axis: int, shift: int, shape: tuple[int, int, int] = (18, 18, 18)) -> tuple[np.ndarray, np.ndarray]:
    """A cube of side N at offset 3 and the same cube moved by ``shift`` voxels along ``axis``."""
    a = np.zeros(shape, dtype=bool)
    a[3:3 + N, 3:3 + N, 3:3 + N] = True
    b = np.roll(a, shift, axis=axis)
    return a, b


def shifted_cube_expected(shift: int, step: float) -> tuple[float, float, float]:
    """Dice, HD95 and ASSD of a cube of side N against itself moved by ``shift`` voxels of size ``step``.

    Derivation, for ``step * shift`` <= the other two spacings and N - 1 >= 2 * shift (both hold below). Put the
    shift along z. A surface voxel (a voxel with a face neighbour outside the cube) is either lateral (on one of
    the 4 side faces; 4N - 4 per z-slice, N slices) or in the interior of the top or bottom face ((N - 2)^2 each).
    From cube A to the moved cube B:
    - lateral voxels in slices z >= shift lie on B's side faces: distance 0; (N - shift)(4N - 4) voxels;
    - lateral voxels in slice z < shift: every voxel of B has z >= shift, and (shift, y, x) is on B's surface:
      distance (shift - z) * step; 4N - 4 voxels per slice;
    - interior bottom-face voxels: B starts at z = shift: distance shift * step;
    - interior top-face voxels: B's top face is shift * step away; B's side faces are at least one in-plane
      spacing away (>= shift * step) and B's bottom face (N - 1 - shift) * step >= shift * step: so shift * step.
    B to A is the mirror image, so the pooled list is this list twice. The voxels at distance shift * step are
    2 (N - 2)^2 + 4N - 4 of 2 (N - 2)^2 + N (4N - 4) (164 of 488 for N = 10, more than 5 %), so HD95 = shift * step.
    Dice = 2 (N - shift) N^2 / (2 N^3) = (N - shift) / N.
    """
    lateral, face = 4 * N - 4, (N - 2) ** 2
    distance_sum = 2 * face * shift * step + lateral * step * shift * (shift + 1) / 2
    assd = distance_sum / (2 * face + N * lateral)
    return (N - shift) / N, shift * step, assd


def ball(shape: Sequence[int], spacing: Sequence[float], radius: float) -> np.ndarray:
    """Voxels whose centre lies within ``radius`` (mm) of the image centre."""
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]
    grids = np.meshgrid(*axes, indexing="ij")
    return sum(g ** 2 for g in grids) <= radius ** 2


def test_identical_masks_give_dice_one_and_zero_distances():
    a, _ = cube_pair(axis=0, shift=0)
    assert dice(a, a) == 1.0
    assert surface_distances(a, a, (1.5, 0.7, 0.7)) == (0.0, 0.0)


@pytest.mark.parametrize("axis, spacing", [(0, (0.5, 1.0, 2.0)), (1, (2.0, 0.5, 1.0)), (2, (2.0, 1.0, 0.5))])
@pytest.mark.parametrize("shift", [1, 2])
def test_shifted_cube_with_anisotropic_spacing(axis, spacing, shift):
    a, b = cube_pair(axis, shift)
    exp_dice, exp_hd95, exp_assd = shifted_cube_expected(shift, spacing[axis])
    hd95, assd = surface_distances(b, a, spacing)
    assert dice(b, a) == pytest.approx(exp_dice, rel=1e-12)
    assert hd95 == pytest.approx(exp_hd95, rel=1e-12)
    assert assd == pytest.approx(exp_assd, rel=1e-12)
    assert surface_distances(a, b, spacing) == pytest.approx((hd95, assd), rel=1e-12)  # symmetric


def test_spacing_follows_array_axes():
    """The same shift measured with the spacing reversed is a different number: the axis order matters."""
    a, b = cube_pair(axis=2, shift=1)
    assert surface_distances(b, a, (2.0, 1.0, 0.5))[0] == pytest.approx(0.5)
    assert surface_distances(b, a, (0.5, 1.0, 2.0))[0] != pytest.approx(0.5)


@pytest.mark.parametrize("spacing, shape", [((1.0, 1.0, 1.0), (31, 31, 31)), ((2.0, 1.0, 0.8), (17, 31, 39))])
@pytest.mark.parametrize("r1, r2", [(5.0, 10.0), (6.0, 9.0)])
def test_concentric_spheres_are_r2_minus_r1_apart(spacing, shape, r1, r2):
    """Surface voxels of a ball of radius r lie between r - h and r from the centre (h = largest spacing): a voxel
    inside with a face neighbour outside. So every distance exceeds r2 - r1 - h, and the nearest partner along the
    radius is about r2 - r1 away: HD95 and ASSD are within h of r2 - r1."""
    inner, outer = ball(shape, spacing, r1), ball(shape, spacing, r2)
    tolerance = max(spacing)
    hd95, assd = surface_distances(inner, outer, spacing)
    assert abs(hd95 - (r2 - r1)) <= tolerance
    assert abs(assd - (r2 - r1)) <= tolerance
    assert assd <= hd95
    assert dice(inner, outer) == pytest.approx(2 * inner.sum() / (inner.sum() + outer.sum()))


def test_empty_sets():
    full, _ = cube_pair(axis=0, shift=0, shape=(16, 16, 16))
    empty = np.zeros_like(full)
    assert math.isnan(dice(empty, empty))
    assert all(math.isnan(v) for v in surface_distances(empty, empty, (1, 1, 1)))
    for pred, ref in [(empty, full), (full, empty)]:
        assert dice(pred, ref) == 0.0
        assert all(math.isnan(v) for v in surface_distances(pred, ref, (1, 1, 1)))


def test_cropping_does_not_change_medpy_numbers():
    """Blobs touching the image border and each other: same numbers as MedPy on the full arrays."""
    rng = np.random.default_rng(0)
    from scipy.ndimage import binary_dilation

    for shape, spacing in [((20, 24, 16), (2.5, 0.8, 1.1))] * 3 + [((40, 30), (0.7, 1.3))]:
        pred = binary_dilation(rng.random(shape) > 0.985, iterations=2)
        ref = binary_dilation(rng.random(shape) > 0.985, iterations=2)
        pred[(0, slice(0, 3), slice(0, 3))[: len(shape)]] = True  # touches the image border
        expected = (medpy_binary.hd95(pred, ref, spacing), medpy_binary.assd(pred, ref, spacing))
        assert surface_distances(pred, ref, spacing) == pytest.approx(expected, rel=1e-12)


def test_dice_matches_nnunet():
    from nnunetv2.evaluation.evaluate_predictions import compute_tp_fp_fn_tn

    rng = np.random.default_rng(1)
    pred, ref = rng.random((12, 12, 12)) > 0.6, rng.random((12, 12, 12)) > 0.5
    tp, fp, fn, _ = compute_tp_fp_fn_tn(ref, pred)
    assert dice(pred, ref) == pytest.approx(2 * tp / (2 * tp + fp + fn), rel=1e-12)


def test_invalid_inputs_raise():
    a, b = cube_pair(axis=0, shift=1)
    with pytest.raises(ValueError, match="shape"):
        dice(a, b[:-1])
    with pytest.raises(ValueError, match="spacing"):
        surface_distances(a, b, (1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        surface_distances(a, b, (1.0, 0.0, 1.0))


def two_structure_maps() -> tuple[np.ndarray, np.ndarray]:
    """Reference: label 1 = cube, label 2 = a 4x4x4 block. Prediction: label 1 moved by 1 voxel along axis 0,
    label 2 missing, label 3 predicted where the reference has none."""
    a, b = cube_pair(axis=0, shift=1, shape=(20, 20, 20))
    ref = a.astype(np.uint8)
    ref[15:19, 15:19, 15:19] = 2
    pred = b.astype(np.uint8)
    pred[0:2, 0:2, 0:2] = 3
    return pred, ref


def test_case_metrics_several_structures():
    pred, ref = two_structure_maps()
    spacing = (0.5, 1.0, 1.0)
    labels = {"background": 0, "liver": 1, "spleen": 2, "kidney": 3, "liver_or_spleen": [1, 2]}
    rows = case_metrics(pred, ref, labels, spacing)
    assert [r["structure"] for r in rows] == ["liver", "spleen", "kidney", "liver_or_spleen"]
    liver, spleen, kidney, union = rows
    exp_dice, exp_hd95, exp_assd = shifted_cube_expected(1, 0.5)
    assert (liver["dice"], liver["hd95"], liver["assd"]) == pytest.approx((exp_dice, exp_hd95, exp_assd))
    assert (liver["label"], liver["ref_voxels"], liver["pred_voxels"]) == (1, N ** 3, N ** 3)
    assert spleen["dice"] == 0.0 and math.isnan(spleen["hd95"]) and math.isnan(spleen["assd"])
    assert (spleen["ref_voxels"], spleen["pred_voxels"]) == (64, 0)
    assert kidney["dice"] == 0.0 and (kidney["ref_voxels"], kidney["pred_voxels"]) == (0, 8)
    # region: reference 1000 + 64 voxels, prediction 1000, overlap 900
    assert union["dice"] == pytest.approx(2 * 900 / (1064 + 1000))
    assert union["label"] == [1, 2]


def test_case_metrics_rejects_ignore_label_and_no_structures():
    pred, ref = two_structure_maps()
    with pytest.raises(NotImplementedError, match="ignore"):
        case_metrics(pred, ref, {"liver": 1, "ignore": 4}, (1, 1, 1))
    with pytest.raises(ValueError, match="no foreground"):
        case_metrics(pred, ref, {"background": 0}, (1, 1, 1))


def write_label_map(path: Path, array: np.ndarray, spacing_xyz: Sequence[float],
                    origin: Sequence[float] = (0.0, 0.0, 0.0)) -> None:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(tuple(float(s) for s in spacing_xyz))
    image.SetOrigin(tuple(float(o) for o in origin))
    sitk.WriteImage(image, str(path))


@pytest.fixture
def label_folders(tmp_path: Path) -> tuple[Path, Path]:
    """Two cases, each a cube moved by one voxel along the axis of smallest spacing.

    case_x: SimpleITK spacing (x, y, z) = (0.5, 1, 2), moved along x (array axis 2): HD95 = 0.5 mm.
    case_z: SimpleITK spacing (x, y, z) = (2, 1, 0.5), moved along z (array axis 0): HD95 = 0.5 mm.
    Reading the spacing in the wrong order would move 2 mm in both.
    """
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    pred_dir.mkdir()
    ref_dir.mkdir()
    for case, axis, spacing_xyz in [("case_x", 2, (0.5, 1.0, 2.0)), ("case_z", 0, (2.0, 1.0, 0.5))]:
        a, b = cube_pair(axis, 1)
        write_label_map(ref_dir / f"{case}.nii.gz", a, spacing_xyz)
        write_label_map(pred_dir / f"{case}.nii.gz", b, spacing_xyz)
    return pred_dir, ref_dir


def test_evaluate_folder_reads_spacing_in_array_order(label_folders):
    pred_dir, ref_dir = label_folders
    rows = evaluate_folder(pred_dir, ref_dir, {"background": 0, "organ": 1})
    exp_dice, exp_hd95, exp_assd = shifted_cube_expected(1, 0.5)
    assert [(r["case"], r["structure"]) for r in rows] == [("case_x", "organ"), ("case_z", "organ")]
    for row in rows:
        assert row["dice"] == pytest.approx(exp_dice)
        assert row["hd95"] == pytest.approx(exp_hd95)
        assert row["assd"] == pytest.approx(exp_assd)
        assert set(row) == {"case", "structure", "label", "dice", "hd95", "assd", "ref_voxels", "pred_voxels"}


def test_evaluate_folder_missing_prediction(label_folders):
    pred_dir, ref_dir = label_folders
    (pred_dir / "case_z.nii.gz").unlink()
    with pytest.raises(UserError, match="case_z.nii.gz"):
        evaluate_folder(pred_dir, ref_dir, {"organ": 1})


@pytest.mark.parametrize("what", ["spacing", "origin", "size"])
def test_evaluate_folder_geometry_mismatch(label_folders, what):
    pred_dir, ref_dir = label_folders
    _, b = cube_pair(axis=2, shift=1)
    spacing, origin = (0.5, 1.0, 2.0), (0.0, 0.0, 0.0)
    if what == "spacing":
        spacing = (0.5, 1.0, 2.5)
    elif what == "origin":
        origin = (0.0, 3.0, 0.0)
    else:
        b = b[:, :, :-1]
    write_label_map(pred_dir / "case_x.nii.gz", b, spacing, origin)
    with pytest.raises(UserError, match=rf"case_x\.nii\.gz has {what}"):
        evaluate_folder(pred_dir, ref_dir, {"organ": 1})


def test_evaluate_folder_bad_folders(tmp_path, label_folders):
    pred_dir, ref_dir = label_folders
    with pytest.raises(UserError, match="does not exist"):
        evaluate_folder(pred_dir, tmp_path / "nope", {"organ": 1})
    with pytest.raises(UserError, match="does not exist"):
        evaluate_folder(tmp_path / "nope", ref_dir, {"organ": 1})
    with pytest.raises(UserError, match="no file ending"):
        evaluate_folder(pred_dir, ref_dir, {"organ": 1}, file_ending=".mha")
