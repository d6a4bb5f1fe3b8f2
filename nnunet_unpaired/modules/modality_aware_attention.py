"""The modality-aware (MA) attention module of MAML: fuses the last decoder features of the modality-specific peers.

Source: Zhang, Yang, Tian, Shi, Zhong, Zhang, He, "Modality-aware Mutual Learning for Multi-modal Medical Image
Segmentation", MICCAI 2021 (arXiv 2107.09842); public code YaoZhang93/MAML (nnU-Net v1 fork, Apache-2.0).

What the module computes, for M modalities with feature maps F_1..F_M of C channels each (same spatial grid):

- a fused feature map F_f = conv(concat(F_1, ..., F_M)), a k x k convolution from M*C to C channels;
- per modality an attention map A_i = sigmoid(conv(nonlin(norm(conv(concat(F_i, F_f)))))), one value per voxel AND per
  channel, each modality with its own convolutions;
- the output: the attention-weighted combination of the modality features, here their mean over modalities,
  mean_i(A_i * F_i). The 1x1 convolution the paper applies next is the fused segmentation head, kept outside this
  module (:mod:`nnunet_unpaired.modules.maml_network`).

Deviations from the paper and its public code (documented in docs/maml.md):

- Missing modalities: pass ``None`` in place of a missing feature map. The fusion convolution then sees the available
  features scaled by M / (number available) and zeros for the missing ones, and the output is the mean over the
  available modalities only. With every modality present this equals the paper's formulation (the constant factor 1/M
  of the mean is absorbed by the following 1x1 convolution).
- Normalization and nonlinearity are those of the nnU-Net plans (instance norm + LeakyReLU by default), not fixed.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd


class ModalityAwareAttention(nn.Module):
    """Fuse M same-shaped feature maps with voxel- and channel-wise sigmoid attention (Zhang et al., MICCAI 2021).

    Args:
        channels: C, the number of channels of each modality's feature map (and of the output).
        num_modalities: M >= 2.
        conv_op: ``nn.Conv2d`` or ``nn.Conv3d``.
        norm_op: normalization class inside the attention branch (e.g. ``nn.InstanceNorm3d``); ``None`` for none.
        norm_op_kwargs: keyword arguments of ``norm_op``.
        nonlin: nonlinearity class inside the attention branch; default ``nn.LeakyReLU``.
        nonlin_kwargs: keyword arguments of ``nonlin``.
        kernel_size: odd kernel size of the fusion and attention convolutions (3 in the paper).

    Raises:
        ValueError: on fewer than two modalities, a non-positive channel count or an even kernel size.
    """

    def __init__(self, channels: int, num_modalities: int, conv_op: Type[_ConvNd],
                 norm_op: Optional[Type[nn.Module]] = None, norm_op_kwargs: Optional[dict] = None,
                 nonlin: Optional[Type[nn.Module]] = nn.LeakyReLU, nonlin_kwargs: Optional[dict] = None,
                 kernel_size: int = 3) -> None:
        super().__init__()
        if num_modalities < 2:
            raise ValueError(f"ModalityAwareAttention needs at least 2 modalities, got num_modalities={num_modalities}")
        if channels < 1:
            raise ValueError(f"channels must be positive, got {channels}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
        self.channels = channels
        self.num_modalities = num_modalities
        padding = kernel_size // 2
        self.fusion = conv_op(num_modalities * channels, channels, kernel_size, padding=padding)
        branches = []
        for _ in range(num_modalities):
            layers: List[nn.Module] = [conv_op(2 * channels, channels, kernel_size, padding=padding)]
            if norm_op is not None:
                layers.append(norm_op(channels, **(norm_op_kwargs or {})))
            if nonlin is not None:
                layers.append(nonlin(**(nonlin_kwargs or {})))
            layers.append(conv_op(channels, channels, kernel_size, padding=padding))
            branches.append(nn.Sequential(*layers))
        self.attention = nn.ModuleList(branches)

    def forward(self, features: Sequence[Optional[torch.Tensor]], return_attention: bool = False,
                weights: Optional[torch.Tensor] = None
                ) -> Union[torch.Tensor, Tuple[torch.Tensor, Dict[int, torch.Tensor]]]:
        """Fuse the available modalities.

        Args:
            features: M tensors of shape (B, C, *spatial), ``None`` for a missing modality (at least one present).
            return_attention: also return the attention maps {modality index: A_i}, each shaped like F_i.
            weights: optional (M,) tensor of 0/1 weights: the result equals passing ``None`` for the modalities of
                weight 0 (zero weight where a feature map is ``None``), but the computation is the same for every
                choice of weights, so a compiled network draws a modality subset without recompiling (each
                modality's attention branch runs; a weight of 0 removes its contribution and its gradients).

        Returns:
            mean over available i of A_i * F_i, shape (B, C, *spatial); with ``return_attention`` a tuple
            (output, attention maps).
        """
        if len(features) != self.num_modalities:
            raise ValueError(f"expected {self.num_modalities} feature maps (None for missing ones), "
                             f"got {len(features)}")
        available = [i for i, f in enumerate(features) if f is not None]
        if not available:
            raise ValueError("ModalityAwareAttention needs at least one available modality, all are None")
        reference = features[available[0]]
        for i in available:
            if features[i].shape != reference.shape or features[i].shape[1] != self.channels:
                raise ValueError(f"feature map {i} has shape {tuple(features[i].shape)}; expected "
                                 f"{tuple(reference.shape)} with {self.channels} channels")
        if weights is not None:
            if weights.shape != (self.num_modalities,):
                raise ValueError(f"weights must have shape ({self.num_modalities},), got {tuple(weights.shape)}")
            weights = weights.to(reference.dtype)
            count = weights.sum()
            scale = self.num_modalities / count
            return self._fuse(features, available, [weights[i] * scale for i in range(self.num_modalities)],
                              weights, count, return_attention)
        scale = self.num_modalities / len(available)
        return self._fuse(features, available, [scale] * self.num_modalities, None, len(available), return_attention)

    def _fuse(self, features: Sequence[Optional[torch.Tensor]], available: List[int], input_scales: Sequence,
              output_weights: Optional[torch.Tensor], denominator, return_attention: bool):
        """The body of ``forward``: modality i's features times ``input_scales[i]`` (zeros where missing) into the
        fusion convolution, each available modality's attention, and the sum of ``output_weights[i] * A_i * F_i``
        (no weight: ``A_i * F_i``) divided by ``denominator``. Without weights the scales are Python numbers; with
        0/1 weights they are tensors, so every subset runs the same graph (no recompilation)."""
        reference = features[available[0]]
        stacked = torch.cat([f * input_scales[i] if f is not None else torch.zeros_like(reference)
                             for i, f in enumerate(features)], dim=1)
        fused = self.fusion(stacked)
        maps: Dict[int, torch.Tensor] = {}
        output = None
        for i in available:
            attention = torch.sigmoid(self.attention[i](torch.cat((features[i], fused), dim=1)))
            maps[i] = attention
            weighted = attention * features[i] if output_weights is None else \
                output_weights[i] * attention * features[i]
            output = weighted if output is None else output + weighted
        output = output / denominator
        return (output, maps) if return_attention else output
