"""``nnUNetTrainerMAML``: modality-aware mutual learning on a paired multi-channel dataset, robust to missing channels.

Source: Zhang, Yang, Tian, Shi, Zhong, Zhang, He, "Modality-aware Mutual Learning for Multi-modal Medical Image
Segmentation", MICCAI 2021 (arXiv 2107.09842); public code YaoZhang93/MAML (nnU-Net v1 fork, Apache-2.0).

The trainer only composes library pieces: the network (:mod:`nnunet_unpaired.modules.maml_network`), the loss
(:mod:`nnunet_unpaired.losses.mutual_distillation`) and nnU-Net's own training loop, data, loss and predictor. The
deviations from the paper are listed in those modules and in docs/maml.md.

Settings (nnU-Net fixes ``__init__``'s signature, so they come from elsewhere). Each is taken from, in this order:
the environment variable, the top-level plans key ``"maml"`` (e.g. ``"maml": {"distillation_weight": 0.5}``), the
class attribute (a subclass may override it). The resolved values are written back into the plans under ``"maml"``,
so the model folder's plans.json records them, and prediction rebuilds the network with the width used in training.

=========================  =============================================  =======  ==================================
setting                    environment variable                           default  meaning
=========================  =============================================  =======  ==================================
peer_width_factor          nnUNet_unpaired_maml_width                     0.5      peer width / the plan's width
distillation_weight        nnUNet_unpaired_maml_distill_weight            0.0      weight of the mutual-distillation
                                                                                   KL (0 = the public code's loss)
distillation_temperature   nnUNet_unpaired_maml_distill_temperature       1.0      its softmax temperature
modality_dropout           nnUNet_unpaired_maml_modality_dropout          0.5      probability that a training step
                                                                                   fuses a random channel subset
=========================  =============================================  =======  ==================================

The defaults are provisional; the benchmark is meant to settle them. Width and distillation follow the public code.
Modality dropout is this project's addition (no effect with 2 channels): on the 3-channel phantom, 600 iterations,
fusing channels 0 and 2 of a model trained without it lost the structure visible in every channel (Dice 0.00; 0.92
with dropout 0.5) while the all-channel Dice stayed at 0.99 either way (docs/maml.md).

Not supported (raise at start): multi-GPU DDP, cascaded configurations, single-channel datasets, and the distillation
term with region-based labels.
"""

from __future__ import annotations

import os
from typing import Callable, Dict, List, Mapping

import numpy as np
import torch
import torch.distributed as dist
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_unpaired.errors import UserError
from nnunet_unpaired.losses.mutual_distillation import MutualLearningLoss
from nnunet_unpaired.modules.maml_network import MAMLNetwork, build_maml_network
from nnunet_unpaired.training.budget import BudgetMixin

PLANS_KEY = "maml"
_CUDA = torch.device("cuda")  # nnU-Net's default device, as in nnUNetTrainer.__init__
DEFAULT_PEER_WIDTH_FACTOR = 0.5
SETTINGS_ENV = {
    "peer_width_factor": "nnUNet_unpaired_maml_width",
    "distillation_weight": "nnUNet_unpaired_maml_distill_weight",
    "distillation_temperature": "nnUNet_unpaired_maml_distill_temperature",
    "modality_dropout": "nnUNet_unpaired_maml_modality_dropout",
}
_VALID = {
    "peer_width_factor": (lambda v: v > 0, "a positive number"),
    "distillation_weight": (lambda v: v >= 0, "a number >= 0"),
    "distillation_temperature": (lambda v: v > 0, "a positive number"),
    "modality_dropout": (lambda v: 0 <= v <= 1, "a number between 0 and 1"),
}


def resolve_settings(defaults: Mapping[str, float], plans: Mapping, environ: Mapping[str, str]) -> Dict[str, float]:
    """The MAML settings: environment variable, else ``plans["maml"][name]``, else ``defaults[name]``; validated."""
    from_plans = plans.get(PLANS_KEY) or {}
    settings = {}
    for name, variable in SETTINGS_ENV.items():
        raw = environ.get(variable, "").strip()
        source, value = (variable, raw) if raw else (f'plans["{PLANS_KEY}"]["{name}"]', from_plans.get(name))
        if value is None:
            source, value = f"the default of {name}", defaults[name]
        check, expected = _VALID[name]
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")
        if not check(number):
            raise ValueError(f"MAML setting {name} from {source} is {value!r}; it must be {expected}")
        settings[name] = number
    return settings


class _LossWithPeers:
    """Adapts :class:`MutualLearningLoss` to nnU-Net's ``self.loss(output, target)``: the peers' outputs are read from
    the network, which stores them during its forward (``keep_peer_outputs``)."""

    def __init__(self, mutual: MutualLearningLoss, network: Callable[[], MAMLNetwork]) -> None:
        self.mutual = mutual
        self.network = network

    def __call__(self, output, target) -> torch.Tensor:
        peers = self.network().peer_outputs
        if peers is None:
            raise RuntimeError("the MAML network did not keep its peer outputs; set network.keep_peer_outputs = True")
        return self.mutual(output, peers, target)


class nnUNetTrainerMAML(BudgetMixin, nnUNetTrainer):
    """Modality-aware mutual learning (Zhang et al., MICCAI 2021) for nnU-Net; see the module docstring."""

    peer_width_factor: float = DEFAULT_PEER_WIDTH_FACTOR
    distillation_weight: float = 0.0
    distillation_temperature: float = 1.0
    modality_dropout: float = 0.5

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = _CUDA):
        if dist.is_available() and dist.is_initialized():
            raise NotImplementedError("nnUNetTrainerMAML does not support multi-GPU (DDP) training; train on one GPU")
        channels = dataset_json.get("channel_names", dataset_json.get("modality", {}))
        if len(channels) < 2:
            raise UserError(f"nnUNetTrainerMAML needs a dataset with at least 2 co-registered input channels; dataset "
                            f"{plans.get('dataset_name', '?')} has {len(channels)} ({dict(channels)}). Train a "
                            f"single-channel dataset with a plain trainer (e.g. nnUNetTrainerVanilla).")
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.is_cascaded:
            raise NotImplementedError("nnUNetTrainerMAML does not support cascaded configurations (3d_cascade_fullres)")
        settings = resolve_settings({name: getattr(self, name) for name in SETTINGS_ENV}, self.plans_manager.plans,
                                    os.environ)
        for name, value in settings.items():
            setattr(self, name, value)
        self.plans_manager.plans[PLANS_KEY] = settings
        if self.label_manager.has_regions and self.distillation_weight > 0:
            raise NotImplementedError("the MAML distillation term needs softmax labels; set distillation_weight to 0 "
                                      "for region-based training")
        self.print_to_log_file(f"nnUNetTrainerMAML settings: {settings}", also_print_to_console=True)

    @staticmethod
    def build_network_architecture(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        width = (plans_manager.plans.get(PLANS_KEY) or {}).get("peer_width_factor", DEFAULT_PEER_WIDTH_FACTOR)
        return build_maml_network(configuration_manager.network_arch_class_name,
                                  configuration_manager.network_arch_init_kwargs,
                                  configuration_manager.network_arch_init_kwargs_req_import,
                                  num_input_channels, num_output_channels, float(width), enable_deep_supervision)

    def maml_network(self) -> MAMLNetwork:
        """``self.network`` without its torch.compile wrapper."""
        return getattr(self.network, "_orig_mod", self.network)

    def initialize(self):
        super().initialize()
        network = self.maml_network()
        network.keep_peer_outputs = True
        network.modality_dropout = self.modality_dropout
        # the channel subset of modality dropout is drawn in train_step, outside the (compiled) network
        network.fusion_mask_drawn_outside = True

    def _build_loss(self):
        return _LossWithPeers(MutualLearningLoss(super()._build_loss(), self.distillation_weight,
                                                 self.distillation_temperature), self.maml_network)

    def set_deep_supervision_enabled(self, enabled: bool):
        self.maml_network().deep_supervision = enabled

    def train_step(self, batch: dict) -> dict:
        self.maml_network().draw_fusion_mask()
        result = super().train_step(batch)
        result.update({name: float(value) for name, value in self.loss.mutual.last_terms.items()})
        return result

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        names = [name for name in ("seg_fused", "seg_peers", "distillation") if name in train_outputs[0]]
        self.print_to_log_file("MAML loss terms: " + ", ".join(
            f"{name} {np.mean([o[name] for o in train_outputs]):.4f}" for name in names))
