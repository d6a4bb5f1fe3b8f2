"""remap-labels: renumbered copy of a raw dataset, raw untouched, unknown values refused."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_unpaired.cli import main
from nnunet_unpaired.errors import UserError
from nnunet_unpaired.phantom import ModalityGeometry, PhantomConfig, write_phantom_pair
from nnunet_unpaired.plan_pair import check_compatible
from nnunet_unpaired.remap_labels import parse_mapping, remap_dataset

SMALL = dict(field_of_view_mm=(40.0, 40.0, 12.0), ct=ModalityGeometry((2.0, 2.0, 3.0), False),
             mr=ModalityGeometry((2.0, 2.0, 3.0), True))


@pytest.fixture
def raw(tmp_path, monkeypatch):
    write_phantom_pair(str(tmp_path), (821, 822), PhantomConfig(num_train=2, num_test=0, **SMALL), log=lambda *a: None)
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    return tmp_path


def _labels(folder):
    return {f.name: sitk.GetArrayFromImage(sitk.ReadImage(str(f))) for f in sorted((folder / "labelsTr").glob("*"))}


def test_swap_two_labels_and_keep_source(raw):
    src = raw / "Dataset822_PhantomMR"
    before = _labels(src)
    out = remap_dataset(str(src), str(raw / "Dataset823_PhantomMRRemapped"), {1: 2, 2: 1}, log=lambda *a: None)
    after = _labels(raw / "Dataset823_PhantomMRRemapped")
    for name, arr in before.items():
        expected = arr.copy()
        expected[arr == 1], expected[arr == 2] = 2, 1
        assert np.array_equal(after[name], expected)
    assert _labels(src).keys() == before.keys() and all(np.array_equal(_labels(src)[k], before[k]) for k in before)
    ds = json.loads((raw / "Dataset823_PhantomMRRemapped" / "dataset.json").read_text())
    assert ds["labels"]["organ_a"] == 2 and ds["labels"]["organ_b"] == 1
    assert len(list((raw / "Dataset823_PhantomMRRemapped" / "imagesTr").iterdir())) == 2
    assert out.endswith("Remapped")


def test_unknown_value_named_with_file(raw):
    src = raw / "Dataset822_PhantomMR"
    with pytest.raises(UserError, match=r"labelsTr/.*value\(s\) \[7\]"):
        remap_dataset(str(src), str(raw / "Dataset824_X"), {4: 7}, labels={"background": 0, "a": 1, "b": 2, "c": 3},
                      log=lambda *a: None)
    assert not (raw / "Dataset824_X").exists()


def test_cli_with_names_from_makes_pair_compatible(raw):
    ds_file = raw / "Dataset822_PhantomMR" / "dataset.json"
    ds = json.loads(ds_file.read_text())
    ds["labels"] = {"background": 0, "b": 1, "a": 2, "wall": 3, "cavity": 4}
    ds_file.write_text(json.dumps(ds))
    with pytest.raises(UserError):
        check_compatible("Dataset821_PhantomCT", "Dataset822_PhantomMR", str(raw))
    assert main(["remap-labels", "-d", "822", "--to-id", "825", "--map", "1:2", "2:1", "--names-from", "821"]) == 0
    check_compatible("Dataset821_PhantomCT", "Dataset825_PhantomMRRemapped", str(raw))


def test_parse_mapping_rejects_garbage():
    assert parse_mapping(["1:4", "4:1"]) == {1: 4, 4: 1}
    with pytest.raises(UserError, match="OLD:NEW"):
        parse_mapping(["1-4"])
