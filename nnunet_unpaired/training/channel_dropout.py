"""``nnUNetTrainerChannelDropout``: vanilla nnU-Net trained with random channel dropout, the usual competitor of a
missing-modality method (issue 17).

A multi-channel model that has only ever seen all channels is helpless when one is missing at test time; the
standard remedy is to train it with channels removed at random. Here every training sample's channels are each
dropped with probability ``p`` (``nnUNet_unpaired_channel_dropout``, default 0.5, the same rate as MAML's modality
dropout), at least one channel always kept, and a dropped channel is set to 0. Zero is what a missing channel becomes
at test time when its file is replaced by an all-zero image and nnU-Net z-scores it (``(0 - mean) / max(std, 1e-8)``
= 0), which is how the ``multichannel`` benchmark feeds vanilla models a missing channel; for a channel normalised
with ``CTNormalization`` an all-zero image is not 0 after normalisation, and the two would not match.

Nothing else changes: the network, loss, augmentation and budget are vanilla's, the deployed model is nnU-Net's plain
network (exported and predicted like vanilla's), and the dropout acts in training only.
"""

from __future__ import annotations

import math
import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_unpaired.errors import UserError
from nnunet_unpaired.training.budget import BudgetMixin

ENV_CHANNEL_DROPOUT = "nnUNet_unpaired_channel_dropout"


def check_probability(p) -> float:
    """``p`` as a float; ValueError unless it is a number in [0, 1)."""
    if isinstance(p, bool) or not (isinstance(p, (int, float)) and math.isfinite(p) and 0 <= p < 1):
        raise ValueError(f"channel dropout probability must be in [0, 1), got {p!r}")
    return float(p)


def drop_channels(data: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A copy of ``data`` (B, C, *spatial) in which each sample's channels are zeroed with probability ``p`` each,
    never all of them (a sample whose draw dropped every channel keeps one, chosen at random).

    Raises:
        ValueError: if ``p`` is not in [0, 1) or ``data`` has no channel axis.
    """
    p = check_probability(p)
    if data.ndim < 3:
        raise ValueError(f"data must be (B, C, *spatial), got shape {tuple(data.shape)}")
    b, c = data.shape[:2]
    if c < 2 or p == 0:
        return data.clone()
    keep = torch.rand(b, c, generator=generator) >= p
    none_kept = ~keep.any(1)
    if none_kept.any():
        rescue = torch.randint(0, c, (int(none_kept.sum()),), generator=generator)
        keep[none_kept.nonzero()[:, 0], rescue] = True
    mask = keep.to(data.dtype).reshape(b, c, *([1] * (data.ndim - 2)))
    return data * mask.to(data.device)


class nnUNetTrainerChannelDropout(BudgetMixin, nnUNetTrainer):
    """Vanilla nnU-Net with random channel dropout in training; see the module docstring."""

    channel_dropout: float = 0.5

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        value = os.environ.get(ENV_CHANNEL_DROPOUT, "").strip()
        if value:
            try:
                self.channel_dropout = check_probability(float(value))
            except ValueError:
                raise UserError(f"{ENV_CHANNEL_DROPOUT}={value!r}: expected a probability in [0, 1)") from None
        channels = dataset_json.get("channel_names", dataset_json.get("modality", {}))
        self.print_to_log_file(f"channel dropout: each of the {len(channels)} channel(s) dropped with probability "
                               f"{self.channel_dropout} per training sample, at least one kept"
                               + ("" if len(channels) > 1 else " (one channel: nothing to drop)"))

    def train_step(self, batch: dict) -> dict:
        return super().train_step({**batch, "data": drop_channels(batch["data"], self.channel_dropout)})
