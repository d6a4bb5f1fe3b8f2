"""UMMKD's class-wise knowledge-distillation loss between two modalities.

Paper: Dou, Liu, Heng, Glocker, "Unpaired Multi-modal Segmentation via Knowledge Distillation", IEEE TMI 39(7),
2020. Public code: carrenD/ummkd (TensorFlow); the facts below come from the paper and that code, the
implementation is ours.

For each class c and each modality m, the logits are averaged over the voxels whose ground truth is c, giving
a mean logit vector; ``p^m_c = softmax(mean / T)`` with temperature ``T = 2``; the loss is the mean over
classes of the symmetric KL divergence ``(KL(p^A_c || p^B_c) + KL(p^B_c || p^A_c)) / 2``. UMMKD weighs it 0.5
next to Dice and cross-entropy; that weight is applied by the trainer, not here.

Choices (ours, where the statement leaves room): the mean runs over every voxel of every sample of a
modality's batch pooled; only classes present in BOTH modalities' batches enter the mean (a class with no voxel
has no mean logit); with no shared class the loss is a zero still connected to the graph; the loss is not
multiplied by ``T^2``; gradients flow into both modalities (neither side is detached); means are computed in
float32 with autocast off (autocast ran the class sums in fp16, where a 3d_fullres batch's sums overflow to inf and
the loss was NaN from the first step).
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ClasswiseKDLoss", "class_mean_logits"]


def class_mean_logits(
    logits: torch.Tensor, labels: torch.Tensor, num_classes: int, ignore_index: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class mean logit vectors over a modality's batch (Dou et al., IEEE TMI 2020).

    Args:
        logits: network logits (B, C, *spatial); C is normally ``num_classes``.
        labels: integer label map (B, 1, *spatial) on the same grid (float tensors holding integers accepted).
        num_classes: number of classes K the labels can take.
        ignore_index: label value whose voxels are left out, or None.

    Returns:
        ``(means, present)``: float32 means (K, C), row c the mean logit vector over the voxels labelled c
        (zeros for an absent class), and a boolean mask (K,) of the classes that have at least one voxel.

    Raises:
        ValueError: if the shapes do not match, ``num_classes`` is not a positive integer, or a label value
            lies outside ``[0, num_classes)`` and is not ``ignore_index``.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if logits.ndim < 3 or labels.shape != (logits.shape[0], 1, *logits.shape[2:]):
        raise ValueError(
            f"logits must be (B, C, *spatial) and labels (B, 1, *spatial) on the same grid, got logits "
            f"{tuple(logits.shape)} and labels {tuple(labels.shape)}"
        )
    b, c = logits.shape[:2]
    target = labels.reshape(b, -1).long()  # (B, N)
    valid = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    target = torch.where(valid, target, torch.zeros_like(target))
    if target.numel() and (target.min() < 0 or target.max() >= num_classes):
        raise ValueError(
            f"label values must lie in [0, {num_classes}) or equal ignore_index={ignore_index}, "
            f"got values in [{int(target.min())}, {int(target.max())}]"
        )
    # Autocast runs a matmul in fp16, where the class sums over a 3d_fullres batch (2 x 128^3 voxels) pass 65504
    # and become inf: the sums are taken in float32 with autocast off.
    with torch.autocast(device_type=logits.device.type, enabled=False):
        classes = torch.arange(num_classes, device=target.device)
        member = ((target[:, None, :] == classes[None, :, None]) & valid[:, None, :]).float()  # (B, K, N)
        sums = torch.bmm(member, logits.reshape(b, c, -1).float().transpose(1, 2)).sum(dim=0)  # (K, C)
    # Integer counts, exact at any voxel count (ignored voxels go to an extra bin K).
    binned = torch.where(valid, target, torch.full_like(target, num_classes)).reshape(-1)
    counts = torch.bincount(binned, minlength=num_classes + 1)[:num_classes]  # (K,)
    return sums / counts.clamp(min=1).float()[:, None], counts > 0


class ClasswiseKDLoss(nn.Module):
    """Symmetric class-wise KL distillation between two modalities (Dou et al., IEEE TMI 2020).

    ``L = mean_{c shared} (KL(p^A_c || p^B_c) + KL(p^B_c || p^A_c)) / 2`` with ``p^m_c = softmax(mean logits / T)``.
    UMMKD adds it to the segmentation loss with weight 0.5; the trainer applies that weight. The class means are
    summed in float32 with autocast off, so the loss is finite under fp16 / bf16 autocast at 3d_fullres voxel counts.

    Args:
        temperature: softmax temperature T > 0 (default 2.0, UMMKD's value; 1.0 gives the plain softmax).
        ignore_index: label value whose voxels are left out of the class means, or None.

    Raises:
        ValueError: if ``temperature`` is not a finite number > 0 or ``ignore_index`` is not an integer or None.
    """

    def __init__(self, temperature: float = 2.0, ignore_index: int | None = None) -> None:
        super().__init__()
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, numbers.Real)
            or not math.isfinite(temperature)
            or temperature <= 0
        ):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
            raise ValueError(f"ignore_index must be an integer or None, got {ignore_index!r}")
        self.temperature = float(temperature)
        self.ignore_index = ignore_index

    def forward(
        self, logits_a: torch.Tensor, labels_a: torch.Tensor, logits_b: torch.Tensor, labels_b: torch.Tensor
    ) -> torch.Tensor:
        """Distillation loss for one step with a batch of each modality.

        Args:
            logits_a: logits (B_A, K, *spatial) of modality A.
            labels_a: labels (B_A, 1, *spatial) of modality A on the logits' grid.
            logits_b: logits (B_B, K, *spatial) of modality B (batch size and spatial shape may differ from A's).
            labels_b: labels (B_B, 1, *spatial) of modality B.

        Returns:
            Scalar loss >= 0; 0 (connected to the graph) when no class is present in both batches.

        Raises:
            ValueError: if the shapes do not fit together or a label value is out of range.
        """
        if logits_a.ndim != logits_b.ndim or logits_a.ndim < 3 or logits_a.shape[1] != logits_b.shape[1]:
            raise ValueError(
                f"logits of both modalities must be (B, K, *spatial) with the same K and number of spatial dims, "
                f"got {tuple(logits_a.shape)} and {tuple(logits_b.shape)}"
            )
        num_classes = logits_a.shape[1]
        mean_a, present_a = class_mean_logits(logits_a, labels_a, num_classes, self.ignore_index)
        mean_b, present_b = class_mean_logits(logits_b, labels_b, num_classes, self.ignore_index)
        log_p_a = F.log_softmax(mean_a / self.temperature, dim=1)
        log_p_b = F.log_softmax(mean_b / self.temperature, dim=1)
        kl_ab = (log_p_a.exp() * (log_p_a - log_p_b)).sum(dim=1)
        kl_ba = (log_p_b.exp() * (log_p_b - log_p_a)).sum(dim=1)
        shared = (present_a & present_b).to(kl_ab.dtype)
        return (0.5 * (kl_ab + kl_ba) * shared).sum() / shared.sum().clamp(min=1.0)
