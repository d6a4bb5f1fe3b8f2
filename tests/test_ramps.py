"""Loss-weight schedules: sigmoid-shaped warm-up and cosine ramp-down."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from nnunet_unpaired.losses.ramps import cosine_rampdown, warmup_ramp


@pytest.mark.parametrize(
    "epoch, expected",
    [(0, math.exp(-5.0)), (5, math.exp(-1.25)), (7.5, math.exp(-5 * 0.25**2)), (10, 1.0), (250, 1.0)],
)
def test_warmup_values(epoch: float, expected: float) -> None:
    assert warmup_ramp(epoch, 10) == pytest.approx(expected, rel=1e-12)


def test_warmup_is_near_zero_at_start_monotone_and_one_after() -> None:
    values = [warmup_ramp(e, 20) for e in np.linspace(0, 30, 61)]
    assert values[0] < 0.01
    assert all(b >= a for a, b in itertools.pairwise(values))
    assert values[-1] == 1.0


def test_no_warmup_is_always_one() -> None:
    assert warmup_ramp(0, 0) == 1.0 and warmup_ramp(17, 0) == 1.0


@pytest.mark.parametrize("epoch, expected", [(0, 1.0), (25, 0.5 * (math.cos(math.pi / 4) + 1)), (50, 0.5), (100, 0.0)])
def test_cosine_rampdown_values(epoch: float, expected: float) -> None:
    assert cosine_rampdown(epoch, 100) == pytest.approx(expected, abs=1e-12)


def test_cosine_rampdown_stays_zero_after_the_end() -> None:
    assert cosine_rampdown(150, 100) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "3", True])
def test_invalid_arguments_raise(bad: object) -> None:
    with pytest.raises(ValueError, match="epoch"):
        warmup_ramp(bad, 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="warmup_epochs"):
        warmup_ramp(1, bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="epoch"):
        cosine_rampdown(bad, 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rampdown_epochs"):
        cosine_rampdown(1, bad)  # type: ignore[arg-type]


def test_zero_length_rampdown_raises() -> None:
    with pytest.raises(ValueError, match="rampdown_epochs"):
        cosine_rampdown(0, 0)
