"""What a benchmark is made of: presets, the spec that determines its numbers, the options of a run, datasets,
trained-model references and the context every step of a setting receives."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from nnunet_unpaired.benchmark import registry
from nnunet_unpaired.benchmark.registry import Method
from nnunet_unpaired.training import interface

BASELINE = registry.BASELINE
PHANTOM_IDS = (901, 902)
PLANS_NAME = "nnUNetPlans"
#: the seed nnU-Net itself uses for its 5-fold split (nnUNetTrainer.do_split)
SPLIT_SEED = 12345
#: seed of the choice of the N labelled B cases in the scarce-label setting
SCARCE_SEED = 0
FULL_LABEL = "full-label"
FOLDER_FORMAT_VERSION = 1


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
    in_plane_spacing: float | None = None  # plan at this coarser in-plane spacing (mm); None: nnU-Net's


#: the CPU default for nnU-Net's worker processes (benchmarks/cpu_throughput.py measured the settings on 2 cores,
#: docs/benchmarks.md "CPU throughput"); no final validation on the fold's validation cases (the benchmark scores the
#: held-out test cases; on 2 cores the validation of every run would cost minutes)
# save_every 1: nnU-Net's checkpoint_latest after every epoch (its default 50 never comes with these short schedules),
# so a training the end of a session cuts off continues from its last epoch instead of starting over
# GLUA's stage-1 translation phase: 1000 steps on the CPU (the public translation codes train 2 x 10^4 and more, the
# trainer's default, which the GPU presets keep). Measured on the quiet 2 cores: 0.95 s per step at 64 x 64, batch 8
# (benchmarks/translation_phase.py, docs/glua.md), so about 16 minutes per stage 1; beside another training about 19 s
CPU_ENV = (("nnUNet_n_proc_DA", "2"), ("nnUNet_def_n_proc", "1"), ("nnUNet_unpaired_skip_final_validation", "1"),
           ("nnUNet_unpaired_save_every", "1"), ("nnUNet_unpaired_glua_style_steps", "1000"))

PRESETS: dict[str, Preset] = {
    "cpu-small": Preset(
        "cpu-small", "2D phantom, small network, short budget (10 x 40 iterations), 20 test cases per modality; each "
        "experiment in about an hour or less on 2 CPU cores", configuration="2d", epochs=10, iters=40, val_iters=4,
        no_mirroring=True, max_features=32, batch_size=8, num_test=20, env=CPU_ENV, predict_processes=(0, 0)),
    "cpu-real": Preset(
        "cpu-real", "a real pair (e.g. ../shared/realdata's abdominal CT 951 + MR 952, --pair) on 2 CPU cores: 2D, "
        "planned at 3.0 mm in-plane, features capped at 32, batch 8, 30 x 100 iterations (the end of vanilla's "
        "measured learning curve on the real CT, docs/benchmarks.md)", configuration="2d", epochs=30, iters=100,
        val_iters=4, no_mirroring=True, max_features=32, batch_size=8, env=CPU_ENV, predict_processes=(0, 0),
        in_plane_spacing=3.0),
    "gpu-real": Preset(
        "gpu-real", "a real pair on one GPU: nnU-Net's own plans, network and batch size (2d, or -c 3d_fullres), "
        "100 x 250 iterations, mirroring on", configuration="2d", epochs=100, iters=None, val_iters=None,
        no_mirroring=False, max_features=None, batch_size=None),
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
    in_plane_spacing: float | None = None  # plan-pair --in-plane-spacing (mm); None: nnU-Net's target spacing

    def as_json(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


def phantom_spec(num_train: int = 10, num_test: int = 4, **overrides) -> dict:
    """``BenchmarkSpec.phantom`` for a phantom with these case counts (other PhantomConfig fields as keywords)."""
    from nnunet_unpaired.phantom import PhantomConfig

    values = json.loads(json.dumps(asdict(PhantomConfig(num_train=num_train, num_test=num_test, **overrides))))
    if values.get("mr_contrast") == "permuted":  # the default: left out, so result folders written before it resume
        del values["mr_contrast"]
    return values


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
    #: training seeds (nnUNet_unpaired_seed), the same for every method so runs pair up; None: one unseeded run
    seeds: tuple[int | None, ...] = (None,)
    methods: tuple[str, ...] | None = None  # None: every registered method of a supported kind
    scarce_b: tuple[int, ...] = ()
    full_label: bool = True
    device: str | None = None  # None: cuda when available, else cpu
    restart: bool = False
    date: str | None = None  # YYYY-MM-DD of the result folder; None: today
    #: a folder for the result folder's record (benchmark.archive): saved after every method, restored before a run
    archive: Path | None = None
    #: the record also keeps the checkpoint_latest.pth of unfinished trainings (they continue on another machine)
    archive_checkpoints: bool = False
    env: tuple[tuple[str, str], ...] = ()  # nnU-Net variables for every command (worker counts), see Preset.env
    predict_processes: tuple[int, int] | None = None
    plan_processes: int = 2
    #: after each method sharing one network (kind unpaired): the class-feature agreement on the test cases
    mechanism: bool = True
    # experiments (kinds with settings of their own, see EXPERIMENTS)
    uda_directions: tuple[str, ...] = ("a2b", "b2a")  # uda: source -> target, a2b = A labelled, B the target
    semi_percent: tuple[int, ...] = (10, 20)  # semi: share of labelled training cases per modality, in percent
    multichannel_dataset: str | None = None  # multichannel: the user's raw multi-channel dataset; None: the phantom
    #: multichannel: the phantom's layout (phantom_multichannel.LAYOUTS): "redundant" (a missing channel can be
    #: compensated) or "exclusive" (the stress case)
    multichannel_phantom: str = "redundant"


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
    seed: int | None = None  # the training seed of this context's runs (None: unseeded, nnU-Net's behaviour)

    @property
    def root(self) -> Path:
        """The setting's folder: what every seed shares (the nnU-Net raw and preprocessed trees, plan, splits)."""
        return self.result / self.setting

    @property
    def run_root(self) -> Path:
        """The folder of this seed's runs (markers, logs, timing, model folders, predictions, metrics)."""
        return self.root if self.seed is None else self.root / f"seed_{self.seed}"

    def for_seed(self, seed: int | None) -> Context:
        return replace(self, seed=seed)

    @property
    def nnunet(self) -> dict[str, Path]:
        shared = {n: self.root / "nnunet" / n for n in ("nnUNet_raw", "nnUNet_preprocessed")}
        return {**shared, "nnUNet_results": self.run_root / "nnunet" / "nnUNet_results"}

    def folder(self, name: str) -> Path:
        """A folder of the setting (shared by its seeds), created."""
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def run_folder(self, name: str) -> Path:
        """A folder of this seed's runs, created."""
        path = self.run_root / name
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
        budget_values = {interface.ENV_EPOCHS: self.spec.epochs, interface.ENV_ITERS: self.spec.iters,
                         interface.ENV_VAL_ITERS: self.spec.val_iters}
        for key, value in budget_values.items():
            if value is None:
                env.pop(key, None)  # nnU-Net's default, whatever the caller's shell says
            else:
                env[key] = str(value)
        if self.spec.no_mirroring:
            env[interface.ENV_NO_MIRRORING] = "1"
        else:
            env.pop(interface.ENV_NO_MIRRORING, None)
        env.pop(interface.ENV_TIMING, None)
        if self.seed is None:
            env.pop(interface.ENV_SEED, None)
        else:
            env[interface.ENV_SEED] = str(self.seed)
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


#: what a setting trained: (method name, fold, seed) -> (method, the models to predict); a 2-tuple key means seed None
Trained = Mapping[tuple, tuple[Method, list[ModelRef]]]


def run_key(key: tuple) -> tuple[str, str, int | None]:
    """``(method name, fold, seed)`` of a key of :data:`Trained` (seed None for a 2-tuple)."""
    name, fold, *rest = key
    return str(name), str(fold), (rest[0] if rest else None)


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
