"""``nnUNetTrainerUMMKD``: the unpaired knowledge-distillation anchor of Dou, Liu, Heng, Glocker, "Unpaired Multi-modal
Segmentation via Knowledge Distillation", IEEE TMI 2020 (public code carrenD/ummkd; facts taken from it).

- every convolution kernel shared between the modalities, modality-specific normalization parameters (the joint
  trainer's ``modality_specific_norm``; each exported model carries its own modality's parameters);
- class-wise distillation: per class, the logits averaged over the voxels of that class in each modality's batch,
  softened with temperature T = 2, symmetric KL between the modalities
  (:class:`nnunet_unpaired.losses.class_distillation.ClasswiseKDLoss`), weight 0.5 next to nnU-Net's Dice + CE.

Deviations: nnU-Net's network, loss (Dice + CE with deep supervision) and augmentation replace the paper's; the KD term
uses the full-resolution output only.
"""

from __future__ import annotations

from typing import Dict

import torch

from nnunet_unpaired.losses.class_distillation import ClasswiseKDLoss
from nnunet_unpaired.training.unpaired_joint import nnUNetTrainerUnpairedJoint


class nnUNetTrainerUMMKD(nnUNetTrainerUnpairedJoint):
    modality_specific_norm = True
    kd_weight: float = 0.5
    kd_temperature: float = 2.0

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.kd_loss = ClasswiseKDLoss(self.kd_temperature, ignore_index=self.label_manager.ignore_label)

    def alignment_losses(self, output_a, target_a, output_b, target_b) -> Dict[str, torch.Tensor]:
        first = lambda x: x[0] if isinstance(x, (list, tuple)) else x  # noqa: E731 (full resolution)
        return {"kd": self.kd_weight * self.kd_loss(first(output_a), first(target_a), first(output_b), first(target_b))}
