"""Step 6 of a benchmark: the costs of a trained method (seconds per training iteration, peak memory, inference
seconds per case, wall time and load) and its training-loss curves, from timing files, markers and checkpoints."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence

from nnunet_unpaired.benchmark import archive
from nnunet_unpaired.benchmark.config import Context, ModelRef, Trained, run_key
from nnunet_unpaired.benchmark.prediction import predict_step
from nnunet_unpaired.benchmark.registry import Method
from nnunet_unpaired.benchmark.steps import marker_path
from nnunet_unpaired.benchmark.training_runs import timing_files
from nnunet_unpaired.errors import UserError


def median_after_warmup(records: Sequence[Mapping]) -> tuple[float, int]:
    """Median seconds per iteration over the timing records of one method, and how many iterations it used.

    In each record (one training process) the first epoch is warm-up when there are several epochs; with a single
    epoch the first ``min(10, n - 1)`` iterations are.
    """
    kept: list[float] = []
    for record in records:
        seconds, epochs = list(record.get("iteration_seconds", [])), list(record.get("epochs", []))
        if not seconds:
            continue
        if len(set(epochs)) > 1:
            first = min(epochs)
            kept += [s for s, e in zip(seconds, epochs) if e != first]
        else:
            kept += seconds[min(10, len(seconds) - 1):]
    return (statistics.median(kept) if kept else math.nan), len(kept)


def collect_costs(ctx: Context, method: Method, models: Sequence[ModelRef], fold: str) -> dict:
    """One cost row of a method and fold (the keys of :data:`nnunet_unpaired.benchmark.report.COST_KEYS` and more)."""
    runs = list(dict.fromkeys(m.run for m in models))
    records = [json.loads(p.read_text()) for run in runs for p in timing_files(ctx, run)]
    per_iteration, n_iterations = median_after_warmup(records)
    peaks = [r["peak_memory_mib"] for r in records if r.get("peak_memory_mib") is not None]
    kinds = sorted({r.get("peak_memory_kind", "") for r in records})
    predicted = [json.loads(marker_path(ctx.run_root, predict_step(method.name, m.dataset, fold)).read_text())
                 for m in models]
    cases = sum(p["cases"] for p in predicted)
    train_markers = [json.loads(marker_path(ctx.run_root, f"train__{run}").read_text()) for run in runs]
    return {"method": method.name, "fold": fold, "seconds_per_iteration": per_iteration,
            "peak_memory_mib": max(peaks) if peaks else math.nan,
            "inference_seconds_per_case": sum(p["wall_seconds"] for p in predicted) / max(1, cases),
            "training_wall_seconds": sum(m["seconds"] for m in train_markers), "training_runs": len(runs),
            # the machine's 1-minute load average at the start and end of each training run (a shared machine slows
            # whatever runs while it is busy: compare the cost ratios with this in mind)
            "training_load_average": mean([v for m in train_markers for v in m.get("load_average", [])]),
            "timed_iterations": n_iterations, "peak_memory_kind": "+".join(k for k in kinds if k)}


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def training_logging(ctx: Context, model: ModelRef, fold: str) -> dict:
    """``checkpoint['logging']`` of a finished model: from its checkpoint, else from the benchmark's record (where
    the model itself is gone, :mod:`nnunet_unpaired.benchmark.archive`)."""
    import torch

    folder = ctx.model_folder(model.dataset, model.trainer, fold)
    if (folder / "checkpoint_final.pth").is_file():
        checkpoint = torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
        return checkpoint.get("logging", {})
    recorded = archive.logging_file(ctx.run_root, folder)
    if recorded.is_file():
        return json.loads(recorded.read_text())
    raise UserError(f"{folder / 'checkpoint_final.pth'} is missing and the record has no {recorded}: the training "
                    f"loss curves of {model.trainer} on {model.dataset.name} are lost. Rerun with --restart.")


def loss_curves(ctx: Context, trained: Trained) -> dict[str, tuple[dict[str, list[float]], dict[str, list[float]]]]:
    """modality -> (method -> training loss per epoch, method -> validation loss per epoch), mean over folds and
    seeds."""
    curves: dict[str, tuple[dict[str, list[list[float]]], dict[str, list[list[float]]]]] = {}
    for key, (_, models) in trained.items():
        method_name, fold, seed = run_key(key)
        for model in models:
            logging = training_logging(ctx.for_seed(seed), model, fold)
            train, val = curves.setdefault(model.dataset.name, ({}, {}))
            if logging.get(model.train_loss_key):
                train.setdefault(method_name, []).append([float(v) for v in logging[model.train_loss_key]])
            if model.val_loss_key and logging.get(model.val_loss_key):
                val.setdefault(method_name, []).append([float(v) for v in logging[model.val_loss_key]])

    def mean(lists: list[list[float]]) -> list[float]:
        n = min(len(v) for v in lists)
        return [sum(v[i] for v in lists) / len(lists) for i in range(n)]

    return {mod: ({m: mean(v) for m, v in train.items()}, {m: mean(v) for m, v in val.items()})
            for mod, (train, val) in curves.items()}
