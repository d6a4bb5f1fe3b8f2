"""Every trainer of the package at ``3d_fullres`` (issue #14 item 3), in-process on tiny 3D phantoms.

The session's planned phantom pair (``planned_pair``: plan-pair with 2d AND 3d_fullres, 16 features, patches of
8 x 32 x 32) serves the two-dataset trainers; MAML gets a 3-channel copy of its CT dataset (each channel the CT
image; MAML's modality dropout then fuses channel subsets), CMC's paired mode a 2-channel copy. Each trainer runs
nnU-Net's own ``run_training`` for 1 epoch of 2 iterations and 1 validation iteration (no augmentation workers, no
mirroring; nnU-Net's final validation, which ``nnUNetv2_train`` adds afterwards, is left out), then every model
folder it wrote (A's, and B's export) is checked the way ``nnUNetv2_predict`` uses it: the checkpoint's weights load
STRICTLY into the network the trainer class builds, and nnU-Net's predictor, initialized from the model folder,
predicts one test case of that dataset.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json, save_json
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from pairs import NAMES, set_env


pytestmark = pytest.mark.slow

CONFIG = "3d_fullres"
FOLD = 0  # no other test trains 3d_fullres on the session's pair
BUDGET = {"nnUNet_unpaired_epochs": "1", "nnUNet_unpaired_iters": "2", "nnUNet_unpaired_val_iters": "1",
          "nnUNet_unpaired_no_mirroring": "1", "nnUNet_n_proc_DA": "0", "nnUNet_compile": "false"}
#: trainer -> the datasets whose model folders it writes ("A": the dataset it is started on, "B": the partner)
PAIR_TRAINERS = {
    "nnUNetTrainerVanilla": ("A",),
    "nnUNetTrainerUnpairedJoint": ("A", "B"),
    "nnUNetTrainerUnpairedJointModalityNorm": ("A", "B"),
    "nnUNetTrainerUMMKD": ("A", "B"),
    "nnUNetTrainerEAM": ("A", "B"),
    "nnUNetTrainerCMC": ("A", "B"),
    "nnUNetTrainerGLUAStyle": ("A", "B"),  # GLUA stage 1 (its network: the source-only model)
    "nnUNetTrainerGLUA": ("A", "B"),  # stage 2: reads stage 1's checkpoint_final.pth
}
MAML_ID, MAML_NAME = 993, "PhantomCT3ch"


def _train(trainer_name: str, preprocessed: Path, dataset: str, fold) -> object:
    """nnU-Net's run_training of a freshly built trainer (what nnUNetv2_train does before its final validation)."""
    base = preprocessed / dataset
    plans = load_json(str(base / "nnUNetPlans.json"))
    plans["continue_training"] = False
    cls = recursive_find_trainer_class_by_name(trainer_name)
    trainer = cls(plans, CONFIG, fold, load_json(str(base / "dataset.json")), torch.device("cpu"))
    trainer.run_training()
    return trainer


def _check_model_folder(model_folder: Path, fold, raw_dataset: Path) -> None:
    """Finite logged losses, strict load into the trainer class's network, one test case predicted."""
    checkpoint = torch.load(model_folder / f"fold_{fold}" / "checkpoint_final.pth", map_location="cpu",
                            weights_only=False)
    losses = checkpoint["logging"]["train_losses"] + checkpoint["logging"]["val_losses"]
    assert losses and all(math.isfinite(float(v)) for v in losses), losses
    assert not any("_orig_mod." in k for k in checkpoint["network_weights"])
    manager = PlansManager(load_json(str(model_folder / "plans.json")))
    dataset_json = load_json(str(model_folder / "dataset.json"))
    config = manager.get_configuration(CONFIG)
    network = recursive_find_trainer_class_by_name(checkpoint["trainer_name"]).build_network_architecture(
        manager, config, determine_num_input_channels(manager, config, dataset_json),
        manager.get_label_manager(dataset_json).num_segmentation_heads, False)
    network.load_state_dict(checkpoint["network_weights"], strict=True)

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                device=torch.device("cpu"), verbose=False, verbose_preprocessing=False,
                                allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_folder), use_folds=(fold,))
    ending = dataset_json["file_ending"]
    case = sorted(p.name[:-len("_0000" + ending)] for p in (raw_dataset / "imagesTs").glob(f"*_0000{ending}"))[0]
    files = [str(raw_dataset / "imagesTs" / f"{case}_{c:04d}{ending}") for c in range(len(dataset_json[
        "channel_names"]))]
    image, properties = SimpleITKIO().read_images(files)
    segmentation = predictor.predict_single_npy_array(image, properties)
    assert segmentation.shape == image.shape[1:]
    assert set(np.unique(segmentation)) <= set(dataset_json["labels"].values())


@pytest.fixture(scope="module")
def pair_runs(planned_pair):
    """Trains on demand, once per trainer (GLUA's stage 2 needs stage 1 first); returns its environment."""
    root, env = planned_pair
    done = set()

    def run(trainer_name: str, monkeypatch) -> dict:
        set_env(env, monkeypatch)
        for key, value in BUDGET.items():
            monkeypatch.setenv(key, value)
        needed = {"nnUNetTrainerGLUA": "nnUNetTrainerGLUAStyle"}.get(trainer_name)
        for name in ([needed] if needed else []) + [trainer_name]:
            if name not in done:
                _train(name, Path(env["nnUNet_preprocessed"]), NAMES[0], FOLD)
                done.add(name)
        return env

    return run


@pytest.mark.parametrize("trainer_name", list(PAIR_TRAINERS))
def test_trains_saves_loads_strictly_and_predicts_at_3d_fullres(pair_runs, monkeypatch, trainer_name):
    env = pair_runs(trainer_name, monkeypatch)
    names = dict(zip("AB", NAMES))
    for which in PAIR_TRAINERS[trainer_name]:
        folder = Path(env["nnUNet_results"]) / names[which] / f"{trainer_name}__nnUNetPlans__{CONFIG}"
        _check_model_folder(folder, FOLD, Path(env["nnUNet_raw"]) / names[which])


def _multichannel_copy(env, root: Path, channels: int = 3, dataset_id: int = MAML_ID, dataset_name: str = MAML_NAME
                       ) -> str:
    """A multi-channel dataset without planning (nnU-Net's planner and preprocessor spawn worker processes, each
    importing torch): the pair's preprocessed CT cases with their one channel repeated ``channels`` times, CT's plans
    for them, and raw test images whose channels are links to CT's test image."""
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2, comp_blosc2_params

    name = f"Dataset{dataset_id:03d}_{dataset_name}"
    source = Path(env["nnUNet_preprocessed"]) / NAMES[0]
    plans = load_json(str(source / "nnUNetPlans.json"))
    config = plans["configurations"][CONFIG]
    plans.update({"dataset_name": name, "configurations": {CONFIG: config}})
    plans.pop("nnunet_unpaired_pairing", None)
    for key in ("normalization_schemes", "use_mask_for_norm"):
        config[key] = config[key][:1] * channels
    intensities = plans["foreground_intensity_properties_per_channel"]["0"]
    plans["foreground_intensity_properties_per_channel"] = {str(c): intensities for c in range(channels)}
    dataset_json = load_json(str(source / "dataset.json"))
    dataset_json["channel_names"] = {str(c): dataset_json["channel_names"]["0"] for c in range(channels)}
    target = root / "nnUNet_preprocessed" / name
    (target / config["data_identifier"]).mkdir(parents=True)
    save_json(plans, str(target / "nnUNetPlans.json"))
    save_json(dataset_json, str(target / "dataset.json"))
    shutil.copy(source / "dataset_fingerprint.json", target / "dataset_fingerprint.json")  # nnU-Net copies it along
    cases = nnUNetDatasetBlosc2(str(source / config["data_identifier"]))
    for case in cases.identifiers:
        data, seg, _, properties = cases.load_case(case)
        data = np.repeat(np.asarray(data[:], dtype=np.float32), channels, axis=0)
        seg = np.asarray(seg[:], dtype=np.int16)
        blocks, chunks = comp_blosc2_params(data.shape, tuple(config["patch_size"]), data.itemsize)
        blocks_seg, chunks_seg = comp_blosc2_params(seg.shape, tuple(config["patch_size"]), seg.itemsize)
        nnUNetDatasetBlosc2.save_case(data, seg, properties, str(target / config["data_identifier"] / case),
                                      chunks=chunks, blocks=blocks, chunks_seg=chunks_seg, blocks_seg=blocks_seg)
    raw_source = Path(env["nnUNet_raw"]) / NAMES[0] / "imagesTs"
    images = root / "nnUNet_raw" / name / "imagesTs"
    images.mkdir(parents=True)
    ending = dataset_json["file_ending"]
    for image in raw_source.glob(f"*_0000{ending}"):
        for c in range(channels):
            (images / image.name.replace(f"_0000{ending}", f"_{c:04d}{ending}")).symlink_to(image.resolve())
    return name


def _own_folders(pair_env, root: Path, monkeypatch) -> None:
    """The trainer registration of the pair's environment, then this test's own nnU-Net folders and the budget."""
    set_env(pair_env, monkeypatch)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (root / name).mkdir(exist_ok=True)
        monkeypatch.setenv(name, str(root / name))
    for key, value in BUDGET.items():
        monkeypatch.setenv(key, value)


def test_maml_at_3d_fullres_on_a_multichannel_copy(planned_pair, tmp_path_factory, monkeypatch):
    _, pair_env = planned_pair
    root = tmp_path_factory.mktemp("maml_3d")
    _own_folders(pair_env, root, monkeypatch)
    dataset = _multichannel_copy(pair_env, root)
    monkeypatch.setenv("nnUNet_unpaired_maml_modality_dropout", "1")  # subsets of the 3 channels in training
    trainer = _train("nnUNetTrainerMAML", root / "nnUNet_preprocessed", dataset, "all")
    assert trainer.maml_network().num_modalities == 3
    _check_model_folder(root / "nnUNet_results" / dataset / f"nnUNetTrainerMAML__nnUNetPlans__{CONFIG}", "all",
                        root / "nnUNet_raw" / dataset)


def test_cmc_paired_at_3d_fullres_on_a_two_channel_copy(planned_pair, tmp_path_factory, monkeypatch):
    """CMC's paired mode on a two-channel copy of the CT dataset (every case labelled: the unlabelled terms then use
    the labelled cases without their labels, from the first step with ``cmc_start`` 0)."""
    _, pair_env = planned_pair
    root = tmp_path_factory.mktemp("cmc_paired_3d")
    _own_folders(pair_env, root, monkeypatch)
    monkeypatch.setenv("nnUNet_unpaired_cmc_start", "0")
    dataset = _multichannel_copy(pair_env, root, channels=2, dataset_id=994, dataset_name="PhantomCT2ch")
    trainer = _train("nnUNetTrainerCMCPaired", root / "nnUNet_preprocessed", dataset, "all")
    logged = trainer.logger.local_logger.my_fantastic_logging
    assert all(v > 0 for v in logged["train_csc"] + logged["train_cac"]), "the unlabelled terms did not run"
    _check_model_folder(root / "nnUNet_results" / dataset / f"nnUNetTrainerCMCPaired__nnUNetPlans__{CONFIG}", "all",
                        root / "nnUNet_raw" / dataset)

