"""benchmarks/gpu_check.py without a GPU: it refuses before doing anything; its pure helpers (timing summary, ratios,
table, log and checkpoint checks, the multi-channel dataset and the one-case split) on fake inputs."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_refuses_without_a_gpu_before_doing_anything(gpu_check, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # no device, even on a GPU machine
    output = tmp_path / "out"
    assert gpu_check.main(["--output", str(output), "--raw", str(tmp_path / "nowhere")]) == 2
    captured = capsys.readouterr()
    assert "needs a CUDA GPU" in captured.err and "Nothing was done" in captured.err
    assert "is_available() is False" in captured.err or "CPU-only build" in captured.err
    assert captured.out == ""
    assert not output.exists()  # not even the output folder


def test_bad_options_are_refused_by_the_parser(gpu_check):
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--iters", "1"])
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--trainers", "nosuchtrainer"])


def test_every_run_has_a_reference_and_glua_comes_after_its_stage_one(gpu_check):
    from nnunet_unpaired.training import interface

    labels = [r.label for r in gpu_check.RUNS]
    assert len(set(labels)) == len(labels)
    assert set(gpu_check.VANILLA.values()) | {gpu_check.JOINT} <= set(labels)
    trainers = [r.trainer for r in gpu_check.RUNS]
    for trainer, needed in interface.PREREQUISITES.items():
        assert trainers.index(needed) < trainers.index(trainer)
    assert {r.trainer for r in gpu_check.RUNS if r.dataset == "M"} == {"nnUNetTrainerVanilla", "nnUNetTrainerMAML",
                                                                        "nnUNetTrainerChannelDropout"}
    assert {r.trainer for r in gpu_check.RUNS if r.dataset == "P"} == {"nnUNetTrainerVanilla", "nnUNetTrainerCMCPaired"}


def test_summarize_timing_measures_the_epochs_after_the_warm_up(gpu_check):
    record = {"iteration_seconds": [30.0, 1.0, 1.0, 0.5, 0.7, 0.6], "epochs": [0, 0, 0, 1, 1, 1],
              "peak_memory_mib": 2048.0, "peak_memory_kind": "cuda_max_memory_allocated"}
    summary = gpu_check.summarize_timing(record)
    assert summary["s_per_it"] == pytest.approx(0.6)
    assert summary["measured_iterations"] == 3
    assert summary["first_it_s"] == 30.0
    assert summary["peak_mib"] == 2048.0
    # one epoch only: everything but the first (compiling) iteration
    single = gpu_check.summarize_timing({"iteration_seconds": [9.0, 2.0, 4.0], "epochs": [0, 0, 0]})
    assert single["s_per_it"] == pytest.approx(3.0) and single["measured_iterations"] == 2
    assert math.isnan(gpu_check.summarize_timing({})["s_per_it"])


def _row(label, configuration, s, mib, dataset="A"):
    return {"label": label, "configuration": configuration, "dataset": dataset, "s_per_it": s, "peak_mib": mib}


def test_ratios_to_vanilla_on_the_same_dataset_and_to_joint(gpu_check):
    rows = gpu_check.add_ratios([
        _row("vanilla", "3d_fullres", 0.5, 1000.0), _row("joint", "3d_fullres", 1.0, 1500.0),
        _row("eam", "3d_fullres", 1.5, 3000.0), _row("vanilla", "2d", 0.1, 100.0),
        _row("vanilla-multichannel", "3d_fullres", 0.6, 1200.0, "M"), _row("maml", "3d_fullres", 1.2, 3600.0, "M"),
        _row("joint", "2d", float("nan"), 50.0)])
    eam = rows[2]
    assert eam["time_x_vanilla"] == pytest.approx(3.0) and eam["time_x_joint"] == pytest.approx(1.5)
    assert eam["mem_x_vanilla"] == pytest.approx(3.0) and eam["mem_x_joint"] == pytest.approx(2.0)
    assert rows[0]["time_x_vanilla"] == pytest.approx(1.0)
    maml = rows[5]
    assert maml["time_x_vanilla"] == pytest.approx(2.0) and maml["mem_x_vanilla"] == pytest.approx(3.0)
    assert math.isnan(maml["time_x_joint"])  # MAML is not a two-dataset method
    two_d = rows[6]  # a failed reference (NaN) gives NaN, not a crash; memory still compares
    assert math.isnan(two_d["time_x_vanilla"]) and two_d["mem_x_vanilla"] == pytest.approx(0.5)
    assert math.isnan(rows[3]["time_x_joint"])  # the 2d joint run has no time
    assert "time_x_vanilla" not in _row("x", "2d", 1, 1)  # the input rows are not changed


def test_markdown_table(gpu_check):
    rows = gpu_check.add_ratios([
        {**_row("vanilla", "2d", 0.25, 2048.0), "status": "ok", "compiled": True, "losses_finite": True},
        {**_row("eam", "2d", 0.5, float("nan")), "status": "FAILED: strict_load", "compiled": False,
         "strict_load": False}])
    lines = gpu_check.markdown_table(rows).splitlines()
    assert len(lines) == 4
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:6] == ["config", "trainer", "status", "compiled", "recompiles", "s/it"]
    vanilla = [c.strip() for c in lines[2].strip("|").split("|")]
    assert vanilla[:7] == ["2d", "vanilla", "ok", "yes", "-", "0.25", "1.00"]
    assert vanilla[header.index("peak GiB")] == "2.00"
    eam = [c.strip() for c in lines[3].strip("|").split("|")]
    assert eam[header.index("x vanilla")] == "2.00" and eam[header.index("peak GiB")] == "-"
    assert eam[header.index("compiled")] == "NO" and eam[header.index("strict load")] == "NO"


def test_compile_events_from_a_training_log(gpu_check):
    log = ("2026-01-01 00:00:00: Using torch.compile...\n"
           "V0101 Recompiling function forward in /x/maml_network.py:170\n  triggered by ...\n"
           "V0101 Recompiling function forward in /x/maml_network.py:170\n"
           "W0101 torch._dynamo hit config.recompile_limit (8)\n Graph break in user code at foo.py:1\n")
    assert gpu_check.compile_events(log) == {"compiled": True, "recompiles": 2, "recompile_limit_hit": True,
                                             "graph_breaks": 1}
    assert gpu_check.compile_events("plain log")["compiled"] is False


def test_checkpoint_checks(gpu_check):
    assert gpu_check.finite_losses({"train_losses": [1.0, 0.5], "val_losses": [0.9], "train_seg_A": [0.3],
                                    "ema_fg_dice": [float("nan")]})  # a NaN pseudo Dice is not a loss
    assert not gpu_check.finite_losses({"train_losses": [1.0, float("nan")], "val_losses": [0.9]})
    assert not gpu_check.finite_losses({"train_losses": [1.0], "train_eam_att": [float("inf")]})
    assert not gpu_check.finite_losses({})
    before = {"w": torch.ones(3), "steps": torch.tensor(4)}
    assert gpu_check.weights_changed(before, {"w": torch.tensor([1.0, 1.0, 0.9]), "steps": torch.tensor(4)})
    assert not gpu_check.weights_changed(before, {"w": torch.ones(3), "steps": torch.tensor(5)})
    assert not gpu_check.weights_changed(before, {"w": torch.zeros(3)})  # different keys


def _raw_dataset(root: Path, name: str, cases, channel: str = "CT") -> Path:
    folder = root / name
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (folder / sub).mkdir(parents=True)
    for case in cases:
        (folder / "imagesTr" / f"{case}_0000.nii.gz").write_bytes(b"image " + case.encode())
        (folder / "labelsTr" / f"{case}.nii.gz").write_bytes(b"label")
    (folder / "imagesTs" / "test1_0000.nii.gz").write_bytes(b"test image")
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": channel}, "labels": {"background": 0,
                                                     "liver": 1}, "numTraining": len(cases),
                                                     "file_ending": ".nii.gz", "name": name.split("_", 1)[1]}))
    return folder


def test_multichannel_dataset_links_every_channel_to_the_image(gpu_check, tmp_path):
    source = _raw_dataset(tmp_path / "shared", "Dataset951_AbdomenCT", ["a1", "a2"])
    raw = tmp_path / "nnUNet_raw"
    raw.mkdir()
    name = gpu_check.make_multichannel(source, raw, 999, 3)
    assert name == "Dataset999_AbdomenCT3ch"
    meta = json.loads((raw / name / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT", "1": "CT", "2": "CT"} and meta["labels"]["liver"] == 1
    for c in range(3):
        assert (raw / name / "imagesTr" / f"a2_{c:04d}.nii.gz").read_bytes() == b"image a2"
        assert (raw / name / "imagesTs" / f"test1_{c:04d}.nii.gz").is_file()
    assert (raw / name / "labelsTr" / "a1.nii.gz").is_file()
    assert gpu_check.make_multichannel(source, raw, 999, 3) == name  # a rerun keeps it
    assert sorted(p.name for p in source.iterdir()) == ["dataset.json", "imagesTr", "imagesTs", "labelsTr",
                                                        "labelsTs"]  # the source is only read
    assert gpu_check.find_dataset(tmp_path / "shared", "951") == source
    assert gpu_check.find_dataset(tmp_path / "shared", "Dataset951_AbdomenCT") == source
    with pytest.raises(SystemExit, match="no dataset '952'"):
        gpu_check.find_dataset(tmp_path / "shared", "952")


def test_one_case_split(gpu_check, tmp_path):
    folder = tmp_path / "Dataset951_AbdomenCT"
    (folder / "gt_segmentations").mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz"}))
    for case in ("c3", "c1", "c2"):
        (folder / "gt_segmentations" / f"{case}.nii.gz").write_bytes(b"")
    gpu_check.write_one_case_split(tmp_path, folder.name)
    assert json.loads((folder / "splits_final.json").read_text()) == [{"train": ["c2", "c3"], "val": ["c1"]}]
    for case in ("c2", "c3"):
        (folder / "gt_segmentations" / f"{case}.nii.gz").unlink()
    with pytest.raises(SystemExit, match="at least 2"):
        gpu_check.write_one_case_split(tmp_path, folder.name)
