"""``nnUNetTrainerUnpairedJoint``: one shared network trained on two unpaired datasets (e.g. CT and MR) at once.

This is the joint baseline and the base class of every unpaired method in this package. Started on dataset A
(``nnUNetv2_train A CONFIG FOLD -tr nnUNetTrainerUnpairedJoint``), it finds partner B from the pairing record that
``nnunet_unpaired plan-pair`` wrote into the plans, and then:

- draws, at every training step, a batch of A and an independent batch of B, each from its own nnU-Net data
  loader with nnU-Net's augmentation and B's own cross-validation split (no B validation case is trained on);
- sums nnU-Net's loss (Dice + CE, deep supervision) on both, plus whatever :meth:`alignment_losses` adds in a
  subclass (EAM, UMMKD, ...), and logs every term per epoch;
- validates each epoch on both datasets (pseudo Dice pooled over A and B), and at the end runs nnU-Net's full
  validation for A AND for B, each into its own model folder;
- saves, next to every checkpoint of A, a checkpoint for B in B's model folder
  (``nnUNet_results/B/<trainer>__<plans>__<config>/fold_X``), so ``nnUNetv2_predict -d B ...`` works like for A.

``network_weights`` is always the state dict of nnU-Net's plain network (strict load by the predictor). Modules that
exist only for training (modality-specific normalization copies, attention modules, discriminators) live in
``self.training_modules`` and are saved under the checkpoint key :data:`CHECKPOINT_KEY` for ``--c``.

Subclasses change behaviour through three small hooks: :meth:`build_training_modules`, :meth:`alignment_losses` and
the class attribute ``modality_specific_norm``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from typing import Dict, List, Optional

import torch
from torch import autocast, nn

from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json, maybe_mkdir_p, save_json
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import dummy_context
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_unpaired.errors import UserError
from nnunet_unpaired.modules.modality_norm import PartnerNormParameters
from nnunet_unpaired.pairing import label_differences, plans_differences, read_pairing, require_env
from nnunet_unpaired.splits import check_fold_possible
from nnunet_unpaired.training.budget import BudgetMixin, final_validation_skipped
from nnunet_unpaired.training.progress import (copy_training_log, log_epoch_value, log_train_terms,
                                               partner_logging, partner_validation_values, plot_loss_terms,
                                               write_partner_progress)

CHECKPOINT_KEY = "nnunet_unpaired"

# trainer attributes that name dataset A's files; swapped for B's inside ``as_partner()``
_DATASET_ATTRIBUTES = ("plans_manager", "configuration_manager", "dataset_json", "label_manager",
                       "preprocessed_dataset_folder_base", "preprocessed_dataset_folder", "output_folder_base",
                       "output_folder", "dataset_class")


def atomic_torch_save(obj, filename: str) -> None:
    tmp = f"{filename}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, filename)


def batch_to_device(batch: dict, device: torch.device):
    """A loader batch's ``data`` and ``target`` (a tensor, or a list of deep-supervision tensors) on ``device``."""
    data = batch["data"].to(device, non_blocking=True)
    target = batch["target"]
    if isinstance(target, list):
        target = [t.to(device, non_blocking=True) for t in target]
    else:
        target = target.to(device, non_blocking=True)
    return data, target


def backward_and_step(loss: torch.Tensor, optimizer, grad_scaler) -> None:
    """nnU-Net's update (``nnUNetTrainer.train_step``): backward (through the GradScaler under AMP), gradients of every
    optimized parameter clipped to norm 12, optimizer step."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if grad_scaler is not None:
        grad_scaler.scale(loss).backward()
        grad_scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, 12)
        grad_scaler.step(optimizer)
        grad_scaler.update()
    else:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 12)
        optimizer.step()


class nnUNetTrainerUnpairedJoint(BudgetMixin, nnUNetTrainer):
    #: give modality B its own affine normalization parameters (shared kernels), as in Dou et al. 2020
    modality_specific_norm: bool = False
    #: one forward over the concatenated A+B batch where A and B share every parameter (joint, EAM); issue 14 item 5.
    #: Off by default: on the CPU it measured 1.40 x SLOWER than two passes (benchmarks/joint_forward.py,
    #: docs/benchmarks.md); on a GPU it is not measured yet. Environment: nnUNet_unpaired_concat_forward=1 turns it on.
    concatenate_batches: bool = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        require_env("nnUNet_preprocessed", "nnUNet_results")  # nnU-Net itself fails with a TypeError without them
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.is_ddp:
            raise NotImplementedError(
                f"{self.__class__.__name__} does not support multi-GPU (DDP) training: the partner-dataset loader and "
                f"the two-dataset export are single-process. Train with one GPU (drop -num_gpus).")
        self.training_modules = nn.ModuleDict()
        flag = os.environ.get("nnUNet_unpaired_concat_forward", "").strip()
        if flag:
            if flag not in ("0", "1"):
                raise UserError(f"nnUNet_unpaired_concat_forward={flag!r}: expected 0 (two forward passes) or 1 "
                                f"(one pass over the concatenated A+B batch)")
            self.concatenate_batches = flag == "1"
        self.dataloader_train_partner = self.dataloader_val_partner = None
        self._partner = self._load_partner(configuration, fold)

    # ------------------------------------------------------------------------------------------------ partner setup
    def _load_partner(self, configuration: str, fold) -> Dict:
        own_name = self.plans_manager.dataset_name
        own_plans_file = join(self.preprocessed_dataset_folder_base, self.plans_manager.plans_name + ".json")
        pairing = read_pairing(self.plans_manager.plans, own_plans_file)
        pre = os.environ["nnUNet_preprocessed"]
        base = join(pre, pairing.partner)
        plans_file = join(base, pairing.partner_plans + ".json")
        fix = f"nnunet_unpaired plan-pair -d {own_name} {pairing.partner} -c {configuration}"
        if not isfile(plans_file) or not isfile(join(base, "dataset.json")):
            raise UserError(f"partner dataset {pairing.partner} is not planned/preprocessed ({plans_file} missing). "
                            f"Run: {fix}")
        partner_plans = load_json(plans_file)
        back = read_pairing(partner_plans, plans_file)
        if back.partner != own_name:
            raise UserError(f"{plans_file} pairs {pairing.partner} with {back.partner}, not with {own_name}: the "
                            f"pairing is stale. Run: {fix}")
        diffs = plans_differences(self.plans_manager.plans, partner_plans, configuration)
        if diffs:
            raise UserError(f"the plans of {own_name} and {pairing.partner} no longer match ({'; '.join(diffs)}), "
                            f"so one network cannot serve both. Run: {fix}")
        partner_json = load_json(join(base, "dataset.json"))
        diff = label_differences(self.dataset_json["labels"], partner_json["labels"])
        if diff:
            raise UserError(f"{own_name} and {pairing.partner} have different labels ({diff}). Run: {fix}")
        plans_manager = PlansManager(partner_plans)
        configuration_manager = plans_manager.get_configuration(configuration)
        folder = join(base, configuration_manager.data_identifier)
        if not os.path.isdir(folder):
            raise UserError(f"configuration {configuration} of partner {pairing.partner} is not preprocessed "
                            f"({folder} missing). Run: {fix}")
        out_base = join(os.environ["nnUNet_results"], pairing.partner,
                        f"{self.__class__.__name__}__{plans_manager.plans_name}__{configuration}")
        return {
            "plans_manager": plans_manager, "configuration_manager": configuration_manager,
            "dataset_json": partner_json, "label_manager": plans_manager.get_label_manager(partner_json),
            "preprocessed_dataset_folder_base": base, "preprocessed_dataset_folder": folder,
            "output_folder_base": out_base, "output_folder": join(out_base, f"fold_{fold}"), "dataset_class": None,
        }

    @property
    def partner_name(self) -> str:
        return self._partner["plans_manager"].dataset_name

    def _plain_network(self) -> nn.Module:
        net = self.network.module if self.is_ddp else self.network
        return getattr(net, "_orig_mod", net)

    @property
    def partner_norm(self) -> Optional[PartnerNormParameters]:
        return self.training_modules["partner_norm"] if "partner_norm" in self.training_modules else None

    @contextlib.contextmanager
    def as_partner(self):
        """Inside this block the trainer looks at dataset B: its plans, folders, data and normalization params.

        Lets nnU-Net's own data loading, validation and export code run unchanged for B. Not for use around a
        training forward/backward pass (the normalization swap is in place); training uses :meth:`forward_partner`.
        """
        own = {a: getattr(self, a) for a in _DATASET_ATTRIBUTES}
        for a in _DATASET_ATTRIBUTES:
            setattr(self, a, self._partner[a])
        if self.partner_norm is not None:
            self.partner_norm.swap_into(self._plain_network())
        try:
            yield
        finally:
            if self.partner_norm is not None:
                self.partner_norm.swap_into(self._plain_network())
            for a in _DATASET_ATTRIBUTES:
                self._partner[a] = getattr(self, a)
                setattr(self, a, own[a])

    # ------------------------------------------------------------------------------------------- hooks to override
    def build_training_modules(self) -> Dict[str, nn.Module]:
        """Training-only modules (never in ``network_weights``); optimized with the network. Extend in subclasses."""
        return {"partner_norm": PartnerNormParameters(self._plain_network())} if self.modality_specific_norm else {}

    def alignment_losses(self, output_a, target_a, output_b, target_b) -> Dict[str, torch.Tensor]:
        """Extra, already weighted loss terms added to the two segmentation losses. None in the joint baseline."""
        return {}

    # ------------------------------------------------------------------------------------------------ training
    def initialize(self):
        first_time = not self.was_initialized
        super().initialize()
        if first_time:
            self.training_modules = nn.ModuleDict(self.build_training_modules()).to(self.device)
            params = [p for p in self.training_modules.parameters() if p.requires_grad]
            if params:
                self.optimizer.add_param_group({"params": params})

    def do_split(self):
        check_fold_possible(self.preprocessed_dataset_folder_base, self.fold)
        self.print_to_log_file(f"Split of {self.plans_manager.dataset_name}:")
        return super().do_split()

    def get_dataloaders(self):
        loaders = super().get_dataloaders()
        with self.as_partner():
            self.dataloader_train_partner, self.dataloader_val_partner = super().get_dataloaders()
        return loaders

    def on_train_start(self):
        super().on_train_start()
        with self.as_partner():
            maybe_mkdir_p(self.output_folder)
            self.dataset_class.unpack_dataset(self.preprocessed_dataset_folder, overwrite_existing=False,
                                              num_processes=1, verify=True)
            save_json(self.plans_manager.plans, join(self.output_folder_base, "plans.json"), sort_keys=False)
            save_json(self.dataset_json, join(self.output_folder_base, "dataset.json"), sort_keys=False)
            shutil.copyfile(join(self.preprocessed_dataset_folder_base, "dataset_fingerprint.json"),
                            join(self.output_folder_base, "dataset_fingerprint.json"))
        self.print_to_log_file(f"Unpaired training: {self.plans_manager.dataset_name} (A) + {self.partner_name} (B); "
                               f"model for B is written to {self._partner['output_folder']}")

    def forward_partner(self, data: torch.Tensor):
        """Network output for a batch of modality B (with B's own normalization parameters when enabled).

        Always through ``self.network`` (nnU-Net's compiled module where nnU-Net compiles): B's normalization
        parameters are put into the plain network's norm layers for the call, and a compiled network reads its
        parameters at every call, so no recompilation (tests/test_compiled_step.py)."""
        if self.partner_norm is not None:
            with self.partner_norm.substituted(self._plain_network()):
                return self.network(data)
        return self.network(data)

    def concatenates_batches(self, data_a: torch.Tensor, data_b: torch.Tensor) -> bool:
        """Whether this step runs ONE forward over ``cat(A, B)``: where A and B share every parameter (no
        modality-specific normalization), the batches fit together and :attr:`concatenate_batches` is on."""
        return (self.concatenate_batches and self.partner_norm is None
                and data_a.shape[1:] == data_b.shape[1:] and data_a.dtype == data_b.dtype)

    def forward_pair(self, data_a: torch.Tensor, data_b: torch.Tensor):
        """Network outputs for A's and B's batch: one pass over the concatenated batch where
        :meth:`concatenates_batches`, else A's pass and then :meth:`forward_partner`. nnU-Net's networks normalise
        per sample (InstanceNorm), so both give the same outputs; benchmarks/joint_forward.py measures the cost."""
        if not self.concatenates_batches(data_a, data_b):
            return self.network(data_a), self.forward_partner(data_b)
        n = data_a.shape[0]
        output = self.network(torch.cat((data_a, data_b)))
        if isinstance(output, (list, tuple)):
            return [o[:n] for o in output], [o[n:] for o in output]
        return output[:n], output[n:]

    def compute_losses(self, data_a, target_a, data_b, target_b) -> Dict[str, torch.Tensor]:
        output_a, output_b = self.forward_pair(data_a, data_b)
        terms = {"seg_A": self.loss(output_a, target_a), "seg_B": self.loss(output_b, target_b)}
        terms.update(self.alignment_losses(output_a, target_a, output_b, target_b))
        terms["loss"] = sum(terms.values())
        return terms

    def train_step(self, batch: dict) -> dict:
        data_a, target_a = batch_to_device(batch, self.device)
        data_b, target_b = batch_to_device(next(self.dataloader_train_partner), self.device)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            terms = self.compute_losses(data_a, target_a, data_b, target_b)
        backward_and_step(terms["loss"], self.optimizer, self.grad_scaler)
        return {k: v.detach().cpu().numpy() for k, v in terms.items()}

    def _log_epoch_value(self, key: str, value: float) -> None:
        """Log a value nnU-Net's logger does not know yet (registered on first use, NaN-padded after a resume)."""
        log_epoch_value(self.logger, key, value, self.current_epoch)

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        log_train_terms(self, train_outputs)

    def on_epoch_end(self):
        logging = self.logger.local_logger.my_fantastic_logging
        # B's own validation values, logged before nnU-Net's on_epoch_end saves this epoch's checkpoints
        for key, value in partner_validation_values(self.__dict__.pop("_partner_val_outputs", []), logging).items():
            self._log_epoch_value(key, value)
        super().on_epoch_end()  # nnU-Net's progress.png (and the epoch counter)
        if self.local_rank == 0:
            plot_loss_terms(logging, join(self.output_folder, "progress_terms.png"))
            write_partner_progress(logging, self._partner["output_folder"])  # B's progress.png (B's curves)

    def validation_step(self, batch: dict) -> dict:
        result_a = super().validation_step(batch)
        with self.as_partner():
            result_b = super().validation_step(next(self.dataloader_val_partner))
        self.__dict__.setdefault("_partner_val_outputs", []).append(result_b)  # B's own curves, see on_epoch_end
        return {"loss": (result_a["loss"] + result_b["loss"]) / 2,
                **{k: result_a[k] + result_b[k] for k in ("tp_hard", "fp_hard", "fn_hard")}}

    def on_train_end(self):
        super().on_train_end()
        for loader in (self.dataloader_train_partner, self.dataloader_val_partner):
            if isinstance(loader, (NonDetMultiThreadedAugmenter, MultiThreadedAugmenter)):
                loader._finish()
        latest = join(self._partner["output_folder"], "checkpoint_latest.pth")
        if isfile(latest):
            os.remove(latest)

    # ------------------------------------------------------------------------------------------ checkpoints, export
    def partner_network_weights(self) -> Dict[str, torch.Tensor]:
        """Plain-network state dict for modality B (B's normalization parameters when modality-specific)."""
        if self.partner_norm is not None:
            return self.partner_norm.state_dict_for(self._plain_network())
        return self._plain_network().state_dict()

    def save_checkpoint(self, filename: str) -> None:
        super().save_checkpoint(filename)
        if self.local_rank != 0 or self.disable_checkpointing:
            return
        checkpoint = torch.load(filename, map_location="cpu", weights_only=False)
        if len(self.training_modules):
            checkpoint[CHECKPOINT_KEY] = {"training_modules": self.training_modules.state_dict(),
                                          "partner": self.partner_name}
            atomic_torch_save(checkpoint, filename)
        maybe_mkdir_p(self._partner["output_folder"])
        exported = {
            "network_weights": self.partner_network_weights(),
            "trainer_name": checkpoint["trainer_name"],
            "init_args": {**checkpoint["init_args"], "plans": self._partner["plans_manager"].plans,
                          "dataset_json": self._partner["dataset_json"]},
            "inference_allowed_mirroring_axes": checkpoint["inference_allowed_mirroring_axes"],
            "current_epoch": checkpoint["current_epoch"],
            "_best_ema": checkpoint["_best_ema"],
            "logging": partner_logging(checkpoint["logging"]),  # nnU-Net's keys hold B's own values
            CHECKPOINT_KEY: {"exported_from": self.plans_manager.dataset_name},
        }
        atomic_torch_save(exported, join(self._partner["output_folder"], os.path.basename(filename)))
        # the rest of a model folder as nnU-Net's tools expect it: debug.json (nnU-Net's writer, B's view) and the log
        if os.path.basename(filename) == "checkpoint_final.pth" or not isfile(join(self._partner["output_folder"],
                                                                                  "debug.json")):
            with self.as_partner():
                self._save_debug_information()
        copy_training_log(self.log_file, self._partner["output_folder"])

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        checkpoint = filename_or_checkpoint
        if isinstance(filename_or_checkpoint, str):
            checkpoint = torch.load(filename_or_checkpoint, map_location="cpu", weights_only=False)
        extras = checkpoint.get(CHECKPOINT_KEY, {})
        if "exported_from" in extras:
            raise UserError(
                f"{filename_or_checkpoint} is the export for {self.plans_manager.dataset_name} of a model trained on "
                f"{extras['exported_from']}; it has no optimizer state. Continue or validate that training from its "
                f"own dataset: nnUNetv2_train {extras['exported_from']} {self.configuration_name} {self.fold} "
                f"-tr {self.__class__.__name__} --c (or --val)")
        super().load_checkpoint(filename_or_checkpoint)
        if "training_modules" in extras:
            self.training_modules.load_state_dict(extras["training_modules"])

    def perform_actual_validation(self, save_probabilities: bool = False):
        if final_validation_skipped():  # one skip line from the budget, no header for a validation that does not run
            super().perform_actual_validation(save_probabilities)
        else:
            self.print_to_log_file(f"Final validation of {self.plans_manager.dataset_name} (A)")
            super().perform_actual_validation(save_probabilities)
            with self.as_partner():
                self.print_to_log_file(f"Final validation of {self.plans_manager.dataset_name} (B)")
                super().perform_actual_validation(save_probabilities)
        copy_training_log(self.log_file, self._partner["output_folder"])


class nnUNetTrainerUnpairedJointModalityNorm(nnUNetTrainerUnpairedJoint):
    """Joint training with modality-specific affine normalization parameters (shared kernels), no alignment loss."""

    modality_specific_norm = True
