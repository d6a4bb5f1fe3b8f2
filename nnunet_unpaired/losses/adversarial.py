"""Losses of GLUA: adversarial (GAN) terms, a contrast-invariant shape-preservation term and the style-transfer
objective that combines them with the reconstruction terms.

Source: Su et al., "Mind the Gap: Alleviating Local Imbalance for Unsupervised Cross-Modality Medical Image
Segmentation", IEEE JBHI 2023 (arXiv 2205.11888). The paper names the ingredients of its global (style transfer)
and local (masked feature alignment) parts; its formulas were not available to us. The formulation here is ours
(see docs/glua.md):

- :class:`AdversarialLoss`: least-squares GAN (Mao et al., ICCV 2017; used for the image discriminators) or the
  logistic GAN on logits (Goodfellow et al., 2014; used for the feature discriminator). Convention: the
  discriminator scores "real" HIGH. For the image GAN, real = an image of the discriminator's domain; for the
  feature GAN, real = source (labelled) features and fake = target features, which the segmentation network tries
  to make look like source features. ``generator_loss`` takes optional per-location weights (the gap mask).
- :class:`ShapePreservationLoss`: a normalized-gradient-field distance. With ``g = grad a`` and ``h = grad b``
  (forward differences, voxel units)::

      d(a, b) = mean over voxels of 1 - (|g . h| + eps^2)^2 / ((|g|^2 + eps^2) (|h|^2 + eps^2))

  i.e. one minus the squared cosine of the augmented gradients ``(|g|, eps)`` and ``(|h|, eps)`` after aligning
  their signs, computed after a box filter (``smoothing`` voxels wide) so that edges of structures count more than
  noise. It lies in [0, 1]; it is 0 for identical images and exactly 0 for a contrast-inverted copy (edges are where
  they were, whatever the sign of the intensity mapping: MR inverts some CT contrasts), 0 where both images are flat,
  above 0 where one image's edge is weaker than the other's (a blurred copy is not a perfect score) and about 1 where
  only one of them has an edge. The absolute value matters: with ``(g . h) + eps^2`` (the first version, issue 16)
  the sign symmetry broke wherever gradients are weak, which is most of a normalized image; on phantom slices an
  inverted copy then scored 0.64, an unrelated slice 0.49 and a blurred copy 0.09, rewarding blur and punishing the
  inversion a translation may need.
  A translated image that moves or drops the source's edges is penalized; one that remaps intensities is not.
- :class:`StyleTransferLoss`: the weighted sum of self-reconstruction (L1), cross-domain adversarial (LSGAN),
  content and style latent reconstruction (L1), cycle consistency (L1, source -> target -> source and back), a
  content-code adversarial term (the content encoder pushes a content discriminator's scores of both domains to 0.5,
  "cannot tell"), and shape preservation: MUNIT (Huang et al., ECCV 2018) plus the cycle and content-discriminator
  terms of DRIT (Lee et al., ECCV 2018) and DAR-UNet, plus the shape term. Reconstruction, shape and latent
  reconstruction are all minimized by a translator that ignores the style code (the identity); the image GAN, the
  cycle through the OTHER domain's style and the content discriminator are what push it off the identity.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AdversarialLoss", "ShapePreservationLoss", "StyleTransferLoss"]

_MODES = ("lsgan", "bce")


class AdversarialLoss(nn.Module):
    """GAN loss on discriminator scores (any shape); the discriminator scores real high.

    Args:
        mode: ``"lsgan"`` (least squares, targets 1 for real and 0 for fake, scores used as they are) or ``"bce"``
            (binary cross-entropy on logits).

    Raises:
        ValueError: for an unknown mode; in the methods for empty or mismatched inputs and negative weights.
    """

    def __init__(self, mode: str = "lsgan") -> None:
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        self.mode = mode

    def _per_location(self, scores: torch.Tensor, real: bool) -> torch.Tensor:
        if scores.numel() == 0:
            raise ValueError("discriminator scores are empty")
        scores = scores.float()
        if self.mode == "lsgan":
            return (scores - (1.0 if real else 0.0)) ** 2
        target = torch.ones_like(scores) if real else torch.zeros_like(scores)
        return F.binary_cross_entropy_with_logits(scores, target, reduction="none")

    def discriminator_loss(self, real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
        """``(loss(real scores, real) + loss(fake scores, fake)) / 2``, each averaged over its elements.

        Pass detached fake scores' inputs so that only the discriminator learns from this loss.
        """
        return 0.5 * (self._per_location(real_scores, True).mean() + self._per_location(fake_scores, False).mean())

    def generator_loss(self, fake_scores: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The generator's loss: fake samples should be scored real. ``mean(weight * loss(fake scores, real))``.

        Args:
            fake_scores: scores of the generated / target samples.
            weight: optional non-negative per-location weights broadcastable to ``fake_scores`` (e.g. the gap mask,
                normalized to mean 1 so that the loss scale matches the unweighted loss). Not differentiated.
        """
        per_location = self._per_location(fake_scores, True)
        if weight is None:
            return per_location.mean()
        weight = weight.detach().float()
        try:
            weight = torch.broadcast_to(weight, per_location.shape)
        except RuntimeError:
            raise ValueError(f"weight of shape {tuple(weight.shape)} does not broadcast to the scores' shape "
                             f"{tuple(per_location.shape)}") from None
        if bool((weight < 0).any()):
            raise ValueError("weights must be non-negative")
        return (weight * per_location).mean()


def _forward_differences(x: torch.Tensor) -> torch.Tensor:
    """Stack of forward differences along each spatial axis, cropped to a common grid: (D, B, C, *spatial - 1)."""
    spatial = x.ndim - 2
    diffs = []
    for axis in range(2, x.ndim):
        d = x.narrow(axis, 1, x.shape[axis] - 1) - x.narrow(axis, 0, x.shape[axis] - 1)
        for other in range(2, x.ndim):
            if other != axis:
                d = d.narrow(other, 0, x.shape[other] - 1)
        diffs.append(d)
    assert len(diffs) == spatial
    return torch.stack(diffs, 0)


class ShapePreservationLoss(nn.Module):
    """Normalized-gradient-field distance between two images of the same shape (see the module docstring).

    Args:
        epsilon: edge scale (> 0) in intensity units per voxel; gradients much smaller than it count as flat. With
            nnU-Net's normalized images (about unit variance) a value around 0.1-0.5 ignores most noise.
        smoothing: width (odd, >= 1) of the box filter applied to both images first; 1 = none. On the phantom a
            width of 3 separates "same anatomy in the other modality" from "other anatomy" clearly (without it,
            noise dominates).

    Raises:
        ValueError: for a non-positive epsilon or an even / non-positive smoothing width; in ``forward`` for shapes
            that differ, are not (B, C, X, Y[, Z]) or have an axis shorter than 2.
    """

    def __init__(self, epsilon: float = 0.2, smoothing: int = 3) -> None:
        super().__init__()
        if not epsilon > 0:
            raise ValueError(f"epsilon must be positive, got {epsilon}")
        if smoothing < 1 or smoothing % 2 == 0:
            raise ValueError(f"smoothing must be an odd width >= 1, got {smoothing}")
        self.epsilon = float(epsilon)
        self.smoothing = int(smoothing)

    def _smooth(self, x: torch.Tensor) -> torch.Tensor:
        if self.smoothing == 1:
            return x
        pool = F.avg_pool2d if x.ndim == 4 else F.avg_pool3d
        return pool(x, self.smoothing, stride=1, padding=self.smoothing // 2, count_include_pad=False)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape != b.shape:
            raise ValueError(f"images must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
        if a.ndim not in (4, 5):
            raise ValueError(f"images must be (B, C, X, Y) or (B, C, X, Y, Z), got shape {tuple(a.shape)}")
        if min(a.shape[2:]) < 2:
            raise ValueError(f"every spatial axis needs at least 2 voxels, got shape {tuple(a.shape)}")
        g = _forward_differences(self._smooth(a.float()))
        h = _forward_differences(self._smooth(b.float()))
        e2 = self.epsilon ** 2
        dot = (g * h).sum(0).abs() + e2  # sign-symmetric: an inverted edge is the same edge
        cos2 = dot * dot / (((g * g).sum(0) + e2) * ((h * h).sum(0) + e2))
        return (1.0 - cos2).mean()


class StyleTransferLoss(nn.Module):
    """The objective of the style-transfer (global alignment) module, as weighted terms.

    Args:
        image_reconstruction: weight of the L1 self-reconstruction of both domains' images.
        content_reconstruction: weight of the L1 between the content code of a translated image and the content
            code it was decoded from.
        style_reconstruction: weight of the L1 between the style code re-encoded from a translated image and the
            style code it was decoded with.
        adversarial: weight of the generator's LSGAN loss against the per-domain image discriminators.
        shape: weight of :class:`ShapePreservationLoss` between each image and its translation.
        shape_epsilon: its edge scale.
        cycle: weight of the L1 cycle consistency of both domains (DAR-UNet: 10).
        content_adversarial: weight of the content encoder's LSGAN loss against the content discriminator (target
            0.5 for both domains' codes).

    Raises:
        ValueError: for a negative weight.
    """

    def __init__(self, image_reconstruction: float = 10.0, content_reconstruction: float = 1.0,
                 style_reconstruction: float = 1.0, adversarial: float = 1.0, shape: float = 1.0,
                 shape_epsilon: float = 0.2, cycle: float = 10.0, content_adversarial: float = 1.0) -> None:
        super().__init__()
        self.weights = {"rec": image_reconstruction, "content": content_reconstruction,
                        "style": style_reconstruction, "adv": adversarial, "shape": shape, "cycle": cycle,
                        "content_adv": content_adversarial}
        for name, w in self.weights.items():
            if not w >= 0:
                raise ValueError(f"weight {name} must be >= 0, got {w}")
        self.gan = AdversarialLoss("lsgan")
        self.shape = ShapePreservationLoss(shape_epsilon)

    def generator_terms(self, p, fake_scores_target: torch.Tensor, fake_scores_source: torch.Tensor,
                        content_scores: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
        """Weighted generator terms (keys ``st_rec``, ``st_content``, ``st_style``, ``st_adv``, ``st_shape``,
        ``st_cycle`` and, given ``content_scores``, ``st_content_adv``).

        Args:
            p: a :class:`nnunet_unpaired.modules.style_transfer.StyleTransferPass` (images, codes, translations).
            fake_scores_target: the target discriminator's scores of the source->target translations.
            fake_scores_source: the source discriminator's scores of the target->source translations.
            content_scores: the content discriminator's scores of the source's and the target's content codes.
        """
        w = self.weights
        terms = {
            "st_rec": w["rec"] * (F.l1_loss(p.rec_source, p.source) + F.l1_loss(p.rec_target, p.target)),
            "st_content": w["content"] * (F.l1_loss(p.content_source_to_target, p.content_source)
                                          + F.l1_loss(p.content_target_to_source, p.content_target)),
            "st_style": w["style"] * (F.l1_loss(p.style_source_to_target, p.style_target_used)
                                      + F.l1_loss(p.style_target_to_source, p.style_source_used)),
            "st_adv": w["adv"] * (self.gan.generator_loss(fake_scores_target)
                                  + self.gan.generator_loss(fake_scores_source)),
            "st_shape": w["shape"] * (self.shape(p.source, p.source_to_target)
                                      + self.shape(p.target, p.target_to_source)),
            "st_cycle": w["cycle"] * (F.l1_loss(p.cycle_source, p.source) + F.l1_loss(p.cycle_target, p.target)),
        }
        if content_scores is not None:
            terms["st_content_adv"] = w["content_adv"] * sum(((s.float() - 0.5) ** 2).mean() for s in content_scores)
        return terms

    def content_discriminator_loss(self, source_scores: torch.Tensor, target_scores: torch.Tensor) -> torch.Tensor:
        """LSGAN loss of the content discriminator: source codes scored 1, target codes 0 (pass detached codes)."""
        return self.gan.discriminator_loss(source_scores, target_scores)

    def discriminator_loss(self, real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
        """LSGAN loss of one image discriminator (real: images of its domain; fake: detached translations)."""
        return self.gan.discriminator_loss(real_scores, fake_scores)
