"""``nnunet_unpaired remap-labels``: a copy of a raw dataset with its label values renumbered (raw data untouched).

Two datasets can share one network only with one label set. When B numbers or names its structures differently
from A, this writes ``DatasetNNN_<B name>Remapped`` with every label voxel mapped through ``--map OLD:NEW`` (values not
mentioned stay; map a structure to 0 to drop it) and, with ``--names-from A``, A's label names, so that plan-pair
accepts the pair. Images are hard-linked when possible (copied otherwise), never modified.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Dict, Optional

import numpy as np

from nnunet_unpaired.errors import UserError

HELP = "write a copy of a raw dataset with renumbered labels (to pair datasets with different label sets)"


def parse_mapping(items) -> Dict[int, int]:
    mapping = {}
    for item in items:
        try:
            old, new = (int(v) for v in item.split(":"))
        except ValueError:
            raise UserError(f"--map takes OLD:NEW pairs of integers, got '{item}'") from None
        mapping[old] = new
    return mapping


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def remap_dataset(source_dir: str, target_dir: str, mapping: Dict[int, int], labels: Optional[Dict[str, int]] = None,
                  log=print) -> str:
    """Write the remapped copy of ``source_dir`` to ``target_dir`` (atomically). Returns ``target_dir``."""
    import SimpleITK as sitk

    with open(os.path.join(source_dir, "dataset.json")) as f:
        ds = json.load(f)
    if labels is None:
        labels = {name: mapping.get(int(value), int(value)) for name, value in ds["labels"].items()
                  if mapping.get(int(value), int(value)) != 0 or int(value) == 0}
    allowed = set(int(v) for v in labels.values())
    if os.path.exists(target_dir):
        raise UserError(f"{target_dir} exists already; choose another --to-id or remove it")
    parent = os.path.dirname(target_dir)
    tmp = tempfile.mkdtemp(prefix=".remap.", dir=parent)
    try:
        for sub in ("imagesTr", "imagesTs"):
            if os.path.isdir(os.path.join(source_dir, sub)):
                os.makedirs(os.path.join(tmp, sub))
                for name in sorted(os.listdir(os.path.join(source_dir, sub))):
                    _link_or_copy(os.path.join(source_dir, sub, name), os.path.join(tmp, sub, name))
        for sub in ("labelsTr", "labelsTs"):
            if not os.path.isdir(os.path.join(source_dir, sub)):
                continue
            os.makedirs(os.path.join(tmp, sub))
            for name in sorted(os.listdir(os.path.join(source_dir, sub))):
                path = os.path.join(source_dir, sub, name)
                img = sitk.ReadImage(path)
                arr = sitk.GetArrayFromImage(img)
                out = arr.copy()
                for old, new in mapping.items():
                    out[arr == old] = new
                unknown = sorted(set(np.unique(out).tolist()) - allowed)
                if unknown:
                    raise UserError(f"{path}: label value(s) {unknown} are not in the new label set {labels}; "
                                    f"add them to --map (e.g. --map {unknown[0]}:0 to drop)")
                new_img = sitk.GetImageFromArray(out)
                new_img.CopyInformation(img)
                sitk.WriteImage(new_img, os.path.join(tmp, sub, name), useCompression=True)
        for extra in ("splits_final.json",):
            if os.path.isfile(os.path.join(source_dir, extra)):
                shutil.copy2(os.path.join(source_dir, extra), os.path.join(tmp, extra))
        ds["labels"] = labels
        ds["nnunet_unpaired_remapped_from"] = {"dataset": os.path.basename(source_dir),
                                               "map": {str(k): v for k, v in mapping.items()}}
        with open(os.path.join(tmp, "dataset.json"), "w") as f:
            json.dump(ds, f, indent=2)
        os.replace(tmp, target_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"wrote {target_dir} (labels {labels})")
    return target_dir


def add_arguments(parser) -> None:
    parser.add_argument("-d", required=True, help="source dataset (id or name) in nnUNet_raw")
    parser.add_argument("--to-id", type=int, required=True, help="id of the new dataset")
    parser.add_argument("--map", nargs="+", default=[], metavar="OLD:NEW", help="label value mapping")
    parser.add_argument("--names-from", default=None,
                        help="take the label names/values of this dataset (the partner), so the label sets match")


def run(args) -> int:
    from nnunet_unpaired.plan_pair import resolve_dataset

    raw = os.environ["nnUNet_raw"] if os.environ.get("nnUNet_raw") else None
    source = resolve_dataset(args.d)
    labels = None
    if args.names_from:
        with open(os.path.join(raw, resolve_dataset(args.names_from), "dataset.json")) as f:
            labels = {k: int(v) for k, v in json.load(f)["labels"].items()}
    if not 1 <= args.to_id <= 999:
        raise UserError(f"--to-id {args.to_id}: nnU-Net dataset ids have three digits (1..999)")
    target = os.path.join(raw, f"Dataset{args.to_id:03d}_{source.split('_', 1)[1]}Remapped")
    remap_dataset(os.path.join(raw, source), target, parse_mapping(args.map), labels)
    return 0
