"""A benchmark's record: the small files of a result folder, kept in a folder of their own (``--archive DIR``) so that
a long benchmark can continue on another machine.

A result folder holds two kinds of things: what is large and can be rebuilt (the nnU-Net tree with the preprocessed
data and the models, the predictions, the phantom's images) and what is small and cannot (the step markers with
their times and loads, the logs, the per-iteration timing, the per-case metrics, the class-feature measurements, the
training-loss curves, the small files of each model folder: nnU-Net's training log, the plans copy with the settings a
trainer recorded, GLUA's translation records). The record is the second kind. :func:`save` copies it out after every
method (and the loss curves out of each finished model's ``checkpoint_final.pth`` into ``training_logging/``, which the
report reads when the model itself is gone); :func:`restore` copies it back into an empty or partial result folder
before the benchmark resumes there. Then:

- runs whose steps finished are not trained, predicted or evaluated again: their numbers come from the record;
- steps whose products are needed again (the phantom's images, the plan and preprocessing, the splits) rerun because
  their products are missing (:func:`nnunet_unpaired.benchmark.steps.run_step`'s ``products``), and must give the
  recorded result, else the benchmark stops;
- a training that was under way when the machine went away starts over, unless the record keeps checkpoints
  (``--archive-checkpoints``, ``checkpoints=True``): then the ``checkpoint_latest.pth`` of every unfinished training is
  part of the record too, it is restored, and the training continues from it (``--c``) on the new machine. A model's
  checkpoint leaves the record when its ``checkpoint_final.pth`` is written (its numbers are then in the record).

The record holds no image and no finished model, so it can be committed: the real-pair benchmark keeps its record in
the repository (``benchmarks/results/cpu-real-record``, with the checkpoints of its unfinished trainings: a 2D network
capped at 32 features is a few MB) and each session's machine continues it. During a training the harness saves the
record every few minutes (:class:`Autosave`), so a machine that goes away loses at most those minutes of it.
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from nnunet_unpaired.benchmark.config import say
from nnunet_unpaired.benchmark.steps import write_json_atomic

#: folders of a result folder that are large and can be rebuilt: never part of the record. Of the nnU-Net tree only
#: the model folders' small files are kept (logs, plans copies, GLUA's translation records), not the models
REBUILT = frozenset({"predictions", "phantom_raw", "phantom_multichannel_raw", "report", "nnUNet_raw",
                     "nnUNet_preprocessed", "validation"})
#: files never kept: models, images, arrays
REBUILT_SUFFIXES = (".pth", ".nii.gz", ".nii", ".npz", ".npy", ".b2nd", ".pkl", ".mha", ".nrrd")
#: the checkpoint of an unfinished training (nnU-Net writes it every epoch under the benchmark's presets)
LATEST = "checkpoint_latest.pth"
#: a finished training's model: its folder's checkpoint_latest is no longer needed
FINAL = "checkpoint_final.pth"
#: seconds between two saves of the record while a step runs (:class:`Autosave`)
AUTOSAVE_SECONDS = 600.0
#: where a finished model's training-loss curves (``checkpoint['logging']``) are kept, per seed folder
LOGGING_FOLDER = "training_logging"


def _record_files(root: Path) -> Iterator[Path]:
    """The record's files under ``root`` (relative), in a stable order."""
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if d not in REBUILT and not d.startswith("."))
        for name in sorted(files):
            # a name starting with "." is the temporary file of an atomic write
            if not name.startswith(".") and not name.endswith(REBUILT_SUFFIXES):
                yield (Path(folder) / name).relative_to(root)


def _copy_atomic(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def logging_file(run_root: Path, model_folder: Path) -> Path:
    """The record's copy of the training-loss curves of the model in ``model_folder`` (under ``run_root``)."""
    relative = model_folder.relative_to(run_root / "nnunet" / "nnUNet_results")
    return run_root / LOGGING_FOLDER / relative.with_suffix(".json")


def _plain(value: object) -> object:
    """A numpy or torch number or array of nnU-Net's logging as plain JSON."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} in a checkpoint's logging cannot be recorded")


def extract_logging(result: Path) -> list[Path]:
    """For every finished model under ``result`` without one, write its loss curves to :func:`logging_file`."""
    import torch

    written = []
    # a run root is a setting's folder or one seed's folder in it (config.Context.run_root): no walk through the
    # preprocessed data
    checkpoints = [c for pattern in ("*", "*/seed_*")
                   for c in result.glob(f"{pattern}/nnunet/nnUNet_results/*/*/fold_*/checkpoint_final.pth")]
    for checkpoint in sorted(checkpoints):
        run_root = checkpoint.parents[5]
        target = logging_file(run_root, checkpoint.parent)
        if target.is_file() and target.stat().st_mtime >= checkpoint.stat().st_mtime:
            continue
        logging = torch.load(checkpoint, map_location="cpu", weights_only=False).get("logging", {})
        written.append(write_json_atomic(target, json.loads(json.dumps(logging, default=_plain))))
    return written


def _model_folders(root: Path) -> list[Path]:
    """The model folders (``.../nnUNet_results/<dataset>/<trainer__plans__conf>/fold_k``) of the run roots under
    ``root`` (a setting's folder or a seed's folder in it), relative to ``root``."""
    return sorted(f.relative_to(root) for pattern in ("*", "*/seed_*")
                  for f in root.glob(f"{pattern}/nnunet/nnUNet_results/*/*/fold_*") if f.is_dir())


def _copy_checkpoint(source: Path, target: Path) -> bool:
    """Copy the checkpoint nnU-Net may be writing right now (not atomically): only a copy taken while the file did
    not change and that loads is kept. Returns whether it was copied."""
    import torch

    before = source.stat()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    shutil.copyfile(source, tmp)
    after = source.stat()
    try:
        if (before.st_mtime_ns, before.st_size) != (after.st_mtime_ns, after.st_size):
            raise OSError("changed while copied")
        torch.load(tmp, map_location="cpu", weights_only=False)
    except Exception:  # torch raises several kinds for a truncated file; the next save tries again
        tmp.unlink()
        return False
    os.replace(tmp, target)
    return True


def _save_checkpoints(result: Path, archive: Path) -> int:
    """The ``checkpoint_latest.pth`` of every unfinished training of ``result`` into ``archive``; those of finished
    trainings leave it. Returns the number of files copied."""
    copied = 0
    for folder in _model_folders(result):
        source, target = result / folder / LATEST, archive / folder / LATEST
        if (result / folder / FINAL).is_file():
            target.unlink(missing_ok=True)
        elif source.is_file() and not (target.is_file() and filecmp.cmp(source, target, shallow=False)):
            copied += _copy_checkpoint(source, target)
    return copied


_SAVING = threading.Lock()


def save(result: Path, archive: Path, log: Callable[[str], None] = say, checkpoints: bool = False) -> int:
    """Copy the record of ``result`` into ``archive`` (new and changed files; nothing is deleted there, except, with
    ``checkpoints``, the checkpoint of a training that has since finished). Returns the number of files copied."""
    with _SAVING:
        extract_logging(result)
        copied = 0
        for relative in _record_files(result):
            source, target = result / relative, archive / relative
            if target.is_file() and filecmp.cmp(source, target, shallow=False):
                continue
            _copy_atomic(source, target)
            copied += 1
        if checkpoints:
            copied += _save_checkpoints(result, archive)
    if copied:
        log(f"record: {copied} file(s) saved to {archive}")
    return copied


class Autosave:
    """While the ``with`` block runs (a benchmark), :func:`save` every ``every`` seconds in a background thread, so
    a long training's log, timing and checkpoint reach the record before the training ends."""

    def __init__(self, result: Path, archive: Path, log: Callable[[str], None] = say, checkpoints: bool = False,
                 every: float = AUTOSAVE_SECONDS):
        self.args = (result, archive, log, checkpoints)
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="record-autosave", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                save(*self.args)
            except Exception as error:  # a failed autosave must not stop the benchmark; the next one tries again
                self.args[2](f"record: autosave failed ({type(error).__name__}: {error}); trying again later")

    def __enter__(self) -> "Autosave":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def restore(archive: Path, result: Path, log: Callable[[str], None] = say) -> int:
    """Copy the record in ``archive`` into ``result`` where ``result`` lacks a file (nothing there is overwritten;
    a recorded checkpoint only into a model folder with neither checkpoint). Returns the number of files restored."""
    if not archive.is_dir():
        return 0
    restored = 0
    for relative in _record_files(archive):
        target = result / relative
        if not target.exists():
            _copy_atomic(archive / relative, target)
            restored += 1
    for folder in _model_folders(archive):
        source, target = archive / folder / LATEST, result / folder / LATEST
        if source.is_file() and not target.exists() and not (result / folder / FINAL).exists():
            _copy_atomic(source, target)
            restored += 1
    if restored:
        log(f"record: {restored} file(s) restored from {archive} into {result} (finished steps are skipped; the plan, "
            f"the preprocessing and the splits are redone where their products are missing)")
    return restored
