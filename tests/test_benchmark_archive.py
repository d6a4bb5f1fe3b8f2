"""A benchmark's record (``--archive``): which files it keeps, how it is restored, the loss curves of a model that is
gone, and the steps that are redone on a restored result folder (and must give the recorded result). The phantom
benchmark resumed from its record alone is in test_benchmark_harness's end-to-end test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nnunet_unpaired.benchmark import archive, costs, training_runs
from nnunet_unpaired.benchmark.config import BenchmarkSpec, Context, Dataset, ModelRef, RunOptions
from nnunet_unpaired.benchmark.registry import Method
from nnunet_unpaired.benchmark.steps import run_step, write_json_atomic
from nnunet_unpaired.errors import UserError

MODEL = Path("nnunet/nnUNet_results/Dataset1_A/nnUNetTrainer__nnUNetPlans__2d/fold_0")


def _result(tmp_path: Path) -> Path:
    """A result folder as the harness leaves it: record files beside the rebuilt trees."""
    result = tmp_path / "result"
    files = {
        "benchmark.json": "{}", "results.md": "# results",
        "s/steps/plan.json": "{}", "s/logs/plan.log": "planned",
        "s/seed_0/steps/train__v.json": "{}", "s/seed_0/timing/v.json": "{}", "s/seed_0/metrics/v.csv": "a,b",
        "s/seed_0/mechanism/joint__fold_0.json": "{}",
        # the small files of a model folder
        f"s/seed_0/{MODEL}/training_log.txt": "epoch 0", f"s/seed_0/{MODEL}/progress.png": "png",
        f"s/seed_0/{MODEL.parent}/plans.json": "{}",
        # rebuilt: never in the record
        "s/nnunet/nnUNet_preprocessed/Dataset1_A/nnUNetPlans.json": "{}", "s/nnunet/nnUNet_raw/Dataset1_A": "link",
        f"s/seed_0/{MODEL}/checkpoint_final.pth": "model", f"s/seed_0/{MODEL}/validation/case.nii.gz": "img",
        "s/seed_0/predictions/v/case.nii.gz": "img",
        "s/report/results.csv": "a", "phantom_raw/Dataset1_A/dataset.json": "{}",
        "s/seed_0/steps/.train__w.json.tmp123": "half-written",
    }
    for name, text in files.items():
        (result / name).parent.mkdir(parents=True, exist_ok=True)
        (result / name).write_text(text)
    return result


def _record(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_save_keeps_the_small_files_only_and_restore_fills_gaps_without_overwriting(tmp_path):
    result, record = _result(tmp_path), tmp_path / "record"
    (result / f"s/seed_0/{MODEL}/checkpoint_final.pth").unlink()  # not a real checkpoint: no loss curves to extract
    assert archive.save(result, record, log=lambda _: None) == 11
    assert _record(record) == {"benchmark.json", "results.md", "s/steps/plan.json", "s/logs/plan.log",
                               "s/seed_0/steps/train__v.json", "s/seed_0/timing/v.json", "s/seed_0/metrics/v.csv",
                               "s/seed_0/mechanism/joint__fold_0.json", f"s/seed_0/{MODEL}/training_log.txt",
                               f"s/seed_0/{MODEL}/progress.png", f"s/seed_0/{MODEL.parent}/plans.json"}
    assert archive.save(result, record, log=lambda _: None) == 0  # unchanged: nothing copied again
    (result / "s/logs/plan.log").write_text("planned again")
    assert archive.save(result, record, log=lambda _: None) == 1
    assert (record / "s/logs/plan.log").read_text() == "planned again"

    fresh = tmp_path / "fresh"
    (fresh / "s/logs").mkdir(parents=True)
    (fresh / "s/logs/plan.log").write_text("this machine's log")
    assert archive.restore(record, fresh, log=lambda _: None) == 10
    assert (fresh / "s/logs/plan.log").read_text() == "this machine's log"  # never overwritten
    assert (fresh / "s/seed_0/metrics/v.csv").read_text() == "a,b"
    assert archive.restore(tmp_path / "absent", fresh, log=lambda _: None) == 0


def _context(tmp_path: Path) -> Context:
    spec = BenchmarkSpec(datasets=("Dataset1_A", "Dataset2_B"), configuration="2d", epochs=1, iters=1, val_iters=1,
                         no_mirroring=True, max_features=8, batch_size=2)
    a = Dataset("Dataset1_A", 1, tmp_path / "raw_a", {"x": 1})
    b = Dataset("Dataset2_B", 2, tmp_path / "raw_b", {"x": 1})
    return Context(spec, RunOptions(output=tmp_path), tmp_path / "result", "s", None, a, b, "cpu",
                   lambda _: None, seed=0)


def test_loss_curves_come_from_the_record_when_the_model_is_gone(tmp_path):
    ctx = _context(tmp_path)
    model = ModelRef(ctx.a, "nnUNetTrainer", "vanilla__Dataset1_A__fold_0")
    folder = ctx.model_folder(ctx.a, "nnUNetTrainer", "0")
    folder.mkdir(parents=True)
    # as nnU-Net logs: numpy numbers, and a list per epoch for the per-class Dice
    logging = {"train_losses": [np.float32(0.9), 0.5], "val_losses": [np.float64(0.8), 0.6],
               "dice_per_class_or_region": [[np.float64(0.1), 0.2], [0.3, 0.4]]}
    torch.save({"logging": logging, "network_weights": {}}, folder / "checkpoint_final.pth")
    assert costs.training_logging(ctx, model, "0") == logging
    plain = {"train_losses": [pytest.approx(0.9), 0.5], "val_losses": [0.8, 0.6],
             "dice_per_class_or_region": [[0.1, 0.2], [0.3, 0.4]]}

    written = archive.extract_logging(ctx.result)
    assert written == [archive.logging_file(ctx.run_root, folder)]
    assert archive.extract_logging(ctx.result) == []  # up to date: not read again
    (folder / "checkpoint_final.pth").unlink()
    assert costs.training_logging(ctx, model, "0") == plain  # from the record
    written[0].unlink()
    with pytest.raises(UserError, match="checkpoint_final.pth is missing and the record has no"):
        costs.training_logging(ctx, model, "0")


def test_a_missing_model_is_an_error_unless_its_predictions_were_recorded(tmp_path):
    ctx = _context(tmp_path)
    method = Method(name="vanilla", trainer="nnUNetTrainer", kind="single", description="")
    model = ModelRef(ctx.a, "nnUNetTrainer", "vanilla__Dataset1_A__fold_0")
    with pytest.raises(UserError, match="training finished but .*checkpoint_final.pth is missing"):
        training_runs.require_checkpoints(ctx, method, [model], "0")
    write_json_atomic(ctx.run_root / "steps" / "predict__vanilla__Dataset1_A__fold_0.json", {"cases": 2})
    training_runs.require_checkpoints(ctx, method, [model], "0")  # restored: the record has its numbers


def test_a_step_whose_products_are_missing_is_redone_and_must_give_the_recorded_result(tmp_path):
    product, calls, lines = tmp_path / "plans.json", [], []

    def plan(patch):
        def action(log_file: Path) -> dict:
            calls.append(patch)
            product.write_text("{}")
            return {"patch_size": patch, "other": len(calls)}
        return action

    first = run_step(tmp_path, "plan", plan([64, 64]), lines.append, products=[product], must_match=("patch_size",))
    run_step(tmp_path, "plan", plan([64, 64]), lines.append, products=[product], must_match=("patch_size",))
    assert len(calls) == 1  # products there: skipped
    product.unlink()
    redone = run_step(tmp_path, "plan", plan([64, 64]), lines.append, products=[product],
                      must_match=("patch_size",))
    assert len(calls) == 2 and redone["other"] == 2 and redone["redone"] == [first["finished"]]
    assert any(line.startswith("[redo] plan") and "plans.json is missing" in line for line in lines)
    product.unlink()
    with pytest.raises(UserError, match=r"patch_size: \[64, 64\] recorded, \[32, 64\] now"):
        run_step(tmp_path, "plan", plan([32, 64]), lines.append, products=[product], must_match=("patch_size",))
    marker = json.loads((tmp_path / "steps" / "plan.json").read_text())
    assert marker["patch_size"] == [64, 64]  # the recorded marker is kept
    # a key the recorded marker lacks (an older version wrote it) is not compared
    write_json_atomic(tmp_path / "steps" / "plan.json", {k: v for k, v in marker.items() if k != "patch_size"})
    product.unlink()
    assert run_step(tmp_path, "plan", plan([32, 64]), lines.append, products=[product],
                    must_match=("patch_size",))["patch_size"] == [32, 64]


def test_a_recorded_training_runs_again_only_while_a_later_step_still_needs_its_model(tmp_path, monkeypatch):
    """Restored: train markers but no models. Not yet predicted: the model is needed, so it trains again; predicted:
    nothing trains (the record has its numbers)."""
    ctx = _context(tmp_path)
    method = Method(name="vanilla", trainer="nnUNetTrainer", kind="single", description="")
    commands = []

    def fake_train(cmd, env, log_file, log):
        commands.append(cmd[1])
        folder = ctx.model_folder(ctx.a if cmd[1] == ctx.a.name else ctx.b, "nnUNetTrainer", "0")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "checkpoint_final.pth").write_text("model")

    monkeypatch.setattr(training_runs.steps, "run_command", fake_train)
    for dataset in (ctx.a, ctx.b):
        write_json_atomic(ctx.run_root / "steps" / f"train__vanilla__{dataset.name}__fold_0.json", {"seconds": 1})
    write_json_atomic(ctx.run_root / "steps" / "predict__vanilla__Dataset1_A__fold_0.json", {"cases": 2})
    models = training_runs.train_method(ctx, method, "0")
    assert commands == ["Dataset2_B"]  # A was predicted: not trained again; B's model is needed
    assert [m.dataset.name for m in models] == ["Dataset1_A", "Dataset2_B"]
    marker = json.loads((ctx.run_root / "steps" / "train__vanilla__Dataset2_B__fold_0.json").read_text())
    assert "redone" in marker


def test_a_recorded_joint_run_waits_for_the_mechanism_probe_only_where_one_is_measured(tmp_path, monkeypatch):
    """Restored joint run, both modalities predicted, no probe recorded: a pair setting trains it again (its probe
    still needs the model), the semi experiment (which measures no probe) does not; once the probe is recorded,
    neither does. (A semi run restored on a new machine retrained its finished joint baseline before this.)"""
    from nnunet_unpaired.benchmark import semi

    ctx = _context(tmp_path)
    joint = Method(name="joint", trainer="nnUNetTrainerUnpairedJoint", kind="unpaired", description="")
    commands = []

    def fake_train(cmd, env, log_file, log):
        commands.append(cmd[1])
        for dataset in (ctx.a, ctx.b):
            folder = ctx.model_folder(dataset, joint.trainer, "0")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "checkpoint_final.pth").write_text("model")

    monkeypatch.setattr(training_runs.steps, "run_command", fake_train)

    def restored() -> None:
        for folder in (ctx.model_folder(d, joint.trainer, "0") for d in (ctx.a, ctx.b)):
            (folder / "checkpoint_final.pth").unlink(missing_ok=True)

    write_json_atomic(ctx.run_root / "steps" / "train__joint__fold_0.json", {"seconds": 1})
    for dataset in (ctx.a, ctx.b):
        write_json_atomic(ctx.run_root / "steps" / f"predict__joint__{dataset.name}__fold_0.json", {"cases": 2})
    assert len(semi.train_any(ctx, joint, "0")) == 2 and commands == []
    training_runs.train_method(ctx, joint, "0")
    assert commands == ["Dataset1_A"]  # the pair setting: trained again for its probe
    restored()
    write_json_atomic(ctx.run_root / "steps" / "mechanism__joint__fold_0.json", {"agreement": 0.9})
    training_runs.train_method(ctx, joint, "0")
    assert commands == ["Dataset1_A"]


def _checkpoint(path: Path, epoch: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"current_epoch": epoch, "network_weights": {"w": torch.full((3,), float(epoch))}}, path)


def test_with_checkpoints_an_unfinished_training_travels_with_the_record_until_it_finishes(tmp_path):
    result, record = tmp_path / "result", tmp_path / "record"
    latest = result / "s" / "seed_0" / MODEL / archive.LATEST
    _checkpoint(latest, 3)
    assert archive.save(result, record, log=lambda _: None) == 0  # without checkpoints: none kept
    assert archive.save(result, record, log=lambda _: None, checkpoints=True) == 1
    kept = record / "s" / "seed_0" / MODEL / archive.LATEST
    assert torch.load(kept, weights_only=False)["current_epoch"] == 3
    assert archive.save(result, record, log=lambda _: None, checkpoints=True) == 0  # unchanged: not copied again
    _checkpoint(latest, 4)
    assert archive.save(result, record, log=lambda _: None, checkpoints=True) == 1
    assert torch.load(kept, weights_only=False)["current_epoch"] == 4

    # a new machine: the checkpoint comes back and the training continues from it (train_run passes --c)
    fresh = tmp_path / "fresh"
    archive.restore(record, fresh, log=lambda _: None)
    assert torch.load(fresh / "s" / "seed_0" / MODEL / archive.LATEST, weights_only=False)["current_epoch"] == 4
    # a folder that already has a checkpoint keeps its own; one whose training finished gets none
    _checkpoint(fresh / "s" / "seed_0" / MODEL / archive.LATEST, 9)
    other = tmp_path / "other"
    (other / "s" / "seed_0" / MODEL).mkdir(parents=True)
    (other / "s" / "seed_0" / MODEL / archive.FINAL).write_text("final")
    archive.restore(record, fresh, log=lambda _: None)
    archive.restore(record, other, log=lambda _: None)
    assert torch.load(fresh / "s" / "seed_0" / MODEL / archive.LATEST, weights_only=False)["current_epoch"] == 9
    assert not (other / "s" / "seed_0" / MODEL / archive.LATEST).exists()

    # the training finishes: its checkpoint leaves the record (its numbers are there now)
    _checkpoint(result / "s" / "seed_0" / MODEL / archive.FINAL, 30)
    archive.save(result, record, log=lambda _: None, checkpoints=True)
    assert not kept.exists()
    assert (record / "s" / "seed_0" / "training_logging" / MODEL.relative_to("nnunet/nnUNet_results")
            ).with_suffix(".json").is_file()


def test_a_checkpoint_caught_half_written_is_not_recorded(tmp_path):
    source, target = tmp_path / "latest.pth", tmp_path / "record" / "latest.pth"
    _checkpoint(source, 1)
    source.write_bytes(source.read_bytes()[:-40])  # nnU-Net's torch.save interrupted by the copy
    assert not archive._copy_checkpoint(source, target)
    assert not target.exists() and not list(target.parent.iterdir())  # nor its temporary file
    _checkpoint(source, 2)
    assert archive._copy_checkpoint(source, target)
    assert torch.load(target, weights_only=False)["current_epoch"] == 2


def test_autosave_saves_the_record_while_the_benchmark_runs_and_stops_with_it(tmp_path):
    result, record = tmp_path / "result", tmp_path / "record"
    (result / "s" / "logs").mkdir(parents=True)
    log = result / "s" / "logs" / "train.log"
    log.write_text("epoch 0")
    messages = []
    with archive.Autosave(result, record, messages.append, every=0.05) as saving:
        for _ in range(200):  # up to 10 s
            if (record / "s" / "logs" / "train.log").is_file():
                break
            saving._stop.wait(0.05)
        assert (record / "s" / "logs" / "train.log").read_text() == "epoch 0"
    assert not saving._thread.is_alive()
    log.write_text("epoch 1")
    saving._stop.wait(0.2)
    assert (record / "s" / "logs" / "train.log").read_text() == "epoch 0"  # stopped: no save after the block
    assert messages and all(m.startswith("record: ") for m in messages)


def test_archive_checkpoints_needs_an_archive(tmp_path, capsys):
    from nnunet_unpaired.cli import main

    assert main(["benchmark", "--output", str(tmp_path), "--archive-checkpoints"]) == 2
    assert "give --archive too" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # stopped before anything was written


def test_a_training_cut_off_with_its_machine_continues_from_the_recorded_checkpoint(tmp_path, monkeypatch):
    """Machine 1 trains for a while (a checkpoint and a timing file, no marker); machine 2 starts from the record only:
    the training continues (``--c``) into a second timing file instead of starting over. Without checkpoints in the
    record (the default) machine 3 starts it over."""
    from nnunet_unpaired.training import interface

    first = _context(tmp_path / "machine1")
    method = Method(name="vanilla", trainer="nnUNetTrainer", kind="single", description="")
    run = "vanilla__Dataset1_A__fold_0"
    _checkpoint(first.model_folder(first.a, "nnUNetTrainer", "0") / archive.LATEST, 12)
    write_json_atomic(first.run_root / "timing" / f"{run}.json", {"iterations": [1.0]})
    archive.save(first.result, tmp_path / "record", log=lambda _: None, checkpoints=True)
    archive.save(first.result, tmp_path / "record_without", log=lambda _: None)

    calls = []

    def train_on(ctx: Context) -> None:
        def fake_train(cmd, env, log_file, log):
            folder = ctx.model_folder(ctx.a, "nnUNetTrainer", "0")
            latest = folder / archive.LATEST
            # what nnU-Net's --c would load
            calls.append((cmd, Path(env[interface.ENV_TIMING]).name,
                          torch.load(latest, weights_only=False)["current_epoch"] if latest.is_file() else None))
            folder.mkdir(parents=True, exist_ok=True)
            (folder / archive.FINAL).write_text("model")

        monkeypatch.setattr(training_runs.steps, "run_command", fake_train)
        training_runs.train_run(ctx, method, run, ctx.a, "0")

    second = _context(tmp_path / "machine2")
    archive.restore(tmp_path / "record", second.result, log=lambda _: None)
    train_on(second)
    cmd, timing, epoch = calls[-1]
    assert cmd[-1] == "--c" and epoch == 12 and timing == f"{run}.resume1.json"
    assert (second.run_root / "timing" / f"{run}.json").is_file()  # the first piece's iteration times are kept

    third = _context(tmp_path / "machine3")
    archive.restore(tmp_path / "record_without", third.result, log=lambda _: None)
    train_on(third)
    cmd, timing, epoch = calls[-1]
    assert "--c" not in cmd and epoch is None and timing == f"{run}.json"
