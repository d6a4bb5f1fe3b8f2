"""GLUA: unsupervised cross-modality adaptation from a labelled SOURCE dataset to an unlabelled TARGET dataset by
global style transfer and local, gap-weighted feature alignment.

Source: Su et al., "Mind the Gap: Alleviating Local Imbalance for Unsupervised Cross-Modality Medical Image
Segmentation", IEEE JBHI 2023 (arXiv 2205.11888). Our formulation and its deviations: docs/glua.md, and the
docstrings of :mod:`nnunet_unpaired.modules.style_transfer`, :mod:`nnunet_unpaired.modules.local_alignment` and
:mod:`nnunet_unpaired.losses.adversarial`.

The method in two stages, each a trainer on :class:`~nnunet_unpaired.training.source_only.nnUNetTrainerSourceOnly`
(the lower bound, and the base that keeps target labels out of training):

- stage 1, :class:`~nnunet_unpaired.training.glua_style.nnUNetTrainerGLUAStyle` (its own module): the source-only
  segmentation training plus the style-transfer module, trained with its own Adam optimizers;
- stage 2, here, :class:`nnUNetTrainerGLUA`: loads the frozen style generator from stage 1's ``checkpoint_final.pth``;
  trains the segmentation network on source patches of which a random part is replaced by target-like translations
  (global alignment, source labels), while a feature discriminator separates source from target decoder features
  and a gap mask weights the adversarial alignment of the target features (local alignment);
- its ablations, here: :class:`nnUNetTrainerGLUAGlobalOnly`, :class:`nnUNetTrainerGLUALocalOnly`.

``nnUNet_unpaired_glua_style_checkpoint`` points stage 2 to a style checkpoint other than the default location
``nnUNet_results/<source>/nnUNetTrainerGLUAStyle__<plans>__<configuration>/fold_<fold>/checkpoint_final.pth``.
The other settings: :mod:`nnunet_unpaired.training.source_only`.

Stage 1, the base and :class:`~nnunet_unpaired.training.source_only.TargetImagesOnly` are importable from here too
(``__all__``), so that the whole method is one import.
"""

from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import isfile, join
from torch import nn

from nnunet_unpaired.errors import UserError
from nnunet_unpaired.losses.adversarial import AdversarialLoss
from nnunet_unpaired.losses.ramps import warmup_ramp
from nnunet_unpaired.modules.local_alignment import DecoderFeatureTap, FeatureDiscriminator, gap_mask
from nnunet_unpaired.modules.style_transfer import StyleConfig, StyleTransferGenerator
from nnunet_unpaired.training import interface
from nnunet_unpaired.training.glua_style import nnUNetTrainerGLUAStyle, style_generator_weights
from nnunet_unpaired.training.source_only import (EXTRAS_KEY, TargetImagesOnly, frozen, nnUNetTrainerSourceOnly,
                                                  own_adam)
from nnunet_unpaired.training.unpaired_joint import CHECKPOINT_KEY

__all__ = ["ENV_STYLE_CHECKPOINT", "EXTRAS_KEY", "PREREQUISITES", "STYLE_TRAINER", "TargetImagesOnly",
           "nnUNetTrainerGLUA", "nnUNetTrainerGLUAGlobalOnly", "nnUNetTrainerGLUALocalOnly", "nnUNetTrainerGLUAStyle",
           "nnUNetTrainerSourceOnly"]

ENV_STYLE_CHECKPOINT = interface.GLUA_ENV_STYLE_CHECKPOINT
STYLE_TRAINER = interface.GLUA_STYLE_TRAINER


class nnUNetTrainerGLUA(nnUNetTrainerSourceOnly):
    """GLUA stage 2 (the deployed model): global + local alignment. Needs stage 1 (:class:`nnUNetTrainerGLUAStyle`,
    same source dataset, plans, configuration and fold) to have finished.

    Each step draws a source batch and a target batch (images only):

    - global: each source patch is replaced, with probability ``translate_probability``, by its translation into the
      target style (the style of a target patch of the batch; frozen stage-1 generator); nnU-Net's loss with the
      source labels on the result;
    - local: the network also runs on the target batch; a feature discriminator scores every location of a decoder
      feature map (``local_input = "features"``, stage ``feature_stage``) or of the softmax output (``"output"``);
      the network gets ``local_weight * warm-up * mean(mask * BCE(D(target features), source))`` with the gap mask
      of :func:`~nnunet_unpaired.modules.local_alignment.gap_mask`; then the discriminator takes one Adam step
      (source features real, target features fake).
    """

    uses_target_images = True
    #: ablation switches (variant classes below)
    use_global: bool = True
    use_local: bool = True
    #: the stage-1 trainer whose checkpoint_final.pth provides the style generator
    style_trainer: str = STYLE_TRAINER

    translate_probability: float = 0.5
    local_weight: float = 0.01
    local_warmup: float = 0.1
    mask_gamma: float = 1.0
    local_input: str = "features"
    feature_stage: int = -1
    discriminator_width: int = 32
    discriminator_lr: float = 1e-4
    glua_settings = {
        "translate_probability": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
        "local_weight": (lambda v: v >= 0, "a number >= 0"),
        "local_warmup": (lambda v: v >= 0, "a number >= 0 (fraction of the epochs)"),
        "mask_gamma": (lambda v: v >= 0, "a number >= 0"),
        "local_input": (lambda v: v in ("features", "output"), "'features' or 'output'"),
        "feature_stage": (lambda v: True, "an integer (index into the decoder stages, -1 = highest resolution)"),
        "discriminator_width": (lambda v: v >= 1, "an integer >= 1"),
        "discriminator_lr": (lambda v: v > 0, "a number > 0"),
    }

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self._style_config: Optional[StyleConfig] = None  # from a checkpoint being resumed (before_loading_checkpoint)
        self._features: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
        self._tap: Optional[DecoderFeatureTap] = None  # the decoder-feature hook (local_input "features")
        self.feature_gan = AdversarialLoss("bce")

    # ------------------------------------------------------------------------------------------ style generator
    def style_checkpoint_path(self) -> str:
        explicit = os.environ.get(ENV_STYLE_CHECKPOINT, "").strip()
        if explicit:
            return explicit
        return join(os.environ["nnUNet_results"], self.plans_manager.dataset_name,
                    f"{self.style_trainer}__{self.plans_manager.plans_name}__{self.configuration_name}",
                    f"fold_{self.fold}", "checkpoint_final.pth")

    def _load_stage1(self) -> Tuple[StyleConfig, Dict[str, torch.Tensor]]:
        path = self.style_checkpoint_path()
        command = (f"nnUNetv2_train {self.plans_manager.dataset_name} {self.configuration_name} {self.fold} "
                   f"-tr {self.style_trainer} -p {self.plans_manager.plans_name}")
        if not isfile(path):
            raise UserError(f"{self.__class__.__name__} needs the style-transfer model of stage 1, {path}, which does "
                            f"not exist. Train stage 1 first: {command}  (or point {ENV_STYLE_CHECKPOINT} to a "
                            f"checkpoint of it)")
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        extras = checkpoint.get(CHECKPOINT_KEY, {})
        config = extras.get(EXTRAS_KEY, {}).get("style_config")
        if config is None or "training_modules" not in extras:
            raise UserError(f"{path} holds no style-transfer model (it is not a checkpoint of {self.style_trainer} "
                            f"trained on the source dataset; exported checkpoints in the target's folder hold none)")
        if extras.get("partner") != self.partner_name:
            raise UserError(f"the style model {path} was trained with target {extras.get('partner')}, not with "
                            f"{self.partner_name}. Retrain stage 1: {command}")
        return StyleConfig(**config), style_generator_weights(extras["training_modules"], path)

    def before_loading_checkpoint(self, extras: Dict) -> None:
        if "style_config" in extras:
            self._style_config = StyleConfig(**extras["style_config"])

    def build_training_modules(self) -> Dict[str, nn.Module]:
        modules = super().build_training_modules()
        if self.use_global:
            if self._style_config is not None:  # resuming: the weights come with the checkpoint
                generator = StyleTransferGenerator(self._style_config)
            else:
                config, weights = self._load_stage1()
                generator = StyleTransferGenerator(config)
                generator.load_state_dict(weights)
                self.print_to_log_file(f"style generator loaded from {self.style_checkpoint_path()}")
            modules["style_generator"] = generator.requires_grad_(False).eval()
        if self.use_local:
            if self.local_input == "features":
                channels = DecoderFeatureTap.channels(self._plain_network(), self.feature_stage)
                # attached here, in initialize(), before the network's first forward, so that a torch.compile'd
                # network runs its hook too (one registered later never would)
                self._tap = DecoderFeatureTap.attached(self._plain_network(), self.feature_stage)
            else:
                channels = self.label_manager.num_segmentation_heads
            dim = len(self.configuration_manager.patch_size)
            modules["feature_discriminator"] = FeatureDiscriminator(dim, channels,
                                                                    self.discriminator_width).requires_grad_(False)
        return modules

    def configure_extra_optimizers(self) -> Dict[str, torch.optim.Optimizer]:
        optimizers = super().configure_extra_optimizers()
        if self.use_local:
            optimizers["feature_discriminator"] = own_adam(self.training_modules["feature_discriminator"],
                                                           self.discriminator_lr, betas=(0.9, 0.99))
        return optimizers

    def checkpoint_extras(self) -> Dict:
        extras = super().checkpoint_extras()
        if self.use_global:
            extras["style_config"] = self.training_modules["style_generator"].config.to_dict()
        return extras

    # ------------------------------------------------------------------------------------------------ training
    def translate_some(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The source batch with each patch replaced, with probability ``translate_probability``, by its
        translation into the style of a target patch (no gradient into the frozen generator)."""
        generator = self.training_modules["style_generator"].eval()
        with torch.no_grad():
            style = generator.style_of(target.float())
            translated = generator.translate_normalized(source.float(), style).to(source.dtype)
        pick = torch.rand(source.shape[0], device=source.device) < self.translate_probability
        return torch.where(pick.view((-1,) + (1,) * (source.ndim - 1)), translated, source)

    def _local_input(self, output) -> torch.Tensor:
        """What the feature discriminator judges of the forward pass that gave ``output``: the tapped decoder
        features, or the softmax output."""
        if self.local_input == "features":
            return self._tap.take()
        first = output if isinstance(output, torch.Tensor) else output[0]
        return torch.softmax(first.float(), 1)

    def local_weight_now(self) -> float:
        return self.local_weight * warmup_ramp(self.current_epoch, self.local_warmup * self.num_epochs)

    def compute_losses(self, data_a, target_a, data_b, target_b) -> Dict[str, torch.Tensor]:
        """``target_b`` (all zeros from :class:`TargetImagesOnly`) is never read."""
        labelled = self.translate_some(data_a, data_b) if self.use_global else data_a
        if not self.use_local:
            seg = self.loss(self.network(labelled), target_a)
            return {"seg": seg, "loss": seg}
        output = self.network(labelled)
        features_source = self._local_input(output)
        output_target = self.network(data_b)
        features_target = self._local_input(output_target)
        seg = self.loss(output, target_a)
        discriminator = self.training_modules["feature_discriminator"]
        with frozen(discriminator):
            logits_target = discriminator(features_target)
        mask = gap_mask(logits_target, self.mask_gamma)
        adv = self.local_weight_now() * self.feature_gan.generator_loss(logits_target, mask)
        self._features = (features_source.detach(), features_target.detach())
        return {"seg": seg, "adv_local": adv, "loss": seg + adv}

    def train_step(self, batch: dict) -> dict:
        result = super().train_step(batch)
        if self.use_local:
            result.update(self.discriminator_step())
        return result

    def discriminator_step(self) -> Dict[str, np.ndarray]:
        """One Adam step of the feature discriminator on the features of the last training step."""
        features_source, features_target = self._features
        self._features = None
        discriminator = self.training_modules["feature_discriminator"]
        optimizer = self.extra_optimizers["feature_discriminator"]
        logits_source = discriminator(features_source.float())
        logits_target = discriminator(features_target.float())
        loss = self.feature_gan.discriminator_loss(logits_source, logits_target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            gap = 1 - torch.sigmoid(logits_target).mean()
        return {"disc_local": loss.detach().cpu().numpy(), "gap_target": gap.cpu().numpy()}


class nnUNetTrainerGLUAGlobalOnly(nnUNetTrainerGLUA):
    """Ablation: global alignment only (source + target-like source patches, no feature discriminator)."""

    use_local = False


class nnUNetTrainerGLUALocalOnly(nnUNetTrainerGLUA):
    """Ablation: local alignment only (source patches, gap-masked feature alignment; no style transfer, no stage 1)."""

    use_global = False


class nnUNetTrainerGLUAUnmasked(nnUNetTrainerGLUA):
    """Ablation: full GLUA with the local mask's focusing off (gamma 0: every location weighs the same), to separate
    the gap mask from local alignment itself (issue 16)."""

    mask_gamma = 0.0


class nnUNetTrainerGLUALocalOnlyUnmasked(nnUNetTrainerGLUALocalOnly):
    """Ablation: local alignment only, without the gap mask's focusing (gamma 0)."""

    mask_gamma = 0.0


#: stage-2 trainers -> the trainer that must have finished (same dataset, plans, configuration, fold) before them
PREREQUISITES = interface.PREREQUISITES
