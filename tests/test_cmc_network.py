"""CMC network: channel attention (hand-computed), fusion, per-modality head, single-input path, strict load."""

import math

import pytest
import torch

from nnunet_unpaired.modules.channel_attention import ChannelAttention
from nnunet_unpaired.modules.cmc_network import CMCNetwork, build_cmc_network

UNET = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
IMPORTS = ["conv_op", "norm_op", "dropout_op", "nonlin"]


def _arch(dim: int) -> dict:
    return {"n_stages": 3, "features_per_stage": [4, 8, 8], "conv_op": f"torch.nn.Conv{dim}d",
            "kernel_sizes": [[3] * dim] * 3, "strides": [[1] * dim, [2] * dim, [2] * dim],
            "n_conv_per_stage": [1, 1, 1], "n_conv_per_stage_decoder": [1, 1], "conv_bias": True,
            "norm_op": f"torch.nn.InstanceNorm{dim}d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
            "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True}}


def _network(dim: int = 2, deep_supervision: bool = True, classes: int = 3) -> CMCNetwork:
    torch.manual_seed(0)
    return build_cmc_network(UNET, _arch(dim), IMPORTS, 1, classes, deep_supervision)


def test_channel_attention_hand_computed():
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])[..., None]  # (B=1, C=2, 2, 1), orthogonal unit channels
    block = ChannelAttention()
    assert torch.equal(block(x), x)  # gamma starts at 0: identity
    # E = I, E' = rowmax(E) - E = [[0, 1], [1, 0]], A = softmax rows = [[1, e], [e, 1]] / (1 + e)
    p, q = 1 / (1 + math.e), math.e / (1 + math.e)
    assert torch.allclose(block.attention(x), torch.tensor([[[p, q], [q, p]]]), atol=1e-6)
    with torch.no_grad():
        block.gamma.fill_(1.0)
    expected = torch.tensor([[[1 + p, q], [q, 1 + p]]])[..., None]
    assert torch.allclose(block(x), expected, atol=1e-6)


def test_channel_attention_rows_sum_to_one_3d_and_bfloat16():
    x = torch.randn(2, 5, 3, 4, 4)
    assert torch.allclose(ChannelAttention().attention(x).sum(-1), torch.ones(2, 5), atol=1e-5)
    out = ChannelAttention()(x.bfloat16())
    assert out.dtype == torch.bfloat16 and out.shape == x.shape


@pytest.mark.parametrize("dim", [2, 3])
def test_forward_shapes_and_strict_load(dim):
    net = _network(dim)
    x = torch.randn(2, 1, *([16] * dim))
    out = net(x)
    assert isinstance(out, list) and out[0].shape == (2, 3, *([16] * dim))
    assert {k.split(".")[0] for k in net.state_dict()} == {"encoder", "decoder", "channel_attention", "fusion", "head"}
    plain = _network(dim, deep_supervision=False)
    plain.load_state_dict(net.state_dict(), strict=True)
    assert plain(x).shape == (2, 3, *([16] * dim))


def test_forward_pair_with_self_fusion_is_the_single_input_path():
    net = _network()
    head_b = net.new_head()
    x_a, x_b = torch.randn(2, 1, 16, 16), torch.randn(2, 1, 16, 16)
    pair = net.forward_pair(x_a, x_b, head_b, torch.tensor([True, True]))
    assert torch.allclose(pair.output_a[0], net(x_a)[0], atol=1e-6)
    net.head, head_b = head_b, net.head  # B's head in the network: B's deployed path
    assert torch.allclose(pair.output_b[0], net(x_b)[0], atol=1e-6)
    assert pair.bottleneck_a.shape == (2, 8, 4, 4)


def test_forward_pair_mixes_modalities_unless_masked():
    net = _network()
    x_a = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        net.channel_attention.gamma.fill_(0.5)
        one = net.forward_pair(x_a, torch.randn(2, 1, 16, 16), net.head, torch.tensor([False, True]))
        other = net.forward_pair(x_a, torch.randn(2, 1, 16, 16), net.head, torch.tensor([False, True]))
    assert not torch.allclose(one.output_a[0][0], other.output_a[0][0])  # sample 0 sees its partner
    assert torch.allclose(one.output_a[0][1], other.output_a[0][1], atol=1e-6)  # sample 1 fuses with itself
    with pytest.raises(ValueError, match="same size and patch shape"):
        net.forward_pair(x_a, torch.randn(2, 1, 8, 8), net.head)
    with pytest.raises(ValueError, match="self_fusion_mask"):
        net.forward_pair(x_a, x_a, net.head, torch.tensor([True, False, True]))


def test_single_input_modes():
    net = _network(deep_supervision=False)
    x = torch.randn(1, 1, 16, 16)
    own = net(x)
    net.single_input_fusion = "zero"
    assert not torch.allclose(net(x), own)
    net.single_input_fusion = "partner"
    with pytest.raises(ValueError, match="single_input_fusion"):
        net(x)


def test_gradients_reach_every_part_through_the_pair():
    net = _network()
    head_b = net.new_head()
    with torch.no_grad():
        net.channel_attention.gamma.fill_(0.1)  # at exactly 0 the attention branch has no gradient except gamma's
    pair = net.forward_pair(torch.randn(2, 1, 16, 16), torch.randn(2, 1, 16, 16), head_b)
    (pair.output_a[0].square().mean() + pair.output_b[0].square().mean()).backward()
    for name, module in (("encoder", net.encoder), ("fusion", net.fusion), ("head A", net.head), ("head B", head_b),
                         ("attention", net.channel_attention)):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), name


def test_new_head_is_an_independent_copy():
    net = _network()
    head_b = net.new_head()
    assert all(torch.equal(a, b) for a, b in zip(net.head.state_dict().values(), head_b.state_dict().values()))
    with torch.no_grad():
        next(head_b.parameters()).add_(1.0)
    assert not torch.equal(next(head_b.parameters()), next(net.head.parameters()))


def test_rejects_a_network_without_encoder_decoder():
    with pytest.raises(ValueError, match="encoder/decoder"):
        CMCNetwork(torch.nn.Conv2d(1, 1, 1))
