"""AMOS 2022 (abdominal multi-organ CT + MR) -> two nnU-Net datasets, CT (706) and MR (707), one label set.

Source: Ji Y et al., "AMOS: A Large-Scale Abdominal Multi-Organ Benchmark for Versatile Medical Image
Segmentation", NeurIPS 2022 Datasets and Benchmarks (data: https://zenodo.org/record/7262581).

Archive layout read here (``--input`` is the unpacked ``amos22`` folder): ``imagesTr/amos_0001.nii.gz`` +
``labelsTr/amos_0001.nii.gz``, the same for ``imagesVa``/``labelsVa`` (labelled, used for training unless
``--va-as-test``); ``imagesTs`` has no labels and is not converted. Case ids up to 500 are CT, above 500 MR.

Labels: 1 spleen, 2 right kidney, 3 left kidney, 4 gallbladder, 5 esophagus, 6 liver, 7 stomach, 8 aorta,
9 postcava (inferior vena cava), 10 pancreas, 11 right adrenal gland, 12 left adrenal gland, 13 duodenum,
14 bladder, 15 prostate/uterus. Protocol ``amos-15`` keeps all; ``abdomen-4`` keeps 1 liver (6), 2 right kidney (2),
3 left kidney (3), 4 spleen (1). The CT and MR datasets always share their protocol, so they form a pair.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from nnunet_unpaired.conversion.common import (
    AMOS_15,
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

SOURCE_LABELS = {i + 1: name for i, name in enumerate(AMOS_15)}
DEFAULT_IDS = {"ct": 706, "mr": 707}
LABEL_PROTOCOLS = ("amos-15", "abdomen-4")
CT_MAX_ID = 500
_FILE = re.compile(r"^amos_(\d+)\.nii(\.gz)?$")

REFERENCE = ("Ji Y, Bai H, Ge C, et al. AMOS: A Large-Scale Abdominal Multi-Organ Benchmark for Versatile Medical "
             "Image Segmentation. NeurIPS 2022 Datasets and Benchmarks Track.")
LICENCE = ("AMOS 2022 data: CC BY-NC-SA 4.0 as listed for the NeurIPS 2022 datasets track (non-commercial, "
           "share-alike); check https://zenodo.org/record/7262581 and https://amos22.grand-challenge.org before "
           "redistributing.")
RELEASE = "https://zenodo.org/record/7262581"


def find_root(input_dir: Path) -> Path:
    for candidate in (input_dir, input_dir / "amos22"):
        if (candidate / "imagesTr").is_dir() and (candidate / "labelsTr").is_dir():
            return candidate
    raise UserError(f"{input_dir}: folder not found: imagesTr and labelsTr. Point --input at the unpacked AMOS "
                    f"archive (the amos22 folder).")


def find_cases(root: Path) -> dict[int, dict[str, object]]:
    """case number -> {"image", "label", "split"} over imagesTr/labelsTr and imagesVa/labelsVa."""
    cases: dict[int, dict[str, object]] = {}
    for split in ("Tr", "Va"):
        images_dir, labels_dir = root / f"images{split}", root / f"labels{split}"
        if split == "Va" and not images_dir.is_dir():
            continue
        images = {int(m.group(1)): p for p in images_dir.iterdir() if (m := _FILE.match(p.name))}
        labels = ({int(m.group(1)): p for p in labels_dir.iterdir() if (m := _FILE.match(p.name))}
                  if labels_dir.is_dir() else {})
        for number in sorted(images):
            if number not in labels:
                raise UserError(f"{labels_dir / images[number].name}: label file missing for {images[number]}. "
                                f"Complete the archive or leave the case out with --ids.")
            cases[number] = {"image": images[number], "label": labels[number], "split": split}
    return cases


def modality_of(number: int) -> str:
    return "ct" if number <= CT_MAX_ID else "mr"


def dataset_spec(modality: str, dataset_id: int, protocol: str) -> DatasetSpec:
    label_protocol = PROTOCOLS[protocol]
    upper = modality.upper()
    return DatasetSpec(dataset_id, f"AMOS_{upper}", upper, {"0": "CT" if upper == "CT" else "MR"}, label_protocol,
                       "amos", f"AMOS 2022 {upper} cases (imagesTr + imagesVa), {label_protocol.description}; "
                               f"reoriented to LPS. Converted by nnunet_unpaired convert amos.",
                       REFERENCE, LICENCE, RELEASE)


def convert_amos(input_dir, output_root: str | None = None, modalities: Sequence[str] = ("ct", "mr"),
                 protocol: str = "amos-15", ids: list[int] | None = None, test_ids: list[int] | None = None,
                 va_as_test: bool = False, dataset_ids: dict[str, int] | None = None,
                 geometry_tolerance: float = DEFAULT_GEOMETRY_TOLERANCE, n_folds: int = 5) -> dict[str, Path]:
    """Convert AMOS CT and/or MR cases; returns modality -> written dataset folder."""
    input_dir = require_dir(Path(input_dir), "the unpacked AMOS archive")
    if protocol not in LABEL_PROTOCOLS:
        raise UserError(f"--protocol {protocol}: AMOS supports {', '.join(LABEL_PROTOCOLS)}")
    output = resolve_output_root(output_root, input_dir)
    root = find_root(input_dir)
    cases = find_cases(root)
    dataset_ids = {**DEFAULT_IDS, **(dataset_ids or {})}
    tests = set(test_ids or [])
    lut = PROTOCOLS[protocol].lookup(SOURCE_LABELS)
    plan = {}
    for m in modalities:
        available = {n: c for n, c in cases.items() if modality_of(n) == m}
        requested = None if ids is None else [n for n in ids if modality_of(n) == m]
        if requested == [] and ids:
            raise UserError(f"--ids {' '.join(map(str, ids))}: none is a {m.upper()} case (CT ids are <= {CT_MAX_ID}, "
                            f"MR ids above). Fix --ids or --modality.")
        plan[m] = select_ids(available, requested, root, f"{m.upper()} cases (amos_XXXX.nii.gz)")
    written = {}
    for modality, numbers in plan.items():
        spec = dataset_spec(modality, dataset_ids[modality], protocol)
        with DatasetWriter(output, spec, n_folds) as writer:
            for number in numbers:
                files = cases[number]
                image, label = load_volume_pair(files["image"], files["label"], lut, "AMOS", geometry_tolerance)
                test = number in tests or (va_as_test and files["split"] == "Va")
                writer.add(Case(f"amos_{number:04d}", [image], label, f"{number:04d}", test, str(files["image"])))
            written[modality] = writer.finish()
        print_summary(spec, writer.summaries, written[modality])
        warn_stale_preprocessed(spec)
    ct_id = dataset_ids["ct"] if "ct" in written else find_partner(output, protocol, "MR")
    mr_id = dataset_ids["mr"] if "mr" in written else find_partner(output, protocol, "CT")
    print_pair_command(ct_id, mr_id, f"Convert the other AMOS modality with the same --protocol {protocol}.")
    return written
