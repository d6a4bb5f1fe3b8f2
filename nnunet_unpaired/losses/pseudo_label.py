"""Confidence-thresholded pseudo-label cross-entropy: a student learns a teacher's confident predictions.

Source: the FixMatch form (Sohn et al., "FixMatch: Simplifying Semi-Supervised Learning with Consistency and
Confidence", NeurIPS 2020) applied per voxel, with a mean teacher (Tarvainen and Valpola, NeurIPS 2017) as the
teacher; CMC's same-modality term on unlabelled cases (nnunet_unpaired.training.cmc, issue 17).

For student logits ``z`` (B, K, *spatial) and teacher probabilities ``q`` of the same shape:

    loss = mean over voxels v of  1[max_k q_v,k >= tau] * CE(z_v, argmax_k q_v,k)

The mean runs over ALL voxels (FixMatch's normalisation), so a teacher with few confident voxels gives a small loss
rather than a noisy one from a handful of voxels. The teacher's probabilities are targets: no gradient reaches them.
Computed in float32 with autocast off (a log-softmax in fp16 loses the small probabilities).
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConfidentPseudoLabelLoss"]


class ConfidentPseudoLabelLoss(nn.Module):
    """Per-voxel cross-entropy to the teacher's arg-max where the teacher is at least ``threshold`` confident.

    Args:
        threshold: ``tau`` in [0, 1]; 0 keeps every voxel (plain hard pseudo-labels), 1 only certain ones.

    Raises:
        ValueError: if ``threshold`` is outside [0, 1].
    """

    def __init__(self, threshold: float = 0.9) -> None:
        super().__init__()
        if not 0 <= threshold <= 1:
            raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
        self.threshold = float(threshold)

    def forward(self, student_logits: torch.Tensor, teacher_probs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(loss, confident share)``: the loss (a scalar with gradient to the student) and the share of
        voxels whose teacher confidence reached the threshold (detached, for logging).

        Raises:
            ValueError: if the shapes differ or have fewer than 2 dimensions.
        """
        if student_logits.shape != teacher_probs.shape or student_logits.dim() < 2:
            raise ValueError(f"student logits and teacher probabilities must have one shape (B, K, ...), got "
                             f"{tuple(student_logits.shape)} and {tuple(teacher_probs.shape)}")
        with torch.autocast(device_type=student_logits.device.type, enabled=False):
            confidence, pseudo = teacher_probs.detach().float().max(dim=1)
            keep = (confidence >= self.threshold).float()
            ce = F.cross_entropy(student_logits.float(), pseudo, reduction="none")
            return (keep * ce).mean(), keep.mean().detach()
