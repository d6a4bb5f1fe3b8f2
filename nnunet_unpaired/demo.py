"""``nnunet_unpaired demo``: the whole workflow on built-in synthetic data, with the real nnU-Net commands.

phantom (CT-like + MR-like datasets) -> ``nnunet_unpaired plan-pair`` -> ``nnUNetv2_train ... -tr
nnUNetTrainerUnpairedJoint`` (short) -> ``nnUNetv2_predict`` on the held-out cases of BOTH modalities ->
per-structure Dice table for each modality.

Everything lives in one work folder (default ``./nnunet_unpaired_demo``) with its own nnUNet_raw /
nnUNet_preprocessed / nnUNet_results, so the user's nnU-Net folders are never touched. Each command is printed before
it runs and its full output goes to ``<work>/logs/``; a rerun starts over in the same folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Dict, List, Sequence

from nnunet_unpaired.errors import UserError
from nnunet_unpaired.plan_pair import SMALL_DATASET_FINGERPRINT_SAMPLES

HELP = "phantom -> plan-pair -> train -> predict -> Dice table, end to end"

# lines of nnU-Net's output worth showing while it runs (the rest goes to the log file)
_SHOW = ("Epoch ", "train_loss", "val_loss", "Pseudo dice", "Epoch time", "Mean Validation Dice", "[plan-pair]",
         "Final validation", "error", "Error", "Traceback")


def _stream(cmd: Sequence[str], env: Dict[str, str], log_file: str) -> None:
    """Run a command, show its important lines, keep everything in ``log_file``; UserError on failure."""
    print("$ " + " ".join(cmd), flush=True)
    with open(log_file, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        for line in proc.stdout:
            log.write(line)
            if any(key in line for key in _SHOW):
                print("    " + line.rstrip()[-150:], flush=True)
        code = proc.wait()
    if code != 0:
        with open(log_file) as f:
            tail = "".join(f.readlines()[-25:])
        raise UserError(f"'{' '.join(cmd[:2])} ...' failed with exit code {code}. Last lines of {log_file}:\n{tail}")


def _tool(name: str) -> str:
    candidate = os.path.join(os.path.dirname(sys.executable), name)
    return candidate if os.path.exists(candidate) else name


def dice_table(rows: List[dict], structures: Sequence[str]) -> str:
    """Markdown table: one line per structure with mean Dice over cases, and the foreground mean."""
    lines = ["| structure | Dice (mean over cases) | cases |", "| --- | --- | --- |"]
    means = []
    for s in structures:
        values = [r["dice"] for r in rows if r["structure"] == s and r["dice"] == r["dice"]]
        mean = sum(values) / len(values) if values else float("nan")
        means.append(mean)
        lines.append(f"| {s} | {mean:.3f} | {len(values)} |")
    lines.append(f"| **mean** | **{sum(means) / len(means):.3f}** | |")
    return "\n".join(lines)


def add_arguments(parser) -> None:
    parser.add_argument("--work-dir", default="nnunet_unpaired_demo", help="folder for all demo data and results")
    parser.add_argument("--trainer", default="nnUNetTrainerUnpairedJoint", help="unpaired trainer to demonstrate")
    parser.add_argument("--configuration", default="2d", choices=("2d", "3d_fullres"))
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--iters", type=int, default=30, help="training iterations per epoch")
    parser.add_argument("--num-train", type=int, default=10, help="training cases per modality")
    parser.add_argument("--num-test", type=int, default=4, help="held-out test cases per modality")
    parser.add_argument("--max-features", type=int, default=32, help="network width cap (small for CPU)")
    parser.add_argument("--batch-size", type=int, default=8, help="batch size of each modality")
    parser.add_argument("-np", "--num-processes", type=int, default=2,
                        help="processes for planning (plan-pair -np); prediction uses one fewer as background workers "
                             "(-npp/-nps; 1: prediction runs in the main process)")
    parser.add_argument("--device", default=None, choices=("cpu", "cuda"),
                        help="default: cuda when available, else cpu")


def run(args) -> int:
    import torch

    from nnunet_unpaired.benchmark.metrics import evaluate_folder
    from nnunet_unpaired.phantom import LABELS, PhantomConfig, dataset_folder_name, write_phantom_pair
    from nnunet_unpaired.registration import env_with_trainers

    if args.num_processes < 1:
        raise UserError(f"--num-processes must be at least 1 (got {args.num_processes})")
    start = time.time()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    work = os.path.abspath(args.work_dir)
    folders = {n: os.path.join(work, n) for n in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for d in list(folders.values()) + [os.path.join(work, "logs"), os.path.join(work, "predictions")]:
        os.makedirs(d, exist_ok=True)
    env = env_with_trainers()
    env.update(folders)
    env.update({"nnUNet_unpaired_epochs": str(args.epochs), "nnUNet_unpaired_iters": str(args.iters),
                "nnUNet_unpaired_val_iters": "5", "nnUNet_unpaired_no_mirroring": "1",
                "nnUNet_n_proc_DA": env.get("nnUNet_n_proc_DA", "2" if device == "cpu" else "8"),
                "nnUNet_def_n_proc": env.get("nnUNet_def_n_proc", "2"), "nnUNet_compile": "false",
                # OpenMP threads that spin while waiting starve nnU-Net's augmentation workers on few cores
                "OMP_WAIT_POLICY": env.get("OMP_WAIT_POLICY", "PASSIVE"), "PYTHONUNBUFFERED": "1"})
    ids = (901, 902)
    names = [dataset_folder_name(ids[0], "CT"), dataset_folder_name(ids[1], "MR")]
    log = lambda name: os.path.join(work, "logs", name)  # noqa: E731

    print(f"== 1/5 synthetic phantom (CT-like + MR-like, different patients) -> {folders['nnUNet_raw']}")
    write_phantom_pair(folders["nnUNet_raw"], ids, PhantomConfig(num_train=args.num_train, num_test=args.num_test))

    print("== 2/5 plan both datasets together (shared network, own normalization)")
    _stream([_tool("nnunet_unpaired"), "plan-pair", "-d", str(ids[0]), str(ids[1]), "-c", args.configuration,
             "--max-features", str(args.max_features), "--batch-size", str(args.batch_size),
             "-np", str(args.num_processes), "--fingerprint-samples", str(SMALL_DATASET_FINGERPRINT_SAMPLES)], env,
            log("plan_pair.log"))

    print(f"== 3/5 train one network on both ({args.epochs} epochs x {args.iters} iterations, {device})")
    _stream([_tool("nnUNetv2_train"), str(ids[0]), args.configuration, "0", "-tr", args.trainer, "-device", device],
            env, log("train.log"))

    print("== 4/5 predict the held-out cases of each modality with the stock nnUNetv2_predict")
    workers = args.num_processes - 1
    predictions = {}
    for dataset_id, name in zip(ids, names):
        out = os.path.join(work, "predictions", name)
        predictions[name] = out
        _stream([_tool("nnUNetv2_predict"), "-i", os.path.join(folders["nnUNet_raw"], name, "imagesTs"), "-o", out,
                 "-d", str(dataset_id), "-c", args.configuration, "-f", "0", "-tr", args.trainer, "-device", device,
                 "-npp", str(workers), "-nps", str(workers)], env, log(f"predict_{name}.log"))

    print("== 5/5 evaluate against labelsTs")
    structures = [k for k in LABELS if k != "background"]
    report = []
    for name in names:
        rows = evaluate_folder(predictions[name], os.path.join(folders["nnUNet_raw"], name, "labelsTs"),
                               {k: v for k, v in LABELS.items() if k != "background"})
        report.append(f"### {name} ({len({r['case'] for r in rows})} test cases)\n\n{dice_table(rows, structures)}\n")
    text = "\n".join(report)
    with open(os.path.join(work, "demo_results.md"), "w") as f:
        f.write(text)
    print(text)
    print(f"Done in {time.time() - start:.0f} s. Models: {folders['nnUNet_results']}; logs: {os.path.join(work, 'logs')}")
    return 0
