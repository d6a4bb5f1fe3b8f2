"""Step 7 of a benchmark: the report of a setting (tables and plots, :mod:`nnunet_unpaired.benchmark.report`) and the
``results.md`` of the whole benchmark."""

from __future__ import annotations

import json
import math
import os
import platform
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from nnunet_unpaired.benchmark import report
from nnunet_unpaired.benchmark.comparison import comparison_markdown
from nnunet_unpaired.benchmark.config import BASELINE, BenchmarkSpec, Context, Dataset, RunOptions, Trained, run_key
from nnunet_unpaired.benchmark.costs import collect_costs, loss_curves, mean
from nnunet_unpaired.benchmark.evaluation import mean_dice, metrics_file
from nnunet_unpaired.benchmark.mechanism import mechanism_file, mechanism_markdown
from nnunet_unpaired.benchmark.registry import JOINT

#: the baselines every method is compared with in ``results.md``, where they ran (vanilla-dropout: the usual
#: competitor of a missing-modality method, issue 17)
COMPARISON_BASELINES = (BASELINE, JOINT, "source-only", "vanilla-dropout")


def write_setting_report(ctx: Context, trained: Trained) -> dict:
    """Report of one setting from the metric files, timing files and checkpoints of the methods, folds and seeds run
    now."""
    rows, costs, mechanism = [], [], []
    for key, (method, models) in trained.items():
        method_name, fold, seed = run_key(key)
        run_ctx = ctx.for_seed(seed)
        for model in models:
            rows += report.read_csv(metrics_file(run_ctx, method_name, model.dataset, fold))
        costs.append({**collect_costs(run_ctx, method, models, fold), "seed": seed})
        if mechanism_file(run_ctx, method_name, fold).is_file():
            mechanism.append(json.loads(mechanism_file(run_ctx, method_name, fold).read_text()))
    out = ctx.folder("report")
    written = report.write_report(rows, out, costs)
    for modality, (train, val) in loss_curves(ctx, trained).items():
        if train:
            safe = re.sub(r"[^A-Za-z0-9_-]", "_", modality)
            figure = report.training_loss_figure(train, val)
            figure.axes[0].set_title(f"Training loss ({modality})")
            written[f"training_loss_{safe}.png"] = report.save_figure(figure, out / f"training_loss_{safe}.png")
    return {"rows": rows, "costs": costs, "files": written, "mechanism": mechanism}


def step_times(markers: Sequence[Mapping]) -> str:
    """One sentence: the wall time of a setting's steps, summed from their markers, by kind of step."""
    groups: dict[str, float] = {}
    for marker in markers:
        kind = str(marker.get("step", "")).split("__")[0]
        groups[kind] = groups.get(kind, 0.0) + float(marker.get("seconds", 0.0))
    parts = ", ".join(f"{kind} {seconds / 60:.1f}" for kind, seconds in groups.items())
    text = (f"Wall time of this setting's steps: {sum(groups.values()) / 60:.1f} min ({parts} min), summed from the "
            f"step markers (a step resumed after an interruption counts its last attempt only).")
    if markers and all("cpu_seconds" in m for m in markers):
        cpu = sum(float(m["cpu_seconds"]) for m in markers)
        text += (f" CPU time (user + system, all processes of the steps): {cpu / 60:.1f} min, so an otherwise idle "
                 f"machine with {os.cpu_count()} cores needs at least {cpu / 60 / (os.cpu_count() or 1):.1f} min.")
    return text


def machine_description(device: str) -> str:
    cores = os.cpu_count()
    text = f"{platform.system()} {platform.machine()}, {cores} CPU cores"
    if device == "cuda":
        import torch

        text += f", GPU {torch.cuda.get_device_name(0)}"
    else:
        text += ", no GPU (training and inference on the CPU)"
    return text


def summary_markdown(spec: BenchmarkSpec, options: RunOptions, result: Path, device: str, a: Dataset, b: Dataset,
                     settings: Sequence[dict]) -> str:
    """``results.md`` of the whole benchmark: what ran, a headline table, then each setting's report."""
    budget_text = (f"{spec.epochs or 'nnU-Net default (1000)'} epochs x {spec.iters or 'default (250)'} training "
                   f"iterations per epoch ({spec.val_iters or 'default (50)'} validation iterations), "
                   f"mirroring {'off (training and test time)' if spec.no_mirroring else 'on (nnU-Net default)'}")
    plan = settings[0]["plan"] if settings else {}
    if spec.phantom is not None:
        data = (f"the synthetic phantom (nnunet_unpaired/phantom.py), {spec.phantom['num_train']} training + "
                f"{spec.phantom['num_test']} test cases per modality")
    else:
        data = f"the raw datasets {a.name} and {b.name}"
    lines = [f"# Benchmark: {a.name} (A) + {b.name} (B), {spec.configuration}", "",
             f"- data: {data} (test cases: imagesTs/labelsTs, never trained on); an experiment (uda, semi, "
             f"multichannel) derives its own data from it or brings its own, described in its section",
             f"- budget, the same for every method: {budget_text}",
             (f"- network (first setting): batch size {plan.get('batch_size')}, patch {plan.get('patch_size')}, "
              f"features per stage {plan.get('features_per_stage')}"),
             f"- folds: {', '.join(options.folds)}; machine: {machine_description(device)}; device: {device}",
             f"- result folder: `{result.name}`", ""]
    lines += ["## Summary: mean Dice over structures", "",
              ("Mean over the structures of the mean Dice over test cases and folds; Δ = method - vanilla. Training "
               "wall time is the sum over the method's training runs (vanilla: one per dataset); 'load' is the "
               "machine's mean 1-minute load average at the start and end of those runs."), ""]
    methods = list(dict.fromkeys(str(c["method"]) for s in settings for c in s["costs"]))
    methods.sort(key=lambda m: m != BASELINE)
    header = ["setting", "modality"] + methods
    body = []
    for s in settings:
        for modality in dict.fromkeys(str(r["modality"]) for r in s["rows"]):
            base = mean_dice(s["rows"], BASELINE, modality)
            cells = []
            for m in methods:
                value = mean_dice(s["rows"], m, modality)
                cell = "n/a" if math.isnan(value) else f"{value:.3f}"
                if m != BASELINE and not (math.isnan(value) or math.isnan(base)):
                    cell += f" (Δ {value - base:+.3f})"
                cells.append(cell)
            body.append([s["title"], modality] + cells)
        walls: dict[str, float] = {}
        loads: dict[str, list[float]] = {}
        for c in s["costs"]:
            walls[str(c["method"])] = walls.get(str(c["method"]), 0.0) + float(c["training_wall_seconds"])
            if math.isfinite(float(c.get("training_load_average", math.nan))):
                loads.setdefault(str(c["method"]), []).append(float(c["training_load_average"]))
        cells = []
        for m in methods:
            cell = f"{walls[m] / 60:.1f} min" if m in walls else "n/a"
            cells.append(cell + (f" (load {mean(loads[m]):.1f})" if loads.get(m) else ""))
        body.append([s["title"], "training wall time"] + cells)
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body] + [""]
    lines += ["## Paired differences with 95% intervals", "",
              (f"Seeds: {', '.join('unseeded' if x is None else str(x) for x in options.seeds)}; every method trained "
               "once per seed and fold with the same seeds, splits and budget. A case's score is its Dice averaged "
               "over structures; Δ = method - baseline, averaged over the (seed and fold) runs and test cases both "
               "have; the interval is a percentile bootstrap (scipy.stats.bootstrap, 9999 resamples) resampling runs "
               "and cases independently (cases only for a single run). An interval that contains zero is no "
               "detectable difference. The noise floor is the seed-to-seed spread of the baseline's mean Dice. "
               "See nnunet_unpaired/benchmark/comparison.py."), ""]
    for s in settings:
        lines += [f"### {s['title']}", ""]
        lines += comparison_markdown(s["rows"], methods, COMPARISON_BASELINES)
        if s.get("mechanism"):
            lines += ["#" + line if line.startswith("###") else line for line in mechanism_markdown(s["mechanism"])]
    for s in settings:
        lines += [f"## Setting: {s['title']}", "", s["note"], ""]
        if s.get("headline"):
            lines += [s["headline"], ""]
        lines += [step_times(s["steps"]), ""]
        text = s["markdown"].split("\n")
        if text and text[0].startswith("# "):
            text = text[1:]
        lines += [("#" + line if line.startswith("#") else line) for line in text]
        lines += ["", "Plots: " + ", ".join(f"`{s['name']}/report/{f}`" for f in sorted(s["files"])
                                             if f.endswith(".png")), ""]
    return "\n".join(lines)


def setting_summary(ctx: Context, trained: Trained, title: str, note: str, planned: Mapping, headline: str = ""
                    ) -> dict:
    """Write the setting's report and return its summary (what ``results.md`` shows of it). ``headline``: markdown
    an experiment puts first in its section (e.g. its own summary table)."""
    ctx.log(f"[report] {ctx.setting}")
    made = write_setting_report(ctx, trained)
    files = sorted((ctx.root / "steps").glob("*.json")) + sorted(ctx.root.glob("seed_*/steps/*.json"))
    markers = [json.loads(p.read_text()) for p in files]
    return {"name": ctx.setting, "steps": markers, "title": title, "note": note, "plan": planned,
            "rows": made["rows"], "costs": made["costs"], "files": made["files"], "headline": headline,
            "mechanism": made["mechanism"],
            "markdown": (ctx.root / "report" / "results.md").read_text()}
