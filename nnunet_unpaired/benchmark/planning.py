"""Step 2 of a benchmark: plan and preprocess the pair with ``nnunet_unpaired plan-pair``."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from nnunet_unpaired.benchmark import steps
from nnunet_unpaired.benchmark.config import PLANS_NAME, Context
from nnunet_unpaired.benchmark.steps import run_step
from nnunet_unpaired.plan_pair import SMALL_DATASET_FINGERPRINT_SAMPLES


def plans_digest(path: Path) -> str:
    """SHA-256 of a plans file's content (keys sorted): equal digests, equal plans (normalization statistics too)."""
    return hashlib.sha256(json.dumps(json.loads(path.read_text()), sort_keys=True).encode()).hexdigest()


def plan(ctx: Context) -> dict:
    preprocessed = ctx.nnunet["nnUNet_preprocessed"]

    def action(log_file: Path) -> dict:
        cmd = [sys.executable, "-m", "nnunet_unpaired.cli", "plan-pair", "-d", ctx.a.name, ctx.b.name,
               "-c", ctx.spec.configuration, "-p", PLANS_NAME, "-np", str(ctx.options.plan_processes)]
        if ctx.spec.max_features is not None:
            cmd += ["--max-features", str(ctx.spec.max_features)]
        if ctx.spec.in_plane_spacing is not None:
            cmd += ["--in-plane-spacing", str(ctx.spec.in_plane_spacing)]
        if ctx.spec.batch_size is not None:
            cmd += ["--batch-size", str(ctx.spec.batch_size)]
        if ctx.spec.datasets is None:
            cmd.append("--no-verify")  # the phantom is written by this package and checked by its own tests
            # a small synthetic dataset: nnU-Net's 10^8 intensity draws would mostly repeat voxels (plan_pair's doc)
            cmd += ["--fingerprint-samples", str(SMALL_DATASET_FINGERPRINT_SAMPLES)]
        steps.run_command(cmd, ctx.env(), log_file, ctx.log)
        plans = json.loads((preprocessed / ctx.a.name / f"{PLANS_NAME}.json").read_text())
        conf = plans["configurations"][ctx.spec.configuration]
        return {"batch_size": conf["batch_size"], "patch_size": conf["patch_size"], "spacing": conf.get("spacing"),
                "features_per_stage": conf["architecture"]["arch_kwargs"]["features_per_stage"],
                "plans_sha256": {d.name: plans_digest(preprocessed / d.name / f"{PLANS_NAME}.json")
                                 for d in (ctx.a, ctx.b)}}

    # what training needs: both plans and both preprocessed data folders (redone for a result folder restored from
    # its record, which must give the recorded plan)
    products = [preprocessed / d.name / f"{PLANS_NAME}.json" for d in (ctx.a, ctx.b)]
    products += [preprocessed / d.name / f"{PLANS_NAME}_{ctx.spec.configuration}" for d in (ctx.a, ctx.b)]
    return run_step(ctx.root, "plan", action, ctx.log, products=products,
                    must_match=("batch_size", "patch_size", "spacing", "features_per_stage", "plans_sha256"))
