"""ExternalAttentionModule (Yang et al., MIDL 2023; formulation ours) and its label helpers."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from nnunet_unpaired.modules import external_attention
from nnunet_unpaired.modules.external_attention import (
    EAMOutput,
    ExternalAttentionModule,
    class_present_mask,
    labels_to_grid,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _fixed_module() -> ExternalAttentionModule:
    """2 input channels, K=2, C'=2, identity projection, known memory."""
    module = ExternalAttentionModule(in_channels=2, num_classes=2, embed_dim=2, dim=2)
    with torch.no_grad():
        module.proj.weight.copy_(torch.eye(2).reshape(2, 2, 1, 1))
        module.proj.bias.zero_()
        module.memory.copy_(torch.tensor([[1.0, -0.5], [0.25, 2.0]]))
    return module


@pytest.mark.parametrize("dim, spatial", [(2, (5, 6)), (3, (3, 4, 5))])
def test_output_shapes(dim: int, spatial: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    module = ExternalAttentionModule(in_channels=6, num_classes=4, embed_dim=8, dim=dim)
    out = module(torch.randn(3, 6, *spatial))
    assert isinstance(out, EAMOutput)
    assert out.logits.shape == (3, 4, *spatial)
    assert out.class_repr.shape == (4, 8)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.class_repr).all()


def test_default_width_is_64() -> None:
    module = ExternalAttentionModule(in_channels=3, num_classes=2)
    assert module.embed_dim == 64 and module.memory.shape == (2, 64) and module.dim == 2


def test_hand_computed_values() -> None:
    features = torch.tensor(
        [
            [[[0.5, -1.0]], [[2.0, 0.0]]],  # sample 0: channels x (1 x 2)
            [[[1.5, 0.25]], [[-0.5, 1.0]]],  # sample 1
        ]
    )
    out = _fixed_module()(features)

    memory = np.array([[1.0, -0.5], [0.25, 2.0]])
    feats = features.numpy().astype(np.float64).reshape(2, 2, 2)  # (B, C', N)
    logits = np.einsum("kc,bcn->bkn", memory, feats)
    np.testing.assert_allclose(out.logits.detach().numpy().reshape(2, 2, 2), logits, rtol=1e-5)

    # softmax of each slot over the 4 voxels of both samples, then the weighted mean of the features
    pooled_logits = logits.transpose(1, 0, 2).reshape(2, 4)
    weights = np.exp(pooled_logits - pooled_logits.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    pooled_feats = feats.transpose(0, 2, 1).reshape(4, 2)
    np.testing.assert_allclose(out.class_repr.detach().numpy(), weights @ pooled_feats, rtol=1e-5)


def test_batch_is_pooled_like_one_large_sample() -> None:
    """Two samples give the same representations as one sample holding both side by side."""
    torch.manual_seed(1)
    module = ExternalAttentionModule(in_channels=3, num_classes=3, embed_dim=4, dim=3)
    features = torch.randn(2, 3, 2, 3, 4)
    side_by_side = torch.cat([features[0:1], features[1:2]], dim=-1)
    torch.testing.assert_close(module(features).class_repr, module(side_by_side).class_repr, rtol=1e-5, atol=1e-6)


def test_gradients_reach_network_and_module() -> None:
    torch.manual_seed(2)
    network = torch.nn.Conv3d(1, 4, kernel_size=3, padding=1)
    module = ExternalAttentionModule(in_channels=4, num_classes=3, embed_dim=5, dim=3)
    out = module(network(torch.randn(2, 1, 4, 4, 4)))
    (out.logits.square().mean() + out.class_repr.square().sum()).backward()
    for name, param in [*network.named_parameters(), *module.named_parameters()]:
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("device", DEVICES)
def test_outputs_on_input_device(device: str) -> None:
    module = ExternalAttentionModule(in_channels=2, num_classes=2, embed_dim=3, dim=2).to(device)
    out = module(torch.randn(1, 2, 3, 3, device=device))
    assert out.logits.device.type == device and out.class_repr.device.type == device
    labels = torch.zeros(1, 1, 6, 6, device=device)
    assert labels_to_grid(labels, (3, 3)).device.type == device
    assert class_present_mask(labels, 2).device.type == device


def test_source_never_moves_to_cuda_itself() -> None:
    assert ".cuda(" not in inspect.getsource(external_attention)


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"in_channels": 0, "num_classes": 3}, "in_channels"),
        ({"in_channels": 2, "num_classes": 1}, "num_classes"),
        ({"in_channels": 2, "num_classes": 3, "embed_dim": 0}, "embed_dim"),
        ({"in_channels": 2, "num_classes": 3, "embed_dim": 2.5}, "embed_dim"),
        ({"in_channels": 2, "num_classes": 3, "dim": 1}, "dim"),
        ({"in_channels": 2, "num_classes": 3, "dim": 4}, "dim"),
    ],
)
def test_invalid_arguments_raise(kwargs: dict, bad: str) -> None:
    with pytest.raises(ValueError, match=bad):
        ExternalAttentionModule(**kwargs)


@pytest.mark.parametrize("shape", [(1, 3, 4, 4), (1, 2, 4, 4, 4), (2, 4), (2, 2, 4)])
def test_ill_shaped_features_raise(shape: tuple[int, ...]) -> None:
    module = ExternalAttentionModule(in_channels=2, num_classes=2, embed_dim=3, dim=2)
    with pytest.raises(ValueError, match="features must have shape"):
        module(torch.randn(*shape))


def test_labels_to_grid_nearest_2d() -> None:
    labels = torch.tensor([[[[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]]], dtype=torch.float32)
    resized = labels_to_grid(labels, (2, 2))
    assert resized.dtype == torch.long
    assert resized.tolist() == [[[[0, 1], [2, 3]]]]


def test_labels_to_grid_nearest_3d_and_noop() -> None:
    labels = torch.arange(8).reshape(1, 1, 2, 2, 2).repeat_interleave(2, 2).repeat_interleave(2, 3)
    labels = labels.repeat_interleave(2, 4)  # (1, 1, 4, 4, 4), blocks of 2x2x2
    assert labels_to_grid(labels, (2, 2, 2)).flatten().tolist() == list(range(8))
    assert torch.equal(labels_to_grid(labels, labels.shape[2:]), labels)


@pytest.mark.parametrize("shape, grid", [((1, 2, 4, 4), (2, 2)), ((1, 1, 4, 4), (2, 2, 2)), ((4, 4), (2, 2))])
def test_labels_to_grid_ill_shaped_raises(shape: tuple[int, ...], grid: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="labels must have shape"):
        labels_to_grid(torch.zeros(shape), grid)


def test_class_present_mask() -> None:
    labels = torch.tensor([[[[0, 2], [2, 5]]]])
    assert class_present_mask(labels, 4, ignore_index=5).tolist() == [True, False, True, False]
    assert class_present_mask(torch.full((1, 1, 2, 2), 5), 4, ignore_index=5).tolist() == [False] * 4
    with pytest.raises(ValueError, match="label values"):
        class_present_mask(labels, 4)
    with pytest.raises(ValueError, match="label values"):
        class_present_mask(torch.tensor([[[[-1, 0]]]]), 4)
