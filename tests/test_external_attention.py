"""ExternalAttentionModule (Yang et al., MIDL 2023; formulation ours, docs/eam.md) and its label helpers.

Besides values and shapes, these tests check that the module's losses measure what they are for (issue 15): with the
network's features held fixed and misaligned across modalities, optimizing the module cannot drive the consistency
terms down; with features whose class means agree they are near zero; grounding makes slot k attend to class k.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from nnunet_unpaired.losses.semantic_consistency import EAMLoss
from nnunet_unpaired.modules import external_attention
from nnunet_unpaired.modules.external_attention import (
    EAMOutput,
    ExternalAttentionModule,
    class_means,
    class_present_mask,
    labels_to_grid,
    shared_standardization,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _labels(batch: int, spatial: tuple[int, ...], k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, k, (batch, 1, *spatial), generator=g)


@pytest.mark.parametrize("dim, spatial", [(2, (5, 6)), (3, (3, 4, 5))])
def test_output_shapes(dim: int, spatial: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    module = ExternalAttentionModule(in_channels=6, num_classes=4, dim=dim)
    out_a, out_b = module(torch.randn(3, 6, *spatial), _labels(3, spatial, 4, 0),
                          torch.randn(2, 6, *spatial), _labels(2, spatial, 4, 1))
    for out, batch in ((out_a, 3), (out_b, 2)):
        assert isinstance(out, EAMOutput)
        assert out.logits.shape == (batch, 4, *spatial) and out.labels.shape == (batch, 1, *spatial)
        assert out.class_repr.shape == (4, 6) and out.present.shape == (4,)
        assert torch.isfinite(out.logits).all() and torch.isfinite(out.class_repr).all()
    assert module.memory.shape == (4, 6) and module.temperature == 0.1


def test_hand_computed_values() -> None:
    """Common standardisation over both batches, label-masked means, cosine logits over tau, by hand in numpy."""
    module = ExternalAttentionModule(in_channels=2, num_classes=2, dim=2, temperature=0.5)
    memory = np.array([[1.0, -0.5], [0.25, 2.0]])
    with torch.no_grad():
        module.memory.copy_(torch.tensor(memory))
    fa = torch.tensor([[[[0.5, -1.0]], [[2.0, 0.0]]]])  # (1, 2, 1, 2)
    fb = torch.tensor([[[[1.5, 0.25, 3.0]], [[-0.5, 1.0, 1.0]]]])  # (1, 2, 1, 3)
    la, lb = torch.tensor([[[[0, 1]]]]), torch.tensor([[[[1, 1, 0]]]])
    out_a, out_b = module(fa, la, fb, lb)

    voxels = np.concatenate([fa.numpy().reshape(2, -1), fb.numpy().reshape(2, -1)], axis=1).astype(np.float64)
    mean, std = voxels.mean(1, keepdims=True), voxels.std(1, keepdims=True)  # population std, both batches
    za, zb = (fa.numpy().reshape(2, -1) - mean) / std, (fb.numpy().reshape(2, -1) - mean) / std
    np.testing.assert_allclose(out_a.class_repr.numpy(), np.stack([za[:, 0], za[:, 1]]), rtol=1e-5)
    np.testing.assert_allclose(out_b.class_repr.numpy(), np.stack([zb[:, 2], zb[:, :2].mean(1)]), rtol=1e-5)
    unit_m = memory / np.linalg.norm(memory, axis=1, keepdims=True)
    logits_b = unit_m @ (zb / np.linalg.norm(zb, axis=0, keepdims=True)) / 0.5
    np.testing.assert_allclose(out_b.logits.detach().numpy().reshape(2, 3), logits_b, rtol=1e-5)
    assert out_a.present.tolist() == [True, True] and out_b.present.tolist() == [True, True]


def test_standardisation_is_shared_and_without_gradient() -> None:
    """One mean/std over both modalities: a shift of B against A stays visible in the class means."""
    torch.manual_seed(1)
    fa = torch.randn(2, 3, 4, 4)
    labels = _labels(2, (4, 4), 3, 0)
    module = ExternalAttentionModule(in_channels=3, num_classes=3)
    out_a, out_b = module(fa, labels, fa + 5.0, labels)
    diff = out_b.class_repr - out_a.class_repr
    assert torch.all(diff > 0.5), diff  # the +5 shift is not standardised away per modality
    valid = torch.ones(2, 1, 4, 4, dtype=torch.bool)
    mean, std = shared_standardization([fa.requires_grad_()], [valid])
    assert not mean.requires_grad and not std.requires_grad
    torch.testing.assert_close(mean, fa.detach().mean((0, 2, 3)))


def test_class_means_by_hand_with_ignored_voxels() -> None:
    feats = torch.tensor([[[[1.0, 2.0, 3.0, 4.0]]]])  # (1, 1, 1, 4)
    labels = torch.tensor([[[[0, 1, 1, 0]]]])
    valid = torch.tensor([[[[True, True, False, True]]]])
    means, present = class_means(feats, labels, 3, valid)
    assert means[:, 0].tolist() == [2.5, 2.0, 0.0] and present.tolist() == [True, True, False]


def test_gradients_reach_network_and_module() -> None:
    torch.manual_seed(2)
    network = torch.nn.Conv3d(1, 4, kernel_size=3, padding=1)
    module = ExternalAttentionModule(in_channels=4, num_classes=3, dim=3)
    x_a, x_b = torch.randn(2, 1, 4, 4, 4), torch.randn(2, 1, 4, 4, 4)
    terms = EAMLoss()(*module(network(x_a), _labels(2, (4, 4, 4), 3, 0), network(x_b), _labels(2, (4, 4, 4), 3, 1)))
    terms["total"].backward()
    for name, param in [*network.named_parameters(), *module.named_parameters()]:
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name


def _misaligned_features(seed: int = 0, k: int = 3, c: int = 8):
    """Fixed network features: per class a prototype plus noise, B's class prototypes rotated against A's."""
    g = torch.Generator().manual_seed(seed)
    proto_a = torch.randn(k, c, generator=g) * 2
    proto_b = torch.randn(k, c, generator=g) * 2  # unrelated to A's: misaligned
    labels_a, labels_b = _labels(2, (8, 8), k, seed + 1), _labels(2, (8, 8), k, seed + 2)

    def render(proto, labels):
        feats = proto[labels[:, 0]].permute(0, 3, 1, 2)  # (B, C, 8, 8)
        return feats + 0.3 * torch.randn(feats.shape, generator=g)

    return render(proto_a, labels_a), labels_a, render(proto_b, labels_b), labels_b, render(proto_a, labels_b)


def _optimize_module(module, loss, fa, la, fb, lb, steps=300):
    optimizer = torch.optim.Adam(module.parameters(), lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        terms = loss(*module(fa, la, fb, lb))
        terms["total"].backward()
        optimizer.step()
    with torch.no_grad():
        return loss(*module(fa, la, fb, lb))


def test_module_alone_cannot_zero_consistency_of_misaligned_features() -> None:
    """The shortcut of issue 15: the former module drove both consistency terms to ~0 with features held fixed."""
    fa, la, fb, lb, _ = _misaligned_features()
    module = ExternalAttentionModule(in_channels=8, num_classes=3)
    loss = EAMLoss()
    with torch.no_grad():
        before = loss(*module(fa, la, fb, lb))
    after = _optimize_module(module, loss, fa, la, fb, lb)
    assert after["attention"] < 0.5 * before["attention"]  # the module did learn (its grounding)
    assert after["semantic"] > 0.3, after  # unrelated prototypes: far from aligned, and it stays so
    assert after["structured"] > 0.05, after
    torch.testing.assert_close(after["semantic"], before["semantic"])
    torch.testing.assert_close(after["structured"], before["structured"])


def test_consistency_near_zero_when_class_means_agree() -> None:
    fa, la, _, lb, fb_aligned = _misaligned_features()
    terms = EAMLoss()(*ExternalAttentionModule(in_channels=8, num_classes=3)(fa, la, fb_aligned, lb))
    assert terms["semantic"] < 0.01 and terms["structured"] < 0.01, terms


def test_grounding_makes_slot_k_attend_to_class_k() -> None:
    fa, la, _, lb, fb = _misaligned_features(seed=3)
    module = ExternalAttentionModule(in_channels=8, num_classes=3)
    _optimize_module(module, EAMLoss(w_sem=0.0, w_str=0.0), fa, la, fb, lb, steps=200)
    with torch.no_grad():
        out_a, out_b = module(fa, la, fb, lb)
    for out in (out_a, out_b):
        attention = module.attention(out.logits)  # (B, K, H, W), softmax over the slots
        for k in range(3):
            mass = attention[:, k]
            share = (mass * (out.labels[:, 0] == k)).sum() / mass.sum()
            assert share > 0.9, (k, float(share))


@pytest.mark.parametrize("device", DEVICES)
def test_outputs_on_input_device(device: str) -> None:
    module = ExternalAttentionModule(in_channels=2, num_classes=2, dim=2).to(device)
    labels = torch.zeros(1, 1, 6, 6, device=device)
    out_a, _ = module(torch.randn(1, 2, 3, 3, device=device), labels, torch.randn(1, 2, 3, 3, device=device), labels)
    assert out_a.logits.device.type == device and out_a.class_repr.device.type == device
    assert labels_to_grid(labels, (3, 3)).device.type == device
    assert class_present_mask(labels, 2).device.type == device


def test_source_never_moves_to_cuda_itself() -> None:
    assert ".cuda(" not in inspect.getsource(external_attention)


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"in_channels": 0, "num_classes": 3}, "in_channels"),
        ({"in_channels": 2, "num_classes": 1}, "num_classes"),
        ({"in_channels": 2, "num_classes": 3, "dim": 1}, "dim"),
        ({"in_channels": 2, "num_classes": 3, "dim": 4}, "dim"),
        ({"in_channels": 2, "num_classes": 3, "temperature": 0.0}, "temperature"),
        ({"in_channels": 2, "num_classes": 3, "ignore_index": 1.5}, "ignore_index"),
    ],
)
def test_invalid_arguments_raise(kwargs: dict, bad: str) -> None:
    with pytest.raises(ValueError, match=bad):
        ExternalAttentionModule(**kwargs)


@pytest.mark.parametrize("shape", [(1, 3, 4, 4), (1, 2, 4, 4, 4), (2, 4), (2, 2, 4)])
def test_ill_shaped_features_raise(shape: tuple[int, ...]) -> None:
    module = ExternalAttentionModule(in_channels=2, num_classes=2, dim=2)
    good = torch.randn(1, 2, 4, 4)
    labels = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match="features must have shape"):
        module(good, labels, torch.randn(*shape), labels)


def test_labels_out_of_range_and_batch_mismatch_raise() -> None:
    module = ExternalAttentionModule(in_channels=2, num_classes=2, dim=2)
    feats = torch.randn(2, 2, 4, 4)
    with pytest.raises(ValueError, match="label values"):
        module(feats, torch.full((2, 1, 4, 4), 2), feats, torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="batch size"):
        module(feats, torch.zeros(1, 1, 4, 4), feats, torch.zeros(2, 1, 4, 4))


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
