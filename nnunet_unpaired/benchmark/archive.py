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
- a training that was under way when the machine went away starts over (its checkpoint was not part of the record).

The record holds no image and no model, so it can be committed: the real-pair benchmark keeps its record in the
repository (``benchmarks/results/cpu-real-record``) and each session's machine continues it.
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
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


def save(result: Path, archive: Path, log: Callable[[str], None] = say) -> int:
    """Copy the record of ``result`` into ``archive`` (new and changed files; nothing is deleted there). Returns the
    number of files copied."""
    extract_logging(result)
    copied = 0
    for relative in _record_files(result):
        source, target = result / relative, archive / relative
        if target.is_file() and filecmp.cmp(source, target, shallow=False):
            continue
        _copy_atomic(source, target)
        copied += 1
    if copied:
        log(f"record: {copied} file(s) saved to {archive}")
    return copied


def restore(archive: Path, result: Path, log: Callable[[str], None] = say) -> int:
    """Copy the record in ``archive`` into ``result`` where ``result`` lacks a file (nothing there is overwritten).
    Returns the number of files restored."""
    if not archive.is_dir():
        return 0
    restored = 0
    for relative in _record_files(archive):
        target = result / relative
        if not target.exists():
            _copy_atomic(archive / relative, target)
            restored += 1
    if restored:
        log(f"record: {restored} file(s) restored from {archive} into {result} (finished steps are skipped; the plan, "
            f"the preprocessing and the splits are redone where their products are missing)")
    return restored
