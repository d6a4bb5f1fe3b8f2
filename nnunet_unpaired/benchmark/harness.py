"""Benchmark harness: every method against vanilla nnU-Net on one dataset pair, same data, splits and budget.

``nnunet_unpaired benchmark`` (see :mod:`nnunet_unpaired.benchmark.cli`) calls :func:`run_benchmark`, which runs
these steps with nnU-Net's own commands as subprocesses, one module each:

1. :mod:`~nnunet_unpaired.benchmark.data`: the phantom (written once into the result folder) or the user's two raw
   datasets, linked read-only into the benchmark's own nnU-Net folder tree, one tree per setting; ``splits_final.json``
   for both datasets, nnU-Net's own seeded 5-fold split (or the dataset's own); in the scarce-label setting B's
   training list of every fold is cut to N cases (validation lists unchanged);
2. :mod:`~nnunet_unpaired.benchmark.planning`: ``nnunet_unpaired plan-pair`` (one shared plan, each modality its own
   normalization);
3. :mod:`~nnunet_unpaired.benchmark.training_runs`: train each method with the function of its KIND
   (:data:`~nnunet_unpaired.benchmark.training_runs.KIND_RUNNERS`), under the same budget (the environment variables of
   :mod:`nnunet_unpaired.training.interface`) and with per-iteration timing;
4. :mod:`~nnunet_unpaired.benchmark.prediction`: the held-out test cases (``imagesTs``) of both modalities with the
   stock ``nnUNetv2_predict``;
5. :mod:`~nnunet_unpaired.benchmark.evaluation`: metrics against ``labelsTs``
   (:func:`nnunet_unpaired.benchmark.metrics.evaluate_folder`);
6. :mod:`~nnunet_unpaired.benchmark.costs`: training seconds per iteration, peak memory, inference seconds per case,
   training losses;
7. :mod:`~nnunet_unpaired.benchmark.summary`: :func:`nnunet_unpaired.benchmark.report.write_report` per setting, plus
   ``results.md`` over all.

:mod:`~nnunet_unpaired.benchmark.config` holds what they share (spec, options, context);
:mod:`~nnunet_unpaired.benchmark.steps` the resumable steps and the result folder.

Folder layout (``<result>`` = ``<output>/<A>__<B>__<configuration>__<YYYY-MM-DD>``)::

    <result>/benchmark.json            what determines the numbers; a rerun with other values is refused
    <result>/phantom_raw/              the phantom's raw datasets (phantom only; its marker and log in steps/, logs/)
    <result>/<setting>/nnunet/         nnUNet_raw (links), nnUNet_preprocessed, nnUNet_results of this setting
    <result>/<setting>/steps/          one marker per finished step (JSON: seconds, finish time, step results)
    <result>/<setting>/logs/           the full output of every command, one file per step
    <result>/<setting>/timing/         per-iteration training times written by the trainers
    <result>/<setting>/predictions/    <method>/<dataset>/fold_<k>/
    <result>/<setting>/metrics/        <method>__<dataset>__fold_<k>.csv
    <result>/<setting>/report/         results.csv, results.md, costs.csv, PNG plots
    <result>/results.md                summary and every setting's tables (what docs/benchmarks.md includes)

Settings are ``full-label`` and ``scarce-b<N>`` (B trains on N labelled cases); each has its own nnU-Net tree because
the model folders of one trainer would otherwise collide.

Resumability: every step writes its marker atomically after it succeeded and is skipped when the marker exists. A
training interrupted before its marker continues from nnU-Net's latest checkpoint (``--c``). Reports are cheap and
are always rewritten. ``restart=True`` deletes the result folder first. ``--archive DIR`` keeps the folder's small,
irreplaceable part (markers, logs, timing, metrics, loss curves) in DIR after every method and every few minutes
while one trains, and restores it into a new result folder, so a benchmark can continue on another machine
(:mod:`~nnunet_unpaired.benchmark.archive`); ``--archive-checkpoints`` adds the checkpoints of unfinished trainings,
which then continue there instead of starting over.

Kinds: a kind runner is a function ``(ctx, method, fold) -> list[ModelRef]`` that trains (through
:func:`nnunet_unpaired.benchmark.training_runs.train_run`, which handles markers, budget and timing) and returns the
model to predict for each modality. Add a kind by adding a function to ``training_runs.KIND_RUNNERS``, or an
experiment (a kind with settings of its own) as one module plus one line in :data:`EXPERIMENTS`."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from nnunet_unpaired.benchmark import archive, registry
from nnunet_unpaired.benchmark.config import (
    BASELINE,
    FULL_LABEL,
    PHANTOM_IDS,
    BenchmarkSpec,
    Context,
    ExperimentInput,
    ModelRef,
    RunOptions,
    Trained,
    say,
)
from nnunet_unpaired.benchmark.data import link_raw, prepare_data, user_datasets, write_splits
from nnunet_unpaired.benchmark.evaluation import evaluate
from nnunet_unpaired.benchmark.mechanism import measure as measure_mechanism
from nnunet_unpaired.benchmark.planning import plan
from nnunet_unpaired.benchmark.prediction import predict
from nnunet_unpaired.benchmark.registry import Method
from nnunet_unpaired.benchmark.steps import prepare_result_folder, result_folder
from nnunet_unpaired.benchmark.summary import setting_summary, summary_markdown
from nnunet_unpaired.benchmark.training_runs import KIND_RUNNERS, train_method
from nnunet_unpaired.errors import UserError

#: kind -> module of an EXPERIMENT: a kind whose methods need settings of their own (other data, other splits,
#: other baselines) rather than the full-label/scarce-label settings of the pair. The module defines
#: ``run_settings(inp: ExperimentInput) -> list[dict]`` (one setting summary each, see :func:`setting_summary`).
EXPERIMENTS: dict[str, str] = {
    "uda": "nnunet_unpaired.benchmark.uda",
    "semi": "nnunet_unpaired.benchmark.semi",
    "multichannel": "nnunet_unpaired.benchmark.multichannel",
}


def experiment_runner(kind: str) -> Callable[[ExperimentInput], list[dict]] | None:
    """The ``run_settings`` function of an experiment kind, None when the kind has none (or its module is absent)."""
    import importlib

    module_name = EXPERIMENTS.get(kind)
    if module_name is None:
        return None
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        return None
    return getattr(module, "run_settings", None)


def check_supported(method: Method) -> None:
    if method.kind not in KIND_RUNNERS and experiment_runner(method.kind) is None:
        raise NotImplementedError(
            f"benchmark method {method.name!r} (trainer {method.trainer}) has kind {method.kind!r}, which the "
            f"benchmark harness cannot run yet (it runs kinds: {', '.join(sorted(KIND_RUNNERS))}). Add a runner for "
            f"{method.kind!r} to KIND_RUNNERS in nnunet_unpaired/benchmark/training_runs.py (or an experiment module "
            f"to EXPERIMENTS in nnunet_unpaired/benchmark/harness.py).")


def resolve_methods(names: Sequence[str] | None, log: Callable[[str], None] = say) -> list[Method]:
    """The methods to run, vanilla first; default: every registered method of a kind the harness runs.

    Vanilla is always added, and so are the baselines (:attr:`Method.baselines`) of the pair methods asked for (the
    experiments add their own, each for its own settings)."""
    available = registry.load_all()
    if names is None:
        methods = [m for m in available.values() if m.kind in KIND_RUNNERS]
    else:
        methods = [registry.get(n) for n in dict.fromkeys(names)]
        for method in methods:
            check_supported(method)
    needed = [BASELINE] + [b for m in methods if m.kind in KIND_RUNNERS for b in m.baselines]
    for name in dict.fromkeys(needed):
        if name not in {m.name for m in methods}:
            log(f"adding '{name}': " + ("every method is compared with it" if name == BASELINE else
                                       f"a baseline of {', '.join(m.name for m in methods if name in m.baselines)}"))
            methods.append(available[name])
    return sorted(methods, key=lambda m: m.name != BASELINE)


def pair_methods(methods: Sequence[Method]) -> list[Method]:
    """The methods of the pair settings (full-label, scarce-label): kinds with a KIND_RUNNERS entry. Vanilla alone
    runs them only when no experiment method was asked for."""
    mine = [m for m in methods if m.kind in KIND_RUNNERS]
    if all(m.name == BASELINE for m in mine) and any(m.kind not in KIND_RUNNERS for m in methods):
        return []
    return mine


def experiment_methods(methods: Sequence[Method]) -> dict[str, list[Method]]:
    """kind -> its methods with vanilla first, for every experiment kind among ``methods``."""
    vanilla = [m for m in methods if m.name == BASELINE]
    kinds = dict.fromkeys(m.kind for m in methods if m.kind not in KIND_RUNNERS)
    return {kind: vanilla + [m for m in methods if m.kind == kind] for kind in kinds}


def settings_of(options: RunOptions) -> list[tuple[str, int | None]]:
    settings = [(FULL_LABEL, None)] if options.full_label else []
    settings += [(f"scarce-b{n}", n) for n in dict.fromkeys(options.scarce_b)]
    if not settings:
        raise UserError("nothing to run: no full-label setting and no --scarce-b")
    for _, n in settings:
        if n is not None and n < 1:
            raise UserError(f"--scarce-b {n}: need at least 1 labelled case")
    return settings


def parse_fold(fold: str) -> str:
    if fold != "all" and not fold.isdigit():
        raise UserError(f"fold {fold!r} is neither a number nor 'all'")
    return fold


def train_predict_evaluate(ctx: Context, methods: Sequence[Method], folds: Sequence[str]) -> Trained:
    """Train every method on every fold and seed (its kind's runner), predict its models' test cases and evaluate
    them. Seeds are the outer loop, so an interrupted benchmark has complete seeds (every method) to compare."""
    trained: dict[tuple, tuple[Method, list[ModelRef]]] = {}
    for seed in ctx.options.seeds:
        run_ctx = ctx.for_seed(seed)
        if seed is not None:
            ctx.log(f"-- seed {seed}")
        for fold in folds:
            for method in methods:
                models = train_method(run_ctx, method, fold)
                for model in models:
                    predict(run_ctx, method, model, fold)
                    evaluate(run_ctx, method, model, fold)
                if ctx.options.mechanism:
                    measure_mechanism(run_ctx, method, models, fold)  # one shared network only (kind unpaired)
                trained[(method.name, fold, seed)] = (method, models)
                save_record(ctx.result, ctx.options, ctx.log)
    return trained


def run_pair_setting(ctx: Context, methods: Sequence[Method], folds: Sequence[str]) -> dict:
    """One setting of the pair (full-label or scarce-label B): plan, splits, every method, report."""
    link_raw(ctx)
    planned = plan(ctx)
    # fold 'all' trains on every training case and needs no split (nor the 5 cases a 5-fold split needs)
    splits = write_splits(ctx) if any(fold != "all" for fold in folds) else {}
    trained = train_predict_evaluate(ctx, methods, folds)
    a, b, scarce = ctx.a, ctx.b, ctx.scarce_b
    if scarce is None:
        title, note = "full-label", "Both modalities train on all their labelled training cases of the fold."
    else:
        chosen = splits.get(b.name, {}).get("train_cases", [])
        shown = "; ".join(f"fold {f}: {', '.join(chosen[int(f)])}" for f in folds if f.isdigit()
                          and int(f) < len(chosen))
        title = f"scarce-label B (N={scarce})"
        note = (f"{b.name} (B) trains on only {scarce} labelled case(s) per fold ({shown}); {a.name} (A) keeps "
                f"all of its training cases; validation and test cases are unchanged. Vanilla-B and every other "
                f"method see the same {scarce} labelled B case(s).")
    return setting_summary(ctx, trained, title, note, planned)


def save_record(result: Path, options: RunOptions, log: Callable[[str], None]) -> None:
    """With ``--archive``: the result folder's record (:mod:`nnunet_unpaired.benchmark.archive`) saved there."""
    if options.archive is not None:
        archive.save(result, Path(options.archive), log, checkpoints=options.archive_checkpoints)


def run_benchmark(spec: BenchmarkSpec, options: RunOptions, log: Callable[[str], None] = say) -> Path:
    """Run (or resume) a benchmark; returns the result folder (its ``results.md`` holds the tables)."""
    import torch

    start = time.perf_counter()
    folds = tuple(parse_fold(str(f)) for f in options.folds)
    options = replace(options, folds=folds)
    settings = settings_of(options)
    if "all" in folds and any(n is not None for _, n in settings):
        raise UserError("--scarce-b needs numbered folds: fold 'all' trains on every case and ignores the split")
    methods = resolve_methods(options.methods, log)
    device = options.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if spec.datasets is not None:
        names = user_datasets(spec.datasets)
        spec = replace(spec, datasets=names)
    else:
        from nnunet_unpaired.phantom import dataset_folder_name

        names = (dataset_folder_name(PHANTOM_IDS[0], "CT"), dataset_folder_name(PHANTOM_IDS[1], "MR"))
    result = result_folder(spec, options, names)
    chosen = pair_methods(methods)
    experiments = experiment_methods(methods)
    runs = [s for s, _ in settings] if chosen else []
    log(f"benchmark of {', '.join(m.name for m in methods)} on {names[0]} + {names[1]} ({spec.configuration}), "
        f"folds {', '.join(folds)}, settings {', '.join(runs + [f'{k} experiment' for k in experiments])}, "
        f"device {device}")
    log(f"result folder: {result}")
    if options.archive is not None:
        if options.restart and (Path(options.archive) / "benchmark.json").is_file():
            raise UserError(f"--restart with --archive {options.archive}, which holds the record of a benchmark: "
                            f"delete that folder too to start over, or choose another --archive")
        if not options.restart:
            archive.restore(Path(options.archive), result, log)
    prepare_result_folder(result, spec, options.restart, log)
    save_record(result, options, log)
    with contextlib.ExitStack() as stack:
        if options.archive is not None:
            stack.enter_context(archive.Autosave(result, Path(options.archive), log, options.archive_checkpoints))
        text = run_all(spec, options, result, settings, chosen, experiments, folds, device, log)
    tmp = result / f".results.md.tmp{os.getpid()}"
    tmp.write_text(text)
    os.replace(tmp, result / "results.md")
    save_record(result, options, log)
    log(f"benchmark finished in {(time.perf_counter() - start) / 60:.1f} min: {result / 'results.md'}")
    return result


def run_all(spec: BenchmarkSpec, options: RunOptions, result: Path, settings: list[tuple[str, int | None]],
            chosen: Sequence[Method],
            experiments: dict[str, list[Method]], folds: Sequence[str], device: str,
            log: Callable[[str], None]) -> str:
    """Every setting of the pair and every experiment; returns the text of ``results.md``."""
    a, b = prepare_data(spec, result, log)
    summaries = []
    for setting, scarce in (settings if chosen else []):
        log(f"== setting {setting}")
        ctx = Context(spec, options, result, setting, scarce, a, b, device, log)
        summaries.append(run_pair_setting(ctx, chosen, folds))
    for kind, kind_methods in experiments.items():
        log(f"== experiment {kind}: {', '.join(m.name for m in kind_methods)}")
        runner = experiment_runner(kind)
        summaries += runner(ExperimentInput(spec, options, result, a, b, kind_methods, device, log))
        save_record(result, options, log)
    return summary_markdown(spec, options, result, device, a, b, summaries)
