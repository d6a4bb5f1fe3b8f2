"""Mean teacher: an exponential moving average (EMA) of a network's weights, and the student's perturbed view.

Source: Tarvainen and Valpola, "Mean teachers are better role models: Weight-averaged consistency targets improve
semi-supervised deep learning results", NeurIPS 2017; used for medical segmentation e.g. by Yu et al., "Uncertainty-
aware self-ensembling model for semi-supervised 3D left atrium segmentation" (UA-MT), MICCAI 2019.

The teacher holds copies of one or more modules (for CMC: the network and modality B's head). After every optimizer
step, ``teacher = a * teacher + (1 - a) * student`` for every parameter, with ``a = min(decay, 1 - 1 / (step + 1))``
(the paper's warm-up: early on, when the student changes fast, the average forgets quickly); buffers (e.g. BatchNorm
statistics) are copied. The teacher never receives gradients and is not optimized; it runs in eval mode without
gradients. It is a training-only module: saved in the trainer's checkpoint for ``--c``, never exported.

The student sees :func:`perturb_intensities` of the teacher's input: the same nnU-Net-augmented patch (so both
predict the same voxels and no inverse spatial transform is needed), with a random intensity scale and additive
Gaussian noise on top. UA-MT's student perturbation is Gaussian noise alone; the scale is ours.
"""

from __future__ import annotations

import copy
from typing import Optional, Sequence

import torch
from torch import nn

__all__ = ["EMATeacher", "perturb_intensities"]


class EMATeacher(nn.Module):
    """An EMA copy of ``modules``; :meth:`update` after each optimizer step, index ``teacher.copies[i]`` to use it.

    Args:
        modules: the student's modules (copied now, so the teacher starts equal to the student).
        decay: the EMA decay ``a`` once warmed up, in [0, 1).

    Raises:
        ValueError: if ``decay`` is outside [0, 1) or no module is given.
    """

    def __init__(self, modules: Sequence[nn.Module], decay: float = 0.99) -> None:
        super().__init__()
        if not 0 <= decay < 1:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}")
        if not modules:
            raise ValueError("EMATeacher needs at least one module to average")
        self.decay = float(decay)
        self.copies = nn.ModuleList(copy.deepcopy(m) for m in modules)
        self.copies.requires_grad_(False)
        self.copies.eval()
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def train(self, mode: bool = True) -> "EMATeacher":
        """The copies stay in eval mode whatever the trainer sets (the teacher is never trained)."""
        super().train(mode)
        self.copies.eval()
        return self

    def current_decay(self) -> float:
        """``min(decay, 1 - 1 / (steps + 1))``: 0 at the first update (the teacher takes the student's weights)."""
        return min(self.decay, 1.0 - 1.0 / (int(self.steps) + 1))

    @torch.no_grad()
    def update(self, modules: Sequence[nn.Module]) -> None:
        """One EMA step towards ``modules`` (the same structure as those given to the constructor).

        Raises:
            ValueError: if the number of modules, or of parameters or buffers in one, differs from the teacher's.
        """
        if len(modules) != len(self.copies):
            raise ValueError(f"the teacher averages {len(self.copies)} modules, got {len(modules)}")
        a = self.current_decay()
        for teacher, student in zip(self.copies, modules):
            t_params, s_params = list(teacher.parameters()), list(student.parameters())
            t_buffers, s_buffers = list(teacher.buffers()), list(student.buffers())
            if len(t_params) != len(s_params) or len(t_buffers) != len(s_buffers):
                raise ValueError(f"{type(student).__name__} does not have the teacher's structure "
                                 f"({len(s_params)} parameters vs {len(t_params)})")
            for t, s in zip(t_params, s_params):
                t.mul_(a).add_(s.detach().to(t.dtype), alpha=1.0 - a)
            for t, s in zip(t_buffers, s_buffers):
                t.copy_(s)
        self.steps += 1


def perturb_intensities(x: torch.Tensor, scale: float = 0.1, noise_std: float = 0.1,
                        generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``x * s + n``: per sample a scale ``s ~ U(1 - scale, 1 + scale)``, per voxel noise ``n ~ N(0, noise_std^2)``.

    Drawn on ``x``'s device from torch's generator (seeded by ``nnUNet_unpaired_seed``), outside any compiled graph.

    Raises:
        ValueError: if ``scale`` is not in [0, 1) or ``noise_std`` is negative.
    """
    if not 0 <= scale < 1:
        raise ValueError(f"scale must be in [0, 1), got {scale!r}")
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std!r}")
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    s = 1 + scale * (2 * torch.rand(shape, device=x.device, generator=generator, dtype=x.dtype) - 1)
    return x * s + noise_std * torch.randn(x.shape, device=x.device, generator=generator, dtype=x.dtype)
