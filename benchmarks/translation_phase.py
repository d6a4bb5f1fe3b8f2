"""Does GLUA's stage 1 learn the other modality's contrast? The translation phase on a phantom pair (issue 16).

For each MR-like contrast of the phantom (``inverted``: one learnable change, MR = 800 - 2.5 CT; ``permuted``: the
structures reordered, the stress case), this script writes the pair, plans it with ``plan-pair`` (2d), and runs
``nnUNetv2_train <CT> 2d 0 -tr nnUNetTrainerGLUAStyle`` with the translation phase's own budget (``--steps``) and a
one-iteration segmentation part, seeded. It then reads the stage-1 model folder's ``translation_training.json`` and
prints, at every check, the label-free numbers of :mod:`nnunet_unpaired.training.translation_check`:

- the 1-D Wasserstein distance of the target patches' intensities to the source patches (before) and to their
  translations (after), and their ratio: 1 is the identity, well below 1 means the translation took on the target's
  intensity distribution;
- the phantom's contrast-order agreement (Kendall's tau between the structures' mean translated intensities and the
  target rendering, from SOURCE labels): 1 = the target's order, the source's own order scores what the two renderings
  share (``identity tau`` in the table).

    .venv/bin/python benchmarks/translation_phase.py [--steps 1000] [--contrasts inverted permuted] [--output DIR]

Writes ``<output>/<contrast>/translation_training.json``, ``translation_check.png`` and ``<output>/summary.md``
(default output ``benchmarks/results/translation-phase``). One run per contrast, one seed: an impression of whether
the phase leaves the identity, not a measured effect size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IDS = (961, 962)
TRAINER = "nnUNetTrainerGLUAStyle"


def _run(cmd, env, log):
    start = time.perf_counter()
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}; see {log}")
    return time.perf_counter() - start


def _bin(name: str) -> str:
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


def identity_tau(contrast: str) -> float:
    """Kendall's tau of the source (CT-like) rendering against the target one: what an identity translation scores."""
    from scipy.stats import kendalltau

    from nnunet_unpaired.phantom import CT_VALUES, MR_CONTRASTS

    keys = sorted(k for k in CT_VALUES if isinstance(k, int) and k in MR_CONTRASTS[contrast])
    return float(kendalltau([CT_VALUES[k] for k in keys], [MR_CONTRASTS[contrast][k] for k in keys]).statistic)


def run_contrast(contrast: str, steps: int, work: Path, out: Path, log) -> dict:
    env = dict(os.environ, nnUNet_raw=str(work / "raw"), nnUNet_preprocessed=str(work / "pre"),
               nnUNet_results=str(work / "results"), nnUNet_unpaired_seed="0", nnUNet_unpaired_epochs="1",
               nnUNet_unpaired_iters="1", nnUNet_unpaired_val_iters="1", nnUNet_unpaired_skip_final_validation="1",
               nnUNet_unpaired_glua_style_steps=str(steps),
               nnUNet_unpaired_glua_style_check_every=str(max(1, steps // 10)),
               nnUNet_unpaired_glua_style_save_every=str(max(1, steps // 4)), nnUNet_n_proc_DA="0")
    env["nnUNet_extTrainer"] = str(ROOT / "trainers")  # what `nnunet_unpaired env` exports
    _run([_bin("nnunet_unpaired"), "phantom", "--ids", *map(str, IDS), "--num-train", "10", "--num-test", "2",
          "--mr-contrast", contrast], env, log)
    _run([_bin("nnunet_unpaired"), "plan-pair", "-d", *map(str, IDS), "-c", "2d", "--max-features", "32",
          "--batch-size", "8", "-np", "1"], env, log)
    seconds = _run([_bin("nnUNetv2_train"), str(IDS[0]), "2d", "0", "-tr", TRAINER, "-device", "cpu"], env, log)
    folder = next((work / "results").glob(f"Dataset{IDS[0]}_*")) / f"{TRAINER}__nnUNetPlans__2d" / "fold_0"
    target = out / contrast
    target.mkdir(parents=True, exist_ok=True)
    for name in ("translation_training.json", "translation_check.png", "translation_check.json"):
        if (folder / name).exists():
            shutil.copyfile(folder / name, target / name)
    runs = json.loads((folder / "translation_training.json").read_text())["runs"]
    return {"contrast": contrast, "steps": steps, "training_seconds": seconds, "runs": runs,
            "identity_tau": identity_tau(contrast)}


def table(results) -> str:
    lines = ["| contrast | step | distance before | after | ratio | contrast order (tau) | identity tau |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        for check in [c for run in r["runs"] for c in run["checks"]]:
            lines.append(f"| {r['contrast']} | {check['step']} | {check['source_to_target']:.3f} | "
                         f"{check['translated_to_target']:.3f} | {check['ratio']:.2f} | {check['order']:.2f} | "
                         f"{r['identity_tau']:.2f} |")
    lines += ["", "| contrast | steps | phase seconds | s / step | whole training (s) |", "|---|---|---|---|---|"]
    for r in results:
        seconds = sum(run["seconds"] for run in r["runs"])
        steps = sum(run["steps"] for run in r["runs"])
        lines.append(f"| {r['contrast']} | {steps} | {seconds:.0f} | {seconds / max(1, steps):.3f} | "
                     f"{r['training_seconds']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000, help="steps of the translation phase (default 1000)")
    parser.add_argument("--contrasts", nargs="+", default=["inverted", "permuted"], choices=["inverted", "permuted"])
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "translation-phase")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    args.output.mkdir(parents=True, exist_ok=True)
    results = []
    for contrast in args.contrasts:
        with tempfile.TemporaryDirectory(prefix=f"translation-{contrast}-") as work:
            log = args.output / f"{contrast}.log"
            log.write_text("")
            print(f"{contrast}: {args.steps} translation steps (log {log}) ...", flush=True)
            results.append(run_contrast(contrast, args.steps, Path(work), args.output, log))
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "n/a"
    text = (f"# GLUA stage 1: translation phase on the phantom\n\n{table(results)}\n\nOne run per contrast, seed 0, "
            f"{os.cpu_count()} CPU cores, load average at the end {load}. Ratio: distance of the target intensities to "
            f"the translations over that to the untranslated source (1 = identity). Tau: the structures' intensity "
            f"order in the translations against the target rendering (1 = the target's); the identity scores the "
            f"identity tau.\n")
    (args.output / "summary.md").write_text(text)
    (args.output / "summary.json").write_text(json.dumps(results, indent=2, default=float))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
