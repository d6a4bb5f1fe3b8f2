"""Step 5 of a benchmark: per-case, per-structure metrics of a prediction folder against ``labelsTs``, and the mean
Dice the summaries show."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from nnunet_unpaired.benchmark import report
from nnunet_unpaired.benchmark.config import Context, Dataset, ModelRef
from nnunet_unpaired.benchmark.prediction import prediction_folder
from nnunet_unpaired.benchmark.registry import Method
from nnunet_unpaired.benchmark.steps import run_step


def metrics_file(ctx: Context, method: str, dataset: Dataset, fold: str) -> Path:
    return ctx.run_root / "metrics" / f"{method}__{dataset.name}__fold_{fold}.csv"


def evaluate(ctx: Context, method: Method, model: ModelRef, fold: str) -> dict:
    from nnunet_unpaired.benchmark.metrics import evaluate_folder

    def action(log_file: Path) -> dict:
        rows = evaluate_folder(prediction_folder(ctx, method, model, fold), model.dataset.raw / "labelsTs",
                               model.dataset.labels)
        rows = [{"method": method.name, "modality": model.dataset.name, "fold": fold, "seed": ctx.seed, **row}
                for row in rows]
        path = metrics_file(ctx, method.name, model.dataset, fold)
        path.parent.mkdir(parents=True, exist_ok=True)
        report.write_csv(rows, path)
        dice = [float(r["dice"]) for r in rows if r["dice"] == r["dice"]]
        mean = sum(dice) / len(dice) if dice else math.nan
        ctx.log(f"    {method.name} on {model.dataset.name}, fold {fold}: mean Dice {mean:.3f} over "
                f"{len({r['case'] for r in rows})} test cases")
        return {"method": method.name, "dataset": model.dataset.name, "fold": fold, "mean_dice": mean,
                "file": str(path)}

    return run_step(ctx.run_root, f"evaluate__{method.name}__{model.dataset.name}__fold_{fold}", action, ctx.log)


def mean_dice(rows: Sequence[Mapping], method: str, modality: str) -> float:
    """Mean over structures of the per-structure mean Dice (NaN left out)."""
    per_structure: dict[str, list[float]] = {}
    for r in rows:
        if r["method"] == method and r["modality"] == modality and r["dice"] is not None and r["dice"] == r["dice"]:
            per_structure.setdefault(str(r["structure"]), []).append(float(r["dice"]))
    means = [sum(v) / len(v) for v in per_structure.values() if v]
    return sum(means) / len(means) if means else math.nan
