"""Benchmark harness: every method against vanilla nnU-Net on one dataset pair, same data, splits and budget.

``nnunet_unpaired benchmark`` (see :mod:`nnunet_unpaired.benchmark.cli`) calls :func:`run_benchmark`, which runs
these steps with nnU-Net's own commands as subprocesses:

1. prepare data: the phantom (written once into the result folder) or the user's two raw datasets, linked read-only
   into the benchmark's own nnU-Net folder tree, one tree per setting;
2. plan: ``nnunet_unpaired plan-pair`` (one shared plan, each modality its own normalization);
3. splits: ``splits_final.json`` for both datasets, nnU-Net's own seeded 5-fold split (or the dataset's own); in
   the scarce-label setting B's training list of every fold is cut to N cases (validation lists unchanged);
4. train each method with the function of its KIND (:data:`KIND_RUNNERS`), under the same budget (environment
   variables of :mod:`nnunet_unpaired.training.budget`) and with per-iteration timing;
5. predict the held-out test cases (``imagesTs``) of both modalities with the stock ``nnUNetv2_predict``;
6. evaluate against ``labelsTs`` (:func:`nnunet_unpaired.benchmark.metrics.evaluate_folder`);
7. collect costs (training seconds per iteration, peak memory, inference seconds per case) and training losses;
8. report (:func:`nnunet_unpaired.benchmark.report.write_report` per setting, plus ``results.md`` over all).

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
are always rewritten. ``restart=True`` deletes the result folder first.

Kinds: a kind runner is a function ``(ctx, method, fold) -> list[ModelRef]`` that trains (through
:func:`train_run`, which handles markers, budget and timing) and returns the model to predict for each modality.
Add a kind by adding a function to :data:`KIND_RUNNERS`.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from nnunet_unpaired.benchmark import registry, report
from nnunet_unpaired.benchmark.registry import Method
from nnunet_unpaired.errors import UserError
from nnunet_unpaired.training import budget

BASELINE = report.BASELINE
PHANTOM_IDS = (901, 902)
PLANS_NAME = "nnUNetPlans"
#: the seed nnU-Net itself uses for its 5-fold split (nnUNetTrainer.do_split)
SPLIT_SEED = 12345
#: seed of the choice of the N labelled B cases in the scarce-label setting
SCARCE_SEED = 0
FULL_LABEL = "full-label"
FOLDER_FORMAT_VERSION = 1


# ------------------------------------------------------------------------------------------------ configuration


def say(message: str) -> None:
    """The default progress output: stdout, flushed (the benchmark often runs under nohup into a file)."""
    print(message, flush=True)


@dataclass(frozen=True)
class Preset:
    """Defaults of ``--preset``; explicit options override them."""

    name: str
    description: str
    configuration: str
    epochs: int | None  # None: nnU-Net's default (1000)
    iters: int | None  # None: 250
    val_iters: int | None  # None: 50
    no_mirroring: bool
    max_features: int | None  # None: nnU-Net's planned widths
    batch_size: int | None  # None: nnU-Net's planned batch size
    num_train: int = 10  # phantom training cases per modality
    num_test: int = 4  # phantom held-out test cases per modality
    #: nnU-Net environment variables (e.g. worker counts), used unless the caller's environment sets them
    env: tuple[tuple[str, str], ...] = ()
    predict_processes: tuple[int, int] | None = None  # nnUNetv2_predict -npp -nps; None: nnU-Net's defaults


PRESETS: dict[str, Preset] = {
    "cpu-small": Preset(
        "cpu-small", "2D phantom, small network, short budget (10 x 40 iterations); each experiment in about an "
        "hour or less on 2 CPU cores", configuration="2d", epochs=10, iters=40, val_iters=4, no_mirroring=True,
        max_features=32, batch_size=8, env=(("nnUNet_n_proc_DA", "2"), ("nnUNet_def_n_proc", "1")),
        predict_processes=(0, 0)),
    "full": Preset(
        "full", "nnU-Net's defaults (1000 epochs x 250 iterations, planned network and batch size), for a GPU",
        configuration="3d_fullres", epochs=None, iters=None, val_iters=None, no_mirroring=False, max_features=None,
        batch_size=None),
}


@dataclass(frozen=True)
class BenchmarkSpec:
    """Everything that determines the numbers of a benchmark (stored in ``benchmark.json``)."""

    datasets: tuple[str, str] | None  # the user's raw datasets A, B (names or ids); None: the phantom
    configuration: str
    epochs: int | None
    iters: int | None
    val_iters: int | None
    no_mirroring: bool
    max_features: int | None
    batch_size: int | None
    phantom: Mapping | None = None  # the phantom's PhantomConfig as a dict (phantom only)

    def as_json(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


def phantom_spec(num_train: int = 10, num_test: int = 4, **overrides) -> dict:
    """``BenchmarkSpec.phantom`` for a phantom with these case counts (other PhantomConfig fields as keywords)."""
    from nnunet_unpaired.phantom import PhantomConfig

    return json.loads(json.dumps(asdict(PhantomConfig(num_train=num_train, num_test=num_test, **overrides))))


def phantom_config(data: Mapping):
    """The PhantomConfig described by ``BenchmarkSpec.phantom``."""
    from nnunet_unpaired.phantom import ModalityGeometry, PhantomConfig

    values = dict(data)
    for key in ("ct", "mr"):
        values[key] = ModalityGeometry(tuple(values[key]["spacing"]), bool(values[key]["flip_xy"]))
    values["field_of_view_mm"] = tuple(values["field_of_view_mm"])
    return PhantomConfig(**values)


@dataclass(frozen=True)
class RunOptions:
    """What to run now; may change between reruns of one benchmark (new folds, methods or settings add work)."""

    output: Path
    folds: tuple[str, ...] = ("0",)
    methods: tuple[str, ...] | None = None  # None: every registered method of a supported kind
    scarce_b: tuple[int, ...] = ()
    full_label: bool = True
    device: str | None = None  # None: cuda when available, else cpu
    restart: bool = False
    date: str | None = None  # YYYY-MM-DD of the result folder; None: today
    env: tuple[tuple[str, str], ...] = ()  # nnU-Net variables for every command (worker counts), see Preset.env
    predict_processes: tuple[int, int] | None = None
    plan_processes: int = 2
    # experiments (kinds with settings of their own, see EXPERIMENTS)
    uda_directions: tuple[str, ...] = ("a2b", "b2a")  # uda: source -> target, a2b = A labelled, B the target
    semi_percent: tuple[int, ...] = (10, 20)  # semi: share of labelled training cases per modality, in percent
    semi_misaligned: bool = True  # semi: also each share with modality B spatially misaligned
    multichannel_dataset: str | None = None  # multichannel: the user's raw multi-channel dataset; None: the phantom


@dataclass(frozen=True)
class Dataset:
    name: str  # nnU-Net folder name, e.g. Dataset901_PhantomCT
    id: int
    raw: Path  # the source raw folder (never written)
    labels: dict[str, object]  # structure -> label value (background left out)


@dataclass(frozen=True)
class ModelRef:
    """One trained model of a method: which dataset's test cases it predicts and where nnU-Net finds it."""

    dataset: Dataset
    trainer: str
    run: str  # the training run that produced it (marker train__<run>, timing/<run>*.json)
    train_loss_key: str = "train_losses"  # key of checkpoint['logging'] for this modality's training loss
    val_loss_key: str | None = "val_losses"


@dataclass
class Context:
    """One setting of one benchmark: its folders, datasets, environment and options."""

    spec: BenchmarkSpec
    options: RunOptions
    result: Path
    setting: str
    scarce_b: int | None
    a: Dataset
    b: Dataset
    device: str
    log: Callable[[str], None] = say

    @property
    def root(self) -> Path:
        return self.result / self.setting

    @property
    def nnunet(self) -> dict[str, Path]:
        return {n: self.root / "nnunet" / n for n in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}

    def folder(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def model_folder(self, dataset: Dataset, trainer: str, fold: str) -> Path:
        return (self.nnunet["nnUNet_results"] / dataset.name
                / f"{trainer}__{PLANS_NAME}__{self.spec.configuration}" / f"fold_{fold}")

    def env(self, method: Method | None = None) -> dict[str, str]:
        """Environment of every nnU-Net command of this setting: own folders, our trainers, the shared budget."""
        from nnunet_unpaired.registration import env_with_trainers

        env = env_with_trainers()
        env.update({k: str(v) for k, v in self.nnunet.items()})
        budget_values = {budget.ENV_EPOCHS: self.spec.epochs, budget.ENV_ITERS: self.spec.iters,
                         budget.ENV_VAL_ITERS: self.spec.val_iters}
        for key, value in budget_values.items():
            if value is None:
                env.pop(key, None)  # nnU-Net's default, whatever the caller's shell says
            else:
                env[key] = str(value)
        if self.spec.no_mirroring:
            env[budget.ENV_NO_MIRRORING] = "1"
        else:
            env.pop(budget.ENV_NO_MIRRORING, None)
        env.pop(budget.ENV_TIMING, None)
        env.update(dict(self.options.env))
        if self.device == "cpu":
            env["nnUNet_compile"] = "false"
            # idle OpenMP threads sleep instead of spinning: on a busy machine spinning threads made every training
            # several times slower (and by how much depended on the load, which distorts the cost ratios)
            env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        env["PYTHONUNBUFFERED"] = "1"
        if method is not None:
            env.update(method.env)
        return env


# ------------------------------------------------------------------------------------------------------- steps


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def write_json_atomic(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)
    return path


def marker_path(root: Path, step: str) -> Path:
    return root / "steps" / f"{step}.json"


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its finished children (the commands a step ran, including
    the worker processes they waited for)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_step(root: Path, step: str, action: Callable[[Path], Mapping | None], log: Callable[[str], None] = say
             ) -> dict:
    """Run ``action(log_file)`` unless the step's marker exists; write the marker (with the action's result, the
    seconds and the finish time) atomically afterwards and return its content."""
    marker = marker_path(root, step)
    if marker.is_file():
        data = json.loads(marker.read_text())
        log(f"[skip] {step} (finished {data.get('finished')}, took {data.get('seconds', 0):.0f} s)")
        return data
    log(f"[start] {step}  ({_now()})")
    log_file = root / "logs" / f"{step}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    start, cpu_start, load_start = time.perf_counter(), _cpu_seconds(), os.getloadavg()[0]
    result = dict(action(log_file) or {})
    seconds = time.perf_counter() - start
    data = {"step": step, **result, "seconds": seconds, "cpu_seconds": _cpu_seconds() - cpu_start,
            "load_average": [load_start, os.getloadavg()[0]], "finished": _now()}
    write_json_atomic(marker, data)
    log(f"[done] {step} in {seconds:.0f} s")
    return data


def tool(name: str) -> str:
    """A console script next to the running interpreter (the venv's nnUNetv2_train, ...), else from PATH."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


_EPOCH_KEYS = {"train_loss": "train_loss", "val_loss": "val_loss", "Pseudo dice": "pseudo Dice"}


def run_command(cmd: Sequence[str], env: Mapping[str, str], log_file: Path, log: Callable[[str], None] = say
                ) -> None:
    """Run a command with its whole output in ``log_file``; show one line per nnU-Net epoch; UserError on failure."""
    log("    $ " + " ".join(str(c) for c in cmd))
    epoch: dict[str, str] = {}
    with open(log_file, "a", buffering=1) as out:  # line-buffered: the log can be followed while it runs
        out.write(f"$ {' '.join(str(c) for c in cmd)}\n")
        out.flush()
        proc = subprocess.Popen([str(c) for c in cmd], env=dict(env), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1)
        for line in proc.stdout:
            out.write(line)
            text = line.split(": ", 1)[1].strip() if re.match(r"^\d{4}-\d\d-\d\d ", line) else line.strip()
            if m := re.match(r"^Epoch (\d+)$", text):
                epoch = {"epoch": m.group(1)}
            for key, label in _EPOCH_KEYS.items():
                if text.startswith(key + " "):
                    epoch[label] = re.sub(r"np\.float\d*\(([^)]*)\)", r"\1", text[len(key):].strip())
            if text.startswith("Epoch time:") and epoch:
                shown = ", ".join(f"{k} {v}" for k, v in epoch.items() if k != "epoch")
                log(f"      epoch {epoch.get('epoch', '?')}: {shown}, {text[len('Epoch time:'):].strip()}")
                epoch = {}
        code = proc.wait()
    if code != 0:
        tail = "".join(log_file.read_text().splitlines(keepends=True)[-30:])
        raise UserError(f"{Path(str(cmd[0])).name} failed with exit code {code}. Full output: {log_file}. "
                        f"Last lines:\n{tail}")


# ----------------------------------------------------------------------------------------------- result folder


def result_folder(spec: BenchmarkSpec, options: RunOptions, names: tuple[str, str]) -> Path:
    date = options.date or datetime.date.today().isoformat()
    if not re.fullmatch(r"\d{4}-\d\d-\d\d", date):
        raise UserError(f"--date {date!r} is not of the form YYYY-MM-DD")
    return Path(options.output).resolve() / f"{names[0]}__{names[1]}__{spec.configuration}__{date}"


def prepare_result_folder(result: Path, spec: BenchmarkSpec, restart: bool, log: Callable[[str], None] = say
                          ) -> None:
    """Create the folder and its ``benchmark.json``; refuse to mix two different benchmarks in one folder."""
    record = result / "benchmark.json"
    if restart and result.exists():
        if not record.is_file():
            raise UserError(f"{result} exists but holds no benchmark.json; refusing to delete a folder the benchmark "
                            f"did not write. Choose another --output.")
        log(f"--restart: deleting {result}")
        shutil.rmtree(result)
    wanted = {"format": FOLDER_FORMAT_VERSION, "spec": spec.as_json()}
    if record.is_file():
        found = json.loads(record.read_text())
        if found != wanted:
            differences = [f"{k}: {found.get('spec', {}).get(k)!r} there, {v!r} now"
                           for k, v in wanted["spec"].items() if found.get("spec", {}).get(k) != v]
            raise UserError(f"{result} holds a benchmark with other settings ({'; '.join(differences) or 'format'}). "
                            f"Rerun with the same options to resume it, pass --restart to start it over, or choose "
                            f"another --output or --date.")
    elif result.exists() and any(result.iterdir()):
        raise UserError(f"{result} exists, is not empty and holds no benchmark.json; choose another --output.")
    else:
        result.mkdir(parents=True, exist_ok=True)
        write_json_atomic(record, wanted)


# ------------------------------------------------------------------------------------------------- 1. datasets


def _dataset(raw_folder: Path, name: str) -> Dataset:
    from nnunetv2.utilities.dataset_name_id_conversion import convert_dataset_name_to_id

    folder = raw_folder / name
    with open(folder / "dataset.json") as f:
        labels = json.load(f)["labels"]
    labels = {k: v for k, v in labels.items() if not (isinstance(v, int) and v == 0)}
    return Dataset(name=name, id=convert_dataset_name_to_id(name), raw=folder.resolve(), labels=labels)


def _check_test_cases(dataset: Dataset) -> None:
    images, labels = dataset.raw / "imagesTs", dataset.raw / "labelsTs"
    if not images.is_dir() or not labels.is_dir() or not any(labels.iterdir()):
        raise UserError(f"{dataset.raw} has no held-out test cases (imagesTs/ and labelsTs/ with files). The "
                        f"benchmark evaluates on them and never on training cases: move some cases of {dataset.name} "
                        f"into imagesTs/labelsTs (the converters do this) and run again.")


def user_datasets(pair: tuple[str, str]) -> tuple[str, str]:
    """Resolve ``--pair A B`` (ids or names) against ``$nnUNet_raw`` to dataset folder names."""
    from nnunet_unpaired.plan_pair import resolve_dataset

    names = (resolve_dataset(pair[0]), resolve_dataset(pair[1]))
    if names[0] == names[1]:
        raise UserError(f"--pair needs two different datasets, got {names[0]} twice")
    return names


def prepare_data(spec: BenchmarkSpec, result: Path, log: Callable[[str], None] = say) -> tuple[Dataset, Dataset]:
    """The two source datasets: the user's (checked for test cases) or the phantom, written once into the result."""
    if spec.datasets is not None:
        raw = Path(os.environ["nnUNet_raw"])
        a, b = (_dataset(raw, name) for name in spec.datasets)
    else:
        from nnunet_unpaired.phantom import dataset_folder_name, write_phantom_pair

        raw = result / "phantom_raw"
        config = phantom_config(spec.phantom)

        def write(log_file: Path) -> dict:
            with open(log_file, "w") as f:
                write_phantom_pair(str(raw), PHANTOM_IDS, config, log=lambda msg: print(msg, file=f))
            return {"raw": str(raw)}

        run_step(result, "phantom", write, log)
        a, b = (_dataset(raw, dataset_folder_name(i, m)) for i, m in zip(PHANTOM_IDS, ("CT", "MR")))
    for dataset in (a, b):
        _check_test_cases(dataset)
    return a, b


def link_raw(ctx: Context) -> None:
    """The setting's nnUNet_raw holds symbolic links to the source datasets (only read by nnU-Net)."""
    raw = ctx.nnunet["nnUNet_raw"]
    for folder in ctx.nnunet.values():
        folder.mkdir(parents=True, exist_ok=True)
    for dataset in (ctx.a, ctx.b):
        link = raw / dataset.name
        if link.is_symlink() and Path(os.readlink(link)) == dataset.raw:
            continue
        if link.is_symlink():
            link.unlink()
        elif link.exists():
            raise UserError(f"{link} exists and is not a link to {dataset.raw}; remove it or pass --restart")
        link.symlink_to(dataset.raw, target_is_directory=True)


# ------------------------------------------------------------------------------------------ 2. plan, 3. splits


def plan(ctx: Context) -> dict:
    def action(log_file: Path) -> dict:
        cmd = [sys.executable, "-m", "nnunet_unpaired.cli", "plan-pair", "-d", ctx.a.name, ctx.b.name,
               "-c", ctx.spec.configuration, "-p", PLANS_NAME, "-np", str(ctx.options.plan_processes)]
        if ctx.spec.max_features is not None:
            cmd += ["--max-features", str(ctx.spec.max_features)]
        if ctx.spec.batch_size is not None:
            cmd += ["--batch-size", str(ctx.spec.batch_size)]
        if ctx.spec.datasets is None:
            cmd.append("--no-verify")  # the phantom is written by this package and checked by its own tests
        run_command(cmd, ctx.env(), log_file, ctx.log)
        plans = json.loads((ctx.nnunet["nnUNet_preprocessed"] / ctx.a.name / f"{PLANS_NAME}.json").read_text())
        conf = plans["configurations"][ctx.spec.configuration]
        return {"batch_size": conf["batch_size"], "patch_size": conf["patch_size"],
                "features_per_stage": conf["architecture"]["arch_kwargs"]["features_per_stage"]}

    return run_step(ctx.root, "plan", action, ctx.log)


def _identifiers(preprocessed: Path) -> list[str]:
    gt = preprocessed / "gt_segmentations"
    with open(preprocessed / "dataset.json") as f:
        ending = json.load(f)["file_ending"]
    return sorted(p.name[: -len(ending)] for p in gt.iterdir() if p.name.endswith(ending))


def default_splits(identifiers: Sequence[str]) -> list[dict[str, list[str]]]:
    """nnU-Net's own 5-fold split (what nnUNetTrainer.do_split would write)."""
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    if len(identifiers) < 5:
        raise UserError(f"{len(identifiers)} training cases are too few for nnU-Net's 5-fold cross-validation. Use "
                        f"more cases, or put your own splits_final.json into the raw dataset folder.")
    return [{"train": [str(c) for c in s["train"]], "val": [str(c) for c in s["val"]]}
            for s in generate_crossval_split(sorted(identifiers), seed=SPLIT_SEED, n_splits=5)]


def scarce_splits(splits: Sequence[Mapping[str, Sequence[str]]], n: int, seed: int = SCARCE_SEED
                  ) -> list[dict[str, list[str]]]:
    """Each fold's training list cut to ``n`` cases (a seeded choice, written sorted); validation lists unchanged."""
    import numpy as np

    result = []
    for index, split in enumerate(splits):
        train = sorted(split["train"])
        if n > len(train):
            raise UserError(f"--scarce-b {n} asks for more labelled cases than fold {index} of B has for training "
                            f"({len(train)}).")
        chosen = np.random.default_rng([seed, index]).choice(len(train), size=n, replace=False)
        result.append({"train": sorted(train[i] for i in chosen), "val": list(split["val"])})
    return result


def write_splits(ctx: Context) -> dict:
    """Both datasets get a ``splits_final.json`` before any training, so every method trains on the same split."""

    def action(log_file: Path) -> dict:
        info = {}
        for dataset in (ctx.a, ctx.b):
            base = ctx.nnunet["nnUNet_preprocessed"] / dataset.name
            path = base / "splits_final.json"
            if path.is_file():  # the dataset's own split (copied from the raw folder by the planner)
                splits = json.loads(path.read_text())
                source = "the dataset's own splits_final.json"
            else:
                splits = default_splits(_identifiers(base))
                source = f"nnU-Net's 5-fold split (seed {SPLIT_SEED})"
            if dataset is ctx.b and ctx.scarce_b is not None:
                splits = scarce_splits(splits, ctx.scarce_b)
                source += f", training lists cut to {ctx.scarce_b} labelled cases (seed {SCARCE_SEED})"
            write_json_atomic(path, splits)
            with open(log_file, "a") as f:
                print(f"{dataset.name}: {source}", file=f)
            info[dataset.name] = {"source": source,
                                  "train_per_fold": [len(s["train"]) for s in splits],
                                  "val_per_fold": [len(s["val"]) for s in splits]}
            if dataset is ctx.b and ctx.scarce_b is not None:
                info[dataset.name]["train_cases"] = [s["train"] for s in splits]
        return info

    return run_step(ctx.root, "splits", action, ctx.log)


# --------------------------------------------------------------------------------------------------- 4. train


def timing_files(ctx: Context, run: str) -> list[Path]:
    folder = ctx.root / "timing"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if re.fullmatch(re.escape(run) + r"(\.resume\d+)?\.json", p.name))


def train_run(ctx: Context, method: Method, run: str, dataset: Dataset, fold: str) -> dict:
    """``nnUNetv2_train <dataset> <configuration> <fold> -tr <trainer>`` with the shared budget and timing.

    A run interrupted before its marker was written continues from its latest checkpoint (``--c``); its iteration
    times then come from both attempts (one timing file each).
    """

    def action(log_file: Path) -> dict:
        folder = ctx.model_folder(dataset, method.trainer, fold)
        resume = (folder / "checkpoint_latest.pth").is_file() or (folder / "checkpoint_final.pth").is_file()
        previous = timing_files(ctx, run)
        timing = ctx.folder("timing") / (f"{run}.resume{len(previous)}.json" if resume and previous else f"{run}.json")
        env = ctx.env(method)
        env[budget.ENV_TIMING] = str(timing)
        cmd = [tool("nnUNetv2_train"), dataset.name, ctx.spec.configuration, fold, "-tr", method.trainer,
               "-p", PLANS_NAME, "-device", ctx.device]
        if resume:
            cmd.append("--c")
            ctx.log(f"    continuing the interrupted training in {folder}")
        run_command(cmd, env, log_file, ctx.log)
        return {"method": method.name, "dataset": dataset.name, "fold": fold, "resumed": resume}

    return run_step(ctx.root, f"train__{run}", action, ctx.log)


def _require_checkpoints(ctx: Context, method: Method, models: Sequence[ModelRef], fold: str) -> None:
    for model in models:
        checkpoint = ctx.model_folder(model.dataset, model.trainer, fold) / "checkpoint_final.pth"
        if not checkpoint.is_file():
            raise UserError(f"method {method.name!r}: training finished but {checkpoint} is missing. Look into "
                            f"{ctx.root / 'logs'}; rerun with --restart if the folder was changed by hand.")


def train_single(ctx: Context, method: Method, fold: str) -> list[ModelRef]:
    """Kind ``single``: one model per modality, each trained on that modality alone, with the same budget."""
    models = []
    for dataset in (ctx.a, ctx.b):
        run = f"{method.name}__{dataset.name}__fold_{fold}"
        train_run(ctx, method, run, dataset, fold)
        models.append(ModelRef(dataset, method.trainer, run))
    return models


def train_unpaired(ctx: Context, method: Method, fold: str) -> list[ModelRef]:
    """Kind ``unpaired``: one run on A with partner B (from plan-pair); it writes model folders for A and B.

    The training loss curve of each modality is the trainer's per-modality segmentation term (``train_seg_A`` /
    ``train_seg_B``, logged by the joint trainer and its subclasses); no per-modality validation loss exists.
    """
    run = f"{method.name}__fold_{fold}"
    train_run(ctx, method, run, ctx.a, fold)
    return [ModelRef(ctx.a, method.trainer, run, "train_seg_A", None),
            ModelRef(ctx.b, method.trainer, run, "train_seg_B", None)]


#: kind -> function that trains a method of that kind for one fold (in a setting of the A/B pair) and returns one
#: model per modality to predict.
KIND_RUNNERS: dict[str, Callable[[Context, Method, str], list[ModelRef]]] = {
    "single": train_single,
    "unpaired": train_unpaired,
}

#: kind -> module of an EXPERIMENT: a kind whose methods need settings of their own (other data, other splits,
#: other baselines) rather than the full-label/scarce-label settings of the pair. The module defines
#: ``run_settings(inp: ExperimentInput) -> list[dict]`` (one setting summary each, see :func:`setting_summary`).
EXPERIMENTS: dict[str, str] = {
    "uda": "nnunet_unpaired.benchmark.uda",
    "semi": "nnunet_unpaired.benchmark.semi",
    "multichannel": "nnunet_unpaired.benchmark.multichannel",
}


@dataclass
class ExperimentInput:
    """What an experiment module gets: the benchmark, the pair (A, B), its methods (vanilla first) and the output."""

    spec: BenchmarkSpec
    options: RunOptions
    result: Path
    a: Dataset
    b: Dataset
    methods: list[Method]  # the experiment's methods of its kind, with vanilla first
    device: str
    log: Callable[[str], None] = say


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
            f"{method.kind!r} to KIND_RUNNERS (or an experiment module to EXPERIMENTS) in "
            f"nnunet_unpaired/benchmark/harness.py.")


def train_method(ctx: Context, method: Method, fold: str) -> list[ModelRef]:
    check_supported(method)
    models = KIND_RUNNERS[method.kind](ctx, method, fold)
    _require_checkpoints(ctx, method, models, fold)
    return models


# ----------------------------------------------------------------------------------------- 5. predict, 6. eval


def prediction_folder(ctx: Context, method: Method, model: ModelRef, fold: str) -> Path:
    return ctx.root / "predictions" / method.name / model.dataset.name / f"fold_{fold}"


def predict(ctx: Context, method: Method, model: ModelRef, fold: str) -> dict:
    """The stock ``nnUNetv2_predict`` on the dataset's imagesTs; seconds per case = wall time / number of cases."""

    def action(log_file: Path) -> dict:
        out = prediction_folder(ctx, method, model, fold)
        if out.exists():
            shutil.rmtree(out)  # leftovers of an interrupted attempt
        images = model.dataset.raw / "imagesTs"
        cases = _test_cases(model.dataset)
        cmd = [tool("nnUNetv2_predict"), "-i", str(images), "-o", str(out), "-d", model.dataset.name,
               "-c", ctx.spec.configuration, "-f", fold, "-tr", model.trainer, "-p", PLANS_NAME,
               "-device", ctx.device, "--disable_progress_bar"]
        if ctx.options.predict_processes is not None:
            cmd += ["-npp", str(ctx.options.predict_processes[0]), "-nps", str(ctx.options.predict_processes[1])]
        start = time.perf_counter()
        run_command(cmd, ctx.env(method), log_file, ctx.log)
        seconds = time.perf_counter() - start
        return {"method": method.name, "dataset": model.dataset.name, "fold": fold, "cases": len(cases),
                "wall_seconds": seconds, "seconds_per_case": seconds / max(1, len(cases))}

    return run_step(ctx.root, f"predict__{method.name}__{model.dataset.name}__fold_{fold}", action, ctx.log)


def _test_cases(dataset: Dataset) -> list[str]:
    with open(dataset.raw / "dataset.json") as f:
        ending = json.load(f)["file_ending"]
    return sorted(p.name[: -len(ending)] for p in (dataset.raw / "labelsTs").iterdir() if p.name.endswith(ending))


def metrics_file(ctx: Context, method: str, dataset: Dataset, fold: str) -> Path:
    return ctx.root / "metrics" / f"{method}__{dataset.name}__fold_{fold}.csv"


def evaluate(ctx: Context, method: Method, model: ModelRef, fold: str) -> dict:
    from nnunet_unpaired.benchmark.metrics import evaluate_folder

    def action(log_file: Path) -> dict:
        rows = evaluate_folder(prediction_folder(ctx, method, model, fold), model.dataset.raw / "labelsTs",
                               model.dataset.labels)
        rows = [{"method": method.name, "modality": model.dataset.name, "fold": fold, **row} for row in rows]
        path = metrics_file(ctx, method.name, model.dataset, fold)
        path.parent.mkdir(parents=True, exist_ok=True)
        report.write_csv(rows, path)
        dice = [float(r["dice"]) for r in rows if r["dice"] == r["dice"]]
        mean = sum(dice) / len(dice) if dice else math.nan
        ctx.log(f"    {method.name} on {model.dataset.name}, fold {fold}: mean Dice {mean:.3f} over "
                f"{len({r['case'] for r in rows})} test cases")
        return {"method": method.name, "dataset": model.dataset.name, "fold": fold, "mean_dice": mean,
                "file": str(path)}

    return run_step(ctx.root, f"evaluate__{method.name}__{model.dataset.name}__fold_{fold}", action, ctx.log)


# ------------------------------------------------------------------------------------------------- 7. costs


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
    predicted = [json.loads(marker_path(ctx.root, f"predict__{method.name}__{m.dataset.name}__fold_{fold}")
                            .read_text()) for m in models]
    cases = sum(p["cases"] for p in predicted)
    train_markers = [json.loads(marker_path(ctx.root, f"train__{run}").read_text()) for run in runs]
    return {"method": method.name, "fold": fold, "seconds_per_iteration": per_iteration,
            "peak_memory_mib": max(peaks) if peaks else math.nan,
            "inference_seconds_per_case": sum(p["wall_seconds"] for p in predicted) / max(1, cases),
            "training_wall_seconds": sum(m["seconds"] for m in train_markers), "training_runs": len(runs),
            # the machine's 1-minute load average at the start and end of each training run (a shared machine slows
            # whatever runs while it is busy: compare the cost ratios with this in mind)
            "training_load_average": _mean([v for m in train_markers for v in m.get("load_average", [])]),
            "timed_iterations": n_iterations, "peak_memory_kind": "+".join(k for k in kinds if k)}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _logging(ctx: Context, model: ModelRef, fold: str) -> dict:
    import torch

    checkpoint = torch.load(ctx.model_folder(model.dataset, model.trainer, fold) / "checkpoint_final.pth",
                            map_location="cpu", weights_only=False)
    return checkpoint.get("logging", {})


def loss_curves(ctx: Context, trained: Mapping[tuple[str, str], tuple[Method, list[ModelRef]]]
                ) -> dict[str, tuple[dict[str, list[float]], dict[str, list[float]]]]:
    """modality -> (method -> training loss per epoch, method -> validation loss per epoch), mean over folds."""
    curves: dict[str, tuple[dict[str, list[list[float]]], dict[str, list[list[float]]]]] = {}
    for (method_name, fold), (_, models) in trained.items():
        for model in models:
            logging = _logging(ctx, model, fold)
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


# ------------------------------------------------------------------------------------------------ 8. report


def write_setting_report(ctx: Context, trained: Mapping[tuple[str, str], tuple[Method, list[ModelRef]]]) -> dict:
    """Report of one setting from the metric files, timing files and checkpoints of the methods and folds run now."""
    rows, costs = [], []
    for (method_name, fold), (method, models) in trained.items():
        for model in models:
            rows += report.read_csv(metrics_file(ctx, method_name, model.dataset, fold))
        costs.append(collect_costs(ctx, method, models, fold))
    out = ctx.folder("report")
    written = report.write_report(rows, out, costs)
    for modality, (train, val) in loss_curves(ctx, trained).items():
        if train:
            safe = re.sub(r"[^A-Za-z0-9_-]", "_", modality)
            figure = report.training_loss_figure(train, val)
            figure.axes[0].set_title(f"Training loss ({modality})")
            written[f"training_loss_{safe}.png"] = report.save_figure(figure, out / f"training_loss_{safe}.png")
    return {"rows": rows, "costs": costs, "files": written}


def _mean_dice(rows: Sequence[Mapping], method: str, modality: str) -> float:
    """Mean over structures of the per-structure mean Dice (NaN left out)."""
    per_structure: dict[str, list[float]] = {}
    for r in rows:
        if r["method"] == method and r["modality"] == modality and r["dice"] is not None and r["dice"] == r["dice"]:
            per_structure.setdefault(str(r["structure"]), []).append(float(r["dice"]))
    means = [sum(v) / len(v) for v in per_structure.values() if v]
    return sum(means) / len(means) if means else math.nan


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
            base = _mean_dice(s["rows"], BASELINE, modality)
            cells = []
            for m in methods:
                value = _mean_dice(s["rows"], m, modality)
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
            cells.append(cell + (f" (load {_mean(loads[m]):.1f})" if loads.get(m) else ""))
        body.append([s["title"], "training wall time"] + cells)
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body] + [""]
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


# ------------------------------------------------------------------------------------------------- the whole


def resolve_methods(names: Sequence[str] | None, log: Callable[[str], None] = say) -> list[Method]:
    """The methods to run, vanilla first; default: every registered method of a kind the harness runs."""
    available = registry.load_all()
    if names is None:
        methods = [m for m in available.values() if m.kind in KIND_RUNNERS]
    else:
        methods = [registry.get(n) for n in dict.fromkeys(names)]
        for method in methods:
            check_supported(method)
    if BASELINE not in {m.name for m in methods}:
        log(f"adding '{BASELINE}': every method is compared with it")
        methods.append(available[BASELINE])
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


def _parse_fold(fold: str) -> str:
    if fold != "all" and not fold.isdigit():
        raise UserError(f"fold {fold!r} is neither a number nor 'all'")
    return fold


def train_predict_evaluate(ctx: Context, methods: Sequence[Method], folds: Sequence[str]
                           ) -> dict[tuple[str, str], tuple[Method, list[ModelRef]]]:
    """Train every method on every fold (its kind's runner), predict its models' test cases and evaluate them."""
    trained: dict[tuple[str, str], tuple[Method, list[ModelRef]]] = {}
    for fold in folds:
        for method in methods:
            models = train_method(ctx, method, fold)
            for model in models:
                predict(ctx, method, model, fold)
                evaluate(ctx, method, model, fold)
            trained[(method.name, fold)] = (method, models)
    return trained


def setting_summary(ctx: Context, trained: Mapping[tuple[str, str], tuple[Method, list[ModelRef]]], title: str,
                    note: str, planned: Mapping, headline: str = "") -> dict:
    """Write the setting's report and return its summary (what ``results.md`` shows of it). ``headline``: markdown
    an experiment puts first in its section (e.g. its own summary table)."""
    ctx.log(f"[report] {ctx.setting}")
    made = write_setting_report(ctx, trained)
    markers = [json.loads(p.read_text()) for p in sorted((ctx.root / "steps").glob("*.json"))]
    return {"name": ctx.setting, "steps": markers, "title": title, "note": note, "plan": planned,
            "rows": made["rows"], "costs": made["costs"], "files": made["files"], "headline": headline,
            "markdown": (ctx.root / "report" / "results.md").read_text()}


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


def run_benchmark(spec: BenchmarkSpec, options: RunOptions, log: Callable[[str], None] = say) -> Path:
    """Run (or resume) a benchmark; returns the result folder (its ``results.md`` holds the tables)."""
    import torch

    start = time.perf_counter()
    folds = tuple(_parse_fold(str(f)) for f in options.folds)
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
    prepare_result_folder(result, spec, options.restart, log)
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
    text = summary_markdown(spec, options, result, device, a, b, summaries)
    tmp = result / f".results.md.tmp{os.getpid()}"
    tmp.write_text(text)
    os.replace(tmp, result / "results.md")
    log(f"benchmark finished in {(time.perf_counter() - start) / 60:.1f} min: {result / 'results.md'}")
    return result

