"""Modality-specific normalization parameters around a plain nnU-Net network."""

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet

from nnunet_unpaired.modules.modality_norm import PartnerNormParameters, affine_norm_parameter_names


def _net():
    torch.manual_seed(0)
    return PlainConvUNet(1, 2, (4, 8), torch.nn.Conv2d, 3, (1, 2), (1, 1), 3, (1,), True, torch.nn.InstanceNorm2d,
                         {"eps": 1e-5, "affine": True}, None, None, torch.nn.LeakyReLU, {"inplace": True})


def test_collects_every_affine_norm_parameter():
    net = _net()
    names = affine_norm_parameter_names(net)
    n_norm_layers = sum(isinstance(m, torch.nn.InstanceNorm2d) for m in net.modules())  # modules() de-duplicates
    assert len({id(p) for p in names.values()}) == 2 * n_norm_layers
    assert all(n.endswith(("weight", "bias")) for n in names)
    # every state-dict key of a norm parameter is found, aliases included
    norm_keys = {k for k in net.state_dict() if k.endswith(("norm.weight", "norm.bias", "all_modules.1.weight",
                                                            "all_modules.1.bias"))}
    assert norm_keys <= set(names)


def test_partner_forward_uses_own_params_and_trains_shared_kernels():
    net = _net()
    partner = PartnerNormParameters(net)
    with torch.no_grad():
        for p in partner.params:
            p.add_(0.3)
    x = torch.randn(2, 1, 16, 16)
    out_partner = partner(net, x)
    assert not torch.allclose(out_partner, net(x))
    out_partner.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in partner.params)
    norm_names = set(affine_norm_parameter_names(net))
    for name, p in net.named_parameters():
        if name in norm_names:
            assert p.grad is None, f"{name}: modality A's norm parameter must not get B's gradient"
        else:
            assert p.grad is not None, f"{name}: shared kernel gets no gradient"


def test_exported_state_dict_loads_strictly_and_reproduces_partner_output():
    net = _net()
    partner = PartnerNormParameters(net)
    with torch.no_grad():
        for p in partner.params:
            p.mul_(1.5)
    fresh = _net()
    fresh.load_state_dict(partner.state_dict_for(net), strict=True)
    x = torch.randn(1, 1, 16, 16)
    assert torch.allclose(fresh(x), partner(net, x), atol=1e-6)


def test_swap_into_twice_restores():
    net = _net()
    partner = PartnerNormParameters(net)
    with torch.no_grad():
        for p in partner.params:
            p.add_(1.0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(1, 1, 16, 16)
    expected = partner(net, x)
    partner.swap_into(net)
    assert torch.allclose(net(x), expected, atol=1e-6)
    partner.swap_into(net)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_network_without_affine_norm_is_refused():
    with pytest.raises(ValueError, match="affine"):
        PartnerNormParameters(torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3)))
