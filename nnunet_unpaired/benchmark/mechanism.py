"""Mechanism measurement (issue 15): do a method's two modalities end up with the same class features?

For a method that trains ONE network on both modalities (kind ``unpaired``: joint, EAM, UMMKD, ...), on the held-out
test cases of A and of B (images and labels, preprocessed as nnU-Net preprocesses them), with each modality's own
model folder, the output of one decoder stage is read with a forward hook and pooled per class under the labels:

- **agreement**: mean over the foreground classes of ``cos(R^A_k, R^B_k)``, where ``R^m_k`` is modality m's class
  mean after one per-channel standardisation over the voxels of both modalities (the EAM's own definition,
  docs/eam.md); 1 means the class has the same feature direction in both modalities;
- **structure gap**: mean squared difference of the two class-correlation matrices (off-diagonal);
- **probe**: a linear soft-max classifier fitted on A's standardised voxel features (class-balanced sample), scored
  by balanced accuracy (mean recall over classes) on B's voxels, next to its score on A's own voxels (the ceiling).

If EAM does not align the class features better than joint does, its Dice cannot be expected to improve: the report
shows this next to the Dice table. 2D configurations read whole slices with foreground (at most ``max_slices``
evenly spaced per case); 3D ones one patch-sized crop around each case's foreground centre.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from nnunet_unpaired.benchmark.config import Context, ModelRef
from nnunet_unpaired.benchmark.registry import Method
from nnunet_unpaired.benchmark.steps import run_step

DEFAULT_STAGE = -2  # the EAM's default decoder stage
PROBE_SAMPLES_PER_CLASS = 2000


def mechanism_step(method_name: str, fold: str) -> str:
    """The name of the step that measures a method's class-feature agreement."""
    return f"mechanism__{method_name}__fold_{fold}"


def mechanism_file(ctx: Context, method: str, fold: str) -> Path:
    return ctx.run_root / "mechanism" / f"{method}__fold_{fold}.json"


def stage_of(env: Mapping[str, str]) -> int:
    """The decoder stage to read: the method's first EAM stage when set in its environment, else -2."""
    value = env.get("nnUNet_unpaired_eam_stages", "").strip()
    return int(value.split(",")[0]) if value else DEFAULT_STAGE


def _cases(raw: Path) -> list[tuple[list[str], str]]:
    labels = sorted((raw / "labelsTs").glob("*.nii.gz"))
    out = []
    for label in labels:
        case = label.name[: -len(".nii.gz")]
        images = sorted(str(p) for p in (raw / "imagesTs").glob(f"{case}_[0-9][0-9][0-9][0-9].nii.gz"))
        if images:
            out.append((images, str(label)))
    return out


def _inputs(data, seg, patch_size, stride, max_slices: int):
    """Network inputs (N, C, *spatial) and labels (N, 1, *spatial), padded to multiples of the network's stride."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    data, seg = torch.from_numpy(np.asarray(data, dtype=np.float32)), torch.from_numpy(np.asarray(seg)).long()
    if len(patch_size) == 2:
        fg = [z for z in range(seg.shape[1]) if (seg[0, z] > 0).any()]
        if not fg:
            return None
        chosen = [fg[int(i)] for i in np.linspace(0, len(fg) - 1, min(max_slices, len(fg)))]
        x, y = data[:, chosen].transpose(0, 1), seg[:, chosen].transpose(0, 1)  # (N, C, H, W), (N, 1, H, W)
    else:
        coords = (seg[0] > 0).nonzero()
        if not len(coords):
            return None
        centre = coords.float().mean(0).round().long()
        x, y = data, seg
        pad = [max(0, p - s) for p, s in zip(patch_size, x.shape[1:])]
        if any(pad):
            flat = [v for p in reversed(pad) for v in (p // 2, p - p // 2)]
            x, y = F.pad(x, flat), F.pad(y, flat, value=-1)
            centre = centre + torch.tensor([p // 2 for p in pad])
        slices = []
        for c, p, s in zip(centre.tolist(), patch_size, x.shape[1:]):
            start = min(max(0, c - p // 2), s - p)
            slices.append(slice(start, start + p))
        x, y = x[(slice(None), *slices)][None], y[(slice(None), *slices)][None]
    pad = []
    for size, st in zip(reversed(x.shape[2:]), reversed(stride)):
        extra = (-size) % st
        pad += [extra // 2, extra - extra // 2]
    if any(pad):
        x, y = F.pad(x, pad), F.pad(y, pad, value=-1)  # padded voxels are ignored (-1)
    return x, y


def _collect(model_folder: Path, fold: str, raw: Path, stage: int, device: str, max_slices: int, rng) -> dict:
    """Per-class feature sums, counts, channel statistics and a class-balanced voxel sample of one modality."""
    import numpy as np
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunet_unpaired.modules.external_attention import labels_to_grid
    from nnunet_unpaired.modules.local_alignment import DecoderFeatureTap

    from nnunet_unpaired.registration import ENV_VAR, env_with_trainers

    predictor = nnUNetPredictor(device=torch.device(device), perform_everything_on_device=False, verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    # nnU-Net's trainer output folder is the parent of fold_X (it holds plans.json and dataset.json); the predictor
    # looks the trainer class up by name, so this process needs our trainers folder in nnUNet_extTrainer for the call
    before = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = env_with_trainers()[ENV_VAR]
    try:
        predictor.initialize_from_trained_model_folder(str(model_folder.parent),
                                                       (int(fold) if fold.isdigit() else fold,))
    finally:
        if before is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = before
    network = predictor.network.to(device).eval()
    cm, pm = predictor.configuration_manager, predictor.plans_manager
    num_classes = pm.get_label_manager(predictor.dataset_json).num_segmentation_heads
    stride = [int(np.prod([k[i] for k in cm.pool_op_kernel_sizes])) for i in range(len(cm.patch_size))]
    preprocessor = cm.preprocessor_class(verbose=False)
    sums = counts = total = total_sq = None
    samples: dict[int, list] = {k: [] for k in range(num_classes)}
    cases = _cases(raw)
    if not cases:
        raise FileNotFoundError(f"{raw}: no test case with both imagesTs and labelsTs")
    with DecoderFeatureTap(network, stage) as tap, torch.no_grad():
        for images, label in cases:
            data, seg, _ = preprocessor.run_case(images, label, pm, cm, predictor.dataset_json)
            prepared = _inputs(data, seg, cm.patch_size, stride, max_slices)
            if prepared is None:
                continue
            x, y = prepared
            for i in range(x.shape[0]):
                network(x[i:i + 1].to(device))
                feats = tap.features.pop().float().cpu()[0]  # (C, *grid)
                grid = labels_to_grid(y[i:i + 1].clamp(min=0).float(), feats.shape[1:])[0, 0]
                valid = labels_to_grid((y[i:i + 1] >= 0).float(), feats.shape[1:])[0, 0].bool()
                flat = feats.reshape(feats.shape[0], -1).transpose(0, 1)[valid.reshape(-1)]  # (V, C)
                lab = grid.reshape(-1)[valid.reshape(-1)]
                onehot = torch.nn.functional.one_hot(lab, num_classes).double()
                if sums is None:
                    c = flat.shape[1]
                    sums, counts = torch.zeros(num_classes, c, dtype=torch.float64), torch.zeros(num_classes)
                    total, total_sq = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64)
                sums += onehot.transpose(0, 1) @ flat.double()
                counts += onehot.sum(0).float()
                total += flat.double().sum(0)
                total_sq += flat.double().square().sum(0)
                for k in range(num_classes):
                    rows = flat[lab == k]
                    if len(rows):
                        take = rng.choice(len(rows), min(len(rows), PROBE_SAMPLES_PER_CLASS), replace=False)
                        samples[k].append(rows[torch.from_numpy(take)])
    if sums is None:
        raise ValueError(f"{raw}: no test case has a labelled foreground voxel")
    probe = {k: torch.cat(v)[torch.from_numpy(rng.permutation(sum(len(t) for t in v))[:PROBE_SAMPLES_PER_CLASS])]
             for k, v in samples.items() if v}
    return {"sums": sums, "counts": counts, "total": total, "total_sq": total_sq, "probe": probe,
            "num_classes": num_classes, "cases": len(cases)}


def _fit_probe(features, labels, num_classes: int, steps: int = 300):
    import torch

    torch.manual_seed(0)
    layer = torch.nn.Linear(features.shape[1], num_classes)
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(layer(features), labels).backward()
        optimizer.step()
    return layer


def _balanced_accuracy(layer, features, labels, num_classes: int) -> float:
    import torch

    with torch.no_grad():
        pred = layer(features).argmax(1)
    recalls = [float((pred[labels == k] == k).float().mean()) for k in range(num_classes) if (labels == k).any()]
    return sum(recalls) / len(recalls) if recalls else math.nan


def agreement(a: dict, b: dict, labels: Mapping[str, int] | None = None) -> dict:
    """Agreement, structure gap and probe scores from two modalities' collected statistics."""
    import torch

    from nnunet_unpaired.losses.semantic_consistency import class_correlation
    from nnunet_unpaired.losses.numerics import unit_vectors

    k = a["num_classes"]
    n = a["counts"].sum() + b["counts"].sum()
    mean = (a["total"] + b["total"]) / n
    std = ((a["total_sq"] + b["total_sq"]) / n - mean.square()).clamp(min=0).sqrt().clamp(min=1e-3)
    reps = [((m["sums"] / m["counts"].clamp(min=1)[:, None].double()) - mean) / std for m in (a, b)]
    present = (a["counts"] > 0) & (b["counts"] > 0)
    cos = (unit_vectors(reps[0].float(), dim=1) * unit_vectors(reps[1].float(), dim=1)).sum(1)
    names = {v: key for key, v in (labels or {}).items() if isinstance(v, int)}
    per_class = {names.get(c, str(c)): float(cos[c]) for c in range(1, k) if present[c]}
    pairs = present[:, None] & present[None, :] & ~torch.eye(k, dtype=torch.bool)
    gap = (class_correlation(reps[0].float()) - class_correlation(reps[1].float())).square()[pairs]
    result = {"agreement": sum(per_class.values()) / len(per_class) if per_class else math.nan,
              "per_class": per_class, "structure_gap": float(gap.mean()) if len(gap) else math.nan}

    def standardized(probe):
        feats = torch.cat([v for v in probe.values()]).double()
        labs = torch.cat([torch.full((len(v),), c, dtype=torch.long) for c, v in probe.items()])
        return ((feats - mean) / std).float(), labs

    xa, ya = standardized(a["probe"])
    xb, yb = standardized(b["probe"])
    layer = _fit_probe(xa, ya, k)
    result["probe_a_to_a"] = _balanced_accuracy(layer, xa, ya, k)
    result["probe_a_to_b"] = _balanced_accuracy(layer, xb, yb, k)
    return result


def measure(ctx: Context, method: Method, models: Sequence[ModelRef], fold: str, max_slices: int = 8) -> dict | None:
    """The resumable step ``mechanism__<method>__fold_<f>`` for a method whose two models share one network."""
    if method.kind != "unpaired" or len(models) != 2:
        return None
    import numpy as np

    def action(log_file: Path) -> dict:
        stage = stage_of(ctx.env(method))
        rng = np.random.default_rng(0)
        stats = [_collect(ctx.model_folder(m.dataset, m.trainer, fold), fold, m.dataset.raw, stage, ctx.device,
                          max_slices, rng) for m in models]
        result = {"method": method.name, "fold": fold, "seed": ctx.seed, "stage": stage,
                  "cases": [s["cases"] for s in stats], **agreement(*stats, labels=models[0].dataset.labels)}
        path = mechanism_file(ctx, method.name, fold)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(result, indent=2))
        os.replace(tmp, path)
        ctx.log(f"    {method.name}, fold {fold}: class-feature agreement at decoder stage {stage} "
                f"{result['agreement']:.3f}, probe A->B {result['probe_a_to_b']:.3f} (A->A {result['probe_a_to_a']:.3f})")
        return result

    return run_step(ctx.run_root, mechanism_step(method.name, fold), action, ctx.log)


def mechanism_markdown(results: Sequence[Mapping]) -> list[str]:
    """The report's table: per method, the mean over seeds (and folds) and each run's value."""
    by_method: dict[str, list[Mapping]] = {}
    for r in results:
        by_method.setdefault(r["method"], []).append(r)
    if not by_method:
        return []
    lines = ["### Mechanism: class features shared across modalities (held-out test cases)", "",
             "Label-masked class means of the decoder stage's features on A's and B's test cases, standardised "
             "together (nnunet_unpaired/benchmark/mechanism.py): agreement = mean cosine of a class's mean feature "
             "in A and in B (1 = same direction); structure gap = mean squared difference of the class-correlation "
             "matrices; probe = balanced accuracy of a linear classifier fitted on A's voxel features, on B's "
             "voxels (and on A's own). Mean over runs; each run in brackets.", "",
             "| method | stage | agreement | structure gap | probe A->B | probe A->A |", "|---|---|---|---|---|---|"]

    def cell(rows, key):
        values = [float(r[key]) for r in rows]
        finite = [v for v in values if v == v]
        mean = sum(finite) / len(finite) if finite else math.nan
        return f"{mean:.3f} ({', '.join(f'{v:.3f}' for v in values)})"

    for name, rows in by_method.items():
        lines.append(f"| {name} | {rows[0]['stage']} | {cell(rows, 'agreement')} | {cell(rows, 'structure_gap')} | "
                     f"{cell(rows, 'probe_a_to_b')} | {cell(rows, 'probe_a_to_a')} |")
    return lines + [""]
