"""MAML end to end on CPU: phantom -> plan -> nnUNetv2_train -tr nnUNetTrainerMAML -> nnUNetv2_predict with every
channel -> nnunet_unpaired predict-missing with one channel file deleted. Plus the fast checks of predict-missing's
input handling (bad channel requests, missing files)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import bin_path
from maml_helpers import dice_per_label, shrink_plans

from nnunet_unpaired.cli import main
from nnunet_unpaired.errors import UserError
from nnunet_unpaired.phantom_multichannel import NOISE, make_case, visibility, write_multichannel_phantom
from nnunet_unpaired.predict_missing import find_cases, parse_channels
from nnunet_unpaired.registration import env_with_trainers

DATASET_ID = 991
NAME = "MultiChannelPhantom"
CHANNELS = 3
FOREGROUND = [1, 2, 3, 4]  # only_mod0, only_mod1, only_mod2, shared


# ---------------------------------------------------------------- the multi-channel phantom (fast)


def test_phantom_structures_are_visible_only_in_their_channels():
    assert visibility(3).tolist() == [[True, False, False], [False, True, False], [False, False, True],
                                      [True, True, True]]
    images, labels = make_case(np.random.default_rng([0, 0]), (4, 48, 48), 3)
    assert images.shape == (3, 4, 48, 48) and set(np.unique(labels)) == {0, 1, 2, 3, 4}
    body = images[0] != 0
    for c in range(3):
        tissue = images[c][body & (labels == 0)].mean()
        for structure in range(4):
            contrast = abs(images[c][labels == structure + 1].mean() - tissue)
            if visibility(3)[structure, c]:
                assert contrast > 3 * NOISE, (structure, c, contrast)
            else:
                assert contrast < NOISE / 3, (structure, c, contrast)  # same intensity as the tissue around it


def test_redundant_phantom_shows_each_structure_strongly_in_one_channel_and_weakly_in_the_next(tmp_path):
    """Issue 17: a layout in which a missing channel can be compensated (the exclusive one stays the stress case)."""
    from nnunet_unpaired.phantom_multichannel import WEAK, contrast_strength

    strength = contrast_strength(3, "redundant")
    assert strength.tolist() == [[1.0, WEAK, 0.0], [0.0, 1.0, WEAK], [WEAK, 0.0, 1.0], [1.0, 1.0, 1.0]]
    assert (visibility(3, "redundant").sum(1) >= 2).all()  # any one channel missing: every structure still visible
    images, labels = make_case(np.random.default_rng([0, 0]), (4, 48, 48), 3, "redundant")
    body = images[0] != 0
    for c in range(3):
        tissue = images[c][body & (labels == 0)].mean()
        for structure in range(4):
            contrast = abs(images[c][labels == structure + 1].mean() - tissue)
            if strength[structure, c] == 1.0:
                assert contrast > 3 * NOISE, (structure, c, contrast)
            elif strength[structure, c] == WEAK:
                assert 1.5 * NOISE < contrast < 3 * NOISE, (structure, c, contrast)  # weak, but above the noise
            else:
                assert contrast < NOISE / 3, (structure, c, contrast)
    folder = write_multichannel_phantom(tmp_path, num_cases=1, num_channels=3, layout="redundant")
    dataset = json.loads((folder / "dataset.json").read_text())
    assert dataset["labels"] == {"background": 0, "strong_in_mod0": 1, "strong_in_mod1": 2, "strong_in_mod2": 3,
                                 "shared": 4}
    assert dataset["phantom"]["layout"] == "redundant"
    assert dataset["phantom"]["visible_in_channels"]["strong_in_mod2"] == [0, 2]
    with pytest.raises(ValueError, match="layout"):
        write_multichannel_phantom(tmp_path / "x", num_cases=1, layout="other")


def test_phantom_writes_an_nnunet_raw_dataset_deterministically(tmp_path):
    folder = write_multichannel_phantom(tmp_path, 7, "P", num_cases=2, shape=(2, 32, 32), num_channels=2, seed=3,
                                        num_test_cases=1)
    assert folder.name == "Dataset007_P"
    dataset = json.loads((folder / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "mod0", "1": "mod1"} and dataset["numTraining"] == 2
    assert dataset["labels"] == {"background": 0, "only_mod0": 1, "only_mod1": 2, "shared": 3}
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == [
        "P_000000_0000.nii.gz", "P_000000_0001.nii.gz", "P_000001_0000.nii.gz", "P_000001_0001.nii.gz"]
    assert sorted(p.name for p in (folder / "labelsTs").iterdir()) == ["P_100000.nii.gz"]
    image = sitk.ReadImage(str(folder / "imagesTr" / "P_000001_0001.nii.gz"))
    assert image.GetSize() == (32, 32, 2) and image.GetSpacing() == (1.0, 1.0, 3.0)
    again = write_multichannel_phantom(tmp_path / "again", 7, "P", num_cases=2, shape=(2, 32, 32), num_channels=2,
                                       seed=3)
    second = sitk.ReadImage(str(again / "imagesTr" / "P_000001_0001.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(second))
    with pytest.raises(UserError, match="exists already"):
        write_multichannel_phantom(tmp_path, 7, "P")
    with pytest.raises(ValueError, match="at least 2"):
        write_multichannel_phantom(tmp_path, 8, "Q", num_channels=1)


# ---------------------------------------------------------------- predict-missing input handling (fast)

CHANNEL_NAMES = {"0": "T1", "1": "T2", "2": "FLAIR"}


def test_parse_channels_accepts_indices_and_names():
    assert parse_channels(["2", "0"], CHANNEL_NAMES) == (0, 2)
    assert parse_channels(["flair", "T1", "0"], CHANNEL_NAMES) == (0, 2)


@pytest.mark.parametrize("tokens", [["3"], ["T1ce"], ["-1"]])
def test_parse_channels_refuses_unknown_channels(tokens):
    with pytest.raises(UserError, match="does not exist.*0 \\(T1\\), 1 \\(T2\\), 2 \\(FLAIR\\)"):
        parse_channels(tokens, CHANNEL_NAMES)


def test_parse_channels_refuses_an_empty_request():
    with pytest.raises(UserError, match="no channel left"):
        parse_channels([], CHANNEL_NAMES)


def _touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


def test_find_cases_uses_the_files_present(tmp_path):
    _touch(tmp_path, "a_0000.nii.gz", "a_0002.nii.gz", "b_0000.nii.gz", "b_0001.nii.gz", "b_0002.nii.gz", "notes.txt")
    cases = {c.case_id: c for c in find_cases(str(tmp_path), ".nii.gz", 3)}
    assert cases["a"].available == (0, 2) and cases["a"].files[1].endswith("a_0002.nii.gz")
    assert cases["b"].available == (0, 1, 2)


def test_find_cases_with_available_ignores_other_channels_and_needs_the_named_files(tmp_path):
    _touch(tmp_path, "a_0000.nii.gz", "a_0001.nii.gz", "a_0002.nii.gz", "b_0000.nii.gz")
    with pytest.raises(UserError, match="case b: --available names channel 2 but .*b_0002.nii.gz does not exist"):
        find_cases(str(tmp_path), ".nii.gz", 3, available=(0, 2))
    (cases,) = find_cases(str(tmp_path / "."), ".nii.gz", 3, available=(0,))[:1]
    assert cases.available == (0,) and len(cases.files) == 1


def test_find_cases_refuses_channels_the_model_lacks_and_empty_folders(tmp_path):
    _touch(tmp_path / "x", "a_0000.nii.gz", "a_0003.nii.gz")
    with pytest.raises(UserError, match="channel 3 does not exist; the model has channels 0..2"):
        find_cases(str(tmp_path / "x"), ".nii.gz", 3)
    _touch(tmp_path / "empty", "readme.md")
    with pytest.raises(UserError, match="no images named CASE_XXXX.nii.gz"):
        find_cases(str(tmp_path / "empty"), ".nii.gz", 3)


def test_cli_refuses_an_empty_available_list_and_a_missing_model(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict-missing", "-i", str(tmp_path), "-o", str(tmp_path / "out"), "-m", str(tmp_path),
              "--available"])
    assert exit_info.value.code == 2
    code = main(["predict-missing", "-i", str(tmp_path), "-o", str(tmp_path / "out"), "-m", str(tmp_path / "nope"),
                 "--available", "0"])
    assert code == 2
    assert "model folder" in capsys.readouterr().err


# ---------------------------------------------------------------- end to end (slow)


#: what ``nnUNetv2_plan_and_preprocess -d ID -c 2d -np 1`` does, through nnU-Net's API, with 10^6 instead of 10^8
#: foreground intensity draws for the fingerprint (plan_pair.sampled_fingerprint_extractor): on 4 small phantom
#: cases nearly all draws repeat voxels, and the 10^8 draws of 3 channels cost about 25 s of this test
PLAN_WITH_FEWER_DRAWS = """
from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprint_dataset, plan_experiments,
                                                                   preprocess)
from nnunet_unpaired.plan_pair import SMALL_DATASET_FINGERPRINT_SAMPLES, sampled_fingerprint_extractor
extract_fingerprint_dataset({dataset_id}, sampled_fingerprint_extractor(SMALL_DATASET_FINGERPRINT_SAMPLES), 1,
                            check_dataset_integrity=True, clean=True, verbose=False, show_progress_bar=False)
plan_experiments([{dataset_id}])
preprocess([{dataset_id}], configurations=("2d",), num_processes=(1,), show_progress_bar=False)
"""


def _run(args, env, timeout=400):
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    command = " ".join(map(str, args))
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory):
    """A MAML model trained for 120 seeded iterations on the 3-channel phantom (fold 'all', 2d, tiny plans). Unseeded,
    180 iterations sometimes still predicted background only; the seed makes the run repeatable, and the final
    validation (on the training cases, fold 'all') is skipped: nothing here reads it."""
    root = tmp_path_factory.mktemp("maml_e2e")
    dirs = {name: root / name for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for d in dirs.values():
        d.mkdir()
    env = env_with_trainers()
    env.update({k: str(v) for k, v in dirs.items()})
    # OMP_WAIT_POLICY=PASSIVE: on a shared, busy CPU spinning OpenMP threads made a training step 10-100x slower
    env.update({"nnUNet_compile": "false", "nnUNet_def_n_proc": "1", "nnUNet_n_proc_DA": "1",
                "OMP_WAIT_POLICY": "PASSIVE"})
    raw = write_multichannel_phantom(dirs["nnUNet_raw"], DATASET_ID, NAME, num_cases=4, num_test_cases=2,
                                     num_channels=CHANNELS, seed=0)
    # nnUNet_n_proc_DA=0 breaks the planner (torch.set_num_threads(0)), so planning runs with 1
    _run([sys.executable, "-c", PLAN_WITH_FEWER_DRAWS.format(dataset_id=DATASET_ID)], env)
    shrink_plans(dirs["nnUNet_preprocessed"] / f"Dataset{DATASET_ID:03d}_{NAME}" / "nnUNetPlans.json", "2d",
                 features=(16, 32, 64), batch_size=4)
    env.update({"nnUNet_n_proc_DA": "0", "nnUNet_unpaired_epochs": "3", "nnUNet_unpaired_iters": "40",
                "nnUNet_unpaired_seed": "0", "nnUNet_unpaired_skip_final_validation": "1",
                "nnUNet_unpaired_val_iters": "1", "nnUNet_unpaired_no_mirroring": "1",
                "nnUNet_unpaired_maml_distill_weight": "0.5", "nnUNet_unpaired_maml_modality_dropout": "0.5",
                "nnUNet_unpaired_maml_width": "", "nnUNet_unpaired_maml_distill_temperature": ""})
    _run([bin_path("nnUNetv2_train"), str(DATASET_ID), "2d", "all", "-tr", "nnUNetTrainerMAML", "-device", "cpu"], env)
    model = dirs["nnUNet_results"] / f"Dataset{DATASET_ID:03d}_{NAME}" / "nnUNetTrainerMAML__nnUNetPlans__2d"
    return {"env": env, "raw": raw, "model": model}


def _check_geometry_and_dice(prediction_folder: Path, raw: Path):
    """Per test case: same geometry as the input image; Dice per foreground label against labelsTs."""
    scores = {}
    for label_file in sorted((raw / "labelsTs").iterdir()):
        case = label_file.name[: -len(".nii.gz")]
        predicted = sitk.ReadImage(str(prediction_folder / label_file.name))
        image = sitk.ReadImage(str(raw / "imagesTs" / f"{case}_0000.nii.gz"))
        assert predicted.GetSize() == image.GetSize()
        assert np.allclose(predicted.GetSpacing(), image.GetSpacing())
        assert np.allclose(predicted.GetOrigin(), image.GetOrigin())
        assert np.allclose(predicted.GetDirection(), image.GetDirection())
        scores[case] = dice_per_label(sitk.GetArrayFromImage(predicted), sitk.GetArrayFromImage(sitk.ReadImage(
            str(label_file))), FOREGROUND)
    return {label: float(np.mean([s[label] for s in scores.values()])) for label in FOREGROUND}


@pytest.mark.slow
def test_training_writes_a_plain_deployable_checkpoint_and_records_the_settings(trained_model):
    checkpoint = torch.load(trained_model["model"] / "fold_all" / "checkpoint_final.pth", map_location="cpu",
                            weights_only=False)
    assert checkpoint["trainer_name"] == "nnUNetTrainerMAML"
    assert {key.split(".")[0] for key in checkpoint["network_weights"]} == {"peers", "attention", "head"}
    settings = json.loads((trained_model["model"] / "plans.json").read_text())["maml"]
    assert settings == {"peer_width_factor": 0.5, "distillation_weight": 0.5, "distillation_temperature": 1.0,
                        "modality_dropout": 0.5}


@pytest.mark.slow
def test_nnunet_predict_with_all_channels(trained_model, tmp_path):
    env, raw = trained_model["env"], trained_model["raw"]
    _run([bin_path("nnUNetv2_predict"), "-i", str(raw / "imagesTs"), "-o", str(tmp_path / "pred"),
          "-d", str(DATASET_ID), "-c", "2d", "-f", "all", "-tr", "nnUNetTrainerMAML", "-device", "cpu",
          "-npp", "0", "-nps", "0"], env)  # no worker processes: they only load images and export
    dice = _check_geometry_and_dice(tmp_path / "pred", raw)
    print("MAML all channels, Dice per label:", dice)
    assert np.mean(list(dice.values())) > 0.2  # an all-background prediction scores 0


@pytest.mark.slow
def test_predict_missing_with_a_channel_file_deleted(trained_model, tmp_path):
    env, raw = trained_model["env"], trained_model["raw"]
    inputs = tmp_path / "inputs"
    shutil.copytree(raw / "imagesTs", inputs)
    for f in inputs.glob("*_0001.nii.gz"):
        f.unlink()
    result = _run([bin_path("nnunet_unpaired"), "predict-missing", "-i", str(inputs), "-o", str(tmp_path / "pred"),
                   "-d", str(DATASET_ID), "-c", "2d", "-f", "all", "-device", "cpu", "-nps", "1"], env)
    assert "from channel(s) 0 (mod0), 2 (mod2)" in result.stdout
    record = json.loads((tmp_path / "pred" / "predict_missing.json").read_text())
    assert record["available_per_case"] and all(v == [0, 2] for v in record["available_per_case"].values())
    dice = _check_geometry_and_dice(tmp_path / "pred", raw)
    print("MAML channel 1 missing, Dice per label:", dice)
    assert np.mean(list(dice.values())) > 0.1  # an all-background prediction scores 0
    assert dice[2] < 0.3  # only_mod1 is visible in channel 1 only: without it nothing can find it


@pytest.mark.slow
def test_predict_missing_single_channel_and_bad_requests_in_process(trained_model, tmp_path, monkeypatch, capsys):
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer"):
        monkeypatch.setenv(name, trained_model["env"][name])  # restored afterwards, also if the command changes it
    inputs = tmp_path / "inputs"
    shutil.copytree(trained_model["raw"] / "imagesTs", inputs)
    for f in inputs.glob("*_0001.nii.gz"):
        f.unlink()
    common = ["predict-missing", "-i", str(inputs), "-o", str(tmp_path / "out"), "-d", str(DATASET_ID), "-c", "2d",
              "-f", "all", "-device", "cpu"]
    assert main(common + ["--available", "0", "5"]) == 2
    message = capsys.readouterr().err
    assert "channel '5' does not exist; the model's channels are 0 (mod0), 1 (mod1), 2 (mod2)" in message
    assert main(common + ["--available", "mod1"]) == 2
    assert "--available names channel 1 but" in capsys.readouterr().err
    assert main(common + ["-f", "0"]) == 2
    assert "fold_0" in capsys.readouterr().err and not (tmp_path / "out").exists()

    # one channel named: its own peer predicts alone
    assert main(common + ["--available", "mod2", "-nps", "1"]) == 0
    record = json.loads((tmp_path / "out" / "predict_missing.json").read_text())
    assert record["available_per_case"] and all(v == [2] for v in record["available_per_case"].values())
    dice = _check_geometry_and_dice(tmp_path / "out", trained_model["raw"])
    print("MAML channel 2 only (its own peer), Dice per label:", dice)
