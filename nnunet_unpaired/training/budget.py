"""Training length and test-time mirroring from environment variables, for short runs (demo, benchmark, tests).

nnU-Net fixes the trainer's ``__init__`` signature, so run-time configuration of a trainer must come from the plans or
from environment variables. Every trainer of this plugin (and ``nnUNetTrainerVanilla``, the stock trainer used as the
benchmark baseline) reads these variables; when none is set, nnU-Net's defaults apply unchanged.

- ``nnUNet_unpaired_epochs``: number of epochs (nnU-Net default 1000)
- ``nnUNet_unpaired_iters``: training iterations per epoch (default 250)
- ``nnUNet_unpaired_val_iters``: validation iterations per epoch (default 50)
- ``nnUNet_unpaired_no_mirroring=1``: no mirroring augmentation and no mirroring at test time
"""

from __future__ import annotations

import os
from typing import Dict, Optional

ENV_EPOCHS = "nnUNet_unpaired_epochs"
ENV_ITERS = "nnUNet_unpaired_iters"
ENV_VAL_ITERS = "nnUNet_unpaired_val_iters"
ENV_NO_MIRRORING = "nnUNet_unpaired_no_mirroring"

_ATTRIBUTES = {ENV_EPOCHS: "num_epochs", ENV_ITERS: "num_iterations_per_epoch", ENV_VAL_ITERS: "num_val_iterations_per_epoch"}


def _positive_int(name: str) -> Optional[int]:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return None
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ValueError(f"Environment variable {name}={value!r} must be a positive integer (or unset).")
    return number


def budget_from_env() -> Dict[str, int]:
    """The trainer attributes that the environment overrides, e.g. ``{'num_epochs': 5}``."""
    return {attr: n for env, attr in _ATTRIBUTES.items() if (n := _positive_int(env)) is not None}


def mirroring_disabled() -> bool:
    return os.environ.get(ENV_NO_MIRRORING, "0").strip().lower() in ("1", "true", "yes")


class BudgetMixin:
    """Put first in the bases of a trainer: applies :func:`budget_from_env` and the mirroring switch."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        overrides = budget_from_env()
        for attr, value in overrides.items():
            setattr(self, attr, value)
        if overrides or mirroring_disabled():
            self.print_to_log_file(
                f"nnunet_unpaired: training length from the environment: {overrides}"
                + (" ; mirroring disabled" if mirroring_disabled() else ""), also_print_to_console=True)

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        if mirroring_disabled():
            mirror_axes = None
            self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch_size, mirror_axes
