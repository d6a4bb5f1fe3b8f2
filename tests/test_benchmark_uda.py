"""Benchmark experiment ``uda`` (nnunet_unpaired/benchmark/uda.py) without training anything: nnU-Net's commands are
replaced by a fake that writes what they would write (plans, checkpoints, timing files, prediction folders) and the
metrics by fixed Dice values, so the experiment's logic runs in seconds: which trainers run on which dataset and in
which order, stage 1 once and before the methods that need it, only the target's test cases predicted, the gap and
cost arithmetic of the headline (hand-computed), the swapped datasets of b2a, resuming, refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from nnunet_unpaired.benchmark import harness, metrics, registry, steps, uda
from nnunet_unpaired.benchmark.config import BenchmarkSpec, Dataset, ExperimentInput, RunOptions
from nnunet_unpaired.benchmark.summary import summary_markdown
from nnunet_unpaired.benchmark.uda import MethodNumbers, gap_closed, headline_markdown
from nnunet_unpaired.errors import UserError
from nnunet_unpaired.training import budget
from nnunet_unpaired.training.glua import ENV_STYLE_CHECKPOINT

A_NAME, B_NAME = "Dataset801_FakeCT", "Dataset802_FakeMR"
LABELS = {"organ": 1, "wall": 2}
STYLE = "nnUNetTrainerGLUAStyle"
ALL_UDA = ("source-only", "glua-global", "glua-local", "glua")

#: median seconds per iteration (after the warm-up epoch) that the fake training writes per trainer
SECONDS = {"nnUNetTrainerVanilla": 0.25, "nnUNetTrainerSourceOnly": 0.25, STYLE: 0.5,
           "nnUNetTrainerGLUAGlobalOnly": 0.25, "nnUNetTrainerGLUALocalOnly": 0.5, "nnUNetTrainerGLUA": 0.75}
#: target -> method -> mean Dice that the fake evaluation gives every structure (per case: +-0.05 around it for organ)
DICE = {B_NAME: {"vanilla": 0.90, "source-only": 0.50, "glua-global": 0.60, "glua-local": 0.56, "glua": 0.80},
        A_NAME: {"vanilla": 0.80, "source-only": 0.40, "glua-global": 0.60, "glua-local": 0.45, "glua": 0.56}}


def _raw_dataset(raw: Path, name: str) -> Dataset:
    folder = raw / name
    prefix = name.split("_", 1)[1].lower()
    for sub in ("imagesTs", "labelsTs"):
        (folder / sub).mkdir(parents=True)
    for i in range(2):  # never read: the evaluation is faked
        (folder / "imagesTs" / f"{prefix}_{i:03d}_0000.nii.gz").write_bytes(b"")
        (folder / "labelsTs" / f"{prefix}_{i:03d}.nii.gz").write_bytes(b"")
    (folder / "dataset.json").write_text(json.dumps({"labels": {"background": 0, **LABELS},
                                                     "file_ending": ".nii.gz", "channel_names": {"0": "X"}}))
    return Dataset(name=name, id=int(name[7:10]), raw=folder, labels=dict(LABELS))


class FakeNNUNet:
    """Stands in for steps.run_command: records every command and writes what nnU-Net would write."""

    def __init__(self, skip_checkpoint_of: str | None = None):
        self.calls: list[tuple[str, list[str], dict]] = []  # (setting, command, environment)
        self.skip_checkpoint_of = skip_checkpoint_of

    def trains(self, setting: str | None = None) -> list[tuple[str, str]]:
        """(trainer, dataset) of every nnUNetv2_train call, in order."""
        return [(c[c.index("-tr") + 1], c[1]) for s, c, _ in self.calls
                if Path(c[0]).name == "nnUNetv2_train" and setting in (None, s)]

    def predicts(self, setting: str | None = None) -> list[tuple[str, str]]:
        """(trainer, dataset) of every nnUNetv2_predict call, in order."""
        return [(c[c.index("-tr") + 1], c[c.index("-d") + 1]) for s, c, _ in self.calls
                if Path(c[0]).name == "nnUNetv2_predict" and setting in (None, s)]

    def __call__(self, cmd, env, log_file, log=None):
        cmd = [str(c) for c in cmd]
        setting = Path(log_file).parents[1].name
        self.calls.append((setting, cmd, dict(env)))
        pre, results = Path(env["nnUNet_preprocessed"]), Path(env["nnUNet_results"])
        name = Path(cmd[0]).name
        if "plan-pair" in cmd:
            source, target = cmd[cmd.index("-d") + 1: cmd.index("-d") + 3]
            for dataset in (source, target):
                (pre / dataset / "gt_segmentations").mkdir(parents=True)
                (pre / dataset / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz"}))
                for i in range(6):
                    (pre / dataset / "gt_segmentations" / f"case_{i}.nii.gz").write_bytes(b"")
            conf = {"batch_size": 2, "patch_size": [32, 32], "architecture": {"arch_kwargs": {
                "features_per_stage": [4, 8]}}}
            for dataset in (source, target):  # plan-pair writes both plans and both data folders
                (pre / dataset / "nnUNetPlans.json").write_text(json.dumps({"configurations": {"2d": conf}}))
                (pre / dataset / "nnUNetPlans_2d").mkdir()
        elif name == "nnUNetv2_train":
            dataset, configuration, fold, trainer = cmd[1], cmd[2], cmd[3], cmd[cmd.index("-tr") + 1]
            if trainer in ("nnUNetTrainerGLUA", "nnUNetTrainerGLUAGlobalOnly"):
                # stage 2 finds stage 1 of THIS setting, named explicitly
                style = Path(env[ENV_STYLE_CHECKPOINT])
                assert style == results / dataset / f"{STYLE}__nnUNetPlans__{configuration}" / f"fold_{fold}" / \
                    "checkpoint_final.pth"
                assert style.is_file(), "stage 2 started before stage 1 finished"
            else:
                assert ENV_STYLE_CHECKPOINT not in env or trainer == STYLE or env[ENV_STYLE_CHECKPOINT] == "outside"
            partner = [d.name for d in (pre.parent / "nnUNet_raw").iterdir() if d.name != dataset][0]
            folders = [dataset] + ([] if trainer == "nnUNetTrainerVanilla" else [partner])  # the export for B
            logging = {"train_losses": [1.0, 0.5], "val_losses": [1.1, 0.6], "train_seg": [0.9, 0.4]}
            for d in folders:
                if trainer == self.skip_checkpoint_of:
                    continue
                folder = results / d / f"{trainer}__nnUNetPlans__{configuration}" / f"fold_{fold}"
                folder.mkdir(parents=True, exist_ok=True)
                torch.save({"logging": logging}, folder / "checkpoint_final.pth")
            seconds = [10.0] * 3 + [SECONDS[trainer]] * 3  # epoch 0 is the warm-up
            Path(env[budget.ENV_TIMING]).write_text(json.dumps({
                "iteration_seconds": seconds, "epochs": [0] * 3 + [1] * 3, "peak_memory_mib": 100.0,
                "peak_memory_kind": "process_peak_rss"}))
        elif name == "nnUNetv2_predict":
            Path(cmd[cmd.index("-o") + 1]).mkdir(parents=True)
        else:
            raise AssertionError(f"unexpected command {cmd}")


def fake_evaluate_folder(pred_dir, ref_dir, labels, file_ending=".nii.gz"):
    """Rows like metrics.evaluate_folder's, with the Dice of DICE for the method and dataset of ``pred_dir``."""
    method, dataset = Path(pred_dir).parts[-3], Path(pred_dir).parts[-2]
    value = DICE[dataset][method]
    rows = []
    for case, shift in (("c0", 0.05), ("c1", -0.05)):
        for structure, label in labels.items():
            dice = value + shift if structure == "organ" else value
            rows.append({"case": case, "structure": structure, "label": label, "dice": dice, "hd95": 1.0,
                         "assd": 0.5, "ref_voxels": 10, "pred_voxels": 10})
    return rows


@pytest.fixture
def experiment(tmp_path, monkeypatch):
    """``make(methods, directions, folds)`` -> (ExperimentInput, FakeNNUNet, log lines), nnU-Net faked."""
    raw = tmp_path / "raw"
    a, b = _raw_dataset(raw, A_NAME), _raw_dataset(raw, B_NAME)
    fake = FakeNNUNet()
    monkeypatch.setattr(steps, "run_command", fake)
    monkeypatch.setattr(metrics, "evaluate_folder", fake_evaluate_folder)
    monkeypatch.delenv(ENV_STYLE_CHECKPOINT, raising=False)
    spec = BenchmarkSpec(datasets=(A_NAME, B_NAME), configuration="2d", epochs=2, iters=3, val_iters=1,
                         no_mirroring=True, max_features=8, batch_size=2)

    def make(methods=("vanilla",) + ALL_UDA, directions=("a2b",), folds=("0",), seeds=(None,)):
        options = RunOptions(output=tmp_path / "out", folds=tuple(folds), device="cpu", uda_directions=directions,
                             seeds=tuple(seeds))
        lines: list[str] = []
        inp = ExperimentInput(spec, options, tmp_path / "out" / "result", a, b,
                              [registry.get(m) for m in methods], "cpu", lines.append)
        return inp, fake, lines

    return make


# ------------------------------------------------------------------------------------------------ the runs


def test_every_seed_trains_every_method_in_its_own_folder_with_its_seed(experiment):
    """--seeds: each seed trains every method (and stage 1) once, with nnUNet_unpaired_seed set, into its own model
    folders; plan and splits are shared; the rows carry the seed, and a rerun trains nothing."""
    inp, fake, _ = experiment(methods=("vanilla", "source-only", "glua"), seeds=(0, 1))
    [summary] = uda.run_settings(inp)
    trains = [(c[c.index("-tr") + 1], env.get("nnUNet_unpaired_seed"), env["nnUNet_results"])
              for _, c, env in fake.calls if Path(c[0]).name == "nnUNetv2_train"]
    assert [(t, s) for t, s, _ in trains] == [(trainer, seed) for seed in ("0", "1") for trainer in (
        "nnUNetTrainerVanilla", "nnUNetTrainerSourceOnly", STYLE, "nnUNetTrainerGLUA")]
    for _, seed, results in trains:
        assert Path(results).parts[-3:] == (f"seed_{seed}", "nnunet", "nnUNet_results")
    assert len([c for _, c, _ in fake.calls if "plan-pair" in c]) == 1
    assert {str(r["seed"]) for r in summary["rows"]} == {"0", "1"}
    assert {(str(c["method"]), str(c["seed"])) for c in summary["costs"]} == {
        (m, s) for m in ("vanilla", "source-only", "glua") for s in ("0", "1")}
    text = summary_markdown(inp.spec, inp.options, inp.result, "cpu", inp.a, inp.b, [summary])
    assert "Seeds: 0, 1" in text and "Δ vs vanilla [95% interval]" in text and "Δ vs source-only" in text
    assert "noise floor of vanilla on Dataset802_FakeMR: seed-to-seed std 0.000" in text
    before = len(fake.calls)
    uda.run_settings(inp)
    assert len(fake.calls) == before


def test_a2b_trains_in_order_stage_once_and_predicts_only_the_target(experiment):
    inp, fake, lines = experiment()
    [summary] = uda.run_settings(inp)
    setting = "uda-FakeCT-to-FakeMR"
    assert summary["name"] == setting
    plan = [c for _, c, _ in fake.calls if "plan-pair" in c][0]
    assert plan[plan.index("-d") + 1: plan.index("-d") + 3] == [A_NAME, B_NAME]  # the source is planned
    assert fake.trains(setting) == [("nnUNetTrainerVanilla", B_NAME),  # upper bound: the target's labels
                                    ("nnUNetTrainerSourceOnly", A_NAME),
                                    (STYLE, A_NAME),  # once, right before the first method that needs it
                                    ("nnUNetTrainerGLUAGlobalOnly", A_NAME),
                                    ("nnUNetTrainerGLUALocalOnly", A_NAME),
                                    ("nnUNetTrainerGLUA", A_NAME)]
    # every method predicts the target's test cases, nothing predicts the source's; stage 1 is not predicted
    assert fake.predicts(setting) == [("nnUNetTrainerVanilla", B_NAME), ("nnUNetTrainerSourceOnly", B_NAME),
                                      ("nnUNetTrainerGLUAGlobalOnly", B_NAME), ("nnUNetTrainerGLUALocalOnly", B_NAME),
                                      ("nnUNetTrainerGLUA", B_NAME)]
    predict = [c for _, c, _ in fake.calls if Path(c[0]).name == "nnUNetv2_predict"][0]
    assert predict[predict.index("-i") + 1] == str(inp.b.raw / "imagesTs")
    root = inp.result / setting
    assert (root / "nnunet" / "nnUNet_preprocessed" / B_NAME / "splits_final.json").is_file()
    assert {r["modality"] for r in summary["rows"]} == {B_NAME}
    assert {r["method"] for r in summary["rows"]} == {"vanilla", *ALL_UDA}
    # the loss curve of the stage-2 trainers is their segmentation term; stage 1 has a marker of its own
    assert (root / "steps" / "train__glua-style__fold_0.json").is_file()
    assert (root / "report" / "training_loss_Dataset802_FakeMR.png").is_file()

    # the headline: Dice, gap closed, cost with stage 1 (hand-computed from DICE and SECONDS)
    headline = summary["headline"]
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in headline.splitlines()
            if line.startswith("| ") and not line.startswith("| method")}
    assert rows["vanilla"][1:3] == ["0.900", "1 (upper bound)"]
    assert rows["source-only"][1:3] == ["0.500", "0 (lower bound)"]
    assert rows["glua (+ stage 1)"][1:3] == ["0.800", "0.75"]  # (0.8 - 0.5) / (0.9 - 0.5)
    assert rows["glua-global (+ stage 1)"][1:3] == ["0.600", "0.25"]
    assert rows["glua-local"][1:3] == ["0.560", "0.15"]
    assert rows["glua (+ stage 1)"][4:6] == ["1.25", "5.00"]  # (0.75 + 0.5) / 0.25
    assert rows["glua-global (+ stage 1)"][4:6] == ["0.75", "3.00"]  # (0.25 + 0.5) / 0.25
    assert rows["glua-local"][4:6] == ["0.5", "2.00"]
    assert rows["source-only"][4:6] == ["0.25", "1.00"]
    assert "**met**" in headline and "glua closes 75%" in headline
    assert "Δ Dice vs glua-global +0.200, Δ Dice vs glua-local +0.240" in headline
    # wall time: stage 1's marker added to glua's and glua-global's own
    numbers = {n.method: n for n in uda.method_numbers(uda.direction_context(inp, "a2b"),
                                                        uda.uda_methods(inp.methods), ("0",))}

    def seconds(run):
        return json.loads((root / "steps" / f"train__{run}.json").read_text())["seconds"]

    assert numbers["glua"].wall_seconds == pytest.approx(seconds("glua__fold_0") + seconds("glua-style__fold_0"))
    assert numbers["glua-local"].wall_seconds == pytest.approx(seconds("glua-local__fold_0"))
    assert numbers["vanilla"].wall_seconds == pytest.approx(seconds(f"vanilla__{B_NAME}__fold_0"))


def test_b2a_swaps_source_and_target(experiment):
    inp, fake, _ = experiment(directions=("b2a",))
    [summary] = uda.run_settings(inp)
    setting = "uda-FakeMR-to-FakeCT"
    assert summary["name"] == setting and "FakeMR -> FakeCT" in summary["title"]
    plan = [c for _, c, _ in fake.calls if "plan-pair" in c][0]
    assert plan[plan.index("-d") + 1: plan.index("-d") + 3] == [B_NAME, A_NAME]
    assert fake.trains() == [("nnUNetTrainerVanilla", A_NAME), ("nnUNetTrainerSourceOnly", B_NAME),
                             (STYLE, B_NAME), ("nnUNetTrainerGLUAGlobalOnly", B_NAME),
                             ("nnUNetTrainerGLUALocalOnly", B_NAME), ("nnUNetTrainerGLUA", B_NAME)]
    assert {dataset for _, dataset in fake.predicts()} == {A_NAME}
    assert {r["modality"] for r in summary["rows"]} == {A_NAME}
    # 0.56 closes (0.56 - 0.4) / (0.8 - 0.4) = 40 %, below half, and loses to glua-global: not met
    assert "**not met**" in summary["headline"] and "glua closes 40%" in summary["headline"]
    assert "Δ Dice vs glua-global -0.040" in summary["headline"]


def test_both_directions_have_their_own_trees_and_a_rerun_trains_nothing(experiment):
    inp, fake, lines = experiment(directions=("a2b", "b2a"))
    summaries = uda.run_settings(inp)
    assert [s["name"] for s in summaries] == ["uda-FakeCT-to-FakeMR", "uda-FakeMR-to-FakeCT"]
    for s in summaries:
        assert (inp.result / s["name"] / "nnunet" / "nnUNet_results").is_dir()
    assert len(fake.trains()) == 12
    fake.calls.clear()
    lines.clear()
    again = uda.run_settings(inp)
    assert fake.calls == [] and not [line for line in lines if line.startswith("[start]")]
    assert [s["headline"] for s in again] == [s["headline"] for s in summaries]


def test_only_the_methods_asked_for_plus_the_lower_bound(experiment):
    """vanilla + glua-local: source-only is added (logged), no stage 1 and no glua-global run."""
    inp, fake, lines = experiment(methods=("vanilla", "glua-local"))
    [summary] = uda.run_settings(inp)
    assert any("adding 'source-only'" in line for line in lines)
    assert fake.trains() == [("nnUNetTrainerVanilla", B_NAME), ("nnUNetTrainerSourceOnly", A_NAME),
                             ("nnUNetTrainerGLUALocalOnly", A_NAME)]
    assert "Target (issue 6)" not in summary["headline"]  # not every method of the target was run


def test_stage_one_runs_once_per_fold_and_glua_alone_needs_it(experiment):
    inp, fake, _ = experiment(methods=("vanilla", "glua", "glua-global"), folds=("0", "1"))
    uda.run_settings(inp)
    trainers = [t for t, _ in fake.trains()]
    assert trainers == ["nnUNetTrainerVanilla", "nnUNetTrainerSourceOnly", STYLE, "nnUNetTrainerGLUA",
                        "nnUNetTrainerGLUAGlobalOnly"] * 2
    folds = [c[3] for _, c, _ in fake.calls if Path(c[0]).name == "nnUNetv2_train"]
    assert folds == ["0"] * 5 + ["1"] * 5


def test_a_style_checkpoint_in_the_callers_environment_is_not_used(experiment, monkeypatch):
    monkeypatch.setenv(ENV_STYLE_CHECKPOINT, "outside")
    inp, fake, _ = experiment(methods=("vanilla", "glua"))
    uda.run_settings(inp)  # the fake asserts that glua gets this setting's stage-1 checkpoint


def test_missing_stage_one_checkpoint_is_refused(experiment):
    inp, fake, _ = experiment(methods=("vanilla", "glua"))
    fake.skip_checkpoint_of = STYLE
    with pytest.raises(UserError, match="checkpoint_final.pth is missing"):
        uda.run_settings(inp)
    assert [t for t, _ in fake.trains()][-1] == STYLE  # stage 2 was never started


@pytest.mark.parametrize("directions, message", [((), "is empty"), (("a2b", "c2d"), "unknown direction")])
def test_bad_directions_are_refused(experiment, directions, message):
    inp, fake, _ = experiment(directions=directions)
    with pytest.raises(UserError, match=message):
        uda.run_settings(inp)
    assert fake.calls == []


def test_methods_of_other_kinds_are_refused():
    with pytest.raises(UserError, match="kind 'uda'.*joint"):
        uda.uda_methods([registry.get("vanilla"), registry.get("joint"), registry.get("glua")])


def test_the_harness_finds_the_experiment():
    assert harness.experiment_runner("uda") is uda.run_settings
    methods = harness.resolve_methods(["glua", "glua-local"], log=lambda _: None)
    assert harness.pair_methods(methods) == []
    assert [m.name for m in harness.experiment_methods(methods)["uda"]] == ["vanilla", "glua", "glua-local"]


# ----------------------------------------------------------------------------------------- the arithmetic


def test_gap_closed():
    assert gap_closed(0.8, 0.5, 0.9) == pytest.approx(0.75)
    assert gap_closed(0.5, 0.5, 0.9) == 0.0 and gap_closed(0.9, 0.5, 0.9) == pytest.approx(1.0)
    assert gap_closed(0.4, 0.5, 0.9) == pytest.approx(-0.25)  # worse than source-only
    assert gap_closed(1.0, 0.5, 0.9) == pytest.approx(1.25)  # better than the upper bound
    assert math.isnan(gap_closed(0.8, 0.9, 0.5)) and math.isnan(gap_closed(0.8, 0.7, 0.7))
    assert math.isnan(gap_closed(math.nan, 0.5, 0.9))


def test_headline_table_by_hand():
    numbers = [MethodNumbers("vanilla", 0.9, 120.0, 0.2, 2.0),
               MethodNumbers("source-only", 0.6, 180.0, 0.2, 2.0),
               MethodNumbers("glua-local", 0.66, 300.0, 0.5, 3.0),
               MethodNumbers("glua", 0.72, 600.0, 0.9, math.nan, "nnUNetTrainerGLUAStyle")]
    text = headline_markdown("Dataset9_T", numbers)
    assert "| vanilla | 0.900 | 1 (upper bound) | 2.0 min | 0.2 | 1.00 | 2.0 |" in text
    assert "| source-only | 0.600 | 0 (lower bound) | 3.0 min | 0.2 | 1.00 | 2.0 |" in text
    assert "| glua-local | 0.660 | 0.20 | 5.0 min | 0.5 | 2.50 | 3.0 |" in text  # 0.06 / 0.3
    assert "| glua (+ stage 1) | 0.720 | 0.40 | 10.0 min | 0.9 | 4.50 | n/a |" in text  # 0.12 / 0.3
    assert "Target (issue 6)" not in text  # glua-global missing
    no_gap = headline_markdown("T", [MethodNumbers("vanilla", 0.5, 60, 0.2, 1), MethodNumbers("source-only", 0.6,
                                                                                             60, 0.2, 1),
                                     MethodNumbers("glua", 0.7, 60, 0.4, 1, STYLE)])
    assert "| glua (+ stage 1) | 0.700 | n/a |" in no_gap and "no gap to close" in no_gap


def test_translation_phase_cost_is_reported_on_its_own(tmp_path):
    import json as _json
    from types import SimpleNamespace

    from nnunet_unpaired.benchmark.uda import TRANSLATION_COST_FILE, translation_phase_cost

    folders = {}

    def model_folder(dataset, trainer, fold):
        return folders.setdefault((ctx.seed, trainer, fold), tmp_path / f"seed{ctx.seed}_{trainer}_{fold}")

    ctx = SimpleNamespace(seed=0, options=SimpleNamespace(seeds=(0, 1)), a="A", model_folder=model_folder)
    ctx.for_seed = lambda seed: (setattr(ctx, "seed", seed), ctx)[1]
    assert translation_phase_cost(ctx, ["0"]) is None  # no stage 1 ran
    for seed, runs in ((0, [{"steps": 600, "seconds": 500.0}, {"steps": 400, "seconds": 460.0}]),
                       (1, [{"steps": 1000, "seconds": 1000.0}])):  # seed 0 resumed once: its runs add up
        ctx.seed = seed
        folder = model_folder("A", STYLE, "0")
        folder.mkdir(parents=True)
        (folder / TRANSLATION_COST_FILE).write_text(_json.dumps({"runs": runs}))
    steps, seconds = translation_phase_cost(ctx, ["0"])
    assert steps == 1000 and seconds == pytest.approx(980.0)
    numbers = [MethodNumbers("vanilla", 0.9, 60, 0.2, 1), MethodNumbers("source-only", 0.5, 60, 0.2, 1),
               MethodNumbers("glua", 0.7, 60, 0.4, 1, STYLE)]
    text = headline_markdown("T", numbers, (steps, seconds))
    assert "translation phase on its own" in text and "1000 steps in 16.3 min per stage-1 run (0.98 s / step)" in text
    assert "translation phase" not in headline_markdown("T", numbers)


def test_headline_verdict_needs_half_the_gap_and_both_ablations_beaten():
    def verdict(glua, global_only, local_only):
        numbers = [MethodNumbers("vanilla", 0.9, 60, 0.2, 1), MethodNumbers("source-only", 0.5, 60, 0.2, 1),
                   MethodNumbers("glua-global", global_only, 60, 0.3, 1, STYLE),
                   MethodNumbers("glua-local", local_only, 60, 0.3, 1), MethodNumbers("glua", glua, 60, 0.4, 1, STYLE)]
        return headline_markdown("T", numbers).splitlines()[-1]

    assert "**met**" in verdict(0.75, 0.6, 0.6)  # 62.5 %, beats both
    assert "**not met**" in verdict(0.65, 0.6, 0.6)  # 37.5 %
    assert "**not met**" in verdict(0.75, 0.8, 0.6)  # half closed but global-only is better
    assert "**not met**" in verdict(0.75, 0.6, 0.75)  # a tie is not a win


def test_run_script_is_valid_bash():
    import subprocess

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "run_cpu_small_uda.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    assert "--section uda" in text and "source-only glua-global glua-local glua" in text
