"""BTCV / Synapse multi-organ abdominal CT ("Multi-Atlas Labeling Beyond the Cranial Vault") -> nnU-Net dataset 705.

Source: Landman B, Xu Z, Iglesias JE, Styner M, Langerak TR, Klein A. MICCAI 2015 Multi-Atlas Labeling Beyond the
Cranial Vault - Workshop and Challenge (Synapse syn3193805).

Archive layout read here: ``RawData/Training/img/img0001.nii.gz`` + ``RawData/Training/label/label0001.nii.gz``
(30 labelled cases, 0001-0010 and 0021-0040); ``--input`` is the folder that holds ``RawData/`` (or ``RawData`` or
``RawData/Training`` itself). The unlabelled ``RawData/Testing`` images are not converted.

Labels: 1 spleen, 2 right kidney, 3 left kidney, 4 gallbladder, 5 esophagus, 6 liver, 7 stomach, 8 aorta,
9 inferior vena cava, 10 portal and splenic veins, 11 pancreas, 12 right adrenal gland, 13 left adrenal gland.
Protocol ``btcv-13`` keeps all 13; protocol ``abdomen-4`` (SIFA's CT side of CHAOS MR <-> BTCV CT) keeps
1 liver (6), 2 right kidney (2), 3 left kidney (3), 4 spleen (1), which is exactly the label set of the CHAOS MR
dataset, so the two form a pair for plan-pair. With ``abdomen-4`` the SIFA test cases (1, 9, 30, 32, 33, 39) go to
imagesTs/labelsTs.
"""

from __future__ import annotations

import re
from pathlib import Path

from nnunet_unpaired.conversion.common import (
    BTCV_13,
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

SOURCE_LABELS = {i + 1: name for i, name in enumerate(BTCV_13)}
PROTOCOL_TEST_IDS = {"abdomen-4": [1, 9, 30, 32, 33, 39], "btcv-13": []}
DEFAULT_ID = 705
LABEL_PROTOCOLS = ("btcv-13", "abdomen-4")
_IMAGE = re.compile(r"^img(\d+)\.nii(\.gz)?$")
_LABEL = re.compile(r"^label(\d+)\.nii(\.gz)?$")

REFERENCE = ("Landman B, Xu Z, Iglesias JE, Styner M, Langerak TR, Klein A. MICCAI Multi-Atlas Labeling Beyond the "
             "Cranial Vault - Workshop and Challenge, 2015. doi:10.7303/syn3193805")
LICENCE = ("Synapse data use terms of 'Multi-Atlas Labeling Beyond the Cranial Vault' (registration and acceptance "
           "of the terms required; https://www.synapse.org/#!Synapse:syn3193805); do not redistribute.")
RELEASE = "https://www.synapse.org/#!Synapse:syn3193805"


def find_training(input_dir: Path) -> Path:
    for candidate in (input_dir / "RawData" / "Training", input_dir / "Training", input_dir):
        if (candidate / "img").is_dir() and (candidate / "label").is_dir():
            return candidate
    raise UserError(f"{input_dir}: folder not found: RawData/Training/img and RawData/Training/label. Point --input "
                    f"at the unpacked BTCV archive (the folder that holds RawData/).")


def find_cases(training: Path) -> dict[int, dict[str, Path]]:
    images = {int(m.group(1)): p for p in (training / "img").iterdir() if (m := _IMAGE.match(p.name))}
    labels = {int(m.group(1)): p for p in (training / "label").iterdir() if (m := _LABEL.match(p.name))}
    for number in sorted(set(images) ^ set(labels)):
        have, lack = ("img", "label") if number in images else ("label", "img")
        raise UserError(f"{training / lack}: {lack}{number:04d}.nii.gz is missing ({training / have} has case "
                        f"{number:04d}). Complete the archive or leave the case out with --ids.")
    return {n: {"image": images[n], "label": labels[n]} for n in images}


def dataset_spec(dataset_id: int, protocol: str) -> DatasetSpec:
    label_protocol = PROTOCOLS[protocol]
    return DatasetSpec(dataset_id, "BTCV", "CT", {"0": "CT"}, label_protocol, "btcv",
                       f"BTCV abdominal CT training volumes, {label_protocol.description}; reoriented to LPS. "
                       f"Converted by nnunet_unpaired convert btcv.", REFERENCE, LICENCE, RELEASE)


def convert_btcv(input_dir, output_root: str | None = None, protocol: str = "btcv-13",
                 ids: list[int] | None = None, test_ids: list[int] | None = None,
                 dataset_id: int = DEFAULT_ID, geometry_tolerance: float = DEFAULT_GEOMETRY_TOLERANCE,
                 n_folds: int = 5) -> Path:
    """Convert the BTCV training cases; returns the written dataset folder."""
    input_dir = require_dir(Path(input_dir), "the unpacked BTCV archive")
    if protocol not in LABEL_PROTOCOLS:
        raise UserError(f"--protocol {protocol}: BTCV supports {', '.join(LABEL_PROTOCOLS)}")
    root = resolve_output_root(output_root, input_dir)
    training = find_training(input_dir)
    files = find_cases(training)
    numbers = select_ids(files, ids, training, "img####.nii.gz / label####.nii.gz pairs")
    tests = set(PROTOCOL_TEST_IDS[protocol] if test_ids is None else test_ids)
    lut = PROTOCOLS[protocol].lookup(SOURCE_LABELS)
    spec = dataset_spec(dataset_id, protocol)
    with DatasetWriter(root, spec, n_folds) as writer:
        for number in numbers:
            image, label = load_volume_pair(files[number]["image"], files[number]["label"], lut, "BTCV",
                                            geometry_tolerance)
            writer.add(Case(f"btcv_{number:04d}", [image], label, f"{number:04d}", number in tests,
                            str(files[number]["image"])))
        target = writer.finish()
    print_summary(spec, writer.summaries, target)
    warn_stale_preprocessed(spec)
    hint = ("Convert CHAOS MR (nnunet_unpaired convert chaos) or AMOS MR (nnunet_unpaired convert amos --modality mr "
            "--protocol abdomen-4) for the MR side." if protocol == "abdomen-4" else
            "No MR dataset has the 13 BTCV labels; convert with --protocol abdomen-4 to pair with CHAOS MR.")
    print_pair_command(dataset_id, find_partner(root, protocol, "CT"), hint)
    return target
