"""Modality-specific normalization parameters around one plain network (shared kernels, own affine norm params).

Dou et al. (IEEE TMI 2020, "Unpaired multi-modal segmentation via knowledge distillation") share every convolution
kernel between CT and MR and give each modality its own normalization layers. Here the network stays nnU-Net's plain
network (its norm parameters are modality A's); :class:`PartnerNormParameters` holds a second copy of every affine
normalization parameter for modality B. Training runs B through ``torch.func.functional_call`` with those
parameters substituted, so gradients reach B's copy and the shared kernels; export writes a plain state dict with B's
parameters in place, which nnU-Net's predictor loads strictly into its plain network.

Limitation: running statistics of BatchNorm layers (buffers) are not duplicated; nnU-Net's default InstanceNorm has
none.
"""

from __future__ import annotations

from typing import Dict

import torch
from torch import nn

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def affine_norm_parameter_names(network: nn.Module) -> Dict[str, torch.Tensor]:
    """``{'encoder.stages.0...norm.weight': tensor, ...}`` for every affine normalization parameter."""
    names = {}
    for module_name, module in network.named_modules():
        if isinstance(module, _NORM_TYPES):
            for pname, param in module.named_parameters(recurse=False):
                names[f"{module_name}.{pname}" if module_name else pname] = param
    return names


class PartnerNormParameters(nn.Module):
    """A trainable copy of the network's affine normalization parameters, for the partner modality."""

    def __init__(self, network: nn.Module):
        super().__init__()
        originals = affine_norm_parameter_names(network)
        if not originals:
            raise ValueError("the network has no affine normalization parameters; modality-specific normalization "
                             "needs norm layers with affine=True")
        self.names = list(originals)
        self.params = nn.ParameterList([nn.Parameter(p.detach().clone()) for p in originals.values()])

    def as_dict(self) -> Dict[str, torch.Tensor]:
        """Parameter overrides for ``torch.func.functional_call`` (keep the autograd graph)."""
        return dict(zip(self.names, self.params))

    def forward(self, network: nn.Module, x: torch.Tensor):
        return torch.func.functional_call(network, self.as_dict(), (x,), strict=False)

    def state_dict_for(self, network: nn.Module) -> Dict[str, torch.Tensor]:
        """The network's state dict with the partner's normalization parameters in place (detached copies)."""
        state = {k: v.detach().clone() for k, v in network.state_dict().items()}
        for name, param in self.as_dict().items():
            state[name] = param.detach().clone()
        return state

    @torch.no_grad()
    def swap_into(self, network: nn.Module) -> None:
        """Exchange the values of the network's norm parameters and this copy (call twice to restore)."""
        current = affine_norm_parameter_names(network)
        for name, param in zip(self.names, self.params):
            tmp = current[name].detach().clone()
            current[name].copy_(param)
            param.copy_(tmp)
