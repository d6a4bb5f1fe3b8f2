"""EMATeacher and perturb_intensities (CMC's mean teacher): the EMA arithmetic, its warm-up, what it never trains."""

import pytest
import torch
from torch import nn

from nnunet_unpaired.modules.mean_teacher import EMATeacher, perturb_intensities


def _student():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))


def test_ema_arithmetic_and_warm_up():
    student = _student()
    teacher = EMATeacher([student], decay=0.9)
    assert all(torch.equal(t, s) for t, s in zip(teacher.parameters(), student.parameters()))
    assert not any(p.requires_grad for p in teacher.parameters())
    w0 = student[0].weight.detach().clone()
    with torch.no_grad():
        student[0].weight.add_(1.0)
        student[1].running_mean.fill_(5.0)
    assert teacher.current_decay() == 0.0  # first update: min(0.9, 1 - 1/1) = 0, the student's weights
    teacher.update([student])
    assert torch.equal(teacher.copies[0][0].weight, w0 + 1)
    assert torch.equal(teacher.copies[0][1].running_mean, torch.full((3,), 5.0))  # buffers copied
    assert teacher.current_decay() == pytest.approx(0.5)  # min(0.9, 1 - 1/2)
    with torch.no_grad():
        student[0].weight.add_(2.0)
    teacher.update([student])
    torch.testing.assert_close(teacher.copies[0][0].weight, 0.5 * (w0 + 1) + 0.5 * (w0 + 3))
    for _ in range(20):
        teacher.update([student])
    assert teacher.current_decay() == 0.9 and int(teacher.steps) == 22


def test_stays_in_eval_mode_and_refuses_other_structures():
    student = _student()
    teacher = EMATeacher([student])
    teacher.train()
    assert not teacher.copies[0].training
    with pytest.raises(ValueError, match="averages 1 modules"):
        teacher.update([student, student])
    with pytest.raises(ValueError, match="structure"):
        teacher.update([nn.Linear(2, 3)])
    with pytest.raises(ValueError, match="decay"):
        EMATeacher([student], decay=1.0)


def test_state_dict_round_trip_keeps_the_step_count():
    student = _student()
    teacher = EMATeacher([student])
    teacher.update([student])
    again = EMATeacher([_student()])
    again.load_state_dict(teacher.state_dict())
    assert int(again.steps) == 1


def test_perturbation_keeps_the_geometry():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    torch.manual_seed(0)
    y = perturb_intensities(x, scale=0.1, noise_std=0.0)  # a per-sample scale only
    ratio = y / x.clamp(min=1)
    assert torch.allclose(y[0] / y[0, 0, 1, 1], x[0] / x[0, 0, 1, 1])  # the same image, rescaled
    assert 0.9 <= ratio[1].min() <= ratio[1].max() <= 1.1
    assert torch.equal(perturb_intensities(x, scale=0.0, noise_std=0.0), x)
    with pytest.raises(ValueError, match="scale"):
        perturb_intensities(x, scale=1.0)
