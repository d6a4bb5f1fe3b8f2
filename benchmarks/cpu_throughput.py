"""CPU throughput of nnU-Net training for a few ways of sharing the cores: torch threads, augmentation workers
(``nnUNet_n_proc_DA``) and OpenMP's wait policy. The best setting is the benchmark's CPU default (issue 13).

For each setting a fresh process (the settings must be in place before torch starts) builds the trainer on a planned
dataset, starts nnU-Net's data loading, runs warm-up iterations and then times the training iterations (data
loading, forward, backward, optimizer step), without checkpoints or validation. Settings are measured in rotating
order over several rounds, so a change of machine load hits all of them alike; the table gives the median
iterations per second per setting and the machine's load average during the measurement.

    .venv/bin/python benchmarks/cpu_throughput.py --preprocessed <nnUNet_preprocessed> --dataset Dataset951_AbdomenCT

Writes ``<output>/cpu_throughput.json`` and ``cpu_throughput.md`` and prints the table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CHILD = "--child"


def measure(args) -> dict:
    """In the child process: time ``args.iters`` training iterations after ``args.warmup`` (one JSON line out)."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json

    from nnunet_unpaired.training.vanilla import nnUNetTrainerVanilla

    folder = Path(args.preprocessed) / args.dataset
    plans, dataset_json = load_json(folder / f"{args.plans}.json"), load_json(folder / "dataset.json")
    plans["continue_training"] = False  # what nnU-Net's run_training puts into the plans (2.8)
    torch.set_num_threads(os.cpu_count())  # what nnU-Net's run_training does on the CPU
    trainer = nnUNetTrainerVanilla(plans, args.configuration, 0, dataset_json, torch.device("cpu"))
    trainer.on_train_start()  # with nnUNet_unpaired_torch_threads: that many threads before every train_step
    seconds = []
    try:
        trainer.on_epoch_start()
        trainer.on_train_epoch_start()
        for i in range(args.warmup + args.iters):
            start = time.perf_counter()
            trainer.train_step(next(trainer.dataloader_train))
            if i >= args.warmup:
                seconds.append(time.perf_counter() - start)
    finally:
        for loader in (trainer.dataloader_train, trainer.dataloader_val):
            if hasattr(loader, "_finish"):
                loader._finish()
    return {"median_seconds": statistics.median(seconds), "seconds": seconds}


SETTINGS = [dict(threads=t, workers=w, wait=p) for t, w, p in itertools.product((1, 2), (0, 1, 2), ("PASSIVE",))]
SETTINGS += [dict(threads=2, workers=2, wait="ACTIVE"), dict(threads=1, workers=2, wait="ACTIVE")]


def label(setting: dict) -> str:
    return (f"torch threads {setting['threads']}, nnUNet_n_proc_DA {setting['workers']}, "
            f"OMP_WAIT_POLICY {setting['wait']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preprocessed", required=True, help="nnUNet_preprocessed holding the planned dataset")
    parser.add_argument("--dataset", default="Dataset951_AbdomenCT")
    parser.add_argument("--plans", default="nnUNetPlans")
    parser.add_argument("-c", "--configuration", default="2d")
    parser.add_argument("--iters", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output", default=os.path.expanduser("~/nnunet_unpaired_benchmarks/cpu_throughput"))
    parser.add_argument(CHILD, action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args)), flush=True)
        return 0
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[float]] = {label(s): [] for s in SETTINGS}
    loads = []
    for round_index in range(args.rounds):
        order = SETTINGS[round_index % len(SETTINGS):] + SETTINGS[:round_index % len(SETTINGS)]
        for setting in order:
            env = dict(os.environ, nnUNet_n_proc_DA=str(setting["workers"]), OMP_WAIT_POLICY=setting["wait"],
                       nnUNet_unpaired_torch_threads=str(setting["threads"]), nnUNet_compile="false",
                       nnUNet_preprocessed=str(args.preprocessed), nnUNet_unpaired_no_mirroring="1",
                       nnUNet_unpaired_seed="0", nnUNet_results=str(out / "nnUNet_results"),
                       nnUNet_raw=str(out / "nnUNet_raw"))
            cmd = [sys.executable, __file__, CHILD, "--preprocessed", str(args.preprocessed), "--dataset",
                   args.dataset, "--plans", args.plans, "-c", args.configuration, "--iters", str(args.iters),
                   "--warmup", str(args.warmup)]
            load_start = os.getloadavg()[0]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"measuring {label(setting)} failed")
            measured = json.loads(proc.stdout.strip().splitlines()[-1])
            loads.append((load_start + os.getloadavg()[0]) / 2)
            results[label(setting)].append(measured["median_seconds"])
            print(f"round {round_index + 1}: {label(setting)}: {1 / measured['median_seconds']:.2f} it/s", flush=True)
    rows = sorted(((name, statistics.median(v)) for name, v in results.items()), key=lambda kv: kv[1])
    best = rows[0][1]
    lines = [f"Vanilla nnU-Net training iterations on {args.dataset} ({args.configuration}, plans {args.plans}), "
             f"{os.cpu_count()} CPU cores, median over {args.rounds} rounds x {args.iters} timed iterations (after "
             f"{args.warmup} warm-up) in rotating order; machine load average during the runs "
             f"{min(loads):.1f}-{max(loads):.1f}.", "",
             "| setting | s / iteration | iterations / s | relative to the best |", "|---|---|---|---|"]
    lines += [f"| {name} | {s:.3f} | {1 / s:.2f} | {best / s:.2f} |" for name, s in rows]
    text = "\n".join(lines) + "\n"
    (out / "cpu_throughput.md").write_text(text)
    (out / "cpu_throughput.json").write_text(json.dumps({"results": results, "loads": loads}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
