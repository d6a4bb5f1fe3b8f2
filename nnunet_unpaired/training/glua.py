"""GLUA trainers: unsupervised cross-modality adaptation from a labelled SOURCE dataset to an unlabelled TARGET dataset
by global style transfer and local, gap-weighted feature alignment.

Source: Su et al., "Mind the Gap: Alleviating Local Imbalance for Unsupervised Cross-Modality Medical Image
Segmentation", IEEE JBHI 2023 (arXiv 2205.11888). Our formulation and its deviations: docs/glua.md, and the
docstrings of :mod:`nnunet_unpaired.modules.style_transfer`, :mod:`nnunet_unpaired.modules.local_alignment` and
:mod:`nnunet_unpaired.losses.adversarial`.

Source = dataset A (the trainer is started on it), target = its plan-pair partner B. Every trainer here is a
:class:`~nnunet_unpaired.training.unpaired_joint.nnUNetTrainerUnpairedJoint`, so the model for the target is exported
to B's model folder with B's plans (B's normalization) and ``nnUNetv2_predict -d B ... -tr <trainer>`` loads a plain
network strictly. The trainers:

- :class:`nnUNetTrainerSourceOnly`: the lower bound; stock nnU-Net training on the source only, exported for B.
- :class:`nnUNetTrainerGLUAStyle` (stage 1): the source-only segmentation training plus the style-transfer module
  (content/style encoders, AdaIN decoder, image discriminators), trained with its own Adam optimizers.
- :class:`nnUNetTrainerGLUA` (stage 2): loads the frozen style generator from stage 1's ``checkpoint_final.pth``;
  trains the segmentation network on source patches of which a random part is replaced by target-like translations
  (global alignment, source labels), while a feature discriminator separates source from target decoder features
  and a gap mask weights the adversarial alignment of the target features (local alignment).
- :class:`nnUNetTrainerGLUAGlobalOnly`, :class:`nnUNetTrainerGLUALocalOnly`: the ablations.

Target labels are never read in training (tested in tests/test_glua_trainer.py):

- the target data loaders get :class:`TargetImagesOnly` datasets, which return an all-zero segmentation and no class
  locations, so nnU-Net's foreground oversampling cannot look at target labels either (it falls back to random
  crops); the target's segmentation files are never decoded;
- no loss reads the target batch's segmentation;
- the per-epoch validation (pseudo Dice, ``checkpoint_best``) uses the SOURCE validation cases only.

Target labels are read once training is over, by nnU-Net's final validation of B's validation fold (evaluation).
One label-derived quantity lies outside the trainer: nnU-Net's dataset fingerprint computes the intensity statistics
that CT normalization uses from the voxels inside the labels; for a CT target they come from B's labels (logged as a
warning at start; see docs/glua.md).

Settings (nnU-Net fixes ``__init__``'s signature): class attributes, each overridable by the environment variable
``nnUNet_unpaired_glua_<attribute>`` (e.g. ``nnUNet_unpaired_glua_local_weight=0.05``). The resolved values are
printed to the training log and stored in the checkpoint and in the model folder's plans.json under ``"glua"``.
``nnUNet_unpaired_glua_style_checkpoint`` points stage 2 to a style checkpoint other than the default location
``nnUNet_results/<source>/nnUNetTrainerGLUAStyle__<plans>__<configuration>/fold_<fold>/checkpoint_final.pth``.
"""

from __future__ import annotations

import contextlib
import os
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import isfile, join
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn

from nnunet_unpaired.errors import UserError
from nnunet_unpaired.losses.adversarial import AdversarialLoss, StyleTransferLoss
from nnunet_unpaired.losses.ramps import warmup_ramp
from nnunet_unpaired.modules.local_alignment import DecoderFeatureTap, FeatureDiscriminator, gap_mask
from nnunet_unpaired.modules.style_transfer import (StyleConfig, StyleTransferGenerator, build_discriminators,
                                                    style_strides_from_plan)
from nnunet_unpaired.training.unpaired_joint import CHECKPOINT_KEY, atomic_torch_save, nnUNetTrainerUnpairedJoint

ENV_PREFIX = "nnUNet_unpaired_glua_"
ENV_STYLE_CHECKPOINT = ENV_PREFIX + "style_checkpoint"
PLANS_KEY = EXTRAS_KEY = "glua"
STYLE_TRAINER = "nnUNetTrainerGLUAStyle"

# setting -> (check, what it must be)
_CHECKS = {
    "style_width": (lambda v: v >= 1, "an integer >= 1"),
    "style_dim": (lambda v: v >= 1, "an integer >= 1"),
    "style_n_res": (lambda v: v >= 0, "an integer >= 0"),
    "style_n_down": (lambda v: v >= 1, "an integer >= 1"),
    "style_lr": (lambda v: v > 0, "a number > 0"),
    "style_reconstruction_weight": (lambda v: v >= 0, "a number >= 0"),
    "style_latent_weight": (lambda v: v >= 0, "a number >= 0"),
    "style_adversarial_weight": (lambda v: v >= 0, "a number >= 0"),
    "style_shape_weight": (lambda v: v >= 0, "a number >= 0"),
    "style_shape_epsilon": (lambda v: v > 0, "a number > 0"),
    "translate_probability": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "local_weight": (lambda v: v >= 0, "a number >= 0"),
    "local_warmup": (lambda v: v >= 0, "a number >= 0 (fraction of the epochs)"),
    "mask_gamma": (lambda v: v >= 0, "a number >= 0"),
    "local_input": (lambda v: v in ("features", "output"), "'features' or 'output'"),
    "feature_stage": (lambda v: True, "an integer (index into the decoder stages, -1 = highest resolution)"),
    "discriminator_width": (lambda v: v >= 1, "an integer >= 1"),
    "discriminator_lr": (lambda v: v > 0, "a number > 0"),
}


def _parse(raw: str, default):
    if isinstance(default, bool):
        if raw.strip().lower() in ("1", "true", "yes"):
            return True
        if raw.strip().lower() in ("0", "false", "no"):
            return False
        raise ValueError(raw)
    return type(default)(raw.strip())


@contextlib.contextmanager
def frozen(module: nn.Module):
    """Parameters of ``module`` do not collect gradients inside the block (gradients still flow THROUGH it)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


class TargetImagesOnly:
    """A view of an nnU-Net dataset that hides the labels: the images and the image-derived properties only.

    ``load_case`` returns the case's image, an all-zero segmentation (a broadcast view: no memory) and the case's
    properties without ``class_locations``. nnU-Net's data loader then crops target patches at random even where it
    would oversample foreground, and the target batches' ``target`` is all zeros.
    """

    def __init__(self, dataset):
        self.dataset = dataset
        self.identifiers = dataset.identifiers

    def __len__(self):
        return len(self.identifiers)

    def __getitem__(self, identifier):
        return self.load_case(identifier)

    def load_case(self, identifier):
        # nnU-Net's load_case opens the segmentation lazily (blosc2 memory map); nothing of it is decoded here
        data, _, seg_prev, properties = self.dataset.load_case(identifier)
        if seg_prev is not None:
            raise NotImplementedError("cascaded configurations are not supported for unlabelled target data")
        # int8 so that nnU-Net's cast to int16 makes a writable copy
        seg = np.broadcast_to(np.zeros((), dtype=np.int8), (1, *data.shape[1:]))
        properties = {k: v for k, v in properties.items() if k != "class_locations"}
        properties["class_locations"] = {}
        return data, seg, None, properties


class nnUNetTrainerSourceOnly(nnUNetTrainerUnpairedJoint):
    """Lower bound of unsupervised adaptation: nnU-Net trained on the labelled source (A) alone; its network is exported
    to the target's (B's) model folder with B's plans, so it segments B's images with B's normalization.

    Also the base of the GLUA trainers: target loaders without labels, source-only validation, separately optimized
    training modules (own Adam optimizers, saved in the checkpoint) and the settings mechanism.
    """

    #: whether a training step draws a target batch (the unpaired base's step) or runs nnU-Net's stock step
    uses_target_images: bool = False
    #: names of the class attributes that are settings (overridable by nnUNet_unpaired_glua_<name>)
    glua_settings: Tuple[str, ...] = ()

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.label_manager.has_regions or self.label_manager.has_ignore_label:
            raise NotImplementedError(f"{self.__class__.__name__} supports neither region-based labels nor an ignore "
                                      f"label")
        if self.is_cascaded:
            raise NotImplementedError(f"{self.__class__.__name__} does not support cascaded configurations")
        self.extra_optimizers: Dict[str, torch.optim.Optimizer] = {}
        self.settings = self._resolve_settings()
        if self.settings:
            self.plans_manager.plans[PLANS_KEY] = dict(self.settings)
            self.print_to_log_file(f"{self.__class__.__name__} settings: {self.settings}", also_print_to_console=True)
        schemes = self._partner["configuration_manager"].normalization_schemes
        if "CTNormalization" in schemes:
            self.print_to_log_file(
                f"WARNING: the target {self.partner_name} uses CTNormalization, whose intensity statistics nnU-Net's "
                f"fingerprint computed from the voxels inside the target's labels. The trainer itself never reads "
                f"target labels (see docs/glua.md).", also_print_to_console=True)

    def _resolve_settings(self) -> Dict:
        settings = {}
        for name in self.glua_settings:
            default = getattr(type(self), name)
            env = ENV_PREFIX + name
            raw = os.environ.get(env)
            value = default
            check, meaning = _CHECKS[name]
            if raw is not None and raw.strip() != "":
                try:
                    value = _parse(raw, default)
                except ValueError:
                    raise UserError(f"{env}={raw!r} must be {meaning}") from None
            if not check(value):
                raise UserError(f"{name} = {value!r} ({env} or class attribute) must be {meaning}")
            setattr(self, name, value)
            settings[name] = value
        return settings

    # ------------------------------------------------------------------------------ target data without labels
    @property
    def viewing_target(self) -> bool:
        """True inside ``as_partner()``: the trainer then looks at the target dataset."""
        return self.preprocessed_dataset_folder_base == self._partner["preprocessed_dataset_folder_base"]

    def get_tr_and_val_datasets(self):
        dataset_tr, dataset_val = super().get_tr_and_val_datasets()
        if self.viewing_target:
            return TargetImagesOnly(dataset_tr), TargetImagesOnly(dataset_val)
        return dataset_tr, dataset_val

    # ----------------------------------------------------------------------------------------------- training
    def configure_extra_optimizers(self) -> Dict[str, torch.optim.Optimizer]:
        """Optimizers of training modules that nnU-Net's SGD must not see (build them with ``requires_grad=False``;
        re-enable it here). None for the source-only trainer."""
        return {}

    def initialize(self):
        first_time = not self.was_initialized
        super().initialize()
        if first_time:
            self.extra_optimizers = self.configure_extra_optimizers()

    def train_step(self, batch: dict) -> dict:
        if self.uses_target_images:
            return super().train_step(batch)
        return nnUNetTrainer.train_step(self, batch)

    def compute_losses(self, data_a, target_a, data_b, target_b) -> Dict[str, torch.Tensor]:
        """Segmentation loss on the source batch only; ``target_b`` (all zeros) is never read."""
        seg = self.loss(self.network(data_a), target_a)
        return {"seg": seg, "loss": seg}

    def validation_step(self, batch: dict) -> dict:
        """nnU-Net's validation step on SOURCE validation patches only (pseudo Dice and checkpoint_best never see
        target labels)."""
        return nnUNetTrainer.validation_step(self, batch)

    # ------------------------------------------------------------------------------------------- checkpoints
    def checkpoint_extras(self) -> Dict:
        return {"settings": dict(self.settings),
                "optimizers": {k: o.state_dict() for k, o in self.extra_optimizers.items()}}

    def save_checkpoint(self, filename: str) -> None:
        super().save_checkpoint(filename)
        if self.local_rank != 0 or self.disable_checkpointing:
            return
        extras = self.checkpoint_extras()
        if not extras["settings"] and not extras["optimizers"]:
            return
        checkpoint = torch.load(filename, map_location="cpu", weights_only=False)
        checkpoint.setdefault(CHECKPOINT_KEY, {})[EXTRAS_KEY] = extras
        atomic_torch_save(checkpoint, filename)

    def before_loading_checkpoint(self, extras: Dict) -> None:
        """Called with the checkpoint's GLUA extras before the trainer initializes from it (architecture choices)."""

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        checkpoint = filename_or_checkpoint
        if isinstance(checkpoint, str):
            checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=False)
        extras = checkpoint.get(CHECKPOINT_KEY, {}).get(EXTRAS_KEY, {})
        if not self.was_initialized:
            self.before_loading_checkpoint(extras)
        # the file name, not the loaded dict: nnU-Net 2.8.1's load_checkpoint only works with a file name
        super().load_checkpoint(filename_or_checkpoint)
        for name, state in extras.get("optimizers", {}).items():
            if name in self.extra_optimizers:
                self.extra_optimizers[name].load_state_dict(state)


def _adam(module: nn.Module, lr: float, betas=(0.5, 0.999), weight_decay: float = 0.0) -> torch.optim.Optimizer:
    module.requires_grad_(True)
    return torch.optim.Adam(module.parameters(), lr=lr, betas=betas, weight_decay=weight_decay)


class nnUNetTrainerGLUAStyle(nnUNetTrainerSourceOnly):
    """GLUA stage 1: the style-transfer (global alignment) module, next to a source-only segmentation training.

    Each step: nnU-Net's stock step on the source batch (the network; its export to B's folder is a source-only
    model), then one Adam step of the generator (self-reconstruction, cross-domain adversarial, content and style
    latent reconstruction, shape preservation) and one of the two image discriminators, on the source batch and a
    target batch (images only). The modules are saved in the checkpoint under ``nnunet_unpaired`` for stage 2 and
    for ``nnunet_unpaired translate``.
    """

    style_width: int = 16
    style_dim: int = 8
    style_n_res: int = 2
    style_n_down: int = 2
    style_lr: float = 2e-4
    style_reconstruction_weight: float = 10.0
    style_latent_weight: float = 1.0
    style_adversarial_weight: float = 1.0
    style_shape_weight: float = 1.0
    style_shape_epsilon: float = 0.2
    glua_settings = ("style_width", "style_dim", "style_n_res", "style_n_down", "style_lr",
                     "style_reconstruction_weight", "style_latent_weight", "style_adversarial_weight",
                     "style_shape_weight", "style_shape_epsilon")

    def style_config(self) -> StyleConfig:
        return StyleConfig(dim=len(self.configuration_manager.patch_size), in_channels=self.num_input_channels,
                           strides=style_strides_from_plan(self.configuration_manager.pool_op_kernel_sizes,
                                                           self.style_n_down),
                           width=self.style_width, n_res=self.style_n_res, style_dim=self.style_dim,
                           discriminator_width=self.style_width)

    def build_training_modules(self) -> Dict[str, nn.Module]:
        modules = super().build_training_modules()
        config = self.style_config()
        # requires_grad off: kept out of nnU-Net's SGD, optimized by their own Adam (configure_extra_optimizers)
        modules["style_generator"] = StyleTransferGenerator(config).requires_grad_(False)
        modules["style_discriminators"] = build_discriminators(config).requires_grad_(False)
        return modules

    def configure_extra_optimizers(self) -> Dict[str, torch.optim.Optimizer]:
        optimizers = super().configure_extra_optimizers()
        self.style_loss = StyleTransferLoss(
            image_reconstruction=self.style_reconstruction_weight, content_reconstruction=self.style_latent_weight,
            style_reconstruction=self.style_latent_weight, adversarial=self.style_adversarial_weight,
            shape=self.style_shape_weight, shape_epsilon=self.style_shape_epsilon)
        optimizers["style_generator"] = _adam(self.training_modules["style_generator"], self.style_lr,
                                              weight_decay=1e-4)
        optimizers["style_discriminators"] = _adam(self.training_modules["style_discriminators"], self.style_lr,
                                                   weight_decay=1e-4)
        return optimizers

    def checkpoint_extras(self) -> Dict:
        extras = super().checkpoint_extras()
        extras["style_config"] = self.training_modules["style_generator"].config.to_dict()
        return extras

    def train_step(self, batch: dict) -> dict:
        result = super().train_step(batch)  # the segmentation network, source batch only
        source = batch["data"].to(self.device, non_blocking=True)
        target = next(self.dataloader_train_partner)["data"].to(self.device, non_blocking=True)
        result.update(self.style_step(source, target))
        return result

    def style_step(self, source: torch.Tensor, target: torch.Tensor) -> Dict[str, np.ndarray]:
        """One generator step and one discriminator step (float32, no autocast: small networks, stable GAN)."""
        generator = self.training_modules["style_generator"]
        discriminators = self.training_modules["style_discriminators"]
        opt_g, opt_d = self.extra_optimizers["style_generator"], self.extra_optimizers["style_discriminators"]
        source, target = source.float(), target.float()
        p = generator(source, target)
        with frozen(discriminators):
            terms = self.style_loss.generator_terms(p, discriminators["target"](p.source_to_target),
                                                    discriminators["source"](p.target_to_source))
        opt_g.zero_grad(set_to_none=True)
        sum(terms.values()).backward()
        torch.nn.utils.clip_grad_norm_(generator.parameters(), 12)
        opt_g.step()

        fake_t, fake_s = p.source_to_target.detach(), p.target_to_source.detach()
        d_target, d_source = discriminators["target"], discriminators["source"]
        d_loss = 0.5 * (self.style_loss.discriminator_loss(d_target(target), d_target(fake_t))
                        + self.style_loss.discriminator_loss(d_source(source), d_source(fake_s)))
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        terms["st_disc"] = d_loss
        return {k: v.detach().cpu().numpy() for k, v in terms.items()}


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
    glua_settings = ("translate_probability", "local_weight", "local_warmup", "mask_gamma", "local_input",
                     "feature_stage", "discriminator_width", "discriminator_lr")

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self._style_config: Optional[StyleConfig] = None  # from a checkpoint being resumed (before_loading_checkpoint)
        self._features: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
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
        prefix = "style_generator."
        weights = {k[len(prefix):]: v for k, v in extras["training_modules"].items() if k.startswith(prefix)}
        return StyleConfig(**config), weights

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
            else:
                channels = self.label_manager.num_segmentation_heads
            dim = len(self.configuration_manager.patch_size)
            modules["feature_discriminator"] = FeatureDiscriminator(dim, channels,
                                                                    self.discriminator_width).requires_grad_(False)
        return modules

    def configure_extra_optimizers(self) -> Dict[str, torch.optim.Optimizer]:
        optimizers = super().configure_extra_optimizers()
        if self.use_local:
            optimizers["feature_discriminator"] = _adam(self.training_modules["feature_discriminator"],
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
            style = generator.style_encoders["target"](target)
            translated = generator.translate(source, style).to(source.dtype)
        pick = torch.rand(source.shape[0], device=source.device) < self.translate_probability
        return torch.where(pick.view((-1,) + (1,) * (source.ndim - 1)), translated, source)

    def _local_inputs(self, tap, outputs) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.local_input == "features":
            return tap.features[0], tap.features[1]
        first = [o if isinstance(o, torch.Tensor) else o[0] for o in outputs]
        return torch.softmax(first[0].float(), 1), torch.softmax(first[1].float(), 1)

    def local_weight_now(self) -> float:
        return self.local_weight * warmup_ramp(self.current_epoch, self.local_warmup * self.num_epochs)

    def compute_losses(self, data_a, target_a, data_b, target_b) -> Dict[str, torch.Tensor]:
        """``target_b`` (all zeros from :class:`TargetImagesOnly`) is never read."""
        labelled = self.translate_some(data_a, data_b) if self.use_global else data_a
        if not self.use_local:
            seg = self.loss(self.network(labelled), target_a)
            return {"seg": seg, "loss": seg}
        tap = DecoderFeatureTap(self._plain_network(), self.feature_stage)
        with tap:
            output = self.network(labelled)
            output_target = self.network(data_b)
        seg = self.loss(output, target_a)
        features_source, features_target = self._local_inputs(tap, (output, output_target))
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


#: stage-2 trainers -> the trainer that must have finished (same dataset, plans, configuration, fold) before them
PREREQUISITES = {cls.__name__: cls.style_trainer for cls in (nnUNetTrainerGLUA, nnUNetTrainerGLUAGlobalOnly)}
