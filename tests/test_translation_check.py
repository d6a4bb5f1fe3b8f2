"""The label-free check of GLUA's stage-1 translation (issue 16 item 3)."""

from __future__ import annotations

import math

import pytest
import torch

from nnunet_unpaired.training.translation_check import (contrast_order_agreement, intensity_distance,
                                                        translation_check)


def _sample(n=20000, seed=0, loc=0.0, scale=1.0):
    return loc + scale * torch.randn(n, generator=torch.Generator().manual_seed(seed))


def test_distance_hand_values_and_limits():
    target = _sample(seed=1)
    assert intensity_distance(target, target) == 0.0
    # a constant shift c moves every quantile by c: distance c / std(target)
    shifted = intensity_distance(target + 1.5, target)
    assert shifted == pytest.approx(1.5 / float(target.std(unbiased=False)), rel=1e-3)
    assert intensity_distance(_sample(seed=2), target) < 0.05  # same distribution, other draw
    assert intensity_distance(torch.zeros(3), torch.zeros(3)) == 0.0  # std 0: scale 1
    with pytest.raises(ValueError):
        intensity_distance(torch.zeros(0), target)


def test_collapse_to_the_target_mean_is_not_a_match():
    """A translator that outputs the target's mean everywhere must not score like one that matches the distribution
    (W1 of a constant at the mean of a unit normal is E|Y| = 0.80 standard deviations)."""
    target = _sample(seed=3)
    collapsed = torch.full_like(target, float(target.mean()))
    assert intensity_distance(collapsed, target) == pytest.approx(math.sqrt(2 / math.pi), rel=0.03)


def test_ratio_separates_identity_from_a_translation():
    source, target = _sample(seed=4, loc=-1.0, scale=0.5), _sample(seed=5, loc=1.0, scale=2.0)
    identity = translation_check(source, source, target)
    assert identity["ratio"] == pytest.approx(1.0) and identity["source_to_target"] > 0.5
    mapped = translation_check(source, (source + 1.0) * 4.0 + 1.0, target)  # the affine map onto the target's law
    assert mapped["ratio"] < 0.05
    inverted = translation_check(source, -(source + 1.0) * 4.0 + 1.0, target)  # also the target's law: label-free
    assert inverted["ratio"] < 0.05  # cannot tell an inversion from a match; the phantom order check can


def test_contrast_order_agreement():
    labels = torch.tensor([[[[1, 1, 2, 2, 3, 3, 0, 0]]]])
    image = torch.tensor([[[[5.0, 5.0, 3.0, 3.0, 1.0, 1.0, 9.0, 9.0]]]])
    assert contrast_order_agreement(image, labels, {1: 50.0, 2: 30.0, 3: 10.0}) == pytest.approx(1.0)
    assert contrast_order_agreement(image, labels, {1: 10.0, 2: 30.0, 3: 50.0}) == pytest.approx(-1.0)
    assert math.isnan(contrast_order_agreement(image, labels, {1: 1.0, 4: 2.0}))  # label 4 absent: one structure
    with pytest.raises(ValueError, match="same shape"):
        contrast_order_agreement(image, labels[..., :4], {1: 1.0, 2: 2.0})
