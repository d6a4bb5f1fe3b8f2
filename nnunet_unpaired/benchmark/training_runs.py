"""Step 3 of a benchmark: one training run (``nnUNetv2_train``) with the shared budget, per-iteration timing and resume,
and the training of the two pair kinds (``single``: one model per modality; ``unpaired``: one run writing both)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

from nnunet_unpaired.benchmark import steps
from nnunet_unpaired.benchmark.config import PLANS_NAME, Context, Dataset, ModelRef
from nnunet_unpaired.benchmark.mechanism import mechanism_step
from nnunet_unpaired.benchmark.prediction import predicted
from nnunet_unpaired.benchmark.registry import Method
from nnunet_unpaired.benchmark.steps import run_step, tool
from nnunet_unpaired.errors import UserError
from nnunet_unpaired.training import interface


def timing_files(ctx: Context, run: str) -> list[Path]:
    folder = ctx.run_root / "timing"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if re.fullmatch(re.escape(run) + r"(\.resume\d+)?\.json", p.name))


def train_run(ctx: Context, method: Method, run: str, dataset: Dataset, fold: str, model_needed: bool = True
              ) -> dict:
    """``nnUNetv2_train <dataset> <configuration> <fold> -tr <trainer>`` with the shared budget and timing.

    A run interrupted before its marker was written continues from its latest checkpoint (``--c``); its iteration
    times then come from both attempts (one timing file each). ``model_needed``: a later step still needs the model,
    so a finished run whose ``checkpoint_final.pth`` is missing (a result folder restored from its record,
    :mod:`nnunet_unpaired.benchmark.archive`) trains again; False when everything that reads the model is done.
    """

    def action(log_file: Path) -> dict:
        folder = ctx.model_folder(dataset, method.trainer, fold)
        resume = (folder / "checkpoint_latest.pth").is_file() or (folder / "checkpoint_final.pth").is_file()
        previous = timing_files(ctx, run)
        name = f"{run}.resume{len(previous)}.json" if resume and previous else f"{run}.json"
        timing = ctx.run_folder("timing") / name
        env = ctx.env(method)
        env[interface.ENV_TIMING] = str(timing)
        cmd = [tool("nnUNetv2_train"), dataset.name, ctx.spec.configuration, fold, "-tr", method.trainer,
               "-p", PLANS_NAME, "-device", ctx.device]
        if resume:
            cmd.append("--c")
            ctx.log(f"    continuing the interrupted training in {folder}")
        steps.run_command(cmd, env, log_file, ctx.log)
        return {"method": method.name, "dataset": dataset.name, "fold": fold, "resumed": resume}

    products = [ctx.model_folder(dataset, method.trainer, fold) / "checkpoint_final.pth"] if model_needed else []
    return run_step(ctx.run_root, f"train__{run}", action, ctx.log, products=products)


def require_checkpoints(ctx: Context, method: Method, models: Sequence[ModelRef], fold: str) -> None:
    """Every model is there, except one whose test cases were predicted already (a result folder restored from its
    record, :mod:`nnunet_unpaired.benchmark.archive`: its numbers come from the record)."""
    for model in models:
        checkpoint = ctx.model_folder(model.dataset, model.trainer, fold) / "checkpoint_final.pth"
        if not checkpoint.is_file() and not predicted(ctx, method, model.dataset, fold):
            raise UserError(f"method {method.name!r}: training finished but {checkpoint} is missing. Look into "
                            f"{ctx.run_root / 'logs'}; rerun with --restart if the folder was changed by hand.")


def train_single(ctx: Context, method: Method, fold: str) -> list[ModelRef]:
    """Kind ``single``: one model per modality, each trained on that modality alone, with the same budget."""
    models = []
    for dataset in (ctx.a, ctx.b):
        run = f"{method.name}__{dataset.name}__fold_{fold}"
        train_run(ctx, method, run, dataset, fold, model_needed=not predicted(ctx, method, dataset, fold))
        models.append(ModelRef(dataset, method.trainer, run))
    return models


def train_unpaired(ctx: Context, method: Method, fold: str, mechanism: bool = True) -> list[ModelRef]:
    """Kind ``unpaired``: one run on A with partner B (from plan-pair); it writes model folders for A and B.

    The training loss curve of each modality is the trainer's per-modality segmentation term (``train_seg_A`` /
    ``train_seg_B``, logged by the joint trainer and its subclasses); no per-modality validation loss exists.
    ``mechanism``: the caller measures the shared network's mechanism probe afterwards (the pair settings do, unless
    ``--no-mechanism``), so a restored run whose probe is not recorded yet still needs its model; an experiment
    without the probe (semi) passes False.
    """
    run = f"{method.name}__fold_{fold}"
    measured = (not (mechanism and ctx.options.mechanism)
                or steps.marker_path(ctx.run_root, mechanism_step(method.name, fold)).is_file())
    done = measured and all(predicted(ctx, method, d, fold) for d in (ctx.a, ctx.b))
    train_run(ctx, method, run, ctx.a, fold, model_needed=not done)
    return [ModelRef(ctx.a, method.trainer, run, "train_seg_A", None),
            ModelRef(ctx.b, method.trainer, run, "train_seg_B", None)]


#: kind -> function that trains a method of that kind for one fold (in a setting of the A/B pair) and returns one
#: model per modality to predict.
KIND_RUNNERS: dict[str, Callable[[Context, Method, str], list[ModelRef]]] = {
    "single": train_single,
    "unpaired": train_unpaired,
}


def train_method(ctx: Context, method: Method, fold: str) -> list[ModelRef]:
    if method.kind not in KIND_RUNNERS:
        raise NotImplementedError(f"benchmark method {method.name!r} has kind {method.kind!r}, which has no runner in "
                                  f"KIND_RUNNERS (nnunet_unpaired/benchmark/training_runs.py)")
    models = KIND_RUNNERS[method.kind](ctx, method, fold)
    require_checkpoints(ctx, method, models, fold)
    return models
