"""Mutual learning losses of MAML: segmentation loss on the fused output and on every peer, plus mutual distillation.

Source: Zhang, Yang, Tian, Shi, Zhong, Zhang, He, "Modality-aware Mutual Learning for Multi-modal Medical Image
Segmentation", MICCAI 2021 (arXiv 2107.09842); public code YaoZhang93/MAML (nnU-Net v1 fork, Apache-2.0).

The public code trains with DC+CE on the fused output plus DC+CE with deep supervision on every modality-specific
network; it has no explicit distillation term (the mutual learning comes from the joint loss). This project adds an
OPTIONAL distillation term (weight 0 = the public code's loss), written as in deep mutual learning:

    L_md = T^2 / |P| * sum over peers i of ( KL(sg(p_f) || p_i) + KL(sg(p_i) || p_f) ) / 2

with p = softmax(logits / T) over the class axis, KL summed over classes and averaged over the batch and the voxels,
sg() a stop-gradient (each side learns from the other, never from itself) and the usual T^2 factor that keeps the
gradient scale independent of the temperature. It compares full-resolution outputs only.

    L = L_seg(fused) + sum over peers i of L_seg(peer_i) + weight * L_md
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

Output = Union[torch.Tensor, Sequence[torch.Tensor]]


def _kl(log_target: torch.Tensor, log_input: torch.Tensor) -> torch.Tensor:
    """KL(target || input) from log-probabilities over dim 1, summed over classes, averaged over everything else."""
    return (log_target.exp() * (log_target - log_input)).sum(1).mean()


def full_resolution(output: Output) -> torch.Tensor:
    """The highest-resolution tensor of an nnU-Net output (the first of a deep-supervision list, or the tensor)."""
    return output if isinstance(output, torch.Tensor) else output[0]


class MutualDistillationLoss(nn.Module):
    """Symmetric, temperature-softened KL between the fused prediction and each peer's prediction.

    Args:
        temperature: T > 0; T = 1 gives the plain KL of the softmax outputs.

    Raises:
        ValueError: for a non-positive temperature; in ``forward`` for no peers or shape mismatches.
    """

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, fused_logits: torch.Tensor, peer_logits: Sequence[torch.Tensor]) -> torch.Tensor:
        """Args: fused logits (B, K, *spatial); peer logits, a non-empty sequence of tensors of the same shape.

        Returns: the scalar loss (0 when every peer equals the fused prediction).
        """
        if len(peer_logits) == 0:
            raise ValueError("MutualDistillationLoss needs at least one peer prediction")
        for i, peer in enumerate(peer_logits):
            if peer.shape != fused_logits.shape:
                raise ValueError(f"peer {i} logits have shape {tuple(peer.shape)}, fused logits "
                                 f"{tuple(fused_logits.shape)}; they must be equal")
        t = self.temperature
        log_fused = F.log_softmax(fused_logits.float() / t, dim=1)
        total = fused_logits.new_zeros((), dtype=torch.float32)
        for peer in peer_logits:
            log_peer = F.log_softmax(peer.float() / t, dim=1)
            total = total + 0.5 * (_kl(log_fused.detach(), log_peer) + _kl(log_peer.detach(), log_fused))
        return total * (t * t) / len(peer_logits)


class MutualLearningLoss(nn.Module):
    """The MAML training loss: segmentation loss on the fused output and on every peer, plus weighted distillation.

    Args:
        segmentation_loss: nnU-Net's loss (DC+CE, wrapped for deep supervision when enabled), called as
            ``segmentation_loss(output, target)`` for the fused output and for each peer.
        distillation_weight: weight of :class:`MutualDistillationLoss` (>= 0; 0 switches it off).
        temperature: its temperature.

    After each call ``last_terms`` holds the detached terms: ``seg_fused``, ``seg_peers`` (their sum) and
    ``distillation`` (unweighted).
    """

    def __init__(self, segmentation_loss: nn.Module, distillation_weight: float = 0.0,
                 temperature: float = 1.0) -> None:
        super().__init__()
        if not distillation_weight >= 0:
            raise ValueError(f"distillation_weight must be >= 0, got {distillation_weight}")
        self.segmentation_loss = segmentation_loss
        self.distillation_weight = float(distillation_weight)
        self.distillation = MutualDistillationLoss(temperature)
        self.last_terms: Dict[str, torch.Tensor] = {}

    def forward(self, fused_output: Output, peer_outputs: Sequence[Output], target: Union[torch.Tensor, List]
                ) -> torch.Tensor:
        seg_fused = self.segmentation_loss(fused_output, target)
        seg_peers = sum((self.segmentation_loss(p, target) for p in peer_outputs), torch.zeros_like(seg_fused))
        total = seg_fused + seg_peers
        distillation = torch.zeros_like(seg_fused)
        if self.distillation_weight > 0 and len(peer_outputs) > 0:
            distillation = self.distillation(full_resolution(fused_output), [full_resolution(p) for p in peer_outputs])
            total = total + self.distillation_weight * distillation
        self.last_terms = {"seg_fused": seg_fused.detach(), "seg_peers": seg_peers.detach(),
                           "distillation": distillation.detach()}
        return total
