"""Synthetic two-modality phantom: one anatomy, a CT-like and an MR-like nnU-Net raw dataset of different patients.

The anatomy is defined in physical (mm) space by four deformable structures that touch each other:

====  ==========  =============================================  =====================  ======================
label name        shape                                          CT-like (HU)           MR-like (a.u.)
====  ==========  =============================================  =====================  ======================
1     organ_a     large ellipsoid (liver-like)                   60                     450 (darker than b)
2     organ_b     ellipsoid pressed against organ_a              30                     750 (contrast inverted)
3     wall        ellipsoidal shell (myocardium-like)            110                    300
4     cavity      the inside of the wall (blood pool)            260 (bright, contrast) 90 (black blood: inverted)
====  ==========  =============================================  =====================  ======================

Background is air outside an elliptical body and soft tissue inside it. Each case draws its own shape parameters
(position, radii, rotation) and a smooth random deformation, so every case differs and the two datasets never
contain the same patient. The MR-like images get a smooth multiplicative bias field and Rician noise, the CT-like
images Gaussian noise; both are slightly blurred (partial volume). The two modalities have different voxel spacings
and the MR-like images a different orientation in their header (x and y axes flipped, origin moved accordingly),
so that a consumer that ignores the header gets the anatomy mirrored. Labels are computed at each modality's own
voxel centres from the same physical definition, so image and label always agree.

The MR-like contrast above (``mr_contrast="permuted"``, the default) reorders the structures' intensities against
the CT-like ones; no monotone intensity mapping turns one into the other, which makes it a stress case for image
translation. ``mr_contrast="inverted"`` (issue 16) gives the MR-like tissue ONE learnable change instead, a contrast
inversion: MR = 800 - 2.5 CT for the body and every structure (body 700, organ_a 650, organ_b 725, wall 525,
cavity 150), air dark in both. A translator that works must be able to learn it; it validates the pipeline.

Everything is seeded: the same arguments always give bit-identical files.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from nnunet_unpaired.errors import UserError

HELP = "write a synthetic CT-like + MR-like dataset pair in nnU-Net raw format"

LABELS = {"background": 0, "organ_a": 1, "organ_b": 2, "wall": 3, "cavity": 4}
CT_VALUES = {"air": -1000.0, "body": 40.0, 1: 60.0, 2: 30.0, 3: 110.0, 4: 260.0}
MR_VALUES = {"air": 0.0, "body": 220.0, 1: 450.0, 2: 750.0, 3: 300.0, 4: 90.0}
#: the "inverted" MR-like contrast: a decreasing linear function of the CT-like value for tissue, air stays dark
MR_VALUES_INVERTED = {"air": 0.0, **{k: 800.0 - 2.5 * v for k, v in CT_VALUES.items() if k != "air"}}
MR_CONTRASTS = {"permuted": MR_VALUES, "inverted": MR_VALUES_INVERTED}
MARKER_KEY = "nnunet_unpaired"


@dataclass
class ModalityGeometry:
    """Voxel grid of one modality. ``spacing`` is (x, y, z) in mm like SimpleITK; ``flip_xy`` flips the header."""

    spacing: Tuple[float, float, float]
    flip_xy: bool


@dataclass
class PhantomConfig:
    """Everything that determines the phantom; stored in dataset.json so a rerun can tell what it wrote."""

    num_train: int = 10
    num_test: int = 4
    dim: int = 3
    field_of_view_mm: Tuple[float, float, float] = (96.0, 96.0, 60.0)  # x, y, z
    ct: ModalityGeometry = field(default_factory=lambda: ModalityGeometry((1.5, 1.5, 3.0), False))
    mr: ModalityGeometry = field(default_factory=lambda: ModalityGeometry((1.8, 1.8, 4.0), True))
    seed: int = 1234
    mr_contrast: str = "permuted"  # or "inverted" (see the module docstring)

    def __post_init__(self):
        if self.mr_contrast not in MR_CONTRASTS:
            raise UserError(f"mr_contrast must be one of {sorted(MR_CONTRASTS)}, got {self.mr_contrast!r}")


# --------------------------------------------------------------------------------------------------------------------
# anatomy in physical space
# --------------------------------------------------------------------------------------------------------------------

def _rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _ellipsoid_level(points: np.ndarray, centre: np.ndarray, radii: np.ndarray, angle: float) -> np.ndarray:
    """< 1 inside the rotated ellipsoid. ``points``: (N, 3) in mm."""
    local = (points - centre) @ _rotation(angle)
    return np.sum((local / radii) ** 2, axis=1)


@dataclass
class Anatomy:
    """Random shape parameters of one case (units: mm, radians)."""

    centre: np.ndarray
    organ_a: Tuple[np.ndarray, np.ndarray, float]
    organ_b: Tuple[np.ndarray, np.ndarray, float]
    heart: Tuple[np.ndarray, np.ndarray, float]
    wall_thickness: float
    body_radii: np.ndarray
    warp_freq: np.ndarray
    warp_phase: np.ndarray
    warp_amp: np.ndarray

    @classmethod
    def sample(cls, rng: np.random.Generator, fov: np.ndarray) -> "Anatomy":
        centre = fov / 2 + rng.uniform(-4, 4, 3) * np.array([1, 1, 0.5])
        scale = rng.uniform(0.85, 1.15)
        a_r = np.array([24.0, 18.0, 16.0]) * scale * rng.uniform(0.9, 1.1, 3)
        a_c = centre + np.array([-10.0, 4.0, 0.0]) + rng.uniform(-3, 3, 3)
        b_r = np.array([13.0, 11.0, 12.0]) * scale * rng.uniform(0.85, 1.15, 3)
        # organ_b overlaps organ_a's border, so the two always touch
        b_dir = np.array([np.cos(rng.uniform(-0.4, 0.4)), np.sin(rng.uniform(-0.4, 0.4)), 0.0])
        b_c = a_c + b_dir * (a_r[0] * 0.9 + b_r[0] * 0.5) + np.array([0.0, 0.0, rng.uniform(-3, 3)])
        h_r = np.array([14.0, 12.0, 13.0]) * scale * rng.uniform(0.9, 1.1, 3)
        # the heart-like shell sits above organ_a and presses into it
        h_c = a_c + np.array([rng.uniform(-4, 6), -(a_r[1] * 0.8 + h_r[1] * 0.6), rng.uniform(-3, 3)])
        return cls(
            centre=centre,
            organ_a=(a_c, a_r, rng.uniform(-0.5, 0.5)),
            organ_b=(b_c, b_r, rng.uniform(-0.7, 0.7)),
            heart=(h_c, h_r, rng.uniform(-0.7, 0.7)),
            wall_thickness=rng.uniform(3.5, 5.5),
            body_radii=np.array([fov[0] * 0.47, fov[1] * 0.45, fov[2] * 4.0]) * rng.uniform(0.95, 1.0),
            warp_freq=rng.uniform(0.03, 0.07, (3, 3)),
            warp_phase=rng.uniform(0, 2 * np.pi, (3, 3)),
            warp_amp=rng.uniform(1.5, 3.5, 3),
        )

    def warp(self, points: np.ndarray) -> np.ndarray:
        """Smooth random deformation (a few mm) so that no two cases share a shape family exactly."""
        out = points.copy()
        for axis in range(3):
            phase = points @ self.warp_freq[axis] + self.warp_phase[axis, 0]
            out[:, axis] += self.warp_amp[axis] * np.sin(phase) * np.cos(points[:, (axis + 1) % 3] * 0.05
                                                                            + self.warp_phase[axis, 1])
        return out

    def labels_at(self, points: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Label (0..4) and body mask at physical points (N, 3)."""
        p = self.warp(points)
        body = _ellipsoid_level(points, self.centre, self.body_radii, 0.0) < 1
        lab = np.zeros(len(points), dtype=np.uint8)
        lab[_ellipsoid_level(p, *self.organ_b) < 1] = 2
        lab[_ellipsoid_level(p, *self.organ_a) < 1] = 1
        h_c, h_r, h_angle = self.heart
        lab[_ellipsoid_level(p, h_c, h_r, h_angle) < 1] = 3
        lab[_ellipsoid_level(p, h_c, h_r - self.wall_thickness, h_angle) < 1] = 4
        lab[~body] = 0
        return lab, body


# --------------------------------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------------------------------

def grid_geometry(fov: np.ndarray, geometry: ModalityGeometry, dim: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Array shape (z, y, x), origin and direction (3x3) of a modality's grid covering the field of view."""
    spacing = np.asarray(geometry.spacing, dtype=float)
    size_xyz = np.maximum(np.round(fov / spacing).astype(int), 1)
    if dim == 2:
        size_xyz[2] = 1
    direction = np.diag([-1.0, -1.0, 1.0]) if geometry.flip_xy else np.eye(3)
    # the physical box [0, fov] is covered whatever the direction: flipped axes start at the far end
    origin = np.array([(size_xyz[i] - 1) * spacing[i] if direction[i, i] < 0 else 0.0 for i in range(3)])
    origin[2] = fov[2] / 2 if dim == 2 else origin[2]
    return size_xyz[::-1].copy(), origin, direction


def voxel_centres(shape_zyx: Sequence[int], spacing: Sequence[float], origin: np.ndarray,
                  direction: np.ndarray) -> np.ndarray:
    """Physical coordinates (N, 3) of all voxel centres, in C order of a (z, y, x) array."""
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in shape_zyx], indexing="ij")
    index_xyz = np.stack([xx.ravel(), yy.ravel(), zz.ravel()], axis=1).astype(float)
    return origin + (index_xyz * np.asarray(spacing)) @ direction.T


def _bias_field(points: np.ndarray, fov: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative MR bias field (about +-25 %)."""
    u = points / fov - 0.5
    coeff = rng.uniform(-0.35, 0.35, 6)
    poly = coeff[0] * u[:, 0] + coeff[1] * u[:, 1] + coeff[2] * u[:, 2] + coeff[3] * u[:, 0] * u[:, 1] \
        + coeff[4] * u[:, 0] ** 2 + coeff[5] * u[:, 1] ** 2
    return np.exp(poly)


def render_case(anatomy: Anatomy, modality: str, fov: np.ndarray, geometry: ModalityGeometry, dim: int,
                rng: np.random.Generator, mr_contrast: str = "permuted") -> Tuple[np.ndarray, np.ndarray, Dict]:
    """Image (float32), label (uint8), both (z, y, x), and the header (spacing, origin, direction)."""
    from scipy.ndimage import gaussian_filter

    shape, origin, direction = grid_geometry(fov, geometry, dim)
    points = voxel_centres(shape, geometry.spacing, origin, direction)
    lab, body = anatomy.labels_at(points)
    values = CT_VALUES if modality == "CT" else MR_CONTRASTS[mr_contrast]
    img = np.where(body, values["body"], values["air"]).astype(np.float64)
    for label in (1, 2, 3, 4):
        img[lab == label] = values[label]
    # texture inside organs so that intensity alone is not a perfect classifier
    img += (lab > 0) * rng.normal(0, 8.0 if modality == "CT" else 25.0, img.shape)
    img = img.reshape(shape)
    sigma = (0.0, 0.7, 0.7) if dim == 2 else (0.5, 0.7, 0.7)
    img = gaussian_filter(img, sigma)
    if modality == "CT":
        img = img + rng.normal(0, 18.0, img.shape)
    else:
        img = img * _bias_field(points, fov, rng).reshape(shape)
        noise = 30.0
        img = np.sqrt((img + rng.normal(0, noise, img.shape)) ** 2 + rng.normal(0, noise, img.shape) ** 2)
    header = {"spacing": tuple(float(s) for s in geometry.spacing), "origin": tuple(float(o) for o in origin),
              "direction": tuple(float(d) for d in direction.ravel())}
    return img.astype(np.float32), lab.reshape(shape), header


# --------------------------------------------------------------------------------------------------------------------
# writing nnU-Net raw datasets
# --------------------------------------------------------------------------------------------------------------------

def _write_nifti(array: np.ndarray, header: Dict, path: str) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing(header["spacing"])
    image.SetOrigin(header["origin"])
    image.SetDirection(header["direction"])
    sitk.WriteImage(image, path, useCompression=True)


def dataset_json(modality: str, num_training: int, config: PhantomConfig) -> Dict:
    return {
        "channel_names": {"0": modality},
        "labels": dict(LABELS),
        "numTraining": num_training,
        "file_ending": ".nii.gz",
        "name": f"Phantom{modality}",
        "description": f"nnunet-unpaired synthetic {modality}-like phantom (see nnunet_unpaired/phantom.py)",
        "licence": "CC0 (synthetic data)",
        "reference": "nnunet-unpaired",
        MARKER_KEY: {"modality": modality, "phantom": _config_to_json(config)},
    }


def _config_to_json(config: PhantomConfig) -> Dict:
    return json.loads(json.dumps(asdict(config)))


def dataset_folder_name(dataset_id: int, modality: str) -> str:
    return f"Dataset{dataset_id:03d}_Phantom{modality}"


def write_modality(raw_root: str, dataset_id: int, modality: str, config: PhantomConfig,
                   log=print) -> str:
    """Write one modality's dataset into ``raw_root`` atomically; returns the dataset folder."""
    if not 1 <= dataset_id <= 999:
        raise UserError(f"dataset id {dataset_id} is out of range; nnU-Net ids have three digits (1..999)")
    name = dataset_folder_name(dataset_id, modality)
    target = os.path.join(raw_root, name)
    _refuse_foreign_folder(target)
    fov = np.asarray(config.field_of_view_mm, dtype=float)
    geometry = config.ct if modality == "CT" else config.mr
    # different patients per modality: the seeds of the two modalities never coincide
    modality_seed = config.seed * 2 + (0 if modality == "CT" else 1)
    os.makedirs(raw_root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.", dir=raw_root)
    try:
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            os.makedirs(os.path.join(tmp, sub))
        prefix = f"phantom{modality.lower()}"
        for i in range(config.num_train + config.num_test):
            rng = np.random.default_rng([modality_seed, i])
            anatomy = Anatomy.sample(rng, fov)
            img, lab, header = render_case(anatomy, modality, fov, geometry, config.dim, rng, config.mr_contrast)
            split = "Tr" if i < config.num_train else "Ts"
            case = f"{prefix}_{i:03d}"
            _write_nifti(img, header, os.path.join(tmp, f"images{split}", f"{case}_0000.nii.gz"))
            _write_nifti(lab, header, os.path.join(tmp, f"labels{split}", f"{case}.nii.gz"))
        with open(os.path.join(tmp, "dataset.json"), "w") as f:
            json.dump(dataset_json(modality, config.num_train, config), f, indent=2)
        replace_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"wrote {target}: {config.num_train} training + {config.num_test} test cases, "
        f"spacing {geometry.spacing} mm{' (x/y flipped in the header)' if geometry.flip_xy else ''}")
    return target


def _refuse_foreign_folder(target: str) -> None:
    """Only a folder this module wrote may be replaced."""
    if not os.path.exists(target):
        return
    ds = os.path.join(target, "dataset.json")
    try:
        with open(ds) as f:
            ours = "phantom" in json.load(f).get(MARKER_KEY, {})
    except (OSError, ValueError):
        ours = False
    if not ours:
        raise UserError(f"{target} exists and was not written by 'nnunet_unpaired phantom'; refusing to replace it. "
                        f"Choose other ids with --ids or remove that folder yourself.")


def replace_folder(new, target) -> None:
    """Put the finished folder ``new`` at ``target`` by renames (an existing ``target`` is removed only after)."""
    new, target = str(new), str(target)
    if os.path.exists(target):
        old = target + ".old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)


def write_phantom_pair(raw_root: str, ids: Tuple[int, int] = (901, 902), config: Optional[PhantomConfig] = None,
                       log=print) -> List[str]:
    """Write the CT-like dataset (``ids[0]``) and the MR-like dataset (``ids[1]``); returns their folders."""
    config = config or PhantomConfig()
    if ids[0] == ids[1]:
        raise UserError(f"the two datasets need different ids, got {ids[0]} twice")
    if config.num_train < 1:
        raise UserError("--num-train must be at least 1")
    return [write_modality(raw_root, ids[0], "CT", config, log), write_modality(raw_root, ids[1], "MR", config, log)]


# --------------------------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------------------------

def add_arguments(parser) -> None:
    parser.add_argument("--ids", type=int, nargs=2, default=[901, 902], metavar=("CT_ID", "MR_ID"),
                        help="dataset ids of the CT-like and the MR-like dataset")
    parser.add_argument("--num-train", type=int, default=10, help="training cases per modality")
    parser.add_argument("--num-test", type=int, default=4, help="held-out test cases per modality (imagesTs/labelsTs)")
    parser.add_argument("--dim", type=int, choices=(2, 3), default=3, help="3: volumes; 2: single-slice images")
    parser.add_argument("--fov", type=float, nargs=3, default=[96.0, 96.0, 60.0], metavar=("X", "Y", "Z"),
                        help="field of view in mm; sets the image size together with the spacings")
    parser.add_argument("--ct-spacing", type=float, nargs=3, default=[1.5, 1.5, 3.0], metavar=("X", "Y", "Z"))
    parser.add_argument("--mr-spacing", type=float, nargs=3, default=[1.8, 1.8, 4.0], metavar=("X", "Y", "Z"))
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--mr-contrast", choices=sorted(MR_CONTRASTS), default="permuted",
                        help="MR-like contrast: permuted (structures reordered against CT; default, the stress case) "
                             "or inverted (MR = 800 - 2.5 CT for tissue: one learnable change)")
    parser.add_argument("--output", default=None, help="raw data folder (default: $nnUNet_raw)")


def run(args) -> int:
    raw_root = args.output or os.environ.get("nnUNet_raw")
    if not raw_root:
        raise UserError("no output folder: set nnUNet_raw (export nnUNet_raw=/path/to/nnUNet_raw) or pass --output")
    config = PhantomConfig(num_train=args.num_train, num_test=args.num_test, dim=args.dim,
                           field_of_view_mm=tuple(args.fov), ct=ModalityGeometry(tuple(args.ct_spacing), False),
                           mr=ModalityGeometry(tuple(args.mr_spacing), True), seed=args.seed,
                           mr_contrast=args.mr_contrast)
    write_phantom_pair(raw_root, tuple(args.ids), config)
    return 0
