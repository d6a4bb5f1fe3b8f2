"""Benchmark experiment of kind ``semi`` (CMC): semi-supervised two-modality training against its baselines.

``nnunet_unpaired benchmark --methods cmc`` runs, through :func:`run_settings` (the harness's ``EXPERIMENTS["semi"]``),
one SETTING per labelled share P (``--semi-labelled``, default 10 and 20 %): ``semi-<P>``, the benchmark's two
datasets A, B as semi-supervised copies with P % of their training cases labelled (``make-semisupervised``, seed
:data:`LABEL_SEED`; the other cases hold only the ignore label). The earlier setting "B misaligned" (every training
case of B moved by a random rigid transform) was removed: A and B are different patients (unpaired), so it misaligned
nothing cross-modal and only shifted B's training poses against its test poses; the meaningful version, a paired mode
with one channel misaligned against the other, is not built yet.

In each setting, with one budget (the benchmark's) and the same test cases (the source's ``imagesTs``/``labelsTs``,
hard-linked into the copies):

- ``vanilla``: nnU-Net on the labelled cases of each modality alone (kind ``single``, two runs);
- ``joint`` (``nnUNetTrainerUnpairedJoint``): one network on the labelled cases of both modalities; always run here
  as the second baseline (it has kind ``unpaired``: asking for it with ``--methods`` would also run the pair
  settings);
- ``cmc`` and every other ``semi`` method asked for: the labelled AND the unlabelled cases of both modalities.

Data and splits (why ONE dataset pair per setting, with per-method splits): every method trains on the same two
semi-supervised copies, so all share one ``plan-pair`` (one fingerprint, patch size and normalization; one planning
per setting instead of two for a separate labelled-only pair) and the same test cases. Right before each training run
the copies get that method's ``splits_final.json`` (:func:`semi_splits`, :func:`write_method_splits`): the training
list is the labelled cases for every method; the validation list is the labelled cases for the baselines and every
training case for a ``semi`` method. nnU-Net's vanilla and joint trainers train on the training list only, so the
baselines never draw an unlabelled (all-ignore) case into a batch, and validate on their training cases (like fold
``all``); ``nnUNetTrainerCMC`` moves the unlabelled validation cases into its training set (its documented rule,
``nnUNetTrainerCMC.do_split``), so it learns from both and validates on the labelled cases. Validation during
training only decides ``checkpoint_best`` and the logged pseudo Dice; the benchmark predicts with
``checkpoint_final`` and scores only the held-out test cases. Every numbered fold holds the same split (folds 0-4 are
repeats: nnU-Net does not seed training); fold ``all`` is refused (it would train the baselines on all-ignore cases).

Each setting has its own nnU-Net tree (``<result>/<setting>/nnunet``); its raw datasets are written by the setting
itself (step ``data``) from the source datasets, which are only read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from nnunet_unpaired.benchmark import registry, report
from nnunet_unpaired.benchmark.comparison import Difference, paired_difference
from nnunet_unpaired.benchmark.config import Context, Dataset, ExperimentInput, ModelRef
from nnunet_unpaired.benchmark.costs import collect_costs
from nnunet_unpaired.benchmark.evaluation import evaluate, mean_dice, metrics_file
from nnunet_unpaired.benchmark.planning import plan
from nnunet_unpaired.benchmark.prediction import predict, predicted
from nnunet_unpaired.benchmark.registry import Method
from nnunet_unpaired.benchmark.steps import marker_path, run_step, write_json_atomic
from nnunet_unpaired.benchmark.summary import setting_summary
from nnunet_unpaired.benchmark.training_runs import require_checkpoints, train_method, train_run, train_unpaired
from nnunet_unpaired.errors import UserError

BASELINE = report.BASELINE
#: the second baseline of every semi setting (registry name; kind ``unpaired``)
JOINT = "joint"
#: dataset ids of the copies inside a setting's own nnU-Net tree: A's and B's semi-supervised copies
SEMI_IDS = (911, 912)
#: ``make-semisupervised --seed``: the same labelled cases in every setting of one labelled share
LABEL_SEED = 0
#: folds in a semi setting's splits_final.json (all the same split: repeats)
NUM_FOLDS = 5
#: the target of issue 17, checked at this labelled share (:func:`target_line`): on every modality, ``cmc`` above
#: vanilla and above joint (paired difference, 95 % interval above zero), and above ``cmc-labelled-only`` in mean Dice
TARGET_PERCENT = 10
TARGET_METHOD, TARGET_BASELINES, TARGET_ABLATION = "cmc", (BASELINE, JOINT), "cmc-labelled-only"


# ------------------------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class SemiSetting:
    percent: int

    @property
    def name(self) -> str:
        return f"semi-{self.percent:g}"

    @property
    def title(self) -> str:
        return f"semi {self.percent:g} % labelled"


def semi_settings(percents: Sequence[float]) -> list[SemiSetting]:
    """The settings, one per labelled share, ordered by share (a share given twice runs once)."""
    if not percents:
        raise UserError("the semi experiment needs at least one labelled share (--semi-labelled 10 20)")
    for percent in percents:
        if not 0 < percent < 100:
            raise UserError(f"--semi-labelled {percent}: a labelled share is a percentage between 0 and 100 "
                            f"(exclusive), e.g. 10")
    return [SemiSetting(percent) for percent in sorted(dict.fromkeys(percents))]


def semi_folds(folds: Sequence[str]) -> list[str]:
    """The benchmark's folds, checked: numbered folds 0..NUM_FOLDS-1 (repeats of the one semi split)."""
    bad = [f for f in folds if not (str(f).isdigit() and int(f) < NUM_FOLDS)]
    if bad:
        raise UserError(f"--folds {' '.join(map(str, bad))}: the semi experiment (cmc) trains numbered folds 0-"
                        f"{NUM_FOLDS - 1}, each the same split (labelled cases for training; repeats of an unseeded "
                        f"training). Fold 'all' would train the baselines on the unlabelled cases. Use e.g. --folds 0.")
    return [str(f) for f in folds]


def semi_methods(methods: Sequence[Method], log: Callable[[str], None]) -> list[Method]:
    """vanilla, joint, then the semi methods asked for (in their order)."""
    vanilla = [m for m in methods if m.name == BASELINE] or [registry.get(BASELINE)]
    semi = [m for m in methods if m.kind == "semi"]
    if not semi:
        raise UserError("the semi experiment got no method of kind 'semi' (e.g. --methods cmc)")
    log(f"semi experiment: '{JOINT}' runs in every semi setting as a baseline (the labelled cases of both modalities)")
    return [vanilla[0], registry.get(JOINT), *semi]


def semi_splits(labelled: Sequence[str], unlabelled: Sequence[str], semi: bool, num_folds: int = NUM_FOLDS
                ) -> list[dict[str, list[str]]]:
    """splits_final.json of a semi copy for one method: every fold trains on the labelled cases; it validates on the
    labelled cases (baselines) or, for a ``semi`` method, on every training case (nnUNetTrainerCMC moves the unlabelled
    validation cases into its training cases and validates on the labelled ones)."""
    if not labelled:
        raise UserError("a semi setting needs at least one labelled training case")
    split = {"train": sorted(labelled), "val": sorted([*labelled, *unlabelled]) if semi else sorted(labelled)}
    return [{k: list(v) for k, v in split.items()} for _ in range(num_folds)]


# ----------------------------------------------------------------------------------------------------- the data


def _semi_dataset(folder: Path) -> Dataset:
    """A semi copy as the harness's Dataset; its structures leave out background and the ignore label (which the
    test label maps do not hold and the evaluation must not score)."""
    from nnunetv2.utilities.dataset_name_id_conversion import convert_dataset_name_to_id

    from nnunet_unpaired.semisupervised import IGNORE_NAME

    labels = json.loads((folder / "dataset.json").read_text())["labels"]
    labels = {k: v for k, v in labels.items() if k != IGNORE_NAME and not (isinstance(v, int) and v == 0)}
    return Dataset(name=folder.name, id=convert_dataset_name_to_id(folder.name), raw=folder.resolve(), labels=labels)


def dataset_names(inp: ExperimentInput, setting: SemiSetting) -> dict[str, str]:
    """Folder names of a setting's copies: ``a`` and ``b`` (the semi copies of A and B)."""
    from nnunet_unpaired.semisupervised import target_name

    return {"a": target_name(inp.a.name, SEMI_IDS[0], setting.percent, False),
            "b": target_name(inp.b.name, SEMI_IDS[1], setting.percent, False)}


def prepare_setting_data(inp: ExperimentInput, setting: SemiSetting, root: Path) -> tuple[Dataset, Dataset]:
    """Step ``data``: the setting's raw datasets in ``<root>/nnunet/nnUNet_raw``."""
    from nnunet_unpaired.semisupervised import MARKER_KEY, make_semisupervised, number_labelled

    raw = root / "nnunet" / "nnUNet_raw"
    names = dataset_names(inp, setting)
    for source in (inp.a, inp.b):
        count = json.loads((source.raw / "dataset.json").read_text()).get("numTraining", 0)
        if count and number_labelled(int(count), setting.percent) >= int(count):
            raise UserError(f"--semi-labelled {setting.percent:g}: {source.name} has {count} training cases, so "
                            f"{setting.percent:g} % labels all of them and none is left unlabelled. Choose a smaller "
                            f"share.")

    def action(log_file: Path) -> dict:
        lines: list[str] = []
        info: dict[str, object] = {}
        raw.mkdir(parents=True, exist_ok=True)
        for key, source in (("a", inp.a.raw), ("b", inp.b.raw)):
            record = make_semisupervised(str(source), str(raw / names[key]), setting.percent, LABEL_SEED,
                                         log=lines.append)
            info[key] = {"dataset": names[key], "source": record["source"], "labelled": record["labelled"],
                         "unlabelled": record["unlabelled"]}
        log_file.write_text("\n".join(lines) + "\n")
        return info

    # the copies are rebuilt (seeded: the same choice) for a result folder restored from its record
    data = run_step(root, "data", action, inp.log, products=[raw / names["a"], raw / names["b"]])
    for key in ("a", "b"):
        record = json.loads((raw / names[key] / "dataset.json").read_text())[MARKER_KEY]
        if record["labelled"] != data[key]["labelled"]:
            raise UserError(f"{raw / names[key]} no longer holds the data of this setting's step 'data'; rerun with "
                            f"--restart")
    return _semi_dataset(raw / names["a"]), _semi_dataset(raw / names["b"])


def write_method_splits(ctx: Context, method: Method) -> dict[str, list[dict[str, list[str]]]]:
    """Both datasets' splits_final.json for ``method`` (:func:`semi_splits` from the labelled/unlabelled record of each
    copy), written right before each of its training runs (also a resumed one): nnU-Net reads the file when a
    training starts and again for its final validation, and the setting's training runs one after the other."""
    from nnunet_unpaired.semisupervised import MARKER_KEY

    written = {}
    for dataset in (ctx.a, ctx.b):
        record = json.loads((dataset.raw / "dataset.json").read_text())[MARKER_KEY]
        splits = semi_splits(record["labelled"], record["unlabelled"], method.kind == "semi")
        path = ctx.nnunet["nnUNet_preprocessed"] / dataset.name / "splits_final.json"
        if not path.is_file() or json.loads(path.read_text()) != splits:
            write_json_atomic(path, splits)
        written[dataset.name] = splits
    return written


# ------------------------------------------------------------------------------------------------------ training


def train_semi(ctx: Context, method: Method, fold: str) -> list[ModelRef]:
    """A ``semi`` method: one run on A with partner B (from plan-pair) that writes the model folders of both."""
    run = f"{method.name}__fold_{fold}"
    train_run(ctx, method, run, ctx.a, fold,
              model_needed=not all(predicted(ctx, method, d, fold) for d in (ctx.a, ctx.b)))
    models = [ModelRef(ctx.a, method.trainer, run, "train_seg_A", None),
              ModelRef(ctx.b, method.trainer, run, "train_seg_B", None)]
    require_checkpoints(ctx, method, models, fold)
    return models


def train_any(ctx: Context, method: Method, fold: str) -> list[ModelRef]:
    if method.kind == "semi":
        return train_semi(ctx, method, fold)
    if method.kind == "unpaired":  # joint: no mechanism probe in this experiment (the pair settings measure it)
        models = train_unpaired(ctx, method, fold, mechanism=False)
        require_checkpoints(ctx, method, models, fold)
        return models
    return train_method(ctx, method, fold)  # vanilla (single)


# ------------------------------------------------------------------------------------------------------ headline


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if math.isfinite(value) and math.isfinite(base) and base > 0 else "n/a"


def headline_table(rows: Sequence[Mapping], costs: Sequence[Mapping], methods: Sequence[str],
                   modalities: Sequence[str], target: bool = False) -> str:
    """Markdown: mean Dice per modality with Δ vs vanilla, training wall time and s/iteration with ratios; with
    ``target``, the line of :func:`target_line` (where ``cmc`` ran)."""
    walls: dict[str, float] = {}
    per_iteration: dict[str, list[float]] = {}
    for c in costs:
        name = str(c["method"])
        walls[name] = walls.get(name, 0.0) + float(c["training_wall_seconds"])
        if math.isfinite(float(c["seconds_per_iteration"])):
            per_iteration.setdefault(name, []).append(float(c["seconds_per_iteration"]))
    speed = {m: sum(v) / len(v) for m, v in per_iteration.items() if v}
    header = ["method", *(f"Dice {m}" for m in modalities), "training wall time", "vs vanilla", "s / iteration",
              "vs vanilla"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    base_wall, base_speed = walls.get(BASELINE, math.nan), speed.get(BASELINE, math.nan)
    for method in methods:
        cells = [method]
        for modality in modalities:
            value, base = mean_dice(rows, method, modality), mean_dice(rows, BASELINE, modality)
            cell = "n/a" if math.isnan(value) else f"{value:.3f}"
            if method != BASELINE and not (math.isnan(value) or math.isnan(base)):
                cell += f" (Δ {value - base:+.3f})"
            cells.append(cell)
        wall, per_it = walls.get(method, math.nan), speed.get(method, math.nan)
        cells += [f"{wall / 60:.1f} min" if math.isfinite(wall) else "n/a", _ratio(wall, base_wall),
                  f"{per_it:.3f}" if math.isfinite(per_it) else "n/a", _ratio(per_it, base_speed)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", ("Mean Dice over the structures (each the mean over test cases and folds); Δ = method - vanilla. "
                   "Training wall time: all of a method's training runs (vanilla: one per modality). s / iteration: "
                   "median after the first epoch; one iteration is one batch of one modality for vanilla, one labelled "
                   "batch of each modality for joint, and a labelled plus an unlabelled batch of each modality for "
                   "cmc.")]
    if target and TARGET_METHOD in methods:
        lines += ["", target_line(rows, modalities, ablation=TARGET_ABLATION in methods)]
    return "\n".join(lines)


def _dice(value: float) -> str:
    return f"{value:.3f}" if math.isfinite(value) else "n/a"


def _interval(d: Difference) -> str:
    if not math.isfinite(d.mean):
        return "n/a"
    if not math.isfinite(d.low):
        return f"{d.mean:+.3f} [interval n/a: {d.n_runs} run(s) x {d.n_cases} case(s)]"
    return f"{d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}]"


def target_line(rows: Sequence[Mapping], modalities: Sequence[str], ablation: bool = True) -> str:
    """The target of issue 17 for :data:`TARGET_METHOD` (``cmc``) at :data:`TARGET_PERCENT` % labels, met when on
    every modality (1) its paired difference to vanilla and to joint (:func:`comparison.paired_difference`, the
    numbers of results.md's comparison table: case Dice matched on run and case, 95 % bootstrap interval) has an
    interval entirely above zero (an interval that cannot be computed does not count), and (2) with ``ablation``
    (``cmc-labelled-only`` ran), ``cmc-labelled-only`` has a lower mean Dice (:func:`mean_dice`, the headline table's
    number) than ``cmc``."""
    method = TARGET_METHOD
    met = True
    parts = []
    for modality in modalities:
        cells = []
        for baseline in TARGET_BASELINES:
            d = paired_difference(rows, method, baseline, modality)
            met &= math.isfinite(d.low) and d.low > 0
            cells.append(f"Δ vs {baseline} {_interval(d)}")
        if ablation:
            mine, theirs = mean_dice(rows, method, modality), mean_dice(rows, TARGET_ABLATION, modality)
            lower = math.isfinite(mine) and math.isfinite(theirs) and theirs < mine
            met &= lower
            cells.append(f"mean Dice {TARGET_ABLATION} {_dice(theirs)} {'<' if lower else 'not <'} {method} "
                         f"{_dice(mine)}")
        parts.append(f"{modality}: " + ", ".join(cells))
    ablation_text = f"; {TARGET_ABLATION} has a lower mean Dice than {method}" + ("" if ablation else
                                                                               " (not checked: it was not run)")
    return (f"Target of issue 17 ({method} at {TARGET_PERCENT} % labels, on every modality: the paired difference "
            f"to {' and to '.join(TARGET_BASELINES)} has its 95 % interval entirely above zero{ablation_text}): "
            f"{'met' if met else 'not met'}. Δ = {method} - baseline over the matched (run, case) Dice, as in the "
            f"comparison table; " + "; ".join(parts) + ".")


# ------------------------------------------------------------------------------------------------------ settings


def _cmc_settings(ctx: Context, methods: Sequence[Method], fold: str) -> list[str]:
    """The resolved CMC settings each semi method recorded in its model folder's plans.json."""
    found = []
    for method in methods:
        if method.kind != "semi":
            continue
        plans = ctx.model_folder(ctx.a, method.trainer, fold).parent / "plans.json"
        try:
            settings = json.loads(plans.read_text()).get("cmc")
        except (OSError, ValueError):
            settings = None
        if settings:
            found.append(f"{method.name}: " + ", ".join(f"{k} {v}" for k, v in settings.items()))
    return found


def setting_note(setting: SemiSetting, data: Mapping, a: Dataset, b: Dataset) -> str:
    return (f"{a.name} (A) and {b.name} (B): copies of the benchmark's datasets with {setting.percent:g} % of the "
            f"training cases labelled (make-semisupervised, seed {LABEL_SEED}; A: {', '.join(data['a']['labelled'])}; "
            f"B: {', '.join(data['b']['labelled'])}), the other training cases hold only the ignore label. Every "
            f"method trains on the labelled cases of its split; vanilla (one model per modality) and joint see only "
            f"those (and validate on them), CMC's split adds the unlabelled cases as validation cases, which its "
            f"trainer moves into training (it validates on the labelled ones). Test cases: the source datasets' "
            f"imagesTs/labelsTs, unchanged.")


def run_setting(inp: ExperimentInput, setting: SemiSetting, methods: Sequence[Method], folds: Sequence[str]) -> dict:
    """One semi setting: data, plan-pair, splits, every method on every fold, predict, evaluate, report."""
    root = inp.result / setting.name
    a, b = prepare_setting_data(inp, setting, root)
    ctx = Context(inp.spec, inp.options, inp.result, setting.name, None, a, b, inp.device, inp.log)
    for folder in ctx.nnunet.values():
        folder.mkdir(parents=True, exist_ok=True)
    planned = plan(ctx)
    trained: dict[tuple, tuple[Method, list[ModelRef]]] = {}
    for seed in inp.options.seeds:
        run_ctx = ctx.for_seed(seed)
        for fold in folds:
            for method in methods:
                write_method_splits(ctx, method)
                models = train_any(run_ctx, method, fold)
                for model in models:
                    predict(run_ctx, method, model, fold)
                    evaluate(run_ctx, method, model, fold)
                trained[(method.name, fold, seed)] = (method, models)
    rows = [row for (name, fold, seed), (_, models) in trained.items() for model in models
            for row in report.read_csv(metrics_file(ctx.for_seed(seed), name, model.dataset, fold))]
    costs = [collect_costs(ctx.for_seed(seed), method, models, fold)
             for (_, fold, seed), (method, models) in trained.items()]
    headline = headline_table(rows, costs, [m.name for m in methods], [a.name, b.name],
                              target=setting.percent == TARGET_PERCENT)
    settings = _cmc_settings(ctx.for_seed(inp.options.seeds[0]), methods, folds[0])
    if settings:
        headline += "\n\nCMC settings (from the model folder's plans.json): " + "; ".join(settings) + "."
    data = json.loads(marker_path(ctx.root, "data").read_text())
    return setting_summary(ctx, trained, setting.title, setting_note(setting, data, a, b), planned,
                                   headline=headline)


def run_settings(inp: ExperimentInput) -> list[dict]:
    """The semi experiment (the harness calls this for kind ``semi``): one summary per setting."""
    folds = semi_folds(inp.options.folds)
    settings = semi_settings(inp.options.semi_percent)
    methods = semi_methods(inp.methods, inp.log)
    inp.log(f"semi settings: {', '.join(s.name for s in settings)}; methods {', '.join(m.name for m in methods)}; "
            f"folds {', '.join(folds)}")
    summaries = []
    for setting in settings:
        inp.log(f"== setting {setting.name}")
        summaries.append(run_setting(inp, setting, methods, folds))
    return summaries
