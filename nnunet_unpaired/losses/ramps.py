"""Loss-weight schedules over training: a sigmoid-shaped warm-up and a cosine ramp-down.

The warm-up ``exp(-5 (1 - t)^2)`` is the usual ramp-up of consistency weights in semi-supervised learning
(Laine and Aila, "Temporal Ensembling for Semi-Supervised Learning", ICLR 2017); CMC (Zhou et al., MICCAI 2024)
ramps its contrastive weight up with it and its prediction-consistency weight down with a cosine. The EAM
trainer (Yang et al., MIDL 2023) uses the warm-up for ``w(t)``. Both take the epoch as a float so that a
trainer can also pass fractional progress.
"""

from __future__ import annotations

import math
import numbers

__all__ = ["cosine_rampdown", "warmup_ramp"]


def _check(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def warmup_ramp(epoch: float, warmup_epochs: float) -> float:
    """Sigmoid-shaped warm-up ``exp(-5 (1 - t)^2)`` with ``t = min(epoch / warmup_epochs, 1)``.

    Args:
        epoch: current epoch (0-based; fractions allowed).
        warmup_epochs: length of the warm-up; 0 means no warm-up (always 1).

    Returns:
        A weight in (0, 1]: ``exp(-5) ~= 0.0067`` at epoch 0, rising to 1 at ``warmup_epochs`` and staying 1.

    Raises:
        ValueError: if an argument is negative or not a finite number.
    """
    _check("epoch", epoch)
    _check("warmup_epochs", warmup_epochs)
    if warmup_epochs == 0:
        return 1.0
    t = min(epoch / warmup_epochs, 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


def cosine_rampdown(epoch: float, rampdown_epochs: float) -> float:
    """Cosine ramp-down ``(cos(pi t) + 1) / 2`` with ``t = min(epoch / rampdown_epochs, 1)``.

    Args:
        epoch: current epoch (0-based; fractions allowed).
        rampdown_epochs: length of the ramp-down, > 0 (usually the number of training epochs).

    Returns:
        A weight in [0, 1]: 1 at epoch 0, 0.5 half-way, 0 from ``rampdown_epochs`` on.

    Raises:
        ValueError: if ``epoch`` is negative, ``rampdown_epochs`` is not > 0, or either is not a finite number.
    """
    _check("epoch", epoch)
    _check("rampdown_epochs", rampdown_epochs)
    if rampdown_epochs == 0:
        raise ValueError(f"rampdown_epochs must be > 0, got {rampdown_epochs!r}")
    t = min(epoch / rampdown_epochs, 1.0)
    return 0.5 * (math.cos(math.pi * t) + 1.0)
