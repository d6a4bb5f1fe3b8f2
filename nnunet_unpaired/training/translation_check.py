"""A label-free check of GLUA's stage-1 translation (issue 16): did the translated source images take on the target's
intensity distribution?

Without target labels one can still compare distributions: the 1-D Wasserstein distance between the intensities of
the translated source images and those of target images, next to the same distance for the untranslated source
images. A translation that learned the target's contrast brings the ratio ``translated / source`` well below 1; a
translator that stayed near the identity (issue 16: "a blurred copy of the source") leaves it near 1. The distances
are computed on nnU-Net's normalised patches, in units of the target intensities' standard deviation.

On the project's phantom (whose rendering is known) a second, label-based check uses the SOURCE labels only: the
order of the structures' mean intensities in the translated images against the order the target rendering gives them
(Kendall's tau: 1 = the target's order, -1 = reversed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

__all__ = ["contrast_order_agreement", "intensity_distance", "translation_check"]

QUANTILES = np.linspace(0.005, 0.995, 100)


def intensity_distance(a: torch.Tensor, b: torch.Tensor, scale: float | None = None) -> float:
    """1-D Wasserstein-1 distance between the intensity distributions of ``a`` and ``b`` (any shapes), estimated as
    the mean absolute difference of 100 matching quantiles (0.5 % .. 99.5 %), divided by ``scale`` (default: the
    standard deviation of ``b``; 1 if it is 0)."""
    x = a.detach().float().flatten().cpu().numpy()
    y = b.detach().float().flatten().cpu().numpy()
    if not x.size or not y.size:
        raise ValueError("intensity_distance needs two non-empty tensors")
    if scale is None:
        scale = float(y.std()) or 1.0
    return float(np.abs(np.quantile(x, QUANTILES) - np.quantile(y, QUANTILES)).mean() / scale)


def translation_check(source: torch.Tensor, translated: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """``source_to_target`` and ``translated_to_target`` distances and their ratio (< 1: closer to the target)."""
    before = intensity_distance(source, target)
    after = intensity_distance(translated, target)
    return {"source_to_target": before, "translated_to_target": after,
            "ratio": after / before if before > 0 else math.nan}


def contrast_order_agreement(translated: torch.Tensor, labels: torch.Tensor,
                             expected: Mapping[int, float]) -> float:
    """Kendall's tau between the structures' mean intensities in ``translated`` (B, 1, *spatial) under the source
    ``labels`` (B, 1, *spatial, integer values) and the ``expected`` target values (label -> value). NaN when fewer
    than two of the expected structures are present."""
    from scipy.stats import kendalltau

    image = translated.detach().float().cpu()
    lab = labels.detach().long().cpu()
    if lab.shape != image.shape:
        raise ValueError(f"translated images and labels must have the same shape, got {tuple(image.shape)} and "
                         f"{tuple(lab.shape)}")
    present: Sequence[int] = [k for k in sorted(expected) if bool((lab == k).any())]
    if len(present) < 2:
        return math.nan
    measured = [float(image[lab == k].mean()) for k in present]
    tau = kendalltau(measured, [expected[k] for k in present]).statistic
    return float(tau)
