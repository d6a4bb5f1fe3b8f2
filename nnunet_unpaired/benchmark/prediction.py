"""Step 4 of a benchmark: predict the held-out test cases (``imagesTs``) with the stock ``nnUNetv2_predict``."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from nnunet_unpaired.benchmark import steps
from nnunet_unpaired.benchmark.config import PLANS_NAME, Context, Dataset, ModelRef
from nnunet_unpaired.benchmark.data import test_cases
from nnunet_unpaired.benchmark.registry import Method
from nnunet_unpaired.benchmark.steps import run_step, tool


def prediction_folder(ctx: Context, method: Method, model: ModelRef, fold: str) -> Path:
    return ctx.run_root / "predictions" / method.name / model.dataset.name / f"fold_{fold}"


def predict_step(method_name: str, dataset: Dataset, fold: str) -> str:
    """The name of the step that predicts ``dataset``'s test cases with a method's model."""
    return f"predict__{method_name}__{dataset.name}__fold_{fold}"


def predicted(ctx: Context, method: Method, dataset: Dataset, fold: str) -> bool:
    """Whether the test cases of ``dataset`` were predicted with ``method``'s model (its step marker exists)."""
    return steps.marker_path(ctx.run_root, predict_step(method.name, dataset, fold)).is_file()


def predict(ctx: Context, method: Method, model: ModelRef, fold: str) -> dict:
    """The stock ``nnUNetv2_predict`` on the dataset's imagesTs; seconds per case = wall time / number of cases."""

    def action(log_file: Path) -> dict:
        out = prediction_folder(ctx, method, model, fold)
        if out.exists():
            shutil.rmtree(out)  # leftovers of an interrupted attempt
        images = model.dataset.raw / "imagesTs"
        cases = test_cases(model.dataset)
        cmd = [tool("nnUNetv2_predict"), "-i", str(images), "-o", str(out), "-d", model.dataset.name,
               "-c", ctx.spec.configuration, "-f", fold, "-tr", model.trainer, "-p", PLANS_NAME,
               "-device", ctx.device, "--disable_progress_bar"]
        if ctx.options.predict_processes is not None:
            cmd += ["-npp", str(ctx.options.predict_processes[0]), "-nps", str(ctx.options.predict_processes[1])]
        start = time.perf_counter()
        steps.run_command(cmd, ctx.env(method), log_file, ctx.log)
        seconds = time.perf_counter() - start
        return {"method": method.name, "dataset": model.dataset.name, "fold": fold, "cases": len(cases),
                "wall_seconds": seconds, "seconds_per_case": seconds / max(1, len(cases))}

    return run_step(ctx.run_root, predict_step(method.name, model.dataset, fold), action, ctx.log)
