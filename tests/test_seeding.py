"""nnUNet_unpaired_seed: same seed, same losses (with and without augmentation workers); another seed, other losses."""

import os
import random

import numpy as np
import pytest
import torch
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from batchgenerators.utilities.file_and_folder_operations import load_json
from pairs import NAMES, set_env

from nnunet_unpaired.training.interface import ENV_SEED
from nnunet_unpaired.training.seeding import derive_seed, seed_from_env, seeded_augmenter
from nnunet_unpaired.training import unpaired_joint
from nnunet_unpaired.training.unpaired_joint import nnUNetTrainerUnpairedJoint
from nnunet_unpaired.training.vanilla import nnUNetTrainerVanilla


# ----------------------------------------------------------------------------------------------- the seed itself
def test_seed_from_env(monkeypatch):
    monkeypatch.delenv(ENV_SEED, raising=False)
    assert seed_from_env() is None
    monkeypatch.setenv(ENV_SEED, " ")
    assert seed_from_env() is None
    monkeypatch.setenv(ENV_SEED, "42")
    assert seed_from_env() == 42
    for bad in ("-1", "1.5", "abc", str(2 ** 32)):
        monkeypatch.setenv(ENV_SEED, bad)
        with pytest.raises(ValueError, match=ENV_SEED):
            seed_from_env()


def test_derived_seeds_are_stable_distinct_and_in_range():
    seeds = {derive_seed(s, name, w) for s in (0, 1) for name in ("dataloader_train", "dataloader_train_partner")
             for w in range(4)}
    assert len(seeds) == 16 and all(0 <= s < 2 ** 32 for s in seeds)
    assert derive_seed(0, "dataloader_train", 1) == derive_seed(0, "dataloader_train", 1)
    assert derive_seed(0, "dataloader_train", 1) != derive_seed(1, "dataloader_train", 0)


# ------------------------------------------------------------------------------------------ augmentation workers
class _RandomDraws:
    """An infinite loader whose batches are draws from the three RNGs an augmentation pipeline uses."""

    def set_thread_id(self, thread_id):
        self.thread_id = thread_id

    def __iter__(self):
        return self

    def __next__(self):
        return {"draws": (random.random(), float(np.random.rand()), float(torch.rand(1)))}


def _worker_batches(seed, name="dataloader_train", n=8):
    augmenter = seeded_augmenter(NonDetMultiThreadedAugmenter(_RandomDraws(), None, 2, 4), seed, name)
    try:
        assert isinstance(augmenter, MultiThreadedAugmenter)
        return [next(augmenter)["draws"] for _ in range(n)]
    finally:
        augmenter._finish()


def test_seeded_workers_replay_their_streams():
    first = _worker_batches(3)
    assert _worker_batches(3) == first
    assert _worker_batches(4) != first and _worker_batches(3, "dataloader_train_partner") != first
    # the two workers (even and odd batches) draw different numbers from every RNG, torch included
    for rng in range(3):
        assert {b[rng] for b in first[0::2]}.isdisjoint(b[rng] for b in first[1::2])


def test_single_threaded_augmenter_is_left_alone():
    augmenter = SingleThreadedAugmenter(_RandomDraws(), None)
    assert seeded_augmenter(augmenter, 0, "dataloader_train") is augmenter


# ------------------------------------------------------------------------------------------------- training runs
def _train(env, monkeypatch, results, cls, seed, n_proc_da=0):
    """Train 2 epochs x 3 iterations in-process; returns (per-iteration losses, validation losses, final weights)."""
    set_env(env, monkeypatch)
    for key, value in {"nnUNet_results": str(results), ENV_SEED: str(seed), "nnUNet_n_proc_DA": str(n_proc_da),
                       "nnUNet_unpaired_epochs": "2", "nnUNet_unpaired_iters": "3",
                       "nnUNet_unpaired_val_iters": "1"}.items():
        monkeypatch.setenv(key, value)
    base = os.path.join(env["nnUNet_preprocessed"], NAMES[0])
    plans = load_json(os.path.join(base, "nnUNetPlans.json"))
    plans["continue_training"] = False
    # draw from every global RNG so that an unseeded trainer would start from another state
    random.random(), np.random.rand(), torch.rand(1)
    trainer = cls(plans, "2d", 0, load_json(os.path.join(base, "dataset.json")), torch.device("cpu"))
    # the progress plots take most of the time of so short a run and draw no random numbers
    trainer.logger.plot_progress_png = lambda *args, **kwargs: None
    monkeypatch.setattr(unpaired_joint, "plot_loss_terms", lambda *args, **kwargs: None)
    losses = []
    step = trainer.train_step

    def recorded_step(batch):
        result = step(batch)
        losses.append(float(result["loss"]))
        return result

    trainer.train_step = recorded_step
    trainer.run_training()
    if n_proc_da:
        assert isinstance(trainer.dataloader_train, MultiThreadedAugmenter)
    assert len(losses) == 6
    weights = {k: v.detach().clone() for k, v in trainer.network.state_dict().items()}
    return losses, list(trainer.logger.local_logger.my_fantastic_logging["val_losses"]), weights


def _same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("n_proc_da", [0, 2], ids=["main-process", "2-workers"])
@pytest.mark.parametrize("cls", [nnUNetTrainerVanilla, nnUNetTrainerUnpairedJoint], ids=["vanilla", "joint"])
def test_same_seed_same_losses_other_seed_other_losses(planned_pair, monkeypatch, tmp_path, cls, n_proc_da):
    _, env = planned_pair
    losses, val, weights = _train(env, monkeypatch, tmp_path / "a", cls, 7, n_proc_da)
    again_losses, again_val, again_weights = _train(env, monkeypatch, tmp_path / "b", cls, 7, n_proc_da)
    assert again_losses == losses and again_val == val
    assert _same_weights(again_weights, weights)
    other_losses, _, other_weights = _train(env, monkeypatch, tmp_path / "c", cls, 8, n_proc_da)
    assert other_losses != losses and not _same_weights(other_weights, weights)
