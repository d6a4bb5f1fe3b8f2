"""MAML losses: the mutual-distillation KL (hand-computed values, limit cases, stop-gradients) and the combined
mutual-learning loss (fused + every peer + weighted distillation)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from torch import nn

from nnunet_unpaired.losses.mutual_distillation import MutualDistillationLoss, MutualLearningLoss, full_resolution


def _voxel(*logits: float) -> torch.Tensor:
    """Logits of one voxel, shape (1, K, 1, 1)."""
    return torch.tensor(logits, dtype=torch.float32).view(1, -1, 1, 1)


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


# ---------------------------------------------------------------- MutualDistillationLoss


def test_hand_computed_value_at_temperature_1():
    # fused logits (0, 0) -> p = (1/2, 1/2); peer logits (ln 3, 0) -> q = (3/4, 1/4)
    # loss = (KL(p||q) + KL(q||p)) / 2 = (ln(4/3) / 2 + 3/4 ln(3/2) + 1/4 ln(1/2)) / 2 = 0.1373265
    expected = (0.5 * math.log(4 / 3) + 0.75 * math.log(1.5) + 0.25 * math.log(0.5)) / 2
    assert expected == pytest.approx(0.1373265, abs=1e-7)
    loss = MutualDistillationLoss(1.0)(_voxel(0.0, 0.0), [_voxel(math.log(3), 0.0)])
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_hand_computed_value_at_temperature_2():
    # logits / 2: q = softmax(ln(3)/2, 0) = (sqrt3, 1) / (sqrt3 + 1); the T^2 = 4 factor keeps the gradient scale
    q = (math.sqrt(3) / (math.sqrt(3) + 1), 1 / (math.sqrt(3) + 1))
    p = (0.5, 0.5)
    expected = 4 * (_kl(p, q) + _kl(q, p)) / 2
    loss = MutualDistillationLoss(2.0)(_voxel(0.0, 0.0), [_voxel(math.log(3), 0.0)])
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_identical_predictions_give_zero_at_any_temperature():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5, 5)
    for t in (0.5, 1.0, 3.0):
        assert MutualDistillationLoss(t)(logits, [logits.clone(), logits.clone()]).item() == pytest.approx(0, abs=1e-6)


def test_symmetric_between_fused_and_a_single_peer_and_averaged_over_peers():
    torch.manual_seed(1)
    a, b, c = torch.randn(3, 2, 3, 4, 4).unbind(0)
    loss = MutualDistillationLoss(1.5)
    torch.testing.assert_close(loss(a, [b]), loss(b, [a]))
    torch.testing.assert_close(loss(a, [b, c]), (loss(a, [b]) + loss(a, [c])) / 2)


def test_averaged_over_voxels_and_batch():
    fused = torch.zeros(2, 2, 1, 2)
    peer = fused.clone()
    peer[0, 0, 0, 0] = math.log(3)  # one of the four voxels differs
    single = MutualDistillationLoss()(_voxel(0.0, 0.0), [_voxel(math.log(3), 0.0)])
    torch.testing.assert_close(MutualDistillationLoss()(fused, [peer]), single / 4)


def test_temperature_1_is_the_plain_symmetric_kl():
    torch.manual_seed(2)
    fused, peer = torch.randn(2, 2, 3, 6, 6).unbind(0)
    lf, lp = F.log_softmax(fused, 1), F.log_softmax(peer, 1)
    voxels = fused.numel() / fused.shape[1]
    plain = (F.kl_div(lp, lf, log_target=True, reduction="sum") + F.kl_div(lf, lp, log_target=True, reduction="sum"))
    torch.testing.assert_close(MutualDistillationLoss(1.0)(fused, [peer]), plain / voxels / 2)


def test_each_side_learns_from_the_other_only():
    torch.manual_seed(3)
    t = 2.0
    fused = torch.randn(1, 3, 4, 4, requires_grad=True)
    peer = torch.randn(1, 3, 4, 4, requires_grad=True)
    grad_fused, grad_peer = torch.autograd.grad(MutualDistillationLoss(t)(fused, [peer]), [fused, peer])
    assert torch.isfinite(grad_fused).all() and torch.isfinite(grad_peer).all()
    # the peer's gradient is that of T^2 / 2 * KL(sg(p_fused) || p_peer) alone (the other KL has the peer detached)
    target = F.softmax(fused.detach() / t, 1)
    own = t * t / 2 * (target * (target.log() - F.log_softmax(peer / t, 1))).sum(1).mean()
    torch.testing.assert_close(grad_peer, torch.autograd.grad(own, peer)[0])


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_non_positive_temperature_is_refused(temperature):
    with pytest.raises(ValueError, match="temperature must be positive"):
        MutualDistillationLoss(temperature)


def test_ill_shaped_or_missing_peers_are_refused():
    loss = MutualDistillationLoss()
    with pytest.raises(ValueError, match="peer 0 logits have shape"):
        loss(torch.zeros(1, 2, 4, 4), [torch.zeros(1, 3, 4, 4)])
    with pytest.raises(ValueError, match="at least one peer"):
        loss(torch.zeros(1, 2, 4, 4), [])


# ---------------------------------------------------------------- MutualLearningLoss


class _Squared(nn.Module):
    def forward(self, output, target):
        return (output - target).square().mean()


def test_total_is_fused_plus_every_peer_plus_weighted_distillation():
    torch.manual_seed(4)
    fused, p1, p2, target = torch.randn(4, 1, 2, 3, 3).unbind(0)
    loss = MutualLearningLoss(_Squared(), distillation_weight=0.5, temperature=2.0)
    total = loss(fused, [p1, p2], target)
    seg = _Squared()
    distillation = MutualDistillationLoss(2.0)(fused, [p1, p2])
    expected = seg(fused, target) + seg(p1, target) + seg(p2, target) + 0.5 * distillation
    torch.testing.assert_close(total, expected)
    torch.testing.assert_close(loss.last_terms["seg_peers"], seg(p1, target) + seg(p2, target))
    torch.testing.assert_close(loss.last_terms["distillation"], distillation)


def test_weight_zero_is_the_public_codes_loss():
    torch.manual_seed(5)
    fused, p1, target = torch.randn(3, 1, 2, 3, 3).unbind(0)
    loss = MutualLearningLoss(_Squared(), distillation_weight=0.0)
    torch.testing.assert_close(loss(fused, [p1], target), _Squared()(fused, target) + _Squared()(p1, target))
    assert loss.last_terms["distillation"].item() == 0


def test_deep_supervision_lists_distil_at_full_resolution_only():
    torch.manual_seed(6)
    fused = [torch.randn(1, 2, 4, 4), torch.randn(1, 2, 2, 2)]
    peer = [torch.randn(1, 2, 4, 4), torch.randn(1, 2, 2, 2)]
    target = [torch.randn(1, 2, 4, 4), torch.randn(1, 2, 2, 2)]
    loss = MutualLearningLoss(DeepSupervisionWrapper(_Squared(), [0.6, 0.4]), distillation_weight=1.0)
    loss(fused, [peer], target)
    first = loss.last_terms["distillation"]
    peer[1] = peer[1] + 5
    loss(fused, [peer], target)
    torch.testing.assert_close(loss.last_terms["distillation"], first)
    torch.testing.assert_close(first, MutualDistillationLoss()(fused[0], [peer[0]]))
    assert full_resolution(fused) is fused[0] and full_resolution(fused[0]) is fused[0]


def test_with_nnunets_loss_identical_outputs_count_once_per_network():
    torch.manual_seed(7)
    seg = DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1,
                         weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (2, 1, 8, 8)).float()
    loss = MutualLearningLoss(seg, distillation_weight=1.0)
    total = loss(logits, [logits, logits], target)
    torch.testing.assert_close(total, 3 * seg(logits, target))
    total.backward()
    assert torch.isfinite(logits.grad).all()


def test_negative_weight_is_refused():
    with pytest.raises(ValueError, match="distillation_weight must be >= 0"):
        MutualLearningLoss(_Squared(), distillation_weight=-0.1)
