"""The pairing record that ``plan-pair`` writes into both datasets' plans, and the checks that use it.

``plan-pair -d A B`` writes, under the top-level plans key :data:`PAIRING_KEY` (nnU-Net keeps unknown top-level plans
keys and copies them into every model folder), ``{"partner": <the other dataset>, "partner_plans": <its plans
identifier>, "role": "A" or "B"}``. A trainer started on either dataset finds its partner from there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional

from nnunet_unpaired.errors import UserError

PAIRING_KEY = "nnunet_unpaired_pairing"
NNUNET_ENV = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")

# configuration entries that must be identical for one network to serve both datasets
SHARED_CONFIGURATION_KEYS = ("spacing", "patch_size", "architecture", "batch_size", "data_identifier",
                             "resampling_fn_data", "resampling_fn_seg", "resampling_fn_probabilities")
SHARED_PLANS_KEYS = ("transpose_forward", "transpose_backward", "label_manager")


def require_env(*names: str) -> Dict[str, str]:
    """The values of nnU-Net's folder variables; a UserError naming the unset ones otherwise."""
    names = names or NNUNET_ENV
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        lines = "\n".join(f"  export {n}=/path/to/{n}" for n in missing)
        raise UserError(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set. nnU-Net needs its "
                        f"folders defined, e.g.\n{lines}\n(see nnU-Net's documentation/setting_up_paths.md)")
    return {n: os.environ[n] for n in names}


@dataclass
class Pairing:
    dataset: str
    partner: str
    partner_plans: str
    role: str


def read_pairing(plans: dict, plans_file: str = "the plans") -> Pairing:
    """The pairing record of a plans dict, or a UserError that says to run plan-pair."""
    record = plans.get(PAIRING_KEY)
    if not isinstance(record, dict) or "partner" not in record:
        name = plans.get("dataset_name", "?")
        raise UserError(
            f"{plans_file} of {name} has no partner dataset. Unpaired trainers need two datasets planned together:\n"
            f"  nnunet_unpaired plan-pair -d {name} <PARTNER_DATASET> -c <CONFIGURATION>\n"
            f"(nnUNetv2_plan_and_preprocess rewrites the plans without the pairing; rerun plan-pair after it.)")
    return Pairing(dataset=plans["dataset_name"], partner=record["partner"],
                   partner_plans=record.get("partner_plans", plans.get("plans_name", "nnUNetPlans")),
                   role=record.get("role", "?"))


def plans_differences(plans_a: dict, plans_b: dict, configuration: str) -> List[str]:
    """Human-readable list of the plan entries that differ between two datasets for one configuration."""
    diffs = []
    for key in SHARED_PLANS_KEYS:
        if plans_a.get(key) != plans_b.get(key):
            diffs.append(f"{key}: {plans_a.get(key)} vs {plans_b.get(key)}")
    conf_a = plans_a.get("configurations", {}).get(configuration)
    conf_b = plans_b.get("configurations", {}).get(configuration)
    if conf_a is None or conf_b is None:
        missing = [p["dataset_name"] for p, c in ((plans_a, conf_a), (plans_b, conf_b)) if c is None]
        return diffs + [f"configuration {configuration} is missing in the plans of {', '.join(missing)}"]
    for key in SHARED_CONFIGURATION_KEYS:
        if conf_a.get(key) != conf_b.get(key):
            diffs.append(f"configurations.{configuration}.{key}: {conf_a.get(key)} vs {conf_b.get(key)}")
    return diffs


def label_differences(labels_a: Dict[str, object], labels_b: Dict[str, object]) -> Optional[str]:
    if labels_a == labels_b:
        return None
    only_a = {k: v for k, v in labels_a.items() if labels_b.get(k) != v}
    only_b = {k: v for k, v in labels_b.items() if labels_a.get(k) != v}
    return f"labels that differ: A has {only_a}, B has {only_b}"
