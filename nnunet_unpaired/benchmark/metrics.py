"""Segmentation metrics per case and per structure: Dice, HD95 and ASSD in millimetres.

Dice is nnU-Net's: ``2 |P & R| / (|P| + |R|)``, as written by ``nnUNetv2_evaluate_folder`` into summary.json.
Surface distances come from MedPy (``medpy.metric.binary.hd95`` and ``assd``, MedPy >= 0.5), the library the
unpaired CT/MR segmentation papers use for ASSD, so the numbers are comparable with theirs:

- the surface of a mask is its voxels with at least one 6-neighbour (face neighbour in 3D) outside the mask; the
  image border counts as outside;
- every surface voxel of the prediction gets the distance (in mm, Euclidean, anisotropic spacing) to the nearest
  surface voxel of the reference, and every surface voxel of the reference the distance to the prediction;
- HD95 is the 95th percentile (numpy's linear interpolation) of the two lists pooled together; ASSD is the mean of
  the two lists pooled together (MedPy 0.4 averaged the two directed means instead; MedPy 0.5 pools them).

Other tools define HD95 as the larger of the two directed 95th percentiles; compare numbers across papers with care.

Empty sets (P = prediction, R = reference of one structure in one case):

==================  =========  ===========  ==============================================================
case                Dice       HD95, ASSD   why
==================  =========  ===========  ==============================================================
P and R empty       NaN        NaN          nothing to segment, nothing predicted: no evidence either way
                                            (nnU-Net's convention; its summary.json averages with nanmean)
one of them empty   0.0        NaN          a distance to an empty set is undefined; Dice 0 records the miss
==================  =========  ===========  ==============================================================

Aggregates (see :mod:`nnunet_unpaired.benchmark.report`) ignore NaN (nanmean / nanstd) and print how many values
were used, so a missed structure lowers the mean Dice but does not enter the mean HD95 / ASSD; read the two together.

Spacing convention: the ``spacing`` arguments of this module follow the NUMPY ARRAY axis order. SimpleITK reports
spacing as (x, y, z) while ``GetArrayFromImage`` returns arrays indexed [z, y, x]; :func:`evaluate_folder` reverses
the header spacing accordingly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from medpy.metric import binary as medpy_binary

from nnunet_unpaired.errors import UserError

LabelValue = int | Sequence[int]

# Geometry tolerances when comparing a prediction's header with its reference (NIfTI stores float32 values).
_GEOMETRY_RTOL = 1e-4
_GEOMETRY_ATOL = 1e-4


def dice(pred_mask: np.ndarray, ref_mask: np.ndarray) -> float:
    """nnU-Net's Dice coefficient of two binary masks.

    Args:
        pred_mask: predicted mask (any dtype; nonzero is foreground).
        ref_mask: reference mask of the same shape.

    Returns:
        ``2 |P & R| / (|P| + |R|)``; NaN when both masks are empty (nnU-Net's convention), 0.0 when exactly one is.

    Raises:
        ValueError: if the shapes differ.
    """
    pred, ref = _as_bool_pair(pred_mask, ref_mask)
    total = int(pred.sum()) + int(ref.sum())
    if total == 0:
        return math.nan
    return 2.0 * int(np.logical_and(pred, ref).sum()) / total


def surface_distances(pred_mask: np.ndarray, ref_mask: np.ndarray, spacing: Sequence[float]) -> tuple[float, float]:
    """HD95 and ASSD between the surfaces of two binary masks, in the unit of ``spacing`` (mm for medical images).

    Args:
        pred_mask: predicted mask (nonzero is foreground).
        ref_mask: reference mask of the same shape.
        spacing: voxel size along each ARRAY axis, e.g. (z, y, x) for an array from SimpleITK.

    Returns:
        ``(hd95, assd)``: both 0.0 for identical non-empty masks; both NaN when either mask is empty.

    Raises:
        ValueError: if the shapes differ or ``spacing`` does not have one positive value per axis.
    """
    pred, ref = _as_bool_pair(pred_mask, ref_mask)
    spacing_arr = _check_spacing(spacing, pred.ndim)
    if not pred.any() or not ref.any():
        return math.nan, math.nan
    pred, ref = _crop_to_union(pred, ref)
    hd95 = float(medpy_binary.hd95(pred, ref, voxelspacing=spacing_arr))
    assd = float(medpy_binary.assd(pred, ref, voxelspacing=spacing_arr))
    return hd95, assd


def case_metrics(pred_labelmap: np.ndarray, ref_labelmap: np.ndarray, labels: Mapping[str, LabelValue],
                 spacing: Sequence[float]) -> list[dict[str, object]]:
    """Dice, HD95 and ASSD of every structure of one case.

    Args:
        pred_labelmap: predicted label map (integer array).
        ref_labelmap: reference label map of the same shape.
        labels: structure name -> label value, or a list of values for a region (nnU-Net's dataset.json ``labels``
            can be passed as is: the background, value 0, is skipped).
        spacing: voxel size along each ARRAY axis (see the module docstring).

    Returns:
        One dict per structure, in the order of ``labels``: ``structure``, ``label``, ``dice``, ``hd95``, ``assd``,
        ``ref_voxels``, ``pred_voxels``.

    Raises:
        ValueError: if the shapes differ, the spacing is invalid, or ``labels`` names no structure.
        NotImplementedError: for nnU-Net's ignore label (a label named ``ignore``).
    """
    if pred_labelmap.shape != ref_labelmap.shape:
        raise ValueError(f"prediction shape {pred_labelmap.shape} differs from reference shape {ref_labelmap.shape}")
    structures = _structures(labels)
    rows = []
    for name, value in structures.items():
        values = [value] if isinstance(value, (int, np.integer)) else list(value)
        pred = np.isin(pred_labelmap, values)
        ref = np.isin(ref_labelmap, values)
        hd95, assd = surface_distances(pred, ref, spacing)
        rows.append({"structure": name, "label": value if len(values) > 1 else values[0], "dice": dice(pred, ref),
                     "hd95": hd95, "assd": assd, "ref_voxels": int(ref.sum()), "pred_voxels": int(pred.sum())})
    return rows


def evaluate_folder(pred_dir: str | Path, ref_dir: str | Path, labels: Mapping[str, LabelValue],
                    file_ending: str = ".nii.gz") -> list[dict[str, object]]:
    """Metrics of every reference case in ``ref_dir`` against the file of the same name in ``pred_dir``.

    The spacing comes from the reference header (SimpleITK x, y, z, reversed to the array order z, y, x).
    Predictions without a reference are ignored.

    Args:
        pred_dir: folder of predicted label maps (e.g. the output of ``nnUNetv2_predict``).
        ref_dir: folder of reference label maps (e.g. ``labelsTs``), named like the predictions.
        labels: structure name -> label value (see :func:`case_metrics`).
        file_ending: file name ending of the label maps.

    Returns:
        One dict per case and structure: ``case`` (file name without ``file_ending``), then the keys of
        :func:`case_metrics`. Cases are sorted by name.

    Raises:
        UserError: if a folder is missing or holds no reference, if a prediction is missing, or if a prediction's
            size, spacing, origin or direction differs from its reference.
    """
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    ref_files = _reference_files(ref_dir, file_ending)
    if not pred_dir.is_dir():
        raise UserError(f"Prediction folder {pred_dir} does not exist. Run the prediction first or fix the path.")
    rows = []
    for ref_file in ref_files:
        case = ref_file.name[: -len(file_ending)]
        pred_file = pred_dir / ref_file.name
        if not pred_file.is_file():
            raise UserError(f"Prediction {pred_file} is missing for reference {ref_file}. Predict this case "
                            f"(or remove the reference from {ref_dir}) and evaluate again.")
        ref_image = sitk.ReadImage(str(ref_file))
        pred_image = sitk.ReadImage(str(pred_file))
        _check_same_geometry(pred_image, ref_image, pred_file, ref_file)
        spacing = tuple(reversed(ref_image.GetSpacing()))
        pred_arr = sitk.GetArrayFromImage(pred_image)
        ref_arr = sitk.GetArrayFromImage(ref_image)
        rows.extend({"case": case, **row} for row in case_metrics(pred_arr, ref_arr, labels, spacing))
    return rows


def _as_bool_pair(pred_mask: np.ndarray, ref_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, ref = np.asarray(pred_mask).astype(bool), np.asarray(ref_mask).astype(bool)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction mask shape {pred.shape} differs from reference mask shape {ref.shape}")
    return pred, ref


def _check_spacing(spacing: Sequence[float], ndim: int) -> np.ndarray:
    spacing_arr = np.asarray(spacing, dtype=np.float64).ravel()
    if spacing_arr.size != ndim or not np.all(spacing_arr > 0):
        raise ValueError(f"spacing {tuple(spacing)} must hold one positive value per array axis ({ndim} axes)")
    return spacing_arr


def _crop_to_union(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to the bounding box of their union, so that the distance transforms scale with the structures,
    not with the image.

    The distances do not change. Outside the box both masks are background, so every surface voxel and its nearest
    partner lie inside it. A mask voxel on a face of the box was surface already (its neighbour across that face is
    outside the union, hence background), so treating the box border as background adds no surface voxel.
    """
    union = pred | ref
    box = tuple(slice(int(idx.min()), int(idx.max()) + 1) for idx in np.nonzero(union))
    return pred[box], ref[box]


def _structures(labels: Mapping[str, LabelValue]) -> dict[str, LabelValue]:
    structures = {}
    for name, value in labels.items():
        if name == "ignore":
            raise NotImplementedError("nnU-Net's ignore label is not supported by these metrics; remove 'ignore' "
                                      "from the labels (its voxels would otherwise count as background).")
        if isinstance(value, (int, np.integer)) and value == 0:
            continue
        structures[name] = value
    if not structures:
        raise ValueError(f"labels {dict(labels)} name no foreground structure (value 0 is the background)")
    return structures


def _reference_files(ref_dir: Path, file_ending: str) -> list[Path]:
    if not ref_dir.is_dir():
        raise UserError(f"Reference folder {ref_dir} does not exist. Pass the folder of reference label maps "
                        f"(e.g. labelsTs).")
    files = sorted(p for p in ref_dir.iterdir() if p.is_file() and p.name.endswith(file_ending))
    if not files:
        raise UserError(f"Reference folder {ref_dir} holds no file ending in {file_ending!r}. Fix the path or pass "
                        f"the right file_ending.")
    return files


def _check_same_geometry(pred: sitk.Image, ref: sitk.Image, pred_file: Path, ref_file: Path) -> None:
    checks = [("size", pred.GetSize(), ref.GetSize()), ("spacing", pred.GetSpacing(), ref.GetSpacing()),
              ("origin", pred.GetOrigin(), ref.GetOrigin()), ("direction", pred.GetDirection(), ref.GetDirection())]
    for what, got, expected in checks:
        same = len(got) == len(expected) and np.allclose(got, expected, rtol=_GEOMETRY_RTOL, atol=_GEOMETRY_ATOL)
        if not same:
            raise UserError(f"Prediction {pred_file} has {what} {tuple(got)} but its reference {ref_file} has "
                            f"{tuple(expected)}. Predict on the images that belong to these references (nnU-Net "
                            f"writes predictions in the geometry of the input image) or resample the prediction onto "
                            f"the reference.")
