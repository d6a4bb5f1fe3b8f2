"""make-semisupervised: seeded choice, ignore label, all-ignore label maps, untouched source, refusals, nnU-Net."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_unpaired.cli import main
from nnunet_unpaired.errors import UserError
from nnunet_unpaired.phantom import ModalityGeometry, PhantomConfig, write_phantom_pair
from nnunet_unpaired.semisupervised import (MARKER_KEY, choose_labelled, is_labelled, labels_with_ignore,
                                            number_labelled, stratified_splits, target_name)

IDS = (961, 962)
SMALL = dict(field_of_view_mm=(32.0, 32.0, 12.0), ct=ModalityGeometry((2.0, 2.0, 3.0), False),
             mr=ModalityGeometry((2.0, 2.0, 3.0), True))


@pytest.fixture
def raw_pair(nnunet_dirs):
    raw = nnunet_dirs["nnUNet_raw"]
    write_phantom_pair(str(raw), IDS, PhantomConfig(num_train=6, num_test=1, **SMALL), log=lambda *a: None)
    return raw


def _tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def test_number_labelled_rounds_half_up_and_keeps_one():
    assert number_labelled(10, 10) == 1 and number_labelled(10, 20) == 2 and number_labelled(10, 15) == 2
    assert number_labelled(5, 10) == 1 and number_labelled(3, 1) == 1 and number_labelled(7, 100) == 7
    for bad in (0, -5, 101):
        with pytest.raises(UserError, match="percent"):
            number_labelled(10, bad)


def test_choice_is_seeded_and_ignores_listing_order():
    ids = [f"case_{i:03d}" for i in range(20)]
    chosen = choose_labelled(ids, 20, seed=3)
    assert len(chosen) == 4 and chosen == sorted(chosen) and set(chosen) <= set(ids)
    assert choose_labelled(list(reversed(ids)), 20, seed=3) == chosen
    assert any(choose_labelled(ids, 20, seed=s) != chosen for s in range(4, 8))


def test_labels_with_ignore():
    labels, ignore = labels_with_ignore({"background": 0, "a": 1, "b": 2})
    assert ignore == 3 and labels["ignore"] == 3
    assert labels_with_ignore({"background": 0, "a": 1, "ignore": 2}) == ({"background": 0, "a": 1, "ignore": 2}, 2)
    with pytest.raises(UserError, match="highest"):
        labels_with_ignore({"background": 0, "ignore": 1, "a": 2})
    with pytest.raises(UserError, match="region"):
        labels_with_ignore({"background": 0, "whole": [1, 2]})


def test_stratified_splits_spread_labelled_cases():
    labelled = [f"l{i}" for i in range(3)]
    unlabelled = [f"u{i}" for i in range(12)]
    splits = stratified_splits(labelled, unlabelled)
    assert len(splits) == 5
    val_all = [c for fold in splits for c in fold["val"]]
    assert sorted(val_all) == sorted(labelled + unlabelled)  # every case validated exactly once
    for fold in splits:
        assert not set(fold["train"]) & set(fold["val"])
        assert sum(c.startswith("l") for c in fold["val"]) <= 1
        assert any(c.startswith("l") for c in fold["train"])


def test_is_labelled_reads_the_annotated_class_locations():
    class Labels:
        has_ignore_label, all_labels = True, [0, 1, 2]

    key = (-1, 0, 1, 2)
    assert is_labelled({"class_locations": {1: [], key: [[0, 1, 2]]}}, Labels())
    assert not is_labelled({"class_locations": {1: [], key: []}}, Labels())
    with pytest.raises(UserError, match="ignore label"):
        is_labelled({"class_locations": {1: []}}, Labels())
    Labels.has_ignore_label = False
    assert is_labelled({}, Labels())


def test_command_writes_semisupervised_copies(raw_pair):
    before = {name: _tree_digest(raw_pair / name) for name in ("Dataset961_PhantomCT", "Dataset962_PhantomMR")}
    assert main(["make-semisupervised", "-d", str(IDS[0]), str(IDS[1]), "--percent", "34", "--to-ids", "971",
                 "972", "--seed", "1"]) == 0
    assert {name: _tree_digest(raw_pair / name) for name in before} == before  # sources untouched
    for source, target in (("Dataset961_PhantomCT", "Dataset971_PhantomCTSemi34"),
                           ("Dataset962_PhantomMR", "Dataset972_PhantomMRSemi34")):
        folder = raw_pair / target
        ds = json.loads((folder / "dataset.json").read_text())
        record = ds[MARKER_KEY]
        assert ds["labels"]["ignore"] == 5 and ds["numTraining"] == 6
        assert len(record["labelled"]) == 2 and len(record["unlabelled"]) == 4 and record["source"] == source
        for case in record["labelled"]:
            original = raw_pair / source / "labelsTr" / f"{case}.nii.gz"
            assert (folder / "labelsTr" / f"{case}.nii.gz").read_bytes() == original.read_bytes()
        for case in record["unlabelled"]:
            image = sitk.ReadImage(str(folder / "imagesTr" / f"{case}_0000.nii.gz"))
            label = sitk.ReadImage(str(folder / "labelsTr" / f"{case}.nii.gz"))
            assert np.all(sitk.GetArrayFromImage(label) == 5)
            assert label.GetSize() == image.GetSize() and np.allclose(label.GetOrigin(), image.GetOrigin())
            assert np.allclose(label.GetDirection(), image.GetDirection())
        assert sorted(p.name for p in (folder / "imagesTs").iterdir()) == \
            sorted(p.name for p in (raw_pair / source / "imagesTs").iterdir())
        splits = json.loads((folder / "splits_final.json").read_text())
        assert sorted(c for fold in splits for c in fold["val"]) == sorted(record["labelled"] + record["unlabelled"])
    assert not [p for p in raw_pair.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_copy_passes_nnunet_integrity_check(raw_pair):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    assert main(["make-semisupervised", "-d", str(IDS[0]), "--percent", "10", "--to-ids", "973"]) == 0
    verify_dataset_integrity(str(raw_pair / "Dataset973_PhantomCTSemi10"), 1)


def test_labelled_only_copy_matches_the_semi_choice(raw_pair):
    args = ["-d", str(IDS[0]), "--percent", "50", "--seed", "4"]
    assert main(["make-semisupervised", *args, "--to-ids", "974"]) == 0
    assert main(["make-semisupervised", *args, "--to-ids", "975", "--labelled-only"]) == 0
    semi = json.loads((raw_pair / "Dataset974_PhantomCTSemi50" / "dataset.json").read_text())
    only = json.loads((raw_pair / "Dataset975_PhantomCTLabelled50" / "dataset.json").read_text())
    assert only[MARKER_KEY]["labelled"] == semi[MARKER_KEY]["labelled"]
    assert "ignore" not in only["labels"] and only["numTraining"] == 3
    names = sorted(p.name for p in (raw_pair / "Dataset975_PhantomCTLabelled50" / "labelsTr").iterdir())
    assert names == [f"{c}.nii.gz" for c in semi[MARKER_KEY]["labelled"]]
    assert main(["make-semisupervised", *args, "--to-ids", "975", "--labelled-only"]) == 0  # own output: replaced


def test_refusals(raw_pair, capsys):
    (raw_pair / "Dataset976_Foreign").mkdir()
    (raw_pair / "Dataset976_Foreign" / "dataset.json").write_text("{}")
    cases = [
        (["-d", str(IDS[0]), "--percent", "10", "--to-ids", "976"], "taken"),
        (["-d", str(IDS[0]), str(IDS[1]), "--percent", "10", "--to-ids", "977"], "one --to-ids entry per dataset"),
        (["-d", str(IDS[0]), "--percent", "10", "--to-ids", str(IDS[0])], "source dataset's id"),
        (["-d", str(IDS[0]), "--percent", "0", "--to-ids", "977"], "percent"),
        (["-d", "999", "--percent", "10", "--to-ids", "977"], "not found"),
    ]
    for args, message in cases:
        assert main(["make-semisupervised", *args]) == 2
        assert message in capsys.readouterr().err
    assert not (raw_pair / "Dataset977_PhantomCTSemi10").exists()
    with pytest.raises(UserError, match="was not written by make-semisupervised"):
        from nnunet_unpaired.semisupervised import make_semisupervised
        make_semisupervised(str(raw_pair / "Dataset961_PhantomCT"), str(raw_pair / "Dataset976_Foreign"), 10)
    assert target_name("Dataset961_PhantomCT", 978, 12.5, False) == "Dataset978_PhantomCTSemi12p5"
