"""External Attention Module (EAM) for unpaired multi-modal segmentation.

Paper: Yang, Zhu, Wang, Li, Zhang, "Toward Unpaired Multi-modal Medical Image Segmentation via Learning
Structured Semantic Consistency", MIDL 2023 (PMLR 227:1602-1622, 2024; arXiv 2206.10571).

What the paper states: one segmentation network is trained on unpaired CT and MR together; an external,
plug-and-play attention module holds class representations shared by both modalities and is used to align
the modalities' class semantics and their correlations; the module is discarded once training ends.

The paper's formulas were not available to us, so the formulation below is OUR DESIGN, written to match the
statement (docs/eam.md, "Formulation", gives each choice's reason; issue 15 the shortcut it replaces):

- the module reads one decoder feature map of each modality, ``F^A`` and ``F^B`` (B, C, *spatial), with the labels
  resized to that grid, and standardises both with ONE per-channel mean and standard deviation taken over the valid
  voxels of both batches (held constant in the backward pass): ``Z = (F - mu) / sigma``. Post-activation features
  are all positive, so raw cosines start near 1; after the common standardisation they do not, and a shift of one
  modality against the other stays visible (it is not centred away per modality);
- class representations are the NETWORK's label-masked class means ``R^m_k = mean_{v: y_v = k} Z^m_v`` (K, C), so a
  consistency loss on them measures the network's features and nothing the module can move;
- the external memory ``M`` (K x C, one slot per class, shared by the modalities) holds class anchors: the attention
  of a voxel over the slots is ``softmax_k(cos(Z_v, M_k) / tau)`` and is grounded on the labels (cross-entropy),
  which makes slot k attend to class k and pulls every voxel of class k, in both modalities, towards the same
  anchor. The logits are returned for that loss
  (:func:`nnunet_unpaired.losses.semantic_consistency.attention_grounding_loss`).

The module never changes the network's output and is a training-only extra (discarded at export).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_unpaired.losses.numerics import unit_vectors

__all__ = ["EAMOutput", "ExternalAttentionModule", "class_means", "class_present_mask", "labels_to_grid",
           "shared_standardization"]


class EAMOutput(NamedTuple):
    """What :class:`ExternalAttentionModule` returns for one modality's batch.

    Attributes:
        logits: attention logits (B, K, *spatial), ``cos(Z_v, M_k) / tau``; their softmax over K is the attention.
        class_repr: label-masked class means (K, C) of the standardised features, float32; zero rows where absent.
        present: boolean mask (K,), classes with at least one valid voxel in the batch (on the feature grid).
        labels: the labels on the feature grid (B, 1, *spatial), ``torch.long``.
    """

    logits: torch.Tensor
    class_repr: torch.Tensor
    present: torch.Tensor
    labels: torch.Tensor


def shared_standardization(
    features: Sequence[torch.Tensor], valid: Sequence[torch.Tensor], min_std: float = 1e-3
) -> tuple[torch.Tensor, torch.Tensor]:
    """One per-channel mean and standard deviation over the valid voxels of several feature maps (no gradient).

    Args:
        features: feature maps (B_i, C, *spatial_i) with the same C.
        valid: boolean masks (B_i, 1, *spatial_i), True for voxels that count.
        min_std: floor of the standard deviation (a constant channel is centred, not blown up).

    Returns:
        ``(mean, std)``, each float32 of shape (C,). With no valid voxel: mean 0, std 1.
    """
    with torch.no_grad(), torch.autocast(device_type=features[0].device.type, enabled=False):
        c = features[0].shape[1]
        total = torch.zeros(c, dtype=torch.float32, device=features[0].device)
        total_sq = torch.zeros_like(total)
        count = torch.zeros((), dtype=torch.float32, device=features[0].device)
        for feats, mask in zip(features, valid):
            flat = feats.float().transpose(0, 1).reshape(c, -1)
            weights = mask.float().reshape(-1)
            total += flat @ weights
            total_sq += flat.square() @ weights
            count += weights.sum()
        if count == 0:
            return torch.zeros_like(total), torch.ones_like(total)
        mean = total / count
        var = (total_sq / count - mean.square()).clamp(min=0.0)
        return mean, var.sqrt().clamp(min=min_std)


def class_means(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Label-masked mean feature of every class over a whole batch.

    Args:
        features: (B, C, *spatial), any floating dtype (computed in float32).
        labels: integer labels (B, 1, *spatial) on the same grid, values in ``[0, num_classes)`` where valid.
        num_classes: K.
        valid: boolean mask (B, 1, *spatial) of the voxels that count, or None (all).

    Returns:
        ``(means, present)``: float32 (K, C), zero rows for absent classes; boolean (K,).
    """
    with torch.autocast(device_type=features.device.type, enabled=False):
        c = features.shape[1]
        flat = features.float().transpose(0, 1).reshape(c, -1)  # (C, N)
        target = labels.long().reshape(-1)
        weights = torch.ones_like(target, dtype=torch.float32) if valid is None else valid.reshape(-1).float()
        onehot = F.one_hot(target.clamp(0, num_classes - 1), num_classes).float() * weights[:, None]  # (N, K)
        counts = onehot.sum(0)  # (K,)
        means = (flat @ onehot).transpose(0, 1) / counts.clamp(min=1.0)[:, None]
        return means, counts > 0


class ExternalAttentionModule(nn.Module):
    """External memory of class anchors over the network's standardised decoder features, for two modalities.

    Yang et al., MIDL 2023 (arXiv 2206.10571); formulation ours, see the module docstring.

    Args:
        in_channels: channels C of the decoder feature map the module reads (the memory slots have this width).
        num_classes: number of classes K including background (one memory slot per class).
        dim: spatial dimensionality of the feature maps, 2 or 3 (default 2).
        temperature: tau of the attention's cosine logits (default 0.1).
        ignore_index: nnU-Net's ignore label (voxels left out of every statistic), or None.

    Raises:
        ValueError: if an argument is out of range.
    """

    def __init__(self, in_channels: int, num_classes: int, dim: int = 2, temperature: float = 0.1,
                 ignore_index: int | None = None) -> None:
        super().__init__()
        for name, value, low in (("in_channels", in_channels, 1), ("num_classes", num_classes, 2)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if dim not in (2, 3) or isinstance(dim, bool):
            raise ValueError(f"dim must be 2 or 3, got {dim!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
                math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
            raise ValueError(f"ignore_index must be an integer or None, got {ignore_index!r}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.dim = dim
        self.temperature = float(temperature)
        self.ignore_index = ignore_index
        self.memory = nn.Parameter(torch.randn(num_classes, in_channels))

    def _check(self, features: torch.Tensor) -> None:
        if features.ndim != self.dim + 2 or features.shape[1] != self.in_channels:
            raise ValueError(
                f"features must have shape (B, {self.in_channels}, *spatial) with {self.dim} spatial dims, "
                f"got {tuple(features.shape)}"
            )

    def forward(self, features_a: torch.Tensor, labels_a: torch.Tensor, features_b: torch.Tensor,
                labels_b: torch.Tensor) -> tuple[EAMOutput, EAMOutput]:
        """Attention logits and class representations of a batch of each modality.

        Args:
            features_a: decoder feature map of modality A's batch (B, C, *spatial).
            labels_a: labels of that batch (B, 1, *spatial'), any resolution (resized to the feature grid by
                nearest neighbour).
            features_b: decoder feature map of modality B's batch.
            labels_b: labels of B's batch.

        Returns:
            ``(out_a, out_b)``, one :class:`EAMOutput` per modality.

        Raises:
            ValueError: on ill-shaped inputs or label values outside ``[0, K)`` that are not the ignore label.
        """
        grids, valids = [], []
        for features, labels in ((features_a, labels_a), (features_b, labels_b)):
            self._check(features)
            grid = labels_to_grid(labels, features.shape[2:])
            if grid.shape[0] != features.shape[0]:
                raise ValueError(f"labels and features must have the same batch size, got {grid.shape[0]} and "
                                 f"{features.shape[0]}")
            class_present_mask(grid, self.num_classes, self.ignore_index)  # raises on values out of range
            grids.append(grid)
            valids.append(torch.ones_like(grid, dtype=torch.bool) if self.ignore_index is None
                          else grid != self.ignore_index)
        mean, std = shared_standardization((features_a, features_b), valids)
        anchors = unit_vectors(self.memory, dim=1)  # (K, C)
        outputs = []
        for features, grid, valid in zip((features_a, features_b), grids, valids):
            with torch.autocast(device_type=features.device.type, enabled=False):
                shape = [1, -1] + [1] * self.dim
                z = (features.float() - mean.reshape(shape)) / std.reshape(shape)  # (B, C, *spatial)
                means, present = class_means(z, grid, self.num_classes, valid)  # ignored voxels weigh 0
                logits = torch.einsum("bc...,kc->bk...", unit_vectors(z, dim=1), anchors) / self.temperature
            outputs.append(EAMOutput(logits=logits, class_repr=means, present=present, labels=grid))
        return outputs[0], outputs[1]

    @torch.no_grad()
    def attention(self, logits: torch.Tensor) -> torch.Tensor:
        """The attention of every voxel over the slots, ``softmax_k`` of the logits (B, K, *spatial)."""
        return torch.softmax(logits.float(), dim=1)


def labels_to_grid(labels: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """Resize a label map to a feature map's grid by nearest neighbour.

    Args:
        labels: label map (B, 1, *spatial) of integer class values (float tensors holding integers, as
            nnU-Net's targets are, are accepted).
        spatial_shape: the target spatial shape, e.g. ``features.shape[2:]``.

    Returns:
        Integer (``torch.long``) labels (B, 1, *spatial_shape) on the input's device; the input's values
        unchanged when the shape already matches.

    Raises:
        ValueError: if ``labels`` is not (B, 1, *spatial) or the number of spatial dims differs.
    """
    spatial_shape = tuple(int(s) for s in spatial_shape)
    if labels.ndim < 3 or labels.shape[1] != 1 or labels.ndim - 2 != len(spatial_shape):
        raise ValueError(
            f"labels must have shape (B, 1, *spatial) with {len(spatial_shape)} spatial dims to match "
            f"{spatial_shape}, got {tuple(labels.shape)}"
        )
    if tuple(labels.shape[2:]) == spatial_shape:
        return labels.long()
    # "nearest" on integer-valued floats returns the exact label values.
    return F.interpolate(labels.float(), size=spatial_shape, mode="nearest").long()


def class_present_mask(labels: torch.Tensor, num_classes: int, ignore_index: int | None = None) -> torch.Tensor:
    """Which classes have at least one voxel in a modality's batch.

    Args:
        labels: integer label map (B, 1, *spatial), or any shape holding class values.
        num_classes: number of classes K.
        ignore_index: label value that marks voxels to ignore (not counted), or None.

    Returns:
        Boolean mask (K,) on the labels' device, True where the class occurs.

    Raises:
        ValueError: if a label value lies outside ``[0, num_classes)`` and is not ``ignore_index``.
    """
    values = labels.long().reshape(-1)
    if ignore_index is not None:
        values = values[values != ignore_index]
    if values.numel() and (values.min() < 0 or values.max() >= num_classes):
        raise ValueError(
            f"label values must lie in [0, {num_classes}) or equal ignore_index={ignore_index}, "
            f"got values in [{int(values.min())}, {int(values.max())}]"
        )
    return torch.bincount(values, minlength=num_classes)[:num_classes] > 0
