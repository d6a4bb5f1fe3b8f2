"""Losses of the EAM method: attention grounding, semantic consistency and structured consistency.

Paper: Yang, Zhu, Wang, Li, Zhang, "Toward Unpaired Multi-modal Medical Image Segmentation via Learning
Structured Semantic Consistency", MIDL 2023 (PMLR 227:1602-1622, 2024; arXiv 2206.10571).

The paper states that the class representations of the two modalities (semantic consistency) and their
correlations (structured consistency) are aligned through an external attention module. Its formulas were not
available to us; the formulation below is OUR DESIGN (docs/eam.md, "Formulation"). The class representations are
the network's label-masked class means of its standardised decoder features
(:class:`nnunet_unpaired.modules.external_attention.ExternalAttentionModule`), so:

- grounding ``L_att``: cross-entropy over the K memory slots at every voxel of the attention logits
  ``cos(Z_v, M_k) / tau`` against the labels on the feature grid; slot k attends to class k and every voxel of class
  k, in both modalities, is pulled towards the shared anchor ``M_k``; averaged over the two modalities;
- semantic ``L_sem``: mean over the classes present in BOTH modalities' batches of ``1 - cos(R^A_k, R^B_k)``;
- structured ``L_str``: with ``G = norm(R) norm(R)^T`` (K x K cosine correlations, rows L2-normalised),
  the mean squared difference of ``G^A`` and ``G^B`` over the ordered pairs (i, j), i != j, of classes present
  in both (the diagonal is 1 in both and carries no information, so it is left out);
- neither consistency term depends on a parameter of the module: the module cannot lower them by itself (the
  shortcut of the former attention-pooled representations, issue 15); only the network's features can;
- a class is "present" in a modality when at least one non-ignored voxel of the labels, resized to the feature grid
  by nearest neighbour, has that class; absent classes are masked out. With no shared class (or fewer than two for
  ``L_str``) the loss is a zero that is still connected to the graph (finite, zero gradients);
- all three are computed in float32, also under mixed precision; the cosines normalise with
  :func:`nnunet_unpaired.losses.numerics.unit_vectors` (a representation no longer than 1e-4 has no direction and
  passes no gradient) instead of eps 1e-8, whose gradient for a zero representation (~1e8) is not finite in fp16.

The warm-up ``w(t)`` of the consistency terms (:func:`nnunet_unpaired.losses.ramps.warmup_ramp`, per iteration) is
applied by the trainer; grounding is on from the first step.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_unpaired.losses.numerics import unit_vectors
from nnunet_unpaired.modules.external_attention import EAMOutput

__all__ = [
    "EAMLoss",
    "attention_grounding_loss",
    "class_correlation",
    "semantic_consistency_loss",
    "structured_consistency_loss",
]


def attention_grounding_loss(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int | None = None
) -> torch.Tensor:
    """Cross-entropy of the attention logits over the K class slots against the labels (Yang et al., MIDL 2023).

    Args:
        logits: attention logits (B, K, *spatial).
        labels: integer label map (B, 1, *spatial) on the same grid (see
            :func:`nnunet_unpaired.modules.external_attention.labels_to_grid`).
        ignore_index: label value whose voxels are left out, or None.

    Returns:
        Scalar mean cross-entropy over the non-ignored voxels; 0 (connected to the graph) when every voxel
        is ignored.

    Raises:
        ValueError: if the shapes do not match or a label value is outside ``[0, K)`` and not ``ignore_index``.
    """
    if logits.ndim < 3 or labels.shape != (logits.shape[0], 1, *logits.shape[2:]):
        raise ValueError(
            f"logits must be (B, K, *spatial) and labels (B, 1, *spatial) on the same grid, got logits "
            f"{tuple(logits.shape)} and labels {tuple(labels.shape)}"
        )
    num_classes = logits.shape[1]
    target = labels[:, 0].long()
    valid = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    target = torch.where(valid, target, torch.zeros_like(target))
    if target.numel() and (target.min() < 0 or target.max() >= num_classes):
        raise ValueError(
            f"label values must lie in [0, {num_classes}) or equal ignore_index={ignore_index}, "
            f"got values in [{int(target.min())}, {int(target.max())}]"
        )
    per_voxel = F.cross_entropy(logits.float(), target, reduction="none")
    weights = valid.to(per_voxel.dtype)
    return (per_voxel * weights).sum() / weights.sum().clamp(min=1.0)


def _check_repr(repr_a: torch.Tensor, repr_b: torch.Tensor, present_a: torch.Tensor, present_b: torch.Tensor) -> None:
    if repr_a.ndim != 2 or repr_a.shape != repr_b.shape:
        raise ValueError(
            f"class representations must both be (K, C') with the same shape, got {tuple(repr_a.shape)} and "
            f"{tuple(repr_b.shape)}"
        )
    k = repr_a.shape[0]
    if present_a.shape != (k,) or present_b.shape != (k,):
        raise ValueError(
            f"present masks must be ({k},) to match K={k}, got {tuple(present_a.shape)} and {tuple(present_b.shape)}"
        )


def semantic_consistency_loss(
    repr_a: torch.Tensor, repr_b: torch.Tensor, present_a: torch.Tensor, present_b: torch.Tensor
) -> torch.Tensor:
    """Mean over shared classes of ``1 - cos(R^A_k, R^B_k)`` (Yang et al., MIDL 2023; formulation ours).

    Args:
        repr_a: class representations (K, C') of modality A.
        repr_b: class representations (K, C') of modality B.
        present_a: boolean mask (K,), classes present in modality A's batch.
        present_b: boolean mask (K,), classes present in modality B's batch.

    Returns:
        Scalar in [0, 2]; 0 (connected to the graph) when no class is present in both. Float32; a representation
        no longer than 1e-4 counts as a zero vector (cosine 0, no gradient), so gradients stay finite in fp16.

    Raises:
        ValueError: if the shapes do not match.
    """
    _check_repr(repr_a, repr_b, present_a, present_b)
    shared = (present_a.bool() & present_b.bool()).float()
    with torch.autocast(device_type=repr_a.device.type, enabled=False):
        cos = (unit_vectors(repr_a, dim=1) * unit_vectors(repr_b, dim=1)).sum(dim=1)
    return ((1.0 - cos) * shared).sum() / shared.sum().clamp(min=1.0)


def class_correlation(class_repr: torch.Tensor) -> torch.Tensor:
    """Cosine correlation matrix ``G = norm(R) norm(R)^T`` (K x K, float32) of class representations (K, C').

    A row no longer than 1e-4 is normalised to zero with no gradient (formerly eps 1e-8: gradients ~1e8)."""
    with torch.autocast(device_type=class_repr.device.type, enabled=False):
        normed = unit_vectors(class_repr, dim=1)
        return normed @ normed.transpose(0, 1)


def structured_consistency_loss(
    repr_a: torch.Tensor, repr_b: torch.Tensor, present_a: torch.Tensor, present_b: torch.Tensor
) -> torch.Tensor:
    """Mean squared difference of the modalities' class-correlation matrices (Yang et al., MIDL 2023; ours).

    Args:
        repr_a: class representations (K, C') of modality A.
        repr_b: class representations (K, C') of modality B.
        present_a: boolean mask (K,), classes present in modality A's batch.
        present_b: boolean mask (K,), classes present in modality B's batch.

    Returns:
        Scalar mean of ``(G^A_ij - G^B_ij)^2`` over ordered pairs i != j of classes present in both;
        0 (connected to the graph) when fewer than two classes are shared.

    Raises:
        ValueError: if the shapes do not match.
    """
    _check_repr(repr_a, repr_b, present_a, present_b)
    shared = present_a.bool() & present_b.bool()
    off_diagonal = ~torch.eye(shared.shape[0], dtype=torch.bool, device=shared.device)
    pairs = (shared[:, None] & shared[None, :] & off_diagonal).float()
    diff = class_correlation(repr_a) - class_correlation(repr_b)
    return (diff.square() * pairs).sum() / pairs.sum().clamp(min=1.0)


class EAMLoss(nn.Module):
    """Weighted sum of the EAM's grounding, semantic and structured consistency losses (Yang et al., MIDL 2023).

    ``total = w_att * L_att + w_sem * L_sem + w_str * L_str``; the warm-up ramp is the trainer's.

    Args:
        w_att: weight of the attention grounding loss (default 1.0).
        w_sem: weight of the semantic consistency loss (default 1.0).
        w_str: weight of the structured consistency loss (default 1.0).
        ignore_index: label value whose voxels are ignored (nnU-Net's ignore label), or None.

    Raises:
        ValueError: if a weight is negative or not finite, or ``ignore_index`` is not an integer or None.
    """

    def __init__(
        self, w_att: float = 1.0, w_sem: float = 1.0, w_str: float = 1.0, ignore_index: int | None = None
    ) -> None:
        super().__init__()
        for name, value in (("w_att", w_att), ("w_sem", w_sem), ("w_str", w_str)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
            raise ValueError(f"ignore_index must be an integer or None, got {ignore_index!r}")
        self.w_att = float(w_att)
        self.w_sem = float(w_sem)
        self.w_str = float(w_str)
        self.ignore_index = ignore_index

    def forward(self, out_a: EAMOutput, out_b: EAMOutput) -> dict[str, torch.Tensor]:
        """Loss terms for one step with a batch of each modality.

        Args:
            out_a: the module's output for modality A's batch (labels on the feature grid included).
            out_b: the module's output for modality B's batch.

        Returns:
            Dict with scalar tensors ``attention``, ``semantic``, ``structured`` (unweighted) and ``total``.

        Raises:
            ValueError: on outputs that do not fit together or label values outside the class range.
        """
        num_classes = out_a.logits.shape[1]
        if out_b.logits.shape[1] != num_classes or out_a.class_repr.shape != out_b.class_repr.shape:
            raise ValueError(
                f"both modalities must come from the same module: got K={num_classes} and K={out_b.logits.shape[1]}, "
                f"class_repr {tuple(out_a.class_repr.shape)} and {tuple(out_b.class_repr.shape)}"
            )
        attention = 0.5 * (
            attention_grounding_loss(out_a.logits, out_a.labels, self.ignore_index)
            + attention_grounding_loss(out_b.logits, out_b.labels, self.ignore_index)
        )
        semantic = semantic_consistency_loss(out_a.class_repr, out_b.class_repr, out_a.present, out_b.present)
        structured = structured_consistency_loss(out_a.class_repr, out_b.class_repr, out_a.present, out_b.present)
        total = self.w_att * attention + self.w_sem * semantic + self.w_str * structured
        return {"attention": attention, "semantic": semantic, "structured": structured, "total": total}
