"""The CMC network: nnU-Net's U-Net with a cross-modality fusion at the bottleneck.

Source: Zhou, Sun, Deng, Chu, Dou, "Robust Semi-supervised Multimodal Medical Image Segmentation via Cross Modality
Collaboration", MICCAI 2024 (arXiv 2408.07341); public code med-air/CMC (MIT).

Structure, for a pair of inputs (one image of modality A, one of modality B):

- ONE encoder shared by both modalities (the plan's encoder, ``PlainConvUNet`` or ``ResidualEncoderUNet``); its last
  skip is the bottleneck ``r_m`` of modality m;
- channel attention (:class:`~nnunet_unpaired.modules.channel_attention.ChannelAttention`, shared, as in the public
  code) on each bottleneck: ``c_m = CA(r_m)``;
- fusion ``f = sigmoid(block(block(concat(c_A, c_B))))``, ``block`` = 3x3(x3) convolution + normalization + ReLU;
- per-modality head ``h_m = conv1x1(ReLU(norm(concat(f, c_m))))`` (back to the bottleneck width), on the channel-
  ATTENDED bottleneck as in the public code (our first version read the raw ``r_m``);
- the plan's decoder, shared, on the encoder skips of modality m with ``h_m`` in place of the bottleneck.

The network object holds modality A's head only. Modality B's head is a training-only module of the trainer
(:class:`~nnunet_unpaired.training.cmc.nnUNetTrainerCMC`), passed to :meth:`CMCNetwork.forward_pair` during training
and swapped into ``head`` for B's validation and export, so that each modality's deployed network has the same
architecture and state-dict keys (``encoder.*``, ``decoder.*``, ``channel_attention.*``, ``fusion.*``, ``head.*``).

One input (``forward``, what nnU-Net's predictor calls): the fusion gets the modality's own attended bottleneck in the
partner's slot, ``f = fusion(c_m, c_m)`` (``single_input_fusion = "self"``, the default), or zeros
(``single_input_fusion = "zero"``). Training can show the fusion this case (``self_fusion_mask`` of
:meth:`CMCNetwork.forward_pair`), so that the deployed single-input path is not out of distribution. See docs/cmc.md
for the measurements.

Paired mode (:class:`PairedCMCNetwork`, issue 17): ONE input of two co-registered channels of the same case (channel 0
modality A, channel 1 modality B). Both channels run through the shared encoder as single-channel images, the fusion
gets the attended bottlenecks of the SAME case (corresponding voxels, the pairing the paper intends), head A and head
B (both in the network) read the fused features with their own bottleneck, and the shared decoder gives one output per
head. The deployed output (what nnU-Net's predictor gets from ``forward(x)``) is the mean of the two heads' logits.

Deviations from the public code (all documented in docs/cmc.md):

- normalization of the fusion and head blocks is the plan's (InstanceNorm in nnU-Net) instead of BatchNorm /
  GroupNorm: nnU-Net's batches are small (2 for 3D);
- the head is modality-specific (the public code shares one 1x1 conversion between the modalities);
- the bottleneck of B must have A's shape (plan-pair gives both datasets one patch size), where the public code
  resamples B's bottleneck to A's;
- no final softmax; nnU-Net's deep supervision outputs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import List, Optional, Sequence, Type, Union

import torch
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from torch import nn

from nnunet_unpaired.modules.channel_attention import ChannelAttention

Output = Union[torch.Tensor, List[torch.Tensor]]
SINGLE_INPUT_MODES = ("self", "zero")

__all__ = ["CMCNetwork", "FusionBlock", "ModalityHead", "PairOutput", "PairedCMCNetwork", "SINGLE_INPUT_MODES",
           "build_cmc_network", "build_paired_cmc_network", "mean_output"]


def _default_norm(conv_op: Type[nn.Module]) -> Type[nn.Module]:
    return nn.InstanceNorm3d if conv_op is nn.Conv3d else nn.InstanceNorm2d


class FusionBlock(nn.Module):
    """``sigmoid(block(block(concat(a, b))))`` with ``block`` = conv (kernel 3) + norm + ReLU; C x 2 -> C channels."""

    def __init__(self, channels: int, conv_op: Type[nn.Module], norm_op: Optional[Type[nn.Module]] = None,
                 norm_op_kwargs: Optional[dict] = None) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        norm_op = norm_op or _default_norm(conv_op)
        norm_op_kwargs = dict(norm_op_kwargs or {"eps": 1e-5, "affine": True})
        self.layers = nn.Sequential(
            conv_op(2 * channels, channels, kernel_size=3, padding=1), norm_op(channels, **norm_op_kwargs), nn.ReLU(),
            conv_op(channels, channels, kernel_size=3, padding=1), norm_op(channels, **norm_op_kwargs), nn.ReLU())

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.layers(torch.cat((a, b), dim=1)))


class ModalityHead(nn.Module):
    """``conv1x1(ReLU(norm(concat(fused, own))))``: 2C -> C channels, the bottleneck the decoder reads."""

    def __init__(self, channels: int, conv_op: Type[nn.Module], norm_op: Optional[Type[nn.Module]] = None,
                 norm_op_kwargs: Optional[dict] = None) -> None:
        super().__init__()
        norm_op = norm_op or _default_norm(conv_op)
        norm_op_kwargs = dict(norm_op_kwargs or {"eps": 1e-5, "affine": True})
        self.layers = nn.Sequential(norm_op(2 * channels, **norm_op_kwargs), nn.ReLU(),
                                    conv_op(2 * channels, channels, kernel_size=1))

    def forward(self, fused: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        return self.layers(torch.cat((fused, own), dim=1))


@dataclass
class PairOutput:
    """What :meth:`CMCNetwork.forward_pair` returns: the two outputs (nnU-Net format) and the raw bottlenecks."""

    output_a: Output
    output_b: Output
    bottleneck_a: torch.Tensor
    bottleneck_b: torch.Tensor


class CMCNetwork(nn.Module):
    """Shared encoder/decoder, channel attention, fusion and modality A's head; see the module docstring.

    Args:
        unet: an nnU-Net architecture with ``encoder`` (returning the list of skips, bottleneck last) and ``decoder``
            (taking that list), e.g. ``PlainConvUNet``.
        norm_op, norm_op_kwargs: normalization of the fusion and head blocks (default: instance norm, affine).

    Attribute set at run time (not in the state dict):
        single_input_fusion: ``"self"`` (default) or ``"zero"``: what takes the partner's place in the fusion when
            ``forward`` gets one modality.
    """

    def __init__(self, unet: nn.Module, norm_op: Optional[Type[nn.Module]] = None,
                 norm_op_kwargs: Optional[dict] = None) -> None:
        super().__init__()
        if not (hasattr(unet, "encoder") and hasattr(unet, "decoder")):
            raise ValueError(f"{type(unet).__name__} has no encoder/decoder pair; CMC needs an nnU-Net U-Net "
                             f"(PlainConvUNet, ResidualEncoderUNet)")
        self.encoder = unet.encoder
        self.decoder = unet.decoder
        channels = int(self.encoder.output_channels[-1])
        conv_op = self.encoder.conv_op
        norm_op = norm_op or getattr(self.encoder, "norm_op", None)
        norm_op_kwargs = norm_op_kwargs or getattr(self.encoder, "norm_op_kwargs", None)
        self.channel_attention = ChannelAttention()
        self.fusion = FusionBlock(channels, conv_op, norm_op, norm_op_kwargs)
        self.head = ModalityHead(channels, conv_op, norm_op, norm_op_kwargs)
        self.single_input_fusion = "self"

    @property
    def bottleneck_channels(self) -> int:
        return int(self.encoder.output_channels[-1])

    def new_head(self) -> ModalityHead:
        """An independent copy of this head (same layers, same initial values), e.g. for the partner modality."""
        return copy.deepcopy(self.head)

    def _decode(self, skips: Sequence[torch.Tensor], bottleneck: torch.Tensor) -> Output:
        return self.decoder([*skips[:-1], bottleneck])

    def forward(self, x: torch.Tensor, x_b: Optional[torch.Tensor] = None, head_b: Optional[nn.Module] = None,
                self_fusion_mask: Optional[torch.Tensor] = None) -> Union[Output, PairOutput]:
        """Single-modality prediction (the deployed network): the fusion sees this modality only.

        With ``x_b`` and ``head_b``: :meth:`forward_pair` (training), so that a trainer's pair forward runs through
        the same (compiled) module call as nnU-Net's single-input forward.
        """
        if x_b is not None or head_b is not None:
            if x_b is None or head_b is None:
                raise ValueError("a pair forward needs both x_b and head_b")
            return self.forward_pair(x, x_b, head_b, self_fusion_mask)
        if self.single_input_fusion not in SINGLE_INPUT_MODES:
            raise ValueError(f"single_input_fusion must be one of {SINGLE_INPUT_MODES}, got "
                             f"{self.single_input_fusion!r}")
        skips = self.encoder(x)
        own = skips[-1]
        attended = self.channel_attention(own)
        partner = attended if self.single_input_fusion == "self" else torch.zeros_like(attended)
        return self._decode(skips, self.head(self.fusion(attended, partner), attended))

    def forward_pair(self, x_a: torch.Tensor, x_b: torch.Tensor, head_b: nn.Module,
                     self_fusion_mask: Optional[torch.Tensor] = None) -> PairOutput:
        """Training forward of a batch of A and a batch of B through the cross-modal fusion.

        Args:
            x_a, x_b: batches of modality A and B of the same shape (the samples need not show the same patient).
            head_b: modality B's head (a :class:`ModalityHead`; A's is ``self.head``).
            self_fusion_mask: optional bool tensor (batch,); where True, that sample's fusion gets its own modality in
                both slots (the single-input case) instead of the cross-modal pair.

        Returns:
            :class:`PairOutput` with both outputs (lists with deep supervision) and the raw bottlenecks (before channel
            attention), which CMC's channel-wise semantic consistency compares.
        """
        if x_a.shape[0] != x_b.shape[0] or x_a.shape[2:] != x_b.shape[2:]:
            raise ValueError(f"the batches of A and B must have the same size and patch shape, got "
                             f"{tuple(x_a.shape)} and {tuple(x_b.shape)}")
        skips_a, skips_b = self.encoder(x_a), self.encoder(x_b)
        raw_a, raw_b = skips_a[-1], skips_b[-1]
        att_a, att_b = self.channel_attention(raw_a), self.channel_attention(raw_b)
        fused_a = fused_b = self.fusion(att_a, att_b)
        if self_fusion_mask is not None:  # no data-dependent branch (bool(mask.any())): torch.compile would break
            if self_fusion_mask.shape != (x_a.shape[0],):
                raise ValueError(f"self_fusion_mask must have shape ({x_a.shape[0]},), got "
                                 f"{tuple(self_fusion_mask.shape)}")
            mask = self_fusion_mask.to(fused_a.device).view(-1, *[1] * (fused_a.dim() - 1))
            fused_a = torch.where(mask, self.fusion(att_a, att_a), fused_a)
            fused_b = torch.where(mask, self.fusion(att_b, att_b), fused_b)
        out_a = self._decode(skips_a, self.head(fused_a, att_a))
        out_b = self._decode(skips_b, head_b(fused_b, att_b))
        return PairOutput(out_a, out_b, raw_a, raw_b)


def mean_output(a: Output, b: Output) -> Output:
    """The element-wise mean of two nnU-Net outputs (tensors, or lists of deep-supervision tensors)."""
    if isinstance(a, (list, tuple)):
        return [(x + y) / 2 for x, y in zip(a, b)]
    return (a + b) / 2


class PairedCMCNetwork(CMCNetwork):
    """CMC for a two-channel case (channel 0 modality A, channel 1 modality B, co-registered): both heads in the network.

    ``forward(x)`` with ``x`` of shape (B, 2, *spatial) returns the mean of the two heads' logits (the deployed
    network, what nnU-Net's predictor calls); ``forward(x, pair_output=True)`` returns the :class:`PairOutput` of the
    two heads and the raw bottlenecks (training). Sample i's fusion sees channel 0 and channel 1 of sample i only.
    State-dict keys: those of :class:`CMCNetwork` plus ``head_b.*``.
    """

    def __init__(self, unet: nn.Module, norm_op: Optional[Type[nn.Module]] = None,
                 norm_op_kwargs: Optional[dict] = None) -> None:
        super().__init__(unet, norm_op, norm_op_kwargs)
        self.head_b = self.new_head()

    def forward(self, x: torch.Tensor, pair_output: bool = False) -> Union[Output, PairOutput]:
        if x.dim() < 3 or x.shape[1] != 2:
            raise ValueError(f"the paired CMC network takes two channels (modality A, modality B) per case, got input "
                             f"of shape {tuple(x.shape)}")
        # the same case's two channels, sample by sample: forward_pair pairs sample i of A with sample i of B
        pair = self.forward_pair(x[:, 0:1], x[:, 1:2], self.head_b)
        return pair if pair_output else mean_output(pair.output_a, pair.output_b)


def build_paired_cmc_network(arch_class_name: str, arch_kwargs: dict, arch_kwargs_req_import: Sequence[str],
                             num_input_channels: int, num_classes: int,
                             deep_supervision: bool = True) -> PairedCMCNetwork:
    """The paired CMC network around the plan's U-Net; the U-Net's encoder is built for ONE channel (shared by both).

    Raises:
        ValueError: if ``num_input_channels`` is not 2.
    """
    if num_input_channels != 2:
        raise ValueError(f"the paired CMC network needs exactly 2 input channels, got {num_input_channels}")
    unet = get_network_from_plans(arch_class_name, arch_kwargs, arch_kwargs_req_import, 1, num_classes,
                                  allow_init=True, deep_supervision=deep_supervision)
    network = PairedCMCNetwork(unet)
    init = InitWeights_He(1e-2)
    network.fusion.apply(init)
    network.head.apply(init)
    network.head_b.load_state_dict(network.head.state_dict())  # both heads start equal, as CMC's new_head does
    return network


def build_cmc_network(arch_class_name: str, arch_kwargs: dict, arch_kwargs_req_import: Sequence[str],
                      num_input_channels: int, num_classes: int, deep_supervision: bool = True) -> CMCNetwork:
    """The CMC network around the plan's U-Net (``configuration_manager.network_arch_class_name`` etc.)."""
    unet = get_network_from_plans(arch_class_name, arch_kwargs, arch_kwargs_req_import, num_input_channels,
                                  num_classes, allow_init=True, deep_supervision=deep_supervision)
    network = CMCNetwork(unet)
    init = InitWeights_He(1e-2)
    network.fusion.apply(init)
    network.head.apply(init)
    return network
