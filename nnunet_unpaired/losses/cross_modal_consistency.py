"""CMC's two unlabelled-data losses: channel-wise semantic consistency (CSC) and anatomical consistency (CAC).

Source: Zhou, Sun, Deng, Chu, Dou, "Robust Semi-supervised Multimodal Medical Image Segmentation via Cross Modality
Collaboration", MICCAI 2024 (arXiv 2408.07341); public code med-air/CMC (MIT).

CSC (:class:`ChannelSemanticConsistencyLoss`): the bottleneck channels of the two modalities are contrasted with the
NT-Xent loss (InfoNCE over a symmetric batch, as in SimCLR): channel c of modality A and channel c of modality B are a
positive pair, every other channel of either modality is a negative. Each channel is represented by a descriptor
vector; two descriptors are available:

- ``"spatial"``: the channel's own feature map, flattened (per sample; A and B must have the same shape). This is
  the public code's choice and compares voxels, so it assumes the two samples are aligned.
- ``"gram"`` (our default for unpaired or misaligned data): the channel's correlations with all OTHER channels, i.e.
  row c of the Pearson correlation matrix of the channels over all voxels of the batch, diagonal removed. It does not
  depend on where anything lies in the image (any spatial permutation of the voxels leaves it unchanged), so it is
  defined for unpaired batches of different patients and is robust to misalignment by construction.

Loss for C channels and temperature tau, with ``z`` the 2C unit-normalized descriptors (A's then B's) and
``s_ij = z_i . z_j / tau``: ``mean_i -log(exp(s_{i,p(i)}) / sum_{j != i} exp(s_ij))``, ``p(i) = (i + C) mod 2C``.

CAC (:class:`AnatomicalConsistencyLoss`): ``1 - mean_k Dice_k(P^A, P^B)`` with the squared-denominator soft Dice
``Dice_k = (2 sum P^A_k P^B_k + s) / (sum (P^A_k)^2 + sum (P^B_k)^2 + s)`` between the two modalities' class
probabilities. It is 0 exactly when the two agree. Modes:

- ``"voxel"``: sums over the voxels of each sample pair (the public code's form; assumes aligned samples);
- ``"pooled"`` (our default for unpaired data): each modality's probabilities are first averaged over the batch and
  all voxels, giving its predicted class composition (fraction of the field of view per structure); the Dice is
  taken between the two composition vectors. Invariant to misalignment; needs no pairing.

Deviations from the public code (fixes, see METHODS.md): CAC is a loss (1 - similarity), not a similarity added to
the loss; nothing here detaches its inputs, so gradients reach both modalities' networks.

Numerics: both losses run in float32 with autocast off. CSC's normalisations use
:func:`nnunet_unpaired.losses.numerics.unit_vectors` (a vector no longer than 1e-4, e.g. a constant channel, has no
direction and passes no gradient) instead of ``F.normalize(eps=1e-8)``, whose gradient for a constant channel was
~1e13, non-finite in fp16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_unpaired.losses.numerics import unit_vectors

__all__ = ["AnatomicalConsistencyLoss", "ChannelSemanticConsistencyLoss", "channel_descriptors", "nt_xent"]

CSC_DESCRIPTORS = ("gram", "spatial")
CAC_MODES = ("pooled", "voxel")


def channel_descriptors(features: torch.Tensor, descriptor: str) -> torch.Tensor:
    """Descriptor vectors of the channels of a feature map ``(B, C, *spatial)``.

    Returns:
        ``(G, C, D)``: G groups of C channel descriptors. ``"spatial"``: G = B, D = number of voxels.
        ``"gram"``: G = 1, D = C (row c of the channel correlation matrix over the whole batch, diagonal zeroed;
        a constant channel, which has no correlation, gets a zero row). Computed in float32 with autocast off.
    """
    if features.dim() < 3:
        raise ValueError(f"expected features (B, C, *spatial), got shape {tuple(features.shape)}")
    if descriptor == "spatial":
        return features.flatten(2)
    if descriptor == "gram":
        channels = features.shape[1]
        with torch.autocast(device_type=features.device.type, enabled=False):
            flat = features.float().transpose(0, 1).reshape(channels, -1)
            flat = unit_vectors(flat - flat.mean(dim=1, keepdim=True), dim=1)
            correlation = flat @ flat.t()
            off_diagonal = ~torch.eye(channels, dtype=torch.bool, device=features.device)
            return (correlation * off_diagonal)[None]
    raise ValueError(f"descriptor must be one of {CSC_DESCRIPTORS}, got {descriptor!r}")


def nt_xent(u: torch.Tensor, v: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent between ``u`` and ``v`` of shape ``(G, C, D)``: u[g, c] and v[g, c] are positives; mean over G and 2C.

    Float32 with autocast off; a descriptor no longer than 1e-4 (e.g. an all-zero channel) is treated as a zero vector
    with no gradient (:func:`nnunet_unpaired.losses.numerics.unit_vectors`)."""
    if u.shape != v.shape:
        raise ValueError(f"descriptors of A and B differ in shape: {tuple(u.shape)} vs {tuple(v.shape)}")
    groups, channels = u.shape[0], u.shape[1]
    if channels < 2:
        raise ValueError(f"the contrastive loss needs at least 2 channels to contrast, got {channels}")
    with torch.autocast(device_type=u.device.type, enabled=False):
        z = unit_vectors(torch.cat((u, v), dim=1), dim=2)
        logits = z @ z.transpose(1, 2) / temperature
        self_pairs = torch.eye(2 * channels, dtype=torch.bool, device=z.device)
        logits = logits.masked_fill(self_pairs, float("-inf"))
        positives = (torch.arange(2 * channels, device=z.device) + channels) % (2 * channels)
        return F.cross_entropy(logits.reshape(groups * 2 * channels, 2 * channels), positives.repeat(groups))


class ChannelSemanticConsistencyLoss(nn.Module):
    """CSC: contrastive consistency of the bottleneck channels of modality A and B (see the module docstring).

    Args:
        temperature: softmax temperature tau of NT-Xent (0.5 in the public code).
        descriptor: ``"gram"`` (misalignment-invariant, default) or ``"spatial"`` (the public code's, aligned pairs).

    Raises:
        ValueError: for a temperature that is not > 0 or an unknown descriptor.

    Numerics: float32 with autocast off; a constant (or all-zero) channel passes no gradient instead of ~1e13, so
    the loss and its gradients stay finite under fp16 / bf16 autocast.
    """

    def __init__(self, temperature: float = 0.5, descriptor: str = "gram") -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if descriptor not in CSC_DESCRIPTORS:
            raise ValueError(f"descriptor must be one of {CSC_DESCRIPTORS}, got {descriptor!r}")
        self.temperature = float(temperature)
        self.descriptor = descriptor

    def forward(self, features_a: torch.Tensor, features_b: torch.Tensor) -> torch.Tensor:
        """Args: bottleneck features ``(B, C, *spatial)`` of A and of B (same C; same shape for ``"spatial"``)."""
        if features_a.shape[1] != features_b.shape[1]:
            raise ValueError(f"A and B have different channel counts: {features_a.shape[1]} vs {features_b.shape[1]}")
        with torch.autocast(device_type=features_a.device.type, enabled=False):
            u = channel_descriptors(features_a.float(), self.descriptor)
            v = channel_descriptors(features_b.float(), self.descriptor)
            return nt_xent(u, v, self.temperature)


class AnatomicalConsistencyLoss(nn.Module):
    """CAC: ``1 - mean_k soft Dice`` between the class probabilities of modality A and B (module docstring).

    Args:
        mode: ``"pooled"`` (class compositions, no pairing needed; default) or ``"voxel"`` (aligned pairs).
        smooth: added to numerator and denominator of every Dice (a class absent from both gives Dice 1).

    Raises:
        ValueError: for an unknown mode or a negative ``smooth``.
    """

    def __init__(self, mode: str = "pooled", smooth: float = 1e-5) -> None:
        super().__init__()
        if mode not in CAC_MODES:
            raise ValueError(f"mode must be one of {CAC_MODES}, got {mode!r}")
        if not smooth >= 0:
            raise ValueError(f"smooth must be >= 0, got {smooth!r}")
        self.mode = mode
        self.smooth = float(smooth)

    def forward(self, probs_a: torch.Tensor, probs_b: torch.Tensor) -> torch.Tensor:
        """Args: class probabilities (softmax outputs) ``(B, K, *spatial)`` of A and of B (same K; same shape for
        ``"voxel"``). Returns a scalar in [0, 1] for probabilities."""
        if probs_a.dim() < 3 or probs_a.shape[1] != probs_b.shape[1]:
            raise ValueError(f"expected probabilities (B, K, *spatial) with the same K, got {tuple(probs_a.shape)} "
                             f"and {tuple(probs_b.shape)}")
        with torch.autocast(device_type=probs_a.device.type, enabled=False):
            a, b = probs_a.float(), probs_b.float()
            if self.mode == "pooled":
                a = a.transpose(0, 1).flatten(1).mean(dim=1)[None, :, None]
                b = b.transpose(0, 1).flatten(1).mean(dim=1)[None, :, None]
            else:
                if a.shape != b.shape:
                    raise ValueError(f"voxel-wise CAC needs aligned predictions of one shape, got {tuple(a.shape)} "
                                     f"and {tuple(b.shape)}; use mode='pooled' for unpaired data")
                a, b = a.flatten(2), b.flatten(2)
            dice = (2 * (a * b).sum(-1) + self.smooth) / ((a * a).sum(-1) + (b * b).sum(-1) + self.smooth)
            return 1 - dice.mean()
