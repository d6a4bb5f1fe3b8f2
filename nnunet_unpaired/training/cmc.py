"""``nnUNetTrainerCMC``: semi-supervised two-modality segmentation by cross-modality collaboration.

Source: Zhou, Sun, Deng, Chu, Dou, "Robust Semi-supervised Multimodal Medical Image Segmentation via Cross Modality
Collaboration", MICCAI 2024 (arXiv 2408.07341); public code med-air/CMC (MIT).

Started like every unpaired trainer of this package on dataset A with partner B from ``nnunet_unpaired plan-pair``,
where both datasets mark their unlabelled training cases with all-ignore label maps (see
:mod:`nnunet_unpaired.semisupervised`; ``nnunet_unpaired make-semisupervised`` writes such copies). Each step draws
four batches: labelled A, labelled B, unlabelled A, unlabelled B (each from its own nnU-Net data loader over the
training split of the fold, with nnU-Net's augmentation), and minimizes

    seg(A) + seg(B) + w_csc(t) CSC(r_A^u, r_B^u) + w_cac(t) CAC(P_A^u, P_B^u) + w_st(t) (ST(A^u) + ST(B^u))

- seg: nnU-Net's Dice + CE with deep supervision on the labelled pair, through the cross-modal fusion of
  :class:`~nnunet_unpaired.modules.cmc_network.CMCNetwork` (a share ``self_fusion_prob`` of the samples fuse with
  themselves, the single-input case the deployed network meets);
- the unlabelled pair runs through the DEPLOYED path (every sample fused with itself, as ``nnUNetv2_predict`` runs
  it), in training mode and with gradients (the public code ran this pass under ``no_grad`` in eval mode, so its
  terms trained nothing), with the student's intensity perturbation
  (:func:`~nnunet_unpaired.modules.mean_teacher.perturb_intensities`) when ST is on. Our first version cross-fused
  two unrelated patients' patches here, a path that is never deployed;
- CSC on the raw bottlenecks r^u, CAC on the softmax outputs P^u of the unlabelled pair
  (:mod:`nnunet_unpaired.losses.cross_modal_consistency`): the cross-modal terms;
- ST, same-modality self-training (ours, issue 17: in the unpaired setting the cross-modal terms carry little):
  :class:`~nnunet_unpaired.losses.pseudo_label.ConfidentPseudoLabelLoss` between the student's output on the
  perturbed unlabelled patch and the confident (>= ``st_threshold``) predictions of a mean teacher
  (:class:`~nnunet_unpaired.modules.mean_teacher.EMATeacher` of the network and B's head, decay ``ema_decay``) on the
  unperturbed patch, for each modality with its own head;
- schedules (t the epoch, T the number of epochs), as in the public code for CSC and CAC: zero before
  ``unlabelled_start * T`` (the public code starts them at epoch 350 of 500), then
  ``w_csc(t) = csc_weight * exp(-5 (1 - t / T)^2)`` and ``w_cac(t) = cac_weight * (cos(pi t / T) + 1) / 2``;
  ``w_st(t) = st_weight * exp(-5 (1 - t / T)^2)`` from the start (the teacher's confidence threshold keeps its
  early, poor predictions out);
- weights: the public code AVERAGES the two segmentation losses and weights CSC and CAC 1; we SUM them (as the joint
  baseline does, so that each step's segmentation gradient is joint's) and double the weights (2 and 2): the same
  ratios. ST is summed over the modalities like seg, so weight 1 weighs it like a segmentation cross-entropy.

Cases: a case is unlabelled when nnU-Net's preprocessing found no voxel outside the ignore label. The fold's split is
nnU-Net's, except that unlabelled cases of the validation set move to the training cases (there is nothing to validate
against; as unlabelled data they still help), so validation and the final validation score labelled cases only. A
fold whose training cases hold no labelled case is refused; one without labelled validation case keeps nnU-Net's
validation set (its Dice is NaN).

Deployed: one plain CMC network per modality (shared weights, that modality's head), written to A's and B's model
folders; ``nnUNetv2_predict -d A`` or ``-d B`` predicts from ONE image, the fusion taking the modality's own bottleneck
in the partner's place (see :mod:`nnunet_unpaired.modules.cmc_network` and docs/cmc.md). Modality B's head is a
training-only module, saved under the checkpoint's ``nnunet_unpaired`` key.

Settings (nnU-Net fixes ``__init__``'s signature). Each comes from, in this order: the environment variable, the
top-level plans key ``"cmc"`` (e.g. ``"cmc": {"csc_weight": 0.5}``), the class attribute (variant classes override
it). The resolved values are written into the plans under ``"cmc"``, so both model folders' plans.json record them.
Set the same variables again for ``--c`` and ``--val``.

===================  =======================================  =======  ================================================
setting              environment variable                     default  meaning
===================  =======================================  =======  ================================================
csc_weight           nnUNet_unpaired_cmc_csc_weight           2.0      weight of CSC at the end of its warm-up
cac_weight           nnUNet_unpaired_cmc_cac_weight           2.0      weight of CAC at the start of its ramp-down
unlabelled_start     nnUNet_unpaired_cmc_start                0.7      share of training before CSC and CAC begin
st_weight            nnUNet_unpaired_cmc_st_weight            1.0      weight of ST at the end of its warm-up
st_threshold         nnUNet_unpaired_cmc_st_threshold         0.9      teacher confidence a pseudo-label needs
ema_decay            nnUNet_unpaired_cmc_ema_decay            0.99     the mean teacher's EMA decay
csc_temperature      nnUNet_unpaired_cmc_temperature          0.5      NT-Xent temperature of CSC
csc_descriptor       nnUNet_unpaired_cmc_csc_descriptor       gram     ``gram`` (misalignment-invariant) or ``spatial``
cac_mode             nnUNet_unpaired_cmc_cac_mode             pooled   ``pooled`` (class composition) or ``voxel``
self_fusion_prob     nnUNet_unpaired_cmc_self_fusion          0.5      share of labelled samples fused with themselves
===================  =======================================  =======  ================================================

The defaults are provisional, to be settled by the benchmark: CSC, CAC and their schedules are the public code's;
ST's threshold and decay are common choices (FixMatch's thresholds are 0.95, mean teacher's decay 0.99-0.999), not
tuned here. Our first version weighted CSC 0.1 from the start (its gradient was about twice each segmentation loss's
on the phantom, docs/cmc.md); with the public code's late start its weight is the public code's again. With all
three weights 0 the unlabelled pass is skipped (joint training of the fusion network on the labelled cases:
``nnUNetTrainerCMCLabelledOnly``); the pass is also skipped while every weight is 0 (before the late start when
``st_weight`` is 0). Ablations, one term each: ``nnUNetTrainerCMCCSCOnly``, ``nnUNetTrainerCMCCACOnly``,
``nnUNetTrainerCMCSelfTrainingOnly``.

Not supported (raise at start): multi-GPU DDP (the base class), region-based labels.
"""

from __future__ import annotations

import contextlib
import os
from typing import Dict, Iterable, Mapping, Optional, Tuple

import torch
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_unpaired.errors import UserError
from nnunet_unpaired.losses.cross_modal_consistency import (CAC_MODES, CSC_DESCRIPTORS, AnatomicalConsistencyLoss,
                                                            ChannelSemanticConsistencyLoss)
from nnunet_unpaired.losses.mutual_distillation import full_resolution
from nnunet_unpaired.losses.pseudo_label import ConfidentPseudoLabelLoss
from nnunet_unpaired.losses.ramps import cosine_rampdown, warmup_ramp
from nnunet_unpaired.modules.cmc_network import CMCNetwork, PairOutput, build_cmc_network
from nnunet_unpaired.modules.mean_teacher import EMATeacher, perturb_intensities
from nnunet_unpaired.semisupervised import split_labelled
from nnunet_unpaired.training.unpaired_joint import nnUNetTrainerUnpairedJoint

PLANS_KEY = "cmc"
PARTNER_HEAD = "partner_head"
TEACHER = "teacher"
_CUDA = torch.device("cuda")  # nnU-Net's default device, as in nnUNetTrainer.__init__

# name -> (environment variable, parser, check, what the check expects)
SETTINGS = {
    "csc_weight": ("nnUNet_unpaired_cmc_csc_weight", float, lambda v: v >= 0, "a number >= 0"),
    "cac_weight": ("nnUNet_unpaired_cmc_cac_weight", float, lambda v: v >= 0, "a number >= 0"),
    "unlabelled_start": ("nnUNet_unpaired_cmc_start", float, lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "st_weight": ("nnUNet_unpaired_cmc_st_weight", float, lambda v: v >= 0, "a number >= 0"),
    "st_threshold": ("nnUNet_unpaired_cmc_st_threshold", float, lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "ema_decay": ("nnUNet_unpaired_cmc_ema_decay", float, lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "csc_temperature": ("nnUNet_unpaired_cmc_temperature", float, lambda v: v > 0, "a number > 0"),
    "csc_descriptor": ("nnUNet_unpaired_cmc_csc_descriptor", str, lambda v: v in CSC_DESCRIPTORS,
                       f"one of {CSC_DESCRIPTORS}"),
    "cac_mode": ("nnUNet_unpaired_cmc_cac_mode", str, lambda v: v in CAC_MODES, f"one of {CAC_MODES}"),
    "self_fusion_prob": ("nnUNet_unpaired_cmc_self_fusion", float, lambda v: 0 <= v <= 1, "a number in [0, 1]"),
}


def resolve_settings(defaults: Mapping[str, object], plans: Mapping, environ: Mapping[str, str],
                     names: Iterable[str] = tuple(SETTINGS)) -> Dict[str, object]:
    """The CMC settings ``names`` (default: all): environment variable, else ``plans["cmc"][name]``, else
    ``defaults[name]``; validated.

    Raises:
        ValueError: naming the setting, where its value came from, and what it must be.
    """
    from_plans = plans.get(PLANS_KEY) or {}
    settings = {}
    for name in names:
        variable, parse, check, expected = SETTINGS[name]
        raw = environ.get(variable, "").strip()
        source, value = (variable, raw) if raw else (f'plans["{PLANS_KEY}"]["{name}"]', from_plans.get(name))
        if value is None:
            source, value = f"the default of {name}", defaults[name]
        try:
            parsed = parse(value)
            valid = check(parsed)
        except (TypeError, ValueError):
            valid = False
        if not valid:
            raise ValueError(f"CMC setting {name} from {source} is {value!r}; it must be {expected}")
        settings[name] = parsed
    return settings


def finish_loader(loader) -> None:
    """Stop a data loader's augmentation workers (nnU-Net's own loaders are stopped by nnU-Net)."""
    if isinstance(loader, (NonDetMultiThreadedAugmenter, MultiThreadedAugmenter)):
        loader._finish()


class SemiSupervisedCMCMixin:
    """What both CMC trainers (:class:`nnUNetTrainerCMC`, unpaired; ``nnUNetTrainerCMCPaired``, one two-channel
    dataset) share: the settings, the schedules of the unlabelled terms, and the labelled / unlabelled split of the
    training cases with their data loaders. Put before the nnU-Net trainer in the bases; call :meth:`setup_cmc` in
    ``__init__``. The class attributes are the defaults of the settings both share (module docstring's table); each
    trainer sets the forms of CSC and CAC (and the unpaired one ``self_fusion_prob``)."""

    csc_weight: float = 2.0
    cac_weight: float = 2.0
    unlabelled_start: float = 0.7
    st_weight: float = 1.0
    st_threshold: float = 0.9
    ema_decay: float = 0.99
    csc_temperature: float = 0.5

    def setup_cmc(self, names: Iterable[str] = tuple(SETTINGS)) -> Dict[str, object]:
        """Resolves the settings ``names`` (see :func:`resolve_settings`) onto the trainer and into its plans under
        ``"cmc"``, builds the three unlabelled losses; returns the settings. Refuses region-based labels."""
        if self.label_manager.has_regions:
            raise NotImplementedError(f"{self.__class__.__name__} does not support region-based labels (CMC's "
                                      f"anatomical consistency compares softmax class probabilities)")
        settings = resolve_settings({name: getattr(self, name) for name in names}, self.plans_manager.plans,
                                    os.environ, names)
        for name, value in settings.items():
            setattr(self, name, value)
        self.plans_manager.plans[PLANS_KEY] = dict(settings)
        self.csc_loss = ChannelSemanticConsistencyLoss(self.csc_temperature, self.csc_descriptor)
        self.cac_loss = AnatomicalConsistencyLoss(self.cac_mode)
        self.st_loss = ConfidentPseudoLabelLoss(self.st_threshold)
        self.dataloader_unlabelled = None
        self._case_subset: Optional[str] = None
        self._case_flags: Dict[str, Dict[str, bool]] = {}
        return settings

    @property
    def teacher(self) -> Optional[EMATeacher]:
        """The mean teacher of ST (copies of what the student is: the network and B's head unpaired, the paired
        network), or None when ST is off."""
        return self.training_modules[TEACHER] if TEACHER in self.training_modules else None

    @property
    def uses_unlabelled(self) -> bool:
        return self.csc_weight > 0 or self.cac_weight > 0 or self.st_weight > 0

    # ------------------------------------------------------------------------------ labelled / unlabelled loaders
    def case_is_labelled(self) -> Dict[str, bool]:
        """``{case: labelled?}`` for every preprocessed case of the current dataset (A, or B inside as_partner)."""
        name = self.plans_manager.dataset_name
        if name not in self._case_flags:
            if self.dataset_class is None:
                self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
            everything = self.dataset_class(self.preprocessed_dataset_folder)
            labelled, unlabelled = split_labelled(everything, list(everything.identifiers), self.label_manager)
            self._case_flags[name] = {**{k: True for k in labelled}, **{k: False for k in unlabelled}}
        return self._case_flags[name]

    def do_split(self):
        """nnU-Net's split of the fold, then: unlabelled validation cases join the training cases (they have nothing
        to validate against; CMC uses them as unlabelled data) unless the validation set has no labelled case."""
        tr_keys, val_keys = super().do_split()
        flags = self.case_is_labelled()
        labelled_val = [k for k in val_keys if flags[k]]
        if labelled_val and len(labelled_val) < len(val_keys):
            known = set(tr_keys)
            tr_keys = list(tr_keys) + [k for k in val_keys if not flags[k] and k not in known]
            val_keys = labelled_val
        elif not labelled_val:
            self.print_to_log_file(f"{self.plans_manager.dataset_name}: no labelled validation case in fold "
                                   f"{self.fold}; validation Dice is undefined (NaN) for this dataset")
        labelled = [k for k in tr_keys if flags[k]]
        if not labelled:
            raise UserError(
                f"{self.plans_manager.dataset_name}: the training cases of fold {self.fold} include no labelled case "
                f"(all {len(tr_keys)} are entirely the ignore label). Train fold 'all', choose a fold whose training "
                f"cases include a labelled one, or label more cases (make-semisupervised --percent).")
        self.print_to_log_file(f"{self.plans_manager.dataset_name}: training on {len(labelled)} labelled and "
                               f"{len(tr_keys) - len(labelled)} unlabelled cases, validating on {len(val_keys)}",
                               also_print_to_console=True)
        return tr_keys, val_keys

    def get_tr_and_val_datasets(self):
        dataset_tr, dataset_val = super().get_tr_and_val_datasets()
        if self._case_subset is None:
            return dataset_tr, dataset_val
        flags = self.case_is_labelled()
        labelled = [k for k in dataset_tr.identifiers if flags[k]]
        unlabelled = [k for k in dataset_tr.identifiers if not flags[k]]
        keys = labelled if self._case_subset == "labelled" else (unlabelled or labelled)
        if self._case_subset == "unlabelled" and not unlabelled:
            self.print_to_log_file(f"{self.plans_manager.dataset_name}: no unlabelled case; the unlabelled terms use "
                                   f"the labelled cases (without their labels)")
        subset = self.dataset_class(self.preprocessed_dataset_folder, keys,
                                    folder_with_segs_from_previous_stage=self.folder_with_segs_from_previous_stage)
        return subset, dataset_val

    def _training_loader_only(self):
        loader_tr, loader_val = nnUNetTrainer.get_dataloaders(self)
        finish_loader(loader_val)
        return loader_tr

    # ------------------------------------------------------------------------------------- schedules, losses
    def unlabelled_terms(self, student: PairOutput, taught: Optional[PairOutput]) -> Dict[str, torch.Tensor]:
        """The weighted unlabelled terms (``csc``, ``cac`` and, with a teacher's output, ``st``) and, for the log,
        their unweighted values, the weights and the teacher's confident share.

        Args:
            student: the network's pair output on the (perturbed, with ST) unlabelled batch: CSC between its two
                raw bottlenecks, CAC between its two softmax outputs, ST of each output against the teacher's.
            taught: the teacher's pair output on the unperturbed batch, or None without ST.
        """
        w_csc, w_cac, w_st = self.consistency_weights(self.current_epoch)
        out_a, out_b = full_resolution(student.output_a), full_resolution(student.output_b)
        csc = self.csc_loss(student.bottleneck_a, student.bottleneck_b)
        cac = self.cac_loss(torch.softmax(out_a.float(), 1), torch.softmax(out_b.float(), 1))
        terms = {"csc": w_csc * csc, "cac": w_cac * cac, "csc_unweighted": csc.detach(),
                 "cac_unweighted": cac.detach(), "w_csc": torch.tensor(w_csc), "w_cac": torch.tensor(w_cac),
                 "w_st": torch.tensor(w_st)}
        if taught is not None:
            st_a, share_a = self.st_loss(out_a, torch.softmax(full_resolution(taught.output_a).float(), 1))
            st_b, share_b = self.st_loss(out_b, torch.softmax(full_resolution(taught.output_b).float(), 1))
            terms.update({"st": w_st * (st_a + st_b), "st_unweighted": (st_a + st_b).detach(),
                          "st_confident": (share_a + share_b) / 2})
        return terms

    def consistency_weights(self, epoch: float) -> Tuple[float, float, float]:
        """``(w_csc, w_cac, w_st)`` at ``epoch``: CSC warms up and CAC ramps down over the whole training, both zero
        before ``unlabelled_start`` of it (the public code's schedule); ST warms up from the start."""
        started = epoch >= self.unlabelled_start * self.num_epochs
        return (self.csc_weight * warmup_ramp(epoch, self.num_epochs) if started else 0.0,
                self.cac_weight * cosine_rampdown(epoch, self.num_epochs) if started else 0.0,
                self.st_weight * warmup_ramp(epoch, self.num_epochs))


class nnUNetTrainerCMC(SemiSupervisedCMCMixin, nnUNetTrainerUnpairedJoint):
    """Cross-modality collaboration (Zhou et al., MICCAI 2024) for nnU-Net; see the module docstring."""

    csc_descriptor: str = "gram"
    cac_mode: str = "pooled"
    self_fusion_prob: float = 0.5

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = _CUDA):
        super().__init__(plans, configuration, fold, dataset_json, device)
        settings = self.setup_cmc()
        self._partner["plans_manager"].plans[PLANS_KEY] = dict(settings)
        self.dataloader_unlabelled_partner = None
        self._unlabelled_pair: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
        self.print_to_log_file(f"{self.__class__.__name__} settings: {settings}", also_print_to_console=True)

    @staticmethod
    def build_network_architecture(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        return build_cmc_network(configuration_manager.network_arch_class_name,
                                 configuration_manager.network_arch_init_kwargs,
                                 configuration_manager.network_arch_init_kwargs_req_import,
                                 num_input_channels, num_output_channels, enable_deep_supervision)

    def cmc_network(self) -> CMCNetwork:
        return self._plain_network()

    @property
    def partner_head(self) -> Optional[nn.Module]:
        return self.training_modules[PARTNER_HEAD] if PARTNER_HEAD in self.training_modules else None

    # ------------------------------------------------------------------------------------- partner head, export
    def build_training_modules(self) -> Dict[str, nn.Module]:
        head_b = self.cmc_network().new_head()
        modules = {**super().build_training_modules(), PARTNER_HEAD: head_b}
        if self.st_weight > 0:  # not optimized (no parameter requires a gradient): see initialize in the base class
            modules[TEACHER] = EMATeacher([self.cmc_network(), head_b], self.ema_decay)
        return modules

    @torch.no_grad()
    def _swap_heads(self) -> None:
        if self.partner_head is None:
            return
        own = list(self.cmc_network().head.state_dict(keep_vars=True).values())
        other = list(self.partner_head.state_dict(keep_vars=True).values())
        for a, b in zip(own, other):
            kept = a.detach().clone()
            a.copy_(b)
            b.copy_(kept)

    @contextlib.contextmanager
    def as_partner(self):
        """Dataset B's view (see the base class), with B's head in the network for validation and prediction."""
        with super().as_partner():
            self._swap_heads()
            try:
                yield
            finally:
                self._swap_heads()

    def partner_network_weights(self) -> Dict[str, torch.Tensor]:
        weights = dict(super().partner_network_weights())
        if self.partner_head is not None:
            weights.update({f"head.{k}": v for k, v in self.partner_head.state_dict().items()})
        return weights

    # ------------------------------------------------------------------------------ labelled / unlabelled loaders
    def get_dataloaders(self):
        """Labelled training loaders for A and B (the base class's pair), plus unlabelled ones for A and B."""
        try:
            self._case_subset = "labelled"
            loaders = super().get_dataloaders()
            if self.uses_unlabelled:
                self._case_subset = "unlabelled"
                self.dataloader_unlabelled = self._training_loader_only()
                with self.as_partner():
                    self.dataloader_unlabelled_partner = self._training_loader_only()
        finally:
            self._case_subset = None
        return loaders

    def on_train_end(self):
        super().on_train_end()
        for loader in (self.dataloader_unlabelled, self.dataloader_unlabelled_partner):
            finish_loader(loader)

    # ------------------------------------------------------------------------------------------------ losses
    def train_step(self, batch: dict) -> dict:
        if any(w > 0 for w in self.consistency_weights(self.current_epoch)):  # (a weight > 0: uses_unlabelled)
            loaders = (self.dataloader_unlabelled, self.dataloader_unlabelled_partner)
            self._unlabelled_pair = tuple(next(loader)["data"].to(self.device, non_blocking=True) for loader in loaders)
        try:
            result = super().train_step(batch)
        finally:
            self._unlabelled_pair = None
        if self.teacher is not None:
            self.teacher.update([self.cmc_network(), self.partner_head])
        return result

    def compute_losses(self, data_a, target_a, data_b, target_b) -> Dict[str, torch.Tensor]:
        head_b = self.partner_head
        # always a mask (all False without self-fusion), so the labelled and the unlabelled pass share one graph
        mask = torch.rand(data_a.shape[0], device=data_a.device) < self.self_fusion_prob
        # through self.network, nnU-Net's (compiled, where nnU-Net compiles) module: its forward takes the pair too
        labelled = self.network(data_a, data_b, head_b, mask)
        terms = {"seg_A": self.loss(labelled.output_a, target_a), "seg_B": self.loss(labelled.output_b, target_b)}
        if self._unlabelled_pair is not None:
            terms.update(self.unlabelled_losses(*self._unlabelled_pair))
        terms["loss"] = sum(v for k, v in terms.items() if k in ("seg_A", "seg_B", "csc", "cac", "st"))
        return terms

    def unlabelled_losses(self, data_a: torch.Tensor, data_b: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The weighted unlabelled terms (``csc``, ``cac``, ``st``) and, for the log, their unweighted values, the
        weights and the teacher's confident share, on the deployed path (each sample fused with itself)."""
        self_fused = torch.ones(data_a.shape[0], dtype=torch.bool, device=data_a.device)
        student_in, taught = (data_a, data_b), None
        if self.teacher is not None:
            with torch.no_grad():
                network, head_b = self.teacher.copies
                taught = network(data_a, data_b, head_b, self_fused)
            student_in = (perturb_intensities(data_a), perturb_intensities(data_b))
        student = self.network(*student_in, self.partner_head, self_fused)
        return self.unlabelled_terms(student, taught)


class nnUNetTrainerCMCPublicForm(nnUNetTrainerCMC):
    """The public code's loss forms (defects fixed): voxel-wise CSC and CAC, no self-fusion training, no ST.

    For aligned (paired) data."""

    csc_weight = 2.0
    csc_descriptor = "spatial"
    cac_mode = "voxel"
    self_fusion_prob = 0.0
    st_weight = 0.0


class nnUNetTrainerCMCNoSelfFusion(nnUNetTrainerCMC):
    """CMC whose fusion never sees the single-input case in training (for the single-modality measurement)."""

    self_fusion_prob = 0.0


class nnUNetTrainerCMCLabelledOnly(nnUNetTrainerCMC):
    """Ablation: CMC's architecture and labelled training, no unlabelled term (nor the unlabelled pass)."""

    csc_weight = cac_weight = st_weight = 0.0


class nnUNetTrainerCMCCSCOnly(nnUNetTrainerCMC):
    """Ablation: the channel-wise semantic consistency (CSC) as the only unlabelled term."""

    cac_weight = st_weight = 0.0


class nnUNetTrainerCMCCACOnly(nnUNetTrainerCMC):
    """Ablation: the anatomical consistency (CAC) as the only unlabelled term."""

    csc_weight = st_weight = 0.0


class nnUNetTrainerCMCSelfTrainingOnly(nnUNetTrainerCMC):
    """Ablation: the same-modality mean-teacher pseudo-labels (ST) as the only unlabelled term."""

    csc_weight = cac_weight = 0.0
