"""The ``multichannel`` experiment of the benchmark: MAML against vanilla nnU-Net on a paired multi-channel dataset,
with every channel and with each single channel missing.

MAML: Zhang Y. et al., "Modality-aware Mutual Learning for Multi-modal Medical Image Segmentation", MICCAI 2021
(arXiv 2107.09842); trainer ``nnUNetTrainerMAML`` (:mod:`nnunet_unpaired.training.maml`).

:func:`run_settings` (called by :func:`nnunet_unpaired.benchmark.harness.run_benchmark` for the methods of kind
``multichannel``) runs ONE setting, ``multichannel``, in its own nnU-Net tree (``<result>/multichannel/nnunet``):

1. data: the user's raw multi-channel dataset (``--multichannel-dataset``, with imagesTs/labelsTs; only read) or the
   built-in multi-channel phantom (:mod:`nnunet_unpaired.phantom_multichannel`), written once into
   ``<result>/phantom_multichannel_raw``;
2. for each channel c a DERIVED raw dataset without channel c (the other channels renumbered, files linked, its own
   dataset id) inside the setting's nnUNet_raw, for a vanilla nnU-Net retrained on the remaining channels;
3. plan: every dataset with nnU-Net's own ``nnUNetv2_plan_and_preprocess``, the benchmark's feature cap and batch size
   applied to the plans with :func:`nnunet_unpaired.plan_pair.shrink_plans`, then ``nnUNetv2_preprocess``;
4. splits: one ``splits_final.json`` (the dataset's own, else nnU-Net's seeded 5-fold split) for every dataset, so
   every model of a fold trains on the same cases;
5. train (same budget for every run): vanilla on all channels, each multichannel method (MAML), and vanilla on each
   derived dataset;
6. predict the test cases: all channels with the stock ``nnUNetv2_predict`` (vanilla and MAML); for each channel c:
   MAML through ``nnunet_unpaired predict-missing`` with channel c's files absent from its input folder, vanilla with
   channel c's files replaced by all-zero images of the same geometry, and the vanilla model retrained without c;
7. evaluate against labelsTs (:func:`nnunet_unpaired.benchmark.metrics.evaluate_folder`) and report.

In the report a "modality" is the test-time input (``all channels``, ``missing channel c (name)``). Methods:
``vanilla`` is the model trained on all channels; in the rows of a missing channel it is that model fed the
zero-filled channel, so the paired tests compare MAML with exactly that. ``vanilla-dropout``
(``nnUNetTrainerChannelDropout``, trained with random channel dropout) is fed the same zero-filled inputs. ``vanilla-retrained`` is the vanilla model
trained without the missing channel (one model per channel; its training cost is the sum of those runs).

Raw data is never written: the derived datasets and test inputs link to the source files (zero-filled images are new
files), everything is written inside the result folder, folders atomically (temporary name, then renamed).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from nnunet_unpaired.benchmark import report, steps
from nnunet_unpaired.benchmark.config import (
    BASELINE,
    PLANS_NAME,
    SPLIT_SEED,
    Context,
    Dataset,
    ExperimentInput,
    ModelRef,
)
from nnunet_unpaired.benchmark.costs import collect_costs
from nnunet_unpaired.benchmark.data import case_identifiers, default_splits, link_raw, read_dataset
from nnunet_unpaired.benchmark.evaluation import mean_dice, metrics_file
from nnunet_unpaired.benchmark.prediction import predict
from nnunet_unpaired.benchmark.registry import Method
from nnunet_unpaired.benchmark.steps import run_step, tool, write_json_atomic
from nnunet_unpaired.benchmark.summary import setting_summary
from nnunet_unpaired.benchmark.training_runs import train_run
from nnunet_unpaired.errors import UserError
from nnunet_unpaired.training import interface

SETTING = "multichannel"
PHANTOM_ID = 991
PHANTOM_NAME = "MultiChannelPhantom"
PHANTOM_CHANNELS = 3
PHANTOM_SEED = 0
#: the pair phantom's CT geometry (64 x 64 voxels of 1.5 mm, 20 slices of 3 mm), so a 2D network trains as cheaply
PHANTOM_SHAPE = (20, 64, 64)
PHANTOM_SPACING = (3.0, 1.5, 1.5)
RETRAINED = "vanilla-retrained"
ALL_CHANNELS = "all channels"


# ---------------------------------------------------------------------------------------------------- the data


def channel_names(dataset: Dataset) -> dict[int, str]:
    """Channel index -> name, from the dataset's dataset.json (``channel_names``, or the legacy ``modality``)."""
    data = _dataset_json(dataset.raw)
    channels = data.get("channel_names", data.get("modality", {}))
    return {int(k): str(v) for k, v in sorted(channels.items(), key=lambda kv: int(kv[0]))}


def condition(c: int | None, names: Mapping[int, str]) -> str:
    """The report's 'modality' of a test-time input: all channels, or channel c missing."""
    return ALL_CHANNELS if c is None else f"missing channel {c} ({names[c]})"


def _dataset_json(raw: Path) -> dict:
    path = raw / "dataset.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} does not exist: {raw.name} is not an nnU-Net raw dataset") from None
    except ValueError as e:
        raise UserError(f"{path} is not valid JSON ({e}); fix it") from None


def resolve_user_dataset(name_or_id: str) -> Path:
    """``--multichannel-dataset`` (an id or a ``DatasetXXX_Name``) -> its folder in ``$nnUNet_raw``."""
    raw = os.environ.get("nnUNet_raw")
    if not raw:
        raise UserError("--multichannel-dataset names a dataset in $nnUNet_raw, but nnUNet_raw is not set; "
                        "export nnUNet_raw=/path/to/nnUNet_raw")
    text = str(name_or_id).strip()
    if text.isdigit():
        found = sorted(Path(raw).glob(f"Dataset{int(text):03d}_*"))
    else:
        found = [Path(raw) / text] if (Path(raw) / text).is_dir() else []
    found = [f for f in found if f.is_dir()]
    if len(found) != 1:
        what = "no dataset" if not found else f"{len(found)} datasets ({', '.join(f.name for f in found)})"
        raise UserError(f"--multichannel-dataset {text}: {what} found in nnUNet_raw={raw}. Give the id or the full "
                        f"folder name (DatasetXXX_Name) of one raw dataset, or leave the option out to use the "
                        f"built-in multi-channel phantom.")
    return found[0]


def check_dataset(dataset: Dataset) -> dict[int, str]:
    """A usable multi-channel dataset: >= 2 channels, standard file layout, complete held-out test cases."""
    data = _dataset_json(dataset.raw)
    names = channel_names(dataset)
    json_file = dataset.raw / "dataset.json"
    if len(names) < 2:
        raise UserError(f"{json_file} lists {len(names)} input channel ({names}); the multichannel benchmark "
                        f"(MAML) needs a paired dataset with at least 2 co-registered channels per case. Pass such a "
                        f"dataset with --multichannel-dataset, or leave the option out to use the built-in "
                        f"multi-channel phantom.")
    if sorted(names) != list(range(len(names))):
        raise UserError(f"{json_file}: channel_names must be numbered 0..{len(names) - 1}, got {sorted(names)}")
    if "dataset" in data:
        raise UserError(f"{json_file} lists its files explicitly (key 'dataset'); the multichannel benchmark derives "
                        f"datasets without one channel from the standard layout (imagesTr/CASE_XXXX<ending>). "
                        f"Convert the dataset to the standard layout first.")
    ending = data.get("file_ending")
    if not ending:
        raise UserError(f"{json_file} has no 'file_ending'; add it (e.g. \".nii.gz\")")
    images, labels = dataset.raw / "imagesTs", dataset.raw / "labelsTs"
    cases = sorted(p.name[: -len(ending)] for p in labels.iterdir() if p.name.endswith(ending)) \
        if labels.is_dir() else []
    if not images.is_dir() or not cases:
        raise UserError(f"{dataset.raw} has no held-out test cases (imagesTs/ and labelsTs/ with files). The "
                        f"benchmark evaluates on them and never on training cases: move some cases of {dataset.name} "
                        f"into imagesTs/labelsTs and run again.")
    for case in cases:
        for c in names:
            image = images / f"{case}_{c:04d}{ending}"
            if not image.is_file():
                raise UserError(f"{image} is missing: every test case in labelsTs needs all {len(names)} channels "
                                f"in imagesTs (the benchmark removes channels itself). Add the file or remove the "
                                f"case from labelsTs.")
    return names


def phantom_parameters(inp: ExperimentInput) -> dict:
    """What the multi-channel phantom is made of: the pair phantom's case counts (``--num-train``/``--num-test``),
    its CT geometry, three channels, a fixed seed, the layout of ``--multichannel-phantom``."""
    counts = inp.spec.phantom or {}
    return {"dataset_id": PHANTOM_ID, "name": PHANTOM_NAME, "num_cases": int(counts.get("num_train", 10)),
            "num_test_cases": int(counts.get("num_test", 4)), "shape": list(PHANTOM_SHAPE),
            "spacing": list(PHANTOM_SPACING), "num_channels": PHANTOM_CHANNELS, "seed": PHANTOM_SEED,
            "layout": inp.options.multichannel_phantom}


def prepare_dataset(inp: ExperimentInput) -> tuple[Dataset, dict | None]:
    """The source dataset: the user's (only read) or the phantom (written once into the result folder)."""
    if inp.options.multichannel_dataset is not None:
        folder = resolve_user_dataset(inp.options.multichannel_dataset)
        return read_dataset(folder.parent, folder.name), None
    from nnunet_unpaired.phantom_multichannel import write_multichannel_phantom

    parameters = phantom_parameters(inp)
    raw = inp.result / "phantom_multichannel_raw"
    name = f"Dataset{PHANTOM_ID:03d}_{PHANTOM_NAME}"

    def write(log_file: Path) -> dict:
        tmp = raw.with_name(f".{raw.name}.tmp{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        folder = write_multichannel_phantom(tmp, **parameters)
        if raw.exists():
            shutil.rmtree(raw)  # an interrupted attempt (no marker): written again from the same seed
        os.replace(tmp, raw)
        log_file.write_text(f"wrote {raw / folder.name}: {json.dumps(parameters)}\n")
        return {"raw": str(raw / folder.name), **parameters}

    run_step(inp.result, "phantom_multichannel", write, inp.log)
    return read_dataset(raw, name), parameters


def _record(ctx: Context, dataset: Dataset, phantom: dict | None) -> None:
    """``<setting>/multichannel.json``: the data of this setting; another dataset in the same folder is refused."""
    wanted = {"dataset": dataset.name, "source": str(dataset.raw), "phantom": phantom}
    path = ctx.root / "multichannel.json"
    if path.is_file():
        found = json.loads(path.read_text())
        if found != wanted:
            raise UserError(f"{path} records a multichannel benchmark of {found.get('dataset')} "
                            f"({found.get('source')}), not of {dataset.name} ({dataset.raw}). Rerun with the same "
                            f"--multichannel-dataset to resume it, pass --restart to start over, or choose another "
                            f"--output or --date.")
    else:
        write_json_atomic(path, wanted)


def derived_id(source_id: int, c: int) -> int:
    """The dataset id of the source without channel c: the ids after the source's (wrapping within 1..999)."""
    return (source_id + c) % 999 + 1


def derived_name(dataset: Dataset, c: int, names: Mapping[int, str]) -> str:
    base = dataset.name.split("_", 1)[1] if "_" in dataset.name else dataset.name
    safe = re.sub(r"[^A-Za-z0-9]", "", names[c]) or f"ch{c}"
    return f"Dataset{derived_id(dataset.id, c):03d}_{base}_without_{safe}"


def _channel_files(folder: Path, ending: str) -> list[tuple[Path, str, int]]:
    """(file, case, channel) of every ``CASE_XXXX<ending>`` in ``folder``."""
    pattern = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})" + re.escape(ending) + "$")
    found = []
    for path in sorted(folder.iterdir()):
        if match := pattern.match(path.name):
            found.append((path, match["case"], int(match["channel"])))
    return found


def _write_folder_atomic(target: Path, fill: Callable[[Path], None]) -> None:
    """Fill a temporary folder beside ``target``, then move it into place (replacing a leftover)."""
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    fill(tmp)
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


def derive_without_channel(ctx: Context, source: Dataset, c: int, names: Mapping[int, str]) -> Dataset:
    """The raw dataset ``source`` without channel c in the setting's nnUNet_raw: channels after c move down by one,
    image and label files are symbolic links to the source's, dataset.json says where it comes from."""
    name = derived_name(source, c, names)
    target = ctx.nnunet["nnUNet_raw"] / name

    def fill(folder: Path) -> None:
        data = _dataset_json(source.raw)
        ending = data["file_ending"]
        for sub in ("imagesTr", "imagesTs"):
            if not (source.raw / sub).is_dir():
                continue
            (folder / sub).mkdir()
            for path, case, channel in _channel_files(source.raw / sub, ending):
                if channel != c:
                    new = channel if channel < c else channel - 1
                    (folder / sub / f"{case}_{new:04d}{ending}").symlink_to(path.resolve())
        for sub in ("labelsTr", "labelsTs"):
            if (source.raw / sub).is_dir():
                (folder / sub).mkdir()
                for path in sorted((source.raw / sub).iterdir()):
                    if path.name.endswith(ending):
                        (folder / sub / path.name).symlink_to(path.resolve())
        if (source.raw / "splits_final.json").is_file():
            shutil.copyfile(source.raw / "splits_final.json", folder / "splits_final.json")
        kept = [k for k in sorted(names) if k != c]
        key = "channel_names" if "channel_names" in data else "modality"
        data[key] = {str(i): names[k] for i, k in enumerate(kept)}
        data["name"] = name.split("_", 1)[1]
        data["derived_from"] = {"dataset": source.name, "source": str(source.raw),
                                "without_channel": {"index": c, "name": names[c]},
                                "channels": {str(i): k for i, k in enumerate(kept)}}
        (folder / "dataset.json").write_text(json.dumps(data, indent=2))

    def action(log_file: Path) -> dict:
        _write_folder_atomic(target, fill)
        log_file.write_text(f"{target}: {source.name} without channel {c} ({names[c]})\n")
        return {"dataset": name, "without_channel": c}

    run_step(ctx.root, f"derive__without_channel_{c}", action, ctx.log)
    return Dataset(name=name, id=derived_id(source.id, c), raw=target, labels=source.labels)


def condition_inputs(ctx: Context, source: Dataset, c: int, how: str) -> Path:
    """A copy of the source's imagesTs for one test-time condition: ``missing`` leaves channel c's files out,
    ``zero`` replaces them by all-zero images of the same geometry; the other files are links."""
    import SimpleITK as sitk

    target = ctx.root / "inputs" / f"{how}_channel_{c}"

    def fill(folder: Path) -> None:
        ending = _dataset_json(source.raw)["file_ending"]
        for path, _, channel in _channel_files(source.raw / "imagesTs", ending):
            if channel != c:
                (folder / path.name).symlink_to(path.resolve())
            elif how == "zero":
                image = sitk.ReadImage(str(path))
                zero = sitk.Image(image.GetSize(), image.GetPixelID(), image.GetNumberOfComponentsPerPixel())
                zero.CopyInformation(image)
                try:
                    sitk.WriteImage(zero, str(folder / path.name), useCompression=True)
                except RuntimeError as e:
                    raise UserError(f"cannot write a zero-filled copy of {path} with SimpleITK ({e}); the "
                                    f"zero-filled baseline needs image files SimpleITK can write") from None

    def action(log_file: Path) -> dict:
        _write_folder_atomic(target, fill)
        state = "absent" if how == "missing" else "all zeros"
        log_file.write_text(f"{target}: {source.name} imagesTs, channel {c} {state}\n")
        return {"folder": str(target), "channel": c, "how": how}

    run_step(ctx.root, f"inputs__{how}_channel_{c}", action, ctx.log)
    return target


# ------------------------------------------------------------------------------------------------ plan, splits


def plan_dataset(ctx: Context, dataset: Dataset, verify: bool) -> dict:
    """nnU-Net's own planning of one dataset, the benchmark's feature cap / batch size applied as plan-pair does."""
    from nnunet_unpaired.plan_pair import save_json_atomic, shrink_plans

    def action(log_file: Path) -> dict:
        env = ctx.env()
        if env.get("nnUNet_n_proc_DA", "").strip() == "0":
            env["nnUNet_n_proc_DA"] = "1"  # the planner calls torch.set_num_threads(nnUNet_n_proc_DA)
        processes = str(ctx.options.plan_processes)
        cmd = [tool("nnUNetv2_plan_and_preprocess"), "-d", str(dataset.id), "-npfp", processes, "--no_pp",
               "--clean", "--no_pbar"]
        if verify:
            cmd.append("--verify_dataset_integrity")
        steps.run_command(cmd, env, log_file, ctx.log)
        plans_file = ctx.nnunet["nnUNet_preprocessed"] / dataset.name / f"{PLANS_NAME}.json"
        plans = json.loads(plans_file.read_text())
        configuration = ctx.spec.configuration
        if configuration not in plans["configurations"]:
            raise UserError(f"configuration {configuration} does not exist in the plans of {dataset.name} (it has "
                            f"{sorted(plans['configurations'])}); nnU-Net plans 3d configurations only for 3d data. "
                            f"Choose one of those with -c.")
        shrink_plans(plans, [configuration], ctx.spec.max_features, ctx.spec.batch_size)
        save_json_atomic(plans, str(plans_file))
        steps.run_command([tool("nnUNetv2_preprocess"), "-d", str(dataset.id), "-plans_name", PLANS_NAME,
                     "-c", configuration, "-np", processes, "--no_pbar"], env, log_file, ctx.log)
        conf = plans["configurations"][configuration]
        return {"dataset": dataset.name, "batch_size": conf["batch_size"], "patch_size": conf["patch_size"],
                "features_per_stage": conf["architecture"]["arch_kwargs"]["features_per_stage"]}

    return run_step(ctx.root, f"plan__{dataset.name}", action, ctx.log)


def write_splits(ctx: Context, source: Dataset, derived: Sequence[Dataset]) -> dict:
    """The same ``splits_final.json`` for the source and every derived dataset (they hold the same cases)."""

    def action(log_file: Path) -> dict:
        base = ctx.nnunet["nnUNet_preprocessed"] / source.name
        if (base / "splits_final.json").is_file():  # the dataset's own (copied from the raw folder by the planner)
            splits, how = json.loads((base / "splits_final.json").read_text()), "the dataset's own splits_final.json"
        else:
            splits, how = default_splits(case_identifiers(base)), f"nnU-Net's 5-fold split (seed {SPLIT_SEED})"
        for dataset in (source, *derived):
            write_json_atomic(ctx.nnunet["nnUNet_preprocessed"] / dataset.name / "splits_final.json", splits)
        log_file.write_text(f"{how}, written for {', '.join(d.name for d in (source, *derived))}\n")
        return {"source": how, "train_per_fold": [len(s["train"]) for s in splits],
                "val_per_fold": [len(s["val"]) for s in splits]}

    return run_step(ctx.root, "splits", action, ctx.log)


# ----------------------------------------------------------------------------------------- predict, evaluate


def predict_inputs(ctx: Context, step: str, method: Method, dataset: Dataset, images: Path, out: Path, fold: str,
                   available: Sequence[int] | None = None) -> dict:
    """Predict the test inputs in ``images`` with the model of ``method`` on ``dataset``: the stock
    ``nnUNetv2_predict`` (``available`` None), else ``nnunet_unpaired predict-missing --available ...``."""

    def action(log_file: Path) -> dict:
        import time

        if out.exists():
            shutil.rmtree(out)  # leftovers of an interrupted attempt
        cases = sorted({case for _, case, _ in _channel_files(images, _dataset_json(dataset.raw)["file_ending"])})
        processes = ctx.options.predict_processes
        if available is None:
            cmd = [tool("nnUNetv2_predict"), "-i", str(images), "-o", str(out), "-d", dataset.name,
                   "-c", ctx.spec.configuration, "-f", fold, "-tr", method.trainer, "-p", PLANS_NAME,
                   "-device", ctx.device, "--disable_progress_bar"]
            if processes is not None:
                cmd += ["-npp", str(processes[0]), "-nps", str(processes[1])]
        else:
            cmd = [sys.executable, "-m", "nnunet_unpaired.cli", "predict-missing", "-i", str(images), "-o", str(out),
                   "-d", dataset.name, "-c", ctx.spec.configuration, "-f", fold, "-tr", method.trainer,
                   "-p", PLANS_NAME, "-device", ctx.device, "--available", *[str(a) for a in available]]
            if processes is not None:
                cmd += ["-nps", str(max(1, processes[1]))]
        start = time.perf_counter()
        steps.run_command(cmd, ctx.env(method), log_file, ctx.log)
        seconds = time.perf_counter() - start
        return {"method": method.name, "dataset": dataset.name, "fold": fold, "cases": len(cases),
                "wall_seconds": seconds, "seconds_per_case": seconds / max(1, len(cases))}

    return run_step(ctx.run_root, step, action, ctx.log)


def evaluate_condition(ctx: Context, method_name: str, label: str, key: str, predictions: Path, source: Dataset,
                       fold: str) -> list[dict]:
    """Metrics of one prediction folder against the source's labelsTs, as rows of ``method_name`` under the report
    modality ``label``; kept in ``metrics/conditions/<method>__<key>__fold_<k>.csv``."""
    from nnunet_unpaired.benchmark.metrics import evaluate_folder

    path = ctx.run_root / "metrics" / "conditions" / f"{method_name}__{key}__fold_{fold}.csv"

    def action(log_file: Path) -> dict:
        ending = _dataset_json(source.raw)["file_ending"]
        rows = evaluate_folder(predictions, source.raw / "labelsTs", source.labels, ending)
        rows = [{"method": method_name, "modality": label, "fold": fold, "seed": ctx.seed, **row} for row in rows]
        path.parent.mkdir(parents=True, exist_ok=True)
        report.write_csv(rows, path)
        dice = [float(r["dice"]) for r in rows if r["dice"] == r["dice"]]
        mean = sum(dice) / len(dice) if dice else math.nan
        ctx.log(f"    {method_name}, {label}, fold {fold}: mean Dice {mean:.3f}")
        return {"method": method_name, "condition": label, "fold": fold, "mean_dice": mean, "file": str(path)}

    run_step(ctx.run_root, f"evaluate__{method_name}__{key}__fold_{fold}", action, ctx.log)
    return report.read_csv(path)


# ---------------------------------------------------------------------------------------------- the setting


def how_others_predict(others: Sequence[Method]) -> str:
    """The report's sentence on how the methods beside vanilla see a missing channel."""
    plain = [m.name for m in others if m.trainer in interface.ZERO_FILLED_TRAINERS]
    aware = [m.name for m in others if m.trainer not in interface.ZERO_FILLED_TRAINERS]
    parts = []
    if aware:
        parts.append(f"{', '.join(aware)} predicts with all channels through nnUNetv2_predict and with a channel "
                     f"missing through `nnunet_unpaired predict-missing` (the channel's files absent)")
    if plain:
        parts.append(f"{', '.join(plain)} (a plain nnU-Net network) predicts through nnUNetv2_predict, a missing "
                     f"channel zero-filled like vanilla's")
    return "; ".join(parts) or "no other method"


def run_fold(ctx: Context, methods: Sequence[Method], source: Dataset, derived: Mapping[int, Dataset],
             names: Mapping[int, str], fold: str) -> dict[tuple, tuple[Method, list[ModelRef]]]:
    """Train, predict and evaluate everything of one fold; the metric files hold the report's rows."""
    vanilla, others = methods[0], list(methods[1:])
    retrained = Method(RETRAINED, vanilla.trainer, "single", "vanilla nnU-Net trained without the missing channel")
    trained: dict[tuple, tuple[Method, list[ModelRef]]] = {}
    for method in (vanilla, *others):
        run = f"{method.name}__fold_{fold}"
        train_run(ctx, method, run, source, fold)
        model = ModelRef(source, method.trainer, run)
        checkpoint = ctx.model_folder(source, method.trainer, fold) / "checkpoint_final.pth"
        if not checkpoint.is_file():
            raise UserError(f"method {method.name!r}: training finished but {checkpoint} is missing. Look into "
                            f"{ctx.run_root / 'logs'}; rerun with --restart if the folder was changed by hand.")
        predict(ctx, method, model, fold)
        rows = evaluate_condition(ctx, method.name, condition(None, names), "all_channels",
                                  ctx.run_root / "predictions" / method.name / source.name / f"fold_{fold}", source,
                                  fold)
        for c in names:
            others_available = [k for k in names if k != c]
            if method.trainer in interface.ZERO_FILLED_TRAINERS:  # a plain network (vanilla's): zero-filled
                images, key = condition_inputs(ctx, source, c, "zero"), f"zero_filled_channel_{c}"
                out = ctx.run_root / "predictions" / method.name / key / f"fold_{fold}"
                predict_inputs(ctx, f"predict__{method.name}__{key}__fold_{fold}", method, source, images, out, fold)
            else:  # channel c's files absent, the model told which channels it has
                images, key = condition_inputs(ctx, source, c, "missing"), f"missing_channel_{c}"
                out = ctx.run_root / "predictions" / method.name / key / f"fold_{fold}"
                predict_inputs(ctx, f"predict__{method.name}__{key}__fold_{fold}", method, source, images, out, fold,
                               available=others_available)
            rows += evaluate_condition(ctx, method.name, condition(c, names), key, out, source, fold)
        report.write_csv(rows, metrics_file(ctx, method.name, source, fold))
        trained[(method.name, fold, ctx.seed)] = (method, [model])
        if method is vanilla:  # the retrained baselines next to vanilla (the report's column order)
            models = []
            for c, dataset in derived.items():
                run = f"{RETRAINED}__{dataset.name}__fold_{fold}"
                train_run(ctx, retrained, run, dataset, fold)
                model_c = ModelRef(dataset, retrained.trainer, run)
                predict(ctx, retrained, model_c, fold)
                rows_c = evaluate_condition(
                    ctx, RETRAINED, condition(c, names), f"missing_channel_{c}",
                    ctx.run_root / "predictions" / RETRAINED / dataset.name / f"fold_{fold}", source, fold)
                report.write_csv(rows_c, metrics_file(ctx, RETRAINED, dataset, fold))
                models.append(model_c)
            trained[(RETRAINED, fold, ctx.seed)] = (retrained, models)
    return trained


def _markers(ctx: Context, prefix: str) -> list[dict]:
    """The markers of every seed's runs whose step name starts with ``prefix``."""
    roots = [ctx.for_seed(seed).run_root for seed in ctx.options.seeds]
    return [json.loads(p.read_text()) for root in roots for p in sorted((root / "steps").glob(f"{prefix}*.json"))]


def _maml_settings(ctx: Context, methods: Sequence[Method], source: Dataset, folds: Sequence[str]) -> list[str]:
    """The settings each multichannel method recorded in its model folder's plans.json (e.g. MAML's ``"maml"``)."""
    lines = []
    for method in methods[1:]:
        plans = ctx.for_seed(ctx.options.seeds[0]).model_folder(source, method.trainer, folds[0]).parent / "plans.json"
        if plans.is_file():
            recorded = json.loads(plans.read_text()).get("maml")
            if recorded:
                lines.append(f"{method.name} trained with the settings {json.dumps(recorded)} (its plans.json).")
    return lines


def headline(ctx: Context, methods: Sequence[Method], rows: Sequence[Mapping], costs: Sequence[Mapping],
             names: Mapping[int, str], source: Dataset, folds: Sequence[str]) -> str:
    """The experiment's own summary: mean Dice per test-time input and model, and the costs against vanilla."""
    others = [m.name for m in methods[1:]]

    def dice(method: str, label: str) -> float:
        return mean_dice(rows, method, label)

    def cell(value: float, reference: float | None = None) -> str:
        if math.isnan(value):
            return "n/a"
        text = f"{value:.3f}"
        if reference is not None and not math.isnan(reference):
            text += f" (Δ {value - reference:+.3f})"
        return text

    header = (["test-time input", "vanilla (all channels)", "vanilla, channel zero-filled",
               "vanilla retrained without the channel"] + others)
    body = []
    base = dice(BASELINE, ALL_CHANNELS)
    body.append([ALL_CHANNELS, cell(base), "–", "–"] + [cell(dice(m, ALL_CHANNELS), base) for m in others])
    for c in names:
        label = condition(c, names)
        zero = dice(BASELINE, label)
        body.append([label, "–", cell(zero), cell(dice(RETRAINED, label), zero)]
                    + [cell(dice(m, label), zero) for m in others])
    lines = ["### Mean Dice per test-time input", "",
             ("Mean over the structures of the mean Dice over test cases and folds. Δ: against vanilla with all "
              "channels (first row) or against vanilla with the channel zero-filled (other rows). A structure "
              "visible in the missing channel only can at best be guessed from where it tends to lie (a model "
              "trained without that channel learns to; the others have no reason to)."), "",
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body] + [""]

    by_method: dict[str, list[Mapping]] = {}
    for row in costs:
        by_method.setdefault(str(row["method"]), []).append(row)

    def total(method: str, key: str) -> float:
        values = [float(r[key]) for r in by_method.get(method, []) if r.get(key) is not None]
        return sum(values) / len(values) if values else math.nan

    trainers = {m.name: m.trainer for m in methods}

    def missing_inference(method: str) -> float:
        prefix = "zero_filled" if trainers.get(method) in interface.ZERO_FILLED_TRAINERS else "missing"
        markers = [m for m in _markers(ctx, f"predict__{method}__{prefix}_channel_")]
        cases = sum(int(m["cases"]) for m in markers)
        return sum(float(m["wall_seconds"]) for m in markers) / cases if cases else math.nan

    def ratio(value: float, reference: float) -> str:
        return f"{value / reference:.2f}" if math.isfinite(value) and math.isfinite(reference) and reference else "n/a"

    def number(value: float, digits: int = 3) -> str:
        return "n/a" if not math.isfinite(value) else f"{value:.{digits}g}"

    base_iter, base_wall = total(BASELINE, "seconds_per_iteration"), total(BASELINE, "training_wall_seconds")
    base_inf = total(BASELINE, "inference_seconds_per_case")
    cost_header = ["model", "training runs", "s / training iteration", "× vanilla", "training wall time (min)",
                   "× vanilla", "inference s / case, all channels", "× vanilla",
                   "inference s / case, one channel missing"]
    cost_body = []
    for method in [BASELINE, RETRAINED, *others]:
        if method not in by_method:
            continue
        per_iter, wall = total(method, "seconds_per_iteration"), total(method, "training_wall_seconds")
        inference = total(method, "inference_seconds_per_case")
        runs = total(method, "training_runs")
        missing = missing_inference(method) if method != RETRAINED else inference
        all_channels = "–" if method == RETRAINED else number(inference)
        cost_body.append([method, number(runs), number(per_iter), ratio(per_iter, base_iter), number(wall / 60),
                          ratio(wall, base_wall), all_channels,
                          "–" if method == RETRAINED else ratio(inference, base_inf), number(missing)])
    lines += ["### Cost against vanilla", "",
              ("Training: median seconds per iteration after warm-up and the summed wall time of the training runs "
               f"(`{RETRAINED}`: one run per channel, {len(names)} in all), mean over folds. Inference: wall time of "
               "the prediction command per test case (process start and model loading included); vanilla with a "
               "channel missing is the stock nnUNetv2_predict on the zero-filled input, MAML's is "
               "`nnunet_unpaired predict-missing`. On a shared machine these move with the load (see the markers)."),
              "", "| " + " | ".join(cost_header) + " |", "|" + "|".join("---" for _ in cost_header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cost_body] + [""]
    lines += _maml_settings(ctx, methods, source, folds)
    return "\n".join(lines).rstrip()


def run_settings(inp: ExperimentInput) -> list[dict]:
    """The ``multichannel`` setting (see the module docstring); returns its summary for ``results.md``."""
    methods = list(inp.methods)
    if not methods or methods[0].name != BASELINE:
        raise ValueError(f"the multichannel experiment needs vanilla first among its methods, got "
                         f"{[m.name for m in methods]}")
    source, phantom = prepare_dataset(inp)
    names = check_dataset(source)
    ctx = Context(inp.spec, inp.options, inp.result, SETTING, None, source, source, inp.device, inp.log)
    ctx.root.mkdir(parents=True, exist_ok=True)
    _record(ctx, source, phantom)
    link_raw(ctx)
    derived = {c: derive_without_channel(ctx, source, c, names) for c in names}
    planned = plan_dataset(ctx, source, verify=phantom is None)
    for dataset in derived.values():
        plan_dataset(ctx, dataset, verify=False)
    folds = list(inp.options.folds)
    if any(fold != "all" for fold in folds):
        write_splits(ctx, source, list(derived.values()))
    trained: dict[tuple, tuple[Method, list[ModelRef]]] = {}
    for seed in inp.options.seeds:
        for fold in folds:
            trained.update(run_fold(ctx.for_seed(seed), methods, source, derived, names, fold))

    rows = [row for (name, fold, seed), (_, models) in trained.items() for model in models
            for row in report.read_csv(metrics_file(ctx.for_seed(seed), name, model.dataset, fold))]
    costs = [collect_costs(ctx.for_seed(seed), method, models, fold)
             for (_, fold, seed), (method, models) in trained.items()]
    from nnunet_unpaired.phantom_multichannel import LAYOUT_DESCRIPTIONS

    data = (f"the multi-channel phantom (nnunet_unpaired/phantom_multichannel.py: {phantom['num_channels']} channels, "
            f"layout '{phantom['layout']}': {LAYOUT_DESCRIPTIONS[phantom['layout']]}), {phantom['num_cases']} "
            f"training + {phantom['num_test_cases']} test cases of {' x '.join(map(str, phantom['shape']))} voxels"
            if phantom else f"the raw dataset {source.name} ({len(names)} channels: "
                            f"{', '.join(names.values())})")
    note = (f"Data: {data}. Models: `vanilla` is nnU-Net (nnUNetTrainerVanilla) trained on all channels; in the rows "
            f"of a missing channel it is that model fed the channel as an all-zero image (so the paired tests there "
            f"compare with it); `{RETRAINED}` is vanilla trained on the remaining channels (one model per missing "
            f"channel, its own planned dataset); {how_others_predict(methods[1:])}. Every run: the same budget and "
            f"split. (In the summary table above the 'modalities' are the test-time inputs; the title and 'data' "
            f"line at the top of results.md name the pair phantom, which the harness writes for every benchmark; this "
            f"experiment's data is the one named here.)")
    text = headline(ctx, methods, rows, costs, names, source, folds)
    return [setting_summary(ctx, trained, "multichannel (MAML)", note, planned, headline=text)]
