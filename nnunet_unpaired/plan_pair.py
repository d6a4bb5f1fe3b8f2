"""``nnunet_unpaired plan-pair -d A B -c 2d 3d_fullres``: plan and preprocess two datasets of one anatomy together.

A is fingerprinted, planned and preprocessed exactly as ``nnUNetv2_plan_and_preprocess`` would. B then receives A's
plans (same target spacing, patch size, network topology, batch size, transposition: one network serves both), except
for what must stay B's own: the normalization of each channel (chosen by nnU-Net from B's channel names, e.g. "MR" ->
z-score) and the intensity statistics of B's own fingerprint (used by CT normalization), and B's image reader.
``nnUNetv2_move_plans_between_datasets`` alone would give an MR dataset A's CT normalization and CT statistics.

Both plans files get a pairing record (see :mod:`nnunet_unpaired.pairing`) so that a trainer started on either dataset
finds its partner. Raw data is only read. Every step overwrites its own previous output, so a rerun is safe.

Optional ``--max-features`` / ``--batch-size`` shrink the network for CPU runs (demo, tests, cpu-small benchmark);
they are applied to A's plans before B copies them, so both datasets always share one network.

Optional ``--fingerprint-samples N`` draws N foreground intensities per dataset for the fingerprint's intensity
statistics instead of nnU-Net's 10^8 (drawn with replacement, spread over the cases). On a small dataset such as the
phantom nearly all of nnU-Net's draws repeat voxels already drawn, and concatenating and sorting 10^8 values costs
about 10 s per dataset; the demo, the phantom benchmark and the tests use 10^6. Recorded in the pairing record.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
from typing import Dict, List, Optional, Sequence

from nnunet_unpaired.errors import UserError
from nnunet_unpaired.pairing import PAIRING_KEY, label_differences, require_env

HELP = "plan and preprocess two datasets of one anatomy together"
#: ``--fingerprint-samples`` of the demo, the phantom benchmark and the tests (small synthetic datasets)
SMALL_DATASET_FINGERPRINT_SAMPLES = 10**6


def resolve_dataset(name_or_id: str) -> str:
    """``'901'`` or ``'Dataset901_PhantomCT'`` -> the dataset's folder name in nnUNet_raw (UserError if absent)."""
    raw = require_env("nnUNet_raw")["nnUNet_raw"]
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        name = maybe_convert_to_dataset_name(str(name_or_id) if str(name_or_id).startswith("Dataset")
                                             else int(name_or_id))
    except (RuntimeError, ValueError) as e:
        raise UserError(f"dataset {name_or_id} not found in nnUNet_raw={raw} ({str(e).splitlines()[0]}). "
                        f"Check the id, or convert the data first (nnunet_unpaired convert / phantom).") from None
    if not os.path.isfile(os.path.join(raw, name, "dataset.json")):
        raise UserError(f"{os.path.join(raw, name, 'dataset.json')} is missing: {name} is not an nnU-Net raw dataset. "
                        f"Every dataset needs a dataset.json (see nnU-Net's documentation/dataset_format.md).")
    return name


def _load_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except ValueError as e:
        raise UserError(f"{path} is not valid JSON ({e}); fix or regenerate it") from None


def save_json_atomic(obj: dict, path: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=4, sort_keys=False)
    os.replace(tmp, path)


def check_compatible(name_a: str, name_b: str, raw: str) -> None:
    """Same label set and same number of channels, or a UserError that says how to fix it."""
    ds_a = _load_json(os.path.join(raw, name_a, "dataset.json"))
    ds_b = _load_json(os.path.join(raw, name_b, "dataset.json"))
    diff = label_differences(ds_a.get("labels", {}), ds_b.get("labels", {}))
    if diff:
        raise UserError(
            f"{name_a} and {name_b} have different label sets ({diff}). One network needs one label set. "
            f"Write a copy of {name_b} with its labels renamed/renumbered to {name_a}'s (raw data stays untouched):\n"
            f"  nnunet_unpaired remap-labels -d {name_b} --to-id <NEW_ID> --map <B_VALUE>:<A_VALUE> ... "
            f"--names-from {name_a}\n"
            f"and pair {name_a} with the new dataset. The converters' --protocol options give matching label sets.")
    ch_a, ch_b = ds_a.get("channel_names", {}), ds_b.get("channel_names", {})
    if len(ch_a) != len(ch_b):
        raise UserError(f"{name_a} has {len(ch_a)} input channel(s) {ch_a} but {name_b} has {len(ch_b)} {ch_b}. "
                        f"Both datasets must have the same number of channels to share one network.")


def verify_integrity(name: str, raw: str, num_processes: int) -> None:
    """nnU-Net's own dataset check (geometry, label values, file names), with its failures as UserErrors."""
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    try:
        verify_dataset_integrity(os.path.join(raw, name), num_processes)
    except (AssertionError, RuntimeError, FileNotFoundError, ValueError) as e:
        raise UserError(f"dataset {name} failed nnU-Net's integrity check: {e}\n"
                        f"Fix the files named above in {os.path.join(raw, name)} (or skip the check with "
                        f"--no-verify if you know better).") from None


def shrink_plans(plans: dict, configurations: Sequence[str], max_features: Optional[int],
                 batch_size: Optional[int]) -> None:
    """Cap the feature widths and/or set the batch size of the given configurations (in place)."""
    for c in configurations:
        conf = plans["configurations"][c]
        if max_features is not None:
            kwargs = conf["architecture"]["arch_kwargs"]
            kwargs["features_per_stage"] = [min(int(f), max_features) for f in kwargs["features_per_stage"]]
        if batch_size is not None:
            conf["batch_size"] = batch_size


def sampled_fingerprint_extractor(num_samples: int):
    """nnU-Net's fingerprint extractor drawing ``num_samples`` foreground intensities per dataset (nnU-Net: 10^8).

    A subclass, the way nnU-Net's ``-fpe`` extends fingerprinting; nothing else changes (same seeded draws per case,
    same statistics)."""
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor

    if int(num_samples) < 1:
        raise UserError(f"--fingerprint-samples must be a positive number of intensities, got {num_samples}")

    class SampledFingerprintExtractor(DatasetFingerprintExtractor):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.num_foreground_voxels_for_intensitystats = int(num_samples)

    return SampledFingerprintExtractor


def partner_plans(plans_a: dict, name_b: str, normalization: Dict[str, list], reader_writer: str,
                  fingerprint_b: dict) -> dict:
    """B's plans: A's plans with B's normalization, intensity statistics and reader (pure function, tested)."""
    plans_b = copy.deepcopy(plans_a)
    plans_b["dataset_name"] = name_b
    plans_b["image_reader_writer"] = reader_writer
    plans_b["foreground_intensity_properties_per_channel"] = fingerprint_b["foreground_intensity_properties_per_channel"]
    for conf in plans_b["configurations"].values():
        if "normalization_schemes" in conf:
            conf["normalization_schemes"] = list(normalization["schemes"])
            conf["use_mask_for_norm"] = list(normalization["use_mask"])
    return plans_b


def plan_pair(dataset_a: str, dataset_b: str, configurations: Sequence[str], plans_name: str = "nnUNetPlans",
              planner: str = "ExperimentPlanner", num_processes: int = 2, max_features: Optional[int] = None,
              batch_size: Optional[int] = None, verify: bool = True, in_plane_spacing: Optional[float] = None,
              fingerprint_samples: Optional[int] = None, log=print) -> Dict[str, str]:
    """Plan and preprocess A, give B A's plans with B's own normalization, preprocess B, record the pairing.

    ``in_plane_spacing`` (mm): plan at this coarser in-plane spacing (the two in-plane axes of nnU-Net's target
    spacing are raised to it; the out-of-plane axis keeps nnU-Net's choice), so patches are smaller and an iteration
    cheaper (CPU benchmarks). Recorded in both plans files under ``nnunet_unpaired_pairing``.

    ``fingerprint_samples``: foreground intensities drawn per dataset for the fingerprint (None: nnU-Net's 10^8; see
    the module docstring). Recorded beside the pairing when set.

    Returns the paths of the two plans files.
    """
    env = require_env("nnUNet_raw", "nnUNet_preprocessed")
    raw, pre = env["nnUNet_raw"], env["nnUNet_preprocessed"]
    name_a, name_b = resolve_dataset(dataset_a), resolve_dataset(dataset_b)
    if name_a == name_b:
        raise UserError(f"plan-pair needs two different datasets, got {name_a} twice")
    check_compatible(name_a, name_b, raw)

    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprint_dataset,
                                                                       plan_experiments, preprocess_dataset)
    from nnunetv2.utilities.dataset_name_id_conversion import convert_dataset_name_to_id

    id_a, id_b = convert_dataset_name_to_id(name_a), convert_dataset_name_to_id(name_b)
    extractor = {} if fingerprint_samples is None else {
        "fingerprint_extractor_class": sampled_fingerprint_extractor(fingerprint_samples)}
    if verify:
        for name in (name_a, name_b):
            log(f"[plan-pair] checking {name} with nnU-Net's dataset integrity check")
            verify_integrity(name, raw, num_processes)

    def fingerprint(dataset_id: int, name: str) -> None:
        log(f"[plan-pair] fingerprint of {name}")
        extract_fingerprint_dataset(dataset_id, num_processes=num_processes, clean=True, verbose=False,
                                    show_progress_bar=False, **extractor)

    fingerprint(id_a, name_a)  # B's after A's plan: a configuration A's plan lacks is refused before that work
    target_spacing = None if in_plane_spacing is None else coarser_in_plane(id_a, planner, in_plane_spacing)
    log(f"[plan-pair] planning {name_a} ({planner}, plans '{plans_name}'"
        + (f", target spacing {target_spacing} mm (in-plane raised to {in_plane_spacing})" if target_spacing else "")
        + ")")
    with _planner_safe_environment():
        plan_experiments([id_a], planner, overwrite_plans_name=plans_name, overwrite_target_spacing=target_spacing)
    plans_file_a = os.path.join(pre, name_a, plans_name + ".json")
    plans_a = _load_json(plans_file_a)
    missing = [c for c in configurations if c not in plans_a["configurations"]]
    if missing:
        raise UserError(f"configuration(s) {missing} do not exist in the plans of {name_a} (it has "
                        f"{sorted(plans_a['configurations'])}); nnU-Net plans 3d configurations only for 3d data. "
                        f"Choose from those with -c.")
    shrink_plans(plans_a, configurations, max_features, batch_size)

    fingerprint(id_b, name_b)
    planner_b = ExperimentPlanner(id_b)  # reads B's fingerprint; copies B's raw splits_final.json if there is one
    schemes, use_mask = planner_b.determine_normalization_scheme_and_whether_mask_is_used_for_norm()
    fingerprint_b = _load_json(os.path.join(pre, name_b, "dataset_fingerprint.json"))
    plans_b = partner_plans(plans_a, name_b, {"schemes": schemes, "use_mask": use_mask},
                            planner_b.determine_reader_writer().__name__, fingerprint_b)
    plans_a[PAIRING_KEY] = {"partner": name_b, "partner_plans": plans_name, "role": "A"}
    plans_b[PAIRING_KEY] = {"partner": name_a, "partner_plans": plans_name, "role": "B"}
    if in_plane_spacing is not None:
        for plans in (plans_a, plans_b):
            plans[PAIRING_KEY]["in_plane_spacing"] = float(in_plane_spacing)
    if fingerprint_samples is not None:
        for plans in (plans_a, plans_b):
            plans[PAIRING_KEY]["fingerprint_samples"] = int(fingerprint_samples)
    plans_file_b = os.path.join(pre, name_b, plans_name + ".json")
    save_json_atomic(plans_a, plans_file_a)
    save_json_atomic(plans_b, plans_file_b)
    shutil.copy(os.path.join(raw, name_b, "dataset.json"), os.path.join(pre, name_b, "dataset.json"))
    norm_a = [plans_a["configurations"][c]["normalization_schemes"] for c in configurations][0]
    log(f"[plan-pair] {name_b} shares {name_a}'s plans; normalization {name_a}: {norm_a}, {name_b}: {schemes}")

    for dataset_id, name in ((id_a, name_a), (id_b, name_b)):
        log(f"[plan-pair] preprocessing {name}: {', '.join(configurations)}")
        preprocess_dataset(dataset_id, plans_name, list(configurations), [num_processes] * len(configurations),
                           verbose=False, show_progress_bar=False)
    _warn_small_datasets((name_a, name_b), pre, log)
    log(f"[plan-pair] done. Train with e.g.\n  nnUNetv2_train {name_a} {configurations[0]} 0 "
        f"-tr nnUNetTrainerUnpairedJoint -p {plans_name}")
    return {"A": plans_file_a, "B": plans_file_b}


def coarser_in_plane(dataset_id: int, planner: str, in_plane_spacing: float) -> list:
    """nnU-Net's 3d_fullres target spacing of a dataset (fingerprint order) with its two in-plane axes (those after
    the planner's transposition puts the out-of-plane axis first; 2d plans use them) raised to ``in_plane_spacing``."""
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    if not in_plane_spacing > 0:
        raise UserError(f"--in-plane-spacing must be a positive number of mm, got {in_plane_spacing}")
    planner_class = recursive_find_python_class(os.path.join(nnunetv2.__path__[0], "experiment_planning"), planner,
                                                current_module="nnunetv2.experiment_planning")
    if planner_class is None:
        raise UserError(f"unknown nnU-Net planner {planner!r} (-pl)")
    instance = planner_class(dataset_id, suppress_transpose=False)
    spacing = [float(v) for v in instance.determine_fullres_target_spacing()]
    transpose_forward = instance.determine_transpose()[0]
    for axis in transpose_forward[1:]:
        spacing[axis] = max(spacing[axis], float(in_plane_spacing))
    return spacing


@contextlib.contextmanager
def _planner_safe_environment():
    """nnU-Net's planner calls ``torch.set_num_threads(nnUNet_n_proc_DA)``, which fails for the valid setting 0."""
    value = os.environ.get("nnUNet_n_proc_DA")
    if value is not None and value.strip() == "0":
        os.environ["nnUNet_n_proc_DA"] = "1"
    try:
        yield
    finally:
        if value is not None:
            os.environ["nnUNet_n_proc_DA"] = value


def _warn_small_datasets(names: Sequence[str], pre: str, log) -> None:
    from nnunet_unpaired.splits import count_training_cases

    for name in names:
        n = count_training_cases(os.path.join(pre, name))
        if n < 5 and not os.path.isfile(os.path.join(pre, name, "splits_final.json")):
            log(f"[plan-pair] note: {name} has only {n} training case(s), too few for nnU-Net's 5-fold split. "
                f"Train with fold 'all', or put a splits_final.json into {os.path.join(pre, name)}.")


def add_arguments(parser) -> None:
    parser.add_argument("-d", nargs=2, required=True, metavar=("A", "B"),
                        help="the two datasets (ids or names). A is planned by nnU-Net; B gets A's plans with its "
                             "own normalization")
    parser.add_argument("-c", nargs="+", default=["2d", "3d_fullres"], metavar="CONFIG",
                        help="configurations to preprocess for both datasets")
    parser.add_argument("-p", "--plans-name", default="nnUNetPlans", help="plans identifier written for both")
    parser.add_argument("-pl", "--planner", default="ExperimentPlanner",
                        help="nnU-Net experiment planner class for A (e.g. nnUNetPlannerResEncM)")
    parser.add_argument("-np", "--num-processes", type=int, default=max(1, min(4, os.cpu_count() or 1)),
                        help="worker processes for fingerprinting and preprocessing")
    parser.add_argument("--max-features", type=int, default=None,
                        help="cap the feature maps per stage (smaller network, e.g. 64 for CPU runs)")
    parser.add_argument("--batch-size", type=int, default=None, help="override the planned batch size")
    parser.add_argument("--no-verify", action="store_true", help="skip nnU-Net's dataset integrity check")
    parser.add_argument("--in-plane-spacing", type=float, default=None, metavar="MM",
                        help="plan at this coarser in-plane spacing in mm (smaller patches, cheaper iterations; e.g. "
                             "2.5 for CPU runs on abdominal CT/MR); recorded in the plans")
    parser.add_argument("--fingerprint-samples", type=int, default=None, metavar="N",
                        help="foreground intensities drawn per dataset for the fingerprint's intensity statistics "
                             "(default: nnU-Net's 10^8; 10^6 saves about 10 s per small dataset); recorded in the "
                             "plans")


def run(args) -> int:
    plan_pair(args.d[0], args.d[1], args.c, plans_name=args.plans_name, planner=args.planner,
              num_processes=args.num_processes, max_features=args.max_features, batch_size=args.batch_size,
              verify=not args.no_verify, in_plane_spacing=args.in_plane_spacing,
              fingerprint_samples=args.fingerprint_samples)
    return 0
