"""Training length and test-time mirroring from environment variables, for short runs (demo, benchmark, tests).

nnU-Net fixes the trainer's ``__init__`` signature, so run-time configuration of a trainer must come from the plans or
from environment variables. Every trainer of this plugin (and ``nnUNetTrainerVanilla``, the stock trainer used as the
benchmark baseline) reads these variables; when none is set, nnU-Net's defaults apply unchanged.

- ``nnUNet_unpaired_epochs``: number of epochs (nnU-Net default 1000)
- ``nnUNet_unpaired_iters``: training iterations per epoch (default 250)
- ``nnUNet_unpaired_val_iters``: validation iterations per epoch (default 50)
- ``nnUNet_unpaired_no_mirroring=1``: no mirroring augmentation and no mirroring at test time
- ``nnUNet_unpaired_timing_file=PATH``: time every training iteration and write, when training ends, a JSON file
  with the per-iteration seconds and the peak memory (used by the benchmark's cost table; see :data:`ENV_TIMING`)
- ``nnUNet_unpaired_skip_final_validation=1``: no final validation on the fold's validation cases after training (the
  benchmark scores the held-out test cases instead; tests); the model folder then has no ``validation/`` summary, so
  ``nnUNetv2_find_best_configuration`` cannot use it (rerun with ``nnUNetv2_train ... --val`` to add it)
- ``nnUNet_unpaired_torch_threads=N``: torch's intra-op threads in the training process, set before every training
  step (nnU-Net sets all cores at start, and batchgeneratorsv2's transforms set 1 in the process that runs them, which
  is the training process itself when ``nnUNet_n_proc_DA=0``); unset: nnU-Net's behaviour
- ``nnUNet_unpaired_save_every=N``: write nnU-Net's ``checkpoint_latest.pth`` every N epochs (nnU-Net's
  ``save_every``, default 50): with short schedules nnU-Net would never write it before the end, so a training that is
  cut off could not continue (``--c``) and started over; the benchmark's CPU presets set 1
- ``nnUNet_unpaired_snapshot_every=N``: also save ``checkpoint_epoch_<e>.pth`` after every N-th epoch (e = epochs
  done), for learning curves (``nnUNetv2_predict -chk checkpoint_epoch_<e>.pth``)
- ``nnUNet_unpaired_seed=N``: seeded training; seeds weight initialisation, case sampling and augmentation in the main
  process and in every augmentation worker (ordered workers), see :mod:`nnunet_unpaired.training.seeding`
"""

from __future__ import annotations

import json
import os
import resource
import time
from typing import Dict, List, Optional

from nnunet_unpaired.training.seeding import ENV_SEED, seed_everything, seed_from_env, seeded_augmenter

ENV_EPOCHS = "nnUNet_unpaired_epochs"
ENV_ITERS = "nnUNet_unpaired_iters"
ENV_VAL_ITERS = "nnUNet_unpaired_val_iters"
ENV_NO_MIRRORING = "nnUNet_unpaired_no_mirroring"
ENV_SNAPSHOT_EVERY = "nnUNet_unpaired_snapshot_every"
ENV_SAVE_EVERY = "nnUNet_unpaired_save_every"
ENV_SKIP_VALIDATION = "nnUNet_unpaired_skip_final_validation"
ENV_TORCH_THREADS = "nnUNet_unpaired_torch_threads"
#: When set, every training iteration is timed and written to this JSON file at the end of training, with keys
#: ``iteration_seconds`` (one value per iteration: wall time from the end of the previous training step, or from the
#: start of the epoch, to the end of this one, so data loading, forward, backward and optimizer step all count; on
#: CUDA the device is synchronized before each reading), ``epochs`` (the epoch of each value),
#: ``peak_memory_mib`` and ``peak_memory_kind`` (``cuda_max_memory_allocated``: ``torch.cuda.max_memory_allocated``
#: of the training device; ``process_peak_rss``: peak resident memory of the training process from
#: ``resource.getrusage``, data-augmentation worker processes not included), ``device`` and ``trainer``.
ENV_TIMING = "nnUNet_unpaired_timing_file"

_ATTRIBUTES = {ENV_EPOCHS: "num_epochs", ENV_ITERS: "num_iterations_per_epoch", ENV_VAL_ITERS: "num_val_iterations_per_epoch",
               ENV_SAVE_EVERY: "save_every"}


def _positive_int(name: str) -> Optional[int]:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return None
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ValueError(f"Environment variable {name}={value!r} must be a positive integer (or unset).")
    return number


def budget_from_env() -> Dict[str, int]:
    """The trainer attributes that the environment overrides, e.g. ``{'num_epochs': 5}``."""
    return {attr: n for env, attr in _ATTRIBUTES.items() if (n := _positive_int(env)) is not None}


def final_validation_skipped() -> bool:
    """``nnUNet_unpaired_skip_final_validation=1`` is set (the budget's own ``perform_actual_validation`` skips)."""
    return _flag(ENV_SKIP_VALIDATION)


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes")


def mirroring_disabled() -> bool:
    return _flag(ENV_NO_MIRRORING)


def _peak_memory(device) -> Dict[str, object]:
    import torch

    if getattr(device, "type", str(device)) == "cuda" and torch.cuda.is_available():
        return {"peak_memory_mib": torch.cuda.max_memory_allocated(device) / 2 ** 20,
                "peak_memory_kind": "cuda_max_memory_allocated"}
    # Linux reports ru_maxrss in KiB (macOS in bytes)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_memory_mib": rss / (2 ** 20 if os.uname().sysname == "Darwin" else 2 ** 10),
            "peak_memory_kind": "process_peak_rss"}


class BudgetMixin:
    """Put first in the bases of a trainer: applies :func:`budget_from_env` and the mirroring switch, seeds the run when
    :data:`ENV_SEED` is set, and times the training iterations when :data:`ENV_TIMING` is set."""

    # nnU-Net records the init arguments by introspecting ``self.__init__``'s signature, so a trainer that inherits
    # this ``__init__`` (nnUNetTrainerVanilla) needs nnU-Net's exact parameter names here, not ``*args, **kwargs``
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict, device=None):
        import torch

        super().__init__(plans, configuration, fold, dataset_json, torch.device("cuda") if device is None else device)
        overrides = budget_from_env()
        for attr, value in overrides.items():
            setattr(self, attr, value)
        if overrides or mirroring_disabled():
            self.print_to_log_file(
                f"nnunet_unpaired: training length from the environment: {overrides}"
                + (" ; mirroring disabled" if mirroring_disabled() else ""), also_print_to_console=True)
        # seeded here, before initialize() builds the network; the augmentation workers in on_train_start
        self.seed = seed_from_env()
        if self.seed is not None:
            if self.is_ddp:
                raise NotImplementedError(f"{ENV_SEED} is not supported with multi-GPU (DDP) training: every rank "
                                          f"would draw the same batches")
            seed_everything(self.seed)
            self.print_to_log_file(f"nnunet_unpaired: seeded training, {ENV_SEED}={self.seed}",
                                   also_print_to_console=True)

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        if mirroring_disabled():
            mirror_axes = None
            self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch_size, mirror_axes

    def on_train_start(self):
        super().on_train_start()  # builds every data loader (get_dataloaders of the most derived trainer)
        if self.seed is not None:
            self._seed_augmentation_workers()
        self._fix_torch_threads()
        self._start_timing()

    def _fix_torch_threads(self) -> None:
        threads = _positive_int(ENV_TORCH_THREADS)
        if threads is None:
            return
        import torch

        self.print_to_log_file(f"nnunet_unpaired: {threads} torch thread(s) in every training step "
                               f"({ENV_TORCH_THREADS})", also_print_to_console=True)
        unset = self.train_step  # an instance attribute wraps the most derived train_step (see _start_timing)

        def train_step_with_threads(batch):
            torch.set_num_threads(threads)
            return unset(batch)

        self.train_step = train_step_with_threads

    def _seed_augmentation_workers(self) -> None:
        """Replace each non-deterministic augmenter the trainer holds (A's and the partner's, training, validation
        and any extra loader of a subclass) by an ordered one whose workers are seeded from the loader's name."""
        replaced = []
        for name in sorted(vars(self)):
            augmenter = getattr(self, name)
            seeded = seeded_augmenter(augmenter, self.seed, name)
            if seeded is not augmenter:
                setattr(self, name, seeded)
                replaced.append(f"{name} ({seeded.num_processes} workers)")
        if replaced:
            self.print_to_log_file("nnunet_unpaired: seeded, ordered augmentation workers (MultiThreadedAugmenter) "
                                   "for " + ", ".join(replaced))

    # ------------------------------------------------------------------------------------------ iteration timing
    def _start_timing(self) -> None:
        self._timing_file = os.environ.get(ENV_TIMING, "").strip() or None
        if self._timing_file:
            self._iteration_seconds: List[float] = []
            self._iteration_epochs: List[int] = []
            self._timing_last = time.perf_counter()
            # an instance attribute shadows the class's train_step, so this wraps the most derived override too
            # (subclasses such as the joint trainer replace train_step without calling super())
            untimed = self.train_step

            def timed_train_step(batch):
                result = untimed(batch)
                self._timing_sync()
                now = time.perf_counter()
                self._iteration_seconds.append(now - self._timing_last)
                self._iteration_epochs.append(int(self.current_epoch))
                self._timing_last = now
                return result

            self.train_step = timed_train_step

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        if getattr(self, "_timing_file", None):
            self._timing_sync()
            self._timing_last = time.perf_counter()

    def perform_actual_validation(self, save_probabilities: bool = False):
        if final_validation_skipped():
            self.print_to_log_file(f"nnunet_unpaired: final validation skipped ({ENV_SKIP_VALIDATION}=1)",
                                   also_print_to_console=True)
            return
        super().perform_actual_validation(save_probabilities)

    def on_epoch_end(self):
        super().on_epoch_end()  # nnU-Net's: checkpoint_latest, progress.png, then current_epoch += 1
        every = _positive_int(ENV_SNAPSHOT_EVERY)
        if every and self.current_epoch % every == 0 and self.local_rank == 0:
            self.save_checkpoint(os.path.join(self.output_folder, f"checkpoint_epoch_{self.current_epoch}.pth"))

    def on_train_end(self):
        super().on_train_end()
        if getattr(self, "_timing_file", None) and self.local_rank == 0:
            record = {"trainer": self.__class__.__name__, "device": str(self.device),
                      "iteration_seconds": self._iteration_seconds, "epochs": self._iteration_epochs,
                      **_peak_memory(self.device)}
            folder = os.path.dirname(os.path.abspath(self._timing_file))
            os.makedirs(folder, exist_ok=True)
            tmp = f"{self._timing_file}.tmp{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump(record, f)
            os.replace(tmp, self._timing_file)

    def _timing_sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
