"""The benchmark's mechanism measurement (issue 15 item 3): class-feature agreement of A's and B's test cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nnunet_unpaired.benchmark.mechanism import _inputs, agreement, mechanism_markdown, stage_of


def _stats(protos: torch.Tensor, seed: int, n: int = 400, noise: float = 0.3) -> dict:
    """Collected statistics of one modality whose voxels of class k are protos[k] plus noise."""
    g = torch.Generator().manual_seed(seed)
    k, c = protos.shape
    labels = torch.arange(k).repeat_interleave(n)
    feats = protos[labels] + noise * torch.randn(len(labels), c, generator=g)
    onehot = torch.nn.functional.one_hot(labels, k).double()
    return {"sums": onehot.T @ feats.double(), "counts": onehot.sum(0).float(), "total": feats.double().sum(0),
            "total_sq": feats.double().square().sum(0), "num_classes": k, "cases": 1,
            "probe": {j: feats[labels == j] for j in range(k)}}


def test_same_class_features_agree_and_the_probe_transfers() -> None:
    protos = torch.randn(3, 6, generator=torch.Generator().manual_seed(0)) * 2
    result = agreement(_stats(protos, 1), _stats(protos, 2), labels={"liver": 1, "spleen": 2})
    assert result["agreement"] > 0.95 and result["structure_gap"] < 0.01
    assert set(result["per_class"]) == {"liver", "spleen"}
    assert result["probe_a_to_b"] > 0.95 and result["probe_a_to_a"] > 0.95


def test_unrelated_class_features_disagree_and_the_probe_fails() -> None:
    g = torch.Generator().manual_seed(3)
    protos_a, protos_b = torch.randn(3, 6, generator=g) * 2, torch.randn(3, 6, generator=g) * 2
    result = agreement(_stats(protos_a, 1), _stats(protos_b, 2))
    aligned = agreement(_stats(protos_a, 1), _stats(protos_a, 2))
    assert result["agreement"] < aligned["agreement"] - 0.3
    assert result["structure_gap"] > 0.05
    assert result["probe_a_to_b"] < 0.8 and result["probe_a_to_a"] > 0.95


def test_a_shift_of_one_modality_lowers_the_agreement() -> None:
    """Standardised together, not per modality: B = A + a constant offset is not counted as aligned."""
    protos = torch.randn(3, 6, generator=torch.Generator().manual_seed(5))
    shifted = agreement(_stats(protos, 1), _stats(protos + 3.0, 2))
    assert shifted["agreement"] < 0.5


def test_inputs_pad_to_the_stride_and_ignore_the_padding() -> None:
    data = np.random.default_rng(0).normal(size=(1, 5, 20, 27)).astype(np.float32)
    seg = np.zeros((1, 5, 20, 27), dtype=np.int16)
    seg[0, 1, 5:10, 5:10] = 1
    seg[0, 3, 2:4, 2:4] = 2
    x, y = _inputs(data, seg, (32, 32), (8, 8), max_slices=8)
    assert x.shape == (2, 1, 24, 32) and y.shape == (2, 1, 24, 32)  # slices 1 and 3 only (foreground)
    assert (y == -1).sum() == 2 * (24 * 32 - 20 * 27)
    x3, y3 = _inputs(data, seg, (4, 16, 16), (1, 8, 8), max_slices=8)
    assert x3.shape == (1, 1, 4, 16, 16) and (y3 > 0).any()
    assert _inputs(data, np.zeros_like(seg), (32, 32), (8, 8), 8) is None


def test_stage_and_markdown() -> None:
    assert stage_of({}) == -2 and stage_of({"nnUNet_unpaired_eam_stages": "-1,-3"}) == -1
    runs = [{"method": "joint", "stage": -2, "agreement": 0.5, "structure_gap": 0.1, "probe_a_to_b": 0.4,
             "probe_a_to_a": 0.9},
            {"method": "joint", "stage": -2, "agreement": 0.7, "structure_gap": math.nan, "probe_a_to_b": 0.6,
             "probe_a_to_a": 0.9}]
    text = "\n".join(mechanism_markdown(runs))
    assert "| joint | -2 | 0.600 (0.500, 0.700) | 0.100 (0.100, nan) |" in text
    assert mechanism_markdown([]) == []
