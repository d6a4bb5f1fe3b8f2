"""A synthetic PAIRED multi-channel dataset (nnU-Net raw format) in which fusion matters and a missing channel hurts.

Made for MAML (Zhang et al., MICCAI 2021, arXiv 2107.09842) and its tests: every case has C co-registered channels
(``_0000`` .. ``_000{C-1}``) and C + 1 labelled structures inside a common "body":

- structure ``only_<channel c>`` (label c + 1) is visible in channel c ONLY: in every other channel it has exactly the
  intensity of the surrounding tissue, so no model can find it without channel c;
- structure ``shared`` (label C + 1) is visible in every channel.

So a single channel shows two of the C + 1 structures, all channels together show everything, and deleting channel c
at inference makes structure c undetectable (its Dice drops to about 0) while the others stay findable. That is the
``exclusive`` layout (the default of :func:`write_multichannel_phantom`), a stress case: with a channel missing the
ceiling is C of the C + 1 structures, and nothing can compensate.

The ``redundant`` layout (issue 17; the benchmark's default) makes a missing channel compensable: structure
``<channel c>`` (label c + 1) is visible STRONGLY in channel c and WEAKLY (half the contrast, about 2.5 noise standard
deviations) in channel c + 1 (mod C), and ``shared`` in every channel. A model that learned to use the weak
appearance can still find every structure with any one channel missing; one that relies on the strong one only
cannot.

The ``modalities`` layout (for the paired CMC trainer, issue 17) makes the channels two (or more) modalities of ONE
anatomy: every structure (``organ_1`` .. ``organ_{C+1}``) is visible in every channel, and the odd channels invert the
contrast of all but the last structure (bright in channel 0, dark in channel 1 and the other way round, as MR inverts
some CT contrasts). Each channel alone suffices; what differs between them is the appearance.

Misalignment (``misalign_voxels``, issue 17): channel 1's image is translated in-plane by exactly N voxels (per case a
seeded direction, +y, -y, +x or -x) against channel 0 and the label map, which stay where they were, so that paired
voxels no longer correspond. The vacated border is filled with air (0, the value outside the body). The shift of every
case is recorded in dataset.json (``phantom.misalignment``); N = 0 (the default) writes exactly what it wrote before.

Intensities are MR-like (air 0, tissue level per channel, Gaussian noise); the channel names are not "CT", so nnU-Net
normalizes each channel by its own z-score. Everything is drawn from a fixed seed; case i depends only on (seed, i).
The defaults are small (4 slices of 64 x 64) so that a 2D nnU-Net trains on them in seconds on a CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from nnunet_unpaired.errors import UserError

NOISE = 12.0
CONTRAST_BRIGHT = 60.0
CONTRAST_DARK = -50.0
CONTRAST_SHARED = 45.0


def default_channel_names(num_channels: int) -> List[str]:
    return [f"mod{c}" for c in range(num_channels)]


HELP = "write a synthetic paired multi-channel dataset (co-registered channels, one label map) in nnU-Net raw format"
LAYOUTS = ("exclusive", "redundant", "modalities")
#: what each layout shows (dataset.json's description, the benchmark's report)
LAYOUT_DESCRIPTIONS = {
    "exclusive": "structure only_<c> is visible in channel c only, 'shared' in every channel",
    "redundant": "structure strong_in_<c> is visible strongly in channel c and weakly in channel c + 1, 'shared' "
                 "in every channel",
    "modalities": "every structure is visible in every channel; odd channels invert the contrast of all but the "
                  "last structure (two modalities of one anatomy)",
}
WEAK = 0.5  # contrast of a structure's weak appearance (redundant layout), relative to its strong one
MISALIGNED_CHANNEL = 1  # the channel that misalign_voxels translates
_MISALIGN_STREAM = 7  # the misalignment directions come from their own random stream (seed, case, 7)


def contrast_strength(num_channels: int, layout: str = "exclusive") -> np.ndarray:
    """Float (C + 1, C) matrix: entry [s, c] is the contrast of structure s (label s + 1) in channel c relative to
    its full contrast (1 strong, :data:`WEAK` weak, 0 invisible, -1 inverted); see the module docstring for the
    layouts."""
    if num_channels < 2:
        raise ValueError(f"a multi-channel phantom needs at least 2 channels, got {num_channels}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "modalities":
        matrix = np.ones((num_channels + 1, num_channels), dtype=np.float64)
        matrix[:num_channels, 1::2] = -1.0  # odd channels: inverted contrast, except for the last structure
        return matrix
    matrix = np.zeros((num_channels + 1, num_channels), dtype=np.float64)
    matrix[np.arange(num_channels), np.arange(num_channels)] = 1.0
    if layout == "redundant":
        matrix[np.arange(num_channels), (np.arange(num_channels) + 1) % num_channels] = WEAK
    matrix[num_channels] = 1.0
    return matrix


def visibility(num_channels: int, layout: str = "exclusive") -> np.ndarray:
    """Boolean (C + 1, C) matrix: entry [s, c] is True when structure s (label s + 1) is visible in channel c."""
    return contrast_strength(num_channels, layout) != 0


def _ellipsoid(shape: Tuple[int, int, int], center: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    grid = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii)) <= 1.0


def make_case(rng: np.random.Generator, shape: Tuple[int, int, int], num_channels: int, layout: str = "exclusive"
              ) -> Tuple[np.ndarray, np.ndarray]:
    """One case: images (C, D, H, W) float32 and labels (D, H, W) uint8; see the module docstring."""
    depth, height, width = shape
    body_center = np.array([height / 2, width / 2]) * (1 + rng.uniform(-0.05, 0.05, 2))
    body_radii = np.array([height, width]) * rng.uniform(0.38, 0.45, 2)
    body = _ellipsoid(shape, (depth / 2 - 0.5, *body_center), (depth * 10.0, *body_radii))
    labels = np.zeros(shape, dtype=np.uint8)
    placed: List[Tuple[np.ndarray, float]] = []
    for structure in range(num_channels + 1):
        radius = min(height, width) * rng.uniform(0.08, 0.12)
        for _ in range(1000):
            # a point inside the body, far enough from its border and from the structures placed so far
            direction = rng.uniform(-1, 1, 2)
            center = body_center + direction * np.maximum(body_radii - radius - 2, 1)
            inside = np.sum(((center - body_center) / np.maximum(body_radii - radius - 2, 1)) ** 2) <= 1
            if inside and all(np.linalg.norm(center - c) >= radius + r + 2 for c, r in placed):
                break
        else:
            radius *= 0.6  # crowded: accept the last center with a smaller structure (may touch another one)
        placed.append((center, radius))
        z_center = depth / 2 - 0.5 + rng.uniform(-0.1, 0.1) * depth
        mask = _ellipsoid(shape, (z_center, *center), (max(depth * 0.75, 1.0), radius, radius)) & body
        labels[mask & (labels == 0)] = structure + 1
    strength = contrast_strength(num_channels, layout)
    images = np.zeros((num_channels, *shape), dtype=np.float32)
    for c in range(num_channels):
        tissue = (100.0 + 15.0 * c) * rng.uniform(0.9, 1.1)
        image = np.where(body, tissue, 0.0)
        for structure in range(num_channels + 1):
            if strength[structure, c] != 0:
                if structure == num_channels:
                    contrast = CONTRAST_SHARED
                else:
                    contrast = CONTRAST_BRIGHT if structure % 2 == 0 else CONTRAST_DARK
                image = np.where(labels == structure + 1, tissue + strength[structure, c] * contrast, image)
        image = image + body * rng.normal(0.0, NOISE, shape)
        images[c] = image.astype(np.float32)
    return images, labels


def misalignment_shift(seed: int, case_index: int, voxels: int) -> Tuple[int, int]:
    """The in-plane shift ``(dy, dx)`` of channel :data:`MISALIGNED_CHANNEL` for case ``case_index``: ``voxels`` along
    +y, -y, +x or -x, chosen from its own random stream (the case's images do not change with it)."""
    if voxels == 0:
        return 0, 0
    directions = ((voxels, 0), (-voxels, 0), (0, voxels), (0, -voxels))
    return directions[int(np.random.default_rng([seed, case_index, _MISALIGN_STREAM]).integers(4))]


def shift_in_plane(image: np.ndarray, shift: Tuple[int, int], fill: float = 0.0) -> np.ndarray:
    """``image`` (..., H, W) translated by ``shift = (dy, dx)`` whole voxels: ``out[..., y + dy, x + dx] =
    image[..., y, x]``; voxels with no source get ``fill``."""
    dy, dx = (int(v) for v in shift)
    height, width = image.shape[-2:]
    out = np.full_like(image, fill)
    if abs(dy) >= height or abs(dx) >= width:
        return out
    src_y, dst_y = slice(max(-dy, 0), height - max(dy, 0)), slice(max(dy, 0), height - max(-dy, 0))
    src_x, dst_x = slice(max(-dx, 0), width - max(dx, 0)), slice(max(dx, 0), width - max(-dx, 0))
    out[..., dst_y, dst_x] = image[..., src_y, src_x]
    return out


def _write(array: np.ndarray, path: Path, spacing_zyx: Sequence[float]) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    sitk.WriteImage(image, str(path), useCompression=True)


def write_multichannel_phantom(raw_root: Union[str, Path], dataset_id: int = 991, name: str = "MultiChannelPhantom",
                               num_cases: int = 6, shape: Sequence[int] = (4, 64, 64), num_channels: int = 3,
                               seed: int = 0, num_test_cases: int = 0, spacing: Sequence[float] = (3.0, 1.0, 1.0),
                               channel_names: Optional[Sequence[str]] = None, overwrite: bool = False,
                               layout: str = "exclusive", misalign_voxels: int = 0) -> Path:
    """Write ``DatasetXXX_<name>`` into ``raw_root`` (nnU-Net raw format) and return its folder.

    Args:
        raw_root: the ``nnUNet_raw`` folder.
        dataset_id: nnU-Net dataset id (1..999).
        name: dataset name (the folder is ``Dataset{id:03d}_{name}``).
        num_cases: training cases (``imagesTr`` / ``labelsTr``).
        shape: (slices, height, width) of every case.
        num_channels: C >= 2 co-registered channels per case.
        seed: case i is drawn from (seed, i); test case j from (seed, 100000 + j).
        num_test_cases: cases written to ``imagesTs`` with their labels in ``labelsTs`` (for evaluation).
        spacing: voxel size in mm, (z, y, x).
        channel_names: names for dataset.json (default ``mod0``, ``mod1``, ...; avoid "CT", which changes nnU-Net's
            normalization).
        overwrite: replace an existing folder of the same name.
        layout: ``exclusive`` (structure c in channel c only; the stress case), ``redundant`` (strong in channel c,
            weak in channel c + 1: a missing channel can be compensated) or ``modalities`` (every structure in every
            channel, odd channels with inverted contrast); see the module docstring.
        misalign_voxels: translate channel 1 in-plane by this many voxels against channel 0 and the label map (per
            case a seeded direction, see :func:`misalignment_shift`), training and test cases alike; 0: aligned.

    The dataset is written into a temporary folder next to its final place and renamed into place.

    Raises:
        ValueError: bad sizes, fewer than 2 channels, or a misalignment that is negative or not smaller than half the
        in-plane size. UserError: the folder exists and ``overwrite`` is False.
    """
    if num_channels < 2:
        raise ValueError(f"num_channels must be at least 2 (a paired multi-channel dataset), got {num_channels}")
    if num_cases < 1 or num_test_cases < 0:
        raise ValueError(f"num_cases must be >= 1 and num_test_cases >= 0, got {num_cases} and {num_test_cases}")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or shape[0] < 1 or min(shape[1:]) < 24:
        raise ValueError(f"shape must be (slices >= 1, height >= 24, width >= 24), got {shape}")
    if not 1 <= dataset_id <= 999:
        raise ValueError(f"dataset_id must be between 1 and 999, got {dataset_id}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if int(misalign_voxels) != misalign_voxels or not 0 <= misalign_voxels < min(shape[1:]) // 2:
        raise ValueError(f"misalign_voxels must be a whole number in [0, {min(shape[1:]) // 2}) for an in-plane size "
                         f"of {shape[1:]}, got {misalign_voxels}")
    misalign_voxels = int(misalign_voxels)
    names = list(channel_names) if channel_names is not None else default_channel_names(num_channels)
    if len(names) != num_channels:
        raise ValueError(f"{len(names)} channel names given for {num_channels} channels")
    final = Path(raw_root) / f"Dataset{dataset_id:03d}_{name}"
    if final.exists() and not overwrite:
        raise UserError(f"{final} exists already; delete it, choose another dataset id, or pass overwrite=True")
    Path(raw_root).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=raw_root))
    try:
        shifts = _write_cases(tmp, name, num_cases, num_test_cases, shape, num_channels, seed, spacing, layout,
                              misalign_voxels)
        _write_dataset_json(tmp, name, names, num_cases, seed, shape, spacing, layout, misalign_voxels, shifts)
        if final.exists():
            old = Path(f"{final}.old{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _write_cases(folder: Path, name: str, num_cases: int, num_test_cases: int, shape: Tuple[int, int, int],
                 num_channels: int, seed: int, spacing: Sequence[float], layout: str, misalign_voxels: int
                 ) -> Dict[str, List[int]]:
    """Writes the cases; returns the misalignment shift ``[dy, dx]`` of every case (empty when aligned)."""
    shifts: Dict[str, List[int]] = {}
    splits = [("imagesTr", "labelsTr", range(num_cases), 0)]
    if num_test_cases:
        splits.append(("imagesTs", "labelsTs", range(num_test_cases), 100000))
    for images_dir, labels_dir, indices, offset in splits:
        (folder / images_dir).mkdir(parents=True)
        (folder / labels_dir).mkdir(parents=True)
        for i in indices:
            case = f"{name}_{offset + i:06d}"
            images, labels = make_case(np.random.default_rng([seed, offset + i]), shape, num_channels, layout)
            if misalign_voxels:
                shift = misalignment_shift(seed, offset + i, misalign_voxels)
                images[MISALIGNED_CHANNEL] = shift_in_plane(images[MISALIGNED_CHANNEL], shift)
                shifts[case] = list(shift)
            for c in range(num_channels):
                _write(images[c], folder / images_dir / f"{case}_{c:04d}.nii.gz", spacing)
            _write(labels, folder / labels_dir / f"{case}.nii.gz", spacing)
    return shifts


def _write_dataset_json(folder: Path, name: str, names: Sequence[str], num_cases: int, seed: int,
                        shape: Tuple[int, int, int], spacing: Sequence[float], layout: str, misalign_voxels: int,
                        shifts: Dict[str, List[int]]) -> None:
    num_channels = len(names)
    label_names: Dict[str, int] = {"background": 0}
    if layout == "modalities":
        label_names.update({f"organ_{s + 1}": s + 1 for s in range(num_channels + 1)})
    else:
        prefix = "only_" if layout == "exclusive" else "strong_in_"
        for c, channel in enumerate(names):
            label_names[f"{prefix}{channel}"] = c + 1
        label_names["shared"] = num_channels + 1
    dataset_json = {
        "channel_names": {str(c): n for c, n in enumerate(names)},
        "labels": label_names,
        "numTraining": num_cases,
        "file_ending": ".nii.gz",
        "name": name,
        "description": "nnunet_unpaired synthetic paired multi-channel phantom: " + LAYOUT_DESCRIPTIONS[layout],
        "phantom": {"seed": seed, "shape": list(shape), "spacing": list(spacing), "layout": layout,
                    "visible_in_channels": {n: np.flatnonzero(row).tolist()
                                            for n, row in zip(list(label_names)[1:], visibility(num_channels, layout))},
                    "contrast_in_channels": {n: row.tolist() for n, row in zip(
                        list(label_names)[1:], contrast_strength(num_channels, layout))}},
    }
    if misalign_voxels:
        dataset_json["phantom"]["misalignment"] = {
            "channel": MISALIGNED_CHANNEL, "voxels": misalign_voxels,
            "mm": misalign_voxels * float(spacing[1]) if spacing[1] == spacing[2] else None,
            "what": f"channel {MISALIGNED_CHANNEL}'s image translated by shift_yx voxels (array axes y, x) against "
                    f"channel 0 and the label map; vacated voxels are air (0)",
            "shift_yx": shifts}
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))


# --------------------------------------------------------------------------------------------------------------------
# command line: nnunet_unpaired phantom-multichannel
# --------------------------------------------------------------------------------------------------------------------

def add_arguments(parser) -> None:
    parser.add_argument("--id", type=int, default=991, help="nnU-Net dataset id")
    parser.add_argument("--name", default="MultiChannelPhantom", help="dataset name (Dataset<id>_<name>)")
    parser.add_argument("--num-train", type=int, default=6, help="training cases (imagesTr/labelsTr)")
    parser.add_argument("--num-test", type=int, default=0, help="held-out test cases (imagesTs/labelsTs)")
    parser.add_argument("--channels", type=int, default=3, help="co-registered channels per case (at least 2)")
    parser.add_argument("--layout", choices=LAYOUTS, default="exclusive",
                        help="which structure each channel shows: exclusive (structure c in channel c only), "
                             "redundant (strong in channel c, weak in c + 1), modalities (every structure in every "
                             "channel, odd channels inverted: two modalities of one anatomy, for nnUNetTrainerCMCPaired)")
    parser.add_argument("--shape", type=int, nargs=3, default=[4, 64, 64], metavar=("Z", "Y", "X"),
                        help="slices, height, width of every case")
    parser.add_argument("--spacing", type=float, nargs=3, default=[3.0, 1.0, 1.0], metavar=("Z", "Y", "X"),
                        help="voxel size in mm")
    parser.add_argument("--channel-names", nargs="+", default=None,
                        help="channel names for dataset.json (default mod0 mod1 ...; 'CT' selects nnU-Net's CT "
                             "normalization)")
    parser.add_argument("--misalign-voxels", type=int, default=0,
                        help="translate channel 1 in-plane by this many voxels against channel 0 and the label map "
                             "(per case a seeded direction, recorded in dataset.json); 0: co-registered")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder of that name")
    parser.add_argument("--output", default=None, help="raw data folder (default: $nnUNet_raw)")


def run(args) -> int:
    raw_root = args.output or os.environ.get("nnUNet_raw")
    if not raw_root:
        raise UserError("no output folder: set nnUNet_raw (export nnUNet_raw=/path/to/nnUNet_raw) or pass --output")
    try:
        folder = write_multichannel_phantom(raw_root, args.id, args.name, num_cases=args.num_train,
                                            shape=tuple(args.shape), num_channels=args.channels, seed=args.seed,
                                            num_test_cases=args.num_test, spacing=tuple(args.spacing),
                                            channel_names=args.channel_names, overwrite=args.overwrite,
                                            layout=args.layout, misalign_voxels=args.misalign_voxels)
    except ValueError as e:
        raise UserError(str(e)) from None
    print(f"wrote {folder}")
    return 0
