"""The semi benchmark experiment (nnunet_unpaired/benchmark/semi.py), in seconds: nnU-Net's commands are replaced by
a fake that records what would have been trained on which data and split; the data step (make-semisupervised), the
evaluation and the report run for real on a small phantom."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_unpaired.benchmark import config, data, registry, report, semi, steps
from nnunet_unpaired.benchmark.comparison import paired_difference
from nnunet_unpaired.benchmark.config import BenchmarkSpec, ExperimentInput, RunOptions
from nnunet_unpaired.errors import UserError
from nnunet_unpaired.semisupervised import MARKER_KEY

IGNORE = 5  # the phantom's labels are 0..4; the semi copies add "ignore": 5


# ----------------------------------------------------------------------------------------------- helpers


def _spec() -> BenchmarkSpec:
    return BenchmarkSpec(datasets=None, configuration="2d", epochs=1, iters=2, val_iters=1, no_mirroring=True,
                         max_features=8, batch_size=2,
                         phantom=config.phantom_spec(10, 2, field_of_view_mm=(48.0, 48.0, 24.0)))


def _input(tmp_path: Path, methods=("cmc",), **options) -> ExperimentInput:
    spec = _spec()
    opts = RunOptions(output=tmp_path / "out", device="cpu", **{"semi_percent": (20,), **options})
    result = tmp_path / "out" / "result"
    steps.prepare_result_folder(result, spec, False, lambda _: None)
    a, b = data.prepare_data(spec, result, lambda _: None)
    chosen = [registry.get("vanilla")] + [registry.get(m) for m in methods]
    return ExperimentInput(spec, opts, result, a, b, chosen, "cpu", lambda _: None)


def _snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(folder)): (hashlib.sha1(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


class FakeNNUNet:
    """Stands in for steps.run_command: plan-pair, nnUNetv2_train and nnUNetv2_predict, recording each training
    with the splits_final.json its datasets had at that moment."""

    def __init__(self, perfect: set[str]):
        self.trainings: list[dict] = []
        self.perfect = perfect  # trainers whose predictions equal the reference; the others predict background

    def __call__(self, cmd, env, log_file, log=None):
        cmd = [str(c) for c in cmd]
        pre, res = Path(env["nnUNet_preprocessed"]), Path(env["nnUNet_results"])
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        if "plan-pair" in cmd:
            names = cmd[cmd.index("-d") + 1: cmd.index("-d") + 3]
            for name in names:  # like nnU-Net: the raw folder's splits_final.json is copied by the planner
                (pre / name).mkdir(parents=True, exist_ok=True)
                raw_splits = Path(env["nnUNet_raw"]) / name / "splits_final.json"
                if raw_splits.is_file():
                    (pre / name / "splits_final.json").write_text(raw_splits.read_text())
                conf = {"batch_size": 2, "patch_size": [32, 32],
                        "architecture": {"arch_kwargs": {"features_per_stage": [8, 8]}}}
                (pre / name / "nnUNetPlans.json").write_text(json.dumps({"configurations": {"2d": conf}}))
        elif Path(cmd[0]).name == "nnUNetv2_train":
            import torch

            dataset, fold, trainer = cmd[1], cmd[3], cmd[cmd.index("-tr") + 1]
            partners = sorted(p.name for p in pre.iterdir()) if trainer != "nnUNetTrainerVanilla" else [dataset]
            self.trainings.append({"dataset": dataset, "fold": fold, "trainer": trainer, "resume": "--c" in cmd,
                                   "splits": {n: json.loads((pre / n / "splits_final.json").read_text())
                                              for n in partners},
                                   "raw": Path(env["nnUNet_raw"])})
            for name in partners:
                folder = res / name / f"{trainer}__nnUNetPlans__2d" / f"fold_{fold}"
                folder.mkdir(parents=True, exist_ok=True)
                logging = {"train_losses": [1.0, 0.5], "val_losses": [1.0, 0.6], "train_seg_A": [0.9, 0.4],
                           "train_seg_B": [0.8, 0.3]}
                torch.save({"logging": logging}, folder / "checkpoint_final.pth")
                if trainer == "nnUNetTrainerCMC":
                    (folder.parent / "plans.json").write_text(json.dumps({"cmc": {"csc_weight": 0.1}}))
        elif Path(cmd[0]).name == "nnUNetv2_predict":
            images, out = Path(cmd[cmd.index("-i") + 1]), Path(cmd[cmd.index("-o") + 1])
            trainer = cmd[cmd.index("-tr") + 1]
            out.mkdir(parents=True)
            for image in sorted(images.iterdir()):
                case = image.name[: -len("_0000.nii.gz")]
                reference = sitk.ReadImage(str(images.parent / "labelsTs" / f"{case}.nii.gz"))
                if trainer not in self.perfect:
                    reference = reference * 0
                sitk.WriteImage(reference, str(out / f"{case}.nii.gz"))
        else:
            raise AssertionError(f"unexpected command {cmd}")


@pytest.fixture
def fake(monkeypatch):
    runner = FakeNNUNet(perfect={"nnUNetTrainerCMC", "nnUNetTrainerUnpairedJoint"})
    monkeypatch.setattr(steps, "run_command", runner)
    return runner


# ----------------------------------------------------------------------------------------------- pure parts


def test_semi_splits_train_on_labelled_validate_per_method():
    baseline = semi.semi_splits(["c3", "c1"], ["c2", "c4", "c0"], semi=False)
    cmc = semi.semi_splits(["c3", "c1"], ["c2", "c4", "c0"], semi=True)
    assert len(baseline) == len(cmc) == semi.NUM_FOLDS
    assert all(s == {"train": ["c1", "c3"], "val": ["c1", "c3"]} for s in baseline)
    assert all(s == {"train": ["c1", "c3"], "val": ["c0", "c1", "c2", "c3", "c4"]} for s in cmc)
    with pytest.raises(UserError, match="at least one labelled"):
        semi.semi_splits([], ["c0"], semi=True)


def test_settings_folds_and_methods_are_checked():
    settings = semi.semi_settings((20, 10, 20))
    assert [s.name for s in settings] == ["semi-10", "semi-20"]
    assert [s.title for s in settings] == ["semi 10 % labelled", "semi 20 % labelled"]
    assert [s.name for s in semi.semi_settings((10,))] == ["semi-10"]
    for bad in ((), (0,), (100,)):
        with pytest.raises(UserError, match="semi-labelled|labelled share"):
            semi.semi_settings(bad)
    assert semi.semi_folds(("0", "3")) == ["0", "3"]
    for bad in (("all",), ("5",)):
        with pytest.raises(UserError, match="--folds"):
            semi.semi_folds(bad)
    lines: list[str] = []
    methods = semi.semi_methods([registry.get("vanilla"), registry.get("cmc")], lines.append)
    assert [m.name for m in methods] == ["vanilla", "joint", "cmc"] and "joint" in lines[0]
    with pytest.raises(UserError, match="kind 'semi'"):
        semi.semi_methods([registry.get("vanilla")], lines.append)


# ----------------------------------------------------------------------------------------------- the experiment


def test_semi_experiment_trains_each_method_on_its_cases(tmp_path, fake):
    inp = _input(tmp_path)
    raw_before = _snapshot(inp.result / "phantom_raw")
    summaries = semi.run_settings(inp)
    assert [s["name"] for s in summaries] == ["semi-20"]
    assert _snapshot(inp.result / "phantom_raw") == raw_before

    # per setting: vanilla on A and on B, joint on A (+B), cmc on A (+B); fold 0
    assert [(t["trainer"], t["dataset"][:10]) for t in fake.trainings] == [
        ("nnUNetTrainerVanilla", "Dataset911"), ("nnUNetTrainerVanilla", "Dataset912"),
        ("nnUNetTrainerUnpairedJoint", "Dataset911"), ("nnUNetTrainerCMC", "Dataset911")]
    assert {t["fold"] for t in fake.trainings} == {"0"}
    for training in fake.trainings:
        for name, splits in training["splits"].items():
            record = json.loads((training["raw"] / name / "dataset.json").read_text())[MARKER_KEY]
            assert record["percent"] == 20 and len(record["labelled"]) == 2 and len(record["unlabelled"]) == 8
            # every method trains on the labelled cases; the baselines validate on them, CMC gets the unlabelled ones
            # as validation cases, which its trainer moves into training
            assert all(s["train"] == record["labelled"] for s in splits)
            expected = record["unlabelled"] if training["trainer"] == "nnUNetTrainerCMC" else []
            assert all(sorted(set(s["val"]) - set(s["train"])) == expected for s in splits)
            assert set(record["labelled"]) <= set(splits[0]["val"])
            for case in splits[0]["train"]:
                label = _array(training["raw"] / name / "labelsTr" / f"{case}.nii.gz")
                assert (label != IGNORE).any() and (label != 0).any()
            for case in record["unlabelled"]:
                assert (_array(training["raw"] / name / "labelsTr" / f"{case}.nii.gz") == IGNORE).all()

    raw = inp.result / "semi-20" / "nnunet" / "nnUNet_raw"
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset911_PhantomCTSemi20", "Dataset912_PhantomMRSemi20"]
    for copy, source in ((raw / "Dataset911_PhantomCTSemi20", inp.a.raw),
                         (raw / "Dataset912_PhantomMRSemi20", inp.b.raw)):
        for sub in ("imagesTs", "labelsTs"):  # the test cases are the source's own files
            assert sorted(p.name for p in (copy / sub).iterdir()) == sorted(p.name for p in (source / sub).iterdir())
            for path in (source / sub).iterdir():
                assert (copy / sub / path.name).read_bytes() == path.read_bytes()
        # a labelled training case is the source's case, unmoved
        case = json.loads((copy / "dataset.json").read_text())[MARKER_KEY]["labelled"][0]
        assert np.array_equal(_array(copy / "labelsTr" / f"{case}.nii.gz"),
                              _array(source / "labelsTr" / f"{case}.nii.gz"))

    # evaluation: the test cases of both modalities, without the ignore label as a structure
    summary = summaries[0]
    assert {r["structure"] for r in summary["rows"]} == {"organ_a", "organ_b", "wall", "cavity"}
    assert {(r["method"], r["modality"][:10]) for r in summary["rows"]} == {
        (m, d) for m in ("vanilla", "joint", "cmc") for d in ("Dataset911", "Dataset912")}
    assert len({r["case"] for r in summary["rows"]}) == 4  # 2 test cases per modality
    headline = summary["headline"]
    assert "| vanilla |" in headline and "| joint |" in headline and "| cmc |" in headline
    assert "Δ +1.000" in headline  # the fake's cmc predictions are perfect, vanilla's empty
    assert "CMC settings" in headline and "csc_weight 0.1" in headline
    assert "Target of issue 17" not in headline  # only at 10 %
    assert summary["title"] == "semi 20 % labelled" and "rigid transform" not in summary["note"]
    assert (inp.result / "semi-20" / "report" / "results.md").is_file()

    # resume: nothing trains again
    fake.trainings.clear()
    again = semi.run_settings(inp)
    assert fake.trainings == [] and [s["headline"] for s in again] == [s["headline"] for s in summaries]


def test_splits_are_written_before_every_training_also_on_resume(tmp_path, fake):
    inp = _input(tmp_path)
    semi.run_settings(inp)
    pre = inp.result / "semi-20" / "nnunet" / "nnUNet_preprocessed" / "Dataset911_PhantomCTSemi20"
    wanted = json.loads((pre / "splits_final.json").read_text())  # the last method's: cmc
    assert len(wanted[0]["val"]) == 10
    for method in ("joint", "cmc"):  # an interrupted training: its marker is gone, the split file is someone else's
        (inp.result / "semi-20" / "steps" / f"train__{method}__fold_0.json").unlink()
    (pre / "splits_final.json").write_text(json.dumps([{"train": ["x"], "val": ["y"]}]))
    fake.trainings.clear()
    semi.run_settings(inp)
    assert [t["trainer"] for t in fake.trainings] == ["nnUNetTrainerUnpairedJoint", "nnUNetTrainerCMC"]
    assert len(fake.trainings[0]["splits"]["Dataset911_PhantomCTSemi20"][0]["val"]) == 2
    assert json.loads((pre / "splits_final.json").read_text()) == wanted


def test_target_line_at_ten_percent():
    rows = [{"method": m, "modality": mod, "structure": "s", "dice": d, "fold": "0", "case": "c"}
            for m, mod, d in (("vanilla", "A", 0.5), ("vanilla", "B", 0.6), ("cmc", "A", 0.54), ("cmc", "B", 0.62))]
    costs = [{"method": "vanilla", "training_wall_seconds": 60.0, "seconds_per_iteration": 0.2},
             {"method": "vanilla", "training_wall_seconds": 60.0, "seconds_per_iteration": 0.2},
             {"method": "cmc", "training_wall_seconds": 240.0, "seconds_per_iteration": math.nan}]
    text = semi.headline_table(rows, costs, ["vanilla", "cmc"], ["A", "B"], target=True)
    assert "| vanilla | 0.500 | 0.600 | 2.0 min | 1.00x | 0.200 | 1.00x |" in text
    assert "| cmc | 0.540 (Δ +0.040) | 0.620 (Δ +0.020) | 4.0 min | 2.00x | n/a | n/a |" in text
    # one test case and no joint: no interval, so the target of issue 17 is not met
    assert "Target of issue 17" in text and "): not met." in text
    assert "Δ vs vanilla +0.040 [interval n/a: 1 run(s) x 1 case(s)], Δ vs joint n/a" in text
    assert semi.headline_table(rows, costs, ["vanilla", "cmc"], ["A", "B"]).count("Target") == 0  # not at 10 %


def _target_rows(scores: dict[str, dict[str, list[float]]]) -> list[dict]:
    """Metric rows: method -> modality -> one Dice per test case (one structure, one run)."""
    return [{"method": m, "modality": mod, "structure": "s", "dice": d, "fold": "0", "seed": None, "case": f"c{i}"}
            for m, per_modality in scores.items() for mod, values in per_modality.items()
            for i, d in enumerate(values)]


def test_target_line_needs_every_interval_above_zero_and_cmc_above_labelled_only():
    vanilla = {"A": [0.50, 0.60, 0.55, 0.40], "B": [0.50, 0.45, 0.60, 0.70]}
    joint = {"A": [0.60, 0.62, 0.58, 0.50], "B": [0.60, 0.55, 0.70, 0.80]}
    labelled_only = {"A": [0.60] * 4, "B": [0.60] * 4}
    above = {"A": [0.70, 0.75, 0.72, 0.65], "B": [0.65, 0.62, 0.75, 0.84]}  # above both on every case
    mixed = {"A": above["A"], "B": [0.65, 0.50, 0.71, 0.80]}  # B vs joint: +0.05, -0.05, +0.01, 0.00
    met = semi.target_line(_target_rows({"vanilla": vanilla, "joint": joint, "cmc": above,
                                         "cmc-labelled-only": labelled_only}), ["A", "B"])
    assert "Target of issue 17" in met and "): met." in met and "not" not in met.split("):")[1]
    assert "mean Dice cmc-labelled-only 0.600 < cmc 0.705" in met
    d = paired_difference(_target_rows({"joint": joint, "cmc": mixed}), "cmc", "joint", "B")
    assert d.low < 0 < d.high  # the interval vs joint on B contains zero
    not_met = semi.target_line(_target_rows({"vanilla": vanilla, "joint": joint, "cmc": mixed,
                                             "cmc-labelled-only": labelled_only}), ["A", "B"])
    assert "): not met." in not_met and "B: Δ vs vanilla" in not_met
    assert f"Δ vs joint {d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}]" in not_met
    # every interval above zero, but cmc-labelled-only not below cmc on B
    worse = semi.target_line(_target_rows({"vanilla": vanilla, "joint": joint, "cmc": above,
                                           "cmc-labelled-only": {"A": [0.6] * 4, "B": [0.9] * 4}}), ["A", "B"])
    assert "): not met." in worse and "mean Dice cmc-labelled-only 0.900 not < cmc 0.715" in worse
    # cmc-labelled-only not run: only the intervals decide, and the line says so
    rows = _target_rows({"vanilla": vanilla, "joint": joint, "cmc": above})
    alone = semi.target_line(rows, ["A", "B"], ablation=False)
    assert "): met." in alone and "not checked: it was not run" in alone
    costs = [{"method": m, "training_wall_seconds": 60.0, "seconds_per_iteration": 0.2}
             for m in ("vanilla", "joint", "cmc")]
    assert alone in semi.headline_table(rows, costs, ["vanilla", "joint", "cmc"], ["A", "B"], target=True)


def test_refusals_before_anything_trains(tmp_path, fake):
    with pytest.raises(UserError, match="labels all of them"):
        semi.run_settings(_input(tmp_path / "all", semi_percent=(96,)))
    with pytest.raises(UserError, match="Fold 'all'"):
        semi.run_settings(_input(tmp_path / "fold", folds=("all",)))
    assert fake.trainings == []
    assert report.BASELINE == semi.BASELINE
