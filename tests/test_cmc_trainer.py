"""nnUNetTrainerCMC: settings, ramps, labelled/unlabelled loaders, unlabelled terms that train the encoder, export
with strict load, resume; end to end with nnUNetv2_train and nnUNetv2_predict for both modalities (slow)."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_unpaired.benchmark.metrics import evaluate_folder
from nnunet_unpaired.benchmark.registry import get
from nnunet_unpaired.errors import UserError
from nnunet_unpaired.phantom import LABELS, PhantomConfig, write_phantom_pair
from nnunet_unpaired.semisupervised import MARKER_KEY
from nnunet_unpaired.training.cmc import PARTNER_HEAD, nnUNetTrainerCMC, resolve_settings
from nnunet_unpaired.training.unpaired_joint import CHECKPOINT_KEY

from pairs import FINGERPRINT_SAMPLES, SMALL, nnunet_env, run_many, set_env

SOURCE_IDS, SEMI_IDS = (981, 982), (983, 984)
NAMES = ("Dataset983_PhantomCTSemi40", "Dataset984_PhantomMRSemi40")
TRAINER = "nnUNetTrainerCMC"


@pytest.fixture(scope="module")
def semi_pair(tmp_path_factory):
    """A phantom pair with 2 of 5 training cases labelled per modality, planned with plan-pair (2d, tiny network)."""
    root = tmp_path_factory.mktemp("cmc_pair")
    env = nnunet_env(root)
    write_phantom_pair(env["nnUNet_raw"], SOURCE_IDS, PhantomConfig(num_train=5, num_test=2, **SMALL),
                       log=lambda *a: None)
    run_many([["nnunet_unpaired", "make-semisupervised", "-d", *map(str, SOURCE_IDS), "--percent", "40", "--to-ids",
               *map(str, SEMI_IDS)],
              ["nnunet_unpaired", "plan-pair", "-d", *map(str, SEMI_IDS), "-c", "2d", "--max-features", "16",
               "--batch-size", "4", "-np", "1", "--no-verify", "--fingerprint-samples", str(FINGERPRINT_SAMPLES)]],
             env)  # integrity: test_semisupervised
    return root, env


def _record(env, which):
    return load_json(os.path.join(env["nnUNet_raw"], NAMES[which], "dataset.json"))[MARKER_KEY]


def _trainer(env, monkeypatch, fold, cls=nnUNetTrainerCMC, ready=True):
    set_env(env, monkeypatch)
    base = os.path.join(env["nnUNet_preprocessed"], NAMES[0])
    plans = load_json(os.path.join(base, "nnUNetPlans.json"))
    plans["continue_training"] = False
    trainer = cls(plans, "2d", fold, load_json(os.path.join(base, "dataset.json")), torch.device("cpu"))
    if ready:
        trainer.initialize()
        trainer.dataloader_train, trainer.dataloader_val = trainer.get_dataloaders()
    return trainer


def _data(loader):
    return next(loader)["data"]


def test_settings_precedence_and_validation():
    defaults = {"csc_weight": 1.0, "cac_weight": 1.0, "unlabelled_start": 0.7, "st_weight": 1.0, "st_threshold": 0.9,
                "ema_decay": 0.99, "csc_temperature": 0.5, "csc_descriptor": "gram", "cac_mode": "pooled",
                "self_fusion_prob": 0.5}
    plans = {"cmc": {"csc_weight": 0.25, "cac_mode": "voxel"}}
    env = {"nnUNet_unpaired_cmc_csc_weight": "2", "nnUNet_unpaired_cmc_self_fusion": "0"}
    settings = resolve_settings(defaults, plans, env)
    assert settings == {**defaults, "csc_weight": 2.0, "cac_mode": "voxel", "self_fusion_prob": 0.0}
    with pytest.raises(ValueError, match="csc_descriptor from nnUNet_unpaired_cmc_csc_descriptor"):
        resolve_settings(defaults, {}, {"nnUNet_unpaired_cmc_csc_descriptor": "pixels"})
    with pytest.raises(ValueError, match="self_fusion_prob"):
        resolve_settings(defaults, {"cmc": {"self_fusion_prob": 2}}, {})
    with pytest.raises(ValueError, match="ema_decay from nnUNet_unpaired_cmc_ema_decay"):
        resolve_settings(defaults, {}, {"nnUNet_unpaired_cmc_ema_decay": "1"})
    with pytest.raises(ValueError, match="unlabelled_start"):
        resolve_settings(defaults, {"cmc": {"unlabelled_start": 1.5}}, {})


def test_registered_as_semi():
    method = get("cmc")
    assert method.trainer == TRAINER and method.kind == "semi"


def test_ramps_and_loaders_keep_labelled_and_unlabelled_apart(semi_pair, monkeypatch):
    _, env = semi_pair
    trainer = _trainer(env, monkeypatch, fold=0)
    trainer.num_epochs = 10
    trainer.csc_weight, trainer.cac_weight, trainer.st_weight = 0.5, 2.0, 3.0
    trainer.unlabelled_start = 0.0  # the public code's ramps over the whole training
    w_csc, w_cac, w_st = trainer.consistency_weights(0)
    assert w_csc == pytest.approx(0.5 * math.exp(-5)) and w_cac == pytest.approx(2.0)
    assert w_st == pytest.approx(3.0 * math.exp(-5))
    w_csc, w_cac, w_st = trainer.consistency_weights(5)
    assert w_csc == pytest.approx(0.5 * math.exp(-5 / 4)) and w_cac == pytest.approx(1.0)
    assert w_st == pytest.approx(3.0 * math.exp(-5 / 4))
    assert trainer.consistency_weights(10) == (pytest.approx(0.5), pytest.approx(0.0), pytest.approx(3.0))
    trainer.unlabelled_start = 0.7  # the public code's late start (epoch 350 of 500): CSC and CAC off before it
    assert trainer.consistency_weights(6)[:2] == (0.0, 0.0)
    assert trainer.consistency_weights(6)[2] == pytest.approx(3.0 * math.exp(-5 * 0.16))
    assert trainer.consistency_weights(7) == (pytest.approx(0.5 * math.exp(-5 * 0.09)),
                                              pytest.approx(2.0 * (math.cos(0.7 * math.pi) + 1) / 2),
                                              pytest.approx(3.0 * math.exp(-5 * 0.09)))

    split = load_json(os.path.join(env["nnUNet_preprocessed"], NAMES[0], "splits_final.json"))[0]
    record_a, record_b = _record(env, 0), _record(env, 1)
    tr_keys, val_keys = trainer.do_split()  # unlabelled validation cases become unlabelled training cases
    labelled_val = set(split["val"]) & set(record_a["labelled"])
    assert set(val_keys) == (labelled_val or set(split["val"]))
    assert set(tr_keys) == set(split["train"]) | (set(split["val"]) & set(record_a["unlabelled"]))
    cases = {
        "labelled A": (trainer.dataloader_train, set(record_a["labelled"]) & set(split["train"])),
        "unlabelled A": (trainer.dataloader_unlabelled, set(record_a["unlabelled"])),
        "labelled B": (trainer.dataloader_train_partner, set(record_b["labelled"])),
        "unlabelled B": (trainer.dataloader_unlabelled_partner, set(record_b["unlabelled"])),
    }
    for what, (loader, allowed) in cases.items():
        assert set(loader.data_loader.indices) <= allowed and loader.data_loader.indices, what
        seen = {k for _ in range(2) for k in next(loader)["keys"]}
        assert seen <= allowed, what


def test_unlabelled_terms_train_the_encoder_in_training_mode(semi_pair, monkeypatch):
    """The public code ran the unlabelled pass under no_grad in eval mode, so CSC and CAC trained nothing."""
    _, env = semi_pair
    trainer = _trainer(env, monkeypatch, fold=1)
    trainer.unlabelled_start, trainer.current_epoch = 0.0, 1
    trainer.st_loss.threshold = 0.0  # every voxel a pseudo-label: ST is not zero at initialization
    network = trainer.cmc_network()
    with torch.no_grad():
        network.channel_attention.gamma.fill_(0.1)
    labelled_a, labelled_b = next(trainer.dataloader_train), next(trainer.dataloader_train_partner)
    trainer._unlabelled_pair = (_data(trainer.dataloader_unlabelled), _data(trainer.dataloader_unlabelled_partner))
    modes = []
    hook = network.encoder.register_forward_hook(
        lambda module, args, out: modes.append((module.training, torch.is_grad_enabled())))
    try:
        terms = trainer.compute_losses(labelled_a["data"], labelled_a["target"], labelled_b["data"],
                                       labelled_b["target"])
    finally:
        hook.remove()
    assert modes == [(True, True)] * 4  # labelled A, B and unlabelled A, B: all in training mode, with gradients
    expected = terms["seg_A"] + terms["seg_B"] + terms["csc"] + terms["cac"] + terms["st"]
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    for term in ("csc", "cac", "st"):
        assert terms[term].item() == pytest.approx(terms[f"w_{term}"].item() * terms[f"{term}_unweighted"].item(),
                                                   rel=1e-5)
    trainer.optimizer.zero_grad(set_to_none=True)
    (terms["csc"] + terms["cac"]).backward(retain_graph=True)  # the cross-modal unlabelled terms only
    parts = {"encoder": network.encoder, "fusion": network.fusion, "attention": network.channel_attention,
             "head A": network.head, "head B": trainer.partner_head}
    for name, module in parts.items():
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), f"no gradient from CSC/CAC in {name}"

    assert terms["st"].item() > 0
    trainer.optimizer.zero_grad(set_to_none=True)
    terms["st"].backward()  # ST alone reaches the deployed path of both modalities, never the teacher
    for name, module in parts.items():
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), f"no gradient from ST in {name}"
    assert all(p.grad is None for p in trainer.teacher.parameters())

    teacher_before = [p.detach().clone() for p in trainer.teacher.parameters()]
    result = trainer.train_step(next(trainer.dataloader_train))
    assert {"loss", "seg_A", "seg_B", "csc", "cac", "st", "w_csc", "w_cac", "w_st", "st_confident"} <= set(result)
    # the teacher follows the student after each step (its first update copies the student: decay 0)
    assert not all(torch.equal(a, b) for a, b in zip(teacher_before, trainer.teacher.parameters()))
    student = [*network.parameters(), *trainer.partner_head.parameters()]
    assert all(torch.equal(t, s) for t, s in zip(trainer.teacher.parameters(), student))


def test_export_loads_strictly_with_each_modalitys_head(semi_pair, monkeypatch):
    _, env = semi_pair
    trainer = _trainer(env, monkeypatch, fold=2)
    trainer.train_step(next(trainer.dataloader_train))
    network, head_b = trainer.cmc_network(), trainer.partner_head
    assert not all(torch.equal(a, b) for a, b in zip(network.head.parameters(), head_b.parameters()))
    head_a = [p.detach().clone() for p in network.head.parameters()]
    head_b_values = [p.detach().clone() for p in head_b.parameters()]
    with trainer.as_partner():  # B's head inside the network, restored afterwards
        assert all(torch.equal(a, b) for a, b in zip(network.head.parameters(), head_b_values))
    assert all(torch.equal(a, b) for a, b in zip(network.head.parameters(), head_a))
    assert all(torch.equal(a, b) for a, b in zip(head_b.parameters(), head_b_values))

    os.makedirs(trainer.output_folder, exist_ok=True)
    trainer.save_checkpoint(os.path.join(trainer.output_folder, "checkpoint_final.pth"))
    results = Path(env["nnUNet_results"])
    x = torch.randn(1, 1, 32, 32)
    for which, name in enumerate(NAMES):
        folder = results / name / f"{TRAINER}__nnUNetPlans__2d"
        checkpoint = torch.load(folder / "fold_2" / "checkpoint_final.pth", weights_only=False)
        plans = PlansManager(trainer.plans_manager.plans if which == 0 else trainer._partner["plans_manager"].plans)
        deployed = nnUNetTrainerCMC.build_network_architecture(plans, plans.get_configuration("2d"), 1,
                                                               len(LABELS), False)
        deployed.load_state_dict(checkpoint["network_weights"], strict=True)
        head = network.head if which == 0 else head_b
        assert all(torch.equal(deployed.head.state_dict()[k], v.cpu()) for k, v in head.state_dict().items())
        deployed.eval()
        network.decoder.deep_supervision = False
        with torch.no_grad(), (trainer.as_partner() if which else torch.no_grad()):
            assert torch.allclose(deployed(x), network(x), atol=1e-5)
        network.decoder.deep_supervision = True

    own = torch.load(os.path.join(trainer.output_folder, "checkpoint_final.pth"), weights_only=False)
    assert f"{PARTNER_HEAD}.layers.2.weight" in own[CHECKPOINT_KEY]["training_modules"]
    assert not any(k.startswith(PARTNER_HEAD) for k in own["network_weights"])
    again = _trainer(env, monkeypatch, fold=2, ready=False)
    again.initialize()
    again.load_checkpoint(os.path.join(trainer.output_folder, "checkpoint_final.pth"))
    assert all(torch.equal(a, b) for a, b in zip(again.partner_head.parameters(), head_b.parameters()))
    # the mean teacher comes back with --c (its weights and its step count), and is never part of the export
    assert all(torch.equal(a, b) for a, b in zip(again.teacher.parameters(), trainer.teacher.parameters()))
    assert int(again.teacher.steps) == int(trainer.teacher.steps) == 1
    assert any(k.startswith("teacher.") for k in own[CHECKPOINT_KEY]["training_modules"])
    assert not any(k.startswith("teacher") or k.startswith("copies") for k in own["network_weights"])


def test_fold_without_labelled_training_case_is_refused(semi_pair, monkeypatch):
    _, env = semi_pair
    splits_file = Path(env["nnUNet_preprocessed"]) / NAMES[0] / "splits_final.json"
    original = splits_file.read_text()
    record = _record(env, 0)
    splits = load_json(str(splits_file)) + [{"train": record["unlabelled"], "val": record["labelled"]}]
    splits_file.write_text(json.dumps(splits))
    try:
        trainer = _trainer(env, monkeypatch, fold=len(splits) - 1, ready=False)
        with pytest.raises(UserError, match="(?s)include no labelled case.*fold 'all'"):
            trainer.do_split()
    finally:
        splits_file.write_text(original)


@pytest.mark.slow
def test_train_and_predict_both_modalities(semi_pair, tmp_path):
    root, env = semi_pair
    env = dict(env, nnUNet_unpaired_epochs="2", nnUNet_unpaired_iters="6", OMP_NUM_THREADS="1")  # 1 thread: faster here
    run_many([["nnUNetv2_train", str(SEMI_IDS[0]), "2d", "all", "-tr", TRAINER, "-device", "cpu"]]
             + [["nnUNetv2_predict", "-i", str(root / "nnUNet_raw" / name / "imagesTs"), "-o", str(tmp_path / f"pred_{i}"),
                 "-d", str(SEMI_IDS[i]), "-c", "2d", "-f", "all", "-tr", TRAINER, "-device", "cpu", "-npp", "0",
                 "-nps", "0"] for i, name in enumerate(NAMES)], env)
    for which, name in enumerate(NAMES):
        folder = Path(env["nnUNet_results"]) / name / f"{TRAINER}__nnUNetPlans__2d" / "fold_all"
        assert (folder / "checkpoint_final.pth").is_file() and (folder / "validation" / "summary.json").is_file()
        images = root / "nnUNet_raw" / name / "imagesTs"
        out = tmp_path / f"pred_{which}"
        for image in sorted(images.glob("*_0000.nii.gz")):
            src, pred = sitk.ReadImage(str(image)), sitk.ReadImage(str(out / image.name.replace("_0000", "")))
            assert pred.GetSize() == src.GetSize() and np.allclose(pred.GetDirection(), src.GetDirection())
        rows = evaluate_folder(out, root / "nnUNet_raw" / name / "labelsTs", {k: v for k, v in LABELS.items() if v})
        assert np.nanmean([r["dice"] for r in rows]) > 0.05, rows  # all-background would score 0
