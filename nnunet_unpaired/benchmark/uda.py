"""Benchmark experiment ``uda``: unsupervised cross-modality adaptation (GLUA, docs/glua.md) between the pair A, B.

The harness (:func:`nnunet_unpaired.benchmark.harness.run_benchmark`) calls :func:`run_settings` with the methods of
kind ``uda`` that were asked for (vanilla first). One setting per adaptation DIRECTION
(``RunOptions.uda_directions``): ``a2b`` adapts from A (labelled source) to B (unlabelled target), ``b2a`` the other
way. Each setting has its own nnU-Net tree (``<result>/uda-<source>-to-<target>/``), planned by ``plan-pair -d
<source> <target>`` (the source is the dataset nnU-Net plans; the target gets its plans with its own normalization),
and in it, for every fold:

- ``vanilla`` trained on the TARGET's labels only: the upper bound;
- ``source-only`` (``nnUNetTrainerSourceOnly``): nnU-Net on the source only, exported to the target's model folder:
  the lower bound (added when it was not asked for: the gap is measured with it);
- GLUA's stage 1 (``nnUNetTrainerGLUAStyle``, the prerequisite of :data:`nnunet_unpaired.training.glua.PREREQUISITES`)
  trained once, before the first method that needs it (``glua``, ``glua-global``);
- the other uda methods asked for (``glua-global``, ``glua-local``, ``glua``), each started on the source.

Only the TARGET's test cases (``imagesTs``/``labelsTs``) are predicted and evaluated: that is what adaptation is for.
The setting's headline table (:func:`headline_markdown`) gives each method's mean Dice on the target, the share of the
lower -> upper gap it closes, ``(dice - lower) / (upper - lower)``, and its training cost with stage 1 counted for
the methods that need it. The report's own cost table (written by the harness) counts each method's own run only.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from nnunet_unpaired.benchmark import report
from nnunet_unpaired.benchmark.config import BASELINE, Context, Dataset, ExperimentInput, ModelRef, say
from nnunet_unpaired.benchmark.costs import median_after_warmup
from nnunet_unpaired.benchmark.data import link_raw, write_splits
from nnunet_unpaired.benchmark.evaluation import evaluate, mean_dice, metrics_file
from nnunet_unpaired.benchmark.planning import plan
from nnunet_unpaired.benchmark.prediction import predict, predicted
from nnunet_unpaired.benchmark.registry import Method
from nnunet_unpaired.benchmark.steps import marker_path
from nnunet_unpaired.benchmark.summary import setting_summary
from nnunet_unpaired.benchmark.training_runs import require_checkpoints, timing_files, train_run
from nnunet_unpaired.errors import UserError
from nnunet_unpaired.training import interface

KIND = "uda"
DIRECTIONS = ("a2b", "b2a")
LOWER_BOUND = "source-only"
UPPER_BOUND = BASELINE
#: the method whose result the issue's target is about, and its ablations
FULL, ABLATIONS = "glua", ("glua-global", "glua-local")
#: the share of the gap the full method should close (issue 6: "at least half")
TARGET_SHARE = 0.5
GLUA_ENV_PREFIX = interface.GLUA_ENV_PREFIX


def stage_method(trainer: str) -> Method:
    """The benchmark's handle on a prerequisite training run (GLUA's stage 1); not a method of its own."""
    name = "glua-style" if trainer == interface.GLUA_STYLE_TRAINER else trainer
    return Method(name, trainer, KIND, f"prerequisite training run ({trainer})")


def prerequisite(method: Method) -> Method | None:
    """The training run ``method`` needs before it (same source, plans, configuration and fold), or None."""
    trainer = interface.PREREQUISITES.get(method.trainer)
    return None if trainer is None else stage_method(trainer)


# ------------------------------------------------------------------------------------------------ what to run


def uda_methods(methods: Sequence[Method], log=say) -> list[Method]:
    """The methods of the experiment: vanilla first, then source-only (added when missing: it is the lower bound of
    the gap), then the others in the order asked for. Methods of other kinds are refused."""
    others = [m.name for m in methods if m.kind != KIND and m.name != UPPER_BOUND]
    if others:
        raise UserError(f"the uda experiment runs methods of kind 'uda' (and vanilla) only; got {', '.join(others)}. "
                        f"Pass those through the benchmark's --methods, which gives each kind its own settings.")
    from nnunet_unpaired.benchmark import registry

    available = registry.load_all()
    chosen = list({m.name: m for m in methods}.values())
    names = [m.name for m in chosen]
    if UPPER_BOUND not in names:
        log(f"adding '{UPPER_BOUND}' to the uda experiment: trained on the target's labels, it is the upper bound")
        chosen.insert(0, available[UPPER_BOUND])
    if LOWER_BOUND not in names:
        log(f"adding '{LOWER_BOUND}' to the uda experiment: the gap each method closes is measured from it")
        chosen.append(available[LOWER_BOUND])
    order = {UPPER_BOUND: 0, LOWER_BOUND: 1}
    return sorted(chosen, key=lambda m: order.get(m.name, 2))


def directions_of(directions: Sequence[str]) -> list[str]:
    unknown = [d for d in directions if d not in DIRECTIONS]
    if unknown:
        raise UserError(f"--uda-directions: unknown direction(s) {', '.join(map(repr, unknown))}; use a2b (A "
                        f"labelled source, B the target) and/or b2a")
    if not directions:
        raise UserError("--uda-directions is empty: nothing to run; pass a2b and/or b2a")
    return list(dict.fromkeys(directions))


def short_name(dataset: Dataset) -> str:
    """``Dataset901_PhantomCT`` -> ``PhantomCT`` (the part after the id)."""
    return dataset.name.split("_", 1)[1] if "_" in dataset.name else dataset.name


def setting_name(source: Dataset, target: Dataset) -> str:
    return f"uda-{short_name(source)}-to-{short_name(target)}"


def direction_context(inp: ExperimentInput, direction: str) -> Context:
    """The setting of one direction: ``ctx.a`` is the SOURCE (planned by plan-pair), ``ctx.b`` the TARGET."""
    source, target = (inp.a, inp.b) if direction == "a2b" else (inp.b, inp.a)
    return Context(inp.spec, inp.options, inp.result, setting_name(source, target), None, source, target, inp.device,
                   inp.log)


# ------------------------------------------------------------------------------------------------------ train


def vanilla_run(ctx: Context, fold: str) -> str:
    return f"{UPPER_BOUND}__{ctx.b.name}__fold_{fold}"


def method_run(method: Method, fold: str) -> str:
    return f"{method.name}__fold_{fold}"


def with_stage_checkpoint(ctx: Context, method: Method, fold: str) -> Method:
    """``method`` with the stage-1 checkpoint of THIS setting named explicitly, so a style checkpoint variable in the
    caller's environment cannot slip another style model into the benchmark."""
    stage = prerequisite(method)
    if stage is None:
        return method
    checkpoint = ctx.model_folder(ctx.a, stage.trainer, fold) / "checkpoint_final.pth"
    variable = interface.GLUA_ENV_STYLE_CHECKPOINT
    return Method(method.name, method.trainer, method.kind, method.description,
                  {**method.env, variable: str(checkpoint)})


def train_stage(ctx: Context, stage: Method, fold: str) -> ModelRef:
    """A prerequisite run (GLUA stage 1) on the source; its own marker, so it runs once per setting and fold."""
    run = method_run(stage, fold)
    train_run(ctx, stage, run, ctx.a, fold)
    model = ModelRef(ctx.a, stage.trainer, run)
    require_checkpoints(ctx, stage, [model], fold)
    return model


def train_uda_method(ctx: Context, method: Method, fold: str) -> ModelRef:
    """Train one method of the experiment; returns the model that predicts the TARGET.

    Vanilla trains on the target's labels; every other method starts on the source and exports the target's model.
    """
    if method.name == UPPER_BOUND:
        run = vanilla_run(ctx, fold)
        train_run(ctx, method, run, ctx.b, fold, model_needed=not predicted(ctx, method, ctx.b, fold))
        model = ModelRef(ctx.b, method.trainer, run)
    else:
        run = method_run(method, fold)
        train_run(ctx, with_stage_checkpoint(ctx, method, fold), run, ctx.a, fold,
                  model_needed=not predicted(ctx, method, ctx.b, fold))
        # the stage-2 trainers log the segmentation term on its own ("train_seg"); their "train_losses" adds the
        # alignment term. The validation loss of these trainers is the SOURCE's: not shown for the target.
        own_step = method.trainer in interface.USES_TARGET_IMAGES
        loss_key = "train_seg" if own_step else "train_losses"
        model = ModelRef(ctx.b, method.trainer, run, loss_key, None)
    require_checkpoints(ctx, method, [model], fold)
    return model


def run_direction(inp: ExperimentInput, direction: str, methods: Sequence[Method]) -> dict:
    """One setting: plan the source with its target, splits, every method on every fold, target test cases, report."""
    ctx = direction_context(inp, direction)
    source, target = ctx.a, ctx.b
    ctx.log(f"== setting {ctx.setting}: {source.name} (labelled source) -> {target.name} (unlabelled target)")
    link_raw(ctx)
    planned = plan(ctx)
    if any(fold != "all" for fold in inp.options.folds):
        write_splits(ctx)
    trained: dict[tuple, tuple[Method, list[ModelRef]]] = {}
    stages: dict[tuple, ModelRef] = {}  # (stage trainer, fold, seed) -> its model
    for seed in inp.options.seeds:
        run_ctx = ctx.for_seed(seed)
        for fold in inp.options.folds:
            for method in methods:
                stage = prerequisite(method)
                # stage 1's model is needed only by a stage 2 still to train (not by a restored, predicted one)
                if (stage is not None and (stage.trainer, fold, seed) not in stages
                        and not predicted(run_ctx, method, ctx.b, fold)):
                    ctx.log(f"    {method.name} needs {stage.trainer} (stage 1) first")
                    stages[(stage.trainer, fold, seed)] = train_stage(run_ctx, stage, fold)
                model = train_uda_method(run_ctx, method, fold)
                predict(run_ctx, method, model, fold)
                evaluate(run_ctx, method, model, fold)
                trained[(method.name, fold, seed)] = (method, [model])
    numbers = method_numbers(ctx, methods, inp.options.folds)
    headline = headline_markdown(target.name, numbers, translation_phase_cost(ctx, inp.options.folds))
    title = f"uda {short_name(source)} -> {short_name(target)}"
    note = (f"Unsupervised adaptation from {source.name} (labelled source) to {target.name} (target: images only). "
            f"`{UPPER_BOUND}` is trained on {target.name}'s labels alone (upper bound); `{LOWER_BOUND}` and the GLUA "
            f"methods are trained on {source.name}'s labels with {target.name}'s training images (no target labels) "
            f"and exported to {target.name}'s model folder. Only {target.name}'s test cases are predicted. "
            f"plan-pair planned {source.name}; {target.name} shares its plans with its own normalization.")
    glua_env = sorted(k for k in os.environ if k.startswith(GLUA_ENV_PREFIX)
                      and k != interface.GLUA_ENV_STYLE_CHECKPOINT)
    if glua_env:
        note += (" GLUA settings taken from the environment of this run: "
                 + ", ".join(f"{k}={os.environ[k]}" for k in glua_env) + ".")
    return setting_summary(ctx, trained, title, note, planned, headline=headline)


def run_settings(inp: ExperimentInput) -> list[dict]:
    """The harness's entry point for kind ``uda``: one setting summary per direction."""
    directions = directions_of(inp.options.uda_directions)
    methods = uda_methods(inp.methods, inp.log)
    return [run_direction(inp, direction, methods) for direction in directions]


# ------------------------------------------------------------------------------------------------ the headline


@dataclass(frozen=True)
class MethodNumbers:
    """What the headline table shows of one method (means over the folds run)."""

    method: str
    dice: float  # mean over structures of the mean Dice over target test cases and folds
    wall_seconds: float  # training wall time per fold, stage 1 included where needed
    seconds_per_iteration: float  # median per run (after warm-up), stage 1 added where needed
    load_average: float  # the machine's 1-minute load average at start and end of the training runs
    with_stage: str | None = None  # the prerequisite counted in the cost, if any


def _median_seconds(ctx: Context, run: str) -> float:
    records = [json.loads(p.read_text()) for p in timing_files(ctx, run)]
    return median_after_warmup(records)[0]


def method_numbers(ctx: Context, methods: Sequence[Method], folds: Sequence[str]) -> list[MethodNumbers]:
    """Mean target Dice (from the metric files) and training cost (from the step markers and timing files), over the
    folds and seeds run."""
    numbers = []
    contexts = [ctx.for_seed(seed) for seed in ctx.options.seeds]
    for method in methods:
        rows = [row for c in contexts for fold in folds
                for row in report.read_csv(metrics_file(c, method.name, ctx.b, fold))]
        stage = prerequisite(method)
        walls, per_iteration, loads = [], [], []
        for c in contexts:
            for fold in folds:
                runs = [vanilla_run(c, fold) if method.name == UPPER_BOUND else method_run(method, fold)]
                if stage is not None:
                    runs.append(method_run(stage, fold))
                markers = [json.loads(marker_path(c.run_root, f"train__{run}").read_text()) for run in runs]
                walls.append(sum(float(m["seconds"]) for m in markers))
                loads += [float(v) for m in markers for v in m.get("load_average", [])]
                per_iteration.append(sum(_median_seconds(c, run) for run in runs))
        numbers.append(MethodNumbers(method.name, mean_dice(rows, method.name, ctx.b.name),
                                     statistics.fmean(walls), statistics.fmean(per_iteration),
                                     statistics.fmean(loads) if loads else math.nan,
                                     None if stage is None else stage.trainer))
    return numbers


#: what GLUA's stage 1 writes about its translation phase into its model folder (nnunet_unpaired.training.glua_style)
TRANSLATION_COST_FILE = "translation_training.json"


def translation_phase_cost(ctx: Context, folds: Sequence[str]) -> tuple[int, float] | None:
    """``(steps, seconds)`` of GLUA stage 1's translation phase per stage-1 run (mean over the seeds and folds whose
    stage 1 wrote :data:`TRANSLATION_COST_FILE`; a resumed phase adds up its runs), or None when none did."""
    per_run = []
    for c in (ctx.for_seed(seed) for seed in ctx.options.seeds):
        for fold in folds:
            path = c.model_folder(c.a, interface.GLUA_STYLE_TRAINER, fold) / TRANSLATION_COST_FILE
            try:
                runs = json.loads(path.read_text())["runs"]
            except (OSError, ValueError, KeyError):
                continue
            per_run.append((sum(int(r["steps"]) for r in runs), sum(float(r["seconds"]) for r in runs)))
    if not per_run:
        return None
    return round(statistics.fmean(s for s, _ in per_run)), statistics.fmean(t for _, t in per_run)


def gap_closed(dice: float, lower: float, upper: float) -> float:
    """Share of the lower -> upper gap that ``dice`` closes: 0 at the lower bound, 1 at the upper bound (below 0 or
    above 1 outside them); NaN when a value is missing or the upper bound is not above the lower bound."""
    if any(math.isnan(v) for v in (dice, lower, upper)) or upper <= lower:
        return math.nan
    return (dice - lower) / (upper - lower)


def _cell(value: float, text: str) -> str:
    return "n/a" if math.isnan(value) else text


def headline_markdown(target: str, numbers: Sequence[MethodNumbers],
                      translation: tuple[int, float] | None = None) -> str:
    """The experiment's summary table of one setting, the cost of GLUA stage 1's translation phase on its own
    (``translation``: steps and seconds, see :func:`translation_phase_cost`), and the verdict on issue 6's target
    when all methods ran."""
    by_name = {n.method: n for n in numbers}
    lower = by_name[LOWER_BOUND].dice if LOWER_BOUND in by_name else math.nan
    upper = by_name[UPPER_BOUND].dice if UPPER_BOUND in by_name else math.nan
    base = by_name.get(UPPER_BOUND)
    lines = [f"Mean Dice on the target {target}'s test cases (mean over structures of the mean over cases and "
             f"folds). Gap closed = (Dice - {LOWER_BOUND}) / ({UPPER_BOUND} - {LOWER_BOUND}): 0 = no better than "
             f"training on the source alone, 1 = as good as training on the target's labels. Training cost per fold; "
             f"for the methods that need GLUA's stage 1 its run is INCLUDED here (wall time and s / iteration are "
             f"stage 1 + stage 2; the report's cost table below counts stage 2 only). 'load': the machine's mean "
             f"1-minute load average at the start and end of the training runs (a shared machine slows everything).",
             "", "| method | Dice (target) | gap closed | training wall time | s / iteration | × vanilla | load |",
             "|---|---|---|---|---|---|---|"]
    for n in numbers:
        closed = gap_closed(n.dice, lower, upper)
        if n.method == UPPER_BOUND:
            closed_text = "1 (upper bound)"
        elif n.method == LOWER_BOUND:
            closed_text = "0 (lower bound)"
        else:
            closed_text = _cell(closed, f"{closed:.2f}")
        ratio = n.seconds_per_iteration / base.seconds_per_iteration if base is not None else math.nan
        label = n.method + (" (+ stage 1)" if n.with_stage else "")
        lines.append(f"| {label} | {_cell(n.dice, f'{n.dice:.3f}')} | {closed_text} | {n.wall_seconds / 60:.1f} min "
                     f"| {_cell(n.seconds_per_iteration, f'{n.seconds_per_iteration:.3g}')} "
                     f"| {_cell(ratio, f'{ratio:.2f}')} | {_cell(n.load_average, f'{n.load_average:.1f}')} |")
    if translation is not None:
        steps, seconds = translation
        lines += ["", (f"GLUA stage 1's translation phase on its own (inside the '+ stage 1' wall times, not in their "
                       f"s / iteration): {steps} steps in {seconds / 60:.1f} min per stage-1 run "
                       f"({seconds / max(1, steps):.3g} s / step).")]
    if not upper > lower:
        lines += ["", f"The upper bound ({UPPER_BOUND}, {upper:.3f}) is not above the lower bound ({LOWER_BOUND}, "
                      f"{lower:.3f}): there is no gap to close, so no share is given."]
    elif FULL in by_name and all(a in by_name for a in ABLATIONS):
        full = by_name[FULL].dice
        closed = gap_closed(full, lower, upper)
        beats = {a: full - by_name[a].dice for a in ABLATIONS}
        met = closed >= TARGET_SHARE and all(d > 0 for d in beats.values())
        lines += ["", (f"Target (issue 6): {FULL} closes at least {TARGET_SHARE:.0%} of the gap and beats "
                       f"{' and '.join(ABLATIONS)}: **{'met' if met else 'not met'}** ({FULL} closes {closed:.0%}; "
                       + ", ".join(f"Δ Dice vs {a} {d:+.3f}" for a, d in beats.items()) + ").")]
    return "\n".join(lines)

