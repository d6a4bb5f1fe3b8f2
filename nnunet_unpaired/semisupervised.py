"""Unlabelled training cases in nnU-Net, and ``nnunet_unpaired make-semisupervised`` (an N%-labelled copy of a dataset).

How a training case is marked unlabelled (the convention of this package, accepted by nnU-Net's own tools): its label
map in ``labelsTr`` has the image's geometry and holds ONLY the ignore label. nnU-Net's ignore label is declared in
dataset.json as the highest label value, named ``"ignore"`` (e.g. ``{"background": 0, ..., "cavity": 4,
"ignore": 5}``). nnU-Net 2.8 then

- accepts the dataset in its integrity check, fingerprinting, planning and preprocessing;
- contributes no supervised loss from ignore voxels (Dice and cross-entropy are masked; a batch without any labelled
  voxel gives a zero cross-entropy and a constant Dice term);
- samples patches of such a case at random positions (it has no class locations; the data loader warns
  "No annotated pixels in image!" once);
- scores nothing on ignore voxels in validation (a fully ignored validation case yields NaN Dice, left out of means).

The CMC trainer (:mod:`nnunet_unpaired.training.cmc`) finds the unlabelled cases by exactly this property (no voxel
outside the ignore label, read from nnU-Net's preprocessed class locations), so any dataset marked this way works, not
only copies written by this command. Known side effect, from nnU-Net: the dataset fingerprint counts ignore voxels as
foreground, so the CT intensity statistics (CTNormalization) of a dataset with unlabelled cases are taken over whole
images rather than over the labelled structures. Z-score (MR) normalization is per image and unaffected.

``make-semisupervised -d A B --percent 10 --to-ids X Y`` writes, for each source dataset, a copy
``DatasetXXX_<name>Semi10`` in nnUNet_raw where a seeded random 10 % of the training cases (at least one) keep their
label maps and the others get all-ignore label maps. ``--labelled-only`` instead writes ``DatasetXXX_<name>Labelled10``
with only the labelled cases (same selection for the same seed): the training set of the vanilla and joint baselines.
Images are hard-linked where possible (copied otherwise), test data (imagesTs, labelsTs) is carried over unchanged,
the source is only read, and each copy appears atomically (written to a temporary folder, then renamed). The chosen
cases are recorded in the copy's dataset.json under :data:`MARKER_KEY`, and a ``splits_final.json`` is written whose
folds spread labelled and unlabelled cases evenly (a source ``splits_final.json`` is kept instead).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from typing import Callable, Dict, List, Mapping, Sequence, Tuple

import numpy as np

from nnunet_unpaired.errors import UserError

HELP = "copy a dataset with only N% of its training cases labelled"
IGNORE_NAME = "ignore"
MARKER_KEY = "nnunet_unpaired_semisupervised"
NUM_FOLDS = 5
SPLIT_SEED = 12345  # nnU-Net's own cross-validation seed


# --------------------------------------------------------------------------------------------------------------------
# pure helpers
# --------------------------------------------------------------------------------------------------------------------

def number_labelled(num_cases: int, percent: float) -> int:
    """``percent`` % of ``num_cases``, rounded half up, at least 1 (and at most ``num_cases``)."""
    if not 0 < percent <= 100:
        raise UserError(f"--percent must be in (0, 100], got {percent}")
    if num_cases < 1:
        raise UserError("the dataset has no training cases")
    return min(num_cases, max(1, int(math.floor(num_cases * percent / 100 + 0.5))))


def choose_labelled(identifiers: Sequence[str], percent: float, seed: int) -> List[str]:
    """The seeded choice of labelled cases (sorted); depends only on the sorted identifiers, ``percent``, ``seed``."""
    ordered = sorted(identifiers)
    count = number_labelled(len(ordered), percent)
    order = np.random.default_rng(seed).permutation(len(ordered))
    return sorted(ordered[i] for i in order[:count])


def labels_with_ignore(labels: Mapping[str, object], where: str = "dataset.json") -> Tuple[Dict[str, int], int]:
    """The label dict with an ignore label (highest value, named "ignore") and that value; an existing one is kept."""
    values = {}
    for name, value in labels.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise UserError(f"{where}: label {name!r} is {value!r}; region-based labels (lists) are not supported for "
                            f"semi-supervised copies. Use integer labels.")
        values[name] = int(value)
    if IGNORE_NAME in values:
        if values[IGNORE_NAME] != max(values.values()):
            raise UserError(f"{where}: the ignore label must have the highest value (nnU-Net's rule), got {values}")
        return values, values[IGNORE_NAME]
    ignore = max(values.values()) + 1
    return {**values, IGNORE_NAME: ignore}, ignore


def stratified_splits(labelled: Sequence[str], unlabelled: Sequence[str], num_folds: int = NUM_FOLDS,
                      seed: int = SPLIT_SEED) -> List[Dict[str, List[str]]]:
    """``num_folds`` cross-validation folds with the labelled and the unlabelled cases each spread evenly over the
    validation sets (shuffled with ``seed``), in nnU-Net's splits_final.json format."""
    rng = np.random.default_rng(seed)
    shuffled = [[group[i] for i in rng.permutation(len(group))] for group in (sorted(labelled), sorted(unlabelled))]
    everything = sorted([*labelled, *unlabelled])
    splits = []
    for fold in range(num_folds):
        val = sorted(case for group in shuffled for case in group[fold::num_folds])
        held_out = set(val)
        splits.append({"train": [c for c in everything if c not in held_out], "val": val})
    return splits


# --------------------------------------------------------------------------------------------------------------------
# the dataset helper the trainer uses
# --------------------------------------------------------------------------------------------------------------------

def annotated_key(label_manager) -> tuple:
    """The class-locations key under which nnU-Net's preprocessing stores voxels that are NOT ignore."""
    return tuple([-1] + list(label_manager.all_labels))


def is_labelled(properties: Mapping, label_manager) -> bool:
    """Whether a preprocessed case has any voxel outside the ignore label (from its class locations).

    Without an ignore label every case is labelled. Preprocessing stores a sample of the annotated voxels under
    :func:`annotated_key`; an empty sample means the case is entirely ignore, i.e. unlabelled.
    """
    if not label_manager.has_ignore_label:
        return True
    locations = properties.get("class_locations", {})
    key = annotated_key(label_manager)
    if key not in locations:
        raise UserError("a preprocessed case has no class locations for its annotated voxels; it was preprocessed "
                        "without the ignore label. Preprocess again (nnunet_unpaired plan-pair) after adding the "
                        "ignore label to dataset.json.")
    return len(locations[key]) > 0


def split_labelled(dataset, identifiers: Sequence[str], label_manager) -> Tuple[List[str], List[str]]:
    """``(labelled, unlabelled)`` identifiers of an nnU-Net dataset object (``nnUNetDatasetBlosc2`` etc.)."""
    labelled, unlabelled = [], []
    for identifier in identifiers:
        properties = dataset.load_case(identifier)[3]
        (labelled if is_labelled(properties, label_manager) else unlabelled).append(identifier)
    return labelled, unlabelled


# --------------------------------------------------------------------------------------------------------------------
# writing the copies
# --------------------------------------------------------------------------------------------------------------------

def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except ValueError as e:
        raise UserError(f"{path} is not valid JSON ({e})") from None


def _training_cases(source_dir: str, dataset_json: dict) -> Dict[str, Dict]:
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    try:
        cases = get_filenames_of_train_images_and_targets(source_dir, dict(dataset_json))
    except (FileNotFoundError, KeyError) as e:
        raise UserError(f"{source_dir} is not a complete nnU-Net raw dataset ({e})") from None
    for case, files in cases.items():
        for path in [*files["images"], files["label"]]:
            if not os.path.isfile(path):
                raise UserError(f"{path} (training case {case} of {source_dir}) is missing")
    return cases


def _reader_writer(dataset_json: dict, example_file: str):
    """nnU-Net's reader/writer for the dataset (chosen as nnU-Net chooses it; its choice message silenced)."""
    import contextlib
    import io

    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    with contextlib.redirect_stdout(io.StringIO()):
        return determine_reader_writer_from_dataset_json(dataset_json, example_file)()


def _all_ignore_label(image_file: str, target: str, ignore: int, io) -> None:
    """Write a label map of the image's geometry holding only ``ignore`` (with nnU-Net's reader/writer ``io``).

    The geometry comes from the case's image, so the label map being replaced is never read."""
    image, properties = io.read_images((image_file,))
    io.write_seg(np.full(image.shape[1:], ignore, dtype=np.uint8 if ignore < 256 else np.uint16), target, properties)


def _owned_by_us(target: str) -> bool:
    try:
        return MARKER_KEY in _read_json(os.path.join(target, "dataset.json"))
    except UserError:
        return False


def _replace(tmp: str, target: str) -> None:
    if os.path.exists(target):
        old = f"{target}.old{os.getpid()}"
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


def target_name(source_name: str, dataset_id: int, percent: float, labelled_only: bool) -> str:
    """``Dataset921_PhantomCTSemi10`` / ``Dataset931_PhantomCTLabelled10`` (a fractional percent: ``12p5``)."""
    if not 1 <= dataset_id <= 999:
        raise UserError(f"dataset id {dataset_id}: nnU-Net dataset ids have three digits (1..999)")
    suffix = ("Labelled" if labelled_only else "Semi") + f"{percent:g}".replace(".", "p")
    return f"Dataset{dataset_id:03d}_{source_name.split('_', 1)[1]}{suffix}"


def make_semisupervised(source_dir: str, target_dir: str, percent: float, seed: int = 0, labelled_only: bool = False,
                        log: Callable[[str], None] = print) -> Dict:
    """Write the N%-labelled copy of the raw dataset ``source_dir`` to ``target_dir`` (atomically).

    Returns:
        The record stored in the copy's dataset.json under :data:`MARKER_KEY` (source, percent, seed, mode, the
        labelled and unlabelled case identifiers).

    Raises:
        UserError: for a bad percent, a missing file, region labels, or a ``target_dir`` this command did not write.
    """
    dataset_json = _read_json(os.path.join(source_dir, "dataset.json"))
    if MARKER_KEY in dataset_json and dataset_json[MARKER_KEY].get("unlabelled"):
        raise UserError(f"{source_dir} is already a semi-supervised copy; start from the fully labelled dataset "
                        f"{dataset_json[MARKER_KEY].get('source')}")
    if os.path.exists(target_dir) and not _owned_by_us(target_dir):
        raise UserError(f"{target_dir} exists and was not written by make-semisupervised; refusing to replace it. "
                        f"Choose other ids with --to-ids or remove that folder yourself.")
    where = os.path.join(source_dir, "dataset.json")
    cases = _training_cases(source_dir, dataset_json)
    labelled = choose_labelled(list(cases), percent, seed)
    unlabelled = sorted(set(cases) - set(labelled))
    ending = dataset_json["file_ending"]
    new_json = {k: v for k, v in dataset_json.items() if k != "dataset"}
    if labelled_only:
        kept = labelled
    else:
        kept = sorted(cases)
        new_json["labels"], ignore = labels_with_ignore(dataset_json["labels"], where)
    record = {"source": os.path.basename(os.path.normpath(source_dir)), "percent": percent, "seed": seed,
              "mode": "labelled_only" if labelled_only else "semi", "labelled": labelled,
              "unlabelled": [] if labelled_only else unlabelled}
    new_json["numTraining"] = len(kept)
    new_json[MARKER_KEY] = record

    parent = os.path.dirname(os.path.abspath(target_dir))
    tmp = tempfile.mkdtemp(prefix=".semisupervised.", dir=parent)
    try:
        for sub in ("imagesTr", "labelsTr"):
            os.makedirs(os.path.join(tmp, sub))
        io = _reader_writer(dataset_json, cases[kept[0]]["images"][0])
        for case in kept:
            images = cases[case]["images"]
            for channel, image in enumerate(images):
                _link_or_copy(image, os.path.join(tmp, "imagesTr", f"{case}_{channel:04d}{ending}"))
            label_target = os.path.join(tmp, "labelsTr", case + ending)
            if case in labelled:
                _link_or_copy(cases[case]["label"], label_target)
            else:
                _all_ignore_label(images[0], label_target, ignore, io)
        for sub in ("imagesTs", "labelsTs"):
            folder = os.path.join(source_dir, sub)
            if os.path.isdir(folder):
                os.makedirs(os.path.join(tmp, sub))
                for name in sorted(os.listdir(folder)):
                    if os.path.isfile(os.path.join(folder, name)):
                        _link_or_copy(os.path.join(folder, name), os.path.join(tmp, sub, name))
        _write_splits(source_dir, tmp, labelled, [] if labelled_only else unlabelled, labelled_only, log)
        with open(os.path.join(tmp, "dataset.json"), "w") as f:
            json.dump(new_json, f, indent=2)
        _replace(tmp, target_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"wrote {target_dir}: {len(labelled)} of {len(cases)} training cases labelled"
        + (" (only those are in the copy)" if labelled_only else f", {len(unlabelled)} set to the ignore label"))
    return record


def _write_splits(source_dir: str, tmp: str, labelled: List[str], unlabelled: List[str], labelled_only: bool,
                  log: Callable[[str], None]) -> None:
    source_splits = os.path.join(source_dir, "splits_final.json")
    if os.path.isfile(source_splits) and not labelled_only:
        shutil.copy2(source_splits, os.path.join(tmp, "splits_final.json"))
        folds = _read_json(source_splits)
        bare = [i for i, fold in enumerate(folds) if not set(fold["train"]) & set(labelled)]
        if bare:
            log(f"note: in the source's splits_final.json, fold(s) {bare} train on no labelled case; CMC refuses "
                f"them. Train fold 'all' or another fold.")
        return
    if len(labelled) + len(unlabelled) < NUM_FOLDS:
        log(f"note: fewer than {NUM_FOLDS} cases, no splits_final.json written; train with fold 'all'")
        return
    with open(os.path.join(tmp, "splits_final.json"), "w") as f:
        json.dump(stratified_splits(labelled, unlabelled), f, indent=2)


# --------------------------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------------------------

def add_arguments(parser) -> None:
    parser.add_argument("-d", nargs="+", required=True, metavar="DATASET",
                        help="source dataset(s) (ids or names) in nnUNet_raw, e.g. the two datasets of a pair")
    parser.add_argument("--percent", type=float, required=True,
                        help="percentage of training cases that keep their labels (at least one case), e.g. 10")
    parser.add_argument("--to-ids", type=int, nargs="+", required=True, metavar="ID",
                        help="dataset id of each copy, in the order of -d")
    parser.add_argument("--seed", type=int, default=0, help="seed of the choice of labelled cases")
    parser.add_argument("--labelled-only", action="store_true",
                        help="write only the labelled cases (no unlabelled ones): the baselines' training set")


def run(args) -> int:
    from nnunet_unpaired.pairing import require_env
    from nnunet_unpaired.plan_pair import resolve_dataset

    raw = require_env("nnUNet_raw")["nnUNet_raw"]
    if len(args.to_ids) != len(args.d):
        raise UserError(f"give one --to-ids entry per dataset: {len(args.d)} dataset(s), {len(args.to_ids)} id(s)")
    if len(set(args.to_ids)) != len(args.to_ids):
        raise UserError(f"--to-ids must be different from each other, got {args.to_ids}")
    number_labelled(1, args.percent)  # validates the percent before anything is written
    sources = [resolve_dataset(d) for d in args.d]
    from nnunetv2.utilities.dataset_name_id_conversion import convert_dataset_name_to_id

    clash = sorted({convert_dataset_name_to_id(s) for s in sources} & set(args.to_ids))
    if clash:
        raise UserError(f"--to-ids {clash} is a source dataset's id; choose free ids")
    for source, new_id in zip(sources, args.to_ids):
        others = [n for n in os.listdir(raw) if n.startswith(f"Dataset{new_id:03d}_")]
        target = target_name(source, new_id, args.percent, args.labelled_only)
        if [n for n in others if n != os.path.basename(target)]:
            raise UserError(f"id {new_id} is taken in {raw} by {others}; choose another --to-ids entry")
        make_semisupervised(os.path.join(raw, source), os.path.join(raw, target), args.percent, args.seed,
                            args.labelled_only)
    return 0
