"""CMC's losses: CSC (NT-Xent over bottleneck channels) and CAC (1 - soft Dice), hand-computed values and limits."""

import math

import pytest
import torch

from nnunet_unpaired.losses.cross_modal_consistency import (AnatomicalConsistencyLoss, ChannelSemanticConsistencyLoss,
                                                            channel_descriptors, nt_xent)


def test_nt_xent_orthogonal_positives_hand_computed():
    # z = [e1, e2, e1, e2]; every row: positive similarity 1/tau, two negatives with similarity 0
    u = torch.eye(2)[None]
    expected = math.log(1 + 2 * math.exp(-2.0))  # tau = 0.5
    assert nt_xent(u, u.clone(), 0.5).item() == pytest.approx(expected, rel=1e-5)


def test_nt_xent_swapped_positives_hand_computed():
    # u = [e1, e2], v = [e2, e1]: each positive is orthogonal (s = 0), one negative is identical (s = 1), tau = 1
    u, v = torch.eye(2)[None], torch.eye(2).flip(0)[None]
    assert nt_xent(u, v, 1.0).item() == pytest.approx(math.log(2 + math.e), rel=1e-5)


def test_nt_xent_scale_invariant_and_rejects_bad_shapes():
    u, v = torch.randn(2, 4, 6), torch.randn(2, 4, 6)
    assert nt_xent(3 * u, 0.5 * v, 0.7).item() == pytest.approx(nt_xent(u, v, 0.7).item(), rel=1e-5)
    with pytest.raises(ValueError, match="differ in shape"):
        nt_xent(u, v[:, :3], 0.5)
    with pytest.raises(ValueError, match="at least 2 channels"):
        nt_xent(u[:, :1], v[:, :1], 0.5)


def test_gram_descriptor_hand_computed():
    # channel 0 and 1 identical (correlation 1), channel 2 uncorrelated with both
    x = torch.tensor([[[1.0, -1, 1, -1], [1, -1, 1, -1], [1, 1, -1, -1]]])  # (B=1, C=3, N=4)
    expected = torch.tensor([[[0.0, 1, 0], [1, 0, 0], [0, 0, 0]]])
    assert torch.allclose(channel_descriptors(x, "gram"), expected, atol=1e-6)
    assert channel_descriptors(x[..., None], "spatial").shape == (1, 3, 4)


def test_csc_spatial_equals_hand_value_and_is_symmetric():
    features = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])[..., None]  # (B=1, C=2, 2, 1): orthogonal channel maps
    loss = ChannelSemanticConsistencyLoss(0.5, "spatial")
    assert loss(features, features).item() == pytest.approx(math.log(1 + 2 * math.exp(-2.0)), rel=1e-5)
    a, b = torch.randn(3, 5, 4, 4), torch.randn(3, 5, 4, 4)
    assert loss(a, b).item() == pytest.approx(loss(b, a).item(), rel=1e-5)


def test_csc_gram_ignores_where_things_are():
    """The default descriptor needs no pairing: shuffled voxels, other batch sizes and shapes give the same loss."""
    torch.manual_seed(0)
    a, b = torch.randn(2, 6, 5, 5), torch.randn(3, 6, 4, 4)
    loss = ChannelSemanticConsistencyLoss()
    perm = torch.randperm(25)
    shuffled = a.flatten(2)[:, :, perm].view_as(a)
    assert loss(shuffled, b).item() == pytest.approx(loss(a, b).item(), rel=1e-5)
    shifted = torch.roll(a, shifts=2, dims=3)
    assert loss(shifted, b).item() == pytest.approx(loss(a, b).item(), rel=1e-5)
    spatial = ChannelSemanticConsistencyLoss(descriptor="spatial")
    assert spatial(shifted, shifted).item() != pytest.approx(spatial(a, shifted).item(), rel=1e-3)


def test_csc_lower_for_consistent_channels_and_gradients_reach_both():
    torch.manual_seed(1)
    base = torch.randn(2, 8, 6, 6)
    a = base.clone().requires_grad_(True)
    b = (base + 0.05 * torch.randn_like(base)).requires_grad_(True)
    loss = ChannelSemanticConsistencyLoss()
    consistent = loss(a, b)
    permuted = loss(a, b[:, torch.randperm(8)])
    assert consistent.item() < permuted.item()
    consistent.backward()
    for t in (a, b):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_csc_rejects_bad_arguments():
    with pytest.raises(ValueError, match="temperature"):
        ChannelSemanticConsistencyLoss(temperature=0)
    with pytest.raises(ValueError, match="descriptor"):
        ChannelSemanticConsistencyLoss(descriptor="pixels")
    with pytest.raises(ValueError, match="channel counts"):
        ChannelSemanticConsistencyLoss()(torch.randn(1, 4, 3, 3), torch.randn(1, 5, 3, 3))


def _probs(*voxels):
    """(B=1, K, N) from per-voxel class probability lists."""
    return torch.tensor(voxels, dtype=torch.float32).t()[None]


def test_cac_voxel_hand_computed():
    a = _probs([1, 0], [0, 1])          # voxel 0 class 0, voxel 1 class 1
    b = _probs([0.5, 0.5], [0.5, 0.5])  # undecided
    # Dice_k = 2 * 0.5 / (1 + 0.5) = 2/3 for both classes
    assert AnatomicalConsistencyLoss("voxel", smooth=0)(a, b).item() == pytest.approx(1 / 3, rel=1e-5)
    assert AnatomicalConsistencyLoss("voxel", smooth=0)(a, a).item() == pytest.approx(0.0, abs=1e-7)
    assert AnatomicalConsistencyLoss("voxel", smooth=0)(a, a.flip(1)).item() == pytest.approx(1.0, abs=1e-7)


def test_cac_pooled_hand_computed():
    a = _probs([1, 0], [1, 0])          # composition (1, 0)
    b = _probs([1, 0], [0, 1])          # composition (0.5, 0.5)
    # Dice_0 = 2 * 0.5 / (1 + 0.25) = 0.8, Dice_1 = 0 / 0.25 = 0 -> 1 - 0.4
    assert AnatomicalConsistencyLoss("pooled", smooth=0)(a, b).item() == pytest.approx(0.6, rel=1e-5)


def test_cac_pooled_is_invariant_to_misalignment_voxel_is_not():
    torch.manual_seed(2)
    a = torch.softmax(torch.randn(2, 4, 8, 8), 1)
    b = torch.softmax(torch.randn(2, 4, 8, 8), 1)
    shifted = torch.roll(b, shifts=(3, -2), dims=(2, 3))
    pooled, voxel = AnatomicalConsistencyLoss("pooled"), AnatomicalConsistencyLoss("voxel")
    assert pooled(a, shifted).item() == pytest.approx(pooled(a, b).item(), abs=1e-6)
    assert voxel(b, shifted).item() > voxel(b, b).item() + 0.05
    # pooled needs no pairing: different batch sizes and patch shapes
    assert 0 <= pooled(a, torch.softmax(torch.randn(3, 4, 5, 5), 1)).item() <= 1


def test_cac_is_a_loss_with_gradients_to_both_inputs():
    """The public code added the similarity (rewarding disagreement); here identical predictions score 0."""
    logits_a = torch.randn(2, 3, 4, 4, requires_grad=True)
    logits_b = torch.randn(2, 3, 4, 4, requires_grad=True)
    for mode in ("pooled", "voxel"):
        loss = AnatomicalConsistencyLoss(mode)
        value = loss(torch.softmax(logits_a, 1), torch.softmax(logits_b, 1))
        assert value.item() > loss(torch.softmax(logits_a, 1), torch.softmax(logits_a, 1)).item()
        logits_a.grad = logits_b.grad = None
        value.backward()
        for t in (logits_a, logits_b):
            assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_cac_rejects_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        AnatomicalConsistencyLoss("surface")
    with pytest.raises(ValueError, match="smooth"):
        AnatomicalConsistencyLoss(smooth=-1)
    with pytest.raises(ValueError, match="same K"):
        AnatomicalConsistencyLoss()(torch.rand(1, 3, 4), torch.rand(1, 2, 4))
    with pytest.raises(ValueError, match="pooled"):
        AnatomicalConsistencyLoss("voxel")(torch.rand(1, 3, 4, 4), torch.rand(1, 3, 5, 5))
