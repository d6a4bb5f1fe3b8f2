"""Every loss of the package stays finite under fp16 and bf16 autocast at 3d_fullres voxel counts (issue #14).

Losses covered (each under ``torch.autocast("cpu", dtype=...)`` for float16 and bfloat16, with near-initial and
with extreme inputs; the loss and the gradients w.r.t. its inputs must be finite):

- ``class_distillation.ClasswiseKDLoss`` (UMMKD) and ``class_mean_logits``;
- ``cross_modal_consistency.ChannelSemanticConsistencyLoss`` (CMC's CSC, both descriptors) and
  ``AnatomicalConsistencyLoss`` (CAC, both modes);
- ``pseudo_label.ConfidentPseudoLabelLoss`` (CMC's same-modality self-training, ST);
- ``semantic_consistency.EAMLoss`` (grounding, semantic and structured terms of the EAM);
- ``adversarial.AdversarialLoss`` (both modes, discriminator and weighted generator loss), ``ShapePreservationLoss``
  and ``StyleTransferLoss.generator_terms``;
- ``mutual_distillation.MutualDistillationLoss`` (MAML; ``MutualLearningLoss`` adds only nnU-Net's segmentation loss
  to it, so it is covered through this one).

Losses on voxel maps get 2 x 128^3 voxels (a 3d_fullres batch of two 128^3 patches), where sums over the batch
pass fp16's largest number (65504). The inputs are made in the low precision dtype themselves: on a GPU the network's
outputs under autocast are fp16 (the convolutions run in fp16), while CPU autocast lowers fewer ops, so this is what
puts the losses on the fp16 path here. Few classes (K = 3) keep the file fast on two CPU cores.
"""

from __future__ import annotations

from functools import cache
from types import SimpleNamespace

import pytest
import torch

from nnunet_unpaired.losses.adversarial import AdversarialLoss, StyleTransferLoss
from nnunet_unpaired.losses.class_distillation import ClasswiseKDLoss, class_mean_logits
from nnunet_unpaired.losses.cross_modal_consistency import AnatomicalConsistencyLoss, ChannelSemanticConsistencyLoss
from nnunet_unpaired.losses.mutual_distillation import MutualDistillationLoss
from nnunet_unpaired.losses.pseudo_label import ConfidentPseudoLabelLoss
from nnunet_unpaired.losses.semantic_consistency import EAMLoss
from nnunet_unpaired.modules.external_attention import EAMOutput

DTYPES = [torch.float16, torch.bfloat16]
REGIMES = ["initial", "extreme"]
K = 3
FULLRES = (2, 128, 128, 128)  # batch size and patch of a 3d_fullres configuration: 2 x 128^3 voxels
# CSC reads the bottleneck: nnU-Net's 3d_fullres network on 128^3 patches ends at 320 channels on a 4^3 grid.
BOTTLENECK = (2, 320, 4, 4, 4)
# The EAM's class representations are K vectors of the decoder stage's width (64 at 3d_fullres stage -2).
EMBED_DIM = 64


# The big inputs are cached (seeds 0 and 1 only; callers copy them, never modify them in place): making them
# afresh for every test took a third of the file's time.
@cache
def _voxel_map(channels: int, regime: str, seed: int) -> torch.Tensor:
    """(2, channels, 128, 128, 128) float32 values: near-initial logits or extreme ones."""
    base = torch.randn((FULLRES[0], channels, *FULLRES[1:]), generator=torch.Generator().manual_seed(seed))
    if regime == "initial":
        # An untrained network's logits: small, with a per-class offset, so that each class sum over ~1.4M voxels
        # is far beyond 65504 (the offsets are what made UMMKD's fp16 sums inf).
        offsets = torch.linspace(-0.2, 0.2, channels).view(1, channels, 1, 1, 1)
        return 0.5 * base + offsets
    extreme = 1e4 * base.sign()  # +-1e4, within fp16's range
    if channels > 1:
        extreme[:, 0] = 1e4  # a constant, maximally confident channel: its class sums reach 1e10
    return extreme


@cache
def _labels(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, K, (FULLRES[0], 1, *FULLRES[1:]), generator=g)


def _leaf(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.to(dtype).requires_grad_()


def _assert_finite(loss: torch.Tensor, *inputs: torch.Tensor) -> None:
    """The loss is a finite scalar and backpropagates finite gradients (in the inputs' own dtype) to every input."""
    assert loss.ndim == 0 and torch.isfinite(loss), f"loss is {loss.item()}"
    loss.backward()
    for i, x in enumerate(inputs):
        assert x.grad is not None, f"input {i} got no gradient"
        assert torch.isfinite(x.grad).all(), f"input {i}: non-finite gradient ({x.grad.dtype})"


# ------------------------------------------------------------------------------------------------ UMMKD


def test_fp16_class_sums_overflow_and_class_mean_logits_does_not() -> None:
    """The UMMKD bug: the old ``einsum`` of a float32 one-hot and ``logits.float()`` ran in fp16 under autocast.

    The first assertion shows that the hazard is real on this platform (the old code gave inf class means here,
    hence a NaN loss); the others, that ``class_mean_logits`` now gives the float64 means.
    """
    logits = _voxel_map(K, "initial", seed=0).half()
    labels = _labels(seed=0)
    member = (labels.reshape(2, 1, -1) == torch.arange(K).view(1, K, 1)).float()  # (B, K, N)
    with torch.autocast("cpu", dtype=torch.float16):
        naive = torch.einsum("bkn,bcn->kc", member, logits.reshape(2, K, -1).float())  # the old computation
        means, present = class_mean_logits(logits, labels, K)
    assert not torch.isfinite(naive).all(), "fp16 class sums did not overflow: this test no longer shows the bug"
    assert means.dtype == torch.float32 and present.all()
    sums = torch.bmm(member.double(), logits.reshape(2, K, -1).double().transpose(1, 2)).sum(0)
    expected = sums / member.double().sum(dim=(0, 2))[:, None]
    torch.testing.assert_close(means.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_ummkd_kd_loss(dtype: torch.dtype, regime: str) -> None:
    logits_a = _leaf(_voxel_map(K, regime, seed=0), dtype)
    logits_b = _leaf(_voxel_map(K, regime, seed=1).flip(1), dtype)  # other class means in B
    labels_a, labels_b = _labels(seed=0), _labels(seed=1)
    with torch.autocast("cpu", dtype=dtype):
        loss = ClasswiseKDLoss()(logits_a, labels_a, logits_b, labels_b)
    _assert_finite(loss, logits_a, logits_b)
    # The same value as in float32 from the same (rounded) inputs: autocast must not change the loss (the old bf16
    # sums were rounded to 8 bits).
    reference = ClasswiseKDLoss()(logits_a.detach().float(), labels_a, logits_b.detach().float(), labels_b)
    torch.testing.assert_close(loss.detach(), reference, rtol=1e-4, atol=1e-6)
    assert loss.item() > 0


# ------------------------------------------------------------------------------------------------ CMC


def _bottleneck(regime: str, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(BOTTLENECK, generator=g)
    if regime == "extreme":
        x = 1e4 * x.sign()
        x[:, 0] = 0.5  # a constant channel (its centred norm is 0: F.normalize(eps=1e-8) gave gradients ~1e13)
        x[:, 1] = 0.0  # an all-zero channel (a dead activation: a zero spatial descriptor)
    return x


@pytest.mark.parametrize("descriptor", ["gram", "spatial"])
@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cmc_channel_semantic_consistency(dtype: torch.dtype, regime: str, descriptor: str) -> None:
    features_a = _leaf(_bottleneck(regime, seed=7), dtype)
    features_b = _leaf(_bottleneck("initial", seed=8), dtype)
    with torch.autocast("cpu", dtype=dtype):
        loss = ChannelSemanticConsistencyLoss(descriptor=descriptor)(features_a, features_b)
    _assert_finite(loss, features_a, features_b)
    if regime == "extreme":
        # Below fp16's largest number by a margin a GradScaler can absorb (the old code: inf).
        assert features_a.grad.float().abs().max() < 1e3


@pytest.mark.parametrize("mode", ["pooled", "voxel"])
@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cmc_anatomical_consistency(dtype: torch.dtype, regime: str, mode: str) -> None:
    logits_a = _leaf(_voxel_map(K, regime, seed=0), dtype)
    logits_b = _leaf(_voxel_map(K, regime, seed=1), dtype)
    with torch.autocast("cpu", dtype=dtype):
        loss = AnatomicalConsistencyLoss(mode)(torch.softmax(logits_a, 1), torch.softmax(logits_b, 1))
    _assert_finite(loss, logits_a, logits_b)


# ------------------------------------------------------------------------------------------------ EAM


def _class_repr(regime: str, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(K, EMBED_DIM, generator=g)
    if regime == "extreme":
        r = 1e4 * r.sign()
        r[0] = 0.0  # a present class whose representation is zero (cosine eps 1e-8 gave gradients ~1e8)
    return r


@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cmc_pseudo_label(dtype: torch.dtype, regime: str) -> None:
    student = _leaf(_voxel_map(K, regime, seed=0), dtype)
    teacher = torch.softmax(_voxel_map(K, regime, seed=1).to(dtype), 1)  # the teacher's softmax in the low dtype
    with torch.autocast("cpu", dtype=dtype):
        loss, share = ConfidentPseudoLabelLoss(threshold=0.5)(student, teacher)
    assert 0 < share.item() < 1
    _assert_finite(loss, student)
    reference, _ = ConfidentPseudoLabelLoss(threshold=0.5)(student.detach().float(), teacher.float())
    torch.testing.assert_close(loss.detach(), reference, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_eam_losses(dtype: torch.dtype, regime: str) -> None:
    logits_a = _leaf(_voxel_map(K, regime, seed=0), dtype)
    logits_b = _leaf(_voxel_map(K, regime, seed=1), dtype)
    repr_a = _leaf(_class_repr(regime, seed=13), dtype)
    repr_b = _leaf(_class_repr("initial", seed=14), dtype)
    with torch.autocast("cpu", dtype=dtype):
        labels_a, labels_b = _labels(seed=0), _labels(1)
        present = torch.ones(K, dtype=torch.bool)
        terms = EAMLoss()(EAMOutput(logits_a, repr_a, present, labels_a), EAMOutput(logits_b, repr_b, present, labels_b))
    for name in ("attention", "semantic", "structured"):
        assert torch.isfinite(terms[name]), f"{name} is {terms[name].item()}"
    _assert_finite(terms["total"], logits_a, logits_b, repr_a, repr_b)


# ------------------------------------------------------------------------------------------------ GLUA


@pytest.mark.parametrize("mode", ["lsgan", "bce"])
@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_glua_adversarial(dtype: torch.dtype, regime: str, mode: str) -> None:
    real = _leaf(_voxel_map(1, regime, seed=0), dtype)
    fake = _leaf(_voxel_map(1, regime, seed=1), dtype)
    weight = torch.rand(real.shape, generator=torch.Generator().manual_seed(19)).to(dtype)
    gan = AdversarialLoss(mode)
    with torch.autocast("cpu", dtype=dtype):
        loss = gan.discriminator_loss(real, fake) + gan.generator_loss(fake, weight=weight)
    _assert_finite(loss, real, fake)


@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_glua_style_transfer_and_shape(dtype: torch.dtype, regime: str) -> None:
    """The style-transfer objective on 3d_fullres images (its shape term is ShapePreservationLoss)."""

    def image(seed: int) -> torch.Tensor:
        return _leaf(_voxel_map(1, regime, seed), dtype)

    def small(shape: tuple[int, ...], seed: int) -> torch.Tensor:  # content codes and style vectors
        return _leaf(torch.randn(shape, generator=torch.Generator().manual_seed(seed)), dtype)

    content, style = (2, 8, 32, 32, 32), (2, 8)
    p = SimpleNamespace(
        source=image(0), target=image(1), rec_source=image(1), rec_target=image(0),
        source_to_target=image(1), target_to_source=image(0),
        content_source=small(content, 26), content_target=small(content, 27),
        content_source_to_target=small(content, 28), content_target_to_source=small(content, 29),
        style_source_used=small(style, 30), style_target_used=small(style, 31),
        style_source_to_target=small(style, 32), style_target_to_source=small(style, 33),
        cycle_source=image(0), cycle_target=image(1),
    )  # fmt: skip
    scores = small((2, 1, 16, 16, 16), 34)
    with torch.autocast("cpu", dtype=dtype):
        terms = StyleTransferLoss().generator_terms(p, scores, scores, (scores, scores))
        total = sum(terms.values())
    for name, value in terms.items():
        assert torch.isfinite(value), f"{name} is {value.item()}"
    _assert_finite(total, *vars(p).values(), scores)


# ------------------------------------------------------------------------------------------------ MAML


@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_maml_mutual_distillation(dtype: torch.dtype, regime: str) -> None:
    fused = _leaf(_voxel_map(K, regime, seed=0), dtype)
    peers = [_leaf(_voxel_map(K, regime, seed=1), dtype), _leaf(_voxel_map(K, regime, seed=0).flip(1), dtype)]
    with torch.autocast("cpu", dtype=dtype):
        loss = MutualDistillationLoss(temperature=2.0)(fused, peers)
    _assert_finite(loss, fused, *peers)
