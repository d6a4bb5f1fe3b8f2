"""The base of the GLUA trainers and the lower bound of unsupervised adaptation: :class:`nnUNetTrainerSourceOnly`.

Unsupervised cross-modality adaptation: a labelled SOURCE dataset, an unlabelled TARGET dataset. Source = dataset A
(the trainer is started on it), target = its plan-pair partner B. Every trainer built on this base is a
:class:`~nnunet_unpaired.training.unpaired_joint.nnUNetTrainerUnpairedJoint`, so the model for the target is exported
to B's model folder with B's plans (B's normalization) and ``nnUNetv2_predict -d B ... -tr <trainer>`` loads a plain
network strictly. The method itself (Su et al., JBHI 2023): :mod:`nnunet_unpaired.training.glua_style` (stage 1) and
:mod:`nnunet_unpaired.training.glua` (stage 2 and its ablations).

What the base gives them:

- target labels are never read in training (tested in tests/test_glua_trainer.py):

  - the target data loaders get :class:`TargetImagesOnly` datasets, which return an all-zero segmentation and no
    class locations, so nnU-Net's foreground oversampling cannot look at target labels either (it falls back to
    random crops); the target's segmentation files are never decoded;
  - no loss reads the target batch's segmentation;
  - the per-epoch validation (pseudo Dice, ``checkpoint_best``) uses the SOURCE validation cases only.

  Target labels are read once training is over, by nnU-Net's final validation of B's validation fold (evaluation).
  One label-derived quantity lies outside the trainer: nnU-Net's dataset fingerprint computes the intensity
  statistics that CT normalization uses from the voxels inside the labels; for a CT target they come from B's labels
  (logged as a warning at start; see docs/glua.md);
- training modules optimized apart from nnU-Net's SGD (:func:`own_adam`, :func:`frozen`), their optimizers saved in
  the checkpoint;
- settings (nnU-Net fixes ``__init__``'s signature): class attributes, each overridable by the environment variable
  ``nnUNet_unpaired_glua_<attribute>`` (e.g. ``nnUNet_unpaired_glua_local_weight=0.05``) and checked against what it
  must be (``glua_settings``). The resolved values are printed to the training log and stored in the checkpoint and
  in the model folder's plans.json under ``"glua"``.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Dict, Tuple

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn

from nnunet_unpaired.errors import UserError
from nnunet_unpaired.training import interface
from nnunet_unpaired.training.unpaired_joint import CHECKPOINT_KEY, atomic_torch_save, nnUNetTrainerUnpairedJoint

ENV_PREFIX = interface.GLUA_ENV_PREFIX
PLANS_KEY = EXTRAS_KEY = "glua"

#: setting name -> (check of its value, what the value must be)
Settings = Dict[str, Tuple[Callable[[object], bool], str]]


def _parse(raw: str, default):
    if isinstance(default, bool):
        if raw.strip().lower() in ("1", "true", "yes"):
            return True
        if raw.strip().lower() in ("0", "false", "no"):
            return False
        raise ValueError(raw)
    return type(default)(raw.strip())


@contextlib.contextmanager
def frozen(module: nn.Module):
    """Parameters of ``module`` do not collect gradients inside the block (gradients still flow THROUGH it)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


def own_adam(module: nn.Module, lr: float, betas=(0.5, 0.999), weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """An Adam optimizer of its own for a training module built with ``requires_grad=False`` (so that nnU-Net's SGD
    does not see it); re-enables the module's gradients."""
    module.requires_grad_(True)
    return torch.optim.Adam(module.parameters(), lr=lr, betas=betas, weight_decay=weight_decay)


class TargetImagesOnly:
    """A view of an nnU-Net dataset that hides the labels: the images and the image-derived properties only.

    ``load_case`` returns the case's image, an all-zero segmentation (a broadcast view: no memory) and the case's
    properties without ``class_locations``. nnU-Net's data loader then crops target patches at random even where it
    would oversample foreground, and the target batches' ``target`` is all zeros.
    """

    def __init__(self, dataset):
        self.dataset = dataset
        self.identifiers = dataset.identifiers

    def __len__(self):
        return len(self.identifiers)

    def __getitem__(self, identifier):
        return self.load_case(identifier)

    def load_case(self, identifier):
        # nnU-Net's load_case opens the segmentation lazily (blosc2 memory map); nothing of it is decoded here
        data, _, seg_prev, properties = self.dataset.load_case(identifier)
        if seg_prev is not None:
            raise NotImplementedError("cascaded configurations are not supported for unlabelled target data")
        # int8 so that nnU-Net's cast to int16 makes a writable copy
        seg = np.broadcast_to(np.zeros((), dtype=np.int8), (1, *data.shape[1:]))
        properties = {k: v for k, v in properties.items() if k != "class_locations"}
        properties["class_locations"] = {}
        return data, seg, None, properties


class nnUNetTrainerSourceOnly(nnUNetTrainerUnpairedJoint):
    """Lower bound of unsupervised adaptation: nnU-Net trained on the labelled source (A) alone; its network is exported
    to the target's (B's) model folder with B's plans, so it segments B's images with B's normalization.

    Also the base of the GLUA trainers: target loaders without labels, source-only validation, separately optimized
    training modules (own Adam optimizers, saved in the checkpoint) and the settings mechanism.
    """

    #: whether a training step draws a target batch (the unpaired base's step) or runs nnU-Net's stock step
    uses_target_images: bool = False
    #: the class attributes that are settings (overridable by nnUNet_unpaired_glua_<name>) and their checks
    glua_settings: Settings = {}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.label_manager.has_regions or self.label_manager.has_ignore_label:
            raise NotImplementedError(f"{self.__class__.__name__} supports neither region-based labels nor an ignore "
                                      f"label")
        if self.is_cascaded:
            raise NotImplementedError(f"{self.__class__.__name__} does not support cascaded configurations")
        self.extra_optimizers: Dict[str, torch.optim.Optimizer] = {}
        self.settings = self._resolve_settings()
        if self.settings:
            self.plans_manager.plans[PLANS_KEY] = dict(self.settings)
            self.print_to_log_file(f"{self.__class__.__name__} settings: {self.settings}", also_print_to_console=True)
        schemes = self._partner["configuration_manager"].normalization_schemes
        if "CTNormalization" in schemes:
            self.print_to_log_file(
                f"WARNING: the target {self.partner_name} uses CTNormalization, whose intensity statistics nnU-Net's "
                f"fingerprint computed from the voxels inside the target's labels. The trainer itself never reads "
                f"target labels (see docs/glua.md).", also_print_to_console=True)

    def _resolve_settings(self) -> Dict:
        settings = {}
        for name, (check, meaning) in self.glua_settings.items():
            default = getattr(type(self), name)
            env = ENV_PREFIX + name
            raw = os.environ.get(env)
            value = default
            if raw is not None and raw.strip() != "":
                try:
                    value = _parse(raw, default)
                except ValueError:
                    raise UserError(f"{env}={raw!r} must be {meaning}") from None
            if not check(value):
                raise UserError(f"{name} = {value!r} ({env} or class attribute) must be {meaning}")
            setattr(self, name, value)
            settings[name] = value
        return settings

    # ------------------------------------------------------------------------------ target data without labels
    @property
    def viewing_target(self) -> bool:
        """True inside ``as_partner()``: the trainer then looks at the target dataset."""
        return self.preprocessed_dataset_folder_base == self._partner["preprocessed_dataset_folder_base"]

    def get_tr_and_val_datasets(self):
        dataset_tr, dataset_val = super().get_tr_and_val_datasets()
        if self.viewing_target:
            return TargetImagesOnly(dataset_tr), TargetImagesOnly(dataset_val)
        return dataset_tr, dataset_val

    # ----------------------------------------------------------------------------------------------- training
    def configure_extra_optimizers(self) -> Dict[str, torch.optim.Optimizer]:
        """Optimizers of training modules that nnU-Net's SGD must not see (build them with ``requires_grad=False``;
        re-enable it here). None for the source-only trainer."""
        return {}

    def initialize(self):
        first_time = not self.was_initialized
        super().initialize()
        if first_time:
            self.extra_optimizers = self.configure_extra_optimizers()

    def train_step(self, batch: dict) -> dict:
        if self.uses_target_images:
            return super().train_step(batch)
        return nnUNetTrainer.train_step(self, batch)

    def compute_losses(self, data_a, target_a, data_b, target_b) -> Dict[str, torch.Tensor]:
        """Segmentation loss on the source batch only; ``target_b`` (all zeros) is never read."""
        seg = self.loss(self.network(data_a), target_a)
        return {"seg": seg, "loss": seg}

    def validation_step(self, batch: dict) -> dict:
        """nnU-Net's validation step on SOURCE validation patches only (pseudo Dice and checkpoint_best never see
        target labels)."""
        return nnUNetTrainer.validation_step(self, batch)

    # ------------------------------------------------------------------------------------------- checkpoints
    def checkpoint_extras(self) -> Dict:
        return {"settings": dict(self.settings),
                "optimizers": {k: o.state_dict() for k, o in self.extra_optimizers.items()}}

    def save_checkpoint(self, filename: str) -> None:
        super().save_checkpoint(filename)
        if self.local_rank != 0 or self.disable_checkpointing:
            return
        extras = self.checkpoint_extras()
        if not extras["settings"] and not extras["optimizers"]:
            return
        checkpoint = torch.load(filename, map_location="cpu", weights_only=False)
        checkpoint.setdefault(CHECKPOINT_KEY, {})[EXTRAS_KEY] = extras
        atomic_torch_save(checkpoint, filename)

    def before_loading_checkpoint(self, extras: Dict) -> None:
        """Called with the checkpoint's GLUA extras before the trainer initializes from it (architecture choices)."""

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        checkpoint = filename_or_checkpoint
        if isinstance(checkpoint, str):
            checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=False)
        extras = checkpoint.get(CHECKPOINT_KEY, {}).get(EXTRAS_KEY, {})
        if not self.was_initialized:
            self.before_loading_checkpoint(extras)
        # the file name, not the loaded dict: nnU-Net 2.8.1's load_checkpoint only works with a file name
        super().load_checkpoint(filename_or_checkpoint)
        for name, state in extras.get("optimizers", {}).items():
            if name in self.extra_optimizers:
                self.extra_optimizers[name].load_state_dict(state)
