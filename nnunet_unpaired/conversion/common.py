"""Shared pieces of the dataset converters: label protocols, reading and checking volumes, the atomic dataset writer.

Every converter (MM-WHS, CHAOS, BTCV, AMOS) turns a downloaded archive into nnU-Net raw datasets that
``nnunet_unpaired plan-pair`` and the trainers accept without hand editing:

- images and labels are reoriented through their headers (``SimpleITK.DICOMOrient``) to :data:`ORIENTATION`
  ("LPS": identity direction cosines in ITK's patient coordinates); arrays are never flipped by hand;
- labels are mapped to consecutive values of a named :class:`LabelProtocol`; a value the source dataset does not
  define is refused with the file and the value named;
- an image and its label must share the same voxel grid (within ``geometry_tolerance`` mm), otherwise the case is
  refused; the label then gets the image's header exactly;
- ``dataset.json`` carries the licence and reference of the source and the top-level key ``"nnunet_unpaired"``
  (``modality``, ``label_protocol``) that tells plan-pair which datasets form a pair;
- ``splits_final.json`` (cross-validation folds, grouped by patient) sits in the raw dataset folder: nnU-Net's
  experiment planner copies it to ``nnUNet_preprocessed/<dataset>/`` when that file does not exist there yet;
- the dataset is written into a hidden sibling folder and moved into place at the end, so an interrupted run leaves
  the previous result untouched and a rerun replaces it. The input is only ever read.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import final

import numpy as np
import SimpleITK as sitk

from nnunet_unpaired.errors import UserError

ORIENTATION = "LPS"
FILE_ENDING = ".nii.gz"
MARKER_KEY = "nnunet_unpaired"
DEFAULT_GEOMETRY_TOLERANCE = 1e-3  # mm (and unitless for direction cosines); NIfTI headers are float32
SPLIT_SEED = 12345  # the seed nnU-Net uses for its own 5-fold split


@dataclass(frozen=True)
class LabelProtocol:
    """A named label set: ``labels[i]`` is the name of label value ``i + 1`` (0 is always background).

    Two datasets form a pair for plan-pair only when they were converted with the same protocol: the ``labels``
    dicts of their dataset.json files are then identical.
    """

    name: str
    labels: tuple[str, ...]
    description: str

    def labels_json(self) -> dict[str, int]:
        out = {"background": 0}
        out.update({name: i + 1 for i, name in enumerate(self.labels)})
        return out

    def lookup(self, source_names: Mapping[int, str]) -> dict[int, int]:
        """Source value -> protocol value for a source encoding given as value -> structure name (0 stays 0)."""
        lut = {0: 0}
        for value, name in source_names.items():
            lut[value] = self.labels.index(name) + 1 if name in self.labels else 0
        return lut


ABDOMEN_4 = ("liver", "right_kidney", "left_kidney", "spleen")
BTCV_13 = ("spleen", "right_kidney", "left_kidney", "gallbladder", "esophagus", "liver", "stomach", "aorta",
           "inferior_vena_cava", "portal_and_splenic_vein", "pancreas", "right_adrenal_gland", "left_adrenal_gland")
AMOS_15 = ("spleen", "right_kidney", "left_kidney", "gallbladder", "esophagus", "liver", "stomach", "aorta",
           "inferior_vena_cava", "pancreas", "right_adrenal_gland", "left_adrenal_gland", "duodenum", "bladder",
           "prostate_uterus")
# MM-WHS 2017, all seven structures in ascending order of their source values (205, 420, 500, 550, 600, 820, 850)
MMWHS_7 = ("LV_myocardium", "LA_blood_cavity", "LV_blood_cavity", "RA_blood_cavity", "RV_blood_cavity",
           "ascending_aorta", "pulmonary_artery")
# the cross-modality protocol of Dou et al. 2018 / SIFA (Chen et al. 2019/2020): AA, LAC, LVC, MYO
MMWHS_4 = ("ascending_aorta", "LA_blood_cavity", "LV_blood_cavity", "LV_myocardium")

PROTOCOLS: dict[str, LabelProtocol] = {p.name: p for p in (
    LabelProtocol("mmwhs-7", MMWHS_7, "MM-WHS 2017, all 7 cardiac structures"),
    LabelProtocol("mmwhs-4", MMWHS_4, "MM-WHS cross-modality protocol (Dou et al. 2018, SIFA): AA, LAC, LVC, MYO"),
    LabelProtocol("abdomen-4", ABDOMEN_4, "abdominal 4-organ protocol (SIFA): liver, right kidney, left kidney, "
                                          "spleen; shared by CHAOS MR, BTCV and AMOS"),
    LabelProtocol("liver", ("liver",), "liver only (CHAOS CT task)"),
    LabelProtocol("btcv-13", BTCV_13, "BTCV / Synapse multi-organ, all 13 organs"),
    LabelProtocol("amos-15", AMOS_15, "AMOS 2022, all 15 organs"),
)}


@dataclass(frozen=True)
class DatasetSpec:
    """What one output dataset is: its id and name, modality, channels, label protocol and provenance."""

    dataset_id: int
    name: str
    modality: str  # "CT" or "MR"
    channel_names: dict[str, str]
    protocol: LabelProtocol
    converter: str  # the `nnunet_unpaired convert` sub-command, recorded so a rerun may replace the folder
    description: str
    reference: str
    licence: str
    release: str

    @property
    def folder_name(self) -> str:
        return f"Dataset{self.dataset_id:03d}_{self.name}"


@dataclass
class Case:
    """One converted case: channel images and label already reoriented and checked."""

    case_id: str
    images: list[sitk.Image]
    label: sitk.Image
    group: str  # the patient: cases of one group never straddle a train/val boundary
    test: bool = False
    source: str = ""


@dataclass
class CaseSummary:
    case_id: str
    test: bool
    size: tuple[int, ...]
    spacing: tuple[float, ...]
    labels: tuple[int, ...]


# ----------------------------------------------------------------------------------------------------------------
# reading and checking

def natural_key(name: str) -> tuple:
    """Sort key that orders embedded numbers numerically ("IMG-2" before "IMG-10")."""
    return tuple(int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name))


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise UserError(f"{path}: folder not found ({what}). Point --input at the unpacked archive that contains it.")
    return path


def read_image(path: Path) -> sitk.Image:
    """Read a volume with SimpleITK; unreadable files become a UserError naming the file."""
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else "unknown error"
        raise UserError(f"{path}: SimpleITK cannot read this file ({first}). Re-download it, or re-save it with "
                        f"a tool that writes a valid header (e.g. nibabel), then rerun.") from None


def geometry_mismatch(a: sitk.Image, b: sitk.Image, tolerance: float) -> str | None:
    """None when ``a`` and ``b`` share a voxel grid (within ``tolerance``), otherwise what differs."""
    if a.GetSize() != b.GetSize():
        return f"size {a.GetSize()} vs {b.GetSize()}"
    for what, va, vb in (("spacing", a.GetSpacing(), b.GetSpacing()), ("origin", a.GetOrigin(), b.GetOrigin()),
                         ("direction", a.GetDirection(), b.GetDirection())):
        if not np.allclose(va, vb, rtol=0, atol=tolerance):
            fmt = ", ".join
            return f"{what} ({fmt(f'{v:.6g}' for v in va)}) vs ({fmt(f'{v:.6g}' for v in vb)})"
    return None


def match_label_to_image(image: sitk.Image, label: sitk.Image, image_path: Path, label_path: Path,
                         tolerance: float) -> sitk.Image:
    """The label with the image's exact header; UserError when the two do not share a voxel grid."""
    problem = geometry_mismatch(image, label, tolerance)
    if problem:
        raise UserError(f"{label_path}: the label does not lie on the voxel grid of {image_path}: {problem}. "
                        f"Fix the header (the label must overlay the image voxel for voxel), or leave the case "
                        f"out with --ids; raise --geometry-tolerance only for float rounding differences.")
    label.CopyInformation(image)
    return label


def reorient(image: sitk.Image) -> sitk.Image:
    """Permute/flip the voxel axes so the header direction is the closest to :data:`ORIENTATION` (no resampling)."""
    return sitk.DICOMOrient(image, ORIENTATION)


def found_values(array: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an integer label array (fast path for small non-negative values)."""
    if array.size and np.issubdtype(array.dtype, np.integer) and array.min() >= 0 and array.max() < 1 << 16:
        return np.flatnonzero(np.bincount(array.ravel()))
    return np.unique(array)


def remap_labels(array: np.ndarray, lut: Mapping[int, int], path: Path, dataset: str,
                 aliases: Mapping[int, int] | None = None) -> np.ndarray:
    """Map source label values to protocol values (uint8); UserError naming file and value for unknown values.

    ``aliases`` maps known quirk values to the value they stand for (MM-WHS: 421 -> 420) before the lookup.
    """
    aliases = dict(aliases or {})
    values = found_values(array)
    if not np.issubdtype(array.dtype, np.integer):
        fractional = values[values != np.round(values)]
        if fractional.size:
            raise UserError(f"{path}: label values must be whole numbers, found {fractional[:5].tolist()}. Is this "
                            f"an image rather than a {dataset} label map?")
    values = values.astype(np.int64)
    unknown = [int(v) for v in values if int(v) not in lut and int(v) not in aliases]
    if unknown:
        known = ", ".join(str(k) for k in sorted(lut))
        raise UserError(f"{path}: label value(s) {', '.join(map(str, unknown))} are not {dataset} labels "
                        f"(known: {known}). Check that this is an original {dataset} label file.")
    for value in values:
        if int(value) in aliases:
            print(f"  note: {path}: label value {int(value)} read as {aliases[int(value)]} (known {dataset} quirk)")
    out = np.zeros(array.shape, dtype=np.uint8)
    for value in values:
        target = lut[aliases.get(int(value), int(value))]
        if target:
            out[array == value] = target
    return out


def label_image(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    img = sitk.GetImageFromArray(array.astype(np.uint8))
    img.CopyInformation(reference)
    return img


def load_volume_pair(image_path: Path, label_path: Path, lut: Mapping[int, int], dataset: str, tolerance: float,
                     aliases: Mapping[int, int] | None = None) -> tuple[sitk.Image, sitk.Image]:
    """Read an image + label volume pair, check their grids match, remap the labels, reorient both alike."""
    image = read_image(image_path)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise UserError(f"{image_path}: expected a 3D single-channel volume, found {image.GetDimension()}D with "
                        f"{image.GetNumberOfComponentsPerPixel()} component(s).")
    label = read_image(label_path)
    label = match_label_to_image(image, label, image_path, label_path, tolerance)
    mapped = label_image(remap_labels(sitk.GetArrayViewFromImage(label), lut, label_path, dataset, aliases), image)
    return reorient(image), reorient(mapped)


def parse_ids(values: Sequence[str] | None, option: str) -> list[int] | None:
    """``--ids 1 2 5`` (or ``none``) as sorted ints; None when the option was not given."""
    if values is None:
        return None
    if len(values) == 1 and values[0].lower() == "none":
        return []
    ids = []
    for v in values:
        for part in str(v).split(","):
            if not part:
                continue
            try:
                ids.append(int(part))
            except ValueError:
                raise UserError(f"{option}: '{part}' is not a case number (give numbers like 1001 or 'none')") from None
    return sorted(set(ids))


def select_ids(available: Mapping[int, object], requested: list[int] | None, where: Path, what: str) -> list[int]:
    """The case numbers to convert: all available ones, or the requested ones (each must exist)."""
    if requested is None:
        chosen = sorted(available)
    else:
        missing = [i for i in requested if i not in available]
        if missing:
            raise UserError(f"{where}: no {what} for case(s) {', '.join(map(str, missing))} "
                            f"(found: {', '.join(map(str, sorted(available))) or 'none'}). Fix --ids.")
        chosen = list(requested)
    if not chosen:
        raise UserError(f"{where}: no {what} found. Point --input at the unpacked archive.")
    return chosen


# ----------------------------------------------------------------------------------------------------------------
# splits

def grouped_folds(cases: Sequence[tuple[str, str]], n_folds: int = 5, seed: int = SPLIT_SEED) -> list[dict]:
    """Cross-validation folds ``[{"train": [...], "val": [...]}, ...]`` with every group (patient) in one fold.

    Groups are shuffled with a fixed seed and dealt round-robin, so the split is reproducible. With fewer groups
    than ``n_folds`` there is one fold per group; with a single group, one fold that validates on its training data.
    """
    groups: dict[str, list[str]] = {}
    for case_id, group in cases:
        groups.setdefault(group, []).append(case_id)
    names = sorted(groups, key=natural_key)
    if len(names) < 2:
        everything = sorted((c for c, _ in cases), key=natural_key)
        return [{"train": everything, "val": everything}]
    order = np.random.RandomState(seed).permutation(len(names))
    k = min(n_folds, len(names))
    fold_groups: list[list[str]] = [[] for _ in range(k)]
    for position, index in enumerate(order):
        fold_groups[position % k].append(names[index])
    folds = []
    for i in range(k):
        val = sorted((c for g in fold_groups[i] for c in groups[g]), key=natural_key)
        train = sorted((c for j in range(k) if j != i for g in fold_groups[j] for c in groups[g]), key=natural_key)
        folds.append({"train": train, "val": val})
    return folds


# ----------------------------------------------------------------------------------------------------------------
# output location and the atomic writer

def resolve_output_root(option: str | None, input_path: Path) -> Path:
    """``--output-root`` or ``$nnUNet_raw``; refuses when neither is set or when it lies inside the input."""
    value = option or os.environ.get("nnUNet_raw")
    if not value:
        raise UserError("no output folder: set nnUNet_raw (export nnUNet_raw=/path/to/nnUNet_raw) or pass "
                        "--output-root PATH.")
    root = Path(value).expanduser().resolve()
    source = input_path.expanduser().resolve()
    if root == source or source in root.parents:
        raise UserError(f"{root}: the output folder lies inside the input archive {source}; converters never write "
                        f"into their input. Choose another --output-root / nnUNet_raw.")
    return root


def read_marker(folder: Path) -> dict | None:
    """The ``nnunet_unpaired`` record of a dataset folder's dataset.json, or None."""
    try:
        with open(folder / "dataset.json") as f:
            record = json.load(f).get(MARKER_KEY)
    except (OSError, ValueError, AttributeError):
        return None
    return record if isinstance(record, dict) else None


def existing_datasets(root: Path, dataset_id: int) -> list[Path]:
    if not root.is_dir():
        return []
    prefix = f"Dataset{dataset_id:03d}_"
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(prefix))


def check_replaceable(root: Path, spec: DatasetSpec) -> list[Path]:
    """Folders with the same dataset id that this run will replace; UserError if one was not written by us."""
    found = existing_datasets(root, spec.dataset_id)
    for folder in found:
        marker = read_marker(folder)
        if not marker or marker.get("converter") != spec.converter:
            raise UserError(f"{folder}: dataset id {spec.dataset_id} is already taken by a dataset that "
                            f"`nnunet_unpaired convert {spec.converter}` did not write. Choose another --dataset-id "
                            f"or remove that folder yourself.")
    return found


@final
class DatasetWriter:
    """Writes one nnU-Net raw dataset into a hidden sibling folder, then moves it into place.

    Use as a context manager: on an exception nothing changes under the output root.
    """

    def __init__(self, root: Path, spec: DatasetSpec, n_folds: int = 5):
        self.root = root
        self.spec = spec
        self.n_folds = n_folds
        self.summaries: list[CaseSummary] = []
        self.groups: list[tuple[str, str]] = []
        self._replace = check_replaceable(root, spec)
        self.tmp: Path | None = None

    def __enter__(self) -> DatasetWriter:
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.spec.folder_name}.partial-", dir=self.root))
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            (self.tmp / sub).mkdir()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.tmp is not None and self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)

    @property
    def target(self) -> Path:
        return self.root / self.spec.folder_name

    def add(self, case: Case) -> None:
        if any(s.case_id == case.case_id for s in self.summaries):
            raise UserError(f"case {case.case_id} would be written twice (from {case.source}); check the archive "
                            f"for duplicate files.")
        if len(case.images) != len(self.spec.channel_names):
            raise ValueError(f"{case.case_id}: {len(case.images)} channels, expected {len(self.spec.channel_names)}")
        images_dir, labels_dir = ("imagesTs", "labelsTs") if case.test else ("imagesTr", "labelsTr")
        for channel, image in enumerate(case.images):
            sitk.WriteImage(image, str(self.tmp / images_dir / f"{case.case_id}_{channel:04d}{FILE_ENDING}"),
                            useCompression=True)
        sitk.WriteImage(case.label, str(self.tmp / labels_dir / f"{case.case_id}{FILE_ENDING}"), useCompression=True)
        labels = tuple(int(v) for v in found_values(sitk.GetArrayViewFromImage(case.label)) if v)
        self.summaries.append(CaseSummary(case.case_id, case.test, case.images[0].GetSize(),
                                          case.images[0].GetSpacing(), labels))
        if not case.test:
            self.groups.append((case.case_id, case.group))

    def dataset_json(self) -> dict:
        spec = self.spec
        tests = sorted((s.case_id for s in self.summaries if s.test), key=natural_key)
        return {
            "channel_names": dict(spec.channel_names),
            "labels": spec.protocol.labels_json(),
            "numTraining": len(self.groups),
            "file_ending": FILE_ENDING,
            "name": spec.name,
            "description": spec.description,
            "reference": spec.reference,
            "licence": spec.licence,
            "release": spec.release,
            "converted_by": f"nnunet_unpaired convert {spec.converter}",
            MARKER_KEY: {
                "modality": spec.modality,
                "label_protocol": spec.protocol.name,
                "converter": spec.converter,
                "orientation": ORIENTATION,
                "test_cases": tests,
            },
        }

    def finish(self) -> Path:
        """Write dataset.json and splits_final.json, then move the dataset into place (replacing an earlier run)."""
        if not self.groups:
            raise UserError(f"{self.spec.folder_name}: no training cases left (all selected cases are test cases). "
                            f"Select more cases with --ids or fewer with the test-id option.")
        _write_json(self.tmp / "dataset.json", self.dataset_json())
        _write_json(self.tmp / "splits_final.json", grouped_folds(self.groups, self.n_folds))
        for sub in ("imagesTs", "labelsTs"):
            if not any((self.tmp / sub).iterdir()):
                (self.tmp / sub).rmdir()
        old = []
        for i, folder in enumerate(self._replace):
            moved = self.root / f".{folder.name}.old-{os.getpid()}-{i}"
            folder.rename(moved)
            old.append(moved)
        self.tmp.rename(self.target)
        self.tmp = None
        for folder in old:
            shutil.rmtree(folder, ignore_errors=True)
        return self.target


def _write_json(path: Path, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


# ----------------------------------------------------------------------------------------------------------------
# reporting

def print_summary(spec: DatasetSpec, summaries: Sequence[CaseSummary], target: Path) -> None:
    """Cases, labels found per case, and the spacing range of one written dataset."""
    n_test = sum(s.test for s in summaries)
    print(f"\n{target}")
    print(f"  {spec.modality}, channels {spec.channel_names}, label protocol {spec.protocol.name}: "
          f"{len(summaries) - n_test} training + {n_test} test cases")
    width = max(len(s.case_id) for s in summaries)
    n_labels = len(spec.protocol.labels)
    for s in summaries:
        missing = [v for v in range(1, n_labels + 1) if v not in s.labels]
        note = f"  (no {', '.join(map(str, missing))})" if missing else ""
        print(f"  {s.case_id.ljust(width)}  {'test ' if s.test else 'train'}  {'x'.join(map(str, s.size))}  "
              f"spacing {'x'.join(f'{v:.3g}' for v in s.spacing)} mm  labels {list(s.labels)}{note}")
    spacings = np.array([s.spacing for s in summaries])
    ranges = ", ".join(f"{lo:.3g}-{hi:.3g}" for lo, hi in zip(spacings.min(0), spacings.max(0)))
    print(f"  spacing range (x, y, z) mm: {ranges}")


def warn_stale_preprocessed(spec: DatasetSpec) -> None:
    pre = os.environ.get("nnUNet_preprocessed")
    if pre and (Path(pre) / spec.folder_name).is_dir():
        print(f"  note: {Path(pre) / spec.folder_name} was built from an earlier conversion. Delete it before "
              f"planning again: nnU-Net keeps an existing splits_final.json there (and asserts that it matches).")


def find_partner(root: Path, protocol: str, modality: str) -> int | None:
    """Id of a dataset under ``root`` converted with ``protocol`` for the modality other than ``modality``."""
    if not root.is_dir():
        return None
    for folder in sorted(root.glob("Dataset[0-9][0-9][0-9]_*")):
        marker = read_marker(folder)
        if marker and marker.get("label_protocol") == protocol and marker.get("modality") != modality:
            return int(folder.name[7:10])
    return None


def print_pair_command(ct_id: int | None, mr_id: int | None, how_to_get_missing: str = "") -> None:
    """The exact plan-pair command for a CT + MR pair (CT first)."""
    if ct_id is not None and mr_id is not None:
        print(f"\nNext, plan and preprocess the pair:\n  nnunet_unpaired plan-pair -d {ct_id} {mr_id} -c 3d_fullres")
    elif how_to_get_missing:
        print(f"\nNo partner dataset with the same label protocol was found yet. {how_to_get_missing}")
