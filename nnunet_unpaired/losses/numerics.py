"""Numerical helpers shared by the losses, so that they stay finite under fp16 and bf16 mixed precision."""

from __future__ import annotations

import torch

__all__ = ["UNIT_EPS", "unit_vectors"]

UNIT_EPS = 1e-4
"""Length below which a vector counts as having no direction; close to fp16's smallest normal number (6.1e-5)."""


def unit_vectors(x: torch.Tensor, dim: int, eps: float = UNIT_EPS) -> torch.Tensor:
    """``x / |x|`` along ``dim`` in float32; exactly 0, with a zero gradient, where ``|x| <= eps``.

    ``F.normalize(x, eps=e)`` returns ``x / e`` for a vector shorter than ``e``, with a gradient of ``1 / e``: with
    ``e = 1e-8`` a constant feature channel gets gradients of about 1e8 per normalisation (1e13 through two nested
    ones), far past fp16's largest number (65504), so a GradScaler skips every step. Here a vector no longer than
    ``eps`` has no direction and passes no gradient; a longer one gets the same value as ``F.normalize`` (the same
    operations) and a gradient of at most about ``1 / eps``.

    Args:
        x: any tensor (any floating dtype; computed in float32).
        dim: the axis along which the vectors lie.
        eps: length at or below which a vector is treated as zero (> 0).

    Returns:
        A float32 tensor of ``x``'s shape.
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.float()
        norm = x.norm(2, dim, keepdim=True)
        return torch.where(norm > eps, x / norm.clamp(min=eps), torch.zeros_like(x))
