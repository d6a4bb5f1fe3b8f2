"""Share and deploy (issue #18): the model folders a joint training writes (A's and the partner B's) work with every
nnU-Net tool, and ``nnunet_unpaired export`` writes models that stock nnU-Net predicts with, without this plugin.

End to end (slow), on the session's tiny joint training (conftest.joint_model): nnUNetv2_find_best_configuration,
nnUNetv2_export_model_to_zip, nnUNetv2_install_pretrained_model_from_zip and nnUNetv2_predict on BOTH model folders;
``nnunet_unpaired export`` of both, installed and predicted on a 'stock machine' (an interpreter that cannot import
this package, no nnUNet_extTrainer), compared voxel by voxel with the plugin's prediction, and nnUNetv2_ensemble of
the two. In-process: every trainer is classified (exportable or refused, with the reason), exports of the other
trainers give the trainer's own network outputs, and the refusals / bad input give messages that name the file and the
fix.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json, save_json
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_unpaired import export
from nnunet_unpaired.errors import UserError
from nnunet_unpaired.phantom import LABELS

from conftest import JOINT_EPOCHS, JOINT_FOLD
from pairs import IDS, NAMES, set_env
from stock_commands import (plugin_free_env, plugin_free_site, run_console_scripts, start_console_scripts,
                            timings)

TRAINER = "nnUNetTrainerUnpairedJoint"
FOLD = JOINT_FOLD
CONFIG = "2d"
EXPORTED_PLANS = "nnUNetPlans_UnpairedJoint"


def _model_folder(results, name, trainer=TRAINER, plans="nnUNetPlans") -> Path:
    return Path(results) / name / f"{trainer}__{plans}__{CONFIG}"


def _load_without_plugin(path) -> dict:
    """torch.load with an unpickler that refuses every class of this package (what a stock machine can load)."""
    class NoPlugin(pickle.Unpickler):
        def find_class(self, module, name):
            if module.split(".")[0] in ("nnunet_unpaired", "trainers"):
                raise AssertionError(f"{path} needs {module}.{name} to load")
            return super().find_class(module, name)

    module = types.SimpleNamespace(Unpickler=NoPlugin, load=pickle.load, loads=pickle.loads, __name__="pickle")
    return torch.load(path, map_location="cpu", weights_only=False, pickle_module=module)


# --------------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def trained(joint_model, tmp_path_factory):
    """The session's tiny joint training (conftest.joint_model, shared with test_e2e_joint: its model folders are the
    training machine's); this module's own work folder for the zips, the colleague and the stock machine."""
    root, env, _ = joint_model
    return root, tmp_path_factory.mktemp("share_deploy"), env


PREDICT = ["-c", CONFIG, "-f", FOLD, "-device", "cpu", "-npp", "0", "-nps", "0", "--save_probabilities"]


@pytest.fixture(scope="module")
def shared(trained):
    """The training machine zips both model folders (nnU-Net's exporter and ours) and picks the best configuration; a
    colleague with the plugin installs nnU-Net's zips and predicts; a stock machine without the plugin installs ours,
    predicts and ensembles its predictions with the colleague's."""
    root, work, env = trained
    paths = {"root": root, "work": work, "env": env, "colleague": work / "colleague", "stock": work / "stock_machine",
             "images": {n: root / "nnUNet_raw" / n / "imagesTs" for n in NAMES}}
    for key in ("plugin_zip", "stock_zip"):
        paths[key] = {n: work / f"{n}_{key}.zip" for n in NAMES}
    for key in ("plugin_pred", "stock_pred", "ensembled"):
        paths[key] = {n: work / key / n for n in NAMES}
    sharing, find_best = [], []
    for i, name in enumerate(NAMES):
        find_best.append({"cmd": ["nnUNetv2_find_best_configuration", str(IDS[i]), "-c", CONFIG, "-tr", TRAINER,
                                  "-f", FOLD, "-np", "1"]})
        sharing += [{"cmd": ["nnUNetv2_export_model_to_zip", "-d", str(IDS[i]), "-o", str(paths["plugin_zip"][name]),
                             "-c", CONFIG, "-tr", TRAINER, "-f", FOLD]},
                    {"cmd": ["nnunet_unpaired", "export", "-d", str(IDS[i]), "-c", CONFIG, "-tr", TRAINER,
                             "-o", str(paths["stock_zip"][name])]}]
    outputs = {"training machine, zips": run_console_scripts(sharing, env)}
    # find_best_configuration spawns a worker process per evaluation (seconds each): it runs next to the rest
    find_best_done = start_console_scripts(find_best, env)
    try:
        outputs.update(_install_and_predict(paths))
    except BaseException:
        find_best_done.kill()
        raise
    outputs["training machine, find_best_configuration"] = find_best_done()
    for where, out in outputs.items():
        print(f"{where}: " + "; ".join(timings(out)))
    paths["outputs"] = outputs
    return paths


def _install_and_predict(paths) -> dict:
    images, plugin_zip, stock_zip = paths["images"], paths["plugin_zip"], paths["stock_zip"]
    plugin_pred, stock_pred, ensembled = paths["plugin_pred"], paths["stock_pred"], paths["ensembled"]
    outputs = {"colleague (plugin)": run_console_scripts(
        [{"cmd": ["nnUNetv2_install_pretrained_model_from_zip", str(plugin_zip[n])]} for n in NAMES]
        + [{"cmd": ["nnUNetv2_predict", "-i", str(images[n]), "-o", str(plugin_pred[n]), "-d", str(IDS[i]),
                    "-tr", TRAINER, *PREDICT]} for i, n in enumerate(NAMES)],
        dict(paths["env"], nnUNet_results=str(paths["colleague"])))}
    stock = paths["stock"]
    stock_env = plugin_free_env(plugin_free_site(stock / "site-packages"),
                                {k: str(stock / k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
    outputs["stock machine"] = run_console_scripts(
        [{"cmd": ["nnUNetv2_install_pretrained_model_from_zip", str(stock_zip[n])]} for n in NAMES]
        + [{"cmd": ["nnUNetv2_predict", "-i", str(images[n]), "-o", str(stock_pred[n]), "-d", str(IDS[i]),
                    "-tr", "nnUNetTrainer", "-p", EXPORTED_PLANS, *PREDICT]} for i, n in enumerate(NAMES)]
        + [{"cmd": ["nnUNetv2_ensemble", "-i", str(plugin_pred[n]), str(stock_pred[n]), "-o", str(ensembled[n]),
                    "-np", "1"]} for n in NAMES]
        # the failure, as a control: the plugin's own model folder needs the plugin to predict
        + [{"cmd": ["nnUNetv2_install_pretrained_model_from_zip", str(plugin_zip[NAMES[1]])]},
           {"cmd": ["nnUNetv2_predict", "-i", str(images[NAMES[1]]), "-o", str(paths["work"] / "pred_fails"),
                    "-d", str(IDS[1]), "-tr", TRAINER, *PREDICT],
            "expect_error": f"Could not find requested nnunet trainer {TRAINER}"}],
        stock_env, plugin_free=True, cwd=stock)
    return outputs


def _cases(folder: Path):
    return sorted(p.name for p in folder.glob("*.nii.gz"))


def _array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.mark.slow
def test_partner_folder_is_complete_like_the_planned_datasets(trained):
    _, _, env = trained
    a, b = (_model_folder(env["nnUNet_results"], n) / f"fold_{FOLD}" for n in NAMES)
    for fold in (a, b):
        for name in ("checkpoint_final.pth", "progress.png", "progress_terms.png", "debug.json",
                     "validation/summary.json"):
            assert (fold / name).is_file(), f"{fold / name} missing"
        assert list(fold.glob("training_log_*.txt")), f"no training log in {fold}"
        for name in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
            assert (fold.parent / name).is_file()
    # B's own curves: its checkpoint's nnU-Net keys hold B's values, and its progress.png is not A's
    log_a = torch.load(a / "checkpoint_final.pth", weights_only=False)["logging"]
    log_b = torch.load(b / "checkpoint_final.pth", weights_only=False)["logging"]
    assert len(log_b["train_losses"]) == JOINT_EPOCHS and log_b["train_losses"] == log_b["train_seg_B"]
    assert log_b["val_losses"] == log_b["partner_val_losses"] and log_b["val_losses"] != log_a["val_losses"]
    assert log_b["mean_fg_dice"] == log_a["partner_mean_fg_dice"]
    assert (a / "progress.png").read_bytes() != (b / "progress.png").read_bytes()
    debug = load_json(b / "debug.json")
    assert debug["output_folder"] == str(b) and NAMES[1] in debug["preprocessed_dataset_folder"]
    log = next(b.glob("training_log_*.txt")).read_text()
    assert f"Final validation of {NAMES[1]} (B)" in log and "Mean Validation Dice" in log.split("(B)")[-1]


@pytest.mark.slow
def test_find_best_configuration_and_zip_on_both_model_folders(shared):
    results = Path(shared["env"]["nnUNet_results"])
    for name in NAMES:
        info = load_json(results / name / "inference_information.json")
        assert info["best_model_or_ensemble"]["selected_model_or_models"][0]["trainer"] == TRAINER
        import zipfile

        listed = zipfile.ZipFile(shared["plugin_zip"][name]).namelist()
        prefix = f"{name}/{TRAINER}__nnUNetPlans__{CONFIG}/fold_{FOLD}/"
        assert {prefix + f for f in ("checkpoint_final.pth", "progress.png", "debug.json",
                                     "validation/summary.json")} <= set(listed)
        installed = _model_folder(shared["colleague"], name) / f"fold_{FOLD}" / "checkpoint_final.pth"
        assert installed.is_file()


@pytest.mark.slow
def test_installed_models_predict_both_modalities(shared):
    for name in NAMES:
        images = sorted(shared["images"][name].glob("*_0000.nii.gz"))
        assert _cases(shared["plugin_pred"][name]) == [p.name.replace("_0000", "") for p in images]
        for image in images:
            pred = sitk.ReadImage(str(shared["plugin_pred"][name] / image.name.replace("_0000", "")))
            assert pred.GetSize() == sitk.ReadImage(str(image)).GetSize()


@pytest.mark.slow
def test_stock_machine_cannot_import_the_plugin(shared):
    out = shared["outputs"]["stock machine"]
    assert "=== nnunet_unpaired is not importable here" in out
    assert f"failed as expected: RuntimeError: Could not find requested nnunet trainer {TRAINER}" in out


@pytest.mark.slow
def test_exported_models_predict_the_same_without_the_plugin(shared):
    for name in NAMES:
        folder = _model_folder(Path(shared["stock"]) / "nnUNet_results", name, "nnUNetTrainer", EXPORTED_PLANS)
        checkpoint = _load_without_plugin(folder / f"fold_{FOLD}" / "checkpoint_final.pth")
        assert checkpoint["trainer_name"] == "nnUNetTrainer"
        plans = load_json(folder / "plans.json")
        assert plans["plans_name"] == EXPORTED_PLANS and plans["dataset_name"] == name
        assert set(plans) - set(export.STOCK_PLANS_KEYS) == {export.PROVENANCE_KEY}
        assert plans[export.PROVENANCE_KEY]["trainer"] == TRAINER
        plugin, stock = shared["plugin_pred"][name], shared["stock_pred"][name]
        assert _cases(stock) == _cases(plugin) and _cases(plugin)
        for case in _cases(plugin):
            assert np.array_equal(_array(plugin / case), _array(stock / case)), f"{name} {case} differs"
            p_plugin = np.load(plugin / case.replace(".nii.gz", ".npz"))["probabilities"]
            p_stock = np.load(stock / case.replace(".nii.gz", ".npz"))["probabilities"]
            np.testing.assert_allclose(p_stock, p_plugin, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_ensemble_of_plugin_and_stock_predictions(shared):
    for name in NAMES:
        assert _cases(shared["ensembled"][name]) == _cases(shared["plugin_pred"][name])
        for case in _cases(shared["ensembled"][name]):
            assert np.array_equal(_array(shared["ensembled"][name] / case), _array(shared["plugin_pred"][name] / case))


# ------------------------------------------------------------------------------------ every trainer, in process
EXPORTABLE = {"nnUNetTrainerUnpairedJoint", "nnUNetTrainerUnpairedJointModalityNorm", "nnUNetTrainerEAM",
              "nnUNetTrainerUMMKD", "nnUNetTrainerSourceOnly", "nnUNetTrainerGLUAStyle", "nnUNetTrainerGLUA",
              "nnUNetTrainerGLUAGlobalOnly", "nnUNetTrainerGLUALocalOnly", "nnUNetTrainerGLUAUnmasked",
              "nnUNetTrainerGLUALocalOnlyUnmasked", "nnUNetTrainerVanilla", "nnUNetTrainerChannelDropout"}
REFUSED = {"nnUNetTrainerMAML": "MAMLNetwork", "nnUNetTrainerCMC": "CMCNetwork",
           "nnUNetTrainerCMCPaired": "PairedCMCNetwork",
           **{f"nnUNetTrainerCMC{v}": "CMCNetwork" for v in ("PublicForm", "NoSelfFusion", "LabelledOnly", "CSCOnly",
                                                              "CACOnly", "SelfTrainingOnly")}}


def _plans(env, name=NAMES[0], channels=1):
    base = os.path.join(env["nnUNet_preprocessed"], name)
    dataset_json = load_json(os.path.join(base, "dataset.json"))
    if channels > 1:  # MAML's network needs several channels (its plans are those of the one-channel dataset)
        dataset_json["channel_names"] = {str(i): f"channel{i}" for i in range(channels)}
    return load_json(os.path.join(base, "nnUNetPlans.json")), dataset_json


def _our_trainers():
    import importlib
    import inspect
    import pkgutil

    import nnunet_unpaired.ext_trainers as ext

    found = {}
    for module in pkgutil.iter_modules(ext.__path__):
        for name, obj in vars(importlib.import_module(f"{ext.__name__}.{module.name}")).items():
            if inspect.isclass(obj) and issubclass(obj, nnUNetTrainer) and obj.__module__.startswith("nnunet_unpaired"):
                found[name] = obj
    return found


def test_every_trainer_is_exportable_or_refused_with_its_reason(planned_pair):
    _, env = planned_pair
    plans, dataset_json = _plans(env, channels=2)
    trainers = _our_trainers()
    assert set(trainers) == EXPORTABLE | set(REFUSED), "a new trainer: classify it here (and in the README)"
    pm = PlansManager(plans)
    for name, cls in trainers.items():
        reason = export.network_blocker(cls, pm, CONFIG, dataset_json)
        if name in EXPORTABLE:
            assert reason is None, f"{name}: {reason}"
        else:
            assert reason and REFUSED[name] in reason and "build_network_architecture" in reason, reason


@pytest.mark.parametrize("trainer_name", ["nnUNetTrainerUnpairedJointModalityNorm", "nnUNetTrainerEAM",
                                          "nnUNetTrainerUMMKD", "nnUNetTrainerSourceOnly", "nnUNetTrainerVanilla"])
def test_export_gives_the_trainers_own_network(planned_pair, tmp_path, monkeypatch, trainer_name):
    """A checkpoint of each trainer (untrained: the weights do not matter, B's differ from A's where modality-specific)
    exported for A and, where there is one, for B; nnU-Net's predictor network from the export computes what the
    trainer's network computes for that dataset."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    _, env = planned_pair
    set_env(env, monkeypatch)
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    plans, dataset_json = _plans(env)
    plans["continue_training"] = False
    torch.manual_seed(0)
    trainer = _our_trainers()[trainer_name](plans, CONFIG, 1, dataset_json, torch.device("cpu"))
    trainer.initialize()
    trainer.on_train_start()
    partner_norm = getattr(trainer, "partner_norm", None)
    if partner_norm is not None:  # B's normalization gets other values than A's
        with torch.no_grad():
            for p in partner_norm.params:
                p.add_(torch.rand_like(p))
    trainer.save_checkpoint(os.path.join(trainer.output_folder, "checkpoint_final.pth"))
    trainer.network.eval()
    trainer.set_deep_supervision_enabled(False)
    x = torch.randn(1, 1, *trainer.configuration_manager.patch_size)
    views = [(IDS[0], contextlib.nullcontext)]
    if hasattr(trainer, "as_partner"):
        views.append((IDS[1], trainer.as_partner))
    for dataset, view in views:
        with torch.no_grad(), view():
            expected = trainer.network(x)
        folder = export.export_model(str(dataset), trainer_name, CONFIG, folds=["1"], log=lambda *a: None)
        plans_name = export.default_plans_name("nnUNetPlans", trainer_name)
        assert os.path.basename(folder) == f"nnUNetTrainer__{plans_name}__{CONFIG}"
        checkpoint = _load_without_plugin(os.path.join(folder, "fold_1", "checkpoint_final.pth"))
        assert checkpoint["trainer_name"] == "nnUNetTrainer"
        predictor = nnUNetPredictor(device=torch.device("cpu"))
        predictor.initialize_from_trained_model_folder(folder, use_folds=("1",))
        assert type(predictor.network).__module__.startswith("dynamic_network_architectures")
        predictor.network.eval()
        with torch.no_grad():
            torch.testing.assert_close(predictor.network(x), expected, rtol=0, atol=1e-6)
    if partner_norm is not None:  # the two exports really carry different normalization parameters
        a, b = (torch.load(os.path.join(os.environ["nnUNet_results"], n, os.path.basename(folder), "fold_1",
                                        "checkpoint_final.pth"), weights_only=False)["network_weights"] for n in NAMES)
        assert any(not torch.equal(a[k], b[k]) for k in a if k.endswith("norm.weight"))


# ------------------------------------------------------------------------------- refusals and bad input (cheap)
def _fake_model(results: Path, env, trainer: str, weights=None, name=NAMES[0], plans=None, fold=FOLD,
                checkpoint=True, channels=1) -> Path:
    """A model folder as a training writes it, with untrained plain weights (or the given ones)."""
    plans_dict, dataset_json = _plans(env, name, channels)
    plans_dict = plans or plans_dict
    folder = _model_folder(results, name, trainer)
    (folder / f"fold_{fold}").mkdir(parents=True)
    save_json(plans_dict, str(folder / "plans.json"))
    save_json(dataset_json, str(folder / "dataset.json"))
    if checkpoint:
        if weights is None:
            pm = PlansManager(plans_dict)
            weights = nnUNetTrainer.build_network_architecture(pm, pm.get_configuration(CONFIG), 1, len(LABELS),
                                                               False).state_dict()
        logging = {k: [0.5, 0.4] for k in ("mean_fg_dice", "ema_fg_dice", "train_losses", "val_losses", "lrs")}
        logging.update(dice_per_class_or_region=[[0.5] * 4, [0.6] * 4], epoch_start_timestamps=[0.0, 1.0],
                       epoch_end_timestamps=[1.0, 2.0])
        torch.save({"network_weights": weights, "trainer_name": trainer, "logging": logging,
                    "init_args": {"plans": plans_dict, "configuration": CONFIG, "fold": int(fold),
                                  "dataset_json": dataset_json, "device": torch.device("cpu")},
                    "inference_allowed_mirroring_axes": None, "current_epoch": 2, "_best_ema": 0.4},
                   folder / f"fold_{fold}" / "checkpoint_final.pth")
    return folder


@pytest.fixture
def results(planned_pair, tmp_path, monkeypatch):
    _, env = planned_pair
    set_env(env, monkeypatch)
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    return tmp_path / "results", env


def _cli(*args) -> tuple:
    from nnunet_unpaired.cli import main

    return main(["export", *args])


@pytest.mark.parametrize("trainer, network", [("nnUNetTrainerMAML", "MAMLNetwork"), ("nnUNetTrainerCMC", "CMCNetwork")])
def test_refuses_trainers_whose_network_needs_our_code(results, capsys, trainer, network):
    root, env = results
    _fake_model(root, env, trainer, weights={}, channels=2)
    assert _cli("-d", str(IDS[0]), "-c", CONFIG, "-tr", trainer) == 2
    err = capsys.readouterr().err
    assert f"{trainer} models cannot run on stock nnU-Net" in err and network in err
    assert "nnUNetv2_export_model_to_zip" in err and "nnunet_unpaired env" in err
    assert not list((root / NAMES[0]).glob("nnUNetTrainer__*")), "nothing may be written"


def test_refuses_plans_naming_a_network_class_of_this_package(results):
    root, env = results
    plans, _ = _plans(env)
    plain = _fake_model(root, env, TRAINER)
    weights = torch.load(plain / f"fold_{FOLD}" / "checkpoint_final.pth", weights_only=False)["network_weights"]
    shutil.rmtree(plain)
    plans["configurations"][CONFIG]["architecture"]["network_class_name"] = \
        "nnunet_unpaired.modules.cmc_network.CMCNetwork"
    _fake_model(root, env, TRAINER, plans=plans, weights=weights)
    with pytest.raises(UserError, match="network class nnunet_unpaired.modules.cmc_network.CMCNetwork"):
        export.export_model(str(IDS[0]), TRAINER, CONFIG)


def test_refuses_weights_that_do_not_load_strictly(results):
    root, env = results
    plans, _ = _plans(env)
    pm = PlansManager(plans)
    weights = nnUNetTrainer.build_network_architecture(pm, pm.get_configuration(CONFIG), 1, len(LABELS),
                                                       False).state_dict()
    weights["fusion.weight"] = torch.zeros(1)
    _fake_model(root, env, TRAINER, weights=weights)
    with pytest.raises(UserError, match=r"checkpoint_final.pth do not load strictly .*fusion.weight"):
        export.export_model(str(IDS[0]), TRAINER, CONFIG)
    assert not list((root / NAMES[0]).glob("nnUNetTrainer__*")) and not list((root / NAMES[0]).glob(".*"))


def test_missing_checkpoint_names_the_file_and_the_training_to_finish(results):
    root, env = results
    _fake_model(root, env, TRAINER, name=NAMES[1], checkpoint=False)
    with pytest.raises(UserError) as e:
        export.export_model(str(IDS[1]), TRAINER, CONFIG, folds=[FOLD])
    message = str(e.value)
    assert f"fold_{FOLD}/checkpoint_final.pth does not exist" in message
    # a partner's model folder is trained from dataset A
    assert f"nnUNetv2_train {NAMES[0]} {CONFIG} {FOLD} -tr {TRAINER} --c" in message
    with pytest.raises(UserError, match="has no fold_\\*/checkpoint_final.pth"):
        export.export_model(str(IDS[1]), TRAINER, CONFIG)
    with pytest.raises(UserError, match="no model folder .*check -tr / -p / -c"):
        export.export_model(str(IDS[1]), "nnUNetTrainerEAM", CONFIG)


def test_plans_names_that_would_collide_or_break_nnunet_are_refused():
    for bad in ("nnUNetPlans__eam", "_x", "x_", "a b", "nnUNetPlans"):
        with pytest.raises(UserError, match="--plans-name"):
            export.check_plans_name(bad, "nnUNetPlans")
    assert export.default_plans_name("nnUNetPlans", "nnUNetTrainerEAM") == "nnUNetPlans_EAM"
    assert export.check_plans_name("nnUNetResEncUNetMPlans_EAM", "nnUNetResEncUNetMPlans")


def test_rerun_replaces_its_own_export_and_never_a_foreign_folder(results, capsys):
    root, env = results
    source = _fake_model(root, env, TRAINER)
    assert _cli("-d", str(IDS[0]), "-c", CONFIG, "-tr", TRAINER) == 0
    target = root / NAMES[0] / f"nnUNetTrainer__{EXPORTED_PLANS}__{CONFIG}"
    first = (target / f"fold_{FOLD}" / "checkpoint_final.pth").stat().st_ino
    assert (target / f"fold_{FOLD}" / "progress.png").is_file()  # drawn from the checkpoint's log
    assert f"-tr nnUNetTrainer -p {EXPORTED_PLANS}" in capsys.readouterr().out
    assert _cli("-d", NAMES[0], "-c", CONFIG, "-tr", TRAINER) == 0
    assert (target / f"fold_{FOLD}" / "checkpoint_final.pth").stat().st_ino != first
    assert sorted(p.name for p in (root / NAMES[0]).iterdir()) == sorted([source.name, target.name])
    foreign = root / NAMES[0] / f"nnUNetTrainer__mine__{CONFIG}"
    foreign.mkdir()
    (foreign / "plans.json").write_text(json.dumps({"plans_name": "mine"}))
    assert _cli("-d", str(IDS[0]), "-c", CONFIG, "-tr", TRAINER, "--plans-name", "mine") == 2
    assert "was not written by 'nnunet_unpaired export'" in capsys.readouterr().err
    assert json.loads((foreign / "plans.json").read_text()) == {"plans_name": "mine"}
    shutil.rmtree(foreign)
