"""External Attention Module (EAM) for unpaired multi-modal segmentation.

Paper: Yang, Zhu, Wang, Li, Zhang, "Toward Unpaired Multi-modal Medical Image Segmentation via Learning
Structured Semantic Consistency", MIDL 2023 (PMLR 227:1602-1622, 2024; arXiv 2206.10571).

What the paper states: one segmentation network is trained on unpaired CT and MR together; an external,
plug-and-play attention module holds class representations shared by both modalities and is used to align
the modalities' class semantics and their correlations; the module is discarded once training ends.

The paper's formulas were not available to us, so the formulation below is OUR DESIGN, written to match the
statement (see docs/METHODS.md, "Adopted formulation"):

- a 1x1 convolution projects a decoder feature map ``F`` (B, C, *spatial) to ``P`` (B, C', *spatial);
- a learnable external memory ``M`` (K x C', one slot per class, shared by the modalities) gives attention
  logits ``S = M P`` at every voxel (plain dot product, no scaling);
- the attention of slot k is ``softmax`` of ``S_k`` over ALL voxels of ALL samples of the batch pooled
  together (a class may be present in only some samples of a modality's batch), and the class
  representation is the attention-weighted sum of the projected features: ``R_k = sum_v softmax_v(S_k) P_v``;
- the logits ``S`` are returned so that the loss can ground slot k on class k with the labels
  (:func:`nnunet_unpaired.losses.semantic_consistency.attention_grounding_loss`).

Deviations / open choices (ours): a single softmax over voxels (no second, external-attention style
normalisation over slots); the module reads ONE feature map, so reading several decoder stages means one
module per stage (which stage(s), the width C' and the loss weights are chosen by the trainer; the default
width is ``embed_dim=64``). The module is a training-only extra: it never changes the network's output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["EAMOutput", "ExternalAttentionModule", "class_present_mask", "labels_to_grid"]


class EAMOutput(NamedTuple):
    """What :class:`ExternalAttentionModule` returns for one modality's batch.

    Attributes:
        logits: attention logits ``S`` (B, K, *spatial), one channel per class slot; supervised by the labels.
        class_repr: class representations ``R`` (K, C'), pooled over the whole batch, always float32.
    """

    logits: torch.Tensor
    class_repr: torch.Tensor


class ExternalAttentionModule(nn.Module):
    """External memory of class slots that turns a decoder feature map into per-class representations.

    Yang et al., MIDL 2023 (arXiv 2206.10571); formulation ours, see the module docstring.

    Args:
        in_channels: channels C of the decoder feature map the module reads.
        num_classes: number of classes K including background (one memory slot per class).
        embed_dim: width C' of the projection and of the memory slots (default 64).
        dim: spatial dimensionality of the feature maps, 2 or 3 (default 2).

    Raises:
        ValueError: if an argument is not a positive integer or ``dim`` is not 2 or 3.
    """

    def __init__(self, in_channels: int, num_classes: int, embed_dim: int = 64, dim: int = 2) -> None:
        super().__init__()
        for name, value, low in (
            ("in_channels", in_channels, 1),
            ("num_classes", num_classes, 2),
            ("embed_dim", embed_dim, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if dim not in (2, 3) or isinstance(dim, bool):
            raise ValueError(f"dim must be 2 or 3, got {dim!r}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.dim = dim
        conv = nn.Conv2d if dim == 2 else nn.Conv3d
        self.proj = conv(in_channels, embed_dim, kernel_size=1)
        self.memory = nn.Parameter(torch.empty(num_classes, embed_dim))
        nn.init.normal_(self.memory, std=embed_dim**-0.5)

    def forward(self, features: torch.Tensor) -> EAMOutput:
        """Attention logits and class representations for one modality's batch.

        Args:
            features: decoder feature map (B, C, *spatial) with ``len(spatial) == dim``.

        Returns:
            :class:`EAMOutput` with ``logits`` (B, K, *spatial) and ``class_repr`` (K, C').

        Raises:
            ValueError: if ``features`` does not have ``dim + 2`` dimensions or ``in_channels`` channels.
        """
        if features.ndim != self.dim + 2 or features.shape[1] != self.in_channels:
            raise ValueError(
                f"features must have shape (B, {self.in_channels}, *spatial) with {self.dim} spatial dims, "
                f"got {tuple(features.shape)}"
            )
        projected = self.proj(features)  # (B, C', *spatial)
        b, c = projected.shape[:2]
        flat = projected.reshape(b, c, -1)  # (B, C', N)
        logits = torch.einsum("kc,bcn->bkn", self.memory, flat)  # (B, K, N)
        # Pool every voxel of every sample: softmax over B*N per slot, then the weighted sum of features.
        # In float32 even under mixed precision: the consistency losses compare nearly equal vectors.
        with torch.autocast(device_type=features.device.type, enabled=False):
            pooled_logits = logits.transpose(0, 1).reshape(self.num_classes, -1).float()  # (K, B*N)
            attention = torch.softmax(pooled_logits, dim=1)
            pooled_feats = flat.transpose(1, 2).reshape(-1, c).float()  # (B*N, C')
            class_repr = attention @ pooled_feats  # (K, C'), float32
        return EAMOutput(logits=logits.reshape(b, self.num_classes, *projected.shape[2:]), class_repr=class_repr)


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
