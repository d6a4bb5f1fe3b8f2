"""GPU check: every trainer of this package and vanilla nnU-Net, a few iterations each on a real dataset pair with
nnU-Net's own plans and GPU defaults (AMP, torch.compile), then the exported models loaded strictly and predicting.

One command (it refuses, before doing anything, where no CUDA device is visible)::

    .venv/bin/python benchmarks/gpu_check.py                     # ../shared/realdata/abdomen, 3d_fullres and 2d
    .venv/bin/python benchmarks/gpu_check.py --raw /data --pair Dataset701_MMWHS_CT Dataset702_MMWHS_MR -c 3d_fullres
    .venv/bin/python benchmarks/gpu_check.py --trainers vanilla joint eam --iters 10    # a quicker subset

What it does, in its own folders under ``--output`` (the raw datasets are linked, never written):

1. links the two raw datasets A and B into its own ``nnUNet_raw`` and runs ``nnunet_unpaired plan-pair`` for the
   configurations asked for, without shrinking anything (nnU-Net's planned network, patch and batch size);
   for MAML, which needs ONE paired multi-channel dataset, a dataset M whose channels are links to A's image
   (``--maml-channels`` of them, so MAML's modality dropout draws channel subsets) is planned with
   ``nnUNetv2_plan_and_preprocess``; vanilla is trained on M as well, as MAML's reference; likewise a two-channel
   dataset P (channels: links to A's image, so co-registered) for CMC's paired mode and its vanilla reference (P is A
   itself when A has two channels, M when ``--maml-channels`` is 2);
2. writes a split with one validation case per dataset (fold 0), so nnU-Net's final validation stays short;
3. trains each trainer with the stock ``nnUNetv2_train`` for 2 epochs of ``--iters`` iterations: the first epoch is
   the warm-up (compilation), the seconds per iteration are the median over the second epoch. The training
   environment is nnU-Net's default (AMP, compile unless ``--no-compile``) plus this package's variables:
   ``nnUNet_unpaired_epochs/iters/val_iters``, ``nnUNet_unpaired_timing_file`` (per-iteration seconds and peak CUDA
   memory), ``nnUNet_unpaired_snapshot_every=1`` (``checkpoint_epoch_1.pth``) and ``nnUNet_unpaired_no_mirroring``
   (unless ``--mirroring``; test-time mirroring would make the final validation 4-8x longer). ``TORCH_LOGS`` reports
   recompilations and graph breaks into the run's log, which are counted;
4. checks every model folder the run wrote (A's, and B's export for the two-modality trainers): training and
   validation losses in the checkpoint's logging finite, network weights changed between ``checkpoint_epoch_1.pth``
   and ``checkpoint_final.pth``, no ``_orig_mod.`` key, the weights loaded STRICTLY into the network the trainer
   class's ``build_network_architecture`` builds (what the predictor does), and ``nnUNetv2_predict`` on one test case
   (``imagesTs``; Dice against ``labelsTs`` for information only: a few iterations train little).

Results: a markdown table on the console and in ``<output>/gpu_check.md``, everything in ``<output>/gpu_check.json``,
one log per command in ``<output>/logs/``. Seconds per iteration and peak memory are given as ratios to vanilla
(on the same dataset and configuration) and to joint. Reruns skip the runs that passed (``--fresh`` starts over).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RAW = REPO.parent / "shared" / "realdata" / "abdomen"
DEFAULT_PAIR = ("Dataset951_AbdomenCT", "Dataset952_AbdomenMR")
PLANS = "nnUNetPlans"
FOLD = "0"
EPOCHS = 2  # epoch 0: warm-up (compilation), epoch 1: measured
#: the device of every command; a module constant, not an option: the check is for GPUs (tests set "cpu" to run the
#: script's logic on a tiny pair)
DEVICE = "cuda"
REFUSAL = ("gpu_check needs a CUDA GPU and found none ({reason}). Nothing was done. Run it on a machine with an "
           "NVIDIA GPU and a CUDA build of torch (check: python -c 'import torch; print(torch.cuda.is_available())').")


@dataclass(frozen=True)
class Run:
    """One training run: ``label`` (what the table shows), the trainer, and the dataset it is started on
    (``A``: the pair's first dataset, with B as partner where the trainer has one; ``M``: the multi-channel one)."""

    label: str
    trainer: str
    dataset: str = "A"


RUNS = (
    Run("vanilla", "nnUNetTrainerVanilla"),
    Run("joint", "nnUNetTrainerUnpairedJoint"),
    Run("modality-norm", "nnUNetTrainerUnpairedJointModalityNorm"),
    Run("ummkd", "nnUNetTrainerUMMKD"),
    Run("eam", "nnUNetTrainerEAM"),
    Run("cmc", "nnUNetTrainerCMC"),
    Run("source-only", "nnUNetTrainerSourceOnly"),
    Run("glua-style", "nnUNetTrainerGLUAStyle"),
    Run("glua", "nnUNetTrainerGLUA"),
    Run("glua-global", "nnUNetTrainerGLUAGlobalOnly"),
    Run("glua-local", "nnUNetTrainerGLUALocalOnly"),
    Run("glua-unmasked", "nnUNetTrainerGLUAUnmasked"),
    Run("glua-local-unmasked", "nnUNetTrainerGLUALocalOnlyUnmasked"),
    Run("vanilla-multichannel", "nnUNetTrainerVanilla", "M"),
    Run("vanilla-dropout", "nnUNetTrainerChannelDropout", "M"),
    Run("maml", "nnUNetTrainerMAML", "M"),
    Run("vanilla-paired", "nnUNetTrainerVanilla", "P"),
    Run("cmc-paired", "nnUNetTrainerCMCPaired", "P"),
)
#: the reference runs of the ratios: vanilla per dataset, joint for the pair
VANILLA = {"A": "vanilla", "M": "vanilla-multichannel", "P": "vanilla-paired"}
#: the one-dataset groups: MAML's multi-channel dataset M, CMC's paired mode's two-channel dataset P
SINGLE = ("M", "P")
JOINT = "joint"


# ------------------------------------------------------------------------------------------------ pure helpers
def cuda_problem() -> Optional[str]:
    """Why this machine cannot run the check (no torch, a CPU build, no visible device), or None."""
    try:
        import torch
    except ImportError as error:
        return f"torch cannot be imported: {error}"
    if not torch.cuda.is_available():
        build = torch.version.cuda
        return (f"torch {torch.__version__} is a CPU-only build" if build is None else
                f"torch.cuda.is_available() is False (torch {torch.__version__}, CUDA {build}, "
                f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')!r})")
    return None


def summarize_timing(record: Mapping, warmup_epochs: int = 1) -> Dict[str, object]:
    """Seconds per iteration (median over the epochs after the warm-up), the first iteration's seconds (includes
    compilation) and the peak memory, from a ``nnUNet_unpaired_timing_file`` record."""
    seconds = [float(s) for s in record.get("iteration_seconds", [])]
    epochs = [int(e) for e in record.get("epochs", [0] * len(seconds))]
    measured = [s for s, e in zip(seconds, epochs) if e >= warmup_epochs]
    if not measured:  # a single epoch: everything but the first iteration
        measured = seconds[1:]
    return {"s_per_it": statistics.median(measured) if measured else float("nan"),
            "measured_iterations": len(measured),
            "first_it_s": seconds[0] if seconds else float("nan"),
            "peak_mib": float(record.get("peak_memory_mib", float("nan"))),
            "peak_kind": record.get("peak_memory_kind", "")}


def _ratio(value, reference) -> float:
    try:
        value, reference = float(value), float(reference)
    except (TypeError, ValueError):
        return float("nan")
    if not (math.isfinite(value) and math.isfinite(reference)) or reference <= 0:
        return float("nan")
    return value / reference


def add_ratios(rows: List[Dict]) -> List[Dict]:
    """Each row (keys ``label``, ``configuration``, ``dataset``, ``s_per_it``, ``peak_mib``) gets ``time_x_vanilla``,
    ``mem_x_vanilla`` (vanilla on the same dataset and configuration) and ``time_x_joint``, ``mem_x_joint``."""
    by_key = {(r["configuration"], r["label"]): r for r in rows}
    out = []
    for row in rows:
        row = dict(row)
        references = {"vanilla": by_key.get((row["configuration"], VANILLA.get(row.get("dataset", "A"), ""))),
                      "joint": by_key.get((row["configuration"], JOINT)) if row.get("dataset", "A") == "A" else None}
        for name, reference in references.items():
            for key, short in (("s_per_it", "time"), ("peak_mib", "mem")):
                row[f"{short}_x_{name}"] = _ratio(row.get(key), reference.get(key) if reference else None)
        out.append(row)
    return out


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return "-" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


COLUMNS = (("configuration", "config"), ("label", "trainer"), ("status", "status"), ("compiled", "compiled"),
           ("recompiles", "recompiles"), ("s_per_it", "s/it"), ("time_x_vanilla", "x vanilla"),
           ("time_x_joint", "x joint"), ("first_it_s", "1st it (s)"), ("peak_gib", "peak GiB"),
           ("mem_x_vanilla", "x vanilla"), ("mem_x_joint", "x joint"), ("losses_finite", "losses finite"),
           ("weights_changed", "weights changed"), ("strict_load", "strict load"), ("predicted", "predicted"),
           ("dice", "Dice (info)"))


def markdown_table(rows: Sequence[Mapping]) -> str:
    """The results as a markdown table (one line per run); missing values print as ``-``."""
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        row = dict(row)
        if "peak_mib" in row and "peak_gib" not in row:
            row["peak_gib"] = _ratio(row["peak_mib"], 1024.0)
        lines.append("| " + " | ".join(_fmt(row.get(key)) for key, _ in COLUMNS) + " |")
    return "\n".join(lines)


def compile_events(log_text: str) -> Dict[str, object]:
    """What a training log says about torch.compile: whether nnU-Net compiled the network, how often dynamo
    recompiled, whether it gave up (recompile limit: the function then runs eagerly) and how many graph breaks."""
    return {"compiled": "Using torch.compile" in log_text,
            "recompiles": log_text.count("Recompiling function"),
            "recompile_limit_hit": "torch._dynamo hit config." in log_text,
            "graph_breaks": log_text.count("Graph break")}


def finite_losses(logging: Mapping) -> bool:
    """True when every logged loss (``train_losses``, ``val_losses`` and each per-term ``train_*``) is finite."""
    keys = [k for k in logging if k in ("train_losses", "val_losses") or k.startswith("train_")]
    values = [v for k in keys for v in logging[k]]
    return bool(values) and all(math.isfinite(float(v)) for v in values)


def weights_changed(before: Mapping, after: Mapping) -> bool:
    """True when the two state dicts have the same keys and at least one floating-point tensor differs."""
    if set(before) != set(after):
        return False
    return any(b.is_floating_point() and not bool((b == after[k]).all()) for k, b in before.items())


# ------------------------------------------------------------------------------------------------ commands
def tool(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def run_logged(cmd: Sequence[str], env: Mapping[str, str], log_file: Path, timeout: float) -> Optional[str]:
    """Run a command with its output in ``log_file``; None on success, else the reason (exit code / timeout)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    print("    $ " + " ".join(map(str, cmd)), flush=True)
    with open(log_file, "a") as out:
        out.write("$ " + " ".join(map(str, cmd)) + "\n")
        out.flush()
        try:
            code = subprocess.run([str(c) for c in cmd], env=dict(env), stdout=out, stderr=subprocess.STDOUT,
                                  timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            return f"timed out after {timeout:.0f} s (log: {log_file})"
    if code != 0:
        tail = "".join(log_file.read_text(errors="replace").splitlines(keepends=True)[-15:])
        return f"exit code {code} (log: {log_file}); last lines:\n{tail}"
    return None


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def find_dataset(raw: Path, token: str) -> Path:
    """The dataset folder in ``raw`` named ``token`` or with that id (``951`` finds ``Dataset951_AbdomenCT``)."""
    prefix = f"Dataset{int(token):03d}_" if token.isdigit() else None
    matches = sorted(p for p in raw.iterdir() if p.is_dir() and (p.name == token or (prefix and p.name.startswith(
        prefix))))
    if not matches:
        raise SystemExit(f"gpu_check: no dataset {token!r} in {raw}")
    return matches[0]


def link_dataset(source: Path, raw: Path) -> str:
    link = raw / source.name
    if not link.exists():
        link.symlink_to(source.resolve(), target_is_directory=True)
    return source.name


def _cases(folder: Path, ending: str) -> List[str]:
    return sorted(p.name[:-len("_0000" + ending)] for p in folder.glob(f"*_0000{ending}"))


def make_multichannel(source: Path, raw: Path, dataset_id: int, channels: int) -> str:
    """Dataset M for MAML: each case's ``channels`` channels are links to channel 0 of ``source`` (same labels)."""
    meta = json.loads((source / "dataset.json").read_text())
    ending = meta["file_ending"]
    name = f"Dataset{dataset_id:03d}_{meta.get('name', source.name.split('_', 1)[-1])}{channels}ch"
    folder = raw / name
    if (folder / "dataset.json").is_file():
        return name
    for images, labels in (("imagesTr", "labelsTr"), ("imagesTs", "labelsTs")):
        if not (source / images).is_dir():
            continue
        (folder / images).mkdir(parents=True, exist_ok=True)
        for case in _cases(source / images, ending):
            for c in range(channels):
                target = folder / images / f"{case}_{c:04d}{ending}"
                if not target.exists():
                    target.symlink_to((source / images / f"{case}_0000{ending}").resolve())
        if (source / labels).is_dir() and not (folder / labels).exists():
            (folder / labels).symlink_to((source / labels).resolve(), target_is_directory=True)
    channel = meta["channel_names"]["0"]
    meta.update({"channel_names": {str(c): channel for c in range(channels)}, "name": name.split("_", 1)[1],
                 "description": f"gpu_check: {channels} channels, each a link to channel 0 of {source.name}"})
    write_json(folder / "dataset.json", meta)
    return name


def write_one_case_split(preprocessed: Path, name: str) -> None:
    """Fold 0 with a single validation case, so nnU-Net's final validation predicts one case per dataset."""
    meta = json.loads((preprocessed / name / "dataset.json").read_text())
    ending = meta["file_ending"]
    cases = sorted(p.name[:-len(ending)] for p in (preprocessed / name / "gt_segmentations").glob(f"*{ending}"))
    if len(cases) < 2:
        raise SystemExit(f"gpu_check: {name} has {len(cases)} training case(s); it needs at least 2")
    write_json(preprocessed / name / "splits_final.json", [{"train": cases[1:], "val": cases[:1]}])


# ------------------------------------------------------------------------------------------------ checks
def check_model_folder(folder: Path, configuration: str) -> Dict[str, object]:
    """Losses finite, weights changed, no ``_orig_mod.`` keys, strict load into the trainer's own network."""
    import torch
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    final = torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    weights = final["network_weights"]
    result: Dict[str, object] = {"folder": str(folder), "losses_finite": finite_losses(final.get("logging", {})),
                                 "orig_mod_keys": sum("_orig_mod." in k for k in weights)}
    snapshot = folder / "checkpoint_epoch_1.pth"
    result["weights_changed"] = (weights_changed(torch.load(snapshot, map_location="cpu", weights_only=False)
                                                 ["network_weights"], weights) if snapshot.is_file() else None)
    try:
        trainer = recursive_find_trainer_class_by_name(final["trainer_name"])
        plans = json.loads((folder.parent / "plans.json").read_text())
        dataset_json = json.loads((folder.parent / "dataset.json").read_text())
        manager = PlansManager(plans)
        config = manager.get_configuration(configuration)
        network = trainer.build_network_architecture(
            manager, config, determine_num_input_channels(manager, config, dataset_json),
            manager.get_label_manager(dataset_json).num_segmentation_heads, enable_deep_supervision=False)
        network.load_state_dict(weights, strict=True)
        result["strict_load"] = True
    except Exception as error:  # reported in the table, the other checks go on
        result["strict_load"] = False
        result["strict_load_error"] = f"{type(error).__name__}: {error}"[:2000]
    return result


def predict_one(raw: Path, name: str, configuration: str, trainer: str, env: Mapping[str, str], work: Path,
                log_file: Path, timeout: float) -> Dict[str, object]:
    """``nnUNetv2_predict`` on the first test case of dataset ``name`` (imagesTs; imagesTr when there is none)."""
    import numpy as np
    import SimpleITK as sitk

    meta = json.loads((raw / name / "dataset.json").read_text())
    ending = meta["file_ending"]
    images = raw / name / ("imagesTs" if _cases(raw / name / "imagesTs", ending) else "imagesTr")
    case = _cases(images, ending)[0]
    inputs, outputs = work / "input", work / "output"
    shutil.rmtree(work, ignore_errors=True)
    inputs.mkdir(parents=True)
    for c in range(len(meta["channel_names"])):
        (inputs / f"{case}_{c:04d}{ending}").symlink_to((images / f"{case}_{c:04d}{ending}").resolve())
    cmd = [tool("nnUNetv2_predict"), "-i", str(inputs), "-o", str(outputs), "-d", name, "-c", configuration,
           "-f", FOLD, "-tr", trainer, "-p", PLANS, "--disable_tta", "--disable_progress_bar", "-npp", "1",
           "-nps", "1", "-device", DEVICE]
    start = time.perf_counter()
    failure = run_logged(cmd, env, log_file, timeout)
    result: Dict[str, object] = {"case": case, "predict_s": time.perf_counter() - start}
    predicted = outputs / f"{case}{ending}"
    result["predicted"] = failure is None and predicted.is_file()
    if failure:
        result["predict_error"] = failure
        return result
    labels = images.parent / ("labelsTs" if images.name == "imagesTs" else "labelsTr") / f"{case}{ending}"
    if predicted.is_file() and labels.is_file():
        pred = sitk.GetArrayFromImage(sitk.ReadImage(str(predicted)))
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(labels)))
        if pred.shape == ref.shape:
            scores = [2 * np.sum((pred == v) & (ref == v)) / max(1, np.sum(pred == v) + np.sum(ref == v))
                      for v in np.unique(ref) if v > 0]
            result["dice"] = float(np.mean(scores)) if scores else float("nan")
    return result


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", type=Path, default=DEFAULT_RAW, help=f"folder holding the pair (default {DEFAULT_RAW})")
    parser.add_argument("--pair", nargs=2, default=list(DEFAULT_PAIR), metavar=("A", "B"),
                        help="dataset folder names or ids in --raw (default: %(default)s)")
    parser.add_argument("--output", type=Path, default=Path.home() / "nnunet_unpaired_benchmarks" / "gpu_check")
    parser.add_argument("-c", "--configurations", nargs="+", default=["3d_fullres", "2d"])
    parser.add_argument("--trainers", nargs="+", default=[r.label for r in RUNS], choices=[r.label for r in RUNS],
                        metavar="LABEL", help="runs to do (default: all): " + ", ".join(r.label for r in RUNS))
    parser.add_argument("--iters", type=int, default=20, help="training iterations per epoch (2 epochs; default 20)")
    parser.add_argument("--val-iters", type=int, default=2, help="validation iterations per epoch (default 2)")
    parser.add_argument("--maml-channels", type=int, default=3, help="channels of MAML's dataset (default 3)")
    parser.add_argument("--mirroring", action="store_true", help="keep nnU-Net's mirroring (training and test time)")
    parser.add_argument("--no-compile", action="store_true", help="nnUNet_compile=false (to compare with compile)")
    parser.add_argument("-np", "--num-processes", type=int, default=max(1, min(8, os.cpu_count() or 1)),
                        help="processes for planning and preprocessing")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per command before it is stopped")
    parser.add_argument("--fresh", action="store_true", help="delete --output's folders of a previous check first")
    args = parser.parse_args(argv)
    if args.iters < 2 or args.val_iters < 1:
        parser.error("--iters must be >= 2 and --val-iters >= 1")
    if args.maml_channels < 2:
        parser.error("--maml-channels must be >= 2")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    problem = cuda_problem()
    if problem is not None:
        print(REFUSAL.format(reason=problem), file=sys.stderr)
        return 2
    import torch

    from nnunet_unpaired.registration import env_with_trainers

    out = args.output.resolve()
    nnunet = {n: out / "nnunet" / n for n in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    if args.fresh:
        for folder in [out / "nnunet", out / "runs", out / "logs", out / "predictions"]:
            shutil.rmtree(folder, ignore_errors=True)
    for folder in nnunet.values():
        folder.mkdir(parents=True, exist_ok=True)
    env = env_with_trainers()
    env.update({k: str(v) for k, v in nnunet.items()})
    env.update({"PYTHONUNBUFFERED": "1", "TORCH_LOGS": "recompiles,graph_breaks"})
    env.pop("nnUNet_compile", None)
    if args.no_compile:
        env["nnUNet_compile"] = "false"
    os.environ.update({k: env[k] for k in (*nnunet, "nnUNet_extTrainer")})  # for the strict loads in this process

    raw = nnunet["nnUNet_raw"]
    sources = [find_dataset(args.raw, token) for token in args.pair]
    names = {"A": link_dataset(sources[0], raw), "B": link_dataset(sources[1], raw)}
    runs = [r for r in RUNS if r.label in args.trainers]
    channels_a = len(json.loads((sources[0] / "dataset.json").read_text())["channel_names"])
    for key, wanted in (("M", args.maml_channels), ("P", 2)):
        if not any(r.dataset == key for r in runs):
            continue
        if (key == "M" and channels_a >= 2) or (key == "P" and channels_a == 2):
            names[key] = names["A"]
        elif key == "P" and names.get("M") and args.maml_channels == 2:
            names[key] = names["M"]
        else:
            taken = {int(n[7:10]) for n in names.values()}
            names[key] = make_multichannel(sources[0], raw, next(i for i in range(999, 0, -1) if i not in taken),
                                           wanted)
    device = torch.cuda.get_device_name(0) if DEVICE == "cuda" else DEVICE
    print(f"gpu_check on {device}: {names}, configurations {args.configurations}, {len(runs)} runs, "
          f"{EPOCHS} x {args.iters} iterations each; output {out}", flush=True)

    # planning (a marker per dataset group and configuration set, so reruns skip it)
    configs = list(args.configurations)
    plans = {}
    marker = out / "runs" / f"planned__{'_'.join(configs)}.json"
    planned = json.loads(marker.read_text()) if marker.is_file() else {}
    if "pair" not in planned:
        failure = run_logged([sys.executable, "-m", "nnunet_unpaired.cli", "plan-pair", "-d", names["A"], names["B"],
                              "-c", *configs, "-p", PLANS, "-np", str(args.num_processes)], env,
                             out / "logs" / "plan_pair.log", args.timeout)
        if failure:
            raise SystemExit(f"gpu_check: plan-pair failed: {failure}")
        planned["pair"] = True
        write_json(marker, planned)
    for key in SINGLE:
        if key not in names or names[key] in (names["A"], names["B"]) or planned.get(key) == names[key]:
            continue
        if key == "P" and names[key] == names.get("M"):
            planned[key] = names[key]  # planned as M
            continue
        failure = run_logged([tool("nnUNetv2_plan_and_preprocess"), "-d", names[key][7:10], "-c", *configs,
                              "-np", *[str(args.num_processes)] * len(configs), "-npfp", str(args.num_processes)],
                             env, out / "logs" / f"plan_{'multichannel' if key == 'M' else 'paired'}.log",
                             args.timeout)
        if failure:
            raise SystemExit(f"gpu_check: planning the {'multi-channel' if key == 'M' else 'two-channel'} dataset "
                             f"failed: {failure}")
        planned[key] = names[key]
        write_json(marker, planned)
    for key, name in names.items():
        write_one_case_split(nnunet["nnUNet_preprocessed"], name)
        plans[key] = json.loads((nnunet["nnUNet_preprocessed"] / name / f"{PLANS}.json").read_text())

    rows = []
    for configuration in configs:
        done: Dict[str, bool] = {}
        for run in runs:
            rows.append(check_run(run, configuration, names, plans, env, args, out, done))
            done[run.trainer] = rows[-1]["status"] == "ok"
            write_results(out, add_ratios(rows), device, names, args)
    rows = add_ratios(rows)
    table = write_results(out, rows, device, names, args)
    print("\n" + table, flush=True)
    failed = [f"{r['configuration']}/{r['label']}" for r in rows if r["status"] != "ok"]
    if failed:
        print(f"\ngpu_check: {len(failed)} run(s) failed a check: {', '.join(failed)} (details in "
              f"{out / 'gpu_check.json'})", file=sys.stderr)
        return 1
    return 0


def check_run(run: Run, configuration: str, names: Mapping[str, str], plans: Mapping, env: Mapping[str, str], args,
              out: Path, done: Mapping[str, bool]) -> Dict[str, object]:
    """Train one run (unless a previous check passed it), then check its model folders; the table row."""
    from nnunet_unpaired.training import interface

    dataset = names[run.dataset]
    record_file = out / "runs" / configuration / f"{run.label}.json"
    if record_file.is_file():
        row = json.loads(record_file.read_text())
        if row.get("status") == "ok":
            print(f"[skip] {configuration} {run.label}: passed before", flush=True)
            return row
    config = plans[run.dataset]["configurations"].get(configuration, {})
    row: Dict[str, object] = {"label": run.label, "trainer": run.trainer, "configuration": configuration,
                              "dataset": run.dataset, "trained_on": dataset, "patch_size": config.get("patch_size"),
                              "batch_size": config.get("batch_size"), "status": "ok"}
    needed = interface.PREREQUISITES.get(run.trainer)
    if needed and not done.get(needed):
        row["status"] = f"skipped: needs a passed {needed} run first"
        write_json(record_file, row)
        return row
    print(f"[train] {configuration} {run.label} ({run.trainer} on {dataset})", flush=True)
    results = Path(env["nnUNet_results"])
    folder_name = f"{run.trainer}__{PLANS}__{configuration}"
    datasets = [dataset] if run.dataset in SINGLE else [names["A"], names["B"]]
    for name in datasets:
        shutil.rmtree(results / name / folder_name / f"fold_{FOLD}", ignore_errors=True)
    timing = out / "runs" / configuration / f"{run.label}.timing.json"
    timing.unlink(missing_ok=True)
    log_file = out / "logs" / configuration / f"train__{run.label}.log"
    log_file.unlink(missing_ok=True)
    train_env = {**env, interface.ENV_EPOCHS: str(EPOCHS), interface.ENV_ITERS: str(args.iters),
                 interface.ENV_VAL_ITERS: str(args.val_iters), interface.ENV_SNAPSHOT_EVERY: "1",
                 interface.ENV_TIMING: str(timing)}
    if not args.mirroring:
        train_env[interface.ENV_NO_MIRRORING] = "1"
    start = time.perf_counter()
    failure = run_logged([tool("nnUNetv2_train"), dataset, configuration, FOLD, "-tr", run.trainer, "-p", PLANS,
                          "-device", DEVICE],
                         train_env, log_file, args.timeout)
    row["train_wall_s"] = time.perf_counter() - start
    row.update(compile_events(log_file.read_text(errors="replace") if log_file.is_file() else ""))
    if timing.is_file():
        row.update(summarize_timing(json.loads(timing.read_text())))
    if failure:
        row["status"] = f"training failed: {failure}"
        write_json(record_file, row)
        return row
    folders = [results / name / folder_name / f"fold_{FOLD}" for name in datasets]
    folders = [f for f in folders if (f / "checkpoint_final.pth").is_file()]
    checks = [check_model_folder(f, configuration) for f in folders]
    for check in checks:
        model_dataset = Path(check["folder"]).parent.parent.name
        check.update(predict_one(Path(env["nnUNet_raw"]), model_dataset, configuration, run.trainer, env,
                                 out / "predictions" / configuration / run.label / model_dataset,
                                 out / "logs" / configuration / f"predict__{run.label}__{model_dataset}.log",
                                 args.timeout))
    row["model_folders"] = checks
    row["losses_finite"] = bool(checks) and all(c["losses_finite"] for c in checks)
    row["weights_changed"] = bool(checks) and all(c["weights_changed"] for c in checks)
    row["strict_load"] = bool(checks) and all(c["strict_load"] and not c["orig_mod_keys"] for c in checks)
    row["predicted"] = bool(checks) and all(c["predicted"] for c in checks)
    dice = [c["dice"] for c in checks if isinstance(c.get("dice"), float) and math.isfinite(c["dice"])]
    row["dice"] = float(statistics.mean(dice)) if dice else float("nan")
    problems = [name for name in ("losses_finite", "weights_changed", "strict_load", "predicted") if not row[name]]
    if not checks:
        problems.insert(0, "no model folder with checkpoint_final.pth")
    if not row.get("compiled") and not args.no_compile:
        row["note"] = "trained eagerly (nnU-Net did not compile the network)"
    if row.get("recompile_limit_hit"):
        row["note"] = "dynamo hit its recompile limit: part of the training ran eagerly"
    if problems:
        row["status"] = "FAILED: " + ", ".join(problems)
    write_json(record_file, row)
    return row


def write_results(out: Path, rows: List[Dict], device: str, names: Mapping[str, str], args) -> str:
    table = markdown_table(rows)
    notes = [f"- {r['configuration']} {r['label']}: {r['note']}" for r in rows if r.get("note")]
    plans = sorted({(r["configuration"], r["dataset"], str(r.get("patch_size")), str(r.get("batch_size")))
                    for r in rows})
    text = "\n".join([
        "# GPU check", "",
        f"{device}; datasets {dict(names)}; {EPOCHS} epochs x {args.iters} iterations per run (s/it: median of the "
        f"second epoch; 1st it: the first iteration, compilation included), nnU-Net's defaults (AMP, "
        f"{'no compile' if args.no_compile else 'torch.compile'}), mirroring {'on' if args.mirroring else 'off'}. "
        f"Ratios: to vanilla on the same dataset and configuration, and to joint. Peak memory: "
        f"torch.cuda.max_memory_allocated of the training process. Dice: one test case after "
        f"{EPOCHS * args.iters} iterations (information only).", "",
        "Plans (configuration, dataset, patch, batch): " + "; ".join(" ".join(p) for p in plans), "",
        table, "", *notes])
    (out / "gpu_check.md").write_text(text + "\n")
    write_json(out / "gpu_check.json", {"device": device, "datasets": dict(names), "args": vars(args), "rows": rows})
    return table


if __name__ == "__main__":
    raise SystemExit(main())
