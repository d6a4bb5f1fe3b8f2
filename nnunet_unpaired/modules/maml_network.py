"""The MAML network: one single-channel U-Net per input channel, fused by the modality-aware attention module.

Source: Zhang, Yang, Tian, Shi, Zhong, Zhang, He, "Modality-aware Mutual Learning for Multi-modal Medical Image
Segmentation", MICCAI 2021 (arXiv 2107.09842); public code YaoZhang93/MAML (nnU-Net v1 fork, Apache-2.0).

Structure (as in the paper's public code):

- M modality-specific peers, each the plan's U-Net (``PlainConvUNet`` or ``ResidualEncoderUNet``) with ONE input
  channel, no weight sharing, every width multiplied by ``width_factor`` (0.5 in the public code);
- the modality-aware attention module (:mod:`nnunet_unpaired.modules.modality_aware_attention`) on the peers' last,
  full-resolution decoder features;
- a fused 1x1 segmentation head on the attention output. No final nonlinearity anywhere (nnU-Net applies it).

``forward(x)`` returns what nnU-Net's loss, validation and predictor expect from the fused output: with deep
supervision a list of logits, highest resolution first, otherwise one tensor. The peers' outputs (same format, one
entry per peer that ran) are returned by :meth:`MAMLNetwork.forward_with_peers` and, when ``keep_peer_outputs`` is
set, stored in ``peer_outputs`` by ``forward`` so that a trainer's loss can read them.

Deviations from the paper / public code (documented in docs/maml.md):

- Deep supervision of the fused output: the paper supervises the fused prediction at full resolution only. For
  nnU-Net's deep-supervision loss the lower-resolution fused outputs here are the mean of the fused peers' logits at
  that resolution (parameter free; a late-fusion ensemble).
- Missing modalities (``available_modalities``): only the available peers run; the attention module fuses the available
  ones; with a single available modality the network returns that peer's own prediction.
- Modality dropout during training (attribute ``modality_dropout``: 0 here, 0.5 as set by ``nnUNetTrainerMAML``): with
  that probability a step fuses a random subset (at least two, not all) of the modalities, so that the fusion also
  learns to work on subsets. The peers are trained on every step regardless. The subset enters the fusion as a 0/1
  weight per modality (the buffer ``fusion_mask``), so the computation is the same for every subset: with
  ``fusion_mask_drawn_outside`` set, as ``nnUNetTrainerMAML`` does, the subset is drawn by
  :meth:`MAMLNetwork.draw_fusion_mask` before the step, outside the forward, and a compiled network runs one graph
  for all subsets (drawing inside the forward, the default, makes torch.compile specialise on each subset).
- The peers use the plan's architecture class and hyper-parameters (normalization, kernel sizes, strides), scaled.
"""

from __future__ import annotations

import pydoc
import random
from copy import deepcopy
from typing import List, Optional, Sequence, Tuple, Union

import torch
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from torch import nn

from nnunet_unpaired.modules.modality_aware_attention import ModalityAwareAttention

Output = Union[torch.Tensor, List[torch.Tensor]]

# arch kwargs holding channel counts that scale with the width factor (None entries are left alone)
_WIDTH_KEYS = ("features_per_stage", "stem_channels", "bottleneck_channels")


def _doubling_with_cap(features: Sequence[int]) -> bool:
    """Whether ``features`` follow nnU-Net's planner: the base doubled per stage, capped at the last value."""
    cap = max(features)
    return all(f == min(features[0] * 2 ** i, cap) for i, f in enumerate(features))


def scale_width(arch_kwargs: dict, width_factor: float) -> dict:
    """A copy of nnU-Net ``arch_kwargs`` with the channel counts scaled by ``width_factor`` (rounded, at least 1).

    ``features_per_stage`` of a plan that doubles its base per stage up to a cap (nnU-Net's planner: 32, 64, ..., 320,
    320) is scaled as the public MAML code (nnU-Net v1) scales it: the BASE times the factor, doubled per stage, the
    cap kept (32..320 at 0.5 -> 16, 32, 64, 128, 256, 320), so a narrow peer keeps the plan's deep capacity. Scaling
    every stage, the capped ones included, gave a 6-stage 3D peer about 7.8 M parameters against the public code's
    16.6 M (issue 17). Other feature lists, widths above 1 and the other channel keys scale uniformly.
    """
    if not width_factor > 0:
        raise ValueError(f"width_factor must be positive, got {width_factor}")
    scaled = deepcopy(arch_kwargs)
    for key in _WIDTH_KEYS:
        value = scaled.get(key)
        if value is None:
            continue
        if key == "features_per_stage" and isinstance(value, (list, tuple)) and width_factor <= 1 and \
                _doubling_with_cap(value):
            base, cap = max(1, round(value[0] * width_factor)), max(value)
            scaled[key] = [min(base * 2 ** i, cap) for i in range(len(value))]
        elif isinstance(value, (list, tuple)):
            scaled[key] = [max(1, round(v * width_factor)) for v in value]
        else:
            scaled[key] = max(1, round(value * width_factor))
    return scaled


class MAMLNetwork(nn.Module):
    """M modality-specific U-Nets, modality-aware attention fusion and a fused head (Zhang et al., MICCAI 2021).

    Args:
        peers: M >= 2 networks with one input channel each, exposing ``encoder`` (returning the skip list) and a
            ``decoder`` of type ``UNetDecoder``; all with the same number of classes and top-level width.
        num_classes: number of output channels of every head.
        deep_supervision: return deep-supervision lists (training) or single tensors (inference).
        attention_kernel_size: kernel size of the attention module's convolutions.

    Attributes set at run time (not part of the state_dict):
        available_modalities: tuple of the input channels to use, ``None`` for all. Missing channels may hold
            anything (e.g. zeros): their peers do not run.
        modality_dropout: probability, in training mode, of fusing a random subset of the modalities.
        fusion_mask_drawn_outside: ``False`` (default): each training forward draws its subset itself. ``True``: the
            forward uses ``fusion_mask`` as it is; call :meth:`draw_fusion_mask` before each training step.
        keep_peer_outputs: store the peers' outputs of the last ``forward`` in ``peer_outputs``.

    Buffer (not in the state dict): ``fusion_mask``, the (M,) 0/1 weights of the modalities fused in training.
    """

    def __init__(self, peers: Sequence[nn.Module], num_classes: int, deep_supervision: bool = True,
                 attention_kernel_size: int = 3) -> None:
        super().__init__()
        if len(peers) < 2:
            raise ValueError(f"MAML needs at least 2 input channels (one peer each), got {len(peers)}. A "
                             f"single-channel dataset has nothing to fuse: train it with a plain nnU-Net trainer.")
        for i, peer in enumerate(peers):
            if not isinstance(getattr(peer, "decoder", None), UNetDecoder) or not hasattr(peer, "encoder"):
                raise NotImplementedError(f"MAML peer {i} ({type(peer).__name__}) is not a U-Net with encoder + "
                                          f"UNetDecoder; use a PlainConvUNet or ResidualEncoderUNet plan")
        self.peers = nn.ModuleList(peers)
        encoder = peers[0].encoder
        channels = encoder.output_channels[0]
        self.num_modalities = len(peers)
        self.num_classes = num_classes
        self.attention = ModalityAwareAttention(channels, self.num_modalities, encoder.conv_op, encoder.norm_op,
                                                encoder.norm_op_kwargs, encoder.nonlin, encoder.nonlin_kwargs,
                                                attention_kernel_size)
        self.head = encoder.conv_op(channels, num_classes, 1, 1, 0, bias=True)
        self.deep_supervision = deep_supervision
        self.modality_dropout = 0.0
        self.fusion_mask_drawn_outside = False
        self.register_buffer("fusion_mask", torch.ones(self.num_modalities), persistent=False)
        self.keep_peer_outputs = False
        self.peer_outputs: Optional[List[Output]] = None
        self._available: Optional[Tuple[int, ...]] = None

    @property
    def deep_supervision(self) -> bool:
        return self._deep_supervision

    @deep_supervision.setter
    def deep_supervision(self, enabled: bool) -> None:
        # nnU-Net toggles this for validation and inference; the peers' decoders follow so that a peer used on its own
        # behaves the same way
        self._deep_supervision = bool(enabled)
        for peer in self.peers:
            peer.decoder.deep_supervision = bool(enabled)

    @property
    def available_modalities(self) -> Tuple[int, ...]:
        return tuple(range(self.num_modalities)) if self._available is None else self._available

    @available_modalities.setter
    def available_modalities(self, value: Optional[Sequence[int]]) -> None:
        if value is None:
            self._available = None
            return
        chosen = tuple(sorted({int(v) for v in value}))
        if not chosen:
            raise ValueError("available_modalities must name at least one input channel")
        bad = [v for v in chosen if not 0 <= v < self.num_modalities]
        if bad:
            raise ValueError(f"available_modalities {list(chosen)}: channel(s) {bad} do not exist; this network has "
                             f"channels 0..{self.num_modalities - 1}")
        self._available = None if len(chosen) == self.num_modalities else chosen

    def _run_peer(self, index: int, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Last decoder features and segmentation outputs (highest resolution first) of one peer."""
        peer = self.peers[index]
        skips = peer.encoder(x)
        decoder: UNetDecoder = peer.decoder
        below = skips[-1]
        outputs = []
        last = len(decoder.stages) - 1
        for s in range(len(decoder.stages)):
            below = decoder.stages[s](torch.cat((decoder.transpconvs[s](below), skips[-(s + 2)]), dim=1))
            if self.deep_supervision or s == last:
                outputs.append(decoder.seg_layers[s](below))
        return below, outputs[::-1]

    def _dropout_active(self, available: Tuple[int, ...]) -> bool:
        return self.training and self.modality_dropout > 0 and len(available) > 2

    def draw_fusion_set(self) -> Tuple[int, ...]:
        """The modalities a training step fuses: with probability ``modality_dropout`` a random subset (at least two,
        not all) of the available ones, else all of them (Python's ``random``)."""
        available = self.available_modalities
        if not self._dropout_active(available) or random.random() >= self.modality_dropout:
            return available
        size = random.randint(2, len(available) - 1)
        return tuple(sorted(random.sample(available, size)))

    def _mask_of(self, fuse: Sequence[int]) -> torch.Tensor:
        mask = torch.zeros(self.num_modalities, device=self.fusion_mask.device)
        mask[list(fuse)] = 1.0
        return mask

    @torch.no_grad()
    def draw_fusion_mask(self) -> Tuple[int, ...]:
        """Draw the next training step's fusion set into ``fusion_mask`` (in place; call it outside the forward, i.e.
        outside a compiled graph) and return it."""
        fuse = self.draw_fusion_set()
        self.fusion_mask.copy_(self._mask_of(fuse))
        return fuse

    def forward_with_peers(self, x: torch.Tensor) -> Tuple[Output, List[Output]]:
        """Fused output and the outputs of the peers that ran (in the order of ``available_modalities``).

        Args:
            x: (B, M, *spatial) input with one channel per modality.
        """
        if x.shape[1] != self.num_modalities:
            raise ValueError(f"MAMLNetwork expects {self.num_modalities} input channels, got {x.shape[1]}")
        available = self.available_modalities
        features, outputs = {}, {}
        for i in available:
            features[i], outputs[i] = self._run_peer(i, x[:, i:i + 1])
        if self._dropout_active(available):
            # modality dropout as 0/1 weights: the same computation whichever subset was drawn
            mask = self.fusion_mask if self.fusion_mask_drawn_outside else self._mask_of(self.draw_fusion_set())
            attended = self.attention([features.get(i) for i in range(self.num_modalities)], weights=mask)
            fused = [self.head(attended)]
            for level in range(1, len(outputs[available[0]])):
                level_outputs = [outputs[i][level] for i in available]
                weights = mask[list(available)].to(level_outputs[0].dtype)
                fused.append(sum(w * o for w, o in zip(weights, level_outputs)) / weights.sum())
        elif len(available) == 1:
            fused = list(outputs[available[0]])
        else:
            attended = self.attention([features.get(i) for i in range(self.num_modalities)])
            fused = [self.head(attended)]
            for level in range(1, len(outputs[available[0]])):
                fused.append(torch.stack([outputs[i][level] for i in available]).mean(0))
        peers = [outputs[i] if self.deep_supervision else outputs[i][0] for i in available]
        return (fused if self.deep_supervision else fused[0]), peers

    def forward(self, x: torch.Tensor) -> Output:
        fused, peers = self.forward_with_peers(x)
        self.peer_outputs = peers if self.keep_peer_outputs else None
        return fused

    @staticmethod
    def initialize(module: nn.Module) -> None:
        InitWeights_He(1e-2)(module)


def build_maml_network(arch_class_name: str, arch_kwargs: dict, arch_kwargs_req_import: Sequence[str],
                       num_modalities: int, num_classes: int, width_factor: float = 0.5,
                       deep_supervision: bool = True) -> MAMLNetwork:
    """Build the MAML network from the architecture entry of an nnU-Net configuration.

    Args:
        arch_class_name, arch_kwargs, arch_kwargs_req_import: ``configuration_manager.network_arch_class_name`` etc.
        num_modalities: number of input channels; one peer each (at least 2).
        num_classes: number of segmentation heads (``label_manager.num_segmentation_heads``).
        width_factor: multiplies every peer width (0.5 = the paper's public code).
        deep_supervision: as in nnU-Net's ``build_network_architecture``.
    """
    if num_modalities < 2:
        raise ValueError(f"MAML needs a dataset with at least 2 input channels, got {num_modalities}. A single-channel "
                         f"dataset has nothing to fuse: train it with a plain nnU-Net trainer.")
    if pydoc.locate(arch_class_name) is None:
        raise ValueError(f"network class {arch_class_name!r} from the plans cannot be imported")
    kwargs = scale_width(arch_kwargs, width_factor)
    peers = [get_network_from_plans(arch_class_name, kwargs, arch_kwargs_req_import, 1, num_classes,
                                    allow_init=True, deep_supervision=deep_supervision)
             for _ in range(num_modalities)]
    network = MAMLNetwork(peers, num_classes, deep_supervision)
    network.attention.apply(MAMLNetwork.initialize)
    network.head.apply(MAMLNetwork.initialize)
    return network
