"""Inference cost of the deployed models of a finished benchmark, measured against vanilla in one interleaved run.

    python benchmarks/inference_speed.py <result folder> [--setting full-label] [--repeats 10] [--device cpu]

The harness's ``inference_seconds_per_case`` is the wall time of a whole ``nnUNetv2_predict`` call divided by the
number of test cases: on a few small cases that is mostly process start and model loading, and on a shared machine
it swings with the load. This script times what a deployed model costs per case instead: for every dataset of the
setting it loads each method's exported model with nnU-Net's own ``nnUNetPredictor`` (``checkpoint_final.pth``,
strict load), reads the test images once, and then, repeat after repeat, predicts all of them with every model in
turn (the order rotates every repeat, so a load spike hits every method alike). It prints a table (median seconds per
case, ratio to vanilla, parameter count, whether the network's state dict has exactly vanilla's keys and shapes) and
writes ``<result>/<setting>/report/inference_speed.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

BASELINE = "vanilla"


def _methods_and_models(root: Path) -> dict[str, dict[str, tuple[str, Path, str]]]:
    """dataset -> method -> (trainer, model folder, fold) for every prediction step the setting finished."""
    from nnunet_unpaired.benchmark import registry

    found: dict[str, dict[str, tuple[str, Path, str]]] = {}
    plans_configuration = json.loads((root.parent / "benchmark.json").read_text())["spec"]["configuration"]
    for marker in sorted((root / "steps").glob("predict__*.json")):
        data = json.loads(marker.read_text())
        method, dataset, fold = data["method"], data["dataset"], data["fold"]
        trainer = registry.get(method).trainer
        folder = (root / "nnunet" / "nnUNet_results" / dataset / f"{trainer}__nnUNetPlans__{plans_configuration}")
        found.setdefault(dataset, {})[method] = (trainer, folder, fold)
    return found


def _state_signature(network) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in network.state_dict().items()}


def measure(root: Path, repeats: int, device: str, log=print) -> list[dict]:
    import torch
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    spec = json.loads((root.parent / "benchmark.json").read_text())["spec"]
    rows = []
    for dataset, methods in _methods_and_models(root).items():
        if BASELINE not in methods:
            log(f"{dataset}: no vanilla model, skipped")
            continue
        raw = root / "nnunet" / "nnUNet_raw" / dataset
        dataset_json = json.loads((raw / "dataset.json").read_text())
        ending, channels = dataset_json["file_ending"], len(dataset_json.get("channel_names", dataset_json.get(
            "modality", {"0": ""})))
        cases = sorted(p.name[: -len(ending)] for p in (raw / "labelsTs").iterdir() if p.name.endswith(ending))
        reader = determine_reader_writer_from_dataset_json(dataset_json, str(raw / "imagesTs" / f"{cases[0]}_0000"
                                                                                             f"{ending}"))()
        images = [reader.read_images([str(raw / "imagesTs" / f"{c}_{i:04d}{ending}") for i in range(channels)])
                  for c in cases]
        predictors = {}
        for method, (trainer, folder, fold) in methods.items():
            predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=not spec["no_mirroring"],
                                        perform_everything_on_device=device == "cuda", device=torch.device(device),
                                        verbose=False, verbose_preprocessing=False, allow_tqdm=False)
            predictor.initialize_from_trained_model_folder(str(folder), use_folds=(fold,),
                                                           checkpoint_name="checkpoint_final.pth")
            predictors[method] = predictor
        order = sorted(predictors, key=lambda m: m != BASELINE)
        reference = _state_signature(predictors[BASELINE].network)
        seconds: dict[str, list[float]] = {m: [] for m in order}
        cpu: dict[str, list[float]] = {m: [] for m in order}
        for method in order:  # warm-up: the first call allocates and chooses kernels
            predictors[method].predict_single_npy_array(images[0][0], images[0][1], None, None, False)
        for r in range(repeats):
            rotated = order[r % len(order):] + order[: r % len(order)]
            for method in rotated:
                start, cpu_start = time.perf_counter(), time.process_time()
                for data, properties in images:
                    predictors[method].predict_single_npy_array(data, properties, None, None, False)
                if device == "cuda":
                    torch.cuda.synchronize()
                seconds[method].append((time.perf_counter() - start) / len(images))
                cpu[method].append((time.process_time() - cpu_start) / len(images))
            log(f"{dataset}: repeat {r + 1}/{repeats}: " + ", ".join(f"{m} {seconds[m][-1]:.3f} s/case"
                                                                      for m in order))
        base, cpu_base = statistics.median(seconds[BASELINE]), statistics.median(cpu[BASELINE])
        for method in order:
            network = predictors[method].network
            median = statistics.median(seconds[method])
            rows.append({"dataset": dataset, "method": method, "trainer": methods[method][0],
                         "median_seconds_per_case": median, "ratio_to_vanilla": median / base,
                         "median_cpu_seconds_per_case": statistics.median(cpu[method]),
                         "cpu_ratio_to_vanilla": statistics.median(cpu[method]) / cpu_base,
                         "seconds_per_case_all_repeats": seconds[method], "cases": len(images),
                         "parameters": sum(p.numel() for p in network.parameters()),
                         "network_class": type(network).__name__,
                         "same_state_dict_as_vanilla": _state_signature(network) == reference})
    return rows


def markdown(rows: list[dict], repeats: int, device: str) -> str:
    lines = [f"Median per test case over {repeats} interleaved repeats (device {device}; each repeat predicts every "
             f"test case with every model, the order rotating), nnU-Net's own predictor on the exported "
             f"`checkpoint_final.pth`. Wall time moves with whatever else the machine runs; the CPU time of the "
             f"predicting process (all its threads) much less.", "",
             "| dataset | method | wall s/case | × vanilla | CPU s/case | × vanilla | parameters | network | "
             "same state dict as vanilla |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['method']} | {r['median_seconds_per_case']:.3f} | "
                     f"{r['ratio_to_vanilla']:.3f} | {r['median_cpu_seconds_per_case']:.3f} | "
                     f"{r['cpu_ratio_to_vanilla']:.3f} | {r['parameters']:,} | {r['network_class']} | "
                     f"{'yes' if r['same_state_dict_as_vanilla'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("result", type=Path, help="the benchmark's result folder (<A>__<B>__<config>__<date>)")
    parser.add_argument("--setting", default="full-label", help="which setting's models (default: full-label)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    args = parser.parse_args(argv)
    import torch

    from nnunet_unpaired.registration import env_with_trainers

    os.environ.update(env_with_trainers())  # nnU-Net's trainer lookup must find this package's trainers

    root = args.result / args.setting
    if not (root / "steps").is_dir() or not (args.result / "benchmark.json").is_file():
        print(f"{root} is not a setting of a benchmark result folder (no steps/ or no ../benchmark.json)",
              file=sys.stderr)
        return 1
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    rows = measure(root, args.repeats, device)
    text = markdown(rows, args.repeats, device)
    print(text)
    out = root / "report"
    out.mkdir(parents=True, exist_ok=True)
    for name, content in (("inference_speed.json", json.dumps(rows, indent=2)), ("inference_speed.md", text)):
        tmp = out / f".{name}.tmp{os.getpid()}"
        tmp.write_text(content)
        os.replace(tmp, out / name)
    print(f"written: {out / 'inference_speed.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
