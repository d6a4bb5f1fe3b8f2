"""GLUA stage 1, global alignment: :class:`nnUNetTrainerGLUAStyle` trains the style-transfer module (content/style
encoders, AdaIN decoder, image and content discriminators) as a translation training of its own, with its own budget
in steps, before a source-only segmentation training.

The translation phase (:meth:`nnUNetTrainerGLUAStyle.train_translation`, run at the start of training, resumable):

- ``style_steps`` steps (default 20 000, the order of the public translation codes for this task: SIFA, DAR-UNet),
  each one Adam step of the generator and one of the discriminators, on a source batch and a target batch (images
  only) of the configuration's patches (2D slices for ``2d``) from loaders WITHOUT nnU-Net's intensity augmentation
  (no noise, blur, gamma, brightness): geometric augmentation only (random flips of every spatial axis);
- intensities in [-1, 1]: each domain's nnU-Net-normalized intensities are mapped through a window, its 0.5 and
  99.5 percentiles measured on the first batches (stored in the generator, so stage 2 gets translations back in the
  target's normalized range); ``tanh`` output;
- objective (:class:`~nnunet_unpaired.losses.adversarial.StyleTransferLoss`): self-reconstruction x10, image LSGAN,
  cycle consistency x10, content-code adversarial (content discriminator), content and style latent
  reconstruction, shape preservation;
- an EMA of the generator (decay ``style_ema_decay``, :class:`~nnunet_unpaired.modules.mean_teacher.EMATeacher`) is
  what stage 2 and ``nnunet_unpaired translate`` use;
- a checkpoint every ``style_save_every`` steps (``checkpoint_latest.pth``, so ``--c`` continues the phase), the
  label-free translation check every ``style_check_every`` steps, and its cost written on its own:
  ``translation_training.json`` (steps, seconds, seconds per step, check history) in the model folder.

Then nnU-Net's epochs train the segmentation network on the source alone (its export to B's folder is a source-only
model; shorten it with ``nnUNet_unpaired_epochs`` when only the translation is wanted).

The method, its paper and stage 2: :mod:`nnunet_unpaired.training.glua`; the module and its deviations from MUNIT:
:mod:`nnunet_unpaired.modules.style_transfer` and docs/glua.md. Stage 2 and ``nnunet_unpaired translate`` load the
style generator from this trainer's ``checkpoint_final.pth`` in the SOURCE dataset's model folder.

During the translation phase and after every epoch a label-free translation check
(:mod:`nnunet_unpaired.training.translation_check`) runs on the
last translation batch: the intensity distance of the translated source patches to the target patches, next to
that of the untranslated ones (logged as ``st_check_source``, ``st_check_translated``, ``st_check_ratio``; ratio < 1:
the translation moved towards the target's contrast). On the project's phantom also the structures' contrast order
in the translated patches against the target rendering (source labels only; ``st_check_order``, Kendall's tau). At the
end of training ``translation_check.png`` (source | translated | target) and ``translation_check.json`` are written
into the model folder.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from batchgenerators.utilities.file_and_folder_operations import join
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from torch import nn

from nnunet_unpaired.errors import UserError
from nnunet_unpaired.losses.adversarial import StyleTransferLoss
from nnunet_unpaired.losses.mutual_distillation import full_resolution
from nnunet_unpaired.modules.mean_teacher import EMATeacher
from nnunet_unpaired.modules.style_transfer import (StyleConfig, StyleTransferGenerator, build_discriminators,
                                                    style_strides_from_plan)
from nnunet_unpaired.training.source_only import frozen, nnUNetTrainerSourceOnly, own_adam
from nnunet_unpaired.training.translation_check import contrast_order_agreement, translation_check

CHECK_SAMPLES = 4  # patches of the last translation batch shown in translation_check.png (the check uses all)
WINDOW_BATCHES = 8  # batches per domain whose intensities set the [-1, 1] windows
WINDOW_PERCENTILES = (0.5, 99.5)
#: training-module key of the EMA generator; stage 2 and ``translate`` load its copy (see style_generator_weights)
EMA_KEY = "style_generator_ema"


def style_generator_weights(training_modules: Dict[str, torch.Tensor], path: str = "the checkpoint"
                            ) -> Dict[str, torch.Tensor]:
    """The generator weights of a stage-1 (or stage-2) checkpoint's training modules: the EMA generator's where there
    is one, else the trained generator's.

    Raises:
        UserError: naming ``path``, when the checkpoint's generator predates the translation phase (no intensity
            windows: the first stage 1, whose generator had a linear output on nnU-Net's intensities).
    """
    for prefix in (f"{EMA_KEY}.copies.0.", "style_generator."):
        weights = {k[len(prefix):]: v for k, v in training_modules.items() if k.startswith(prefix)}
        if weights:
            if "windows" not in weights:
                raise UserError(f"{path} holds a style generator of the first GLUA stage 1 (before its translation "
                                f"phase, issue 16); this version cannot use it. Retrain stage 1: nnUNetv2_train "
                                f"<source> <configuration> <fold> -tr nnUNetTrainerGLUAStyle")
            return weights
    return {}


def flip_randomly(x: torch.Tensor) -> torch.Tensor:
    """Each sample flipped along each spatial axis with probability 1/2 (torch's generator)."""
    out = x
    for axis in range(2, x.ndim):
        pick = (torch.rand(x.shape[0], device=x.device) < 0.5).view((-1,) + (1,) * (x.ndim - 1))
        out = torch.where(pick, out.flip(axis), out)
    return out


class nnUNetTrainerGLUAStyle(nnUNetTrainerSourceOnly):
    """GLUA stage 1: the style-transfer (global alignment) module, next to a source-only segmentation training.

    First the translation phase (module docstring), then nnU-Net's stock steps on source batches (the network; its
    export to B's folder is a source-only model). The modules are saved in the checkpoint under ``nnunet_unpaired``
    for stage 2 and for ``nnunet_unpaired translate``.
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
    style_cycle_weight: float = 10.0
    style_content_adversarial_weight: float = 1.0
    style_steps: int = 20000
    style_ema_decay: float = 0.999
    style_check_every: int = 500
    style_save_every: int = 1000
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
        "style_cycle_weight": (lambda v: v >= 0, "a number >= 0"),
        "style_content_adversarial_weight": (lambda v: v >= 0, "a number >= 0"),
        "style_steps": (lambda v: v >= 0, "an integer >= 0"),
        "style_ema_decay": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
        "style_check_every": (lambda v: v >= 1, "an integer >= 1"),
        "style_save_every": (lambda v: v >= 1, "an integer >= 1"),
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
        generator = StyleTransferGenerator(config).requires_grad_(False)
        modules["style_generator"] = generator
        modules[EMA_KEY] = EMATeacher([generator], self.style_ema_decay)
        modules["style_discriminators"] = build_discriminators(
            config, generator.content_encoder.out_channels).requires_grad_(False)
        return modules

    def configure_extra_optimizers(self) -> Dict[str, torch.optim.Optimizer]:
        optimizers = super().configure_extra_optimizers()
        self.style_loss = StyleTransferLoss(
            image_reconstruction=self.style_reconstruction_weight, content_reconstruction=self.style_latent_weight,
            style_reconstruction=self.style_latent_weight, adversarial=self.style_adversarial_weight,
            shape=self.style_shape_weight, shape_epsilon=self.style_shape_epsilon, cycle=self.style_cycle_weight,
            content_adversarial=self.style_content_adversarial_weight)
        optimizers["style_generator"] = own_adam(self.training_modules["style_generator"], self.style_lr,
                                                 weight_decay=1e-4)
        optimizers["style_discriminators"] = own_adam(self.training_modules["style_discriminators"], self.style_lr,
                                                      weight_decay=1e-4)
        return optimizers

    def checkpoint_extras(self) -> Dict:
        extras = super().checkpoint_extras()
        extras["style_config"] = self.training_modules["style_generator"].config.to_dict()
        return extras

    # ----------------------------------------------------------------------------------- translation phase
    @property
    def style_steps_done(self) -> int:
        return int(self.training_modules[EMA_KEY].steps)

    def translation_loaders(self) -> Tuple[SingleThreadedAugmenter, SingleThreadedAugmenter]:
        """Source and target loaders of the fold's training cases with nnU-Net's validation transforms (no
        augmentation; flips are added in the step), foreground oversampling of the source as in nnU-Net."""
        patch = self.configuration_manager.patch_size
        val_transforms = self.get_validation_transforms(self._get_deep_supervision_scales(), is_cascaded=False,
                                                        foreground_labels=self.label_manager.foreground_labels,
                                                        regions=None, ignore_label=None)
        loaders = []
        for partner in (False, True):
            with (self.as_partner() if partner else contextlib.nullcontext()):
                dataset_tr, _ = self.get_tr_and_val_datasets()
                loader = nnUNetDataLoader(dataset_tr, self.batch_size, patch, patch, self.label_manager,
                                          oversample_foreground_percent=0.0 if partner else
                                          self.oversample_foreground_percent, transforms=val_transforms)
            loaders.append(SingleThreadedAugmenter(loader, None))
        return loaders[0], loaders[1]

    def measure_windows(self, loaders) -> None:
        """The [-1, 1] window of each domain: the 0.5 / 99.5 percentiles of :data:`WINDOW_BATCHES` batches."""
        generator = self.training_modules["style_generator"]
        for domain, loader in zip(("source", "target"), loaders):
            values = torch.cat([next(loader)["data"].flatten() for _ in range(WINDOW_BATCHES)]).double()
            sample = values[torch.randperm(values.numel())[:1_000_000]]
            low, high = (torch.quantile(sample, q / 100).item() for q in WINDOW_PERCENTILES)
            if not high > low:
                high = low + 1.0
            generator.set_window(domain, low, high)
            self.print_to_log_file(f"translation: {domain} window [{low:.3f}, {high:.3f}] (normalized intensities) "
                                   f"-> [-1, 1]", also_print_to_console=True)
        self.training_modules[EMA_KEY].copies[0].windows.copy_(generator.windows)

    def train_translation(self) -> None:
        """The translation phase: ``style_steps`` generator/discriminator steps (continues where a resumed
        checkpoint stopped); see the module docstring."""
        done = self.style_steps_done
        if done >= self.style_steps:
            return
        loaders = self.translation_loaders()
        generator = self.training_modules["style_generator"]
        ema = self.training_modules[EMA_KEY]
        if done == 0:
            self.measure_windows(loaders)
        self.print_to_log_file(f"translation phase: steps {done} -> {self.style_steps} (own budget; "
                               f"nnUNet_unpaired_glua_style_steps)", also_print_to_console=True)
        history = self.__dict__.setdefault("_translation_log", {"seconds": 0.0, "steps": 0, "checks": []})
        first, start = done, time.perf_counter()
        generator.train()
        for step in range(done, self.style_steps):
            batch_s, batch_t = next(loaders[0]), next(loaders[1])
            source = flip_randomly(batch_s["data"].to(self.device, non_blocking=True).float())
            target = flip_randomly(batch_t["data"].to(self.device, non_blocking=True).float())
            last = self.style_step(generator.to_unit(source, "source"), generator.to_unit(target, "target"))
            ema.update([generator])
            if (step + 1) % self.style_check_every == 0 or step + 1 == self.style_steps:
                labels = full_resolution(batch_s["target"])
                # the whole batch: the contrast order of 4 patches saw too few structures to be stable
                self._check_batch = (source.detach(), target.detach(), labels.detach())
                result = self._last_check = self.run_translation_check()
                history["checks"].append({"step": step + 1, **result})
                terms = ", ".join(f"{k} {float(v):.3f}" for k, v in last.items())
                self.print_to_log_file(
                    f"translation step {step + 1}/{self.style_steps}: {terms}; check: distance to target "
                    f"{result['source_to_target']:.3f} -> {result['translated_to_target']:.3f} (ratio "
                    f"{result['ratio']:.2f}), order {result['order']:.2f}", also_print_to_console=True)
            if (step + 1) % self.style_save_every == 0 and step + 1 < self.style_steps:
                self.save_checkpoint(join(self.output_folder, "checkpoint_latest.pth"))
        history["seconds"] += time.perf_counter() - start
        history["steps"] += self.style_steps - first
        self.print_to_log_file(f"translation phase done: {history['steps']} steps in {history['seconds']:.0f} s "
                               f"({history['seconds'] / max(1, history['steps']):.3f} s/step) this run",
                               also_print_to_console=True)
        self.write_translation_cost()
        self.save_checkpoint(join(self.output_folder, "checkpoint_latest.pth"))

    def write_translation_cost(self) -> None:
        """``translation_training.json``: the phase's steps, seconds and check history (this run; a resumed phase
        adds its runs' entries)."""
        path = join(self.output_folder, "translation_training.json")
        runs = []
        if os.path.isfile(path):
            with open(path) as f:
                runs = json.load(f).get("runs", [])
        log = self._translation_log
        runs.append({"steps": log["steps"], "seconds": log["seconds"],
                     "seconds_per_step": log["seconds"] / max(1, log["steps"]), "checks": log["checks"],
                     "total_steps": self.style_steps_done, "device": str(self.device)})
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump({"runs": runs}, f, indent=2, default=float)
        os.replace(tmp, path)

    def on_train_start(self):
        super().on_train_start()
        self.train_translation()

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
        """The check on the last translation batch (see the module docstring); None before the first check."""
        batch = getattr(self, "_check_batch", None)
        if batch is None:
            return None
        source, target, labels = batch
        generator = self.training_modules[EMA_KEY].copies[0]  # the EMA generator: what stage 2 uses
        with torch.no_grad():
            translated = generator.translate_normalized(source.float(), generator.style_of(target.float()))
        result = translation_check(source, translated, target)
        expected = self.target_rendering()
        result["order"] = (contrast_order_agreement(translated, labels, expected)
                           if expected and labels is not None else math.nan)
        self._check_images = tuple(x[:CHECK_SAMPLES].cpu() for x in (source, translated, target))
        return result

    def on_epoch_end(self):
        # the phase's last check: the EMA generator does not change after the phase, so checking the same batch
        # again every epoch would give the same numbers
        result = getattr(self, "_last_check", None)
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
                                                  ("target", target))):
                image = images[i, 0].numpy()
                if image.ndim == 3:
                    image = image[image.shape[0] // 2]
                axes[i, j].imshow(image, cmap="gray")
                axes[i, j].set_axis_off()
                if i == 0:
                    axes[i, j].set_title(title)
        last = self._check_history[-1] if getattr(self, "_check_history", None) else {}
        if last:
            fig.suptitle(f"target: another case; distance to target {last['source_to_target']:.2f} -> "
                         f"{last['translated_to_target']:.2f} (ratio {last['ratio']:.2f})", fontsize=8)
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
        """One generator step and one discriminator step on [-1, 1] images (float32, no autocast: small networks,
        stable GAN)."""
        generator = self.training_modules["style_generator"]
        discriminators = self.training_modules["style_discriminators"]
        opt_g, opt_d = self.extra_optimizers["style_generator"], self.extra_optimizers["style_discriminators"]
        source, target = source.float(), target.float()
        p = generator(source, target)
        with frozen(discriminators):
            content_scores = None
            if "content" in discriminators:
                content_scores = (discriminators["content"](p.content_source),
                                  discriminators["content"](p.content_target))
            terms = self.style_loss.generator_terms(p, discriminators["target"](p.source_to_target),
                                                    discriminators["source"](p.target_to_source), content_scores)
        opt_g.zero_grad(set_to_none=True)
        sum(terms.values()).backward()
        torch.nn.utils.clip_grad_norm_(generator.parameters(), 12)
        opt_g.step()

        fake_t, fake_s = p.source_to_target.detach(), p.target_to_source.detach()
        d_target, d_source = discriminators["target"], discriminators["source"]
        d_loss = 0.5 * (self.style_loss.discriminator_loss(d_target(target), d_target(fake_t))
                        + self.style_loss.discriminator_loss(d_source(source), d_source(fake_s)))
        if "content" in discriminators:
            d_content = discriminators["content"]
            d_loss = d_loss + self.style_loss.content_discriminator_loss(d_content(p.content_source.detach()),
                                                                         d_content(p.content_target.detach()))
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        terms["st_disc"] = d_loss
        return {k: v.detach().cpu().numpy() for k, v in terms.items()}
