"""Learning curve of vanilla nnU-Net on one dataset of a pair: test Dice against training iterations, to choose a
benchmark budget that brings vanilla close to where longer training would take it (issue 13).

One seeded training of ``nnUNetTrainerVanilla`` (fold 0 of nnU-Net's own split, the same plan the benchmark uses:
``plan-pair`` with the given in-plane spacing, feature cap and batch size) saves a snapshot every few epochs
(``nnUNet_unpaired_snapshot_every``); each snapshot predicts the dataset's held-out test cases (``imagesTs``) with the
stock ``nnUNetv2_predict -chk`` and is scored against ``labelsTs``. Every step is resumable (markers, as in the
benchmark); the table and plot are rewritten at the end.

    .venv/bin/python benchmarks/learning_curve.py --raw ../shared/realdata/abdomen --pair 951 952 \\
        --in-plane-spacing 3.0 --epochs 40 --iters 100 --snapshot-every 4

Writes ``<output>/learning_curve.csv``, ``learning_curve.md`` and ``learning_curve.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from nnunet_unpaired.benchmark import report, steps
from nnunet_unpaired.benchmark.data import read_dataset
from nnunet_unpaired.benchmark.metrics import evaluate_folder
from nnunet_unpaired.registration import env_with_trainers
from nnunet_unpaired.training import interface

PLANS = "nnUNetPlans"
TRAINER = "nnUNetTrainerVanilla"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--raw", required=True, help="folder holding the two raw datasets (linked, never written)")
    parser.add_argument("--pair", nargs=2, default=["Dataset951_AbdomenCT", "Dataset952_AbdomenMR"],
                        help="dataset folder names A B (the curve is of A)")
    parser.add_argument("--output", default=os.path.expanduser("~/nnunet_unpaired_benchmarks/learning_curve"))
    parser.add_argument("-c", "--configuration", default="2d")
    parser.add_argument("--in-plane-spacing", type=float, default=3.0)
    parser.add_argument("--max-features", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--val-iters", type=int, default=4)
    parser.add_argument("--snapshot-every", type=int, default=4, help="epochs between snapshots")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    out = Path(args.output).resolve()
    nnunet = {n: out / "nnunet" / n for n in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for folder in nnunet.values():
        folder.mkdir(parents=True, exist_ok=True)
    names = []
    for token in args.pair:
        matches = sorted(p for p in Path(args.raw).iterdir()
                         if p.name == token or p.name.startswith(f"Dataset{token}_"))
        if not matches:
            raise SystemExit(f"no dataset {token!r} in {args.raw}")
        link = nnunet["nnUNet_raw"] / matches[0].name
        if not link.exists():
            link.symlink_to(matches[0].resolve(), target_is_directory=True)
        names.append(matches[0].name)
    env = env_with_trainers()
    env.update({k: str(v) for k, v in nnunet.items()})
    env.update({interface.ENV_EPOCHS: str(args.epochs), interface.ENV_ITERS: str(args.iters),
                interface.ENV_VAL_ITERS: str(args.val_iters), interface.ENV_NO_MIRRORING: "1",
                interface.ENV_SNAPSHOT_EVERY: str(args.snapshot_every), interface.ENV_SEED: str(args.seed),
                "PYTHONUNBUFFERED": "1"})
    env.setdefault("nnUNet_n_proc_DA", "2")
    if args.device == "cpu":
        env["nnUNet_compile"] = "false"
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    record = out / "learning_curve.json"
    wanted = {k: v for k, v in vars(args).items() if k not in ("output", "raw")}
    if record.is_file() and json.loads(record.read_text()) != wanted:
        raise SystemExit(f"{out} holds a learning curve with other settings ({record}); choose another --output")
    steps.write_json_atomic(record, wanted)

    def plan(log_file: Path) -> dict:
        cmd = [sys.executable, "-m", "nnunet_unpaired.cli", "plan-pair", "-d", *names, "-c", args.configuration,
               "-p", PLANS, "-np", "2", "--in-plane-spacing", str(args.in_plane_spacing),
               "--max-features", str(args.max_features), "--batch-size", str(args.batch_size)]
        steps.run_command(cmd, env, log_file)
        conf = json.loads((nnunet["nnUNet_preprocessed"] / names[0] / f"{PLANS}.json").read_text())
        conf = conf["configurations"][args.configuration]
        return {"patch_size": conf["patch_size"], "spacing": conf["spacing"], "batch_size": conf["batch_size"]}

    planned = steps.run_step(out, "plan", plan)
    model = nnunet["nnUNet_results"] / names[0] / f"{TRAINER}__{PLANS}__{args.configuration}" / "fold_0"

    def train(log_file: Path) -> dict:
        resume = (model / "checkpoint_latest.pth").is_file()
        timing = out / ("timing.resume.json" if resume else "timing.json")
        cmd = [steps.tool("nnUNetv2_train"), names[0], args.configuration, "0", "-tr", TRAINER, "-p", PLANS,
               "-device", args.device] + (["--c"] if resume else [])
        steps.run_command(cmd, {**env, interface.ENV_TIMING: str(timing)}, log_file)
        return {}

    trained = steps.run_step(out, "train", train)
    dataset = read_dataset(nnunet["nnUNet_raw"], names[0])
    rows = []
    for epoch in range(args.snapshot_every, args.epochs + 1, args.snapshot_every):
        checkpoint = f"checkpoint_epoch_{epoch}.pth"
        predictions = out / "predictions" / f"epoch_{epoch}"

        def predict(log_file: Path, checkpoint=checkpoint, predictions=predictions) -> dict:
            if predictions.exists():
                shutil.rmtree(predictions)
            cmd = [steps.tool("nnUNetv2_predict"), "-i", str(dataset.raw / "imagesTs"), "-o", str(predictions),
                   "-d", names[0], "-c", args.configuration, "-f", "0", "-tr", TRAINER, "-p", PLANS,
                   "-chk", checkpoint, "-device", args.device, "--disable_progress_bar", "-npp", "0", "-nps", "0"]
            start = time.perf_counter()
            steps.run_command(cmd, env, log_file)
            found = evaluate_folder(predictions, dataset.raw / "labelsTs", dataset.labels)
            report.write_csv(found, predictions.parent / f"epoch_{epoch}.csv")
            return {"seconds": time.perf_counter() - start}

        steps.run_step(out, f"predict__epoch_{epoch}", predict)
        for row in report.read_csv(out / "predictions" / f"epoch_{epoch}.csv"):
            rows.append({"epoch": epoch, "iterations": epoch * args.iters, **row})
    report.write_csv(rows, out / "learning_curve.csv")
    write_outputs(out, rows, planned, trained, args, names[0])
    return 0


def write_outputs(out: Path, rows: list[dict], planned: dict, trained: dict, args, name: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    structures = list(dict.fromkeys(str(r["structure"]) for r in rows))
    iterations = sorted({int(r["iterations"]) for r in rows})

    def mean(it, structure=None):
        values = [float(r["dice"]) for r in rows if int(r["iterations"]) == it and r["dice"] == r["dice"]
                  and (structure is None or r["structure"] == structure)]
        if structure is None:  # mean over structures of the per-structure means
            return float(np.mean([mean(it, s) for s in structures]))
        return float(np.mean(values)) if values else float("nan")

    timing = [json.loads(p.read_text()) for p in sorted(out.glob("timing*.json"))]
    seconds = [s for t in timing for s in t.get("iteration_seconds", [])]
    lines = ["# Learning curve: vanilla nnU-Net", "",
             f"{TRAINER} on {name} fold 0, plan: patch "
             f"{planned.get('patch_size')}, spacing {planned.get('spacing')} mm, batch {planned.get('batch_size')}, "
             f"features capped at {args.max_features}; {args.epochs} epochs x {args.iters} iterations, seed "
             f"{args.seed}, no mirroring; test Dice on imagesTs after every {args.snapshot_every * args.iters} "
             f"iterations. Median {np.median(seconds) if seconds else float('nan'):.2f} s per iteration "
             f"(training wall time {trained.get('seconds', 0) / 60:.0f} min, load "
             f"{trained.get('load_average')}).", "",
             "| iterations | mean Dice | " + " | ".join(structures) + " |",
             "|---|---|" + "|".join("---" for _ in structures) + "|"]
    for it in iterations:
        lines.append(f"| {it} | {mean(it):.3f} | " + " | ".join(f"{mean(it, s):.3f}" for s in structures) + " |")
    (out / "learning_curve.md").write_text("\n".join(lines) + "\n")
    figure = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot(1, 1, 1)
    ax.plot(iterations, [mean(it) for it in iterations], "k-o", label="mean", linewidth=2)
    for s in structures:
        ax.plot(iterations, [mean(it, s) for it in iterations], "-", marker=".", label=s, alpha=0.8)
    ax.set_xlabel("training iterations")
    ax.set_ylabel("test Dice")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Vanilla nnU-Net learning curve ({args.configuration}, {args.in_plane_spacing} mm in-plane)")
    report.save_figure(figure, out / "learning_curve.png")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
