"""UMMKD's class-wise distillation loss (Dou et al., IEEE TMI 2020)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from nnunet_unpaired.losses import class_distillation
from nnunet_unpaired.losses.class_distillation import ClasswiseKDLoss, class_mean_logits

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# B=2, K=3, 2x2 spatial
LOGITS_A = torch.tensor(
    [
        [[[1.0, 2.0], [0.0, -1.0]], [[0.5, 0.0], [1.0, 2.0]], [[-1.0, 1.0], [3.0, 0.0]]],
        [[[2.0, 0.0], [1.0, 1.0]], [[0.0, 1.5], [-2.0, 0.5]], [[1.0, -1.0], [0.0, 2.5]]],
    ]
)
LABELS_A = torch.tensor([[[[0, 0], [1, 2]]], [[[1, 0], [2, 2]]]])  # every class present
LOGITS_B = torch.tensor([[[[0.0, 1.0, -1.0]], [[2.0, 0.5, 0.0]], [[1.0, 1.0, 2.0]]]])  # B=1, 1x3 spatial
LABELS_B = torch.tensor([[[[0, 2, 0]]]])  # class 1 absent in B


def _means_np(logits: torch.Tensor, labels: torch.Tensor, k: int) -> np.ndarray:
    x = logits.numpy().astype(np.float64).transpose(0, *range(2, logits.ndim), 1).reshape(-1, logits.shape[1])
    y = labels.numpy().reshape(-1)
    return np.stack([x[y == c].mean(0) if (y == c).any() else np.zeros(logits.shape[1]) for c in range(k)])


def _sym_kl_np(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    def softmax(v: np.ndarray) -> np.ndarray:
        e = np.exp(v / t - (v / t).max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    p, q = softmax(a), softmax(b)
    return 0.5 * ((p * np.log(p / q)).sum(1) + (q * np.log(q / p)).sum(1))


def test_class_mean_logits_hand_computed() -> None:
    means, present = class_mean_logits(LOGITS_A, LABELS_A, 3)
    assert means.shape == (3, 3) and means.dtype == torch.float32
    np.testing.assert_allclose(means.numpy(), _means_np(LOGITS_A, LABELS_A, 3), rtol=1e-5)
    # class 0 by hand: voxels (0,0,0), (0,0,1), (1,0,1)
    np.testing.assert_allclose(means[0].numpy(), [(1 + 2 + 0) / 3, (0.5 + 0 + 1.5) / 3, (-1 + 1 - 1) / 3], rtol=1e-5)
    assert present.tolist() == [True, True, True]


def test_class_mean_logits_absent_class_and_ignore() -> None:
    means, present = class_mean_logits(LOGITS_B, LABELS_B, 3)
    assert present.tolist() == [True, False, True]
    assert means[1].abs().sum() == 0
    labels = LABELS_B.clone()
    labels[0, 0, 0, 2] = 9  # ignore the second class-0 voxel
    means, present = class_mean_logits(LOGITS_B.double(), labels.float(), 3, ignore_index=9)
    np.testing.assert_allclose(means[0].numpy(), LOGITS_B[0, :, 0, 0].numpy(), rtol=1e-5)
    assert present.tolist() == [True, False, True]


@pytest.mark.parametrize("dim", [2, 3])
def test_class_mean_logits_shapes(dim: int) -> None:
    torch.manual_seed(0)
    spatial = (3,) * dim
    means, present = class_mean_logits(torch.randn(2, 4, *spatial), torch.randint(0, 4, (2, 1, *spatial)), 4)
    assert means.shape == (4, 4) and present.shape == (4,) and present.dtype == torch.bool


def test_class_mean_logits_invalid_input_raises() -> None:
    with pytest.raises(ValueError, match="same grid"):
        class_mean_logits(LOGITS_A, LABELS_A[:, :, :1], 3)
    with pytest.raises(ValueError, match="same grid"):
        class_mean_logits(LOGITS_A, LABELS_A[:, 0], 3)
    with pytest.raises(ValueError, match="label values"):
        class_mean_logits(LOGITS_A, LABELS_A, 2)
    with pytest.raises(ValueError, match="num_classes"):
        class_mean_logits(LOGITS_A, LABELS_A, 0)


@pytest.mark.parametrize("temperature", [2.0, 1.0, 0.5])
def test_kd_hand_computed(temperature: float) -> None:
    value = ClasswiseKDLoss(temperature)(LOGITS_A, LABELS_A, LOGITS_B, LABELS_B)
    sym = _sym_kl_np(_means_np(LOGITS_A, LABELS_A, 3), _means_np(LOGITS_B, LABELS_B, 3), temperature)
    np.testing.assert_allclose(value.item(), (sym[0] + sym[2]) / 2, rtol=1e-5)  # class 1 absent in B


def test_kd_default_temperature_is_two() -> None:
    assert ClasswiseKDLoss().temperature == 2.0


def test_kd_temperature_one_is_the_plain_form() -> None:
    means_a, _ = class_mean_logits(LOGITS_A, LABELS_A, 3)
    means_b, _ = class_mean_logits(LOGITS_B, LABELS_B, 3)
    p, q = torch.softmax(means_a, 1), torch.softmax(means_b, 1)
    kl = torch.nn.functional.kl_div
    plain = 0.5 * (kl(q.log(), p, reduction="none").sum(1) + kl(p.log(), q, reduction="none").sum(1))
    expected = (plain[0] + plain[2]) / 2
    torch.testing.assert_close(ClasswiseKDLoss(1.0)(LOGITS_A, LABELS_A, LOGITS_B, LABELS_B), expected)


def test_kd_large_temperature_goes_to_zero() -> None:
    assert ClasswiseKDLoss(1e4)(LOGITS_A, LABELS_A, LOGITS_B, LABELS_B).item() < 1e-6


def test_kd_identical_is_zero_and_symmetric() -> None:
    loss = ClasswiseKDLoss()
    assert loss(LOGITS_A, LABELS_A, LOGITS_A.clone(), LABELS_A.clone()).abs().item() < 1e-7
    torch.testing.assert_close(
        loss(LOGITS_A, LABELS_A, LOGITS_B, LABELS_B), loss(LOGITS_B, LABELS_B, LOGITS_A, LABELS_A)
    )


def test_kd_absent_class_is_masked() -> None:
    """Class 1 has no voxel in B: changing A's logits on its class-1 voxels leaves the loss unchanged."""
    torch.manual_seed(0)
    changed = LOGITS_A.clone()
    changed += 5.0 * torch.randn_like(changed) * (LABELS_A == 1)
    loss = ClasswiseKDLoss()
    torch.testing.assert_close(
        loss(LOGITS_A, LABELS_A, LOGITS_B, LABELS_B), loss(changed, LABELS_A, LOGITS_B, LABELS_B)
    )


def test_kd_ignore_label() -> None:
    labels = LABELS_B.clone()
    labels[0, 0, 0, 2] = 3  # the ignore label is K, as in nnU-Net
    changed = LOGITS_B.clone()
    changed[0, :, 0, 2] = torch.tensor([10.0, -4.0, 3.0])
    loss = ClasswiseKDLoss(ignore_index=3)
    torch.testing.assert_close(loss(LOGITS_A, LABELS_A, LOGITS_B, labels), loss(LOGITS_A, LABELS_A, changed, labels))
    with pytest.raises(ValueError, match="label values"):
        ClasswiseKDLoss()(LOGITS_A, LABELS_A, LOGITS_B, labels)


def test_kd_no_shared_class_is_a_connected_zero() -> None:
    logits_a = LOGITS_A.clone().requires_grad_(True)
    value = ClasswiseKDLoss()(logits_a, torch.zeros_like(LABELS_A), LOGITS_B, torch.full_like(LABELS_B, 2))
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(logits_a.grad).all()


@pytest.mark.parametrize("dim", [2, 3])
def test_kd_gradients_reach_the_network_from_both_modalities(dim: int) -> None:
    torch.manual_seed(1)
    conv = torch.nn.Conv2d if dim == 2 else torch.nn.Conv3d
    network = conv(1, 3, 3, padding=1)
    image_a, image_b = torch.randn(2, 1, *(4,) * dim), torch.randn(1, 1, *(5,) * dim)
    labels_a, labels_b = torch.randint(0, 3, (2, 1, *(4,) * dim)), torch.randint(0, 3, (1, 1, *(5,) * dim))
    image_b.requires_grad_(True)
    value = ClasswiseKDLoss()(network(image_a), labels_a, network(image_b), labels_b)
    value.backward()
    assert torch.isfinite(value) and value.item() > 0
    for name, param in network.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name
    assert image_b.grad is not None and image_b.grad.abs().sum() > 0  # modality B is not detached


@pytest.mark.parametrize("device", DEVICES)
def test_kd_uses_the_input_device(device: str) -> None:
    value = ClasswiseKDLoss()(LOGITS_A.to(device), LABELS_A.to(device), LOGITS_B.to(device), LABELS_B.to(device))
    assert value.device.type == device
    assert ".cuda(" not in inspect.getsource(class_distillation)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), "2", True])
def test_kd_invalid_temperature_raises(bad: object) -> None:
    with pytest.raises(ValueError, match="temperature"):
        ClasswiseKDLoss(bad)  # type: ignore[arg-type]


def test_kd_invalid_ignore_index_raises() -> None:
    with pytest.raises(ValueError, match="ignore_index"):
        ClasswiseKDLoss(ignore_index=1.5)  # type: ignore[arg-type]


def test_kd_ill_shaped_input_raises() -> None:
    loss = ClasswiseKDLoss()
    with pytest.raises(ValueError, match="same K"):
        loss(LOGITS_A, LABELS_A, LOGITS_B[:, :2], LABELS_B)
    with pytest.raises(ValueError, match="same K"):
        loss(LOGITS_A, LABELS_A, LOGITS_B[..., None], LABELS_B[..., None])
    with pytest.raises(ValueError, match="same grid"):
        loss(LOGITS_A, LABELS_A, LOGITS_B, LABELS_B[..., :2])
