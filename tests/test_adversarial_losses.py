"""GLUA losses: GAN losses (hand-computed values, real-above-fake ordering, weights), the shape-preservation NGF
distance (hand-computed value, contrast invariance, same-anatomy ordering on the phantom) and the style-transfer
objective."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nnunet_unpaired.losses.adversarial import AdversarialLoss, ShapePreservationLoss, StyleTransferLoss
from nnunet_unpaired.modules.style_transfer import StyleConfig, StyleTransferGenerator


def _t(*values):
    return torch.tensor(values, dtype=torch.float32).view(1, 1, -1)


# ------------------------------------------------------------------------------------------------ AdversarialLoss


def test_lsgan_hand_computed_values():
    gan = AdversarialLoss("lsgan")
    # real part: mean((1-1)^2, (0.5-1)^2) = 0.125; fake part: mean(0^2, 0.5^2) = 0.125; D = (0.125 + 0.125) / 2
    assert gan.discriminator_loss(_t(1.0, 0.5), _t(0.0, 0.5)).item() == pytest.approx(0.125, rel=1e-6)
    # G: mean((0-1)^2, (0.5-1)^2) = 0.625; weighted (2, 0): mean(2 * 1, 0) = 1
    assert gan.generator_loss(_t(0.0, 0.5)).item() == pytest.approx(0.625, rel=1e-6)
    assert gan.generator_loss(_t(0.0, 0.5), weight=_t(2.0, 0.0)).item() == pytest.approx(1.0, rel=1e-6)


def test_bce_hand_computed_values():
    gan = AdversarialLoss("bce")
    # logits 0: -log(1/2) for both parts
    assert gan.discriminator_loss(_t(0.0), _t(0.0)).item() == pytest.approx(math.log(2), rel=1e-6)
    # real logit ln 3 -> p = 3/4 -> -log(3/4); fake logit -ln 3 -> p = 1/4 -> -log(1 - 1/4)
    expected = math.log(4 / 3)
    assert gan.discriminator_loss(_t(math.log(3)), _t(-math.log(3))).item() == pytest.approx(expected, rel=1e-6)
    assert gan.generator_loss(_t(math.log(3))).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("mode", ["lsgan", "bce"])
def test_discriminator_prefers_real_scored_above_fake(mode):
    gan = AdversarialLoss(mode)
    high, low = torch.full((2, 1, 4, 4), 0.9), torch.full((2, 1, 4, 4), 0.1)
    if mode == "bce":
        high, low = high * 4, -low * 40  # logits
    right = gan.discriminator_loss(real_scores=high, fake_scores=low)
    wrong = gan.discriminator_loss(real_scores=low, fake_scores=high)
    assert right < wrong
    # the generator is better off when its fakes are scored real
    assert gan.generator_loss(high) < gan.generator_loss(low)


@pytest.mark.parametrize("mode", ["lsgan", "bce"])
def test_unit_weights_equal_unweighted_and_weights_are_not_differentiated(mode):
    gan = AdversarialLoss(mode)
    scores = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    weight = torch.ones(2, 1, 3, 3, requires_grad=True)
    loss = gan.generator_loss(scores, weight)
    torch.testing.assert_close(loss, gan.generator_loss(scores))
    loss.backward()
    assert weight.grad is None and torch.isfinite(scores.grad).all()


def test_adversarial_loss_rejects_bad_input():
    with pytest.raises(ValueError, match="mode"):
        AdversarialLoss("wgan")
    gan = AdversarialLoss()
    with pytest.raises(ValueError, match="non-negative"):
        gan.generator_loss(_t(0.0, 1.0), weight=_t(-1.0, 1.0))
    with pytest.raises(ValueError, match="broadcast"):
        gan.generator_loss(_t(0.0, 1.0), weight=_t(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="empty"):
        gan.discriminator_loss(torch.zeros(0), torch.zeros(1))


# ------------------------------------------------------------------------------------------ ShapePreservationLoss


def test_ngf_hand_computed_value():
    # a = [[0, 1], [0, 1]]: forward differences on the common 1x1 grid g = (0, 1); b = 2a: h = (0, 2)
    # eps^2 = 0.25: ((g.h) + 0.25)^2 / ((|g|^2 + 0.25)(|h|^2 + 0.25)) = 2.25^2 / (1.25 * 4.25) = 81/85 -> loss 4/85
    a = torch.tensor([[0.0, 1.0], [0.0, 1.0]]).view(1, 1, 2, 2)
    loss = ShapePreservationLoss(epsilon=0.5, smoothing=1)(a, 2 * a)
    assert loss.item() == pytest.approx(4 / 85, rel=1e-5)
    # an edge against a flat image: 0.25^2 / (1.25 * 0.25) = 0.2 -> loss 0.8
    assert ShapePreservationLoss(0.5, 1)(a, torch.zeros_like(a)).item() == pytest.approx(0.8, rel=1e-5)


@pytest.mark.parametrize("shape", [(2, 1, 12, 12), (1, 2, 6, 10, 10)])
def test_ngf_limits_identical_inverted_and_moved(shape):
    torch.manual_seed(0)
    loss = ShapePreservationLoss(epsilon=0.05)
    # a blocky image with strong edges (steps of about 10 per voxel, much larger than epsilon)
    image = torch.zeros(shape)
    image[..., 3:8, 2:6] = 10.0
    image[..., 6:10, 5:9] = -7.0
    assert loss(image, image).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(image, -3 * image + 5).item() < 0.01  # contrast inverted and rescaled: the same edges
    moved = torch.roll(image, shifts=3, dims=-1)
    assert loss(image, moved).item() > 0.1
    for a, b in ((image, moved), (moved, image)):  # symmetric
        assert loss(a, b).item() == pytest.approx(loss(b, a).item(), rel=1e-6)


def test_ngf_same_anatomy_closer_than_other_anatomy_on_phantom():
    """A CT-like and an MR-like rendering of one anatomy keep more edges in common than two anatomies do."""
    from nnunet_unpaired.phantom import Anatomy, ModalityGeometry, render_case

    fov = np.array([64.0, 64.0, 24.0])
    geometry = ModalityGeometry((1.5, 1.5, 3.0), False)

    def render(seed):
        rng = np.random.default_rng(seed)
        anatomy = Anatomy.sample(rng, fov)
        ct, _, _ = render_case(anatomy, "CT", fov, geometry, 3, rng)
        mr, _, _ = render_case(anatomy, "MR", fov, geometry, 3, rng)
        z = ct.shape[0] // 2
        return [torch.from_numpy((x[z] - x[z].mean()) / x[z].std())[None, None].float() for x in (ct, mr)]

    (ct0, mr0), (_, mr1) = render(0), render(1)
    loss = ShapePreservationLoss()
    assert loss(ct0, mr0) + 0.05 < loss(ct0, mr1)


def test_ngf_weak_edges_inverted_beats_unrelated_and_blur_is_not_best():
    """Issue 16: on normalized phantom slices (weak gradients almost everywhere) an inverted copy must score below an
    unrelated image and below a blurred copy (the eps^2 in the dot product made it 0.64 vs 0.49 and 0.09)."""
    import torch.nn.functional as F

    from nnunet_unpaired.phantom import Anatomy, ModalityGeometry, render_case

    fov = np.array([64.0, 64.0, 24.0])
    geometry = ModalityGeometry((1.5, 1.5, 3.0), False)

    def slice_of(seed, modality):
        rng = np.random.default_rng(seed)
        x, _, _ = render_case(Anatomy.sample(rng, fov), modality, fov, geometry, 3, rng)
        z = x.shape[0] // 2
        return torch.from_numpy((x[z] - x[z].mean()) / x[z].std())[None, None].float()

    ct, unrelated = slice_of(0, "CT"), slice_of(1, "MR")
    blurred = F.avg_pool2d(F.avg_pool2d(ct, 5, 1, 2, count_include_pad=False), 5, 1, 2, count_include_pad=False)
    loss = ShapePreservationLoss()
    inverted = loss(ct, -ct).item()
    assert inverted == pytest.approx(0.0, abs=1e-6)
    assert inverted + 0.05 < loss(ct, unrelated).item()
    assert inverted + 0.01 < loss(ct, blurred).item()
    assert loss(ct, -2.0 * ct + 1.0).item() < loss(ct, blurred).item()  # inverted and rescaled beats blurred


def test_ngf_gradients_finite_and_bad_input():
    a = torch.randn(1, 1, 5, 5, requires_grad=True)
    ShapePreservationLoss()(a, torch.randn(1, 1, 5, 5)).backward()
    assert torch.isfinite(a.grad).all()
    with pytest.raises(ValueError, match="same shape"):
        ShapePreservationLoss()(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))
    with pytest.raises(ValueError, match="at least 2 voxels"):
        ShapePreservationLoss()(torch.zeros(1, 1, 1, 4), torch.zeros(1, 1, 1, 4))
    with pytest.raises(ValueError, match="X, Y"):
        ShapePreservationLoss()(torch.zeros(4, 4), torch.zeros(4, 4))
    with pytest.raises(ValueError, match="epsilon"):
        ShapePreservationLoss(epsilon=0)
    with pytest.raises(ValueError, match="smoothing"):
        ShapePreservationLoss(smoothing=2)


# ---------------------------------------------------------------------------------------------- StyleTransferLoss


def test_style_transfer_terms_weights_and_zero_cases():
    torch.manual_seed(0)
    config = StyleConfig(dim=2, strides=[[2, 2]], width=4, n_res=1, style_dim=3, mlp_width=8)
    generator = StyleTransferGenerator(config)
    p = generator(torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8))
    scores = torch.ones(2, 1, 4, 4)  # fakes scored real: no adversarial generator loss
    base = StyleTransferLoss(image_reconstruction=1, content_reconstruction=1, style_reconstruction=1,
                             adversarial=1, shape=1).generator_terms(p, scores, scores)
    assert set(base) == {"st_rec", "st_content", "st_style", "st_adv", "st_shape", "st_cycle"}
    cycle = F.l1_loss(p.cycle_source, p.source) + F.l1_loss(p.cycle_target, p.target)
    assert base["st_cycle"].item() == pytest.approx(10 * cycle.item(), rel=1e-6)  # default cycle weight 10
    assert base["st_adv"].item() == pytest.approx(0.0, abs=1e-7)
    doubled = StyleTransferLoss(image_reconstruction=2, content_reconstruction=3, style_reconstruction=4,
                                adversarial=1, shape=5).generator_terms(p, scores, scores)
    for key, factor in (("st_rec", 2), ("st_content", 3), ("st_style", 4), ("st_shape", 5)):
        assert doubled[key].item() == pytest.approx(factor * base[key].item(), rel=1e-5)
    # lsgan generator on fakes scored 0: mean((0 - 1)^2) per discriminator, two discriminators
    zero = torch.zeros(2, 1, 4, 4)
    assert StyleTransferLoss().generator_terms(p, zero, zero)["st_adv"].item() == pytest.approx(2.0)
    # content adversarial: the encoder wants the content discriminator to say 0.5 ("cannot tell") for both domains
    half, one = torch.full((2, 1, 4, 4), 0.5), torch.ones(2, 1, 4, 4)
    loss = StyleTransferLoss(content_adversarial=2.0)
    assert loss.generator_terms(p, scores, scores, (half, half))["st_content_adv"].item() == pytest.approx(0.0)
    assert loss.generator_terms(p, scores, scores, (one, zero))["st_content_adv"].item() == pytest.approx(
        2.0 * (0.25 + 0.25))
    assert loss.content_discriminator_loss(one, zero).item() == pytest.approx(0.0)  # source 1, target 0: perfect
    assert loss.content_discriminator_loss(zero, one).item() == pytest.approx(1.0)
    total = sum(base.values())
    total.backward()
    assert all(torch.isfinite(q.grad).all() for q in generator.parameters() if q.grad is not None)
    with pytest.raises(ValueError, match="shape"):
        StyleTransferLoss(shape=-1)
