"""GLUA stage 1, global alignment: :class:`nnUNetTrainerGLUAStyle` trains the style-transfer module (content/style
encoders, AdaIN decoder, image discriminators) with its own Adam optimizers, next to a source-only segmentation
training.

The method, its paper and stage 2: :mod:`nnunet_unpaired.training.glua`; the module and its deviations from MUNIT:
:mod:`nnunet_unpaired.modules.style_transfer` and docs/glua.md. Stage 2 and ``nnunet_unpaired translate`` load the
style generator from this trainer's ``checkpoint_final.pth`` in the SOURCE dataset's model folder.

After every epoch a label-free translation check (:mod:`nnunet_unpaired.training.translation_check`) runs on the
epoch's last training batch: the intensity distance of the translated source patches to the target patches, next to
that of the untranslated ones (logged as ``st_check_source``, ``st_check_translated``, ``st_check_ratio``; ratio < 1:
the translation moved towards the target's contrast). On the project's phantom also the structures' contrast order
in the translated patches against the target rendering (source labels only; ``st_check_order``, Kendall's tau). At the
end of training ``translation_check.png`` (source | translated | target) and ``translation_check.json`` are written
into the model folder.
"""

from __future__ import annotations

import json
import math
import os
from typing import Dict, Optional

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import join
from torch import nn

from nnunet_unpaired.losses.adversarial import StyleTransferLoss
from nnunet_unpaired.modules.style_transfer import (StyleConfig, StyleTransferGenerator, build_discriminators,
                                                    style_strides_from_plan)
from nnunet_unpaired.training.source_only import frozen, nnUNetTrainerSourceOnly, own_adam
from nnunet_unpaired.training.translation_check import contrast_order_agreement, translation_check

CHECK_SAMPLES = 4  # patches of the epoch's last batch the translation check looks at


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
    glua_settings = {
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
    }

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
        optimizers["style_generator"] = own_adam(self.training_modules["style_generator"], self.style_lr,
                                                 weight_decay=1e-4)
        optimizers["style_discriminators"] = own_adam(self.training_modules["style_discriminators"], self.style_lr,
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
        labels = batch["target"][0] if isinstance(batch["target"], (list, tuple)) else batch["target"]
        self._check_batch = (source[:CHECK_SAMPLES].detach(), target[:CHECK_SAMPLES].detach(),
                             labels[:CHECK_SAMPLES].detach())
        return result

    def target_rendering(self) -> Optional[Dict[int, float]]:
        """On the project's phantom: the target dataset's rendered value per structure (label -> value), else None."""
        from nnunet_unpaired.phantom import CT_VALUES, MARKER_KEY, MR_CONTRASTS

        marker = self._partner["dataset_json"].get(MARKER_KEY) or {}
        if "modality" not in marker or "phantom" not in marker:
            return None
        values = CT_VALUES if marker["modality"] == "CT" else \
            MR_CONTRASTS[marker["phantom"].get("mr_contrast", "permuted")]
        return {k: values[k] for k in values if isinstance(k, int)}

    def run_translation_check(self) -> Optional[Dict[str, float]]:
        """The check on the epoch's last batch (see the module docstring); None before the first step."""
        batch = getattr(self, "_check_batch", None)
        if batch is None:
            return None
        source, target, labels = batch
        generator = self.training_modules["style_generator"]
        was_training = generator.training
        generator.eval()
        try:
            with torch.no_grad():
                translated = generator(source.float(), target.float()).source_to_target
        finally:
            generator.train(was_training)
        result = translation_check(source, translated, target)
        expected = self.target_rendering()
        result["order"] = contrast_order_agreement(translated, labels, expected) if expected else math.nan
        self._check_images = (source.cpu(), translated.cpu(), target.cpu())
        return result

    def on_epoch_end(self):
        result = self.run_translation_check()
        if result is not None:
            for key, name in (("source_to_target", "st_check_source"), ("translated_to_target", "st_check_translated"),
                              ("ratio", "st_check_ratio"), ("order", "st_check_order")):
                self._log_epoch_value(name, float(result[key]))
            self.__dict__.setdefault("_check_history", []).append({"epoch": self.current_epoch, **result})
            order = "" if math.isnan(result["order"]) else f", phantom contrast order (Kendall tau) {result['order']:.2f}"
            self.print_to_log_file(
                f"translation check (label-free): intensity distance to the target {result['source_to_target']:.3f} "
                f"-> {result['translated_to_target']:.3f} after translation (ratio {result['ratio']:.2f}){order}")
        super().on_epoch_end()

    def on_train_end(self):
        super().on_train_end()
        if self.local_rank == 0 and getattr(self, "_check_images", None) is not None:
            self.save_translation_check(self.output_folder)

    def save_translation_check(self, folder: str) -> None:
        """``translation_check.png`` (source | translated | target, middle slice in 3D) and ``.json``, atomically."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        source, translated, target = self._check_images
        rows = min(len(source), len(target))
        fig, axes = plt.subplots(rows, 3, figsize=(7.5, 2.5 * rows), squeeze=False)
        for i in range(rows):
            for j, (title, images) in enumerate((("source", source), ("translated", translated),
                                                  ("target (other patient)", target))):
                image = images[i, 0].numpy()
                if image.ndim == 3:
                    image = image[image.shape[0] // 2]
                axes[i, j].imshow(image, cmap="gray")
                axes[i, j].set_axis_off()
                if i == 0:
                    axes[i, j].set_title(title)
        last = self._check_history[-1] if getattr(self, "_check_history", None) else {}
        if last:
            fig.suptitle(f"distance to target {last['source_to_target']:.2f} -> {last['translated_to_target']:.2f} "
                         f"(ratio {last['ratio']:.2f})", fontsize=9)
        fig.tight_layout()
        tmp = join(folder, f".translation_check.tmp{os.getpid()}.png")
        fig.savefig(tmp, dpi=80)
        plt.close(fig)
        os.replace(tmp, join(folder, "translation_check.png"))
        tmp = join(folder, f".translation_check.tmp{os.getpid()}.json")
        with open(tmp, "w") as f:
            json.dump({"history": getattr(self, "_check_history", [])}, f, indent=2, default=float)
        os.replace(tmp, join(folder, "translation_check.json"))

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
