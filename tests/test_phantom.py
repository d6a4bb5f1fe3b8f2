"""The synthetic phantom: determinism, geometry in the header, touching structures, inverted MR contrast."""

import hashlib
import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.ndimage import binary_dilation

from nnunet_unpaired.errors import UserError
from nnunet_unpaired.phantom import (LABELS, ModalityGeometry, PhantomConfig, voxel_centres, grid_geometry,
                                     write_phantom_pair)

SMALL = dict(field_of_view_mm=(64.0, 64.0, 24.0), ct=ModalityGeometry((2.0, 2.0, 3.0), False),
             mr=ModalityGeometry((2.4, 2.4, 4.0), True))


def _digest(folder):
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*.nii.gz")):
        h.update(f.name.encode())
        h.update(sitk.GetArrayFromImage(sitk.ReadImage(str(f))).tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    ct, mr = write_phantom_pair(str(root), (801, 802), PhantomConfig(num_train=3, num_test=1, **SMALL),
                                log=lambda *a: None)
    from pathlib import Path
    return Path(ct), Path(mr)


def _read(path):
    img = sitk.ReadImage(str(path))
    return img, sitk.GetArrayFromImage(img)


def test_layout_and_dataset_json(pair):
    ct, mr = pair
    for folder, modality in ((ct, "CT"), (mr, "MR")):
        ds = json.loads((folder / "dataset.json").read_text())
        assert ds["channel_names"] == {"0": modality}
        assert ds["labels"] == LABELS and ds["numTraining"] == 3
        assert len(list((folder / "imagesTr").glob("*_0000.nii.gz"))) == 3
        assert len(list((folder / "labelsTs").glob("*.nii.gz"))) == 1


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path, pair):
    ct, _ = pair
    again, _ = write_phantom_pair(str(tmp_path / "a"), (801, 802), PhantomConfig(num_train=3, num_test=1, **SMALL),
                                  log=lambda *a: None)
    other, _ = write_phantom_pair(str(tmp_path / "b"), (801, 802),
                                  PhantomConfig(num_train=3, num_test=1, seed=99, **SMALL), log=lambda *a: None)
    from pathlib import Path
    assert _digest(Path(again)) == _digest(ct)
    assert _digest(Path(other)) != _digest(ct)


def test_all_structures_present_and_touching(pair):
    for folder in pair:
        _, lab = _read(next((folder / "labelsTr").glob("*.nii.gz")))
        assert set(np.unique(lab)) == {0, 1, 2, 3, 4}
        # each structure shares a border with at least one other structure
        for k in (1, 2, 3, 4):
            grown = binary_dilation(lab == k)
            neighbours = set(np.unique(lab[grown & (lab != k)])) - {0}
            assert neighbours, f"structure {k} touches no other structure"


def test_cases_differ_in_shape(pair):
    ct, _ = pair
    labs = [_read(f)[1] for f in sorted((ct / "labelsTr").glob("*.nii.gz"))]
    assert not np.array_equal(labs[0], labs[1])


def test_mr_header_differs_and_labels_agree_physically(pair):
    ct, mr = pair
    ct_img, _ = _read(next((ct / "labelsTr").glob("*.nii.gz")))
    mr_img, mr_lab = _read(next((mr / "labelsTr").glob("*.nii.gz")))
    assert ct_img.GetSpacing() != mr_img.GetSpacing()
    assert np.allclose(np.array(mr_img.GetDirection()).reshape(3, 3), np.diag([-1, -1, 1]))
    # the header maps voxel indices to the physical points at which the label was computed
    shape, origin, direction = grid_geometry(np.array(SMALL["field_of_view_mm"]), SMALL["mr"], 3)
    assert tuple(mr_lab.shape) == tuple(shape)
    idx = (2, 5, 7)  # z, y, x
    expected = voxel_centres(shape, SMALL["mr"].spacing, origin, direction).reshape(*shape, 3)[idx]
    assert np.allclose(mr_img.TransformIndexToPhysicalPoint(idx[::-1]), expected, atol=1e-4)


def test_mr_contrast_inverted_against_ct(pair):
    means = {}
    for folder, modality in zip(pair, ("CT", "MR")):
        img_file = next((folder / "imagesTr").glob("*_0000.nii.gz"))
        _, img = _read(img_file)
        _, lab = _read(folder / "labelsTr" / img_file.name.replace("_0000", ""))
        means[modality] = {k: img[lab == k].mean() for k in (1, 2, 4)}
    # cavity brighter than organ_a in CT but darker in MR; organ_a vs organ_b also flips
    assert means["CT"][4] > means["CT"][1] and means["MR"][4] < means["MR"][1]
    assert means["CT"][1] > means["CT"][2] and means["MR"][1] < means["MR"][2]


def test_two_d_writes_single_slices(tmp_path):
    ct, _ = write_phantom_pair(str(tmp_path), (801, 802), PhantomConfig(num_train=1, num_test=0, dim=2, **SMALL),
                               log=lambda *a: None)
    from pathlib import Path
    _, img = _read(next((Path(ct) / "imagesTr").glob("*.nii.gz")))
    assert img.shape[0] == 1


def test_rerun_replaces_own_output_but_refuses_foreign_folder(tmp_path):
    cfg = PhantomConfig(num_train=1, num_test=0, **SMALL)
    write_phantom_pair(str(tmp_path), (801, 802), cfg, log=lambda *a: None)
    write_phantom_pair(str(tmp_path), (801, 802), cfg, log=lambda *a: None)  # safe rerun
    foreign = tmp_path / "Dataset803_PhantomCT"
    foreign.mkdir()
    (foreign / "dataset.json").write_text('{"labels": {}}')
    with pytest.raises(UserError, match="not written by"):
        write_phantom_pair(str(tmp_path), (803, 804), cfg, log=lambda *a: None)
    assert (foreign / "dataset.json").read_text() == '{"labels": {}}'


def test_cli_requires_output(monkeypatch, capsys):
    from nnunet_unpaired.cli import main
    monkeypatch.delenv("nnUNet_raw", raising=False)
    assert main(["phantom"]) == 2
    assert "nnUNet_raw" in capsys.readouterr().err


def test_inverted_mr_contrast_is_one_learnable_inversion_of_the_ct_contrast():
    """Issue 16 item 4: a variant whose MR-like tissue contrast is a decreasing function of the CT-like one (the
    permuted default reorders the structures, which no monotone mapping undoes)."""
    import numpy as np

    from nnunet_unpaired.phantom import (CT_VALUES, MR_VALUES, MR_VALUES_INVERTED, Anatomy, ModalityGeometry,
                                         PhantomConfig, render_case)

    tissue = ["body", 1, 2, 3, 4]
    ct = np.array([CT_VALUES[k] for k in tissue])
    inv = np.array([MR_VALUES_INVERTED[k] for k in tissue])
    perm = np.array([MR_VALUES[k] for k in tissue])
    assert (np.argsort(ct) == np.argsort(-inv)).all()  # exactly reversed order
    assert not (np.argsort(ct) == np.argsort(perm)).all() and not (np.argsort(ct) == np.argsort(-perm)).all()
    assert MR_VALUES_INVERTED["air"] == 0.0

    fov = np.array([64.0, 64.0, 24.0])
    geometry = ModalityGeometry((1.5, 1.5, 3.0), False)
    rng = np.random.default_rng(0)
    anatomy = Anatomy.sample(rng, fov)
    img, lab, _ = render_case(anatomy, "MR", fov, geometry, 3, np.random.default_rng(1), mr_contrast="inverted")
    means = [img[lab == k].mean() for k in (1, 2, 3, 4)]
    assert means[3] < means[2] < means[0] < means[1]  # cavity < wall < organ_a < organ_b: CT's order reversed
    with pytest.raises(Exception, match="mr_contrast"):
        PhantomConfig(mr_contrast="other")


def test_benchmark_phantom_spec_leaves_the_default_contrast_out():
    from nnunet_unpaired.benchmark.config import phantom_config, phantom_spec

    assert "mr_contrast" not in phantom_spec(5, 2)  # result folders written before the option still resume
    spec = phantom_spec(5, 2, mr_contrast="inverted")
    assert spec["mr_contrast"] == "inverted" and phantom_config(spec).mr_contrast == "inverted"
    assert phantom_config(phantom_spec(5, 2)).mr_contrast == "permuted"
