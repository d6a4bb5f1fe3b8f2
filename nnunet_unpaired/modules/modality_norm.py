"""Modality-specific normalization parameters around one plain network (shared kernels, own affine norm params).

Dou et al. (IEEE TMI 2020, "Unpaired multi-modal segmentation via knowledge distillation") share every convolution
kernel between CT and MR and give each modality its own normalization layers. Here the network stays nnU-Net's plain
network (its norm parameters are modality A's); :class:`PartnerNormParameters` holds a second copy of every affine
normalization parameter for modality B. A forward pass for B temporarily puts B's parameters into the norm layers
(gradients reach B's copy and the shared kernels, never A's norm parameters); export writes a plain state dict with
B's parameters in place, which nnU-Net's predictor loads strictly into its plain network.

``torch.func.functional_call`` is not used on purpose: dynamic-network-architectures registers every norm layer under
two names (``...convs.0.norm`` and ``...convs.0.all_modules.1``), and with such tied parameters functional_call left
the substituted values in the module after the call (torch 2.15).

Limitation: running statistics of BatchNorm layers (buffers) are not duplicated; nnU-Net's default InstanceNorm has
none.
"""

from __future__ import annotations

import contextlib
from typing import Dict, List, Tuple

import torch
from torch import nn

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def affine_norm_parameter_names(network: nn.Module) -> Dict[str, torch.Tensor]:
    """``{'encoder.stages.0...norm.weight': tensor, ...}`` for every affine normalization parameter, every alias."""
    names = {}
    for module_name, module in network.named_modules(remove_duplicate=False):
        if isinstance(module, _NORM_TYPES):
            for pname, param in module.named_parameters(recurse=False):
                names[f"{module_name}.{pname}" if module_name else pname] = param
    return names


def _norm_slots(network: nn.Module) -> List[Tuple[nn.Module, str, List[str]]]:
    """One entry per norm parameter: (module, parameter name, every state-dict name it has)."""
    slots: Dict[Tuple[int, str], Tuple[nn.Module, str, List[str]]] = {}
    for module_name, module in network.named_modules(remove_duplicate=False):
        if isinstance(module, _NORM_TYPES):
            for pname, _ in module.named_parameters(recurse=False):
                key = (id(module), pname)
                slots.setdefault(key, (module, pname, []))[2].append(f"{module_name}.{pname}")
    return list(slots.values())


class PartnerNormParameters(nn.Module):
    """A trainable copy of the network's affine normalization parameters, for the partner modality."""

    def __init__(self, network: nn.Module):
        super().__init__()
        slots = _norm_slots(network)
        if not slots:
            raise ValueError("the network has no affine normalization parameters; modality-specific normalization "
                             "needs norm layers with affine=True")
        self.aliases = [names for _, _, names in slots]
        self.params = nn.ParameterList([nn.Parameter(getattr(m, p).detach().clone()) for m, p, _ in slots])

    @contextlib.contextmanager
    def substituted(self, network: nn.Module):
        """Inside this block the network's norm layers use the partner's parameters (autograd flows to them)."""
        slots = _norm_slots(network)
        originals = [m._parameters[p] for m, p, _ in slots]
        try:
            for (module, pname, _), param in zip(slots, self.params):
                module._parameters[pname] = param
            yield network
        finally:
            for (module, pname, _), original in zip(slots, originals):
                module._parameters[pname] = original

    def forward(self, network: nn.Module, x: torch.Tensor):
        with self.substituted(network):
            return network(x)

    def state_dict_for(self, network: nn.Module) -> Dict[str, torch.Tensor]:
        """The network's state dict with the partner's normalization parameters in place (detached copies)."""
        with self.substituted(network):
            return {k: v.detach().clone() for k, v in network.state_dict().items()}

    @torch.no_grad()
    def swap_into(self, network: nn.Module) -> None:
        """Exchange the values of the network's norm parameters and this copy (call twice to restore)."""
        for (module, pname, _), param in zip(_norm_slots(network), self.params):
            current = getattr(module, pname)
            tmp = current.detach().clone()
            current.copy_(param)
            param.copy_(tmp)
