"""CHAOS (Combined CT-MR Healthy Abdominal Organ Segmentation) -> nnU-Net datasets: MR (703) and CT liver (704).

Source: Kavur AE et al., "CHAOS Challenge - combined (CT-MR) healthy abdominal organ segmentation", Medical Image
Analysis 69, 2021 (data: https://doi.org/10.5281/zenodo.3431873).

Archive layout read here (``--input`` is the unpacked folder holding ``Train_Sets/``, or ``Train_Sets`` itself)::

    Train_Sets/MR/<id>/T2SPIR/DICOM_anon/*.dcm           Train_Sets/MR/<id>/T2SPIR/Ground/*.png
    Train_Sets/MR/<id>/T1DUAL/DICOM_anon/InPhase/*.dcm   Train_Sets/MR/<id>/T1DUAL/DICOM_anon/OutPhase/*.dcm
    Train_Sets/MR/<id>/T1DUAL/Ground/*.png               (one Ground for both phases)
    Train_Sets/CT/<id>/DICOM_anon/i0000,0000b.dcm ...    Train_Sets/CT/<id>/Ground/liver_GT_000.png ...

Slice order: the challenge's evaluation pairs PNG i with DICOM file i, both in FILE NAME order, and so does this
converter. The volume is stacked in file name order and its geometry is taken from the DICOM headers of those
files (origin = position of the first file, slice axis = towards the position of the last file), so a series whose
positions run opposite to its file names is still placed correctly; the label is stacked in the same order.
Everything is then reoriented through the header like every other converter.

MR ground truth is decoded by intensity range (55-70 liver, 110-135 right kidney, 175-200 left kidney, 240-255
spleen); CT ground truth is liver only (0 and 255, or 0 and 1 in 1-bit PNGs). The T1-DUAL in-phase and
out-of-phase series become two channels of one case (default) or two cases of the same patient
(``--t1-layout cases``; cross-validation folds then keep a patient's cases together). The SIFA test split
(MR patients 1, 13, 32, 38) goes to imagesTs/labelsTs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_unpaired.conversion.common import (
    DEFAULT_GEOMETRY_TOLERANCE,
    PROTOCOLS,
    Case,
    DatasetSpec,
    DatasetWriter,
    find_partner,
    geometry_mismatch,
    label_image,
    natural_key,
    print_pair_command,
    print_summary,
    read_image,
    reorient,
    require_dir,
    resolve_output_root,
    select_ids,
    warn_stale_preprocessed,
)
from nnunet_unpaired.errors import UserError

# MR ground truth: (lowest, highest) grey value -> structure
MR_RANGES = {(55, 70): "liver", (110, 135): "right_kidney", (175, 200): "left_kidney", (240, 255): "spleen"}
PROTOCOL_TEST_IDS = {"mr": [1, 13, 32, 38], "ct": []}
DEFAULT_IDS = {"mr": 703, "ct": 704}
MR_PROTOCOLS = ("abdomen-4", "liver")
SEQUENCES = ("T2SPIR", "T1DUAL", "all")
T1_LAYOUTS = ("channels", "cases")

REFERENCE = ("Kavur AE, Gezer NS, Baris M, et al. CHAOS Challenge - combined (CT-MR) healthy abdominal organ "
             "segmentation. Medical Image Analysis 69, 2021, 101950.")
LICENCE = ("CHAOS data as published on Zenodo (doi:10.5281/zenodo.3431873), released under CC BY-SA 4.0 according "
           "to that record; check the record before redistributing.")
RELEASE = "https://chaos.grand-challenge.org/ , https://doi.org/10.5281/zenodo.3431873"


# ----------------------------------------------------------------------------------------------------------------
# reading DICOM stacks and PNG ground truth

def list_files(folder: Path, suffix: str) -> list[Path]:
    """The ``suffix`` files of a folder in natural file name order (the challenge's slice order)."""
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == suffix]
    if not files:
        raise UserError(f"{folder}: no *{suffix} files. Point --input at the unpacked CHAOS archive.")
    return sorted(files, key=lambda p: natural_key(p.name))


def read_dicom_stack(folder: Path, tolerance: float = DEFAULT_GEOMETRY_TOLERANCE) -> tuple[sitk.Image, list[Path]]:
    """A 3D volume from one slice per DICOM file, stacked in file name order, geometry from the headers."""
    files = list_files(folder, ".dcm")
    slices = [read_image(f) for f in files]
    first = slices[0]
    for path, img in zip(files, slices):
        problem = _slice_mismatch(first, img, tolerance)
        if problem:
            raise UserError(f"{path}: this slice does not belong to the series of {files[0]} ({problem}). The "
                            f"folder must hold exactly one DICOM series.")
    direction = np.array(first.GetDirection()).reshape(3, 3)
    row, col = direction[:, 0], direction[:, 1]
    normal = np.cross(row, col)
    positions = np.array([img.GetOrigin() for img in slices])
    slice_spacing, sign = _slice_axis(positions, normal, first.GetSpacing()[2], files)
    geometry = np.stack([row, col, sign * normal], axis=1)
    arrays = [sitk.GetArrayFromImage(img).reshape(img.GetSize()[1], img.GetSize()[0]) for img in slices]
    volume = np.stack(arrays)
    if volume.dtype == np.float64:
        volume = volume.astype(np.float32)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((first.GetSpacing()[0], first.GetSpacing()[1], slice_spacing))
    image.SetOrigin(first.GetOrigin())
    image.SetDirection(tuple(geometry.flatten()))
    return image, files


def _slice_mismatch(a: sitk.Image, b: sitk.Image, tolerance: float) -> str | None:
    if a.GetSize()[:2] != b.GetSize()[:2] or (b.GetDimension() == 3 and b.GetSize()[2] != 1):
        return f"size {b.GetSize()} vs {a.GetSize()}"
    if not np.allclose(a.GetSpacing()[:2], b.GetSpacing()[:2], rtol=0, atol=tolerance):
        return f"pixel spacing {b.GetSpacing()[:2]} vs {a.GetSpacing()[:2]}"
    if not np.allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=tolerance):
        return "image orientation differs"
    return None


def _slice_axis(positions: np.ndarray, normal: np.ndarray, thickness: float, files: list[Path]) -> tuple[float, float]:
    """Slice spacing and the sign (+1/-1 along the row x column normal) of the file-order slice axis."""
    folder = files[0].parent
    if len(positions) == 1:
        return float(thickness), 1.0
    step = (positions[-1] - positions[0]) / (len(positions) - 1)
    spacing = float(np.linalg.norm(step))
    if spacing == 0:
        raise UserError(f"{folder}: all slices have the same position (ImagePositionPatient); cannot build a volume.")
    along = float(np.dot(step / spacing, normal))
    if abs(along) < 0.999:
        raise UserError(f"{folder}: the slice positions do not advance along the slice normal (tilted stack); this "
                        f"converter cannot represent the series without resampling.")
    heights = np.diff(positions @ normal) * np.sign(along)
    if np.any(heights <= 0):
        i = int(np.argmax(heights <= 0))
        raise UserError(f"{folder}: slice positions do not advance monotonically in file name order ({files[i].name} "
                        f"-> {files[i + 1].name}); the file names must order the slices of one stack.")
    gaps = np.linalg.norm(np.diff(positions, axis=0), axis=1)
    if np.max(np.abs(gaps - spacing)) > 0.01 * spacing + 1e-3:
        print(f"  warning: {folder}: slice gaps range {gaps.min():.4g}-{gaps.max():.4g} mm, stored as a uniform "
              f"{spacing:.4g} mm")
    return spacing, float(np.sign(along))


def read_png(path: Path) -> np.ndarray:
    """Grey values of a ground-truth PNG (1-bit PNGs read as 0/1)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode == "1":
                return np.array(im, dtype=np.uint8)
            if im.mode in ("P", "RGB", "RGBA", "LA"):
                im = im.convert("L")
            return np.array(im)
    except OSError as e:
        raise UserError(f"{path}: cannot read this PNG ({e}). Re-download the archive.") from None


def decode_stack(files: Sequence[Path], decode, shape: tuple[int, int]) -> np.ndarray:
    """Stack decoded PNGs (file order); each must have the in-plane ``shape`` (rows, columns) of its DICOM."""
    out = []
    for path in files:
        grey = read_png(path)
        if grey.shape != shape:
            raise UserError(f"{path}: ground truth is {grey.shape[0]} x {grey.shape[1]} pixels but its DICOM slice "
                            f"is {shape[0]} x {shape[1]}.")
        out.append(decode(grey, path))
    return np.stack(out)


def mr_decoder(protocol: str):
    """PNG grey values -> protocol labels by CHAOS's MR intensity ranges; unknown values are refused."""
    lookup = PROTOCOLS[protocol].lookup({i + 1: name for i, name in enumerate(MR_RANGES.values())})
    lut = np.full(256, -1, dtype=np.int16)
    lut[0] = 0
    for i, (lo, hi) in enumerate(MR_RANGES):
        lut[lo:hi + 1] = lookup[i + 1]
    return _lut_decoder(lut, "CHAOS MR ground truth (0 background, 55-70 liver, 110-135 right kidney, "
                             "175-200 left kidney, 240-255 spleen)")


def ct_decoder():
    """CT ground truth: 0 background, 255 (or 1 in 1-bit PNGs) liver."""
    lut = np.full(256, -1, dtype=np.int16)
    lut[0], lut[1], lut[255] = 0, 1, 1
    return _lut_decoder(lut, "CHAOS CT ground truth (0 background, 255 or 1 liver)")


def _lut_decoder(lut: np.ndarray, what: str):
    def decode(grey: np.ndarray, path: Path) -> np.ndarray:
        values = np.unique(grey)
        unknown = [int(v) for v in values if v < 0 or v > 255 or lut[int(v)] < 0]
        if unknown:
            raise UserError(f"{path}: grey value(s) {', '.join(map(str, unknown[:10]))} are not {what}. Check the "
                            f"file is an original CHAOS Ground PNG.")
        return lut[grey.astype(np.int64)].astype(np.uint8)
    return decode


def load_series(dicom_dir: Path, ground_dir: Path, decode, tolerance: float) -> tuple[sitk.Image, sitk.Image]:
    """Image and label of one series, both in file name order, both reoriented through the DICOM geometry."""
    image, dicoms = read_dicom_stack(dicom_dir, tolerance)
    pngs = list_files(ground_dir, ".png")
    if len(pngs) != len(dicoms):
        raise UserError(f"{ground_dir}: {len(pngs)} ground-truth PNGs but {len(dicoms)} DICOM slices in {dicom_dir}; "
                        f"slice i of each (file name order) must belong together. Re-extract the archive.")
    size = image.GetSize()
    label = label_image(decode_stack(pngs, decode, (size[1], size[0])), image)
    return reorient(image), reorient(label)


# ----------------------------------------------------------------------------------------------------------------
# the archive

def find_train_sets(input_dir: Path) -> Path:
    for candidate in (input_dir / "Train_Sets", input_dir):
        if (candidate / "MR").is_dir() or (candidate / "CT").is_dir():
            return candidate
    raise UserError(f"{input_dir}: folder not found: Train_Sets/MR or Train_Sets/CT. Point --input at the unpacked "
                    f"CHAOS archive (the folder that holds Train_Sets/).")


def patient_folders(train_sets: Path, modality: str) -> dict[int, Path]:
    folder = require_dir(train_sets / modality.upper(), f"CHAOS {modality.upper()} training data")
    return {int(p.name): p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()}


@dataclass(frozen=True)
class MRLayout:
    sequence: str  # T2SPIR, T1DUAL or all
    t1_layout: str  # channels or cases

    def channel_names(self) -> dict[str, str]:
        if self.sequence == "T2SPIR":
            return {"0": "T2SPIR"}
        if self.sequence == "T1DUAL" and self.t1_layout == "channels":
            return {"0": "T1_in", "1": "T1_out"}
        return {"0": "T1DUAL" if self.sequence == "T1DUAL" else "MR"}


def mr_cases(patient: int, folder: Path, layout: MRLayout, decode, test: bool, tolerance: float) -> Iterable[Case]:
    group = f"{patient:03d}"
    prefix = f"chaos_{patient:03d}"
    if layout.sequence in ("T2SPIR", "all"):
        t2 = folder / "T2SPIR"
        image, label = load_series(require_dir(t2 / "DICOM_anon", "T2-SPIR DICOM series"),
                                   require_dir(t2 / "Ground", "T2-SPIR ground truth"), decode, tolerance)
        yield Case(f"{prefix}_T2SPIR", [image], label, group, test, str(t2))
    if layout.sequence in ("T1DUAL", "all"):
        t1 = folder / "T1DUAL"
        ground = require_dir(t1 / "Ground", "T1-DUAL ground truth (shared by both phases)")
        phases = [load_series(require_dir(t1 / "DICOM_anon" / name, f"T1-DUAL {name} DICOM series"), ground, decode,
                              tolerance) for name in ("InPhase", "OutPhase")]
        (in_image, label), (out_image, _) = phases
        if layout.t1_layout == "channels":
            problem = geometry_mismatch(in_image, out_image, tolerance)
            if problem:
                raise UserError(f"{t1 / 'DICOM_anon'}: InPhase and OutPhase series differ ({problem}), so they cannot "
                                f"be two channels of one case. Use --t1-layout cases.")
            out_image.CopyInformation(in_image)
            yield Case(f"{prefix}_T1DUAL", [in_image, out_image], label, group, test, str(t1))
        else:
            yield Case(f"{prefix}_T1in", [in_image], label, group, test, str(t1 / "DICOM_anon" / "InPhase"))
            yield Case(f"{prefix}_T1out", [out_image], phases[1][1], group, test, str(t1 / "DICOM_anon" / "OutPhase"))


def ct_case(patient: int, folder: Path, test: bool, tolerance: float) -> Case:
    image, label = load_series(require_dir(folder / "DICOM_anon", "CT DICOM series"),
                               require_dir(folder / "Ground", "CT liver ground truth"), ct_decoder(), tolerance)
    return Case(f"chaos_{patient:03d}_CT", [image], label, f"{patient:03d}", test, str(folder))


def mr_spec(dataset_id: int, protocol: str, layout: MRLayout) -> DatasetSpec:
    label_protocol = PROTOCOLS[protocol]
    what = {"T2SPIR": "T2-SPIR", "T1DUAL": f"T1-DUAL in/out phase as {layout.t1_layout}",
            "all": "T2-SPIR and T1-DUAL in/out phase as separate cases"}[layout.sequence]
    return DatasetSpec(dataset_id, "CHAOS_MR", "MR", layout.channel_names(), label_protocol, "chaos",
                       f"CHAOS MR {what}, {label_protocol.description}; reoriented to LPS. Converted by "
                       f"nnunet_unpaired convert chaos.", REFERENCE, LICENCE, RELEASE)


def ct_spec(dataset_id: int) -> DatasetSpec:
    return DatasetSpec(dataset_id, "CHAOS_CT", "CT", {"0": "CT"}, PROTOCOLS["liver"], "chaos",
                       "CHAOS CT (liver only); reoriented to LPS. Converted by nnunet_unpaired convert chaos.",
                       REFERENCE, LICENCE, RELEASE)


def convert_chaos(input_dir, output_root: str | None = None, modalities: Sequence[str] = ("mr",),
                  protocol: str = "abdomen-4", sequence: str = "T2SPIR", t1_layout: str = "channels",
                  ids: list[int] | None = None, test_ids: dict[str, list[int]] | None = None,
                  dataset_ids: dict[str, int] | None = None,
                  geometry_tolerance: float = DEFAULT_GEOMETRY_TOLERANCE, n_folds: int = 5) -> dict[str, Path]:
    """Convert CHAOS MR and/or CT; returns modality -> written dataset folder."""
    input_dir = require_dir(Path(input_dir), "the unpacked CHAOS archive")
    if protocol not in MR_PROTOCOLS:
        raise UserError(f"--protocol {protocol}: CHAOS MR supports {', '.join(MR_PROTOCOLS)} (CT is always liver)")
    if sequence not in SEQUENCES or t1_layout not in T1_LAYOUTS:
        raise UserError(f"--sequence must be one of {SEQUENCES} and --t1-layout one of {T1_LAYOUTS}")
    if sequence == "all" and t1_layout == "channels":
        raise UserError("--sequence all needs --t1-layout cases: T2-SPIR has one channel and T1-DUAL as channels "
                        "has two, and every case of an nnU-Net dataset must have the same channels.")
    root = resolve_output_root(output_root, input_dir)
    train_sets = find_train_sets(input_dir)
    test_ids = {**PROTOCOL_TEST_IDS, **(test_ids or {})}
    dataset_ids = {**DEFAULT_IDS, **(dataset_ids or {})}
    layout = MRLayout(sequence, t1_layout)
    plan = {}
    for m in modalities:
        folders = patient_folders(train_sets, m)
        plan[m] = folders, select_ids(folders, ids, train_sets / m.upper(), "patient folders")
    written = {}
    for modality, (folders, patients) in plan.items():
        spec = mr_spec(dataset_ids["mr"], protocol, layout) if modality == "mr" else ct_spec(dataset_ids["ct"])
        decode = mr_decoder(protocol)
        with DatasetWriter(root, spec, n_folds) as writer:
            for patient in patients:
                test = patient in set(test_ids[modality])
                cases = (mr_cases(patient, folders[patient], layout, decode, test, geometry_tolerance)
                         if modality == "mr" else [ct_case(patient, folders[patient], test, geometry_tolerance)])
                for case in cases:
                    writer.add(case)
            written[modality] = writer.finish()
        print_summary(spec, writer.summaries, written[modality])
        warn_stale_preprocessed(spec)
    _print_next_steps(root, written, dataset_ids, protocol, layout)
    return written


def _print_next_steps(root: Path, written: dict[str, Path], dataset_ids: dict[str, int], protocol: str,
                      layout: MRLayout) -> None:
    if "mr" in written and len(layout.channel_names()) != 1:
        print("\nnote: T1-DUAL as two channels has no one-channel CT partner; plan-pair needs the same number of "
              "channels on both sides (use --t1-layout cases to pair with a CT dataset).")
        return
    if "mr" in written:
        mr_id = dataset_ids["mr"]
        ct_id = dataset_ids["ct"] if "ct" in written and protocol == "liver" else find_partner(root, protocol, "MR")
        hint = ("Convert BTCV (nnunet_unpaired convert btcv --protocol abdomen-4) or AMOS CT (nnunet_unpaired convert "
                "amos --modality ct --protocol abdomen-4) for the CT side." if protocol == "abdomen-4" else
                "Convert CHAOS CT (nnunet_unpaired convert chaos --modality ct) for the CT side.")
    else:
        ct_id, mr_id = dataset_ids["ct"], find_partner(root, "liver", "CT")
        hint = "Convert CHAOS MR with --protocol liver for the MR side."
    print_pair_command(ct_id, mr_id, hint)
