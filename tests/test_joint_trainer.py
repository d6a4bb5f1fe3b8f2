"""nnUNetTrainerUnpairedJoint in-process: partner loading, loader splits, training step, checkpoints and export."""

import json
import os

import pytest
import torch
import torch.distributed as dist
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_unpaired.errors import UserError
from nnunet_unpaired.pairing import PAIRING_KEY
from nnunet_unpaired.splits import check_fold_possible
from nnunet_unpaired.training.unpaired_joint import (CHECKPOINT_KEY, nnUNetTrainerUnpairedJoint,
                                                     nnUNetTrainerUnpairedJointModalityNorm)

from pairs import NAMES, set_env


def _inputs(env, name=NAMES[0]):
    base = os.path.join(env["nnUNet_preprocessed"], name)
    plans = load_json(os.path.join(base, "nnUNetPlans.json"))
    plans["continue_training"] = False
    return plans, load_json(os.path.join(base, "dataset.json"))


def _trainer(env, monkeypatch, cls=nnUNetTrainerUnpairedJoint, fold=0, plans=None):
    set_env(env, monkeypatch)
    default_plans, dataset_json = _inputs(env)
    return cls(plans or default_plans, "2d", fold, dataset_json, torch.device("cpu"))


def _plain_network(env, name):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    plans, dataset_json = _inputs(env, name)
    pm = PlansManager(plans)
    cm = pm.get_configuration("2d")
    return nnUNetTrainer.build_network_architecture(pm, cm, 1, len(dataset_json["labels"]), False)


def test_partner_loader_respects_partner_split(planned_pair, monkeypatch):
    _, env = planned_pair
    trainer = _trainer(env, monkeypatch, fold=1)
    trainer.initialize()
    trainer.dataloader_train, trainer.dataloader_val = trainer.get_dataloaders()
    split = load_json(os.path.join(env["nnUNet_preprocessed"], NAMES[1], "splits_final.json"))[1]
    partner_keys = set(trainer.dataloader_train_partner.data_loader.indices)
    assert partner_keys == set(split["train"]) and not partner_keys & set(split["val"])
    assert set(trainer.dataloader_val_partner.data_loader.indices) == set(split["val"])
    seen = {k for _ in range(3) for k in next(trainer.dataloader_train_partner)["keys"]}
    assert seen <= set(split["train"]) and all(k.startswith("phantommr") for k in seen)
    own = {k for _ in range(3) for k in next(trainer.dataloader_train)["keys"]}
    assert all(k.startswith("phantomct") for k in own)


def test_train_step_updates_partner_norm_and_export_loads_strictly(planned_pair, monkeypatch):
    _, env = planned_pair
    trainer = _trainer(env, monkeypatch, cls=nnUNetTrainerUnpairedJointModalityNorm, fold=2)
    trainer.initialize()
    trainer.dataloader_train, trainer.dataloader_val = trainer.get_dataloaders()
    assert len(trainer.optimizer.param_groups) == 2  # network + training-only modules
    norm_before = [p.detach().clone() for p in trainer.partner_norm.params]
    result = trainer.train_step(next(trainer.dataloader_train))
    assert {"loss", "seg_A", "seg_B"} <= set(result)
    assert result["loss"] == pytest.approx(result["seg_A"] + result["seg_B"], rel=1e-5)
    assert any(not torch.equal(a, b) for a, b in zip(norm_before, trainer.partner_norm.params))

    os.makedirs(trainer.output_folder, exist_ok=True)
    trainer.save_checkpoint(os.path.join(trainer.output_folder, "checkpoint_final.pth"))
    own = torch.load(os.path.join(trainer.output_folder, "checkpoint_final.pth"), weights_only=False)
    exported_file = os.path.join(env["nnUNet_results"], NAMES[1],
                                 "nnUNetTrainerUnpairedJointModalityNorm__nnUNetPlans__2d", "fold_2",
                                 "checkpoint_final.pth")
    exported = torch.load(exported_file, weights_only=False)
    for name, ckpt in ((NAMES[0], own), (NAMES[1], exported)):
        _plain_network(env, name).load_state_dict(ckpt["network_weights"], strict=True)
    assert CHECKPOINT_KEY in own and "training_modules" in own[CHECKPOINT_KEY]
    assert exported["init_args"]["plans"]["dataset_name"] == NAMES[1]
    norm_key = next(k for k in own["network_weights"] if k.endswith("norm.weight"))
    assert not torch.equal(own["network_weights"][norm_key], exported["network_weights"][norm_key])
    conv_key = next(k for k in own["network_weights"] if k.endswith("conv.weight"))
    assert torch.equal(own["network_weights"][conv_key], exported["network_weights"][conv_key])

    # --c restores the training-only modules; the export cannot be resumed from
    again = _trainer(env, monkeypatch, cls=nnUNetTrainerUnpairedJointModalityNorm, fold=2)
    again.load_checkpoint(os.path.join(trainer.output_folder, "checkpoint_final.pth"))
    assert all(torch.equal(a, b) for a, b in zip(again.partner_norm.params, trainer.partner_norm.params))
    with pytest.raises(UserError, match="(?s)export .* trained on"):
        again.load_checkpoint(exported_file)


def test_refuses_unpaired_plans(planned_pair, monkeypatch):
    _, env = planned_pair
    plans, _ = _inputs(env)
    del plans[PAIRING_KEY]
    with pytest.raises(UserError, match="(?s)no partner dataset.*plan-pair"):
        _trainer(env, monkeypatch, plans=plans)


def test_refuses_partner_not_preprocessed(planned_pair, monkeypatch):
    _, env = planned_pair
    plans, _ = _inputs(env)
    plans[PAIRING_KEY] = dict(plans[PAIRING_KEY], partner="Dataset999_Missing")
    with pytest.raises(UserError, match="Dataset999_Missing is not planned/preprocessed"):
        _trainer(env, monkeypatch, plans=plans)


def test_refuses_plans_mismatch(planned_pair, monkeypatch):
    _, env = planned_pair
    plans, _ = _inputs(env)
    plans["configurations"]["2d"]["patch_size"] = [16, 16]
    with pytest.raises(UserError, match="(?s)no longer match.*patch_size"):
        _trainer(env, monkeypatch, plans=plans)


def test_refuses_unset_results_folder(planned_pair, monkeypatch):
    _, env = planned_pair
    set_env(env, monkeypatch)
    monkeypatch.delenv("nnUNet_results")
    plans, dataset_json = _inputs(env)
    with pytest.raises((UserError, RuntimeError), match="nnUNet_results"):
        nnUNetTrainerUnpairedJoint(plans, "2d", 0, dataset_json, torch.device("cpu"))


def test_fold_check(tmp_path):
    (tmp_path / "gt_segmentations").mkdir()
    for i in range(3):
        (tmp_path / "gt_segmentations" / f"c{i}.nii.gz").write_bytes(b"")
    with pytest.raises(UserError, match="(?s)3 training case.*fold .all."):
        check_fold_possible(str(tmp_path), 0)
    check_fold_possible(str(tmp_path), "all")
    (tmp_path / "splits_final.json").write_text(json.dumps([{"train": ["c0"], "val": ["c1"]}]))
    check_fold_possible(str(tmp_path), 0)


def test_multi_gpu_stops_at_start(planned_pair, monkeypatch, tmp_path):
    _, env = planned_pair
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        with pytest.raises(NotImplementedError, match="DDP"):
            _trainer(env, monkeypatch, fold=3)
    finally:
        dist.destroy_process_group()
