"""Benchmark harness: splits, warm-up median, markers and resumability, folder checks, iteration timing, command
line; and one tiny end-to-end benchmark (phantom, vanilla + joint, scarce-label B) that is resumed without work."""

from __future__ import annotations

import argparse
import inspect
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.crossval_split import generate_crossval_split
from pairs import SMALL

from nnunet_unpaired.benchmark import cli, config, evaluation, harness, report, steps
from nnunet_unpaired.benchmark.config import BenchmarkSpec, RunOptions
from nnunet_unpaired.benchmark.costs import median_after_warmup
from nnunet_unpaired.benchmark.data import default_splits, scarce_splits
from nnunet_unpaired.benchmark.steps import prepare_result_folder, run_step
from nnunet_unpaired.errors import UserError
from nnunet_unpaired.training import budget

CASES = [f"case_{i:02d}" for i in range(10)]


# ------------------------------------------------------------------------------------------------------- splits


def test_default_splits_are_nnunets_own():
    expected = generate_crossval_split(sorted(CASES), seed=12345, n_splits=5)
    splits = default_splits(list(reversed(CASES)))
    assert [s["train"] for s in splits] == [list(e["train"]) for e in expected]
    assert [s["val"] for s in splits] == [list(e["val"]) for e in expected]
    with pytest.raises(UserError, match="too few"):
        default_splits(CASES[:4])


def test_scarce_splits_cut_training_keep_validation():
    splits = default_splits(CASES)
    scarce = scarce_splits(splits, 3)
    assert scarce == scarce_splits(splits, 3)  # seeded
    for full, cut in zip(splits, scarce):
        assert len(cut["train"]) == 3 and cut["train"] == sorted(cut["train"])
        assert set(cut["train"]) <= set(full["train"])
        assert cut["val"] == full["val"]
    assert len({tuple(s["train"]) for s in scarce}) > 1  # not the same first cases in every fold
    assert scarce_splits(splits, 8) == [{"train": sorted(s["train"]), "val": s["val"]} for s in splits]
    with pytest.raises(UserError, match="more labelled cases"):
        scarce_splits(splits, 9)


# ------------------------------------------------------------------------------------------------------- timing


def test_median_skips_first_epoch_or_first_ten_iterations():
    several = {"iteration_seconds": [9.0, 9.0, 1.0, 2.0, 3.0], "epochs": [0, 0, 1, 1, 1]}
    assert median_after_warmup([several]) == (2.0, 3)
    single = {"iteration_seconds": [9.0] * 10 + [1.0, 3.0], "epochs": [0] * 12}
    assert median_after_warmup([single]) == (2.0, 2)
    # a resumed run: each record (process) has its own warm-up; records pool
    resumed = {"iteration_seconds": [9.0, 4.0, 4.0], "epochs": [5, 6, 6]}
    assert median_after_warmup([several, resumed]) == (3.0, 5)
    assert median_after_warmup([{"iteration_seconds": [5.0], "epochs": [0]}]) == (5.0, 1)
    value, n = median_after_warmup([])
    assert math.isnan(value) and n == 0


class _FakeTrainer:
    """The part of nnU-Net's trainer life cycle that the timing hooks use."""

    def __init__(self, plans, configuration, fold, dataset_json, device=None):
        import torch

        self.device, self.local_rank, self.current_epoch = torch.device("cpu"), 0, 0
        self.steps = []

    def print_to_log_file(self, *args, **kwargs):
        pass

    def on_train_start(self):
        pass

    def on_train_epoch_start(self):
        pass

    def on_train_end(self):
        pass

    def train_step(self, batch):
        self.steps.append(batch)
        return {"loss": 0.0}


class _Timed(budget.BudgetMixin, _FakeTrainer):
    pass


class _TimedOverride(_Timed):
    def train_step(self, batch):  # replaces train_step without calling super(), like the joint trainer
        return {"loss": 1.0}


@pytest.mark.parametrize("cls", [_Timed, _TimedOverride])
def test_timing_file_has_every_iteration_and_peak_memory(cls, tmp_path, monkeypatch):
    path = tmp_path / "sub" / "timing.json"
    monkeypatch.setenv(budget.ENV_TIMING, str(path))
    trainer = cls({}, "2d", 0, {})
    trainer.on_train_start()
    for epoch in range(2):
        trainer.current_epoch = epoch
        trainer.on_train_epoch_start()
        for i in range(3):
            trainer.train_step(i)
    trainer.on_train_end()
    record = json.loads(path.read_text())
    assert record["epochs"] == [0, 0, 0, 1, 1, 1]
    assert len(record["iteration_seconds"]) == 6 and all(s >= 0 for s in record["iteration_seconds"])
    assert record["peak_memory_kind"] == "process_peak_rss" and record["peak_memory_mib"] > 10
    assert record["trainer"] == cls.__name__


def test_no_timing_file_without_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv(budget.ENV_TIMING, raising=False)
    monkeypatch.delenv(budget.ENV_TORCH_THREADS, raising=False)  # set by conftest under xdist; it wraps train_step too
    trainer = _Timed({}, "2d", 0, {})
    trainer.on_train_start()
    trainer.on_train_epoch_start()
    assert trainer.train_step(1) == {"loss": 0.0}
    trainer.on_train_end()
    assert "train_step" not in vars(trainer) and not list(tmp_path.iterdir())


def test_mixin_keeps_nnunets_init_signature():
    # nnU-Net records the init arguments by the names of self.__init__'s parameters (KeyError on *args)
    from nnunet_unpaired.training.vanilla import nnUNetTrainerVanilla

    assert list(inspect.signature(nnUNetTrainerVanilla.__init__).parameters) == \
        list(inspect.signature(nnUNetTrainer.__init__).parameters)


# ------------------------------------------------------------------------------------------- markers, folders


def test_run_step_writes_marker_and_skips_when_done(tmp_path):
    calls, lines = [], []

    def action(log_file: Path):
        calls.append(log_file)
        log_file.write_text("output")
        return {"value": 7}

    first = run_step(tmp_path, "train__x", action, lines.append)
    second = run_step(tmp_path, "train__x", action, lines.append)
    assert len(calls) == 1 and first == second and first["value"] == 7 and first["seconds"] >= 0
    assert (tmp_path / "logs" / "train__x.log").read_text() == "output"
    assert lines[0].startswith("[start] train__x") and lines[-1].startswith("[skip] train__x")


def test_failed_step_leaves_no_marker(tmp_path):
    def fail(log_file):
        raise UserError("boom")

    with pytest.raises(UserError):
        run_step(tmp_path, "plan", fail, lambda _: None)
    assert not (tmp_path / "steps" / "plan.json").exists()


def _spec(**changes) -> BenchmarkSpec:
    values = dict(datasets=None, configuration="2d", epochs=2, iters=3, val_iters=1, no_mirroring=True,
                  max_features=8, batch_size=2, phantom=config.phantom_spec(5, 2, **SMALL))
    values.update(changes)
    return BenchmarkSpec(**values)


def test_result_folder_refuses_other_benchmark_and_restarts(tmp_path):
    folder = tmp_path / "bench"
    prepare_result_folder(folder, _spec(), restart=False, log=lambda _: None)
    (folder / "steps").mkdir()
    prepare_result_folder(folder, _spec(), restart=False, log=lambda _: None)  # same spec: resume
    assert (folder / "steps").is_dir()
    with pytest.raises(UserError, match="epochs: 2 there, 5 now"):
        prepare_result_folder(folder, _spec(epochs=5), restart=False, log=lambda _: None)
    prepare_result_folder(folder, _spec(epochs=5), restart=True, log=lambda _: None)
    assert not (folder / "steps").exists()
    assert json.loads((folder / "benchmark.json").read_text())["spec"]["epochs"] == 5
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("x")
    for restart in (False, True):
        with pytest.raises(UserError, match="benchmark.json"):
            prepare_result_folder(foreign, _spec(), restart=restart, log=lambda _: None)
    assert (foreign / "mine.txt").is_file()


def test_result_folder_name(tmp_path):
    options = RunOptions(output=tmp_path, date="2026-01-31")
    path = steps.result_folder(_spec(), options, ("DatasetA", "DatasetB"))
    assert path == tmp_path.resolve() / "DatasetA__DatasetB__2d__2026-01-31"
    with pytest.raises(UserError, match="YYYY-MM-DD"):
        steps.result_folder(_spec(), RunOptions(output=tmp_path, date="31.1.2026"), ("A", "B"))


def test_settings():
    assert harness.settings_of(RunOptions(output=Path("."), scarce_b=(2, 2))) == [("full-label", None),
                                                                                  ("scarce-b2", 2)]
    assert harness.settings_of(RunOptions(output=Path("."), scarce_b=(1,), full_label=False)) == [("scarce-b1", 1)]
    with pytest.raises(UserError, match="nothing to run"):
        harness.settings_of(RunOptions(output=Path("."), full_label=False))


def test_pair_without_test_cases_is_refused(nnunet_dirs, tmp_path):
    raw = nnunet_dirs["nnUNet_raw"]
    for name in ("Dataset951_A", "Dataset952_B"):
        (raw / name / "imagesTr").mkdir(parents=True)
        (raw / name / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "x": 1},
                                                             "file_ending": ".nii.gz"}))
    spec = _spec(datasets=("951", "952"), phantom=None)
    with pytest.raises(UserError, match="no held-out test cases"):
        harness.run_benchmark(spec, RunOptions(output=tmp_path / "out", device="cpu"), log=lambda _: None)


# -------------------------------------------------------------------------------------------------- command line


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli_preset_defaults_and_overrides(monkeypatch):
    monkeypatch.delenv("nnUNet_n_proc_DA", raising=False)
    spec, options = cli.build(_args())
    preset = config.PRESETS["cpu-small"]
    assert (spec.configuration, spec.epochs, spec.iters, spec.max_features) == \
        (preset.configuration, preset.epochs, preset.iters, preset.max_features)
    assert spec.phantom["num_train"] == preset.num_train and spec.datasets is None
    assert dict(options.env)["nnUNet_n_proc_DA"] == "2"
    spec, options = cli.build(_args("--preset", "full", "--epochs", "3", "--scarce-b", "2", "--folds", "0", "1",
                                    "--methods", "joint"))
    assert (spec.configuration, spec.epochs, spec.iters, spec.no_mirroring) == ("3d_fullres", 3, None, False)
    assert options.scarce_b == (2,) and options.folds == ("0", "1") and options.methods == ("joint",)
    spec, _ = cli.build(_args("--pair", "701", "702", "-c", "2d"))
    assert spec.datasets == ("701", "702") and spec.phantom is None and spec.configuration == "2d"
    with pytest.raises(UserError, match="phantom"):
        cli.build(_args("--pair", "701", "702", "--num-train", "5"))
    with pytest.raises(UserError, match="positive"):
        cli.build(_args("--epochs", "0"))


def test_cli_reports_user_errors(capsys):
    from nnunet_unpaired.cli import main

    assert main(["benchmark", "--methods", "no_such_method", "--output", "/nonexistent/x"]) == 2
    assert "unknown benchmark method 'no_such_method'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_tiny_benchmark_end_to_end_and_resume(tmp_path, monkeypatch):
    """Phantom, vanilla + joint, scarce-label B (2 cases), seed 0: outputs hold the numbers; a rerun does no work;
    on another machine (a new output folder) the record alone (--archive) resumes it: nothing is trained, predicted
    or evaluated again, the same report comes out."""
    monkeypatch.setenv("nnUNet_compile", "false")
    spec = _spec()
    options = RunOptions(output=tmp_path / "out", folds=("0",), seeds=(0,), methods=("vanilla", "joint"),
                         scarce_b=(2,), full_label=False, device="cpu", date="2026-01-01",
                         env=(("nnUNet_n_proc_DA", "0"), ("nnUNet_def_n_proc", "1"),
                              ("nnUNet_unpaired_skip_final_validation", "1")),
                         predict_processes=(0, 0), plan_processes=1, archive=tmp_path / "record",
                         archive_checkpoints=True)
    lines: list[str] = []
    result = harness.run_benchmark(spec, options, log=lines.append)
    assert result.name == "Dataset901_PhantomCT__Dataset902_PhantomMR__2d__2026-01-01"
    setting = result / "scarce-b2"

    splits_b = json.loads((setting / "nnunet" / "nnUNet_preprocessed" / "Dataset902_PhantomMR" /
                           "splits_final.json").read_text())
    splits_a = json.loads((setting / "nnunet" / "nnUNet_preprocessed" / "Dataset901_PhantomCT" /
                           "splits_final.json").read_text())
    assert [len(s["train"]) for s in splits_b] == [2] * 5 and [len(s["train"]) for s in splits_a] == [4] * 5

    # both methods train B on the 2 cases, A on all 4 of fold 0 (nnU-Net's own log lines)
    logs = setting / "seed_0" / "logs"
    assert "nnUNet_unpaired_seed=0" in (logs / "train__joint__fold_0.log").read_text()
    assert "This split has 2 training" in (logs / "train__vanilla__Dataset902_PhantomMR__fold_0.log").read_text()
    joint_log = (logs / "train__joint__fold_0.log").read_text()
    assert "This split has 4 training" in joint_log and "This split has 2 training" in joint_log
    # skipped final validation: the skip line once, no "Final validation of ..." header for A or B
    assert joint_log.count("final validation skipped") == 1 and "Final validation of" not in joint_log

    rows = report.read_csv(setting / "report" / "results.csv")
    assert {r["method"] for r in rows} == {"vanilla", "joint"}
    assert {r["modality"] for r in rows} == {"Dataset901_PhantomCT", "Dataset902_PhantomMR"}
    assert len(rows) == 2 * 2 * 2 * 4  # methods x modalities x test cases x structures
    assert all(0.0 <= r["dice"] <= 1.0 for r in rows if not math.isnan(r["dice"]))
    costs = {r["method"]: r for r in report.read_csv(setting / "report" / "costs.csv")}
    for method in ("vanilla", "joint"):
        assert costs[method]["seconds_per_iteration"] > 0 and costs[method]["peak_memory_mib"] > 0
        assert costs[method]["inference_seconds_per_case"] > 0 and costs[method]["timed_iterations"] > 0
    assert costs["vanilla"]["training_runs"] == 2 and costs["joint"]["training_runs"] == 1
    for name in ("results.md", "dice_per_structure_Dataset902_PhantomMR.png", "dice_boxplot_Dataset901_PhantomCT.png",
                 "training_loss_Dataset901_PhantomCT.png", "training_loss_Dataset902_PhantomMR.png"):
        assert (setting / "report" / name).stat().st_size > 0, name
    summary = (result / "results.md").read_text()
    assert "scarce-label B (N=2)" in summary and "| vanilla | joint |" in summary
    dice_a = f"{evaluation.mean_dice(rows, 'joint', 'Dataset901_PhantomCT'):.3f}"
    assert dice_a in summary
    assert any(line.startswith("      epoch 1:") for line in lines)  # progress of nnU-Net's epochs

    csv_text = (setting / "report" / "results.csv").read_text()
    steps = sorted(p.name for p in (setting / "steps").iterdir()) + sorted(
        p.name for p in (setting / "seed_0" / "steps").iterdir())
    # plan, splits; 3 trainings; predict and evaluate per method and modality; joint's class-feature agreement
    assert len(steps) == 2 + 3 + 4 + 4 + 1
    assert "## Paired differences with 95% intervals" in summary and "Δ vs vanilla [95% interval]" in summary
    mechanism = json.loads((setting / "seed_0" / "mechanism" / "joint__fold_0.json").read_text())
    assert -1.0 <= mechanism["agreement"] <= 1.0 and 0.0 <= mechanism["probe_a_to_b"] <= 1.0
    assert mechanism["stage"] == -2 and mechanism["cases"] == [2, 2]  # the test cases of each modality
    assert "#### Mechanism: class features shared across modalities" in summary
    assert f"{mechanism['agreement']:.3f}" in summary
    lines.clear()
    harness.run_benchmark(spec, options, log=lines.append)
    assert not [line for line in lines if line.startswith("[start]")], lines
    assert len([line for line in lines if line.startswith("[skip]")]) == len(steps) + 1  # + the phantom
    assert (setting / "report" / "results.csv").read_text() == csv_text

    # the record: no image, no model, no prediction (and, with archive_checkpoints, no checkpoint left: every training
    # finished, so their checkpoint_latest left the record); the loss curves of the 4 model folders (joint writes A, B)
    record = sorted(str(p.relative_to(tmp_path / "record")) for p in (tmp_path / "record").rglob("*") if p.is_file())
    assert not [f for f in record if f.endswith((".nii.gz", ".pth", ".npz", ".b2nd"))], record
    assert len([f for f in record if f.startswith("scarce-b2/seed_0/training_logging/")]) == 4
    costs_text = (setting / "report" / "costs.csv").read_text()
    lines.clear()
    other = harness.run_benchmark(spec, replace(options, output=tmp_path / "other_machine"), log=lines.append)
    started = [line.split()[1] for line in lines if line.startswith("[start]")]
    assert started == ["phantom", "plan", "splits"], lines  # rebuilt (their products are missing), nothing else
    assert len([line for line in lines if line.startswith("[redo]")]) == 3
    assert not list(other.rglob("*.pth"))  # no model trained
    assert (other / "scarce-b2" / "report" / "results.csv").read_text() == csv_text
    assert (other / "scarce-b2" / "report" / "costs.csv").read_text() == costs_text
    assert (other / "scarce-b2" / "report" / "training_loss_Dataset902_PhantomMR.png").stat().st_size > 0
    def numbers(text: str) -> list[str]:  # the summary without the folder and the steps' wall time (plan redone)
        return [line for line in text.split("## ", 1)[1].splitlines() if not line.startswith("Wall time")]

    assert numbers((other / "results.md").read_text()) == numbers(summary)


def test_update_docs_replaces_only_the_marked_section(tmp_path):
    """benchmarks/update_docs.py: the results section between the markers is replaced, the rest of the page kept."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "update_docs.py"
    spec = importlib.util.spec_from_file_location("update_docs", path)
    update_docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(update_docs)

    result = tmp_path / "A__B__2d__2026-01-01"
    (result / "full-label" / "report").mkdir(parents=True)
    (result / "full-label" / "report" / "results.csv").write_text("method\nvanilla\n")
    (result / "results.md").write_text("# Benchmark: A + B\n\n## Summary\n\n| a | b |\n")
    (result / "full-label" / "report" / "inference_speed.md").write_text("| dataset | method |\n| CT | eam |\n")
    docs = tmp_path / "docs" / "benchmarks.md"
    docs.parent.mkdir()
    start, end = update_docs.markers()
    docs.write_text(f"# Benchmarks\n\nintro\n\n{start}\nstale results\n{end}\n\nafter\n")
    assert update_docs.main([str(result), "--docs", str(docs), "--copy-to", str(tmp_path / "copy"),
                             "--note", "Machine: test."]) == 0
    text = docs.read_text()
    assert text.startswith("# Benchmarks\n\nintro\n\n") and text.endswith("\nafter\n") and "stale results" not in text
    assert "### Benchmark: A + B" in text and "#### Summary" in text and "Machine: test." in text
    assert "(../copy)" in text and (tmp_path / "copy" / "full-label" / "results.csv").is_file()
    assert "#### Inference cost, interleaved (full-label)" in text and "| CT | eam |" in text
    assert update_docs.main([str(tmp_path / "missing")]) == 1
    # an experiment's own section: only its markers are replaced, the pair section stays
    start, end = update_docs.markers("uda")
    docs.write_text(text + f"\n{start}\nold uda\n{end}\n")
    assert update_docs.main([str(result), "--docs", str(docs), "--section", "uda"]) == 0
    updated = docs.read_text()
    assert updated.startswith(text) and "old uda" not in updated and "run_cpu_small_uda.sh" in updated
    docs.write_text(text)  # no uda markers: refused with the lines to add
    with pytest.raises(SystemExit, match="cpu-small uda results: start"):
        update_docs.main([str(result), "--docs", str(docs), "--section", "uda"])


def test_every_docs_section_has_its_markers_and_its_script():
    """Each results section update_docs.py can write has its two markers in docs/benchmarks.md (once each) and names a
    script that exists, which passes that section to update_docs.py."""
    import importlib.util

    repo = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("update_docs", repo / "benchmarks" / "update_docs.py")
    update_docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(update_docs)
    docs = (repo / "docs" / "benchmarks.md").read_text()
    for name, (_, command) in update_docs.SECTIONS.items():
        start, end = update_docs.markers(name)
        assert docs.count(start) == 1 and docs.count(end) == 1 and docs.index(start) < docs.index(end), name
        script = repo / command.split()[-1]
        assert script.is_file(), command
        text = script.read_text()
        assert "update_docs.py" in text, command
        if script.name == "run_real.sh":  # the launcher of several experiments maps each to its section
            experiment = command.split()[0].split("=")[1] if "EXPERIMENT=" in command else "unpaired"
            assert "--section \"$SECTION\"" in text
            assert f"SECTION={name} " in text.split(f"    {experiment})", 1)[1].split(";;", 1)[0], name
        elif name:
            assert f"--section {name} " in text, name
        else:
            assert "--section" not in text, name


@pytest.mark.parametrize("experiment, expected", [
    ("", ["--methods vanilla joint ummkd eam --scarce-b 2 --no-full-label --seeds 0 1 2", "--output {out} ",
          "--archive {repo}/benchmarks/results/cpu-real-record --archive-checkpoints", "--section real ",
          "--copy-to {repo}/benchmarks/results/cpu-real "]),
    ("semi", ["--methods cmc cmc-labelled-only --semi-labelled 10 20 --seeds 0 1 2", "--output {out}/semi ",
              "--archive {repo}/benchmarks/results/cpu-real-semi-record", "--section real-semi ",
              "{out}/semi/Dataset951_AbdomenCT__Dataset952_AbdomenMR__2d__2026-01-02 ",
              "--copy-to {repo}/benchmarks/results/cpu-real-semi "]),
    ("uda", ["--methods source-only glua-global glua-local glua --uda-directions a2b b2a --seeds 0 1 2",
             "--output {out}/uda ", "--archive {repo}/benchmarks/results/cpu-real-uda-record", "--section real-uda ",
             "--copy-to {repo}/benchmarks/results/cpu-real-uda "]),
])
def test_run_real_composes_each_experiments_benchmark(tmp_path, experiment, expected):
    """benchmarks/run_real.sh: EXPERIMENT picks the benchmark's methods, options, result folder, record and docs
    section (a stand-in PYTHON prints the commands instead of running them); the data is linked, an unknown
    experiment is refused."""
    import os
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    realdata, out = tmp_path / "abdomen", tmp_path / "out"
    for name in ("Dataset951_AbdomenCT", "Dataset952_AbdomenMR"):
        (realdata / name).mkdir(parents=True)
    python = tmp_path / "python"
    python.write_text('#!/bin/sh\necho "PY $* "\n')
    python.chmod(0o755)
    env = {**os.environ, "PYTHON": str(python), "REALDATA": str(realdata), "NNUNET_UNPAIRED_BENCHMARK_OUTPUT": str(out),
           "BENCHMARK_DATE": "2026-01-02", "EXPERIMENT": experiment}
    run = subprocess.run(["bash", str(repo / "benchmarks" / "run_real.sh"), "--epochs", "1"], env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    benchmark, docs = run.stdout.splitlines()
    assert benchmark.startswith("PY -m nnunet_unpaired.cli benchmark --preset cpu-real -c 2d --pair 951 952 ")
    assert benchmark.endswith(" --epochs 1 ") and "--date 2026-01-02 " in benchmark
    assert docs.startswith(f"PY {repo}/benchmarks/update_docs.py ")
    for part in expected:
        part = part.format(out=out, repo=repo)
        assert part in benchmark or part in docs, part
    assert (out / "realdata_raw" / "Dataset951_AbdomenCT").resolve() == realdata / "Dataset951_AbdomenCT"
    env["EXPERIMENT"] = "multichannel"
    refused = subprocess.run(["bash", str(repo / "benchmarks" / "run_real.sh")], env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "EXPERIMENT must be unpaired, semi or uda" in refused.stderr
