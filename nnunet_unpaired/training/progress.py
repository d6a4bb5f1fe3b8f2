"""What a model folder shows of its training: ``progress_terms.png`` (every logged loss term per epoch, next to
nnU-Net's own ``progress.png``) and the records of the partner's model folder.

The joint trainers write TWO model folders, A's (the dataset the training was started on) and B's (the partner). nnU-Net
writes A's ``progress.png``, ``debug.json`` and training log itself; for B this module provides the equivalents, so
that nnU-Net's tools (``nnUNetv2_export_model_to_zip`` needs ``progress.png``) accept B's folder like A's:

- :func:`partner_validation_values`: B's own validation loss and pseudo Dice of one epoch, logged under
  ``partner_*`` keys (the per-epoch values nnU-Net logs are pooled over A and B);
- :func:`partner_logging`: the training log as B's model sees it: nnU-Net's standard keys (``train_losses``,
  ``val_losses``, ``mean_fg_dice``, ...) hold B's own values where they were logged (``train_seg_B`` and the
  ``partner_*`` keys), the pooled ones otherwise (e.g. GLUA, whose per-epoch validation uses the source only);
- :func:`write_partner_progress`: B's ``progress.png`` (nnU-Net's own plot of :func:`partner_logging`) and
  ``progress_terms.png``; :func:`copy_training_log`: the run's training log into B's fold folder.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from typing import Dict, List, Mapping, Sequence

import numpy as np

#: keys under which the joint trainer logs B's own validation values each epoch
PARTNER_KEYS = {"val_losses": "partner_val_losses", "mean_fg_dice": "partner_mean_fg_dice",
                "ema_fg_dice": "partner_ema_fg_dice", "dice_per_class_or_region": "partner_dice_per_class_or_region"}
#: B's training loss: its own segmentation term of the joint loss
PARTNER_TRAIN_KEY = "train_seg_B"
#: the keys nnU-Net's LocalLogger logs (and plots) every epoch
NNUNET_KEYS = ("mean_fg_dice", "ema_fg_dice", "dice_per_class_or_region", "train_losses", "val_losses", "lrs",
               "epoch_start_timestamps", "epoch_end_timestamps")


def log_epoch_value(logger, key: str, value: float, epoch: int) -> None:
    """Log ``value`` under ``key`` for ``epoch`` in nnU-Net's ``MetaLogger``, also a key nnU-Net's logger does not know
    (registered on first use; NaN-padded for the epochs before, e.g. after a resume or a term that starts late)."""
    history = logger.local_logger.my_fantastic_logging.setdefault(key, [])
    while len(history) < epoch:
        history.append(float("nan"))
    logger.log(key, value, epoch)


def log_train_terms(trainer, train_outputs: List[dict]) -> None:
    """Log the epoch mean of every training term but ``loss`` (nnU-Net's own) as ``train_<term>`` and print them in
    one line of the training log (``on_train_epoch_end`` of the multi-term trainers)."""
    terms = [k for k in train_outputs[0] if k != "loss"]
    for key in terms:
        log_epoch_value(trainer.logger, f"train_{key}", float(np.mean([o[key] for o in train_outputs])),
                        trainer.current_epoch)
    trainer.print_to_log_file("train terms: " + ", ".join(
        f"{k} {trainer.logger.get_value(f'train_{k}', step=-1):.4f}" for k in terms))


def plot_loss_terms(logging: Dict[str, List], filename: str) -> None:
    """Plot all ``train_<term>`` series (one line each) into ``filename`` (written atomically)."""
    series = {k[len("train_"):]: v for k, v in logging.items()
              if k.startswith("train_") and k != "train_losses" and len(v)}
    if not series:
        return
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, values in sorted(series.items()):
        ax.plot(range(len(values)), [v if v is not None and not math.isnan(v) else float("nan") for v in values],
                label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss term (weighted, mean over the epoch)")
    ax.legend(loc="upper right", fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(filename)), exist_ok=True)
    tmp = f"{filename}.tmp{os.getpid()}.png"
    fig.savefig(tmp, dpi=80)
    os.replace(tmp, filename)


def _last_number(values: Sequence) -> float:
    for v in reversed(list(values)):
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            return float(v)
    return math.nan


def partner_validation_values(outputs: Sequence[Mapping], logging: Mapping[str, List]) -> Dict[str, object]:
    """B's validation loss, pseudo Dice per class, mean and moving average of one epoch, from the outputs of
    nnU-Net's ``validation_step`` on B's batches (``loss``, ``tp_hard``, ``fp_hard``, ``fn_hard``), computed as
    nnU-Net's ``on_validation_epoch_end`` and logger do for the pooled values. ``{}`` when there are none."""
    if not outputs:
        return {}
    tp, fp, fn = (np.sum([np.asarray(o[k]) for o in outputs], 0) for k in ("tp_hard", "fp_hard", "fn_hard"))
    with np.errstate(divide="ignore", invalid="ignore"):
        per_class = [float(2 * t / (2 * t + p + n)) for t, p, n in zip(tp, fp, fn)]
    mean = float(np.nanmean(per_class)) if not all(math.isnan(d) for d in per_class) else math.nan
    previous = _last_number(logging.get(PARTNER_KEYS["ema_fg_dice"], []))
    ema = mean if math.isnan(previous) else 0.9 * previous + 0.1 * mean
    return {PARTNER_KEYS["val_losses"]: float(np.mean([float(o["loss"]) for o in outputs])),
            PARTNER_KEYS["mean_fg_dice"]: mean, PARTNER_KEYS["ema_fg_dice"]: ema,
            PARTNER_KEYS["dice_per_class_or_region"]: per_class}


def partner_logging(logging: Mapping[str, List]) -> Dict[str, List]:
    """A copy of ``logging`` in which nnU-Net's standard keys hold B's own values where they were logged."""
    view = {k: list(v) for k, v in logging.items()}
    sources = {"train_losses": PARTNER_TRAIN_KEY, **PARTNER_KEYS}
    for key, source in sources.items():
        if logging.get(source):
            view[key] = list(logging[source])
    return view


def plot_progress(logging: Mapping[str, List], folder: str) -> None:
    """nnU-Net's own ``progress.png`` of ``logging`` into ``folder`` (written atomically; nothing without epochs)."""
    from nnunetv2.training.logging.nnunet_logger import LocalLogger

    standard = {k: list(logging.get(k, [])) for k in NNUNET_KEYS}
    if min(len(v) for v in standard.values()) == 0:
        return
    os.makedirs(folder, exist_ok=True)
    logger = LocalLogger()
    logger.my_fantastic_logging = standard
    tmp = tempfile.mkdtemp(prefix=".progress", dir=folder)
    try:
        logger.plot_progress_png(tmp)
        os.replace(os.path.join(tmp, "progress.png"), os.path.join(folder, "progress.png"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_partner_progress(logging: Mapping[str, List], folder: str) -> None:
    """B's ``progress.png`` (B's curves, see :func:`partner_logging`) and ``progress_terms.png`` into ``folder``."""
    plot_progress(partner_logging(logging), folder)
    plot_loss_terms(dict(logging), os.path.join(folder, "progress_terms.png"))


def copy_training_log(log_file: str, folder: str) -> None:
    """Copy the run's training log (A's ``training_log_*.txt``, which covers both datasets) into ``folder``."""
    if not log_file or not os.path.isfile(log_file):
        return
    os.makedirs(folder, exist_ok=True)
    target = os.path.join(folder, os.path.basename(log_file))
    tmp = f"{target}.tmp{os.getpid()}"
    shutil.copyfile(log_file, tmp)
    os.replace(tmp, target)
