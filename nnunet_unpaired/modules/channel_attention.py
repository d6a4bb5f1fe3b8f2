"""Channel attention on a bottleneck feature map, as CMC puts it on each modality's bottleneck.

Source: Zhou, Sun, Deng, Chu, Dou, "Robust Semi-supervised Multimodal Medical Image Segmentation via Cross Modality
Collaboration", MICCAI 2024 (arXiv 2408.07341); the block is the channel attention of DANet (Fu et al., CVPR 2019).

For a feature map ``X`` of C channels over N voxels (rows of ``X`` are channels):

- energy ``E = X X^T`` (C x C), the channels' pairwise inner products;
- ``E' = rowmax(E) - E``, so that the LEAST similar channels get the largest weights (DANet's choice);
- ``A = softmax(E')`` over each row;
- output ``gamma * (A X) + X`` with a learnable scalar ``gamma`` that starts at 0, so the block is the identity at
  initialization and the network learns how much channel mixing to use.

Deviation (numerics only): the energy is computed in float32 even under mixed precision, because ``X X^T`` sums N
products and overflows float16 for ordinary bottleneck sizes.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ChannelAttention"]


class ChannelAttention(nn.Module):
    """DANet-style channel attention for 2D or 3D feature maps ``(B, C, *spatial)``; parameter: ``gamma`` (init 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The C x C attention matrix per sample, ``(B, C, C)``; every row sums to 1."""
        if x.dim() < 3:
            raise ValueError(f"expected a feature map (B, C, *spatial), got shape {tuple(x.shape)}")
        flat = x.flatten(2).float()
        energy = torch.bmm(flat, flat.transpose(1, 2))
        energy = energy.amax(dim=-1, keepdim=True) - energy
        return torch.softmax(energy, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            mixed = torch.bmm(self.attention(x), x.flatten(2).float()).view(x.shape)
            return (self.gamma * mixed + x.float()).to(x.dtype)
