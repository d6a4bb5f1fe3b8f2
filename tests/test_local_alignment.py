"""GLUA local alignment: feature discriminator shapes (2D/3D), the gap mask (hand-computed values, limit cases,
monotonicity), a trained discriminator scores source above target, and the decoder feature tap on nnU-Net's U-Net."""

from __future__ import annotations

import math

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet

from nnunet_unpaired.losses.adversarial import AdversarialLoss
from nnunet_unpaired.modules.local_alignment import DecoderFeatureTap, FeatureDiscriminator, gap_mask


@pytest.mark.parametrize("dim,size", [(2, (12, 10)), (3, (4, 6, 8))])
def test_discriminator_keeps_resolution(dim, size):
    disc = FeatureDiscriminator(dim, in_channels=5, width=4)
    assert disc(torch.randn(2, 5, *size)).shape == (2, 1, *size)
    with pytest.raises(ValueError, match="spatial axes"):
        disc(torch.randn(2, 5, 6))


def test_discriminator_rejects_bad_arguments():
    with pytest.raises(ValueError, match="dim"):
        FeatureDiscriminator(1, 4)
    with pytest.raises(ValueError, match=">= 1"):
        FeatureDiscriminator(2, 0)


def test_gap_mask_hand_computed():
    # logits (0, ln 3): sigmoid (1/2, 3/4) -> gap (1/2, 1/4); gamma 1 -> divided by the mean 3/8 -> (4/3, 2/3)
    logits = torch.tensor([0.0, math.log(3)]).view(1, 1, 2)
    torch.testing.assert_close(gap_mask(logits, 1.0).flatten(), torch.tensor([4 / 3, 2 / 3]))
    # gamma 2: (1/4, 1/16), mean 5/32 -> (8/5, 2/5)
    torch.testing.assert_close(gap_mask(logits, 2.0).flatten(), torch.tensor([8 / 5, 2 / 5]))


def test_gap_mask_limits_and_properties():
    torch.manual_seed(0)
    logits = torch.randn(3, 1, 5, 5, requires_grad=True)
    torch.testing.assert_close(gap_mask(logits, 0.0), torch.ones(3, 1, 5, 5))  # gamma 0: plain alignment
    mask = gap_mask(logits, 1.5)
    assert mask.shape == logits.shape and not mask.requires_grad
    torch.testing.assert_close(mask.mean(dim=(1, 2, 3)), torch.ones(3))  # mean 1 per sample
    # grows with the gap: the more confidently a location is judged target (low logit), the larger its weight
    order = torch.argsort(logits.detach().flatten(1), dim=1)
    weights = mask.flatten(1).gather(1, order)
    assert (weights[:, 1:] <= weights[:, :-1] + 1e-6).all()
    # all locations indistinguishable from source: no division by zero
    assert torch.isfinite(gap_mask(torch.full((1, 1, 2, 2), 80.0), 1.0)).all()
    with pytest.raises(ValueError, match="gamma"):
        gap_mask(logits, -1.0)
    with pytest.raises(ValueError, match="logits"):
        gap_mask(torch.zeros(3, 4), 1.0)


def test_trained_discriminator_scores_source_above_target_and_mask_marks_the_gap():
    """Source features are noise; target features are noise plus an offset in the right half only (a local gap).
    After training, source locations score above target locations, and the mask puts the weight where the gap is."""
    torch.manual_seed(0)
    disc = FeatureDiscriminator(2, in_channels=3, width=8)
    optimizer = torch.optim.Adam(disc.parameters(), lr=1e-2)
    gan = AdversarialLoss("bce")

    def batch():
        source = torch.randn(4, 3, 8, 8)
        target = torch.randn(4, 3, 8, 8)
        target[..., 4:] += 3.0
        return source, target

    for _ in range(25):
        source, target = batch()
        loss = gan.discriminator_loss(disc(source), disc(target))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    source, target = batch()
    with torch.no_grad():
        real, fake = disc(source), disc(target)
    assert real.mean() > fake[..., 4:].mean()
    mask = gap_mask(fake, 1.0)
    assert mask[..., 6:].mean() > 1.3 * mask[..., :2].mean()


def _unet(dim=2):
    conv = torch.nn.Conv2d if dim == 2 else torch.nn.Conv3d
    norm = torch.nn.InstanceNorm2d if dim == 2 else torch.nn.InstanceNorm3d
    return PlainConvUNet(1, 3, (4, 6, 8), conv, 3, (1, 2, 2), (1, 1, 1), 3, (1, 1), False, norm, {"affine": True},
                         nonlin=torch.nn.LeakyReLU, deep_supervision=True)


@pytest.mark.parametrize("dim", [2, 3])
def test_feature_tap_reads_decoder_stages(dim):
    net = _unet(dim)
    size = (8, 8) if dim == 2 else (4, 8, 8)
    with DecoderFeatureTap(net, -1) as tap:
        net(torch.randn(2, 1, *size))
        net(torch.randn(1, 1, *size))
    assert [f.shape for f in tap.features] == [(2, 4, *size), (1, 4, *size)]
    assert DecoderFeatureTap.channels(net, -1) == 4 and DecoderFeatureTap.channels(net, 0) == 6
    with DecoderFeatureTap(net, 0) as tap:
        net(torch.randn(1, 1, *size))
    assert tap.features[0].shape[1] == 6
    net(torch.randn(1, 1, *size))  # the hook is gone after the block
    assert len(tap.features) == 1
    with pytest.raises(ValueError, match="does not exist"):
        DecoderFeatureTap(net, 5)
    with pytest.raises(ValueError, match="no decoder.stages"):
        DecoderFeatureTap(torch.nn.Conv2d(1, 1, 1))
