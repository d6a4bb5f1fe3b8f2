"""nnUNetTrainerCMCPaired (CMC in paired mode, issue 17 item 2): the paired forward, the voxel-wise terms against the
misalignment-invariant ones, the phantom's misalignment option, the refusal of other channel counts, in-process
training terms and export, and (slow) the stock nnUNetv2_train + nnUNetv2_predict on a tiny two-channel phantom."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_unpaired.cli import main as cli_main
from nnunet_unpaired.errors import UserError
from nnunet_unpaired.losses.cross_modal_consistency import AnatomicalConsistencyLoss, ChannelSemanticConsistencyLoss
from nnunet_unpaired.modules.cmc_network import build_paired_cmc_network
from nnunet_unpaired.phantom_multichannel import MISALIGNED_CHANNEL, make_case, write_multichannel_phantom
from nnunet_unpaired.semisupervised import MARKER_KEY
from nnunet_unpaired.training.cmc import TEACHER
from nnunet_unpaired.training.cmc_paired import PAIRED_SETTINGS, nnUNetTrainerCMCPaired
from nnunet_unpaired.training.unpaired_joint import CHECKPOINT_KEY

from maml_helpers import shrink_plans
from pairs import nnunet_env, run_many, set_env

UNET = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
IMPORTS = ["conv_op", "norm_op", "dropout_op", "nonlin"]
TRAINER = "nnUNetTrainerCMCPaired"
SOURCE_ID, SEMI_ID = 973, 974
SEMI_NAME = "Dataset974_PairedPhantomSemi40"
SHAPE = (2, 32, 32)


def _arch() -> dict:
    return {"n_stages": 3, "features_per_stage": [4, 8, 8], "conv_op": "torch.nn.Conv2d",
            "kernel_sizes": [[3, 3]] * 3, "strides": [[1, 1], [2, 2], [2, 2]], "n_conv_per_stage": [1, 1, 1],
            "n_conv_per_stage_decoder": [1, 1], "conv_bias": True, "norm_op": "torch.nn.InstanceNorm2d",
            "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}}


def _network(deep_supervision: bool = True):
    torch.manual_seed(0)
    return build_paired_cmc_network(UNET, _arch(), IMPORTS, 2, 3, deep_supervision)


# ------------------------------------------------------------------------------------------------ the network
def test_paired_forward_fuses_the_same_cases_two_channels():
    net = _network()
    with torch.no_grad():
        net.channel_attention.gamma.fill_(0.5)
    fused = []
    hook = net.fusion.register_forward_hook(lambda module, args, out: fused.append(out.detach().clone()))
    x = torch.randn(2, 2, 16, 16)
    changed = x.clone()
    changed[0, 1] = torch.randn(16, 16)  # channel 1 (modality B) of sample 0 only
    with torch.no_grad():
        before, after = net(x, pair_output=True), net(changed, pair_output=True)
    hook.remove()
    assert len(fused) == 2  # one fusion per forward: the pair of the same cases
    assert not torch.allclose(fused[0][0], fused[1][0])  # sample 0's fusion sees its own channel 1
    assert torch.equal(fused[0][1], fused[1][1])  # sample 1's fusion does not see sample 0
    assert not torch.allclose(before.output_a[0][0], after.output_a[0][0])  # head A reads the fused features
    assert torch.equal(before.output_a[0][1], after.output_a[0][1])
    assert torch.equal(before.bottleneck_a, after.bottleneck_a)  # channel 0 is encoded on its own
    # deployed output: the mean of the two heads' logits, at every deep-supervision scale
    with torch.no_grad():
        deployed = net(x)
    assert all(torch.allclose(d, (a + b) / 2) for d, a, b in zip(deployed, before.output_a, before.output_b))
    with pytest.raises(ValueError, match="two channels"):
        net(x[:, :1])


def test_paired_network_loads_strictly_and_both_heads_start_equal():
    net = _network()
    assert {k.split(".")[0] for k in net.state_dict()} == {"encoder", "decoder", "channel_attention", "fusion", "head",
                                                          "head_b"}
    assert all(torch.equal(a, b) for a, b in zip(net.head.parameters(), net.head_b.parameters()))
    assert net.encoder.stages[0][0].convs[0].conv.in_channels == 1  # the encoder is shared by the two channels
    plain = build_paired_cmc_network(UNET, _arch(), IMPORTS, 2, 3, False)
    plain.load_state_dict(net.state_dict(), strict=True)
    with pytest.raises(ValueError, match="exactly 2 input channels"):
        build_paired_cmc_network(UNET, _arch(), IMPORTS, 3, 3, False)


# ------------------------------------------------------------------------------- voxel-wise vs invariant forms
def _disk(size: int, centre, radius: float) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return ((y - centre[0]) ** 2 + (x - centre[1]) ** 2 <= radius ** 2).float()


def test_voxel_cac_measures_a_misalignment_that_pooled_cac_and_gram_csc_cannot_see():
    size = 24
    disk = _disk(size, (7, 7), 3)
    shifted = _disk(size, (7, 16), 3)  # the same disk moved by 9 voxels: no overlap left
    probs, moved = torch.stack((1 - disk, disk))[None], torch.stack((1 - shifted, shifted))[None]
    voxel, pooled = AnatomicalConsistencyLoss("voxel", smooth=0.0), AnatomicalConsistencyLoss("pooled", smooth=0.0)
    assert voxel(probs, probs).item() == pytest.approx(0.0, abs=1e-6)  # identical predictions: no loss
    # hand-computed for one-hot maps of N voxels with a disk of a voxels in each, not overlapping:
    # Dice_disk = 0, Dice_background = 2 (N - 2a) / (2 (N - a)); CAC = 1 - (0 + Dice_background) / 2
    n, a = size * size, float(disk.sum())
    assert voxel(probs, moved).item() == pytest.approx(1 - (n - 2 * a) / (n - a) / 2, rel=1e-5)
    assert pooled(probs, moved).item() == pytest.approx(0.0, abs=1e-6)  # same class composition

    # CSC: the gram descriptor depends on no voxel position (any permutation of the voxels leaves it unchanged,
    # losses/cross_modal_consistency.py), so a shift (here circular: a permutation) of one modality changes nothing;
    # the spatial (public code) descriptor compares corresponding voxels and sees the shift
    torch.manual_seed(0)
    features = torch.randn(2, 6, 8, 8)
    rolled = torch.roll(features, shifts=3, dims=3)
    gram, spatial = ChannelSemanticConsistencyLoss(0.5, "gram"), ChannelSemanticConsistencyLoss(0.5, "spatial")
    assert gram(features, rolled).item() == pytest.approx(gram(features, features).item(), rel=1e-5)
    assert spatial(features, rolled).item() > spatial(features, features).item() + 0.5


# ------------------------------------------------------------------------------------ the misalignment option
def _array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_misalignment_shifts_channel_one_by_exactly_the_requested_voxels(tmp_path):
    voxels = 3
    aligned = write_multichannel_phantom(tmp_path / "a", 5, "P", num_cases=3, shape=SHAPE, num_channels=2, seed=4,
                                         num_test_cases=1, layout="modalities")
    assert cli_main(["phantom-multichannel", "--output", str(tmp_path / "m"), "--id", "5", "--name", "P",
                     "--num-train", "3", "--num-test", "1", "--channels", "2", "--shape", *map(str, SHAPE),
                     "--seed", "4", "--layout", "modalities", "--misalign-voxels", str(voxels)]) == 0
    misaligned = tmp_path / "m" / aligned.name
    record = json.loads((misaligned / "dataset.json").read_text())["phantom"]["misalignment"]
    assert record["channel"] == MISALIGNED_CHANNEL == 1 and record["voxels"] == voxels
    assert "misalignment" not in json.loads((aligned / "dataset.json").read_text())["phantom"]
    cases = [("imagesTr", "labelsTr", f"P_{i:06d}") for i in range(3)] + [("imagesTs", "labelsTs", "P_100000")]
    assert set(record["shift_yx"]) == {case for _, _, case in cases}
    for images, labels, case in cases:
        dy, dx = record["shift_yx"][case]
        assert sorted((abs(dy), abs(dx))) == [0, voxels]  # exactly `voxels` along one in-plane axis
        for name in (f"{case}_0000.nii.gz", f"../{labels}/{case}.nii.gz"):  # channel 0 and the label map: untouched
            assert np.array_equal(_array(misaligned / images / name), _array(aligned / images / name)), name
        original, moved = _array(aligned / images / f"{case}_0001.nii.gz"), _array(misaligned / images /
                                                                                  f"{case}_0001.nii.gz")
        height, width = original.shape[1:]
        # moved[y + dy, x + dx] == original[y, x] wherever both exist; the vacated border is air (0)
        ys, xs = slice(max(0, -dy), height - max(0, dy)), slice(max(0, -dx), width - max(0, dx))
        yt, xt = slice(max(0, dy), height - max(0, -dy)), slice(max(0, dx), width - max(0, -dx))
        assert np.array_equal(moved[:, yt, xt], original[:, ys, xs])
        border = np.ones(moved.shape, dtype=bool)
        border[:, yt, xt] = False
        assert border.sum() == original.shape[0] * voxels * (width if dy else height) and not moved[border].any()
        assert not np.array_equal(moved, original)
    # every case keeps its own direction, from the seed: a second write gives the same shifts
    again = write_multichannel_phantom(tmp_path / "again", 5, "P", num_cases=3, shape=SHAPE, num_channels=2, seed=4,
                                       num_test_cases=1, layout="modalities", misalign_voxels=voxels)
    assert json.loads((again / "dataset.json").read_text())["phantom"]["misalignment"] == record
    with pytest.raises(ValueError, match="misalign_voxels"):
        write_multichannel_phantom(tmp_path / "bad", 5, "P", num_cases=1, shape=SHAPE, misalign_voxels=16)
    assert cli_main(["phantom-multichannel", "--output", str(tmp_path / "bad"), "--misalign-voxels", "-1"]) == 2
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())


def test_no_misalignment_writes_what_the_phantom_wrote_before(tmp_path):
    """0 (the default) draws nothing extra: the files hold make_case's arrays, as before the option existed."""
    folder = write_multichannel_phantom(tmp_path / "zero", 6, "Q", num_cases=2, shape=SHAPE, num_channels=3, seed=2,
                                        misalign_voxels=0)
    default = write_multichannel_phantom(tmp_path / "default", 6, "Q", num_cases=2, shape=SHAPE, num_channels=3,
                                         seed=2)
    assert (folder / "dataset.json").read_text() == (default / "dataset.json").read_text()
    assert "misalignment" not in json.loads((folder / "dataset.json").read_text())["phantom"]
    for i in range(2):
        images, labels = make_case(np.random.default_rng([2, i]), SHAPE, 3, "exclusive")
        for c in range(3):
            file = folder / "imagesTr" / f"Q_{i:06d}_{c:04d}.nii.gz"
            assert np.array_equal(_array(file), images[c])
            assert file.read_bytes() == (default / "imagesTr" / file.name).read_bytes()
        assert np.array_equal(_array(folder / "labelsTr" / f"Q_{i:06d}.nii.gz"), labels)


# ------------------------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize("channels", [1, 3])
def test_refuses_a_dataset_without_exactly_two_channels(channels, monkeypatch, tmp_path):
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    dataset_json = {"channel_names": {str(c): f"mod{c}" for c in range(channels)}, "labels": {"background": 0},
                    "numTraining": 1, "file_ending": ".nii.gz"}
    with pytest.raises(UserError) as error:
        nnUNetTrainerCMCPaired({"dataset_name": "Dataset005_X"}, "2d", 0, dataset_json, torch.device("cpu"))
    message = str(error.value)
    assert os.path.join(str(tmp_path), "Dataset005_X", "dataset.json") in message
    assert f"declares {channels}" in message and "exactly 2" in message
    assert "_0001" in message and "nnUNetv2_plan_and_preprocess" in message and "nnUNetTrainerCMC " in message


# ------------------------------------------------------------------------------------ on a planned phantom
@pytest.fixture(scope="module")
def paired_semi(tmp_path_factory):
    """A two-channel phantom (modalities layout), 2 of 5 training cases labelled, planned with the stock command."""
    root = tmp_path_factory.mktemp("cmc_paired")
    env = nnunet_env(root)
    write_multichannel_phantom(env["nnUNet_raw"], SOURCE_ID, "PairedPhantom", num_cases=5, shape=SHAPE,
                               num_channels=2, num_test_cases=1, layout="modalities")
    # nnUNet_n_proc_DA=0 breaks the planner (torch.set_num_threads(0)), so planning runs with 1
    run_many([["nnunet_unpaired", "make-semisupervised", "-d", str(SOURCE_ID), "--percent", "40", "--to-ids",
               str(SEMI_ID)],
              ["nnUNetv2_plan_and_preprocess", "-d", str(SEMI_ID), "-c", "2d", "-np", "1", "-npfp", "1"]],
             dict(env, nnUNet_n_proc_DA="1"))
    shrink_plans(Path(env["nnUNet_preprocessed"]) / SEMI_NAME / "nnUNetPlans.json", "2d", features=(8, 16, 32),
                 batch_size=2)
    return root, env


def _trainer(env, monkeypatch, results, fold="all"):
    set_env(env, monkeypatch)
    monkeypatch.setenv("nnUNet_results", str(results))  # this test's own model folder
    base = os.path.join(env["nnUNet_preprocessed"], SEMI_NAME)
    plans = load_json(os.path.join(base, "nnUNetPlans.json"))
    plans["continue_training"] = False  # nnU-Net's run_training sets it
    trainer = nnUNetTrainerCMCPaired(plans, "2d", fold, load_json(os.path.join(base, "dataset.json")),
                                     torch.device("cpu"))
    trainer.initialize()
    trainer.dataloader_train, trainer.dataloader_val = trainer.get_dataloaders()
    return trainer


def test_in_process_terms_gradients_and_export(paired_semi, monkeypatch, tmp_path):
    root, env = paired_semi
    monkeypatch.setenv("nnUNet_unpaired_cmc_start", "0")
    monkeypatch.setenv("nnUNet_unpaired_cmc_st_threshold", "0")  # every voxel a pseudo-label: ST not 0 at the start
    trainer = _trainer(env, monkeypatch, tmp_path)
    assert set(trainer.plans_manager.plans["cmc"]) == set(PAIRED_SETTINGS)
    assert trainer.csc_descriptor == "spatial" and trainer.cac_mode == "voxel"
    record = load_json(os.path.join(env["nnUNet_raw"], SEMI_NAME, "dataset.json"))[MARKER_KEY]
    assert set(trainer.dataloader_train.data_loader.indices) == set(record["labelled"])
    assert set(trainer.dataloader_unlabelled.data_loader.indices) == set(record["unlabelled"])
    network = trainer.cmc_network()
    with torch.no_grad():
        network.channel_attention.gamma.fill_(0.1)
    trainer.current_epoch = 1
    batch, unlabelled = next(trainer.dataloader_train), next(trainer.dataloader_unlabelled)["data"]
    assert batch["data"].shape[1] == unlabelled.shape[1] == 2
    terms = trainer.compute_losses(batch["data"], batch["target"], unlabelled)
    assert all(torch.isfinite(v).all() for v in terms.values())
    for term in ("csc", "cac", "st"):
        assert terms[term].item() > 0
        assert terms[term].item() == pytest.approx(terms[f"w_{term}"].item() * terms[f"{term}_unweighted"].item(),
                                                   rel=1e-5)
    assert terms["loss"].item() == pytest.approx(sum(terms[k].item() for k in ("seg_A", "seg_B", "csc", "cac", "st")),
                                                 rel=1e-6)
    trainer.optimizer.zero_grad(set_to_none=True)
    (terms["csc"] + terms["cac"]).backward()  # the voxel-wise unlabelled terms reach every part of the network
    for name in ("encoder", "fusion", "channel_attention", "head", "head_b"):
        grads = [p.grad for p in getattr(network, name).parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), name
    assert all(p.grad is None for p in trainer.teacher.parameters())

    before = {k: v.detach().clone() for k, v in network.state_dict().items()}
    result = trainer.train_step(batch)
    assert np.isfinite(result["loss"]) and {"seg_A", "seg_B", "csc", "cac", "st"} <= set(result)
    assert any(not torch.equal(before[k], v) for k, v in network.state_dict().items())  # the weights changed
    assert all(torch.equal(t, s) for t, s in zip(trainer.teacher.parameters(), network.parameters()))  # 1st update

    os.makedirs(trainer.output_folder, exist_ok=True)
    trainer.save_checkpoint(os.path.join(trainer.output_folder, "checkpoint_final.pth"))
    checkpoint = torch.load(os.path.join(trainer.output_folder, "checkpoint_final.pth"), weights_only=False)
    assert not any("teacher" in k or k.startswith("copies") for k in checkpoint["network_weights"])
    assert any(k.startswith(f"{TEACHER}.") for k in checkpoint[CHECKPOINT_KEY]["training_modules"])
    plans = PlansManager(checkpoint["init_args"]["plans"])
    deployed = nnUNetTrainerCMCPaired.build_network_architecture(plans, plans.get_configuration("2d"), 2, 4, False)
    deployed.load_state_dict(checkpoint["network_weights"], strict=True)
    trainer.set_deep_supervision_enabled(False)
    network.eval()
    deployed.eval()
    with torch.no_grad():
        assert torch.allclose(deployed(batch["data"]), network(batch["data"]), atol=1e-5)
    # --c: the teacher comes back (weights and step count)
    again = nnUNetTrainerCMCPaired({**checkpoint["init_args"]["plans"], "continue_training": True}, "2d", "all",
                                   checkpoint["init_args"]["dataset_json"], torch.device("cpu"))
    again.load_checkpoint(os.path.join(trainer.output_folder, "checkpoint_final.pth"))
    assert int(again.teacher.steps) == int(trainer.teacher.steps) == 1
    assert all(torch.equal(a, b) for a, b in zip(again.teacher.parameters(), trainer.teacher.parameters()))


@pytest.mark.slow
def test_stock_train_and_predict(paired_semi, tmp_path):
    root, env = paired_semi
    env = dict(env, nnUNet_unpaired_cmc_start="0", nnUNet_unpaired_cmc_st_threshold="0", OMP_NUM_THREADS="1",
               nnUNet_unpaired_skip_final_validation="1")
    images = root / "nnUNet_raw" / SEMI_NAME / "imagesTs"
    out = tmp_path / "pred"
    run_many([["nnUNetv2_train", str(SEMI_ID), "2d", "all", "-tr", TRAINER, "-device", "cpu"],
              ["nnUNetv2_predict", "-i", str(images), "-o", str(out), "-d", str(SEMI_ID), "-c", "2d", "-f", "all",
               "-tr", TRAINER, "-device", "cpu", "-npp", "0", "-nps", "0"]], env)
    folder = Path(env["nnUNet_results"]) / SEMI_NAME / f"{TRAINER}__nnUNetPlans__2d"
    checkpoint = torch.load(folder / "fold_all" / "checkpoint_final.pth", weights_only=False)
    logging = checkpoint["logging"]
    for term in ("seg_A", "seg_B", "csc", "cac", "st"):
        values = logging[f"train_{term}"]
        assert len(values) == 2 and np.isfinite(values).all(), term
        if term in ("csc", "cac", "st"):  # unlabelled terms from the first epoch on (start 0)
            assert all(v > 0 for v in values), (term, values)
    weights = checkpoint["network_weights"]
    # the weights changed: the attention's gamma starts at 0, the two heads start equal
    assert weights["channel_attention.gamma"].abs().item() > 0
    assert any(not torch.equal(weights[k], weights[k.replace("head.", "head_b.", 1)])
               for k in weights if k.startswith("head."))
    assert not any("teacher" in k for k in weights) and TEACHER in "".join(checkpoint[CHECKPOINT_KEY]
                                                                           ["training_modules"])
    plans = PlansManager(load_json(folder / "plans.json"))
    deployed = nnUNetTrainerCMCPaired.build_network_architecture(plans, plans.get_configuration("2d"), 2, 4, False)
    deployed.load_state_dict(weights, strict=True)

    for image in sorted(images.glob("*_0000.nii.gz")):
        src, pred = sitk.ReadImage(str(image)), sitk.ReadImage(str(out / image.name.replace("_0000", "")))
        assert pred.GetSize() == src.GetSize() and pred.GetSpacing() == src.GetSpacing()
        assert np.allclose(pred.GetDirection(), src.GetDirection()) and np.allclose(pred.GetOrigin(), src.GetOrigin())
        assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1, 2, 3}
