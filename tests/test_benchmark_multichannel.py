"""The multichannel experiment of the benchmark (MAML vs vanilla with all channels and each channel missing), with
nnU-Net's commands replaced by a fake that writes what they would (plans, checkpoints, timing, predictions): which
runs happen on which inputs, the derived datasets, the report, resuming, refusals. Trains nothing; runs in seconds."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_unpaired.benchmark import config, harness, multichannel, registry, report, steps
from nnunet_unpaired.benchmark.config import BenchmarkSpec, ExperimentInput, RunOptions
from nnunet_unpaired.errors import UserError
from nnunet_unpaired.phantom_multichannel import write_multichannel_phantom
from nnunet_unpaired.training import budget

SHAPE = (2, 32, 32)
CHANNELS = {0: "mod0", 1: "mod1", 2: "mod2"}


def _spec(**changes) -> BenchmarkSpec:
    values = dict(datasets=None, configuration="2d", epochs=2, iters=3, val_iters=1, no_mirroring=True,
                  max_features=32, batch_size=4, phantom={"num_train": 5, "num_test": 2})
    values.update(changes)
    return BenchmarkSpec(**values)


def _input(tmp_path: Path, log: list | None = None, method_names=("vanilla", "maml"), **options) -> ExperimentInput:
    methods = [registry.get(name) for name in method_names]
    defaults = dict(output=tmp_path, folds=("0",), device="cpu", predict_processes=(0, 0), plan_processes=1)
    defaults.update(options)
    result = tmp_path / "result"
    result.mkdir(exist_ok=True)
    return ExperimentInput(_spec(), RunOptions(**defaults), result, None, None, methods, "cpu",
                           log.append if log is not None else (lambda _: None))


def _digest(folder: Path) -> dict[str, str]:
    """Every file of a folder (links resolved) -> hash of its bytes, and every link -> its target."""
    found = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            found[key] = "link:" + os.readlink(path)
        elif path.is_file():
            found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


class FakeNNUNet:
    """Stands in for steps.run_command: records every command and writes what nnU-Net would."""

    def __init__(self):
        self.calls: list[dict] = []

    def __call__(self, cmd, env, log_file, log=None):
        import torch

        cmd = [str(c) for c in cmd]
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "a") as f:
            f.write(" ".join(cmd) + "\n")
        raw, pre = Path(env["nnUNet_raw"]), Path(env["nnUNet_preprocessed"])
        results = Path(env["nnUNet_results"])
        name = Path(cmd[0]).name
        call = {"tool": "predict-missing" if "predict-missing" in cmd else name, "cmd": cmd}
        if name == "nnUNetv2_plan_and_preprocess":
            dataset = self._dataset(raw, cmd[cmd.index("-d") + 1])
            out = pre / dataset.name
            (out / "gt_segmentations").mkdir(parents=True, exist_ok=True)
            for label in (dataset / "labelsTr").iterdir():
                shutil.copyfile(label, out / "gt_segmentations" / label.name)
            shutil.copyfile(dataset / "dataset.json", out / "dataset.json")
            if (dataset / "splits_final.json").is_file():
                shutil.copyfile(dataset / "splits_final.json", out / "splits_final.json")
            plans = {"dataset_name": dataset.name, "configurations": {"2d": {
                "batch_size": 49, "patch_size": [32, 32],
                "architecture": {"arch_kwargs": {"features_per_stage": [32, 64, 128]}}}}}
            (out / "nnUNetPlans.json").write_text(json.dumps(plans))
            call["dataset"] = dataset.name
        elif name == "nnUNetv2_preprocess":
            call["dataset"] = self._dataset(raw, cmd[cmd.index("-d") + 1]).name
            call["plans"] = json.loads((pre / call["dataset"] / "nnUNetPlans.json").read_text())
        elif name == "nnUNetv2_train":
            dataset, fold, trainer = cmd[1], cmd[3], cmd[cmd.index("-tr") + 1]
            model = results / dataset / f"{trainer}__nnUNetPlans__2d"
            (model / f"fold_{fold}").mkdir(parents=True, exist_ok=True)
            torch.save({"logging": {"train_losses": [1.0, 0.5], "val_losses": [1.1, 0.7]}},
                       model / f"fold_{fold}" / "checkpoint_final.pth")
            plans = {"maml": {"peer_width_factor": 0.5}} if trainer == "nnUNetTrainerMAML" else {}
            (model / "plans.json").write_text(json.dumps(plans))
            Path(env[budget.ENV_TIMING]).write_text(json.dumps(
                {"iteration_seconds": [2.0, 2.0, 0.5, 0.5], "epochs": [0, 0, 1, 1], "peak_memory_mib": 100.0}))
            call.update(dataset=dataset, trainer=trainer, fold=fold,
                        budget=(env[budget.ENV_EPOCHS], env[budget.ENV_ITERS]))
        else:  # nnUNetv2_predict or predict-missing: perfect predictions, and what the input folder held
            images, out = Path(cmd[cmd.index("-i") + 1]), Path(cmd[cmd.index("-o") + 1])
            dataset = self._dataset(raw, cmd[cmd.index("-d") + 1])
            out.mkdir(parents=True)
            held = {}
            for path in sorted(images.iterdir()):
                array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
                held[path.name] = ("link:" + os.readlink(path)) if path.is_symlink() else \
                    ("zeros" if not array.any() else "file")
            cases = sorted({n.rsplit("_", 1)[0] for n in held})
            for case in cases:
                shutil.copyfile(dataset / "labelsTs" / f"{case}.nii.gz", out / f"{case}.nii.gz")
            call.update(dataset=dataset.name, input=images, held=held,
                        available=cmd[cmd.index("--available") + 1:cmd.index("-nps")] if "--available" in cmd
                        else None)
        self.calls.append(call)

    @staticmethod
    def _dataset(raw: Path, token: str) -> Path:
        if token.isdigit():
            (found,) = raw.glob(f"Dataset{int(token):03d}_*")
            return found
        return raw / token

    def of(self, tool: str) -> list[dict]:
        return [c for c in self.calls if c["tool"] == tool]


@pytest.fixture
def fake(monkeypatch):
    fake = FakeNNUNet()
    monkeypatch.setattr(steps, "run_command", fake)
    monkeypatch.setattr(multichannel, "PHANTOM_SHAPE", SHAPE)
    return fake


def test_phantom_experiment_runs_every_model_on_the_right_inputs(tmp_path, fake):
    log: list[str] = []
    inp = _input(tmp_path, log)
    (summary,) = multichannel.run_settings(inp)
    root = inp.result / "multichannel"
    raw = inp.result / "phantom_multichannel_raw" / "Dataset991_MultiChannelPhantom"
    assert (inp.result / "steps" / "phantom_multichannel.json").is_file()
    source = json.loads((raw / "dataset.json").read_text())
    assert source["channel_names"] == {"0": "mod0", "1": "mod1", "2": "mod2"} and source["numTraining"] == 5
    assert len(list((raw / "labelsTs").iterdir())) == 2

    # derived datasets: the other channels renumbered, links to the source's files, their own ids
    tree = root / "nnunet" / "nnUNet_raw"
    derived = {c: tree / f"Dataset{992 + c}_MultiChannelPhantom_without_mod{c}" for c in CHANNELS}
    for c, folder in derived.items():
        data = json.loads((folder / "dataset.json").read_text())
        kept = [k for k in CHANNELS if k != c]
        assert data["channel_names"] == {str(i): CHANNELS[k] for i, k in enumerate(kept)}
        assert data["labels"] == source["labels"] and data["file_ending"] == ".nii.gz"
        assert data["derived_from"]["without_channel"] == {"index": c, "name": CHANNELS[c]}
        for sub in ("imagesTr", "imagesTs"):
            names = sorted(p.name for p in (folder / sub).iterdir())
            assert {n[-11:-7] for n in names} == {"0000", "0001"}
            for new, old in enumerate(kept):
                link = folder / sub / f"MultiChannelPhantom_000000_{new:04d}.nii.gz" if sub == "imagesTr" else \
                    folder / sub / f"MultiChannelPhantom_100000_{new:04d}.nii.gz"
                assert link.is_symlink() and Path(os.readlink(link)).name.endswith(f"_{old:04d}.nii.gz")
        assert len(list((folder / "labelsTr").iterdir())) == 5

    # planning: nnU-Net's planner per dataset, then the plans capped like plan-pair's (features, batch size)
    planned = {c["dataset"] for c in fake.of("nnUNetv2_plan_and_preprocess")}
    assert planned == {"Dataset991_MultiChannelPhantom"} | {p.name for p in derived.values()}
    for call in fake.of("nnUNetv2_preprocess"):
        conf = call["plans"]["configurations"]["2d"]
        assert conf["batch_size"] == 4 and conf["architecture"]["arch_kwargs"]["features_per_stage"] == [32, 32, 32]
    pre = root / "nnunet" / "nnUNet_preprocessed"
    splits = [json.loads((pre / name / "splits_final.json").read_text()) for name in sorted(planned)]
    assert all(s == splits[0] for s in splits) and len(splits[0]) == 5

    # training: vanilla and MAML on all channels, vanilla on each derived dataset, all with the same budget
    trained = {(c["dataset"], c["trainer"]) for c in fake.of("nnUNetv2_train")}
    assert trained == {("Dataset991_MultiChannelPhantom", "nnUNetTrainerVanilla"),
                       ("Dataset991_MultiChannelPhantom", "nnUNetTrainerMAML")} | \
        {(p.name, "nnUNetTrainerVanilla") for p in derived.values()}
    assert {c["budget"] for c in fake.of("nnUNetv2_train")} == {("2", "3")}

    # prediction inputs
    predictions = fake.of("nnUNetv2_predict")
    all_channel = [c for c in predictions if c["input"] == raw / "imagesTs"]
    assert sorted(c["cmd"][c["cmd"].index("-tr") + 1] for c in all_channel) == ["nnUNetTrainerMAML",
                                                                               "nnUNetTrainerVanilla"]
    for c in CHANNELS:
        (zero,) = [p for p in predictions if p["input"] == root / "inputs" / f"zero_channel_{c}"]
        assert zero["cmd"][zero["cmd"].index("-tr") + 1] == "nnUNetTrainerVanilla"
        assert len(zero["held"]) == 6
        for name, state in zero["held"].items():
            if name.endswith(f"_{c:04d}.nii.gz"):
                assert state == "zeros"
                original = sitk.ReadImage(str(raw / "imagesTs" / name))
                copy = sitk.ReadImage(str(root / "inputs" / f"zero_channel_{c}" / name))
                assert copy.GetSize() == original.GetSize() and copy.GetSpacing() == original.GetSpacing()
                assert copy.GetOrigin() == original.GetOrigin()
            else:
                assert state == "link:" + str((raw / "imagesTs" / name).resolve())
        (missing,) = [p for p in fake.of("predict-missing") if p["available"] == [str(k) for k in CHANNELS if k != c]]
        assert missing["input"] == root / "inputs" / f"missing_channel_{c}"
        assert sorted(missing["held"]) == sorted(n for n in os.listdir(raw / "imagesTs")
                                                 if not n.endswith(f"_{c:04d}.nii.gz"))
        assert missing["cmd"][missing["cmd"].index("-tr") + 1] == "nnUNetTrainerMAML"
        (retrained,) = [p for p in predictions if p["dataset"] == derived[c].name]
        assert retrained["input"] == derived[c] / "imagesTs"
    assert len(predictions) == 2 + 3 + 3 and len(fake.of("predict-missing")) == 3

    # report: the test-time inputs as modalities, vanilla (zero-filled) as the reference of the missing rows
    rows = report.read_csv(root / "report" / "results.csv")
    by_modality = {}
    for row in rows:
        by_modality.setdefault(row["modality"], set()).add(row["method"])
    assert by_modality == {"all channels": {"vanilla", "maml"},
                           **{f"missing channel {c} ({n})": {"vanilla", "vanilla-retrained", "maml"}
                              for c, n in CHANNELS.items()}}
    assert all(r["dice"] == 1.0 for r in rows if r["dice"] == r["dice"])
    costs = {r["method"]: r for r in summary["costs"]}
    assert costs["vanilla-retrained"]["training_runs"] == 3 and costs["maml"]["training_runs"] == 1
    assert costs["maml"]["seconds_per_iteration"] == 0.5
    headline = summary["headline"]
    assert "| missing channel 1 (mod1) | – | 1.000 | 1.000 (Δ +0.000) | 1.000 (Δ +0.000) |" in headline
    assert "| vanilla-retrained | 3 |" in headline and "peer_width_factor" in headline
    assert summary["plan"]["features_per_stage"] == [32, 32, 32]


def test_rerun_does_no_work_and_raw_data_stays_untouched(tmp_path, fake):
    inp = _input(tmp_path)
    multichannel.run_settings(inp)
    raw = inp.result / "phantom_multichannel_raw"
    before = _digest(raw)
    count = len(fake.calls)
    log: list[str] = []
    multichannel.run_settings(_input(tmp_path, log))
    assert len(fake.calls) == count  # every step skipped
    assert not [line for line in log if line.startswith("[start]")]
    assert _digest(raw) == before


def test_user_dataset_is_only_read(tmp_path, fake, monkeypatch):
    user_raw = tmp_path / "user_raw"
    folder = write_multichannel_phantom(user_raw, 123, "Brain", num_cases=5, shape=SHAPE, num_channels=2,
                                        num_test_cases=2, channel_names=["T1", "FLAIR"])
    before = _digest(user_raw)
    monkeypatch.setenv("nnUNet_raw", str(user_raw))
    inp = _input(tmp_path, multichannel_dataset="123")
    (summary,) = multichannel.run_settings(inp)
    assert _digest(user_raw) == before
    assert not (inp.result / "phantom_multichannel_raw").exists()
    tree = inp.result / "multichannel" / "nnunet" / "nnUNet_raw"
    assert os.readlink(tree / folder.name) == str(folder.resolve())
    derived = json.loads((tree / "Dataset125_Brain_without_FLAIR" / "dataset.json").read_text())
    assert derived["channel_names"] == {"0": "T1"}
    assert {c["dataset"] for c in fake.of("nnUNetv2_plan_and_preprocess")} == {
        "Dataset123_Brain", "Dataset124_Brain_without_T1", "Dataset125_Brain_without_FLAIR"}
    # a user's dataset is checked by nnU-Net's integrity check, the derived ones (links to it) are not
    verified = {c["dataset"] for c in fake.of("nnUNetv2_plan_and_preprocess")
                if "--verify_dataset_integrity" in c["cmd"]}
    assert verified == {"Dataset123_Brain"}
    assert "missing channel 1 (FLAIR)" in summary["headline"]

    # the same result folder with another dataset is refused
    write_multichannel_phantom(user_raw, 124, "Other", num_cases=5, shape=SHAPE, num_channels=2, num_test_cases=2)
    with pytest.raises(UserError, match="records a multichannel benchmark of Dataset123_Brain"):
        multichannel.run_settings(_input(tmp_path, multichannel_dataset="Dataset124_Other"))


def test_refusals(tmp_path, fake, monkeypatch):
    user_raw = tmp_path / "user_raw"
    monkeypatch.setenv("nnUNet_raw", str(user_raw))
    user_raw.mkdir()
    with pytest.raises(UserError, match="--multichannel-dataset 555: no dataset found"):
        multichannel.run_settings(_input(tmp_path, multichannel_dataset="555"))

    single = write_multichannel_phantom(user_raw, 7, "Single", num_cases=5, shape=SHAPE, num_channels=2,
                                        num_test_cases=1)
    data = json.loads((single / "dataset.json").read_text())
    data["channel_names"] = {"0": "T1"}
    (single / "dataset.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="dataset.json lists 1 input channel.*at least 2 co-registered channels"):
        multichannel.run_settings(_input(tmp_path, multichannel_dataset="7"))

    incomplete = write_multichannel_phantom(user_raw, 8, "Incomplete", num_cases=5, shape=SHAPE, num_channels=2,
                                            num_test_cases=1)
    (incomplete / "imagesTs" / "Incomplete_100000_0001.nii.gz").unlink()
    with pytest.raises(UserError, match="Incomplete_100000_0001.nii.gz is missing"):
        multichannel.run_settings(_input(tmp_path, multichannel_dataset="Dataset008_Incomplete"))

    no_tests = write_multichannel_phantom(user_raw, 9, "NoTests", num_cases=5, shape=SHAPE, num_channels=2)
    with pytest.raises(UserError, match="no held-out test cases"):
        multichannel.run_settings(_input(tmp_path, multichannel_dataset="9"))
    assert no_tests.is_dir() and not fake.calls

    monkeypatch.delenv("nnUNet_raw")
    with pytest.raises(UserError, match="nnUNet_raw is not set"):
        multichannel.run_settings(_input(tmp_path, multichannel_dataset="7"))


def test_derived_ids_never_collide_with_the_source():
    for source in (1, 500, 991, 998, 999):
        ids = [multichannel.derived_id(source, c) for c in range(4)]
        assert source not in ids and len(set(ids)) == 4 and all(1 <= i <= 999 for i in ids)


def test_benchmark_with_maml_runs_only_the_experiment(tmp_path, fake):
    """``nnunet_unpaired benchmark --methods maml``: vanilla is added, the pair settings do not run, results.md has
    the experiment's headline."""
    options = RunOptions(output=tmp_path / "out", methods=("maml",), device="cpu", date="2026-01-01",
                         predict_processes=(0, 0), plan_processes=1)
    spec = _spec(phantom=config.phantom_spec(num_train=5, num_test=1, field_of_view_mm=(48.0, 48.0, 12.0)))
    result = harness.run_benchmark(spec, options, log=lambda _: None)
    assert not (result / "full-label").exists()
    text = (result / "results.md").read_text()
    assert "## Setting: multichannel (MAML)" in text and "### Mean Dice per test-time input" in text
    assert "| multichannel (MAML) | missing channel 2 (mod2) |" in text
    assert np.isclose(json.loads((result / "multichannel" / "steps" / "splits.json").read_text())
                      ["train_per_fold"][0], 4)


def test_channel_dropout_baseline_is_trained_like_vanilla_and_fed_zero_filled_channels(tmp_path, fake):
    """Issue 17: vanilla with training-time channel dropout competes with MAML on the same missing-channel inputs
    vanilla gets (its deployed network is nnU-Net's plain one: no predict-missing)."""
    inp = _input(tmp_path, method_names=("vanilla", "vanilla-dropout", "maml"))
    (summary,) = multichannel.run_settings(inp)
    root = inp.result / "multichannel"
    trained = {c["trainer"] for c in fake.of("nnUNetv2_train") if c["dataset"] == "Dataset991_MultiChannelPhantom"}
    assert trained == {"nnUNetTrainerVanilla", "nnUNetTrainerChannelDropout", "nnUNetTrainerMAML"}
    assert {c["budget"] for c in fake.of("nnUNetv2_train")} == {("2", "3")}
    for c in CHANNELS:
        zero = [p["cmd"][p["cmd"].index("-tr") + 1] for p in fake.of("nnUNetv2_predict")
                if p["input"] == root / "inputs" / f"zero_channel_{c}"]
        assert sorted(zero) == ["nnUNetTrainerChannelDropout", "nnUNetTrainerVanilla"]
    assert {p["cmd"][p["cmd"].index("-tr") + 1] for p in fake.of("predict-missing")} == {"nnUNetTrainerMAML"}
    rows = report.read_csv(root / "report" / "results.csv")
    assert {r["modality"] for r in rows if r["method"] == "vanilla-dropout"} == \
        {"all channels"} | {f"missing channel {c} ({n})" for c, n in CHANNELS.items()}
    assert "vanilla-dropout" in summary["headline"] and "| vanilla-dropout | 1 |" in summary["headline"]
    assert "maml predicts with all channels" in summary["note"]
    assert "vanilla-dropout (a plain nnU-Net network) predicts through nnUNetv2_predict, a missing channel " \
        "zero-filled" in summary["note"]


@pytest.mark.parametrize("layout, first_label", [("redundant", "strong_in_mod0"), ("exclusive", "only_mod0")])
def test_phantom_layout_comes_from_the_option(tmp_path, fake, layout, first_label):
    from nnunet_unpaired.phantom_multichannel import LAYOUT_DESCRIPTIONS

    inp = _input(tmp_path, multichannel_phantom=layout)
    (summary,) = multichannel.run_settings(inp)
    assert f"layout '{layout}': {LAYOUT_DESCRIPTIONS[layout]}" in summary["note"]  # the report describes this layout
    data = json.loads((inp.result / "phantom_multichannel_raw" / "Dataset991_MultiChannelPhantom" /
                       "dataset.json").read_text())
    assert data["phantom"]["layout"] == layout and list(data["labels"])[1] == first_label
    marker = json.loads((inp.result / "steps" / "phantom_multichannel.json").read_text())
    assert marker["layout"] == layout
