"""ConfidentPseudoLabelLoss (CMC's same-modality self-training): hand-computed values, limit cases, what it measures."""

import math

import pytest
import torch

from nnunet_unpaired.losses.pseudo_label import ConfidentPseudoLabelLoss


def _teacher():
    """(1, 2, 3): voxel 0 confident background (0.95), voxel 1 unsure (0.6), voxel 2 confident class 1 (0.98)."""
    return torch.tensor([[[0.95, 0.6, 0.02], [0.05, 0.4, 0.98]]])


def test_hand_computed_values_and_threshold():
    student = torch.zeros(1, 2, 3)  # uniform: CE = log 2 at every voxel
    loss, share = ConfidentPseudoLabelLoss(0.9)(student, _teacher())
    assert loss.item() == pytest.approx(2 * math.log(2) / 3, rel=1e-6)  # 2 of 3 voxels, mean over all 3
    assert share.item() == pytest.approx(2 / 3)
    loss, share = ConfidentPseudoLabelLoss(0.0)(student, _teacher())  # every voxel, hard labels
    assert loss.item() == pytest.approx(math.log(2), rel=1e-6) and share.item() == 1
    loss, share = ConfidentPseudoLabelLoss(1.0)(student, _teacher())  # nothing is certain
    assert loss.item() == 0 and share.item() == 0

    logits = torch.tensor([[[2.0, 0.0, 1.0], [0.0, 3.0, -1.0]]])  # CE at voxel 0 (label 0), voxel 2 (label 1)
    expected = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(2.0))) / 3
    assert ConfidentPseudoLabelLoss(0.9)(logits, _teacher())[0].item() == pytest.approx(expected, rel=1e-6)


def test_zero_only_when_the_student_agrees_with_the_confident_teacher():
    teacher = _teacher()
    agree = 20 * (2 * teacher - 1)  # large logits with the teacher's arg-max everywhere
    assert ConfidentPseudoLabelLoss(0.9)(agree, teacher)[0].item() < 1e-6
    # the shortcut of a collapsed student (confident background everywhere) is NOT near zero: voxel 2 says class 1
    collapsed = torch.tensor([[[20.0] * 3, [-20.0] * 3]])
    assert ConfidentPseudoLabelLoss(0.9)(collapsed, teacher)[0].item() > 10
    # disagreeing only where the teacher is unsure costs nothing: those voxels are not pseudo-labelled
    unsure_wrong = agree.clone()
    unsure_wrong[0, :, 1] = torch.tensor([-20.0, 20.0])
    assert ConfidentPseudoLabelLoss(0.9)(unsure_wrong, teacher)[0].item() < 1e-6


def test_minimizing_it_aligns_the_student_with_the_teacher_and_never_moves_the_teacher():
    g = torch.Generator().manual_seed(0)
    teacher = torch.softmax(3 * torch.randn(2, 4, 6, 6, generator=g), 1).requires_grad_()
    student = torch.randn(2, 4, 6, 6, generator=g).requires_grad_()
    loss_fn = ConfidentPseudoLabelLoss(0.6)
    optimizer = torch.optim.SGD([student], lr=50.0)
    for _ in range(200):
        optimizer.zero_grad()
        loss, share = loss_fn(student, teacher)
        loss.backward()
        optimizer.step()
    assert teacher.grad is None  # targets only
    confident = teacher.detach().max(1).values >= 0.6
    assert 0 < share.item() < 1 and loss.item() < 0.05
    assert torch.equal(student.argmax(1)[confident], teacher.detach().argmax(1)[confident])


def test_bad_arguments():
    with pytest.raises(ValueError, match="threshold"):
        ConfidentPseudoLabelLoss(1.5)
    with pytest.raises(ValueError, match="one shape"):
        ConfidentPseudoLabelLoss()(torch.zeros(1, 2, 3), torch.zeros(1, 3, 3))
