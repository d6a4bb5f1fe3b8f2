"""Seeded training: one environment variable, :data:`ENV_SEED` (``nnUNet_unpaired_seed``), makes a run reproducible.

nnU-Net fixes the trainer's constructor, so the seed comes from the environment. Unset, nnU-Net's unseeded behaviour is
unchanged. Set to an integer in ``[0, 2**32)``, every trainer of this package (and ``nnUNetTrainerVanilla``) seeds

- the main process (python ``random``, numpy's global RNG, torch) with the seed itself, in the trainer's ``__init__``,
  i.e. before ``initialize()`` builds the network: weight initialisation, and with ``nnUNet_n_proc_DA=0`` also case
  sampling and data augmentation (nnU-Net's data loader draws cases and patch positions from numpy's global RNG, the
  batchgeneratorsv2 transforms draw from numpy, python ``random`` and torch);
- every data-augmentation worker (``nnUNet_n_proc_DA > 0``): nnU-Net's ``NonDetMultiThreadedAugmenter`` hands out
  batches in the order the workers finish them, so it is replaced by batchgenerators' ``MultiThreadedAugmenter``
  (one queue per worker, read round-robin: a fixed order) around the same data loader and transforms, and worker
  ``w`` of the loader held in trainer attribute ``name`` seeds python, numpy and torch with
  :func:`derive_seed` ``(seed, name, w)``. Each loader (training and validation, of dataset A and of the partner B)
  therefore has its own streams. The price: a slow worker holds the others up (nnU-Net chose the non-deterministic
  augmenter for speed).

Equal seeds give equal losses on the CPU, with and without workers (``tests/test_seeding.py``), without
``torch.use_deterministic_algorithms``. On CUDA nnU-Net enables ``cudnn.benchmark`` and several kernels are
non-deterministic, so a seed there fixes the data and the initial weights, not the last digits of the losses. A run
continued with ``--c`` is seeded again from the start of its streams, so it does not replay an uninterrupted run.

Plain functions; torch and batchgenerators are imported where used, so :mod:`nnunet_unpaired.training.interface`
can re-export :data:`ENV_SEED` without them.
"""

from __future__ import annotations

import hashlib
import os
import random
from typing import List, Optional, Sequence

ENV_SEED = "nnUNet_unpaired_seed"

_MAX_SEED = 2 ** 32  # numpy's global RNG accepts seeds in [0, 2**32)


def seed_from_env() -> Optional[int]:
    """The seed from :data:`ENV_SEED`, or None when unset or empty."""
    value = os.environ.get(ENV_SEED)
    if value is None or value.strip() == "":
        return None
    try:
        seed = int(value)
    except ValueError:
        seed = -1
    if not 0 <= seed < _MAX_SEED:
        raise ValueError(f"Environment variable {ENV_SEED}={value!r} must be an integer in [0, 2**32) (or unset).")
    return seed


def derive_seed(seed: int, *keys) -> int:
    """A seed in ``[0, 2**32)`` for one stream, e.g. ``derive_seed(seed, "dataloader_train", worker)``.

    A hash, so that streams of different keys are unrelated (``seed + worker`` would make worker 1 of seed 0 replay
    worker 0 of seed 1), and stable across processes and Python versions (unlike ``hash()``).
    """
    digest = hashlib.sha256(repr((int(seed), *keys)).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy's global RNG and torch (CPU and every CUDA device) in this process."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class WorkerSeededLoader:
    """A data loader for ``MultiThreadedAugmenter`` whose workers seed themselves.

    The augmenter calls ``set_thread_id(w)`` in worker ``w`` before the first batch (after seeding numpy only); this
    seeds python, numpy and torch with ``seeds[w]`` and, like nnU-Net's ``NonDetMultiThreadedAugmenter``, limits torch
    to one thread per worker. Everything else is the wrapped loader's.
    """

    def __init__(self, loader, seeds: Sequence[int]):
        self.loader = loader
        self.seeds = list(seeds)

    def set_thread_id(self, thread_id: int) -> None:
        import torch

        seed_everything(self.seeds[thread_id])
        torch.set_num_threads(1)
        self.loader.set_thread_id(thread_id)

    def __iter__(self):
        return self

    def __next__(self):
        return next(self.loader)

    def __repr__(self) -> str:
        return f"WorkerSeededLoader({self.loader!r}, seeds={self.seeds})"


def worker_seeds(seed: int, name: str, num_workers: int) -> List[int]:
    """The seeds of the ``num_workers`` workers of the loader called ``name``."""
    return [derive_seed(seed, name, worker) for worker in range(num_workers)]


def seeded_augmenter(augmenter, seed: int, name: str):
    """``augmenter`` made deterministic: a ``NonDetMultiThreadedAugmenter`` is shut down and replaced by a started
    ``MultiThreadedAugmenter`` with the same data loader, transform, worker count and memory pinning, whose workers use
    :func:`worker_seeds` ``(seed, name, ...)``. Anything else (``SingleThreadedAugmenter``: runs in the seeded main
    process) is returned as it is."""
    from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter

    if not isinstance(augmenter, NonDetMultiThreadedAugmenter):
        return augmenter
    augmenter._finish()
    n = augmenter.num_processes
    seeds = worker_seeds(seed, name, n)
    seeded = MultiThreadedAugmenter(WorkerSeededLoader(augmenter.generator, seeds), augmenter.transform, n,
                                    num_cached_per_queue=max(2, -(-augmenter.num_cached // n)), seeds=seeds,
                                    pin_memory=augmenter.pin_memory, wait_time=augmenter.wait_time)
    _ = next(seeded)  # start the workers now, as nnU-Net does (the first batch is discarded there too)
    return seeded
