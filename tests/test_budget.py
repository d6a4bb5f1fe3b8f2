"""BudgetMixin's switches that need no training to test: final validation, snapshots, torch threads."""

from __future__ import annotations

import pytest

from nnunet_unpaired.training import budget


class _Base:
    """Stands in for nnUNetTrainer: records what the mixin passes on."""

    def __init__(self):
        self.validated, self.saved, self.logged, self.current_epoch = [], [], [], 0
        self.local_rank, self.output_folder = 0, "/out"

    def perform_actual_validation(self, save_probabilities=False):
        self.validated.append(save_probabilities)

    def on_epoch_end(self):
        self.current_epoch += 1

    def save_checkpoint(self, filename):
        self.saved.append(filename)

    def print_to_log_file(self, *args, **kwargs):
        self.logged.append(" ".join(map(str, args)))


class _Trainer(budget.BudgetMixin, _Base):
    def __init__(self):  # the mixin's own __init__ needs nnU-Net's arguments; not what is tested here
        _Base.__init__(self)


def test_final_validation_runs_unless_skipped(monkeypatch):
    trainer = _Trainer()
    monkeypatch.delenv(budget.ENV_SKIP_VALIDATION, raising=False)
    trainer.perform_actual_validation(True)
    assert trainer.validated == [True]
    monkeypatch.setenv(budget.ENV_SKIP_VALIDATION, "1")
    trainer.perform_actual_validation(True)
    assert trainer.validated == [True] and "final validation skipped" in trainer.logged[-1]
    monkeypatch.setenv(budget.ENV_SKIP_VALIDATION, "0")
    trainer.perform_actual_validation(False)
    assert trainer.validated == [True, False]


def test_snapshots_every_n_epochs_named_by_epochs_done(monkeypatch):
    trainer = _Trainer()
    monkeypatch.setenv(budget.ENV_SNAPSHOT_EVERY, "2")
    for _ in range(5):
        trainer.on_epoch_end()
    assert trainer.saved == ["/out/checkpoint_epoch_2.pth", "/out/checkpoint_epoch_4.pth"]
    monkeypatch.delenv(budget.ENV_SNAPSHOT_EVERY)
    trainer.on_epoch_end()
    assert len(trainer.saved) == 2


def test_torch_threads_are_set_before_every_training_step(monkeypatch):
    import torch

    trainer = _Trainer()
    seen = []
    trainer.train_step = lambda batch: seen.append((batch, torch.get_num_threads()))
    monkeypatch.setenv(budget.ENV_TORCH_THREADS, "1")
    before = torch.get_num_threads()
    try:
        trainer._fix_torch_threads()
        torch.set_num_threads(2)  # what a transform or nnU-Net may do between steps
        trainer.train_step("b1")
        torch.set_num_threads(2)
        trainer.train_step("b2")
    finally:
        torch.set_num_threads(before)
    assert seen == [("b1", 1), ("b2", 1)] and "1 torch thread(s)" in trainer.logged[-1]
    monkeypatch.setenv(budget.ENV_TORCH_THREADS, "0")
    with pytest.raises(ValueError, match="nnUNet_unpaired_torch_threads"):
        trainer._fix_torch_threads()


def test_save_every_sets_nnunets_checkpoint_latest_interval(monkeypatch):
    """nnU-Net writes checkpoint_latest every save_every (50) epochs: never, with a 30-epoch budget."""
    monkeypatch.setenv(budget.ENV_SAVE_EVERY, "1")
    assert budget.budget_from_env()["save_every"] == 1
    monkeypatch.setenv(budget.ENV_SAVE_EVERY, "0")
    with pytest.raises(ValueError, match=budget.ENV_SAVE_EVERY):
        budget.budget_from_env()
    monkeypatch.delenv(budget.ENV_SAVE_EVERY)
    assert "save_every" not in budget.budget_from_env()
    from nnunet_unpaired.benchmark.config import CPU_ENV

    assert (budget.ENV_SAVE_EVERY, "1") in CPU_ENV
