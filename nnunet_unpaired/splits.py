"""Cross-validation splits: the check that a fold can exist before nnU-Net's own split code fails obscurely."""

from __future__ import annotations

import json
import os

from nnunet_unpaired.errors import UserError


def count_training_cases(preprocessed_base: str) -> int:
    """Number of training cases of a preprocessed dataset (from its gt_segmentations, else dataset.json)."""
    gt = os.path.join(preprocessed_base, "gt_segmentations")
    if os.path.isdir(gt):
        return len([f for f in os.listdir(gt) if not f.startswith(".")])
    with open(os.path.join(preprocessed_base, "dataset.json")) as f:
        return int(json.load(f).get("numTraining", 0))


def check_fold_possible(preprocessed_base: str, fold) -> None:
    """UserError when ``fold`` cannot be trained: no splits_final.json and fewer cases than nnU-Net's 5 folds."""
    if fold == "all" or os.path.isfile(os.path.join(preprocessed_base, "splits_final.json")):
        return
    n = count_training_cases(preprocessed_base)
    if n < 5:
        raise UserError(
            f"{os.path.basename(preprocessed_base)} has {n} training case(s), fewer than the 5 folds nnU-Net's default "
            f"cross-validation needs for fold {fold}. Train with fold 'all', or write your own split to "
            f"{os.path.join(preprocessed_base, 'splits_final.json')} (a list of {{'train': [...], 'val': [...]}}).")
