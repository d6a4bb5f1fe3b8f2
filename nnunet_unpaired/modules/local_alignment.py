"""Local alignment of GLUA: a per-location source/target discriminator on the segmentation network's decoder
features (or its output space) and a mask that weights the alignment by the local domain gap (2D and 3D).

Source: Su et al., "Mind the Gap: Alleviating Local Imbalance for Unsupervised Cross-Modality Medical Image
Segmentation", IEEE JBHI 2023 (arXiv 2205.11888): a local feature mask reduces the gap of local features by
prioritizing the discriminative features with a larger domain gap. Our formulation (the paper's formulas were not
available to us):

- :class:`FeatureDiscriminator`: stride-1 convolutions, so its logit map has the feature map's resolution and each
  logit judges one location (its receptive field: ``2 * n_layers + 1`` voxels per axis). Logit high = source.
- :func:`gap_mask`: with ``p = sigmoid(logit)`` at a target location, the discriminator's confidence that the
  location is target, ``1 - p``, measures the local gap; the mask is ``(1 - p)^gamma`` normalized to mean 1 over the
  locations of each sample (detached). ``gamma = 0`` gives the plain, unmasked alignment; a larger ``gamma`` puts
  more of the alignment on the locations that look least like source.
- :class:`DecoderFeatureTap`: reads one decoder stage's output from nnU-Net's network with a forward hook, without
  changing the network (so ``network_weights`` stays nnU-Net's plain state dict); attached once before the first
  forward (:meth:`DecoderFeatureTap.attached`), it also reads a torch.compile'd network.
"""

from __future__ import annotations

from typing import List, Optional

import torch
from dynamic_network_architectures.building_blocks.helper import convert_dim_to_conv_op
from torch import nn

__all__ = ["DecoderFeatureTap", "FeatureDiscriminator", "gap_mask"]


class FeatureDiscriminator(nn.Module):
    """Feature map (B, C, *S) -> per-location logits (B, 1, *S); high = source.

    Args:
        dim: 2 or 3 spatial dimensions.
        in_channels: channels of the feature map (decoder features, or K class probabilities for output space).
        width: channels of the hidden layers.
        n_layers: hidden 3x3(x3) convolutions before the 3x3(x3) output convolution (>= 1).

    Raises:
        ValueError: for an invalid argument.
    """

    def __init__(self, dim: int, in_channels: int, width: int = 32, n_layers: int = 2):
        super().__init__()
        if dim not in (2, 3):
            raise ValueError(f"dim must be 2 or 3, got {dim}")
        if in_channels < 1 or width < 1 or n_layers < 1:
            raise ValueError(f"in_channels, width and n_layers must be >= 1, got {in_channels}, {width}, {n_layers}")
        conv = convert_dim_to_conv_op(dim)
        layers: List[nn.Module] = []
        cin = in_channels
        for _ in range(n_layers):
            layers += [conv(cin, width, 3, padding=1), nn.LeakyReLU(0.2, inplace=True)]
            cin = width
        layers.append(conv(cin, 1, 3, padding=1))
        self.layers = nn.Sequential(*layers)
        self.dim = dim

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim != self.dim + 2:
            raise ValueError(f"expected (B, C, *spatial) with {self.dim} spatial axes, got {tuple(features.shape)}")
        return self.layers(features)


def gap_mask(target_logits: torch.Tensor, gamma: float = 1.0, eps: float = 1e-6) -> torch.Tensor:
    """Per-location weights for aligning target features; they grow with the local domain gap.

    Args:
        target_logits: the discriminator's logits (B, 1, *S) for TARGET features (high = looks like source).
        gamma: sharpness (>= 0); 0 gives all ones.
        eps: guards the normalization when every location has zero gap.

    Returns:
        ``(1 - sigmoid(logits))^gamma`` divided by its mean over each sample's locations: mean 1 per sample, same
        shape as the logits, detached (the mask weights the alignment; it is not itself optimized).

    Raises:
        ValueError: for a negative or non-finite gamma or logits with fewer than 3 dimensions.
    """
    if not (gamma >= 0 and gamma < float("inf")):
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma}")
    if target_logits.ndim < 3:
        raise ValueError(f"logits must be (B, 1, *spatial), got shape {tuple(target_logits.shape)}")
    with torch.no_grad():
        gap = 1.0 - torch.sigmoid(target_logits.float())
        mask = gap.pow(gamma) if gamma > 0 else torch.ones_like(gap)
        dims = tuple(range(1, mask.ndim))
        return mask / mask.mean(dim=dims, keepdim=True).clamp_min(eps)


class DecoderFeatureTap:
    """Captures the output of ``network.decoder.stages[stage]`` at every forward pass.

    Two ways to use it. Attached for good (:meth:`attached`), before the network's first forward, and read with
    :meth:`take` after each forward; this works in a torch.compile'd network too::

        tap = DecoderFeatureTap.attached(network, -1)   # e.g. in the trainer's initialize()
        out = network(x)
        feats = tap.take()                              # this pass's features (raises when the hook did not run)

    torch.compile traces the hooks that exist at a module's first compiled call: a hook registered later never runs
    in the compiled graph (it captured nothing, silently, before :meth:`take` checked). The hook only stores the
    latest output in an attribute, so the compiled graph is the same for every call (no recompilation).

    Or as a context manager around eager forward passes (the hook exists inside the block only), then read
    :attr:`features` (one tensor per pass, in order)::

        with DecoderFeatureTap(network, -1) as tap:
            out = network(x)
        feats = tap.features[0]

    Args:
        network: an nnU-Net (dynamic-network-architectures) network with ``decoder.stages``; a compiled or
            DDP-wrapped network is unwrapped.
        stage: index into ``decoder.stages`` (negative counts from the highest resolution: -1 = the last stage).

    Raises:
        ValueError: when the network has no ``decoder.stages`` or the index is out of range.
    """

    def __init__(self, network: nn.Module, stage: int = -1):
        net = getattr(network, "module", network)
        net = getattr(net, "_orig_mod", net)
        stages = getattr(getattr(net, "decoder", None), "stages", None)
        if stages is None:
            raise ValueError(f"{type(net).__name__} has no decoder.stages; feature-level alignment needs an nnU-Net "
                             f"U-Net (use output-space alignment instead)")
        if not -len(stages) <= stage < len(stages):
            raise ValueError(f"decoder stage {stage} does not exist (the decoder has {len(stages)} stages)")
        self.module = stages[stage]
        self.stage = stage
        self.features: List[torch.Tensor] = []
        self._collect = False
        self._latest: Optional[torch.Tensor] = None
        self._handle = None
        self._attached = False

    @classmethod
    def attached(cls, network: nn.Module, stage: int = -1) -> "DecoderFeatureTap":
        """A tap whose hook stays registered until :meth:`remove`; read it with :meth:`take`."""
        tap = cls(network, stage)
        tap._handle = tap.module.register_forward_hook(tap._hook)
        tap._attached = True
        return tap

    def _hook(self, _module, _inputs, output) -> None:
        self._latest = output
        if self._collect:
            self.features.append(output)

    def take(self) -> torch.Tensor:
        """The stage's output of the last forward pass since the previous :meth:`take` (then forgotten).

        Raises:
            RuntimeError: when no forward pass reached the hook, e.g. because it was attached after the network's
                first compiled forward.
        """
        latest, self._latest = self._latest, None
        if latest is None:
            raise RuntimeError(f"the feature tap on decoder stage {self.stage} saw no forward pass since the last "
                               f"take(); attach it (DecoderFeatureTap.attached) before the network's first forward: "
                               f"a torch.compile'd network never runs hooks registered after its first call")
        return latest

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
        self._handle = None
        self._attached = False

    def __enter__(self) -> "DecoderFeatureTap":
        self.features = []
        self._collect = True
        if not self._attached:
            self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self._collect = False
        self._latest = None
        if not self._attached:
            self._handle.remove()
            self._handle = None

    @staticmethod
    def channels(network: nn.Module, stage: int = -1) -> int:
        """Output channels of a decoder stage (from its last convolution)."""
        tap = DecoderFeatureTap(network, stage)
        convs = [m for m in tap.module.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
        return convs[-1].out_channels
