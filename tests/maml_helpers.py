"""Test helpers for MAML: tiny nnU-Net architecture entries, minimal plans, shrinking real plans, Dice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Sequence

import numpy as np

PLAIN_UNET = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
RESENC_UNET = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
REQUIRES_IMPORT = ["conv_op", "norm_op", "dropout_op", "nonlin"]


def tiny_architecture(dim: int, features: Sequence[int] = (8, 16, 32), residual: bool = False) -> dict:
    """An nnU-Net ``architecture`` entry: len(features) stages, stride 2 from the second stage on."""
    n = len(features)
    conv = "torch.nn.modules.conv.Conv3d" if dim == 3 else "torch.nn.modules.conv.Conv2d"
    norm = f"torch.nn.modules.instancenorm.InstanceNorm{dim}d"
    kwargs = {
        "n_stages": n, "features_per_stage": list(features), "conv_op": conv,
        "kernel_sizes": [[3] * dim] * n, "strides": [[1] * dim] + [[2] * dim] * (n - 1),
        ("n_blocks_per_stage" if residual else "n_conv_per_stage"): [1] * n,
        "n_conv_per_stage_decoder": [1] * (n - 1), "conv_bias": True, "norm_op": norm,
        "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
    }
    return {"network_class_name": RESENC_UNET if residual else PLAIN_UNET, "arch_kwargs": kwargs,
            "_kw_requires_import": list(REQUIRES_IMPORT)}


def tiny_plans(dim: int = 2, features: Sequence[int] = (8, 16, 32), residual: bool = False, extra: dict = None
               ) -> dict:
    """A plans dict with one configuration (``2d`` or ``3d_fullres``) that PlansManager and the trainer accept."""
    name = "2d" if dim == 2 else "3d_fullres"
    architecture = tiny_architecture(dim, features, residual)
    plans = {
        "dataset_name": "Dataset999_Tiny", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0], "original_median_shape_after_transp": [8, 32, 32],
        "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {name: {
            "data_identifier": f"nnUNetPlans_{name}", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
            "patch_size": [32] * dim, "median_image_size_in_voxels": [32] * dim, "spacing": [1.0] * dim,
            "normalization_schemes": ["ZScoreNormalization"] * 4, "use_mask_for_norm": [False] * 4,
            "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
            "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
            "architecture": architecture, "batch_dice": True,
        }},
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {},
    }
    if extra:
        plans.update(extra)
    return plans


def shrink_plans(plans_file: Path, configuration: str, features: Sequence[int] = (16, 32, 64), batch_size: int = 4,
                 n_conv: int = 1) -> None:
    """Make a planned configuration tiny in place: fewer stages and features, small batch (preprocessing unchanged)."""
    plans = json.loads(Path(plans_file).read_text())
    config = plans["configurations"][configuration]
    kwargs = config["architecture"]["arch_kwargs"]
    n = len(features)
    kwargs["n_stages"] = n
    kwargs["features_per_stage"] = list(features)
    kwargs["kernel_sizes"] = kwargs["kernel_sizes"][:n]
    kwargs["strides"] = kwargs["strides"][:n]
    key = "n_conv_per_stage" if "n_conv_per_stage" in kwargs else "n_blocks_per_stage"
    kwargs[key] = [n_conv] * n
    kwargs["n_conv_per_stage_decoder"] = [n_conv] * (n - 1)
    config["batch_size"] = batch_size
    Path(plans_file).write_text(json.dumps(plans, indent=2))


def dice_per_label(prediction: np.ndarray, reference: np.ndarray, labels: Sequence[int]) -> Dict[int, float]:
    """Dice per label; 1.0 where both are empty (nnU-Net would say nan; we only score labels present in reference)."""
    scores = {}
    for label in labels:
        p, r = prediction == label, reference == label
        denominator = p.sum() + r.sum()
        scores[label] = 1.0 if denominator == 0 else float(2 * np.logical_and(p, r).sum() / denominator)
    return scores
