"""Joint training's two forward passes against one forward over the concatenated A+B batch (issue 14, item 5).

Where modality A and B share every parameter (the joint baseline, EAM), a training step can run the network once on
``cat(batch_A, batch_B)`` instead of twice. nnU-Net's networks normalise per sample (InstanceNorm), so both give the
same outputs and gradients up to floating-point summation order; only the cost can differ. This script times a full
training step (forward, Dice+CE deep-supervision loss on both halves, backward, gradient clipping, SGD step) both
ways on one planned dataset, with nnU-Net's own network, loss and optimizer, on real batches from nnU-Net's loader,
on the CPU and (when there is one) on a CUDA GPU with nnU-Net's defaults there (fp16 autocast + GradScaler,
torch.compile). The two ways alternate over rounds, so a change of machine load hits both alike.

    .venv/bin/python benchmarks/joint_forward.py --preprocessed <nnUNet_preprocessed> --dataset Dataset951_AbdomenCT \
        [--configuration 2d] [--device cpu|cuda] [--rounds 5] [--steps 5] [--output DIR]

Prints the table, writes ``<output>/joint_forward.json`` and ``joint_forward.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _split(output, n: int):
    if isinstance(output, (list, tuple)):
        return [o[:n] for o in output], [o[n:] for o in output]
    return output[:n], output[n:]


def _step(trainer, data_a, target_a, data_b, target_b, concatenated: bool) -> float:
    import torch
    from torch import autocast

    from nnunetv2.utilities.helpers import dummy_context

    trainer.optimizer.zero_grad(set_to_none=True)
    amp = autocast(trainer.device.type, enabled=True) if trainer.device.type == "cuda" else dummy_context()
    with amp:
        if concatenated:
            out_a, out_b = _split(trainer.network(torch.cat((data_a, data_b))), data_a.shape[0])
        else:
            out_a, out_b = trainer.network(data_a), trainer.network(data_b)
        loss = trainer.loss(out_a, target_a) + trainer.loss(out_b, target_b)
    params = trainer.network.parameters()
    if trainer.grad_scaler is not None:
        trainer.grad_scaler.scale(loss).backward()
        trainer.grad_scaler.unscale_(trainer.optimizer)
        torch.nn.utils.clip_grad_norm_(params, 12)
        trainer.grad_scaler.step(trainer.optimizer)
        trainer.grad_scaler.update()
    else:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 12)
        trainer.optimizer.step()
    return float(loss.detach())


def _batch(trainer):
    batch = next(trainer.dataloader_train)
    data = batch["data"].to(trainer.device)
    target = [t.to(trainer.device) for t in batch["target"]] if isinstance(batch["target"], list) \
        else batch["target"].to(trainer.device)
    return data, target


def measure(args) -> dict:
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json

    from nnunet_unpaired.training.vanilla import nnUNetTrainerVanilla

    device = torch.device(args.device)
    folder = Path(args.preprocessed) / args.dataset
    plans, dataset_json = load_json(folder / f"{args.plans}.json"), load_json(folder / "dataset.json")
    plans["continue_training"] = False
    if device.type == "cpu":
        torch.set_num_threads(os.cpu_count())  # what nnU-Net's run_training does on the CPU
    trainer = nnUNetTrainerVanilla(plans, args.configuration, 0, dataset_json, device)
    trainer.on_train_start()  # network, loss, optimizer, loaders; compiled where nnU-Net compiles (CUDA)
    seconds = {"two forwards": [], "one concatenated forward": []}
    peak = {k: 0 for k in seconds}
    try:
        batches = [(*_batch(trainer), *_batch(trainer)) for _ in range(args.steps)]
        for concatenated in (False, True):  # warm-up both (compilation for both batch sizes on CUDA)
            for b in batches[:2]:
                _step(trainer, *b, concatenated)
        for _ in range(args.rounds):
            for name, concatenated in (("two forwards", False), ("one concatenated forward", True)):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                start = time.perf_counter()
                for b in batches:
                    _step(trainer, *b, concatenated)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                    peak[name] = max(peak[name], torch.cuda.max_memory_allocated())
                seconds[name].append((time.perf_counter() - start) / len(batches))
    finally:
        for loader in (trainer.dataloader_train, trainer.dataloader_val):
            if hasattr(loader, "_finish"):
                loader._finish()
    patch = trainer.configuration_manager.patch_size
    return {
        "device": str(device), "configuration": args.configuration, "patch_size": list(patch),
        "batch_size_per_modality": trainer.configuration_manager.batch_size,
        "compiled": bool(trainer._do_i_compile()), "amp": trainer.grad_scaler is not None,
        "median_seconds_per_step": {k: statistics.median(v) for k, v in seconds.items()},
        "seconds_per_step": seconds, "peak_gpu_bytes": peak if device.type == "cuda" else None,
        "load_average": os.getloadavg(),
    }


def table(result: dict) -> str:
    med = result["median_seconds_per_step"]
    base = med["two forwards"]
    rows = [f"Device {result['device']}, {result['configuration']}, patch {result['patch_size']}, batch "
            f"{result['batch_size_per_modality']} per modality, compiled {result['compiled']}, AMP {result['amp']}, "
            f"load average {', '.join(f'{x:.2f}' for x in result['load_average'])}.", "",
            "| training step | median s/step | ratio to two forwards | per-round s/step |", "|---|---|---|---|"]
    for name, value in med.items():
        per_round = ", ".join(f"{s:.3f}" for s in result["seconds_per_step"][name])
        rows.append(f"| {name} | {value:.3f} | {value / base:.3f} | {per_round} |")
    if result["peak_gpu_bytes"]:
        rows += ["", "Peak GPU memory: " + ", ".join(f"{k} {v / 2**30:.2f} GiB"
                                                     for k, v in result["peak_gpu_bytes"].items())]
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preprocessed", required=True, help="an nnUNet_preprocessed folder with the planned dataset")
    parser.add_argument("--dataset", required=True, help="e.g. Dataset951_AbdomenCT")
    parser.add_argument("--plans", default="nnUNetPlans")
    parser.add_argument("--configuration", default="2d")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of both ways (default 5)")
    parser.add_argument("--steps", type=int, default=5, help="training steps per round (default 5)")
    parser.add_argument("--output", default="benchmarks/results/joint-forward")
    args = parser.parse_args(argv)
    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            print("joint_forward.py: --device cuda but torch sees no CUDA GPU; run with --device cpu", file=sys.stderr)
            return 2
    os.environ["nnUNet_preprocessed"] = str(Path(args.preprocessed).resolve())
    os.environ.setdefault("nnUNet_raw", tempfile.mkdtemp(prefix="joint_forward_raw_"))
    os.environ.setdefault("nnUNet_results", tempfile.mkdtemp(prefix="joint_forward_results_"))
    result = measure(args)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    text = table(result)
    for name, content in (("joint_forward.json", json.dumps(result, indent=2)), ("joint_forward.md", text + "\n")):
        tmp = out / f".{name}.tmp"
        tmp.write_text(content)
        tmp.replace(out / name)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
