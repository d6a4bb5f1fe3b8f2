"""nnUNetTrainerEAM and nnUNetTrainerUMMKD: losses wired into the joint trainer, training-only modules kept out of
the deployed network, resume, and nnUNetv2_train -> nnUNetv2_predict end to end for both modalities."""

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_unpaired.benchmark.registry import get
from nnunet_unpaired.training.eam import nnUNetTrainerEAM
from nnunet_unpaired.training.ummkd import nnUNetTrainerUMMKD
from nnunet_unpaired.training.unpaired_joint import CHECKPOINT_KEY, nnUNetTrainerUnpairedJoint

from pairs import IDS, NAMES, run_many, set_env


def _trainer(env, monkeypatch, cls, fold):
    set_env(env, monkeypatch)
    base = os.path.join(env["nnUNet_preprocessed"], NAMES[0])
    plans = load_json(os.path.join(base, "nnUNetPlans.json"))
    plans["continue_training"] = False
    return cls(plans, "2d", fold, load_json(os.path.join(base, "dataset.json")), torch.device("cpu"))


def _started(env, monkeypatch, cls, fold):
    trainer = _trainer(env, monkeypatch, cls, fold)
    trainer.initialize()
    trainer.dataloader_train, trainer.dataloader_val = trainer.get_dataloaders()
    trainer.current_epoch = trainer.num_epochs  # past the warm-up: the alignment terms count fully
    return trainer


def _plain(name, env):
    pm = PlansManager(load_json(os.path.join(env["nnUNet_preprocessed"], name, "nnUNetPlans.json")))
    return nnUNetTrainer.build_network_architecture(pm, pm.get_configuration("2d"), 1, 5, False)


def test_registered():
    assert get("eam").trainer == "nnUNetTrainerEAM" and get("ummkd").trainer == "nnUNetTrainerUMMKD"


def test_eam_step_trains_module_and_stays_out_of_network(planned_pair, monkeypatch):
    _, env = planned_pair
    trainer = _started(env, monkeypatch, nnUNetTrainerEAM, fold=0)
    eam = trainer.training_modules["eam_stage-2"]
    memory_before = eam.memory.detach().clone()
    terms = trainer.train_step(next(trainer.dataloader_train))
    assert {"seg_A", "seg_B", "eam_att", "eam_sem", "eam_str"} <= set(terms)
    assert all(np.isfinite(v) for v in terms.values())
    assert terms["loss"] == pytest.approx(sum(v for k, v in terms.items() if k != "loss"), rel=1e-5)
    assert not torch.equal(memory_before, eam.memory), "the EAM's memory gets no update"
    # the hooks only observe: the network's output is unchanged by the EAM being there
    x = torch.randn(1, 1, *trainer.configuration_manager.patch_size)
    trainer.network.eval()
    with torch.no_grad():
        plain = _plain(NAMES[0], env)
        plain.load_state_dict(trainer._plain_network().state_dict())
        plain.eval()
        trainer.set_deep_supervision_enabled(False)
        assert torch.allclose(trainer.network(x), plain(x), atol=1e-6)

    ckpt_file = os.path.join(trainer.output_folder, "checkpoint_final.pth")
    os.makedirs(trainer.output_folder, exist_ok=True)
    trainer.save_checkpoint(ckpt_file)
    ckpt = torch.load(ckpt_file, weights_only=False)
    assert not any("eam" in k or "memory" in k for k in ckpt["network_weights"])
    _plain(NAMES[0], env).load_state_dict(ckpt["network_weights"], strict=True)
    assert any(k.startswith("eam_stage-2.") for k in ckpt[CHECKPOINT_KEY]["training_modules"])
    again = _trainer(env, monkeypatch, nnUNetTrainerEAM, fold=0)
    again.load_checkpoint(ckpt_file)
    assert torch.equal(again.training_modules["eam_stage-2"].memory, eam.memory)


def test_eam_stage_and_weights_from_environment(planned_pair, monkeypatch):
    _, env = planned_pair
    monkeypatch.setenv("nnUNet_unpaired_eam_stages", "-1,-3")
    monkeypatch.setenv("nnUNet_unpaired_eam_weights", "1,0,2")
    trainer = _started(env, monkeypatch, nnUNetTrainerEAM, fold=1)
    assert set(trainer.training_modules) == {"eam_stage-1", "eam_stage-3"}
    terms = trainer.train_step(next(trainer.dataloader_train))
    assert terms["eam_sem"] == 0.0 and np.isfinite(terms["eam_str"])
    monkeypatch.setenv("nnUNet_unpaired_eam_stages", "7")
    with pytest.raises(ValueError, match="decoder stage"):
        _started(env, monkeypatch, nnUNetTrainerEAM, fold=1)


def test_eam_several_stages_of_different_widths():
    """Each stage's tap and module see that stage's features (the docs' example -1,-2 broke on unequal widths)."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    from nnunet_unpaired.losses.semantic_consistency import EAMLoss
    from nnunet_unpaired.modules.external_attention import ExternalAttentionModule
    from nnunet_unpaired.modules.local_alignment import DecoderFeatureTap

    torch.manual_seed(0)
    net = PlainConvUNet(1, 3, (8, 16, 32), torch.nn.Conv2d, 3, (1, 2, 2), 2, 3, 2, True,
                        torch.nn.InstanceNorm2d, {"eps": 1e-5, "affine": True}, nonlin=torch.nn.LeakyReLU,
                        deep_supervision=True)
    stages = (-1, -2)
    taps = [DecoderFeatureTap.attached(net, s) for s in stages]
    modules = [ExternalAttentionModule(nnUNetTrainerEAM._stage_channels(net.decoder.stages[s]), 3) for s in stages]
    assert [m.in_channels for m in modules] == [8, 16]
    labels_a, labels_b = torch.randint(0, 3, (2, 1, 16, 16)), torch.randint(0, 3, (2, 1, 16, 16))
    net(torch.randn(2, 1, 16, 16))
    feats_a = [t.take() for t in taps]
    net(torch.randn(2, 1, 16, 16))
    feats_b = [t.take() for t in taps]
    assert [f.shape[1:] for f in feats_a] == [(8, 16, 16), (16, 8, 8)]
    total = sum(EAMLoss()(*m(fa, labels_a, fb, labels_b))["total"] for m, fa, fb in zip(modules, feats_a, feats_b))
    total.backward()
    assert all(torch.isfinite(m.memory.grad).all() for m in modules)


def test_eam_ramp_is_per_iteration_and_grounding_is_on_from_the_start(planned_pair, monkeypatch):
    _, env = planned_pair
    trainer = _started(env, monkeypatch, nnUNetTrainerEAM, fold=0)
    trainer.current_epoch, trainer.num_epochs, trainer.num_iterations_per_epoch = 0, 10, 4  # warm-up: one epoch
    trainer.on_train_epoch_start()
    assert trainer.consistency_ramp() == pytest.approx(np.exp(-5.0))
    terms = trainer.train_step(next(trainer.dataloader_train))
    assert trainer.consistency_ramp() == pytest.approx(np.exp(-5.0 * 0.75 ** 2))  # a quarter of the warm-up epoch
    assert terms["eam_att"] > 0.3, "grounding must count fully from the first step (about log K at the start)"
    trainer.train_step(next(trainer.dataloader_train))
    assert trainer.consistency_ramp() == pytest.approx(np.exp(-5.0 * 0.5 ** 2))
    trainer.current_epoch = 1
    trainer.on_train_epoch_start()
    assert trainer.consistency_ramp() == 1.0


def test_eam_dim_setting_is_gone_with_a_clear_error(planned_pair, monkeypatch):
    _, env = planned_pair
    monkeypatch.setenv("nnUNet_unpaired_eam_dim", "64")
    with pytest.raises(Exception, match="nnUNet_unpaired_eam_dim no longer exists"):
        _trainer(env, monkeypatch, nnUNetTrainerEAM, fold=0)


@pytest.mark.parametrize("cls", [nnUNetTrainerUnpairedJoint, nnUNetTrainerEAM])
def test_one_concatenated_forward_equals_two_passes(planned_pair, monkeypatch, cls):
    """Joint and EAM may run one forward over cat(A, B) (issue 14 item 5): same losses and gradients as two passes."""
    _, env = planned_pair
    trainer = _started(env, monkeypatch, cls, fold=0)
    data_a, target_a = _batch_on(trainer, next(trainer.dataloader_train))
    data_b, target_b = _batch_on(trainer, next(trainer.dataloader_train_partner))
    results = []
    for concatenated in (False, True):
        trainer.concatenate_batches = concatenated
        assert trainer.concatenates_batches(data_a, data_b) == concatenated
        trainer.optimizer.zero_grad(set_to_none=True)
        terms = trainer.compute_losses(data_a, target_a, data_b, target_b)
        terms["loss"].backward()
        grads = [p.grad.clone() for p in trainer._plain_network().parameters() if p.grad is not None]
        results.append(({k: float(v) for k, v in terms.items()}, grads))
    (terms_two, grads_two), (terms_one, grads_one) = results
    assert terms_two.keys() == terms_one.keys()
    for key in terms_two:
        assert terms_one[key] == pytest.approx(terms_two[key], rel=1e-4, abs=1e-6), key
    assert len(grads_one) == len(grads_two) > 0
    for g1, g2 in zip(grads_one, grads_two):
        torch.testing.assert_close(g1, g2, rtol=1e-3, atol=1e-5)


def test_concatenation_setting_and_modality_specific_norm(planned_pair, monkeypatch):
    _, env = planned_pair
    assert not _trainer(env, monkeypatch, nnUNetTrainerUnpairedJoint, fold=0).concatenate_batches  # the default
    monkeypatch.setenv("nnUNet_unpaired_concat_forward", "1")
    assert _trainer(env, monkeypatch, nnUNetTrainerUnpairedJoint, fold=0).concatenate_batches
    monkeypatch.setenv("nnUNet_unpaired_concat_forward", "0")
    assert not _trainer(env, monkeypatch, nnUNetTrainerUnpairedJoint, fold=0).concatenate_batches
    monkeypatch.setenv("nnUNet_unpaired_concat_forward", "yes")
    with pytest.raises(Exception, match="nnUNet_unpaired_concat_forward"):
        _trainer(env, monkeypatch, nnUNetTrainerUnpairedJoint, fold=0)
    monkeypatch.delenv("nnUNet_unpaired_concat_forward")
    ummkd = _started(env, monkeypatch, nnUNetTrainerUMMKD, fold=0)  # B has its own norm parameters: two passes
    ummkd.concatenate_batches = True
    x = torch.zeros(2, 1, *ummkd.configuration_manager.patch_size)
    assert not ummkd.concatenates_batches(x, x)


def _batch_on(trainer, batch):
    data = batch["data"].to(trainer.device)
    target = [t.to(trainer.device) for t in batch["target"]]
    return data, target


def test_ummkd_step_has_kd_term_and_own_norms(planned_pair, monkeypatch):
    _, env = planned_pair
    trainer = _started(env, monkeypatch, nnUNetTrainerUMMKD, fold=2)
    assert trainer.partner_norm is not None
    terms = trainer.train_step(next(trainer.dataloader_train))
    assert terms["kd"] >= 0 and np.isfinite(terms["kd"])
    assert terms["loss"] == pytest.approx(terms["seg_A"] + terms["seg_B"] + terms["kd"], rel=1e-5)


@pytest.mark.slow
def test_eam_end_to_end_train_and_predict_both(planned_pair, tmp_path):
    root, env = planned_pair
    env = dict(env, nnUNet_unpaired_skip_final_validation="1")  # nnU-Net's final validation: tested in test_e2e_joint
    run_many([["nnUNetv2_train", str(IDS[0]), "2d", "3", "-tr", "nnUNetTrainerEAM", "-device", "cpu"]]
             + [["nnUNetv2_predict", "-i", str(root / "nnUNet_raw" / name / "imagesTs"), "-o", str(tmp_path / name),
                 "-d", str(IDS[i]), "-c", "2d", "-f", "3", "-tr", "nnUNetTrainerEAM", "-device", "cpu", "-npp", "0",
                 "-nps", "0"] for i, name in enumerate(NAMES)], env)
    for which, name in enumerate(NAMES):
        folder = Path(env["nnUNet_results"]) / name / "nnUNetTrainerEAM__nnUNetPlans__2d" / "fold_3"
        ckpt = torch.load(folder / "checkpoint_final.pth", weights_only=False)
        _plain(name, env).load_state_dict(ckpt["network_weights"], strict=True)
        out = tmp_path / name
        for image in (root / "nnUNet_raw" / name / "imagesTs").glob("*_0000.nii.gz"):
            pred = sitk.ReadImage(str(out / image.name.replace("_0000", "")))
            assert pred.GetSize() == sitk.ReadImage(str(image)).GetSize()
    a_folder = Path(env["nnUNet_results"]) / NAMES[0] / "nnUNetTrainerEAM__nnUNetPlans__2d" / "fold_3"
    assert (a_folder / "progress_terms.png").is_file()
    logged = torch.load(a_folder / "checkpoint_final.pth", weights_only=False)["logging"]
    assert {"train_eam_att", "train_eam_sem", "train_eam_str"} <= set(logged)
