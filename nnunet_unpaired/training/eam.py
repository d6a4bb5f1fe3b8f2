"""``nnUNetTrainerEAM``: joint unpaired CT + MR training plus the External Attention Module's consistency losses.

Yang, Zhu, Wang, Li, Zhang, "Toward Unpaired Multi-modal Medical Image Segmentation via Learning Structured Semantic
Consistency", MIDL 2023 (arXiv 2206.10571). The module and losses are in
:mod:`nnunet_unpaired.modules.external_attention` and :mod:`nnunet_unpaired.losses.semantic_consistency` (our
formulation; the paper's formulas were not available). This trainer only wires them into the joint trainer:

- forward hooks (:class:`~nnunet_unpaired.modules.local_alignment.DecoderFeatureTap`) read the output of the chosen
  decoder stage(s) for the batch of A and the batch of B;
- one EAM per stage (a training-only module: optimized with the network, saved under the checkpoint's
  ``nnunet_unpaired`` key, never in ``network_weights``) standardises A's and B's features together, pools the
  network's label-masked class means and grounds its class anchors on the labels;
- loss = seg_A + seg_B + w_att L_att + w(t) (w_sem L_sem + w_str L_str), averaged over stages: grounding from the
  first step, the consistency terms with the warm-up ramp w(t) = exp(-5 (1 - t/T)^2), evaluated at every iteration
  (t counts epochs in fractions of an epoch), over the first ``warmup_fraction`` of training.

Settings (class attributes; each can be overridden by an environment variable, read when the trainer starts):

=====================  ===================================  =======  ==============================================
attribute              environment variable                 default  meaning
=====================  ===================================  =======  ==============================================
``eam_stages``         ``nnUNet_unpaired_eam_stages``       ``-2``   decoder stages read (0 = lowest resolution,
                                                                     -1 = full resolution), comma-separated
``eam_temperature``    ``nnUNet_unpaired_eam_temperature``  ``0.1``  tau of the anchors' cosine attention logits
``eam_weights``        ``nnUNet_unpaired_eam_weights``      1,1,1    w_att, w_sem, w_str
``warmup_fraction``    ``nnUNet_unpaired_eam_warmup``       ``0.1``  share of training over which w(t) ramps up
=====================  ===================================  =======  ==============================================

The deployed model is nnU-Net's plain network (the hooks only observe): inference costs what vanilla nnU-Net costs.
Training runs through nnU-Net's compiled network where nnU-Net compiles (CUDA): the hooks are registered before its
first forward, so torch.compile traces them (tests/test_compiled_step.py).
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from nnunet_unpaired.errors import UserError
from nnunet_unpaired.losses.ramps import warmup_ramp
from nnunet_unpaired.losses.semantic_consistency import EAMLoss
from nnunet_unpaired.modules.external_attention import ExternalAttentionModule
from nnunet_unpaired.modules.local_alignment import DecoderFeatureTap
from nnunet_unpaired.training.unpaired_joint import nnUNetTrainerUnpairedJoint


def _env_numbers(name: str, default: Sequence, cast) -> Tuple:
    value = os.environ.get(name)
    if value is None or not value.strip():
        return tuple(default)
    try:
        return tuple(cast(v) for v in value.split(","))
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r}: expected comma-separated numbers") from None


class nnUNetTrainerEAM(nnUNetTrainerUnpairedJoint):
    eam_stages: Tuple[int, ...] = (-2,)
    eam_temperature: float = 0.1
    eam_weights: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    warmup_fraction: float = 0.1

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.eam_stages = _env_numbers("nnUNet_unpaired_eam_stages", self.eam_stages, int)
        if os.environ.get("nnUNet_unpaired_eam_dim", "").strip():
            raise UserError("nnUNet_unpaired_eam_dim no longer exists: the EAM has no projection since issue 15 (its "
                            "memory slots have the decoder stage's width). Unset it; choose the width by the stage "
                            "(nnUNet_unpaired_eam_stages).")
        self.eam_temperature = _env_numbers("nnUNet_unpaired_eam_temperature", (self.eam_temperature,), float)[0]
        self.eam_weights = _env_numbers("nnUNet_unpaired_eam_weights", self.eam_weights, float)
        self.warmup_fraction = _env_numbers("nnUNet_unpaired_eam_warmup", (self.warmup_fraction,), float)[0]
        if len(self.eam_weights) != 3:
            raise ValueError(f"EAM weights need three values (w_att, w_sem, w_str), got {self.eam_weights}")
        self.eam_loss = EAMLoss(*self.eam_weights, ignore_index=self.label_manager.ignore_label)
        self._taps: List[DecoderFeatureTap] = []
        self._features_a: Optional[List[torch.Tensor]] = None
        self._features_b: Optional[List[torch.Tensor]] = None
        self._iteration_in_epoch = 0
        self.print_to_log_file(f"EAM: decoder stages {self.eam_stages}, temperature {self.eam_temperature}, weights "
                               f"(att, sem, str) {self.eam_weights}, consistency warm-up over "
                               f"{self.warmup_fraction:.0%} of training")

    def _decoder_stages(self) -> List[nn.Module]:
        stages = self._plain_network().decoder.stages
        n = len(stages)
        bad = [s for s in self.eam_stages if not -n <= s < n]
        if bad:
            raise ValueError(f"EAM decoder stage(s) {bad} do not exist; this network has {n} decoder stages "
                             f"(0..{n - 1} or -{n}..-1)")
        return [stages[s] for s in self.eam_stages]

    def build_training_modules(self) -> Dict[str, nn.Module]:
        modules = super().build_training_modules()
        conv_dim = self.configuration_manager.network_arch_init_kwargs.get("conv_op", "")
        dim = 3 if str(conv_dim).endswith("3d") else 2
        num_classes = self.label_manager.num_segmentation_heads
        for stage_index, stage in zip(self.eam_stages, self._decoder_stages()):
            channels = self._stage_channels(stage)
            modules[f"eam_stage{stage_index}"] = ExternalAttentionModule(
                channels, num_classes, dim, self.eam_temperature, self.label_manager.ignore_label)
        # attached here, in initialize(), before the network's first forward: torch.compile traces the hooks that
        # exist at its first call (a hook added after it would never run in the compiled network)
        self._taps = [DecoderFeatureTap.attached(self._plain_network(), s) for s in self.eam_stages]
        return modules

    @staticmethod
    def _stage_channels(stage: nn.Module) -> int:
        convs = [m for m in stage.modules() if isinstance(m, nn.modules.conv._ConvNd)]
        return convs[-1].out_channels

    def forward_partner(self, data: torch.Tensor):
        # two passes: the base's forward_pair ran A's pass just now, so the taps hold A's decoder features
        self._features_a = [tap.take() for tap in self._taps]
        return super().forward_partner(data)

    def forward_pair(self, data_a: torch.Tensor, data_b: torch.Tensor):
        outputs = super().forward_pair(data_a, data_b)
        latest = [tap.take() for tap in self._taps]
        if self.concatenates_batches(data_a, data_b):  # one pass: each tap holds the features of cat(A, B)
            n = data_a.shape[0]
            self._features_a, latest = [f[:n] for f in latest], [f[n:] for f in latest]
        self._features_b = latest
        return outputs

    def compute_losses(self, data_a, target_a, data_b, target_b) -> Dict[str, torch.Tensor]:
        try:
            return super().compute_losses(data_a, target_a, data_b, target_b)
        finally:
            self._features_a = self._features_b = None

    def alignment_losses(self, output_a, target_a, output_b, target_b) -> Dict[str, torch.Tensor]:
        n = len(self.eam_stages)
        if self._features_a is None or self._features_b is None:
            raise RuntimeError("EAM's alignment losses need the decoder features of A's and B's forward (taken in "
                               "forward_pair); call compute_losses")
        features_a, features_b = self._features_a, self._features_b
        labels_a = target_a[0] if isinstance(target_a, (list, tuple)) else target_a
        labels_b = target_b[0] if isinstance(target_b, (list, tuple)) else target_b
        sums = {"attention": 0.0, "semantic": 0.0, "structured": 0.0, "total": 0.0}
        for i, stage_index in enumerate(self.eam_stages):
            module = self.training_modules[f"eam_stage{stage_index}"]
            terms = self.eam_loss(*module(features_a[i], labels_a, features_b[i], labels_b))
            sums = {k: sums[k] + terms[k] / n for k in sums}
        ramp = self.consistency_ramp()
        self._iteration_in_epoch += 1
        weights = dict(zip(("attention", "semantic", "structured"), self.eam_weights))
        ramps = {"attention": 1.0, "semantic": ramp, "structured": ramp}
        return {f"eam_{k[:3]}": ramps[k] * weights[k] * sums[k] for k in weights}

    def consistency_ramp(self) -> float:
        """w(t) of the consistency terms at this training iteration (t in epochs, fractions of an epoch included)."""
        t = self.current_epoch + self._iteration_in_epoch / max(self.num_iterations_per_epoch, 1)
        return warmup_ramp(t, self.warmup_fraction * self.num_epochs)

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self._iteration_in_epoch = 0
