"""EAM losses (Yang et al., MIDL 2023; formulation ours): grounding, semantic and structured consistency."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch

from nnunet_unpaired.losses.semantic_consistency import (
    EAMLoss,
    attention_grounding_loss,
    class_correlation,
    semantic_consistency_loss,
    structured_consistency_loss,
)
from nnunet_unpaired.modules.external_attention import EAMOutput, ExternalAttentionModule

REPR_A = torch.tensor([[1.0, 0.0, 2.0], [0.5, -1.0, 1.0], [2.0, 2.0, 0.0], [-1.0, 0.5, 0.5]])
REPR_B = torch.tensor([[0.5, 0.5, 2.0], [1.0, -1.0, 0.0], [1.0, 3.0, -1.0], [0.0, 1.0, 1.0]])
ALL = torch.ones(4, dtype=torch.bool)


def _cos_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _corr_np(r: np.ndarray) -> np.ndarray:
    n = r / np.linalg.norm(r, axis=1, keepdims=True)
    return n @ n.T


# --- attention grounding -------------------------------------------------------------------------------------


def test_grounding_hand_computed_with_ignore() -> None:
    logits = torch.tensor([[[[2.0, 0.0], [1.0, -1.0]], [[0.5, 1.0], [0.0, 0.0]], [[-1.0, 3.0], [2.0, 1.0]]]])
    labels = torch.tensor([[[[0, 2], [1, 7]]]])  # the last voxel carries the ignore label
    value = attention_grounding_loss(logits, labels, ignore_index=7)

    x = logits.numpy().astype(np.float64)[0].reshape(3, 4)
    log_softmax = x - np.log(np.exp(x).sum(0, keepdims=True))
    expected = -(log_softmax[0, 0] + log_softmax[2, 1] + log_softmax[1, 2]) / 3
    np.testing.assert_allclose(value.item(), expected, rtol=1e-5)


def test_grounding_ignored_voxels_do_not_matter_and_all_ignored_is_zero() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    labels = torch.randint(0, 3, (2, 1, 4, 4))
    labels[:, :, :2] = 3
    changed = logits.detach().clone()
    changed[:, :, :2] += 10 * torch.randn(2, 3, 2, 4)
    torch.testing.assert_close(
        attention_grounding_loss(logits, labels, 3), attention_grounding_loss(changed, labels, 3)
    )

    zero = attention_grounding_loss(logits, torch.full_like(labels, 3), ignore_index=3)
    zero.backward()
    assert zero.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_grounding_ill_shaped_and_out_of_range_raise() -> None:
    with pytest.raises(ValueError, match="same grid"):
        attention_grounding_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="same grid"):
        attention_grounding_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="label values"):
        attention_grounding_loss(torch.zeros(1, 3, 2, 2), torch.full((1, 1, 2, 2), 3))


# --- semantic consistency ------------------------------------------------------------------------------------


def test_semantic_hand_computed_with_mask() -> None:
    present_a = torch.tensor([True, True, False, True])
    present_b = torch.tensor([True, False, True, True])  # shared: classes 0 and 3
    value = semantic_consistency_loss(REPR_A, REPR_B, present_a, present_b)
    cos = _cos_np(REPR_A.numpy().astype(np.float64), REPR_B.numpy().astype(np.float64))
    np.testing.assert_allclose(value.item(), ((1 - cos[0]) + (1 - cos[3])) / 2, rtol=1e-5)


def test_semantic_identical_is_zero_and_symmetric() -> None:
    assert semantic_consistency_loss(REPR_A, REPR_A.clone(), ALL, ALL).abs().item() < 1e-6
    present_a = torch.tensor([True, True, True, False])
    ab = semantic_consistency_loss(REPR_A, REPR_B, present_a, ALL)
    ba = semantic_consistency_loss(REPR_B, REPR_A, ALL, present_a)
    torch.testing.assert_close(ab, ba)


def test_semantic_absent_class_is_masked() -> None:
    present_b = torch.tensor([True, True, False, True])
    changed = REPR_A.clone()
    changed[2] = torch.tensor([-5.0, 7.0, 1.0])
    torch.testing.assert_close(
        semantic_consistency_loss(REPR_A, REPR_B, ALL, present_b),
        semantic_consistency_loss(changed, REPR_B, ALL, present_b),
    )


def test_semantic_no_shared_class_is_a_connected_zero() -> None:
    repr_a = REPR_A.clone().requires_grad_(True)
    value = semantic_consistency_loss(
        repr_a, REPR_B, torch.tensor([1, 1, 0, 0]).bool(), torch.tensor([0, 0, 1, 1]).bool()
    )
    value.backward()
    assert value.item() == 0.0
    assert repr_a.grad is not None and torch.isfinite(repr_a.grad).all() and repr_a.grad.abs().sum() == 0


# --- structured consistency ----------------------------------------------------------------------------------


def test_class_correlation_is_cosine_matrix() -> None:
    np.testing.assert_allclose(
        class_correlation(REPR_A).numpy(), _corr_np(REPR_A.numpy().astype(np.float64)), rtol=1e-5, atol=1e-7
    )


def test_structured_hand_computed_with_mask() -> None:
    present_a = torch.tensor([True, True, True, False])
    present_b = ALL  # shared: classes 0, 1, 2 -> 6 ordered off-diagonal pairs
    value = structured_consistency_loss(REPR_A, REPR_B, present_a, present_b)
    diff = _corr_np(REPR_A.numpy().astype(np.float64)) - _corr_np(REPR_B.numpy().astype(np.float64))
    pairs = [(0, 1), (0, 2), (1, 2)]
    expected = 2 * sum(diff[i, j] ** 2 for i, j in pairs) / 6
    np.testing.assert_allclose(value.item(), expected, rtol=1e-5)


def test_structured_identical_is_zero_symmetric_and_scale_invariant() -> None:
    assert structured_consistency_loss(REPR_A, REPR_A.clone(), ALL, ALL).abs().item() < 1e-6
    torch.testing.assert_close(
        structured_consistency_loss(REPR_A, REPR_B, ALL, ALL), structured_consistency_loss(REPR_B, REPR_A, ALL, ALL)
    )
    scaled = REPR_A * torch.tensor([[2.0], [0.5], [3.0], [1.0]])
    assert structured_consistency_loss(REPR_A, scaled, ALL, ALL).abs().item() < 1e-6


def test_structured_absent_class_is_masked() -> None:
    present_a = torch.tensor([True, False, True, True])
    changed = REPR_B.clone()
    changed[1] = torch.tensor([9.0, -3.0, 4.0])
    torch.testing.assert_close(
        structured_consistency_loss(REPR_A, REPR_B, present_a, ALL),
        structured_consistency_loss(REPR_A, changed, present_a, ALL),
    )


def test_structured_fewer_than_two_shared_is_a_connected_zero() -> None:
    repr_a = REPR_A.clone().requires_grad_(True)
    one = torch.tensor([True, False, False, False])
    value = structured_consistency_loss(repr_a, REPR_B, one, ALL)
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(repr_a.grad).all()


@pytest.mark.parametrize("loss", [semantic_consistency_loss, structured_consistency_loss])
def test_consistency_ill_shaped_raises(loss: Callable[..., torch.Tensor]) -> None:
    with pytest.raises(ValueError, match="class representations"):
        loss(REPR_A, REPR_B[:3], ALL, ALL)
    with pytest.raises(ValueError, match="class representations"):
        loss(REPR_A[None], REPR_B[None], ALL, ALL)
    with pytest.raises(ValueError, match="present masks"):
        loss(REPR_A, REPR_B, ALL[:3], ALL)


# --- EAMLoss -------------------------------------------------------------------------------------------------


def _outputs(dim: int = 2, seed: int = 0, ignore_index=None, labels_b=None):
    torch.manual_seed(seed)
    module = ExternalAttentionModule(in_channels=3, num_classes=3, dim=dim, ignore_index=ignore_index)
    spatial = (4,) * dim
    labels_a = torch.randint(0, 3, (2, 1, *spatial))
    labels_b = torch.randint(0, 3, (1, 1, *spatial)) if labels_b is None else labels_b
    out_a, out_b = module(torch.randn(2, 3, *spatial), labels_a, torch.randn(1, 3, *spatial), labels_b)
    return out_a, labels_a, out_b, labels_b


@pytest.mark.parametrize("dim", [2, 3])
def test_eam_loss_terms_and_weighted_total(dim: int) -> None:
    out_a, labels_a, out_b, labels_b = _outputs(dim)
    terms = EAMLoss(w_att=0.5, w_sem=2.0, w_str=3.0)(out_a, out_b)
    assert set(terms) == {"attention", "semantic", "structured", "total"}
    expected_att = 0.5 * (
        attention_grounding_loss(out_a.logits, labels_a) + attention_grounding_loss(out_b.logits, labels_b)
    )
    torch.testing.assert_close(terms["attention"], expected_att)
    present_a = torch.bincount(labels_a.flatten(), minlength=3) > 0
    present_b = torch.bincount(labels_b.flatten(), minlength=3) > 0
    torch.testing.assert_close(
        terms["semantic"], semantic_consistency_loss(out_a.class_repr, out_b.class_repr, present_a, present_b)
    )
    torch.testing.assert_close(
        terms["total"], 0.5 * terms["attention"] + 2.0 * terms["semantic"] + 3.0 * terms["structured"]
    )


def test_eam_loss_identical_modalities_and_symmetry() -> None:
    out_a, _, out_b, _ = _outputs()
    loss = EAMLoss()
    same = loss(out_a, out_a)
    assert same["semantic"].abs().item() < 1e-6 and same["structured"].abs().item() < 1e-6
    ab, ba = loss(out_a, out_b), loss(out_b, out_a)
    for key in ab:
        torch.testing.assert_close(ab[key], ba[key])


def test_module_resizes_labels_to_feature_grid() -> None:
    torch.manual_seed(5)
    module = ExternalAttentionModule(in_channels=3, num_classes=3)
    fa, fb = torch.randn(2, 3, 4, 4), torch.randn(1, 3, 4, 4)
    la, lb = torch.randint(0, 3, (2, 1, 4, 4)), torch.randint(0, 3, (1, 1, 4, 4))
    up = [lab.repeat_interleave(2, 2).repeat_interleave(2, 3) for lab in (la, lb)]
    loss = EAMLoss()
    torch.testing.assert_close(loss(*module(fa, up[0], fb, up[1]))["total"], loss(*module(fa, la, fb, lb))["total"])


def test_eam_loss_ignore_label() -> None:
    """Voxels with the ignore label are left out of the grounding and of the class-present masks."""
    labels_b = torch.randint(0, 3, (1, 1, 4, 4), generator=torch.Generator().manual_seed(9))
    labels_b[labels_b == 2] = 3  # class 2 only appears as ignored in B
    out_a, _, out_b, _ = _outputs(ignore_index=3, labels_b=labels_b)
    terms = EAMLoss(ignore_index=3)(out_a, out_b)
    present = torch.tensor([True, True, False])
    assert out_b.present.tolist() == [True, True, False]
    torch.testing.assert_close(
        terms["semantic"], semantic_consistency_loss(out_a.class_repr, out_b.class_repr, present, present)
    )
    with pytest.raises(ValueError, match="label values"):
        _outputs(labels_b=labels_b)  # without the ignore label, 3 is out of range


def test_eam_loss_gradients_reach_network_and_module() -> None:
    torch.manual_seed(3)
    network = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.LeakyReLU())
    module = ExternalAttentionModule(in_channels=4, num_classes=3, dim=3)
    image_a, image_b = torch.randn(2, 1, 4, 4, 4), torch.randn(2, 1, 4, 4, 4)
    labels_a, labels_b = torch.randint(0, 3, (2, 1, 8, 8, 8)), torch.randint(0, 3, (2, 1, 8, 8, 8))
    terms = EAMLoss()(*module(network(image_a), labels_a, network(image_b), labels_b))
    assert all(math.isfinite(v.item()) for v in terms.values())
    terms["total"].backward()
    for name, param in [*network.named_parameters(), *module.named_parameters()]:
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"w_att": -1.0}, "w_att"),
        ({"w_sem": float("nan")}, "w_sem"),
        ({"w_str": float("inf")}, "w_str"),
        ({"w_sem": "1"}, "w_sem"),
        ({"ignore_index": 2.5}, "ignore_index"),
        ({"ignore_index": True}, "ignore_index"),
    ],
)
def test_eam_loss_invalid_arguments_raise(kwargs: dict, bad: str) -> None:
    with pytest.raises(ValueError, match=bad):
        EAMLoss(**kwargs)


def test_eam_loss_mismatched_modules_raise() -> None:
    out_a, _, _, _ = _outputs()
    other = ExternalAttentionModule(in_channels=3, num_classes=4, dim=2)
    labels = torch.zeros(1, 1, 4, 4)
    other_out, _ = other(torch.randn(1, 3, 4, 4), labels, torch.randn(1, 3, 4, 4), labels)
    with pytest.raises(ValueError, match="same module"):
        EAMLoss()(out_a, other_out)


def test_eam_loss_is_float32_under_mixed_precision() -> None:
    torch.manual_seed(4)
    network = torch.nn.Conv2d(1, 4, 3, padding=1)
    module = ExternalAttentionModule(in_channels=4, num_classes=3, dim=2)
    labels = torch.randint(0, 3, (2, 1, 6, 6))
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out_a, out_b = module(network(torch.randn(2, 1, 6, 6)), labels, network(torch.randn(2, 1, 6, 6)), labels)
        terms = EAMLoss()(out_a, out_b)
    assert out_a.class_repr.dtype == torch.float32
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in terms.values())
    terms["total"].backward()
    assert torch.isfinite(module.memory.grad).all() and torch.isfinite(network.weight.grad).all()
