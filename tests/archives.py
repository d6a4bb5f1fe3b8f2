"""Builders of small synthetic archives in the exact layouts of MM-WHS, CHAOS, BTCV and AMOS, and checks for tests.

The layouts (folder and file names, formats, label encodings) follow ../shared/docs/DATASETS.md. Volumes are tiny
and deterministic (fixed seeds); every label structure is an off-centre box so that any flip or permutation of an
axis, or any slice-order mistake, changes the voxels a test compares.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
# an MR acquired "sideways": voxel axes point (A, I, L) in ITK's LPS patient frame; det = +1
SAGITTAL = (0.0, 0.0, 1.0, -1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
FLIPPED_INPLANE = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # like many CT NIfTI files (RAS-ish in-plane)


def oblique(degrees: float) -> tuple[float, ...]:
    """A rotation about the z axis by ``degrees`` (row-major direction tuple)."""
    a = np.deg2rad(degrees)
    return (np.cos(a), -np.sin(a), 0.0, np.sin(a), np.cos(a), 0.0, 0.0, 0.0, 1.0)


# ----------------------------------------------------------------------------------------------------------------
# volumes

def make_image(size: Sequence[int], spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=IDENTITY,
               dtype=np.int16, low: int = -1000, high: int = 1000, seed: int = 0) -> sitk.Image:
    """Random integer volume; ``size`` is (x, y, z) like SimpleITK."""
    rng = np.random.RandomState(seed)
    array = rng.randint(low, high, size=tuple(size)[::-1]).astype(dtype)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in origin))
    image.SetDirection(tuple(float(d) for d in direction))
    return image


def make_label(reference: sitk.Image, values: Sequence[int], dtype=np.uint16) -> sitk.Image:
    """One box per value, at distinct off-centre positions of the reference grid (later values overwrite)."""
    sx, sy, sz = reference.GetSize()
    array = np.zeros((sz, sy, sx), dtype=dtype)
    for i, value in enumerate(values):
        z0 = i % max(1, sz - 2)
        y0 = (2 * i) % max(1, sy - 3)
        x0 = (3 * i + 1) % max(1, sx - 2)
        array[z0:z0 + 2, y0:y0 + 3, x0:x0 + 2] = value
    label = sitk.GetImageFromArray(array)
    label.CopyInformation(reference)
    return label


def write_nifti(image: sitk.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


# ----------------------------------------------------------------------------------------------------------------
# MM-WHS: ct_train/ct_train_1001_image.nii.gz + ct_train_1001_label.nii.gz, same for mr_train

def write_mmwhs_case(root: Path, modality: str, number: int, image: sitk.Image, label: sitk.Image) -> None:
    folder = root / f"{modality}_train"
    write_nifti(image, folder / f"{modality}_train_{number}_image.nii.gz")
    write_nifti(label, folder / f"{modality}_train_{number}_label.nii.gz")


# ----------------------------------------------------------------------------------------------------------------
# BTCV: RawData/Training/img/img0001.nii.gz + RawData/Training/label/label0001.nii.gz

def write_btcv_case(root: Path, number: int, image: sitk.Image, label: sitk.Image) -> None:
    training = root / "RawData" / "Training"
    write_nifti(image, training / "img" / f"img{number:04d}.nii.gz")
    write_nifti(label, training / "label" / f"label{number:04d}.nii.gz")


# ----------------------------------------------------------------------------------------------------------------
# AMOS: amos22/imagesTr/amos_0001.nii.gz + amos22/labelsTr/amos_0001.nii.gz (and imagesVa/labelsVa)

def write_amos_case(root: Path, number: int, image: sitk.Image, label: sitk.Image | None, split: str = "Tr") -> None:
    base = root / "amos22"
    write_nifti(image, base / f"images{split}" / f"amos_{number:04d}.nii.gz")
    if label is not None:
        write_nifti(label, base / f"labels{split}" / f"amos_{number:04d}.nii.gz")


# ----------------------------------------------------------------------------------------------------------------
# CHAOS: DICOM series (one file per slice) + PNG ground truth

CHAOS_MR_GREY = {1: 63, 2: 126, 3: 189, 4: 252}  # liver, right kidney, left kidney, spleen (nominal values)
CHAOS_MR_GREY_OFF_NOMINAL = {1: 57, 2: 133, 3: 176, 4: 241}  # still inside the decoding ranges


def write_dicom_slices(folder: Path, volume: sitk.Image, names: Sequence[str], order: Sequence[int],
                       modality: str, series: int = 1) -> None:
    """Write slice ``order[i]`` of ``volume`` (a 3D image in physical slice order) as DICOM file ``names[i]``."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    study = "1.2.826.0.1.3680043.8.498.1"
    series_uid = f"{study}.{series}"
    for i, (name, k) in enumerate(zip(names, order)):
        slice_ = volume[:, :, int(k):int(k) + 1]
        for tag, value in (("0008|0060", modality), ("0020|000d", study), ("0020|000e", series_uid),
                           ("0008|0018", f"{series_uid}.{i + 1}"), ("0020|0013", str(i + 1)),
                           ("0008|0008", "ORIGINAL\\PRIMARY\\AXIAL")):
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / name))
        writer.Execute(slice_)


def write_pngs(folder: Path, grey: np.ndarray, names: Sequence[str], order: Sequence[int],
               one_bit: bool = False) -> None:
    """Write ``grey[order[i]]`` (a z, y, x uint8 stack in physical slice order) as PNG ``names[i]``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, k in zip(names, order):
        plane = grey[int(k)]
        image = Image.fromarray(plane > 0) if one_bit else Image.fromarray(plane.astype(np.uint8), mode="L")
        image.save(folder / name)


def chaos_mr_names(n: int, series: int) -> tuple[list[str], list[str]]:
    """CHAOS MR names: DICOM ``IMG-0004-00001.dcm`` ..., ground truth ``IMG-0004-00001.png`` ..."""
    stems = [f"IMG-{series:04d}-{i + 1:05d}" for i in range(n)]
    return [s + ".dcm" for s in stems], [s + ".png" for s in stems]


def chaos_ct_names(n: int) -> tuple[list[str], list[str]]:
    """CHAOS CT names: DICOM ``i0000,0000b.dcm`` ..., ground truth ``liver_GT_000.png`` ..."""
    return [f"i{i:04d},0000b.dcm" for i in range(n)], [f"liver_GT_{i:03d}.png" for i in range(n)]


def file_order(n: int, reverse: bool) -> list[int]:
    """Physical slice index written to file i: positions run against file names when ``reverse``."""
    return list(range(n - 1, -1, -1)) if reverse else list(range(n))


def grey_from_labels(labels: np.ndarray, grey: Mapping[int, int]) -> np.ndarray:
    out = np.zeros(labels.shape, dtype=np.uint8)
    for value, g in grey.items():
        out[labels == value] = g
    return out


def write_chaos_mr_series(series_dir: Path, ground_dir: Path, image: sitk.Image, labels: np.ndarray | None,
                          series: int, reverse: bool = False, grey: Mapping[int, int] = CHAOS_MR_GREY) -> None:
    """One MR series: DICOM files under ``series_dir``, PNGs under ``ground_dir`` (skipped when labels is None)."""
    n = image.GetSize()[2]
    dicoms, pngs = chaos_mr_names(n, series)
    order = file_order(n, reverse)
    write_dicom_slices(series_dir, image, dicoms, order, "MR", series)
    if labels is not None:
        write_pngs(ground_dir, grey_from_labels(labels, grey), pngs, order)


def write_chaos_ct_case(root: Path, patient: int, image: sitk.Image, liver: np.ndarray, reverse: bool = False,
                        one_bit: bool = False) -> None:
    case = root / "Train_Sets" / "CT" / str(patient)
    n = image.GetSize()[2]
    dicoms, pngs = chaos_ct_names(n)
    order = file_order(n, reverse)
    write_dicom_slices(case / "DICOM_anon", image, dicoms, order, "CT")
    write_pngs(case / "Ground", np.where(liver > 0, 255, 0).astype(np.uint8), pngs, order, one_bit=one_bit)


def chaos_mr_case_dir(root: Path, patient: int) -> Path:
    return root / "Train_Sets" / "MR" / str(patient)


# ----------------------------------------------------------------------------------------------------------------
# checks

def sample_at(out: sitk.Image, src: sitk.Image) -> np.ndarray:
    """``src``'s voxel values at the voxel centres of ``out`` (in ``out``'s array order, z, y, x).

    Computed from the two headers alone, so it checks that a converter moved the voxels consistently with the
    geometry it wrote; it fails when the two grids do not coincide (no interpolation).
    """
    size = out.GetSize()
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in size], indexing="ij"), axis=-1).reshape(-1, 3)
    d_out = np.array(out.GetDirection()).reshape(3, 3)
    physical = np.array(out.GetOrigin()) + (grid * np.array(out.GetSpacing())) @ d_out.T
    d_src = np.array(src.GetDirection()).reshape(3, 3)
    continuous = ((physical - np.array(src.GetOrigin())) @ np.linalg.inv(d_src).T) / np.array(src.GetSpacing())
    index = np.rint(continuous).astype(int)
    assert np.abs(continuous - index).max() < 1e-3, "output voxel centres do not fall on source voxel centres"
    assert (index >= 0).all() and (index < np.array(src.GetSize())).all(), "output grid leaves the source volume"
    values = sitk.GetArrayViewFromImage(src)[index[:, 2], index[:, 1], index[:, 0]]
    return values.reshape(size).transpose(2, 1, 0)


def assert_same_grid_extent(out: sitk.Image, src: sitk.Image) -> None:
    """Same number of voxels and the same set of spacings (a permutation of the axes at most)."""
    assert sorted(out.GetSize()) == sorted(src.GetSize())
    assert np.allclose(sorted(out.GetSpacing()), sorted(src.GetSpacing()), atol=1e-5)


def assert_lps(image: sitk.Image, atol: float = 1e-5) -> None:
    """The direction is the identity (what DICOMOrient 'LPS' gives for an axis-aligned source)."""
    assert np.allclose(image.GetDirection(), IDENTITY, atol=atol), image.GetDirection()


def map_values(array: np.ndarray, mapping: Mapping[int, int]) -> np.ndarray:
    out = np.zeros(array.shape, dtype=np.uint8)
    for source, target in mapping.items():
        out[array == source] = target
    return out


def tree_digest(root: Path) -> dict[str, str]:
    """Path -> sha1 of every file under ``root`` plus its mtime, to prove a converter left its input alone."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            digest = hashlib.sha1(path.read_bytes()).hexdigest()
            out[str(path.relative_to(root))] = f"{digest}@{path.stat().st_mtime_ns}"
        elif path.is_dir():
            out[str(path.relative_to(root)) + "/"] = "dir"
    return out


def load_json(path: Path):
    with open(path) as f:
        return json.load(f)


def read(path: Path) -> sitk.Image:
    assert path.is_file(), f"{path} was not written"
    return sitk.ReadImage(str(path))


def case_files(dataset: Path, folder: str) -> list[str]:
    return sorted(p.name for p in (dataset / folder).iterdir()) if (dataset / folder).is_dir() else []


def check_splits(dataset: Path, train_cases: Iterable[str], groups: Mapping[str, str] | None = None) -> list:
    """splits_final.json: every training case validated exactly once, nothing else; groups never straddle folds."""
    splits = load_json(dataset / "splits_final.json")
    train_cases = sorted(train_cases)
    vals = sorted(c for fold in splits for c in fold["val"])
    assert vals == train_cases
    for fold in splits:
        assert sorted(fold["train"] + fold["val"]) == train_cases
        assert not set(fold["train"]) & set(fold["val"])
        if groups:
            assert not {groups[c] for c in fold["train"]} & {groups[c] for c in fold["val"]}
    return splits
