"""GLUA trainers in-process: target loaders without labels, the label-leak test (garbage target labels give
bit-identical weights), stage 1 -> stage 2 hand-over, checkpoints, export, settings, registry; and, marked slow, the
commands end to end: nnUNetv2_train stage 1 and stage 2, nnUNetv2_predict for the target, nnunet_unpaired translate.
"""

from __future__ import annotations

import math
import os
import pickle
import random
import shutil
from pathlib import Path

import blosc2
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_unpaired.benchmark import registry
from nnunet_unpaired.errors import UserError
from nnunet_unpaired.phantom import LABELS
from nnunet_unpaired.training import glua
from nnunet_unpaired.training.glua import (ENV_STYLE_CHECKPOINT, TargetImagesOnly, nnUNetTrainerGLUA,
                                           nnUNetTrainerGLUAGlobalOnly, nnUNetTrainerGLUALocalOnly,
                                           nnUNetTrainerGLUAStyle, nnUNetTrainerSourceOnly)
from nnunet_unpaired.training.unpaired_joint import CHECKPOINT_KEY, nnUNetTrainerUnpairedJoint

from pairs import IDS, NAMES, run_many, section, set_env

CONFIG = "2d"


def _trainer(env, monkeypatch, cls, fold=0, preprocessed=None, results=None, seed=None, **extra_env):
    set_env(env, monkeypatch)
    if preprocessed:
        monkeypatch.setenv("nnUNet_preprocessed", str(preprocessed))
    if results:
        monkeypatch.setenv("nnUNet_results", str(results))
    for key, value in extra_env.items():
        monkeypatch.setenv(key, value)
    base = os.path.join(os.environ["nnUNet_preprocessed"], NAMES[0])
    plans = load_json(os.path.join(base, "nnUNetPlans.json"))
    plans["continue_training"] = False
    if seed is not None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
    trainer = cls(plans, CONFIG, fold, load_json(os.path.join(base, "dataset.json")), torch.device("cpu"))
    trainer.initialize()
    trainer.dataloader_train, trainer.dataloader_val = trainer.get_dataloaders()
    return trainer


def _plain_network(env, name):
    base = os.path.join(env["nnUNet_preprocessed"], name)
    pm = PlansManager(load_json(os.path.join(base, "nnUNetPlans.json")))
    return nnUNetTrainer.build_network_architecture(pm, pm.get_configuration(CONFIG), 1, len(LABELS), False)


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def style_checkpoint(planned_pair, tmp_path_factory):
    """A stage-1 checkpoint (a 2-step translation phase) saved where stage 2 looks for it by default (fold 0)."""
    _, env = planned_pair
    with pytest.MonkeyPatch.context() as monkeypatch:
        trainer = _trainer(env, monkeypatch, nnUNetTrainerGLUAStyle, fold=0, seed=0,
                           nnUNet_unpaired_glua_style_steps="2")
        os.makedirs(trainer.output_folder, exist_ok=True)
        trainer.train_translation()
        path = os.path.join(trainer.output_folder, "checkpoint_final.pth")
        trainer.save_checkpoint(path)
    return path


# ------------------------------------------------------------------------------------------ no target labels


def test_target_loader_yields_images_without_labels(planned_pair, monkeypatch):
    _, env = planned_pair
    trainer = _trainer(env, monkeypatch, nnUNetTrainerSourceOnly, fold=1)
    for loader in (trainer.dataloader_train_partner, trainer.dataloader_val_partner):
        assert isinstance(loader.data_loader._data, TargetImagesOnly)
    batch = next(trainer.dataloader_train_partner)
    assert all(k.startswith("phantommr") for k in batch["keys"])
    assert batch["data"].abs().sum() > 0
    assert all(int(t.abs().max()) == 0 for t in batch["target"])  # deep-supervision targets, all zero
    source = next(trainer.dataloader_train)
    assert int(source["target"][0].max()) > 0  # the source keeps its labels
    data, seg, _, properties = trainer.dataloader_train_partner.data_loader._data.load_case(batch["keys"][0])
    assert properties["class_locations"] == {} and not seg.any() and seg.shape[1:] == data.shape[1:]


def _garbage_copy(env, root: Path) -> Path:
    """A copy of the preprocessed tree in which every TARGET label map and class location is random garbage."""
    target = root / "nnUNet_preprocessed"
    shutil.copytree(env["nnUNet_preprocessed"], target)
    rng = np.random.default_rng(123)
    folder = target / NAMES[1] / "nnUNetPlans_2d"
    cases = sorted(p.name[:-len("_seg.b2nd")] for p in folder.glob("*_seg.b2nd"))
    assert cases
    for case in cases:
        seg_file = folder / f"{case}_seg.b2nd"
        original = blosc2.open(str(seg_file), mode="r")
        shape, chunks, blocks = original.shape, original.chunks, original.blocks
        garbage = rng.integers(-1, len(LABELS), size=shape).astype(original.dtype)
        assert not np.array_equal(garbage, original[:])
        del original
        seg_file.unlink()
        blosc2.asarray(garbage, urlpath=str(seg_file), chunks=chunks, blocks=blocks)
        with open(folder / f"{case}.pkl", "rb") as f:
            properties = pickle.load(f)
        properties["class_locations"] = {c: rng.integers(0, 6, size=(7, 4)) for c in range(1, len(LABELS))}
        with open(folder / f"{case}.pkl", "wb") as f:
            pickle.dump(properties, f)
    for gt in (target / NAMES[1] / "gt_segmentations").glob("*.nii.gz"):
        image = sitk.ReadImage(str(gt))
        noisy = sitk.GetImageFromArray(rng.integers(0, len(LABELS), sitk.GetArrayFromImage(image).shape)
                                       .astype(np.uint8))
        noisy.CopyInformation(image)
        sitk.WriteImage(noisy, str(gt))
    return target


def _train_a_little(env, monkeypatch, cls, preprocessed, results, steps=3, **extra_env):
    trainer = _trainer(env, monkeypatch, cls, fold=2, preprocessed=preprocessed, results=results, seed=7, **extra_env)
    outputs = [trainer.train_step(next(trainer.dataloader_train)) for _ in range(steps)]
    validation = trainer.validation_step(next(trainer.dataloader_val))
    weights = {**{f"network.{k}": v for k, v in _snapshot(trainer.network).items()},
               **{f"modules.{k}": v for k, v in _snapshot(trainer.training_modules).items()}}
    return weights, outputs, validation


@pytest.mark.parametrize("cls", [nnUNetTrainerGLUAStyle, nnUNetTrainerGLUA, nnUNetTrainerSourceOnly])
def test_garbage_target_labels_give_bit_identical_training(planned_pair, monkeypatch, tmp_path, style_checkpoint,
                                                           cls):
    """Training with the target's labels replaced by random garbage (label maps, class locations, gt files) gives
    bit-identical weights, losses and validation results at a fixed seed. The joint trainer, which does use the
    target labels, serves as the control: the same swap changes its weights."""
    _, env = planned_pair
    garbage = _garbage_copy(env, tmp_path / "garbage")
    extra = {ENV_STYLE_CHECKPOINT: style_checkpoint}
    runs = []
    for i, tree in enumerate((env["nnUNet_preprocessed"], garbage)):
        runs.append(_train_a_little(env, monkeypatch, cls, tree, tmp_path / f"results{i}", **extra))
    (w_clean, out_clean, val_clean), (w_garbage, out_garbage, val_garbage) = runs
    assert w_clean.keys() == w_garbage.keys()
    assert all(torch.equal(w_clean[k], w_garbage[k]) for k in w_clean)
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(out_clean, out_garbage) for k in a)
    assert all(np.array_equal(val_clean[k], val_garbage[k]) for k in val_clean)
    if cls is nnUNetTrainerGLUA:  # the control, once
        control = [_train_a_little(env, monkeypatch, nnUNetTrainerUnpairedJoint, tree,
                                   tmp_path / f"control{i}", steps=1)[0]
                   for i, tree in enumerate((env["nnUNet_preprocessed"], garbage))]
        assert any(not torch.equal(control[0][k], control[1][k]) for k in control[0])


# ------------------------------------------------------------------------------------------- stage 1, stage 2


def test_style_stage_trains_its_modules_with_own_optimizers_and_saves_them(planned_pair, monkeypatch,
                                                                             style_checkpoint):
    _, env = planned_pair
    trainer = _trainer(env, monkeypatch, nnUNetTrainerGLUAStyle, fold=3, nnUNet_unpaired_glua_style_steps="1")
    assert len(trainer.optimizer.param_groups) == 1  # nnU-Net's SGD: the network only
    assert set(trainer.extra_optimizers) == {"style_generator", "style_discriminators"}
    before = _snapshot(trainer.training_modules)
    network_before = _snapshot(trainer.network)
    os.makedirs(trainer.output_folder, exist_ok=True)
    trainer.train_translation()  # the translation phase: its own step, its own optimizers
    after = _snapshot(trainer.training_modules)
    for prefix in ("style_generator.content_encoder", "style_generator.style_encoders.target",
                   "style_generator.decoder", "style_discriminators.target", "style_discriminators.source",
                   "style_discriminators.content", "style_generator_ema.copies.0.decoder"):
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix)), prefix
    assert trainer.style_steps_done == 1
    generator = trainer.training_modules["style_generator"]
    assert not torch.equal(generator.windows, torch.tensor([[-1.0, 1.0], [-1.0, 1.0]]))  # measured windows
    assert torch.equal(trainer.training_modules["style_generator_ema"].copies[0].windows, generator.windows)
    assert all(torch.equal(v, _snapshot(trainer.network)[k]) for k, v in network_before.items())
    cost = load_json(os.path.join(trainer.output_folder, "translation_training.json"))["runs"]
    assert cost[-1]["steps"] == 1 and cost[-1]["seconds"] > 0 and cost[-1]["checks"][0]["step"] == 1
    result = trainer.train_step(next(trainer.dataloader_train))  # then nnU-Net's step: the network, source only
    assert "loss" in result and not any(k.startswith("st_") for k in result)
    assert any(not torch.equal(network_before[k], v) for k, v in _snapshot(trainer.network).items())
    assert all(torch.equal(v, _snapshot(trainer.training_modules)[k]) for k, v in after.items())

    checkpoint = torch.load(style_checkpoint, weights_only=False)
    extras = checkpoint[CHECKPOINT_KEY]
    assert extras["partner"] == NAMES[1]
    assert extras["glua"]["style_config"]["dim"] == 2 and extras["glua"]["style_config"]["output"] == "tanh"
    assert set(extras["glua"]["optimizers"]) == {"style_generator", "style_discriminators"}
    assert not any(k.startswith("style") for k in checkpoint["network_weights"])
    again = _trainer(env, monkeypatch, nnUNetTrainerGLUAStyle, fold=3)
    again.load_checkpoint(style_checkpoint)
    for k, v in _snapshot(again.training_modules).items():
        assert torch.equal(v, extras["training_modules"][k])
    assert again.extra_optimizers["style_generator"].state_dict()["state"]  # Adam moments restored
    assert again.style_steps_done == 2


def test_translation_phase_resumes_where_it_stopped(planned_pair, monkeypatch, tmp_path):
    _, env = planned_pair
    results = tmp_path / "results"
    first = _trainer(env, monkeypatch, nnUNetTrainerGLUAStyle, fold=2, results=results, seed=0,
                     nnUNet_unpaired_glua_style_steps="2")
    os.makedirs(first.output_folder, exist_ok=True)
    first.train_translation()
    latest = os.path.join(first.output_folder, "checkpoint_latest.pth")
    windows = first.training_modules["style_generator"].windows.clone()
    again = _trainer(env, monkeypatch, nnUNetTrainerGLUAStyle, fold=2, results=results,
                     nnUNet_unpaired_glua_style_steps="3")
    again.load_checkpoint(latest)
    again.train_translation()  # one more step, the windows kept (not measured again)
    assert again.style_steps_done == 3
    assert torch.equal(again.training_modules["style_generator"].windows, windows)
    runs = load_json(os.path.join(again.output_folder, "translation_training.json"))["runs"]
    assert [r["steps"] for r in runs] == [2, 1] and runs[-1]["total_steps"] == 3
    again.train_translation()  # done: nothing more
    assert again.style_steps_done == 3


def test_stage2_without_stage1_says_how_to_train_it(planned_pair, monkeypatch):
    _, env = planned_pair
    with pytest.raises(UserError, match=f"(?s)stage 1.*nnUNetv2_train {NAMES[0]} 2d 4 -tr nnUNetTrainerGLUAStyle"):
        _trainer(env, monkeypatch, nnUNetTrainerGLUA, fold=4)
    # the local-only ablation needs no stage 1
    assert "style_generator" not in _trainer(env, monkeypatch, nnUNetTrainerGLUALocalOnly, fold=4).training_modules


def test_stage2_step_checkpoint_resume_and_export(planned_pair, monkeypatch, style_checkpoint):
    _, env = planned_pair
    trainer = _trainer(env, monkeypatch, nnUNetTrainerGLUA, fold=0)
    stage1 = torch.load(style_checkpoint, weights_only=False)[CHECKPOINT_KEY]["training_modules"]
    generator = _snapshot(trainer.training_modules["style_generator"])
    # stage 2 takes stage 1's EMA generator (not the last raw one)
    assert all(torch.equal(v, stage1[f"style_generator_ema.copies.0.{k}"]) for k, v in generator.items())
    assert not all(torch.equal(v, stage1[f"style_generator.{k}"]) for k, v in generator.items())
    assert len(trainer.optimizer.param_groups) == 1 and set(trainer.extra_optimizers) == {"feature_discriminator"}
    disc_before = _snapshot(trainer.training_modules["feature_discriminator"])
    result = trainer.train_step(next(trainer.dataloader_train))
    assert {"loss", "seg", "adv_local", "disc_local", "gap_target"} <= set(result)
    assert result["loss"] == pytest.approx(result["seg"] + result["adv_local"], rel=1e-5)
    assert 0 < result["gap_target"] < 1
    # the generator is frozen, the discriminator learns
    assert all(torch.equal(v, generator[k]) for k, v in _snapshot(trainer.training_modules["style_generator"]).items())
    assert any(not torch.equal(v, disc_before[k])
               for k, v in _snapshot(trainer.training_modules["feature_discriminator"]).items())

    os.makedirs(trainer.output_folder, exist_ok=True)
    path = os.path.join(trainer.output_folder, "checkpoint_final.pth")
    trainer.save_checkpoint(path)
    exported = os.path.join(env["nnUNet_results"], NAMES[1], f"nnUNetTrainerGLUA__nnUNetPlans__{CONFIG}", "fold_0",
                            "checkpoint_final.pth")
    for name, file in ((NAMES[0], path), (NAMES[1], exported)):
        checkpoint = torch.load(file, weights_only=False)
        _plain_network(env, name).load_state_dict(checkpoint["network_weights"], strict=True)
    assert torch.load(exported, weights_only=False)["init_args"]["plans"]["dataset_name"] == NAMES[1]

    # --c works without stage 1's file: the generator's architecture and weights come with the checkpoint
    monkeypatch.setenv(ENV_STYLE_CHECKPOINT, "/nonexistent/checkpoint_final.pth")
    base = os.path.join(env["nnUNet_preprocessed"], NAMES[0])
    plans = load_json(os.path.join(base, "nnUNetPlans.json"))
    plans["continue_training"] = True
    again = nnUNetTrainerGLUA(plans, CONFIG, 0, load_json(os.path.join(base, "dataset.json")), torch.device("cpu"))
    again.load_checkpoint(path)
    for k, v in _snapshot(again.training_modules).items():
        assert torch.equal(v, _snapshot(trainer.training_modules)[k])
    assert again.extra_optimizers["feature_discriminator"].state_dict()["state"]


@pytest.mark.parametrize("cls,modules", [(nnUNetTrainerGLUAGlobalOnly, {"style_generator"}),
                                         (nnUNetTrainerGLUALocalOnly, {"feature_discriminator"})])
def test_ablations(planned_pair, monkeypatch, style_checkpoint, cls, modules):
    _, env = planned_pair
    trainer = _trainer(env, monkeypatch, cls, fold=0)
    assert set(trainer.training_modules) == modules
    result = trainer.train_step(next(trainer.dataloader_train))
    assert ("adv_local" in result) == ("feature_discriminator" in modules)


def test_output_space_alignment_and_translation_probability(planned_pair, monkeypatch, style_checkpoint):
    _, env = planned_pair
    trainer = _trainer(env, monkeypatch, nnUNetTrainerGLUA, fold=0, nnUNet_unpaired_glua_local_input="output",
                       nnUNet_unpaired_glua_translate_probability="1")
    assert trainer.local_input == "output" and trainer.translate_probability == 1.0
    first = trainer.training_modules["feature_discriminator"].layers[0]
    assert first.in_channels == len(LABELS)
    assert "adv_local" in trainer.train_step(next(trainer.dataloader_train))
    source = next(trainer.dataloader_train)["data"]
    target = next(trainer.dataloader_train_partner)["data"]
    assert not torch.equal(trainer.translate_some(source, target), source)
    trainer.translate_probability = 0.0
    assert torch.equal(trainer.translate_some(source, target), source)


def test_settings_from_environment_are_checked_and_recorded(planned_pair, monkeypatch, style_checkpoint):
    _, env = planned_pair
    trainer = _trainer(env, monkeypatch, nnUNetTrainerGLUALocalOnly, fold=0, nnUNet_unpaired_glua_local_weight="0.5",
                       nnUNet_unpaired_glua_mask_gamma="2")
    assert trainer.local_weight == 0.5 and trainer.mask_gamma == 2.0
    assert trainer.plans_manager.plans["glua"]["local_weight"] == 0.5
    with pytest.raises(UserError, match="nnUNet_unpaired_glua_local_input.*'features' or 'output'"):
        _trainer(env, monkeypatch, nnUNetTrainerGLUALocalOnly, fold=0, nnUNet_unpaired_glua_local_input="pixels")
    monkeypatch.setenv("nnUNet_unpaired_glua_local_input", "features")
    with pytest.raises(UserError, match="mask_gamma"):
        _trainer(env, monkeypatch, nnUNetTrainerGLUALocalOnly, fold=0, nnUNet_unpaired_glua_mask_gamma="-1")


def test_registry_entries():
    methods = registry.load_all()
    expected = {"source-only": "nnUNetTrainerSourceOnly", "glua": "nnUNetTrainerGLUA",
                "glua-global": "nnUNetTrainerGLUAGlobalOnly", "glua-local": "nnUNetTrainerGLUALocalOnly",
                "glua-unmasked": "nnUNetTrainerGLUAUnmasked", "glua-local-unmasked": "nnUNetTrainerGLUALocalOnlyUnmasked"}
    for name, trainer in expected.items():
        assert methods[name].trainer == trainer and methods[name].kind == "uda"
    assert glua.PREREQUISITES == {"nnUNetTrainerGLUA": "nnUNetTrainerGLUAStyle",
                                  "nnUNetTrainerGLUAGlobalOnly": "nnUNetTrainerGLUAStyle",
                                  "nnUNetTrainerGLUAUnmasked": "nnUNetTrainerGLUAStyle"}


# ---------------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_end_to_end_stage1_stage2_predict_target_and_translate(planned_pair, tmp_path):
    root, env = planned_pair
    fold = "1"
    env = dict(env, nnUNet_unpaired_epochs="1", nnUNet_unpaired_iters="3", nnUNet_unpaired_skip_final_validation="1",
               nnUNet_unpaired_glua_style_steps="4", nnUNet_unpaired_glua_style_check_every="2")
    images = root / "nnUNet_raw" / NAMES[1] / "imagesTs"
    out, translated = tmp_path / "pred", tmp_path / "translated"
    output = run_many([
        ["nnUNetv2_train", str(IDS[0]), CONFIG, fold, "-tr", "nnUNetTrainerGLUAStyle", "-device", "cpu"],
        ["nnUNetv2_train", str(IDS[0]), CONFIG, fold, "-tr", "nnUNetTrainerGLUA", "-device", "cpu"],
        ["nnUNetv2_predict", "-i", str(images), "-o", str(out), "-d", str(IDS[1]), "-c", CONFIG, "-f", fold,
         "-tr", "nnUNetTrainerGLUA", "-device", "cpu", "-npp", "0", "-nps", "0"],
        ["nnunet_unpaired", "translate", "-d", str(IDS[0]), "-c", CONFIG, "-f", fold, "-o", str(translated), "-n", "2"],
    ], env)
    assert "style generator loaded from" in section(output, f"nnUNetv2_train {IDS[0]} {CONFIG} {fold} -tr nnUNetTrainerGLUA ")
    assert "train_disc_local" in _logged_keys(env, fold)
    for image in sorted(images.glob("*_0000.nii.gz")):
        src = sitk.ReadImage(str(image))
        pred = sitk.ReadImage(str(out / image.name.replace("_0000", "")))
        assert pred.GetSize() == src.GetSize() and np.allclose(pred.GetDirection(), src.GetDirection())
        assert set(np.unique(sitk.GetArrayFromImage(pred))) <= set(LABELS.values())
    assert "translated 2 case(s)" in section(output, "nnunet_unpaired translate")
    files = sorted(p.name for p in translated.iterdir())
    assert "translations.png" in files and len([f for f in files if f.endswith("_translated.nii.gz")]) == 2
    source = sitk.ReadImage(str(next(translated.glob("*_source.nii.gz"))))
    result = sitk.ReadImage(str(next(translated.glob("*_translated.nii.gz"))))
    assert source.GetSize() == result.GetSize()
    stage1 = Path(env["nnUNet_results"]) / NAMES[0] / f"nnUNetTrainerGLUAStyle__nnUNetPlans__{CONFIG}" / f"fold_{fold}"
    assert (stage1 / "translation_check.png").stat().st_size > 0  # the label-free check of stage 1 (issue 16)
    cost = load_json(str(stage1 / "translation_training.json"))["runs"][-1]
    assert cost["steps"] == 4 and [c["step"] for c in cost["checks"]] == [2, 4]
    logged = torch.load(stage1 / "checkpoint_final.pth", weights_only=False)["logging"]
    assert {"st_check_ratio", "st_check_order"} <= set(logged)


def _logged_keys(env, fold) -> str:
    folder = Path(env["nnUNet_results"]) / NAMES[0] / f"nnUNetTrainerGLUA__nnUNetPlans__{CONFIG}" / f"fold_{fold}"
    return " ".join(sorted(torch.load(folder / "checkpoint_final.pth", weights_only=False)["logging"]))


def test_translate_refuses_missing_model(planned_pair, tmp_path):
    _, env = planned_pair
    from nnunet_unpaired.cli import main

    with pytest.MonkeyPatch.context() as monkeypatch:
        set_env(env, monkeypatch)
        assert main(["translate", "-d", str(IDS[0]), "-c", CONFIG, "-f", "3", "-o", str(tmp_path)]) == 2
        assert main(["translate", "--checkpoint-file", str(tmp_path / "x.pth"), "-o", str(tmp_path)]) != 0


def test_mask_ablations_turn_only_the_focusing_off():
    """Issue 16 item 5: GLUA and local-only, each also with the gap mask's focusing off (gamma 0), as methods."""
    from nnunet_unpaired.benchmark.registry import get
    from nnunet_unpaired.modules.local_alignment import gap_mask
    from nnunet_unpaired.training import glua, interface

    full, local = glua.nnUNetTrainerGLUA, glua.nnUNetTrainerGLUALocalOnly
    for cls, parent in ((glua.nnUNetTrainerGLUAUnmasked, full), (glua.nnUNetTrainerGLUALocalOnlyUnmasked, local)):
        assert cls.mask_gamma == 0.0 and parent.mask_gamma > 0
        assert (cls.use_global, cls.use_local) == (parent.use_global, parent.use_local)
        assert cls.__name__ in interface.USES_TARGET_IMAGES
    assert interface.PREREQUISITES["nnUNetTrainerGLUAUnmasked"] == interface.GLUA_STYLE_TRAINER
    assert "nnUNetTrainerGLUALocalOnlyUnmasked" not in interface.PREREQUISITES  # no style transfer, no stage 1
    assert get("glua-unmasked").trainer == "nnUNetTrainerGLUAUnmasked"
    assert get("glua-local-unmasked").trainer == "nnUNetTrainerGLUALocalOnlyUnmasked"
    logits = torch.randn(2, 1, 4, 4)
    assert torch.equal(gap_mask(logits, 0.0), torch.ones_like(logits))
    assert not torch.allclose(gap_mask(logits, 1.0), torch.ones_like(logits))


def test_stage1_translation_check_is_logged_and_saved(planned_pair, monkeypatch, tmp_path):
    """Issue 16 item 3: after an epoch the label-free check is in the log; on the phantom also the contrast order;
    the PNG grid and the JSON are written."""
    import json as _json

    _, env = planned_pair
    trainer = _trainer(env, monkeypatch, nnUNetTrainerGLUAStyle, fold=4, seed=0,
                       nnUNet_unpaired_glua_style_steps="1")
    assert trainer.run_translation_check() is None  # nothing to check before the first step
    os.makedirs(trainer.output_folder, exist_ok=True)
    trainer.train_translation()
    result = trainer.run_translation_check()
    assert trainer._translation_log["checks"][0]["ratio"] == pytest.approx(result["ratio"])
    assert result["source_to_target"] > 0 and math.isfinite(result["translated_to_target"])
    assert math.isfinite(result["ratio"])
    expected = trainer.target_rendering()  # the planned pair is the phantom: its MR rendering is known
    assert expected is not None and set(expected) == {1, 2, 3, 4}
    assert -1.0 <= result["order"] <= 1.0
    trainer._check_history = [{"epoch": 0, **result}]
    trainer.save_translation_check(str(tmp_path))
    assert (tmp_path / "translation_check.png").stat().st_size > 0
    saved = _json.loads((tmp_path / "translation_check.json").read_text())
    assert saved["history"][0]["ratio"] == pytest.approx(result["ratio"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left
