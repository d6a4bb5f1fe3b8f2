"""The semi benchmark experiment (nnunet_unpaired/benchmark/semi.py), in seconds: nnU-Net's commands are replaced by
a fake that records what would have been trained on which data and split; the data steps (misalignment,
make-semisupervised), the evaluation and the report run for real on a small phantom."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_unpaired.benchmark import config, data, registry, report, semi, steps
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


def _unexplained(image: np.ndarray, label: np.ndarray) -> float:
    """Variance of the image left after subtracting each label's mean intensity."""
    image = image.astype(float)
    means = np.zeros_like(image)
    for value in np.unique(label):
        means[label == value] = image[label == value].mean()
    return float(((image - means) ** 2).mean())


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
    names = [s.name for s in semi.semi_settings((20, 10, 20), True)]
    assert names == ["semi-10", "semi-10-misaligned", "semi-20"]
    assert [s.name for s in semi.semi_settings((10,), False)] == ["semi-10"]
    for bad in ((), (0,), (100,)):
        with pytest.raises(UserError, match="semi-labelled|labelled share"):
            semi.semi_settings(bad, True)
    assert semi.semi_folds(("0", "3")) == ["0", "3"]
    for bad in (("all",), ("5",)):
        with pytest.raises(UserError, match="--folds"):
            semi.semi_folds(bad)
    lines: list[str] = []
    methods = semi.semi_methods([registry.get("vanilla"), registry.get("cmc")], lines.append)
    assert [m.name for m in methods] == ["vanilla", "joint", "cmc"] and "joint" in lines[0]
    with pytest.raises(UserError, match="kind 'semi'"):
        semi.semi_methods([registry.get("vanilla")], lines.append)


def test_rigid_transform_shifts_and_rotates_in_physical_units():
    label = np.zeros((2, 20, 20), np.uint8)
    label[:, 5:8, 5:8] = 1
    moved = semi.rigid_transform(label, (3.0, 2.0, 1.0), (1, 2), 0.0, [4.0, -1.0], order=0, cval=0)
    assert moved.dtype == np.uint8
    assert (np.argwhere(moved[0]).min(0) == [7, 4]).all() and (np.argwhere(moved[1]).max(0) == [9, 6]).all()
    turned = semi.rigid_transform(label, (1.0, 1.0, 1.0), (1, 2), 90.0, [0.0, 0.0], order=0, cval=0)
    assert turned.sum() == label.sum() and (np.argwhere(turned[0]).min(0) == [12, 5]).all()
    image = np.full((2, 20, 20), -1000, np.int16)
    out = semi.rigid_transform(image, (1.0, 1.0, 1.0), (1, 2), 10.0, [3.0, 3.0], order=1, cval=-1000.0)
    assert out.dtype == np.int16 and (out == -1000).all()
    assert semi.in_plane_axes((4.0, 1.8, 1.8)) == (1, 2) and semi.in_plane_axes((1.0, 1.0, 3.0)) == (0, 1)


def test_misalignment_moves_images_and_labels_together_and_leaves_the_rest(tmp_path):
    inp = _input(tmp_path)
    source = inp.b.raw
    before = _snapshot(source)
    first = semi.misalign_dataset(source, tmp_path / "raw" / "Dataset913_X", log=lambda _: None)
    again = semi.misalign_dataset(source, tmp_path / "other" / "Dataset913_X", log=lambda _: None)
    assert first == again  # seeded
    assert _snapshot(source) == before  # the source is only read
    copy = tmp_path / "raw" / "Dataset913_X"
    assert json.loads((copy / "dataset.json").read_text())[semi.MISALIGNED_KEY]["cases"] == first["cases"]
    for case, params in first["cases"].items():
        assert abs(params["rotation_degrees"]) <= semi.MAX_ROTATION_DEGREES and params["axes"] == [1, 2]
        image = _array(copy / "imagesTr" / f"{case}_0000.nii.gz")
        label = _array(copy / "labelsTr" / f"{case}.nii.gz")
        original = _array(source / "labelsTr" / f"{case}.nii.gz")
        assert not np.array_equal(label, original) and set(np.unique(label)) <= set(np.unique(original))
        # image and label moved alike: the moved label map explains the moved image (each structure has its own
        # intensity) about as well as the original label map explains the original image (interpolation blurs a
        # little), and better than the original label map explains the moved image
        fit = _unexplained(image, label)
        assert fit < 1.3 * _unexplained(_array(source / "imagesTr" / f"{case}_0000.nii.gz"), original)
        assert fit < _unexplained(image, original)
        for ours, theirs in ((copy / "imagesTr" / f"{case}_0000.nii.gz", source / "imagesTr" / f"{case}_0000.nii.gz"),
                             (copy / "labelsTr" / f"{case}.nii.gz", source / "labelsTr" / f"{case}.nii.gz")):
            assert ours.stat().st_ino != theirs.stat().st_ino
    for sub in ("imagesTs", "labelsTs"):  # test cases untouched: the very same files
        for path in (source / sub).iterdir():
            assert (copy / sub / path.name).read_bytes() == path.read_bytes()
    # a folder it did not write is never replaced
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "dataset.json").write_text("{}")
    with pytest.raises(UserError, match="not written by"):
        semi.misalign_dataset(source, foreign, log=lambda _: None)
    assert (foreign / "dataset.json").read_text() == "{}"


# ----------------------------------------------------------------------------------------------- the experiment


def test_semi_experiment_trains_each_method_on_its_cases(tmp_path, fake):
    inp = _input(tmp_path)
    raw_before = _snapshot(inp.result / "phantom_raw")
    summaries = semi.run_settings(inp)
    assert [s["name"] for s in summaries] == ["semi-20", "semi-20-misaligned"]
    assert _snapshot(inp.result / "phantom_raw") == raw_before

    # per setting: vanilla on A and on B, joint on A (+B), cmc on A (+B); fold 0
    assert [(t["trainer"], t["dataset"][:10]) for t in fake.trainings] == [
        ("nnUNetTrainerVanilla", "Dataset911"), ("nnUNetTrainerVanilla", "Dataset912"),
        ("nnUNetTrainerUnpairedJoint", "Dataset911"), ("nnUNetTrainerCMC", "Dataset911")] * 2
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

    aligned, misaligned = (inp.result / name / "nnunet" / "nnUNet_raw" for name in ("semi-20", "semi-20-misaligned"))
    names = sorted(p.name for p in misaligned.iterdir())
    assert names == ["Dataset911_PhantomCTSemi20", "Dataset912_PhantomMRMisalignedSemi20",
                     "Dataset913_PhantomMRMisaligned"]
    assert sorted(p.name for p in aligned.iterdir()) == ["Dataset911_PhantomCTSemi20", "Dataset912_PhantomMRSemi20"]
    source_b = inp.b.raw
    for raw in (aligned, misaligned):
        b = raw / ("Dataset912_PhantomMRMisalignedSemi20" if raw == misaligned else "Dataset912_PhantomMRSemi20")
        for sub in ("imagesTs", "labelsTs"):  # the test cases are the source's own files
            assert sorted(p.name for p in (b / sub).iterdir()) == sorted(p.name for p in (source_b / sub).iterdir())
            for path in (source_b / sub).iterdir():
                assert (b / sub / path.name).read_bytes() == path.read_bytes()
        # the same labelled cases in both settings; A identical, B moved only when misaligned
        record = json.loads((b / "dataset.json").read_text())[MARKER_KEY]
        case = record["labelled"][0]
        moved = _array(b / "labelsTr" / f"{case}.nii.gz")
        assert np.array_equal(moved, _array(source_b / "labelsTr" / f"{case}.nii.gz")) == (raw == aligned)
        assert (semi.MISALIGNED_KEY in json.loads((b / "dataset.json").read_text())) == (raw == misaligned)
    a_cases = [json.loads((raw / "Dataset911_PhantomCTSemi20" / "dataset.json").read_text())[MARKER_KEY]["labelled"]
               for raw in (aligned, misaligned)]
    assert a_cases[0] == a_cases[1]

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
    assert "Target of issue 7" not in headline  # only at 10 %
    assert "B misaligned" in summaries[1]["title"] and "rigid transform" in summaries[1]["note"]
    assert (inp.result / "semi-20" / "report" / "results.md").is_file()

    # resume: nothing trains again
    fake.trainings.clear()
    again = semi.run_settings(inp)
    assert fake.trainings == [] and [s["headline"] for s in again] == [s["headline"] for s in summaries]


def test_splits_are_written_before_every_training_also_on_resume(tmp_path, fake):
    inp = _input(tmp_path, semi_misaligned=False)
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
    assert "not met (Δ +4.0, +2.0 points)" in text


def test_refusals_before_anything_trains(tmp_path, fake):
    with pytest.raises(UserError, match="labels all of them"):
        semi.run_settings(_input(tmp_path / "all", semi_percent=(96,)))
    with pytest.raises(UserError, match="Fold 'all'"):
        semi.run_settings(_input(tmp_path / "fold", folds=("all",)))
    assert fake.trainings == []
    assert report.BASELINE == semi.BASELINE
