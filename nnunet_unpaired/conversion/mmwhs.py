"""MM-WHS 2017 (Multi-Modality Whole Heart Segmentation) -> two nnU-Net datasets, CT (701) and MR (702).

Source: Zhuang & Shen, "Multi-scale patch and multi-modality atlases for whole heart segmentation of MRI",
Medical Image Analysis 31, 2016; Zhuang et al., "Evaluation of algorithms for Multi-Modality Whole Heart
Segmentation: an open-access grand challenge", Medical Image Analysis 58, 2019.

Archive layout read here: ``ct_train/ct_train_1001_image.nii.gz`` + ``ct_train/ct_train_1001_label.nii.gz``
(ids 1001-1020), the same under ``mr_train/`` with prefix ``mr_train_``. The unlabelled challenge test volumes
(``ct_test/``, ``mr_test/``) are not converted.

Labels: 205 LV myocardium, 420 LA blood cavity, 500 LV blood cavity, 550 RA blood cavity, 600 RV blood cavity,
820 ascending aorta, 850 pulmonary artery. Protocol ``mmwhs-7`` maps them, in ascending source order, to 1..7;
protocol ``mmwhs-4`` keeps the four structures of the cross-modality protocol (Dou et al. 2018; SIFA, Chen et al.
2019): 1 AA (820), 2 LAC (420), 3 LVC (500), 4 MYO (205), everything else background. Quirk: the value 421 occurs
in at least one MR label and means 420.

The MR volumes come in different orientations: every image and label is reoriented through its header
(see :func:`~nnunet_unpaired.conversion.common.reorient`). The protocol's test cases (CT 1003, 1008, 1014, 1019;
MR 1007, 1009, 1018, 1019) go to imagesTs/labelsTs and never into training or cross-validation.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from nnunet_unpaired.conversion.common import (
    DEFAULT_GEOMETRY_TOLERANCE,
    PROTOCOLS,
    Case,
    DatasetSpec,
    DatasetWriter,
    find_partner,
    load_volume_pair,
    print_pair_command,
    print_summary,
    require_dir,
    resolve_output_root,
    select_ids,
    warn_stale_preprocessed,
)
from nnunet_unpaired.errors import UserError

SOURCE_LABELS = {205: "LV_myocardium", 420: "LA_blood_cavity", 500: "LV_blood_cavity", 550: "RA_blood_cavity",
                 600: "RV_blood_cavity", 820: "ascending_aorta", 850: "pulmonary_artery"}
QUIRKS = {421: 420}
PROTOCOL_TEST_IDS = {"ct": [1003, 1008, 1014, 1019], "mr": [1007, 1009, 1018, 1019]}
DEFAULT_IDS = {"ct": 701, "mr": 702}
LABEL_PROTOCOLS = ("mmwhs-7", "mmwhs-4")
_FILE = re.compile(r"^(ct|mr)_train_(\d+)_(image|label)\.nii(\.gz)?$")

REFERENCE = ("Zhuang X, Shen J. Multi-scale patch and multi-modality atlases for whole heart segmentation of MRI. "
             "Medical Image Analysis 31, 2016. Zhuang X et al. Evaluation of algorithms for Multi-Modality Whole "
             "Heart Segmentation: an open-access grand challenge. Medical Image Analysis 58, 2019.")
LICENCE = ("MM-WHS 2017 challenge data: research use after registering with the organisers; do not redistribute. "
           "Check the terms on https://zmiclab.github.io/zxh/0/mmwhs/ before sharing anything derived from it.")
RELEASE = "https://zmiclab.github.io/zxh/0/mmwhs/"


def find_cases(input_dir: Path, modality: str) -> dict[int, dict[str, Path]]:
    """case number -> {"image": path, "label": path} under ``<input>/<modality>_train/``."""
    folder = require_dir(input_dir / f"{modality}_train", f"MM-WHS {modality.upper()} training data, "
                                                          f"{modality}_train/{modality}_train_1001_image.nii.gz ...")
    cases: dict[int, dict[str, Path]] = {}
    for path in folder.iterdir():
        m = _FILE.match(path.name)
        if m and m.group(1) == modality:
            cases.setdefault(int(m.group(2)), {})[m.group(3)] = path
    for number, files in sorted(cases.items()):
        for kind in ("image", "label"):
            if kind not in files:
                raise UserError(f"{folder}: {modality}_train_{number}_{kind}.nii.gz is missing (its "
                                f"{'label' if kind == 'image' else 'image'} is there). Complete the archive or leave "
                                f"the case out with --ids.")
    return cases


def dataset_spec(modality: str, dataset_id: int, protocol: str) -> DatasetSpec:
    label_protocol = PROTOCOLS[protocol]
    upper = modality.upper()
    return DatasetSpec(
        dataset_id=dataset_id, name=f"MMWHS_{upper}", modality=upper,
        channel_names={"0": "CT" if upper == "CT" else "MR"}, protocol=label_protocol, converter="mmwhs",
        description=f"MM-WHS 2017 {upper} training volumes, {label_protocol.description}; reoriented to LPS. "
                    f"Converted by nnunet_unpaired convert mmwhs.",
        reference=REFERENCE, licence=LICENCE, release=RELEASE)


def convert_mmwhs(input_dir, output_root: str | None = None, modalities: Sequence[str] = ("ct", "mr"),
                  protocol: str = "mmwhs-7", ids: list[int] | None = None,
                  test_ids: dict[str, list[int]] | None = None, dataset_ids: dict[str, int] | None = None,
                  geometry_tolerance: float = DEFAULT_GEOMETRY_TOLERANCE, n_folds: int = 5) -> dict[str, Path]:
    """Convert MM-WHS CT and/or MR; returns modality -> written dataset folder."""
    input_dir = require_dir(Path(input_dir), "the unpacked MM-WHS archive")
    if protocol not in LABEL_PROTOCOLS:
        raise UserError(f"--protocol {protocol}: MM-WHS supports {', '.join(LABEL_PROTOCOLS)}")
    root = resolve_output_root(output_root, input_dir)
    test_ids = {**PROTOCOL_TEST_IDS, **(test_ids or {})}
    dataset_ids = {**DEFAULT_IDS, **(dataset_ids or {})}
    lut = PROTOCOLS[protocol].lookup(SOURCE_LABELS)
    plan = {}
    for m in modalities:  # check both modalities before writing either
        files = find_cases(input_dir, m)
        plan[m] = files, select_ids(files, ids, input_dir / f"{m}_train", f"{m}_train_*_image/label")
    written = {}
    for modality, (files, numbers) in plan.items():
        spec = dataset_spec(modality, dataset_ids[modality], protocol)
        with DatasetWriter(root, spec, n_folds) as writer:
            for case in _cases(files, numbers, modality, set(test_ids[modality]), lut, geometry_tolerance):
                writer.add(case)
            written[modality] = writer.finish()
        print_summary(spec, writer.summaries, written[modality])
        warn_stale_preprocessed(spec)
    ct_id = dataset_ids["ct"] if "ct" in written else find_partner(root, protocol, "MR")
    mr_id = dataset_ids["mr"] if "mr" in written else find_partner(root, protocol, "CT")
    print_pair_command(ct_id, mr_id, f"Convert the other MM-WHS modality with the same --protocol {protocol}.")
    return written


def _cases(files: dict[int, dict[str, Path]], numbers: Iterable[int], modality: str, test_ids: set, lut,
           tolerance: float) -> Iterable[Case]:
    for number in numbers:
        image, label = load_volume_pair(files[number]["image"], files[number]["label"], lut, "MM-WHS", tolerance,
                                        QUIRKS)
        yield Case(case_id=f"mmwhs_{modality}_{number}", images=[image], label=label, group=str(number),
                   test=number in test_ids, source=str(files[number]["image"]))
