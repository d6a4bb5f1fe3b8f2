"""Global alignment of GLUA: a feature-disentanglement style-transfer module that turns source images into
target-like images with the source anatomy (2D and 3D).

Source: Su et al., "Mind the Gap: Alleviating Local Imbalance for Unsupervised Cross-Modality Medical Image
Segmentation", IEEE JBHI 2023 (arXiv 2205.11888): a feature-disentanglement style transfer synthesizes target-like
source images. The architecture below is ours, in the spirit of MUNIT (Huang et al., ECCV 2018), reduced to what a
CPU can train in minutes:

- :class:`ContentEncoder` (shared by both domains): convolutions with instance normalization, ``len(strides)``
  strided down-samplings, residual blocks. Instance normalization removes per-image intensity statistics, so the
  code keeps structure, not style.
- :class:`StyleEncoder` (one per domain): strided convolutions without normalization, global average pooling, a
  linear map to a small style vector.
- :class:`AdaINDecoder` (shared): residual blocks and, with ``adain_everywhere`` (default), every up-sampling block
  too, whose instance-normalization scales and shifts come from the style vector through an MLP (adaptive instance
  normalization, Huang and Belongie, ICCV 2017): style is injected throughout the decoder, as in DAR-UNet; then
  nearest-neighbour up-sampling + convolution back to the input resolution; a ``tanh`` output (default) for images
  in [-1, 1], or a linear one (the first version, on nnU-Net's unbounded normalized intensities).
- :class:`ImageDiscriminator` (one per domain): a small patch discriminator.
- :class:`ContentDiscriminator`: tells the content codes of the two domains apart; the content encoder is trained to
  confuse it, which pushes the content code to be domain-invariant (as in DRIT and DAR-UNet).
- intensity windows (buffers, saved with the weights): per domain the range of nnU-Net's normalized intensities that
  maps to [-1, 1] (:meth:`StyleTransferGenerator.to_unit`, :meth:`~StyleTransferGenerator.from_unit`), so that the
  generator works on [-1, 1] images and stage 2 gets translations back in the target's normalized range
  (:meth:`~StyleTransferGenerator.translate_normalized`).

Deviations from MUNIT: one shared decoder instead of one per domain (the domain is carried by the style vector,
which only that domain's style encoder produces); translations use the style of an actual image of the other
domain (example-guided) rather than a style drawn from a prior; a content discriminator and a cycle term
(:attr:`StyleTransferPass.cycle_source`) as in DRIT / DAR-UNet; a shape-preservation loss
(:class:`nnunet_unpaired.losses.adversarial.ShapePreservationLoss`). Down-sampling strides per axis come from the
nnU-Net plan, so anisotropic 3D patches (e.g. 8 x 32 x 32) work.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.helper import convert_dim_to_conv_op, get_matching_instancenorm
from torch import nn

__all__ = ["AdaIN", "AdaINDecoder", "ContentDiscriminator", "ContentEncoder", "ImageDiscriminator", "StyleConfig",
           "StyleEncoder", "StyleTransferGenerator", "StyleTransferPass", "DOMAINS", "OUTPUTS"]

DOMAINS = ("source", "target")
OUTPUTS = ("tanh", "linear")


@dataclass
class StyleConfig:
    """Everything that determines the architecture; stored with the weights so they can be rebuilt.

    Args:
        dim: 2 or 3 spatial dimensions.
        in_channels: image channels (nnU-Net input channels).
        strides: one stride per down-sampling step, each with ``dim`` entries (e.g. ``[[2, 2], [2, 2]]``).
        width: channels of the first convolution; doubled at every down-sampling.
        n_res: residual blocks in the content encoder and in the decoder.
        style_dim: length of the style vector.
        mlp_width: hidden width of the MLP that maps the style vector to AdaIN parameters.
        discriminator_width: channels of the discriminators' first convolution.
        output: ``"tanh"`` (images in [-1, 1]) or ``"linear"``.
        adain_everywhere: AdaIN in the up-sampling blocks too (else GroupNorm there, the first version).
    """

    dim: int
    in_channels: int = 1
    strides: List[List[int]] = field(default_factory=lambda: [[2, 2], [2, 2]])
    width: int = 16
    n_res: int = 2
    style_dim: int = 8
    mlp_width: int = 64
    discriminator_width: int = 16
    output: str = "tanh"
    adain_everywhere: bool = True

    def __post_init__(self):
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {self.output!r}")
        if self.dim not in (2, 3):
            raise ValueError(f"dim must be 2 or 3, got {self.dim}")
        self.strides = [[int(s) for s in stride] for stride in self.strides]
        if not self.strides:
            raise ValueError("strides needs at least one down-sampling step")
        for stride in self.strides:
            if len(stride) != self.dim or min(stride) < 1:
                raise ValueError(f"every stride needs {self.dim} entries >= 1, got {stride}")
        for name in ("in_channels", "width", "style_dim", "mlp_width", "discriminator_width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_res < 0:
            raise ValueError(f"n_res must be >= 0, got {self.n_res}")

    @property
    def total_stride(self) -> Tuple[int, ...]:
        """Per axis, the factor that image sizes must be divisible by."""
        total = [1] * self.dim
        for stride in self.strides:
            total = [t * s for t, s in zip(total, stride)]
        return tuple(total)

    def to_dict(self) -> Dict:
        return asdict(self)


def _conv(dim: int, cin: int, cout: int, stride=1, kernel: int = 3) -> nn.Module:
    return convert_dim_to_conv_op(dim)(cin, cout, kernel, stride=stride, padding=kernel // 2)


def _instance_norm(dim: int, channels: int, affine: bool = True) -> nn.Module:
    return get_matching_instancenorm(dimension=dim)(channels, affine=affine)


class _ResBlock(nn.Module):
    def __init__(self, dim: int, channels: int):
        super().__init__()
        self.body = nn.Sequential(_conv(dim, channels, channels), _instance_norm(dim, channels), nn.ReLU(inplace=True),
                                  _conv(dim, channels, channels), _instance_norm(dim, channels))

    def forward(self, x):
        return x + self.body(x)


class ContentEncoder(nn.Module):
    """Image (B, C, *S) -> content code (B, width * 2^n, *S / total_stride). Shared by both domains."""

    def __init__(self, config: StyleConfig):
        super().__init__()
        d, w = config.dim, config.width
        layers = [_conv(d, config.in_channels, w), _instance_norm(d, w), nn.ReLU(inplace=True)]
        for stride in config.strides:
            layers += [_conv(d, w, 2 * w, stride), _instance_norm(d, 2 * w), nn.ReLU(inplace=True)]
            w *= 2
        layers += [_ResBlock(d, w) for _ in range(config.n_res)]
        self.layers = nn.Sequential(*layers)
        self.out_channels = w

    def forward(self, x):
        return self.layers(x)


class StyleEncoder(nn.Module):
    """Image (B, C, *S) -> style vector (B, style_dim). One per domain; no normalization (it would erase style)."""

    def __init__(self, config: StyleConfig):
        super().__init__()
        d, w = config.dim, config.width
        layers = [_conv(d, config.in_channels, w), nn.ReLU(inplace=True)]
        for stride in config.strides:
            layers += [_conv(d, w, 2 * w, stride), nn.ReLU(inplace=True)]
            w *= 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(w, config.style_dim)

    def forward(self, x):
        pooled = self.features(x).flatten(2).mean(2)
        return self.head(pooled)


class AdaIN(nn.Module):
    """Adaptive instance normalization: ``instance_norm(x) * scale + shift`` with per-sample, per-channel
    ``scale`` and ``shift`` of shape (B, C)."""

    def __init__(self, eps: float = 1e-5):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        if scale.shape != x.shape[:2] or shift.shape != x.shape[:2]:
            raise ValueError(f"scale and shift must have shape {tuple(x.shape[:2])}, got {tuple(scale.shape)} and "
                             f"{tuple(shift.shape)}")
        view = (*x.shape[:2],) + (1,) * (x.ndim - 2)
        return F.instance_norm(x, eps=self.eps) * scale.view(view) + shift.view(view)


class _AdaINResBlock(nn.Module):
    n_params_per_channel = 4  # two AdaIN layers, each a scale and a shift

    def __init__(self, dim: int, channels: int):
        super().__init__()
        self.conv1, self.conv2 = _conv(dim, channels, channels), _conv(dim, channels, channels)
        self.adain = AdaIN()

    def forward(self, x, params):
        s1, b1, s2, b2 = params.chunk(4, dim=1)
        y = F.relu(self.adain(self.conv1(x), 1 + s1, b1))
        return x + self.adain(self.conv2(y), 1 + s2, b2)


class _AdaINUpBlock(nn.Module):
    """Up-sampling, convolution, AdaIN with the style's scale and shift, ReLU: C -> C // 2 channels."""

    n_params_per_channel = 2  # one AdaIN layer: a scale and a shift per output channel

    def __init__(self, dim: int, channels: int, stride: Sequence[int]):
        super().__init__()
        self.up = nn.Upsample(scale_factor=tuple(float(s) for s in stride), mode="nearest")
        self.conv = _conv(dim, channels, channels // 2)
        self.adain = AdaIN()
        self.out_channels = channels // 2

    def forward(self, x, params):
        scale, shift = params.chunk(2, dim=1)
        return F.relu(self.adain(self.conv(self.up(x)), 1 + scale, shift))


class AdaINDecoder(nn.Module):
    """(content code, style vector) -> image. AdaIN scales are ``1 + MLP output`` so that a zero MLP output keeps the
    normalized features. With ``config.adain_everywhere`` the up-sampling blocks are AdaIN blocks too."""

    def __init__(self, config: StyleConfig, content_channels: int):
        super().__init__()
        d, c = config.dim, content_channels
        self.channels = c
        self.blocks = nn.ModuleList(_AdaINResBlock(d, c) for _ in range(config.n_res))
        self.param_sizes = [_AdaINResBlock.n_params_per_channel * c] * config.n_res
        up: List[nn.Module] = []
        self.adain_up = nn.ModuleList()
        for stride in reversed(config.strides):
            if config.adain_everywhere:
                block = _AdaINUpBlock(d, c, stride)
                self.adain_up.append(block)
                self.param_sizes.append(_AdaINUpBlock.n_params_per_channel * block.out_channels)
            else:
                up += [nn.Upsample(scale_factor=tuple(float(s) for s in stride), mode="nearest"),
                       _conv(d, c, c // 2), nn.GroupNorm(1, c // 2), nn.ReLU(inplace=True)]
            c //= 2
        self.mlp = nn.Sequential(nn.Linear(config.style_dim, config.mlp_width), nn.ReLU(inplace=True),
                                 nn.Linear(config.mlp_width, config.mlp_width), nn.ReLU(inplace=True),
                                 nn.Linear(config.mlp_width, max(sum(self.param_sizes), 1)))
        up.append(_conv(d, c, config.in_channels))
        if config.output == "tanh":
            up.append(nn.Tanh())
        self.up = nn.Sequential(*up)

    def forward(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        if style.ndim != 2 or style.shape[0] != content.shape[0]:
            raise ValueError(f"style must be (B, style_dim) with B = {content.shape[0]}, got {tuple(style.shape)}")
        params = self.mlp(style).split(self.param_sizes, dim=1) if self.param_sizes else []
        x = content
        for block, p in zip([*self.blocks, *self.adain_up], params):
            x = block(x, p)
        return self.up(x)


class ImageDiscriminator(nn.Module):
    """Patch discriminator: image (B, C, *S) -> score map (B, 1, *S / total_stride); high = real (this domain)."""

    def __init__(self, config: StyleConfig):
        super().__init__()
        d, w = config.dim, config.discriminator_width
        layers, cin = [], config.in_channels
        for stride in config.strides:
            layers += [_conv(d, cin, w, stride), nn.LeakyReLU(0.2, inplace=True)]
            cin, w = w, 2 * w
        layers += [_conv(d, cin, cin), nn.LeakyReLU(0.2, inplace=True), _conv(d, cin, 1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


class ContentDiscriminator(nn.Module):
    """Content code (B, C, *S') -> score map; trained to score source codes high and target codes low, while the
    content encoder is trained to make them indistinguishable (domain-invariant content)."""

    def __init__(self, config: StyleConfig, content_channels: int):
        super().__init__()
        d, w = config.dim, config.discriminator_width
        self.layers = nn.Sequential(_conv(d, content_channels, w), nn.LeakyReLU(0.2, inplace=True),
                                    _conv(d, w, w), nn.LeakyReLU(0.2, inplace=True), _conv(d, w, 1, kernel=1))

    def forward(self, content):
        return self.layers(content)


@dataclass
class StyleTransferPass:
    """Everything one training pass of :meth:`StyleTransferGenerator.forward` computes."""

    source: torch.Tensor
    target: torch.Tensor
    content_source: torch.Tensor
    content_target: torch.Tensor
    style_source: torch.Tensor
    style_target: torch.Tensor
    style_source_used: torch.Tensor  # style of a source image, one per target image (for target->source)
    style_target_used: torch.Tensor  # style of a target image, one per source image (for source->target)
    rec_source: torch.Tensor
    rec_target: torch.Tensor
    source_to_target: torch.Tensor
    target_to_source: torch.Tensor
    content_source_to_target: torch.Tensor
    content_target_to_source: torch.Tensor
    style_source_to_target: torch.Tensor
    style_target_to_source: torch.Tensor
    cycle_source: torch.Tensor  # source -> target -> source: the translation's content with the source's own style
    cycle_target: torch.Tensor


def _styles_for(style: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` style vectors taken in turn from ``style`` (the batches of the two domains may differ in size)."""
    return style[torch.arange(n, device=style.device) % style.shape[0]]


class StyleTransferGenerator(nn.Module):
    """Shared content encoder, one style encoder per domain (``"source"``, ``"target"``), shared AdaIN decoder."""

    def __init__(self, config: StyleConfig):
        super().__init__()
        self.config = config
        self.content_encoder = ContentEncoder(config)
        self.style_encoders = nn.ModuleDict({d: StyleEncoder(config) for d in DOMAINS})
        self.decoder = AdaINDecoder(config, self.content_encoder.out_channels)
        # per domain (source, target): the normalized intensities (lo, hi) that map to [-1, 1]; identity by default
        self.register_buffer("windows", torch.tensor([[-1.0, 1.0], [-1.0, 1.0]]))

    def set_window(self, domain: str, low: float, high: float) -> None:
        """The intensity window of ``domain``: nnU-Net-normalized ``low`` maps to -1, ``high`` to 1.

        Raises:
            ValueError: for an unknown domain or ``high <= low``.
        """
        if domain not in DOMAINS:
            raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
        if not high > low:
            raise ValueError(f"the window of {domain} needs high > low, got ({low}, {high})")
        with torch.no_grad():
            self.windows[DOMAINS.index(domain)] = torch.tensor([float(low), float(high)])

    def to_unit(self, x: torch.Tensor, domain: str) -> torch.Tensor:
        """nnU-Net-normalized images of ``domain`` -> [-1, 1] (clipped to the domain's window)."""
        low, high = self.windows[DOMAINS.index(domain)].to(x.dtype)
        return (2 * (x - low) / (high - low) - 1).clamp(-1, 1)

    def from_unit(self, y: torch.Tensor, domain: str) -> torch.Tensor:
        """[-1, 1] -> ``domain``'s nnU-Net-normalized range (the inverse of :meth:`to_unit` inside the window)."""
        low, high = self.windows[DOMAINS.index(domain)].to(y.dtype)
        return low + (y + 1) * (high - low) / 2

    def style_of(self, x: torch.Tensor, domain: str = "target") -> torch.Tensor:
        """Style vectors of nnU-Net-normalized images of ``domain`` (mapped to [-1, 1] first)."""
        return self.style_encoders[domain](self.to_unit(x, domain))

    def translate_normalized(self, x: torch.Tensor, style: torch.Tensor, source: str = "source",
                             target: str = "target") -> torch.Tensor:
        """nnU-Net-normalized images of domain ``source`` -> images in ``target``'s normalized range, rendered with
        ``style`` (style vectors of ``target`` images): what stage 2 trains on and ``nnunet_unpaired translate``
        writes."""
        return self.from_unit(self.translate(self.to_unit(x, source), style), target)

    def _check(self, x: torch.Tensor, name: str) -> None:
        if x.ndim != self.config.dim + 2 or x.shape[1] != self.config.in_channels:
            axes = "X, Y" if self.config.dim == 2 else "X, Y, Z"
            raise ValueError(f"{name} must be (B, {self.config.in_channels}, {axes}), got shape {tuple(x.shape)}")
        bad = [(n, s) for n, s in zip(x.shape[2:], self.config.total_stride) if n % s]
        if bad:
            raise ValueError(f"{name}: spatial size {tuple(x.shape[2:])} is not divisible by the total stride "
                             f"{self.config.total_stride}; use translate() (which pads) or crop the input")

    def encode(self, x: torch.Tensor, domain: str) -> Tuple[torch.Tensor, torch.Tensor]:
        """(content code, style vector) of images of ``domain``."""
        self._check(x, "image")
        return self.content_encoder(x), self.style_encoders[domain](x)

    def decode(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return self.decoder(content, style)

    def translate(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """Images ``x`` rendered with the style vectors ``style`` (one per image, or taken in turn). Any spatial size:
        the input is padded (edge values) to a multiple of the total stride and the output cropped back."""
        if x.ndim != self.config.dim + 2:
            raise ValueError(f"expected a (B, C, *spatial) tensor with {self.config.dim} spatial axes, "
                             f"got shape {tuple(x.shape)}")
        sizes = x.shape[2:]
        pad = []
        for n, s in zip(reversed(sizes), reversed(self.config.total_stride)):
            pad += [0, (-n) % s]
        padded = F.pad(x, pad, mode="replicate") if any(pad) else x
        out = self.decode(self.content_encoder(padded), _styles_for(style, x.shape[0]))
        return out[(slice(None), slice(None)) + tuple(slice(0, n) for n in sizes)]

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> StyleTransferPass:
        """One training pass: codes of both batches, self-reconstructions, cross translations (each source image gets
        the style of a target image and vice versa), and the codes re-encoded from the translations."""
        self._check(source, "source")
        self._check(target, "target")
        c_s, s_s = self.encode(source, "source")
        c_t, s_t = self.encode(target, "target")
        s_t_used, s_s_used = _styles_for(s_t, source.shape[0]), _styles_for(s_s, target.shape[0])
        s2t = self.decode(c_s, s_t_used)
        t2s = self.decode(c_t, s_s_used)
        c_s2t, s_s2t = self.encode(s2t, "target")
        c_t2s, s_t2s = self.encode(t2s, "source")
        return StyleTransferPass(
            source=source, target=target, content_source=c_s, content_target=c_t, style_source=s_s, style_target=s_t,
            style_source_used=s_s_used, style_target_used=s_t_used,
            rec_source=self.decode(c_s, s_s), rec_target=self.decode(c_t, s_t),
            source_to_target=s2t, target_to_source=t2s, content_source_to_target=c_s2t,
            content_target_to_source=c_t2s, style_source_to_target=s_s2t, style_target_to_source=s_t2s,
            cycle_source=self.decode(c_s2t, s_s), cycle_target=self.decode(c_t2s, s_t))


def build_discriminators(config: StyleConfig, content_channels: Optional[int] = None) -> nn.ModuleDict:
    """One :class:`ImageDiscriminator` per domain and, given the content code's channels, a
    :class:`ContentDiscriminator` under ``"content"``."""
    modules: Dict[str, nn.Module] = {d: ImageDiscriminator(config) for d in DOMAINS}
    if content_channels is not None:
        modules["content"] = ContentDiscriminator(config, content_channels)
    return nn.ModuleDict(modules)


def style_strides_from_plan(plan_strides: Sequence[Sequence[int]], n_down: int = 2) -> List[List[int]]:
    """The first ``n_down`` down-sampling strides of an nnU-Net plan (its first entry, the stem's stride, skipped).

    nnU-Net's patch sizes are divisible by the product of the plan's strides, so these always divide them too.
    Fewer steps are returned when the plan has fewer.
    """
    steps = [list(s) for s in plan_strides[1:]]
    if not steps:
        raise ValueError(f"the plan's strides {plan_strides} contain no down-sampling step")
    return steps[:max(1, n_down)]
