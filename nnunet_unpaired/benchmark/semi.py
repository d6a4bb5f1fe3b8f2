"""Benchmark experiment of kind ``semi`` (CMC): semi-supervised two-modality training against its baselines.

``nnunet_unpaired benchmark --methods cmc`` runs, through :func:`run_settings` (the harness's ``EXPERIMENTS["semi"]``),
one SETTING per labelled share P (``--semi-labelled``, default 10 and 20 %) and alignment:

- ``semi-<P>``: the benchmark's two datasets A, B as semi-supervised copies with P % of their training cases labelled
  (``make-semisupervised``, seed :data:`LABEL_SEED`; the other cases hold only the ignore label);
- ``semi-<P>-misaligned`` for the smallest P (unless ``--no-semi-misaligned``; one misaligned setting keeps the
  cpu-small run within its time budget, see docs/cmc.md): the same, but first every training case of B (image AND
  label map) is moved by one seeded rigid transform (in-plane rotation up to :data:`MAX_ROTATION_DEGREES`, shift up to
  :data:`MAX_SHIFT_FRACTION` of the field of view per in-plane axis), so that B's anatomy no longer sits where A's
  does. A and all test cases are unchanged.

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
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunet_unpaired.benchmark import registry, report
from nnunet_unpaired.benchmark.config import Context, Dataset, ExperimentInput, ModelRef, say
from nnunet_unpaired.benchmark.costs import collect_costs
from nnunet_unpaired.benchmark.evaluation import evaluate, metrics_file
from nnunet_unpaired.benchmark.planning import plan
from nnunet_unpaired.benchmark.prediction import predict
from nnunet_unpaired.benchmark.registry import Method
from nnunet_unpaired.benchmark.steps import marker_path, run_step, write_json_atomic
from nnunet_unpaired.benchmark.summary import setting_summary
from nnunet_unpaired.benchmark.training_runs import train_method, train_run
from nnunet_unpaired.errors import UserError
from nnunet_unpaired.phantom import replace_folder

BASELINE = report.BASELINE
#: the second baseline of every semi setting (registry name; kind ``unpaired``)
JOINT = "joint"
#: dataset ids of the copies inside a setting's own nnU-Net tree: A's and B's semi-supervised copies, B misaligned
SEMI_IDS = (911, 912)
MISALIGNED_ID = 913
#: ``make-semisupervised --seed``: the same labelled cases in every setting of one labelled share
LABEL_SEED = 0
#: seed of the rigid transforms of the misaligned settings (one generator per case: ``[seed, case index]``)
MISALIGN_SEED = 0
MAX_SHIFT_FRACTION = 0.1
MAX_ROTATION_DEGREES = 15.0
#: dataset.json key of a misaligned copy: source, seed, limits, and each case's transform
MISALIGNED_KEY = "nnunet_unpaired_misaligned"
#: folds in a semi setting's splits_final.json (all the same split: repeats)
NUM_FOLDS = 5
#: the target of issue 7: CMC at least this much mean Dice above vanilla at 10 % labels, on both modalities
TARGET_PERCENT, TARGET_GAIN = 10, 0.03


# ------------------------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class SemiSetting:
    percent: int
    misaligned: bool

    @property
    def name(self) -> str:
        return f"semi-{self.percent:g}" + ("-misaligned" if self.misaligned else "")

    @property
    def title(self) -> str:
        return f"semi {self.percent:g} % labelled" + (", B misaligned" if self.misaligned else "")


def semi_settings(percents: Sequence[float], misaligned: bool) -> list[SemiSetting]:
    """The settings, ordered by labelled share; with ``misaligned``, the smallest share also with B misaligned,
    right after its aligned setting (the misaligned settings at every share would exceed the cpu-small time budget:
    docs/cmc.md, Benchmark)."""
    if not percents:
        raise UserError("the semi experiment needs at least one labelled share (--semi-labelled 10 20)")
    for percent in percents:
        if not 0 < percent < 100:
            raise UserError(f"--semi-labelled {percent}: a labelled share is a percentage between 0 and 100 "
                            f"(exclusive), e.g. 10")
    settings = []
    for percent in sorted(dict.fromkeys(percents)):
        settings.append(SemiSetting(percent, False))
        if misaligned and percent == min(percents):
            settings.append(SemiSetting(percent, True))
    return settings


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


# ------------------------------------------------------------------------------------------------- misalignment


def in_plane_axes(spacing: Sequence[float]) -> tuple[int, int]:
    """The two array axes of the finest spacing (nnU-Net's 2d configuration slices along the coarsest one)."""
    if len(spacing) == 2:
        return (0, 1)
    if len(spacing) != 3:
        raise ValueError(f"expected a 2D or 3D spacing, got {spacing}")
    finest = sorted(range(3), key=lambda i: (spacing[i], -i))[:2]  # ties: the last axes (y, x of z, y, x)
    return (min(finest), max(finest))


def rigid_parameters(rng: np.random.Generator, shape: Sequence[int], spacing: Sequence[float],
                     axes: tuple[int, int], max_shift_fraction: float = MAX_SHIFT_FRACTION,
                     max_rotation_degrees: float = MAX_ROTATION_DEGREES) -> dict[str, object]:
    """One random rigid in-plane transform: rotation (degrees) and shift (mm per in-plane axis, array order)."""
    angle = float(rng.uniform(-max_rotation_degrees, max_rotation_degrees))
    fractions = rng.uniform(-max_shift_fraction, max_shift_fraction, 2)
    shift = [float(f * shape[a] * spacing[a]) for f, a in zip(fractions, axes)]
    return {"rotation_degrees": angle, "shift_mm": shift, "axes": list(axes)}


def rigid_transform(array: np.ndarray, spacing: Sequence[float], axes: Sequence[int], rotation_degrees: float,
                    shift_mm: Sequence[float], order: int, cval: float) -> np.ndarray:
    """``array`` moved by a rigid transform in the plane of ``axes``, in physical units (mm).

    A point p (mm from the first voxel's centre) goes to ``R (p - c) + c + t``: rotation about the centre c of the
    array, then shift t along ``axes``. ``order`` 1 (linear) for images, 0 (nearest) for label maps; voxels that come
    from outside the array get ``cval``. The result has the input's dtype (integer images rounded)."""
    from scipy.ndimage import affine_transform

    n = array.ndim
    spacing = np.asarray(spacing, dtype=float)
    if spacing.shape != (n,):
        raise ValueError(f"spacing {tuple(spacing)} does not match an array of {n} dimensions")
    angle = math.radians(rotation_degrees)
    rotation = np.eye(n)
    i, j = axes
    rotation[i, i], rotation[i, j], rotation[j, i], rotation[j, j] = (math.cos(angle), -math.sin(angle),
                                                                      math.sin(angle), math.cos(angle))
    centre = spacing * (np.asarray(array.shape) - 1) / 2
    shift = np.zeros(n)
    shift[list(axes)] = shift_mm
    # output voxel o -> input voxel S^-1 (R^T (S o - c - t) + c)
    matrix = np.diag(1 / spacing) @ rotation.T @ np.diag(spacing)
    offset = (centre - rotation.T @ (centre + shift)) / spacing
    source = array.astype(np.float64) if order > 0 else array
    moved = affine_transform(source, matrix, offset=offset, order=order, mode="constant", cval=cval)
    if np.issubdtype(array.dtype, np.integer) and order > 0:
        moved = np.round(moved)
    return moved.astype(array.dtype, copy=False)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _read(path: Path):
    import SimpleITK as sitk

    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise UserError(f"cannot read {path} with SimpleITK ({str(e).strip().splitlines()[-1]}); the misaligned "
                        f"settings need images SimpleITK reads and writes (e.g. .nii.gz). Run the benchmark with "
                        f"--no-semi-misaligned for other formats.") from None


def _write_moved(image, array: np.ndarray, path: Path) -> None:
    import SimpleITK as sitk

    moved = sitk.GetImageFromArray(array)
    moved.CopyInformation(image)
    sitk.WriteImage(moved, str(path), useCompression=True)


def misalign_dataset(source: Path, target: Path, seed: int = MISALIGN_SEED,
                     max_shift_fraction: float = MAX_SHIFT_FRACTION,
                     max_rotation_degrees: float = MAX_ROTATION_DEGREES,
                     log: Callable[[str], None] = say) -> dict:
    """Write a copy of the raw dataset ``source`` whose training cases are moved by one rigid transform each.

    Each case (sorted identifiers; case k draws from ``numpy.random.default_rng([seed, k])``) gets a rotation about
    the image centre in its in-plane axes (:func:`in_plane_axes`) and a shift, applied alike to all its image channels
    (linear interpolation, outside filled with the case's minimum) and its label map (nearest neighbour, outside
    background 0). Test cases (imagesTs, labelsTs) are hard-linked unchanged. The copy's dataset.json records every
    transform under :data:`MISALIGNED_KEY`. The source is only read; the copy is written to a temporary folder and
    renamed into place; ``target`` is replaced only when this function wrote it.

    Returns:
        The record stored under :data:`MISALIGNED_KEY`.
    """
    import SimpleITK as sitk
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    if not 0 <= max_shift_fraction < 0.5 or not 0 <= max_rotation_degrees <= 180:
        raise ValueError(f"max_shift_fraction must be in [0, 0.5) and max_rotation_degrees in [0, 180], got "
                         f"{max_shift_fraction}, {max_rotation_degrees}")
    source, target = Path(source), Path(target)
    try:
        dataset_json = json.loads((source / "dataset.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{source / 'dataset.json'} cannot be read ({e}); {source} must be an nnU-Net raw dataset") \
            from None
    if target.exists():
        try:
            ours = MISALIGNED_KEY in json.loads((target / "dataset.json").read_text())
        except (OSError, ValueError):
            ours = False
        if not ours:
            raise UserError(f"{target} exists and was not written by the semi benchmark's misalignment step; "
                            f"refusing to replace it. Remove it yourself or pass --restart.")
    cases = get_filenames_of_train_images_and_targets(str(source), dict(dataset_json))
    ending = dataset_json["file_ending"]
    record = {"source": source.name, "seed": seed, "max_shift_fraction": max_shift_fraction,
              "max_rotation_degrees": max_rotation_degrees, "cases": {}}
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".misaligned.", dir=target.parent))
    try:
        for sub in ("imagesTr", "labelsTr"):
            (tmp / sub).mkdir()
        for index, case in enumerate(sorted(cases)):
            files = cases[case]
            label = _read(Path(files["label"]))
            spacing = tuple(reversed(label.GetSpacing()))  # array order
            label_array = sitk.GetArrayFromImage(label)
            axes = in_plane_axes(spacing)
            params = rigid_parameters(np.random.default_rng([seed, index]), label_array.shape, spacing, axes,
                                      max_shift_fraction, max_rotation_degrees)
            move = {k: params[k] for k in ("rotation_degrees", "shift_mm")}
            for channel, image_file in enumerate(files["images"]):
                image = _read(Path(image_file))
                array = sitk.GetArrayFromImage(image)
                if array.shape != label_array.shape:
                    raise UserError(f"{image_file} has shape {array.shape}, its label map {files['label']} "
                                    f"{label_array.shape}; the raw dataset is inconsistent")
                moved = rigid_transform(array, spacing, axes, order=1, cval=float(array.min()), **move)
                _write_moved(image, moved, tmp / "imagesTr" / f"{case}_{channel:04d}{ending}")
            _write_moved(label, rigid_transform(label_array, spacing, axes, order=0, cval=0, **move),
                         tmp / "labelsTr" / f"{case}{ending}")
            record["cases"][case] = params
        for sub in ("imagesTs", "labelsTs"):
            if (source / sub).is_dir():
                (tmp / sub).mkdir()
                for path in sorted((source / sub).iterdir()):
                    if path.is_file():
                        _link_or_copy(path, tmp / sub / path.name)
        new_json = {k: v for k, v in dataset_json.items() if k != "dataset"}
        new_json[MISALIGNED_KEY] = record
        (tmp / "dataset.json").write_text(json.dumps(new_json, indent=2))
        replace_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"wrote {target}: {len(cases)} training cases moved (rotation up to {max_rotation_degrees:g} degrees, shift "
        f"up to {max_shift_fraction:.0%} of the field of view; seed {seed}), test cases unchanged")
    return record


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
    """Folder names of a setting's copies: ``a``, ``b`` (the semi copies) and ``misaligned`` (B moved, or None)."""
    from nnunet_unpaired.semisupervised import target_name

    b_source = inp.b.name
    names = {"misaligned": None}
    if setting.misaligned:
        names["misaligned"] = f"Dataset{MISALIGNED_ID:03d}_{inp.b.name.split('_', 1)[1]}Misaligned"
        b_source = names["misaligned"]
    names["a"] = target_name(inp.a.name, SEMI_IDS[0], setting.percent, False)
    names["b"] = target_name(b_source, SEMI_IDS[1], setting.percent, False)
    return names


def prepare_setting_data(inp: ExperimentInput, setting: SemiSetting, root: Path) -> tuple[Dataset, Dataset]:
    """Step ``data``: the setting's raw datasets in ``<root>/nnunet/nnUNet_raw`` (B misaligned first if asked)."""
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
        b_source = inp.b.raw
        if names["misaligned"]:
            b_source = raw / names["misaligned"]
            record = misalign_dataset(inp.b.raw, b_source, log=lines.append)
            info["misaligned"] = {"dataset": names["misaligned"], "seed": record["seed"],
                                  "max_shift_fraction": record["max_shift_fraction"],
                                  "max_rotation_degrees": record["max_rotation_degrees"]}
        for key, source in (("a", inp.a.raw), ("b", b_source)):
            record = make_semisupervised(str(source), str(raw / names[key]), setting.percent, LABEL_SEED,
                                         log=lines.append)
            info[key] = {"dataset": names[key], "source": record["source"], "labelled": record["labelled"],
                         "unlabelled": record["unlabelled"]}
        log_file.write_text("\n".join(lines) + "\n")
        return info

    data = run_step(root, "data", action, inp.log)
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
    train_run(ctx, method, run, ctx.a, fold)
    models = [ModelRef(ctx.a, method.trainer, run, "train_seg_A", None),
              ModelRef(ctx.b, method.trainer, run, "train_seg_B", None)]
    for model in models:
        checkpoint = ctx.model_folder(model.dataset, model.trainer, fold) / "checkpoint_final.pth"
        if not checkpoint.is_file():
            raise UserError(f"method {method.name!r}: training finished but {checkpoint} is missing. Look into "
                            f"{ctx.run_root / 'logs'}; rerun with --restart if the folder was changed by hand.")
    return models


def train_any(ctx: Context, method: Method, fold: str) -> list[ModelRef]:
    if method.kind == "semi":
        return train_semi(ctx, method, fold)
    return train_method(ctx, method, fold)  # vanilla (single), joint (unpaired)


# ------------------------------------------------------------------------------------------------------ headline


def mean_dice(rows: Sequence[Mapping], method: str, modality: str) -> float:
    """Mean over structures of the per-structure mean Dice over test cases and folds (NaN left out)."""
    per_structure: dict[str, list[float]] = {}
    for r in rows:
        value = r.get("dice")
        if r["method"] == method and r["modality"] == modality and value is not None and value == value:
            per_structure.setdefault(str(r["structure"]), []).append(float(value))
    means = [sum(v) / len(v) for v in per_structure.values() if v]
    return sum(means) / len(means) if means else math.nan


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if math.isfinite(value) and math.isfinite(base) and base > 0 else "n/a"


def headline_table(rows: Sequence[Mapping], costs: Sequence[Mapping], methods: Sequence[str],
                   modalities: Sequence[str], target: bool = False) -> str:
    """Markdown: mean Dice per modality with Δ vs vanilla, training wall time and s/iteration with ratios; with
    ``target``, a line on whether each cmc method met the target of issue 7 (:data:`TARGET_GAIN`)."""
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
    gains: dict[str, list[float]] = {}
    for method in methods:
        cells = [method]
        for modality in modalities:
            value, base = mean_dice(rows, method, modality), mean_dice(rows, BASELINE, modality)
            cell = "n/a" if math.isnan(value) else f"{value:.3f}"
            if method != BASELINE and not (math.isnan(value) or math.isnan(base)):
                cell += f" (Δ {value - base:+.3f})"
                gains.setdefault(method, []).append(value - base)
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
    if target:
        for method in methods:
            if method.startswith("cmc") and len(gains.get(method, [])) == len(modalities):
                met = all(g >= TARGET_GAIN for g in gains[method])
                lines += ["", (f"Target of issue 7 ({method} at least {TARGET_GAIN * 100:.0f} Dice points above "
                               f"vanilla on both modalities at {TARGET_PERCENT} % labels): "
                               f"{'met' if met else 'not met'} (Δ "
                               + ", ".join(f"{g * 100:+.1f}" for g in gains[method]) + " points).")]
    return "\n".join(lines)


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
    text = (f"{a.name} (A) and {b.name} (B): copies of the benchmark's datasets with {setting.percent:g} % of the "
            f"training cases labelled (make-semisupervised, seed {LABEL_SEED}; A: {', '.join(data['a']['labelled'])}; "
            f"B: {', '.join(data['b']['labelled'])}), the other training cases hold only the ignore label. Every "
            f"method trains on the labelled cases of its split; vanilla (one model per modality) and joint see only "
            f"those (and validate on them), CMC's split adds the unlabelled cases as validation cases, which its "
            f"trainer moves into training (it validates on the labelled ones). Test cases: the source datasets' "
            f"imagesTs/labelsTs, unchanged.")
    if setting.misaligned:
        moved = data.get("misaligned", {})
        text += (f" B misaligned: before the copy, every training case of B (image and label map alike) was moved by "
                 f"one random rigid transform (seed {moved.get('seed', MISALIGN_SEED)}): in-plane rotation up to "
                 f"{moved.get('max_rotation_degrees', MAX_ROTATION_DEGREES):g} degrees and a shift up to "
                 f"{moved.get('max_shift_fraction', MAX_SHIFT_FRACTION):.0%} of the field of view per in-plane axis "
                 f"(each case's transform: dataset.json of {moved.get('dataset', 'the misaligned copy')}); A and the "
                 f"test cases are unchanged.")
    return text


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
                              target=setting.percent == TARGET_PERCENT and not setting.misaligned)
    settings = _cmc_settings(ctx.for_seed(inp.options.seeds[0]), methods, folds[0])
    if settings:
        headline += "\n\nCMC settings (from the model folder's plans.json): " + "; ".join(settings) + "."
    data = json.loads(marker_path(ctx.root, "data").read_text())
    return setting_summary(ctx, trained, setting.title, setting_note(setting, data, a, b), planned,
                                   headline=headline)


def run_settings(inp: ExperimentInput) -> list[dict]:
    """The semi experiment (the harness calls this for kind ``semi``): one summary per setting."""
    folds = semi_folds(inp.options.folds)
    settings = semi_settings(inp.options.semi_percent, inp.options.semi_misaligned)
    methods = semi_methods(inp.methods, inp.log)
    inp.log(f"semi settings: {', '.join(s.name for s in settings)}; methods {', '.join(m.name for m in methods)}; "
            f"folds {', '.join(folds)}")
    summaries = []
    for setting in settings:
        inp.log(f"== setting {setting.name}")
        summaries.append(run_setting(inp, setting, methods, folds))
    return summaries
