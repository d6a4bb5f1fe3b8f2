"""nnUNetTrainerChannelDropout's channel dropout (issue 17): the missing-modality baseline MAML must beat."""

from __future__ import annotations

import pytest
import torch

from nnunet_unpaired.training.channel_dropout import drop_channels


def test_dropped_channels_are_zero_and_one_always_kept():
    g = torch.Generator().manual_seed(0)
    data = torch.rand(2000, 3, 4, 4) + 1.0  # no zeros of its own
    out = drop_channels(data, 0.5, g)
    assert out.shape == data.shape and torch.equal(data, data.clone())  # input untouched
    kept = out.flatten(2).abs().sum(2) > 0  # (B, C)
    dropped_all_voxels = (out.flatten(2) == 0).all(2)
    assert torch.equal(kept, ~dropped_all_voxels)  # a channel is dropped whole or not at all
    assert kept.any(1).all()  # never all channels
    assert torch.equal(out[kept.unsqueeze(-1).unsqueeze(-1).expand_as(out)],
                       data[kept.unsqueeze(-1).unsqueeze(-1).expand_as(data)])  # kept channels unchanged
    # each channel dropped about p of the time; the rescue of all-dropped samples (p^3 = 1/8) lowers it a little
    rate = 1 - kept.float().mean(0)
    assert torch.all((rate > 0.38) & (rate < 0.5)), rate


def test_limits_and_bad_input():
    data = torch.rand(4, 3, 5)
    assert torch.equal(drop_channels(data, 0.0), data)
    single = torch.rand(4, 1, 5)
    assert torch.equal(drop_channels(single, 0.9), single)  # one channel: nothing to drop
    almost = drop_channels(torch.ones(500, 2, 3), 0.999, torch.Generator().manual_seed(1))
    assert (almost.flatten(2).sum(2) > 0).sum(1).eq(1).all()  # nearly always only the rescued channel
    for p in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="probability"):
            drop_channels(data, p)
    with pytest.raises(ValueError, match="B, C"):
        drop_channels(torch.rand(3, 4), 0.5)


def test_seeded_draws_repeat():
    data = torch.rand(8, 4, 3)
    a = drop_channels(data, 0.5, torch.Generator().manual_seed(7))
    b = drop_channels(data, 0.5, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_train_step_trains_on_the_dropped_batch(monkeypatch):
    """The trainer hands nnU-Net's train_step the batch with channels dropped (nnU-Net's step is replaced by a spy)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_unpaired.training.channel_dropout import nnUNetTrainerChannelDropout

    seen = []
    monkeypatch.setattr(nnUNetTrainer, "train_step", lambda self, batch: seen.append(batch) or {"loss": 0.0})
    trainer = object.__new__(nnUNetTrainerChannelDropout)
    trainer.channel_dropout = 0.5
    torch.manual_seed(0)
    data = torch.rand(64, 3, 4, 4) + 1.0
    trainer.train_step({"data": data, "target": "t", "keys": ["k"]})
    (batch,) = seen
    assert batch["target"] == "t" and batch["keys"] == ["k"]
    zeroed = (batch["data"].flatten(2) == 0).all(2)
    assert zeroed.any() and not zeroed.all(1).any()


def test_setting_from_the_environment_is_checked(monkeypatch):
    from nnunet_unpaired.errors import UserError
    from nnunet_unpaired.training import channel_dropout

    monkeypatch.setenv(channel_dropout.ENV_CHANNEL_DROPOUT, "1.5")
    monkeypatch.setattr(channel_dropout.nnUNetTrainer, "__init__", lambda self, *a, **k: None)
    monkeypatch.setattr(channel_dropout.BudgetMixin, "__init__", lambda self, *a, **k: None, raising=False)
    with pytest.raises(UserError, match="nnUNet_unpaired_channel_dropout"):
        channel_dropout.nnUNetTrainerChannelDropout({}, "2d", 0, {"channel_names": {"0": "a", "1": "b"}})
