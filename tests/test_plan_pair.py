"""plan-pair: shared plans with B's own normalization, the pairing record, and the refusals."""

import json
import shutil

import pytest

from nnunet_unpaired.errors import UserError
from nnunet_unpaired.pairing import PAIRING_KEY, plans_differences, read_pairing
from nnunet_unpaired.plan_pair import partner_plans, plan_pair, sampled_fingerprint_extractor, shrink_plans

from pairs import FINGERPRINT_SAMPLES, IDS, NAMES, set_env


@pytest.fixture
def planned(planned_pair):
    return planned_pair


def _plans(env, name):
    with open(f"{env['nnUNet_preprocessed']}/{name}/nnUNetPlans.json") as f:
        return json.load(f)


def test_shared_topology_own_normalization(planned):
    _, env = planned
    a, b = _plans(env, NAMES[0]), _plans(env, NAMES[1])
    for c in ("2d", "3d_fullres"):
        assert plans_differences(a, b, c) == []
        assert a["configurations"][c]["normalization_schemes"] == ["CTNormalization"]
        assert b["configurations"][c]["normalization_schemes"] == ["ZScoreNormalization"]
        assert max(a["configurations"][c]["architecture"]["arch_kwargs"]["features_per_stage"]) == 16
        assert a["configurations"][c]["batch_size"] == 4
    fp_b = json.load(open(f"{env['nnUNet_preprocessed']}/{NAMES[1]}/dataset_fingerprint.json"))
    assert b["foreground_intensity_properties_per_channel"] == fp_b["foreground_intensity_properties_per_channel"]
    assert a["foreground_intensity_properties_per_channel"] != b["foreground_intensity_properties_per_channel"]
    assert b["dataset_name"] == NAMES[1]


def test_pairing_record_both_ways(planned):
    _, env = planned
    a, b = _plans(env, NAMES[0]), _plans(env, NAMES[1])
    assert read_pairing(a).partner == NAMES[1] and a[PAIRING_KEY]["role"] == "A"
    assert read_pairing(b).partner == NAMES[0] and b[PAIRING_KEY]["role"] == "B"
    # the session's pair was planned with --fingerprint-samples (pairs.make_planned_pair): recorded in both
    assert a[PAIRING_KEY]["fingerprint_samples"] == b[PAIRING_KEY]["fingerprint_samples"] == FINGERPRINT_SAMPLES


def test_sampled_fingerprint_extractor(planned, monkeypatch):
    """--fingerprint-samples sets nnU-Net's total of foreground intensity draws on its own extractor; nothing else."""
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor

    _, env = planned
    set_env(env, monkeypatch)
    stock = DatasetFingerprintExtractor(IDS[0], 1)
    sampled = sampled_fingerprint_extractor(1234)(IDS[0], 1)
    assert isinstance(sampled, DatasetFingerprintExtractor) and stock.num_foreground_voxels_for_intensitystats == 10e7
    assert sampled.num_foreground_voxels_for_intensitystats == 1234
    assert {k: v for k, v in vars(sampled).items() if k != "num_foreground_voxels_for_intensitystats"} == \
        {k: v for k, v in vars(stock).items() if k != "num_foreground_voxels_for_intensitystats"}
    for bad in (0, -5):
        with pytest.raises(UserError, match="--fingerprint-samples must be a positive"):
            sampled_fingerprint_extractor(bad)


def test_both_preprocessed_with_own_dataset_json(planned):
    _, env = planned
    for name in NAMES:
        base = f"{env['nnUNet_preprocessed']}/{name}"
        assert shutil.os.path.isdir(f"{base}/nnUNetPlans_2d") and shutil.os.path.isdir(f"{base}/nnUNetPlans_3d_fullres")
        ds = json.load(open(f"{base}/dataset.json"))
        assert ds["channel_names"]["0"] == ("CT" if name == NAMES[0] else "MR")


@pytest.mark.slow
def test_rerun_is_safe_and_raw_untouched(planned, tmp_path, monkeypatch):
    """A second plan-pair over planned datasets (a copy: other tests read the session's pair) replaces the plans and
    the preprocessed data without touching raw (2d only: the rerun's cost is preprocessing, the same for every configuration)."""
    root, env = planned
    raw = _copy_raw(root, tmp_path)
    shutil.copytree(env["nnUNet_preprocessed"], tmp_path / "pre")
    _env(monkeypatch, tmp_path, raw)
    raw_before = {p: p.stat().st_mtime_ns for p in raw.rglob("*") if p.is_file()}
    plans_file = tmp_path / "pre" / NAMES[1] / "nnUNetPlans.json"
    plans_file.write_text(plans_file.read_text().replace('"ZScoreNormalization"', '"RescaleTo01Normalization"'))
    plan_pair(str(IDS[0]), str(IDS[1]), ["2d"], max_features=16, batch_size=4, num_processes=1, verify=False,
              fingerprint_samples=FINGERPRINT_SAMPLES, log=lambda *a: None)
    raw_after = {p: p.stat().st_mtime_ns for p in raw.rglob("*") if p.is_file()}
    assert raw_before == raw_after
    env_copy = dict(env, nnUNet_preprocessed=str(tmp_path / "pre"))
    again_a, again_b = _plans(env_copy, NAMES[0]), _plans(env_copy, NAMES[1])
    assert plans_differences(again_a, again_b, "2d") == []
    assert again_b["configurations"]["2d"]["normalization_schemes"] == ["ZScoreNormalization"]  # rewritten
    assert again_a["configurations"]["2d"] == _plans(env, NAMES[0])["configurations"]["2d"]  # same data, same plan
    for name in NAMES:  # the same seeded draws: the same fingerprint as the session's CLI run
        assert (tmp_path / "pre" / name / "dataset_fingerprint.json").read_text() == \
            open(f"{env['nnUNet_preprocessed']}/{name}/dataset_fingerprint.json").read()


def test_partner_plans_is_pure():
    a = {"dataset_name": "A", "image_reader_writer": "SimpleITKIO",
         "foreground_intensity_properties_per_channel": {"0": {"mean": 1}},
         "configurations": {"2d": {"normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
                                   "patch_size": [8, 8]}}}
    b = partner_plans(a, "B", {"schemes": ["ZScoreNormalization"], "use_mask": [True]}, "NibabelIO",
                      {"foreground_intensity_properties_per_channel": {"0": {"mean": 7}}})
    assert a["configurations"]["2d"]["normalization_schemes"] == ["CTNormalization"]  # not mutated
    assert b["configurations"]["2d"] == {"normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [True],
                                         "patch_size": [8, 8]}
    assert b["dataset_name"] == "B" and b["image_reader_writer"] == "NibabelIO"
    assert b["foreground_intensity_properties_per_channel"] == {"0": {"mean": 7}}


def test_shrink_plans():
    plans = {"configurations": {"2d": {"batch_size": 12, "architecture": {"arch_kwargs": {
        "features_per_stage": [32, 64, 128, 256]}}}}}
    shrink_plans(plans, ["2d"], 64, 3)
    assert plans["configurations"]["2d"]["architecture"]["arch_kwargs"]["features_per_stage"] == [32, 64, 64, 64]
    assert plans["configurations"]["2d"]["batch_size"] == 3


def _copy_raw(root, tmp_path):
    raw = tmp_path / "nnUNet_raw"
    shutil.copytree(root / "nnUNet_raw", raw)
    return raw


def _env(monkeypatch, tmp_path, raw):
    monkeypatch.setenv("nnUNet_raw", str(raw))
    (tmp_path / "pre").mkdir(exist_ok=True)
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))


def test_refuses_different_labels(planned, tmp_path, monkeypatch):
    root, _ = planned
    raw = _copy_raw(root, tmp_path)
    ds_file = raw / NAMES[1] / "dataset.json"
    ds = json.loads(ds_file.read_text())
    ds["labels"] = {"background": 0, "liver": 1, "organ_b": 2, "wall": 3, "cavity": 4}
    ds_file.write_text(json.dumps(ds))
    _env(monkeypatch, tmp_path, raw)
    with pytest.raises(UserError, match="(?s)different label sets.*remap-labels"):
        plan_pair(str(IDS[0]), str(IDS[1]), ["2d"], log=lambda *a: None)


def test_refuses_different_channel_count(planned, tmp_path, monkeypatch):
    root, _ = planned
    raw = _copy_raw(root, tmp_path)
    ds_file = raw / NAMES[1] / "dataset.json"
    ds = json.loads(ds_file.read_text())
    ds["channel_names"] = {"0": "T1", "1": "T2"}
    ds_file.write_text(json.dumps(ds))
    _env(monkeypatch, tmp_path, raw)
    with pytest.raises(UserError, match="1 input channel.*2"):
        plan_pair(str(IDS[0]), str(IDS[1]), ["2d"], log=lambda *a: None)


def test_refuses_missing_dataset_and_same_dataset(planned, tmp_path, monkeypatch):
    root, _ = planned
    _env(monkeypatch, tmp_path, _copy_raw(root, tmp_path))
    with pytest.raises(UserError, match="dataset 555 not found"):
        plan_pair(str(IDS[0]), "555", ["2d"], log=lambda *a: None)
    with pytest.raises(UserError, match="two different datasets"):
        plan_pair(str(IDS[0]), NAMES[0], ["2d"], log=lambda *a: None)


@pytest.mark.slow
def test_refuses_unknown_configuration(planned, tmp_path, monkeypatch):
    """... after A's fingerprint, which was drawn with --fingerprint-samples' extractor (a spy on nnU-Net's API)."""
    from nnunetv2.experiment_planning import plan_and_preprocess_api as api

    root, _ = planned
    _env(monkeypatch, tmp_path, _copy_raw(root, tmp_path))
    draws, original = [], api.extract_fingerprint_dataset

    def spy(*args, **kwargs):
        extractor = kwargs.get("fingerprint_extractor_class", api.DatasetFingerprintExtractor)
        draws.append(extractor(args[0], 1).num_foreground_voxels_for_intensitystats)
        return original(*args, **kwargs)

    monkeypatch.setattr(api, "extract_fingerprint_dataset", spy)
    with pytest.raises(UserError, match="3d_lowres.*do not exist"):
        plan_pair(str(IDS[0]), str(IDS[1]), ["3d_lowres"], num_processes=1, verify=False,
                  fingerprint_samples=FINGERPRINT_SAMPLES, log=lambda *a: None)
    assert draws == [FINGERPRINT_SAMPLES]


def test_refuses_corrupt_label_values(planned, tmp_path, monkeypatch):
    import SimpleITK as sitk
    root, _ = planned
    raw = _copy_raw(root, tmp_path)
    label_file = sorted((raw / NAMES[1] / "labelsTr").glob("*.nii.gz"))[0]
    img = sitk.ReadImage(str(label_file))
    arr = sitk.GetArrayFromImage(img)
    arr[0, 0, 0] = 9
    bad = sitk.GetImageFromArray(arr)
    bad.CopyInformation(img)
    sitk.WriteImage(bad, str(label_file))
    _env(monkeypatch, tmp_path, raw)
    with pytest.raises(UserError, match=f"{NAMES[1]} failed nnU-Net's integrity check"):
        plan_pair(str(IDS[0]), str(IDS[1]), ["2d"], num_processes=1, log=lambda *a: None)


@pytest.mark.parametrize("var", ["nnUNet_raw", "nnUNet_preprocessed"])
def test_refuses_unset_environment(var, monkeypatch):
    monkeypatch.setenv("nnUNet_raw", "/nonexistent")
    monkeypatch.setenv("nnUNet_preprocessed", "/nonexistent")
    monkeypatch.delenv(var)
    with pytest.raises(UserError, match=f"{var} is not set"):
        plan_pair("1", "2", ["2d"], log=lambda *a: None)
