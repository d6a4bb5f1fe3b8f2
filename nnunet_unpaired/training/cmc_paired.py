"""``nnUNetTrainerCMCPaired``: CMC (cross-modality collaboration) in PAIRED mode, both modalities in one case.

Source: Zhou, Sun, Deng, Chu, Dou, "Robust Semi-supervised Multimodal Medical Image Segmentation via Cross Modality
Collaboration", MICCAI 2024 (arXiv 2408.07341); public code med-air/CMC (MIT). Issue 17, item 2: a paired mode for
data where both modalities come from the same patient (two channels of one case, co-registered), where the public
code's voxel-wise loss forms compare corresponding voxels.

Started on ONE ordinary nnU-Net dataset (``nnUNetv2_plan_and_preprocess``, no plan-pair, no partner) whose cases have
exactly two input channels, channel 0 = modality A and channel 1 = modality B of the same case, and one label map per
case. Unlabelled cases are all-ignore label maps, found as in the unpaired trainer
(:func:`nnunet_unpaired.semisupervised.is_labelled`; ``nnunet_unpaired make-semisupervised -d X`` writes such a copy).
Each step draws a labelled batch and an unlabelled batch (two nnU-Net data loaders over the fold's training cases, with
nnU-Net's augmentation, which moves both channels of a case together) and minimizes

    seg(y_A) + seg(y_B) + w_csc(t) CSC(r_A^u, r_B^u) + w_cac(t) CAC(P_A^u, P_B^u) + w_st(t) (ST_A + ST_B)

- the network (:class:`~nnunet_unpaired.modules.cmc_network.PairedCMCNetwork`) runs channel 0 and channel 1 of a case
  through the shared one-channel encoder, fuses the two attended bottlenecks of the SAME case, and decodes head A's and
  head B's bottleneck with the skips of their own channel: y_A, y_B;
- seg: nnU-Net's Dice + CE with deep supervision of y_A and of y_B against the case's one label map;
- CSC on the raw bottlenecks r^u, CAC on the softmax outputs P^u of the unlabelled batch, by default in the public
  code's voxel-wise forms (``csc_descriptor = "spatial"``, ``cac_mode = "voxel"``): they compare corresponding voxels,
  which now exist;
- ST: the unpaired trainer's mean teacher (:class:`~nnunet_unpaired.modules.mean_teacher.EMATeacher` of the whole
  paired network) predicts the unperturbed unlabelled batch; each head of the student, on the perturbed batch, learns
  the teacher's confident predictions of the same head;
- schedules, weights and the settings mechanism are those of :class:`~nnunet_unpaired.training.cmc.nnUNetTrainerCMC`
  (shared through :class:`~nnunet_unpaired.training.cmc.SemiSupervisedCMCMixin`): environment variable
  ``nnUNet_unpaired_cmc_*``, else the plans key ``"cmc"``, else the class attribute; written into the plans. Only
  ``self_fusion_prob`` does not apply (both channels are always there, in training and at test time).

Deployed: the network itself (a plain ``nn.Module``, both heads inside): ``forward(x)`` of the two-channel image that
``nnUNetv2_predict`` gives it returns the mean of the two heads' logits (a two-member ensemble; each head was trained
on the same label map). ``checkpoint_final.pth``'s ``network_weights`` load strictly into
:meth:`nnUNetTrainerCMCPaired.build_network_architecture`, the predictor's path. The mean teacher is a training-only
module, saved under the checkpoint key ``nnunet_unpaired`` for ``--c``, never in ``network_weights``.

Not supported (raise at start): datasets without exactly 2 channels (UserError), multi-GPU DDP, cascades, region-based
labels.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional

import torch
import torch.distributed as dist
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import dummy_context
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import autocast, nn

from nnunet_unpaired.errors import UserError
from nnunet_unpaired.modules.cmc_network import PairedCMCNetwork, build_paired_cmc_network
from nnunet_unpaired.modules.mean_teacher import EMATeacher, perturb_intensities
from nnunet_unpaired.splits import check_fold_possible
from nnunet_unpaired.training.budget import BudgetMixin
from nnunet_unpaired.training.cmc import SETTINGS, TEACHER, SemiSupervisedCMCMixin, finish_loader
from nnunet_unpaired.training.progress import log_train_terms, plot_loss_terms
from nnunet_unpaired.training.unpaired_joint import (CHECKPOINT_KEY, atomic_torch_save, backward_and_step,
                                                     batch_to_device)

_CUDA = torch.device("cuda")  # nnU-Net's default device, as in nnUNetTrainer.__init__
#: the CMC settings of the paired mode: all but self_fusion_prob (no single-input path: both channels are always there)
PAIRED_SETTINGS = tuple(name for name in SETTINGS if name != "self_fusion_prob")
_LOSS_TERMS = ("seg_A", "seg_B", "csc", "cac", "st")


def require_two_channels(plans: dict, dataset_json: dict) -> None:
    """UserError unless the dataset has exactly two input channels, naming its dataset.json and the fix."""
    channels = dataset_json.get("channel_names", dataset_json.get("modality", {}))
    if len(channels) == 2:
        return
    name = plans.get("dataset_name", "?")
    where = os.path.join(os.environ.get("nnUNet_raw", "$nnUNet_raw"), name, "dataset.json")
    raise UserError(
        f"nnUNetTrainerCMCPaired needs a dataset with exactly 2 co-registered input channels (channel 0 = modality A, "
        f"channel 1 = modality B of the same case); {where} (and its copy in nnUNet_preprocessed/{name}) declares "
        f"{len(channels)}: channel_names {dict(channels)}. Fix: put both modalities of each case into one dataset as "
        f"<case>_0000 and <case>_0001 with channel_names {{\"0\": ..., \"1\": ...}} and run nnUNetv2_plan_and_preprocess "
        f"again; for two datasets of different patients use nnUNetTrainerCMC (nnunet_unpaired plan-pair).")


class nnUNetTrainerCMCPaired(SemiSupervisedCMCMixin, BudgetMixin, nnUNetTrainer):
    """CMC on one two-channel dataset (both modalities of each case, co-registered); see the module docstring. The
    shared settings' defaults are :class:`~nnunet_unpaired.training.cmc.SemiSupervisedCMCMixin`'s; only the loss forms
    differ: the voxel-wise ones."""

    csc_descriptor: str = "spatial"
    cac_mode: str = "voxel"

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = _CUDA):
        if dist.is_available() and dist.is_initialized():
            raise NotImplementedError(f"{self.__class__.__name__} does not support multi-GPU (DDP) training (its "
                                      f"unlabelled loader and mean teacher are single-process); train on one GPU")
        require_two_channels(plans, dataset_json)
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.is_cascaded:
            raise NotImplementedError(f"{self.__class__.__name__} does not support cascaded configurations (the "
                                      f"previous stage's segmentation would be a third input channel)")
        self.training_modules = nn.ModuleDict()
        settings = self.setup_cmc(PAIRED_SETTINGS)
        self.print_to_log_file(f"{self.__class__.__name__} settings: {settings}", also_print_to_console=True)

    @staticmethod
    def build_network_architecture(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        return build_paired_cmc_network(configuration_manager.network_arch_class_name,
                                        configuration_manager.network_arch_init_kwargs,
                                        configuration_manager.network_arch_init_kwargs_req_import,
                                        num_input_channels, num_output_channels, enable_deep_supervision)

    def cmc_network(self) -> PairedCMCNetwork:
        """``self.network`` without its torch.compile wrapper."""
        return getattr(self.network, "_orig_mod", self.network)

    def initialize(self):
        first_time = not self.was_initialized
        super().initialize()
        if first_time and self.st_weight > 0:  # no parameter of the teacher requires a gradient: not optimized
            self.training_modules[TEACHER] = EMATeacher([self.cmc_network()], self.ema_decay).to(self.device)

    # ------------------------------------------------------------------------------ labelled / unlabelled loaders
    def do_split(self):
        check_fold_possible(self.preprocessed_dataset_folder_base, self.fold)
        return super().do_split()

    def get_dataloaders(self):
        """nnU-Net's training (labelled cases) and validation loaders, plus one over the unlabelled cases."""
        try:
            self._case_subset = "labelled"
            loaders = super().get_dataloaders()
            if self.uses_unlabelled:
                self._case_subset = "unlabelled"
                self.dataloader_unlabelled = self._training_loader_only()
        finally:
            self._case_subset = None
        return loaders

    def on_train_end(self):
        super().on_train_end()
        finish_loader(self.dataloader_unlabelled)

    # ------------------------------------------------------------------------------------------------ losses
    def train_step(self, batch: dict) -> dict:
        data, target = batch_to_device(batch, self.device)
        unlabelled = None
        if any(w > 0 for w in self.consistency_weights(self.current_epoch)):
            unlabelled = next(self.dataloader_unlabelled)["data"].to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            terms = self.compute_losses(data, target, unlabelled)
        backward_and_step(terms["loss"], self.optimizer, self.grad_scaler)
        if self.teacher is not None:
            self.teacher.update([self.cmc_network()])
        return {k: v.detach().cpu().numpy() for k, v in terms.items()}

    def compute_losses(self, data: torch.Tensor, target, unlabelled: Optional[torch.Tensor] = None
                       ) -> Dict[str, torch.Tensor]:
        """``seg_A``, ``seg_B`` on the labelled batch and, with an unlabelled batch, its terms; ``loss`` their sum."""
        # through self.network, nnU-Net's (compiled, where nnU-Net compiles) module
        labelled = self.network(data, pair_output=True)
        terms = {"seg_A": self.loss(labelled.output_a, target), "seg_B": self.loss(labelled.output_b, target)}
        if unlabelled is not None:
            terms.update(self.unlabelled_losses(unlabelled))
        terms["loss"] = sum(v for k, v in terms.items() if k in _LOSS_TERMS)
        return terms

    def unlabelled_losses(self, data: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The unlabelled terms on a two-channel unlabelled batch (see
        :meth:`~nnunet_unpaired.training.cmc.SemiSupervisedCMCMixin.unlabelled_terms`)."""
        student_in, taught = data, None
        if self.teacher is not None:
            with torch.no_grad():
                taught = self.teacher.copies[0](data, pair_output=True)
            student_in = perturb_intensities(data)
        return self.unlabelled_terms(self.network(student_in, pair_output=True), taught)

    # ------------------------------------------------------------------------------------------------ logging
    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        log_train_terms(self, train_outputs)

    def on_epoch_end(self):
        super().on_epoch_end()
        if self.local_rank == 0:
            plot_loss_terms(self.logger.local_logger.my_fantastic_logging,
                            os.path.join(self.output_folder, "progress_terms.png"))

    # ------------------------------------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, filename: str) -> None:
        super().save_checkpoint(filename)
        if self.local_rank != 0 or self.disable_checkpointing or not len(self.training_modules):
            return
        checkpoint = torch.load(filename, map_location="cpu", weights_only=False)
        checkpoint[CHECKPOINT_KEY] = {"training_modules": self.training_modules.state_dict()}
        atomic_torch_save(checkpoint, filename)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        checkpoint = filename_or_checkpoint
        if isinstance(filename_or_checkpoint, str):
            checkpoint = torch.load(filename_or_checkpoint, map_location="cpu", weights_only=False)
        # the file name, not the loaded dict: nnU-Net 2.8.1's load_checkpoint fails on a dict (UnboundLocalError)
        super().load_checkpoint(filename_or_checkpoint)
        saved = checkpoint.get(CHECKPOINT_KEY, {}).get("training_modules")
        if saved is not None and len(self.training_modules):
            self.training_modules.load_state_dict(saved)
