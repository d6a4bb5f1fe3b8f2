"""``nnunet_unpaired translate``: write a few source images rendered in the target's style by a trained GLUA
style-transfer model (stage 1, ``nnUNetTrainerGLUAStyle``, or a stage-2 checkpoint that carries it), as NIfTI files
and one PNG grid, so that a person can judge the translation before training stage 2.

Reads the source's and the target's PREPROCESSED images (nnU-Net's normalized, resampled, cropped arrays: what the
style model was trained on), never a label. For each of the first ``-n`` source training cases it writes

- ``<case>_source.nii.gz``: the preprocessed source image (channel 0; other channels get ``_<c>`` appended);
- ``<case>_translated.nii.gz``: its translation, in the style of a target case (``<case>_style_<target case>`` in
  the grid's title);

and ``translations.png``: one row per case (source, translated, the target image that gave the style), middle
slice. A 2D configuration translates every slice of the volume; a 3D configuration translates the central crop of
the patch size (a whole volume rarely fits in memory). The NIfTI files carry the configuration's spacing and no
orientation: they are for looking at, not for registration to the raw images.
"""

from __future__ import annotations

import os
from typing import Dict, List, Tuple

import numpy as np

from nnunet_unpaired.errors import UserError

HELP = "write target-like (style-transferred) source images as NIfTI + PNG"
DEFAULT_TRAINER = "nnUNetTrainerGLUAStyle"
SLICE_BATCH = 16


def add_arguments(parser) -> None:
    parser.add_argument("-d", "--dataset", help="source dataset (name or id) the style model was trained on")
    parser.add_argument("-c", "--configuration", default="2d", help="nnU-Net configuration of the style training")
    parser.add_argument("-f", "--fold", default="0", help="fold of the style training")
    parser.add_argument("-tr", "--trainer", default=DEFAULT_TRAINER,
                        help="trainer whose checkpoint holds the style model (stage 1, or a GLUA stage-2 trainer)")
    parser.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier")
    parser.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth", help="checkpoint file name")
    parser.add_argument("--checkpoint-file", default=None,
                        help="path of a checkpoint; replaces -d/-c/-f/-tr/-p/-chk (which only locate it)")
    parser.add_argument("-o", "--output", required=True, help="output folder (created)")
    parser.add_argument("-n", "--num-cases", type=int, default=4, help="number of source cases to translate")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")


def checkpoint_path(args) -> str:
    if args.checkpoint_file:
        return args.checkpoint_file
    if not args.dataset:
        raise UserError("name the source dataset (-d) or a checkpoint (--checkpoint-file)")
    results = os.environ.get("nnUNet_results")
    if not results:
        raise UserError("nnUNet_results is not set; export it (or pass --checkpoint-file)")
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        name = maybe_convert_to_dataset_name(args.dataset if str(args.dataset).startswith("Dataset")
                                             else int(args.dataset))
    except (RuntimeError, ValueError) as e:
        raise UserError(f"dataset {args.dataset} not found ({str(e).splitlines()[0]})") from None
    folder = os.path.join(results, name, f"{args.trainer}__{args.plans}__{args.configuration}", f"fold_{args.fold}")
    path = os.path.join(folder, args.checkpoint)
    if not os.path.isfile(path):
        raise UserError(f"{path} does not exist. Train the style model first: nnUNetv2_train {name} "
                        f"{args.configuration} {args.fold} -tr {DEFAULT_TRAINER} -p {args.plans}")
    return path


def load_style_model(path: str, device: str = "cpu"):
    """The style generator of a GLUA checkpoint and the checkpoint's init_args and partner (target) name."""
    import torch

    from nnunet_unpaired.modules.style_transfer import StyleConfig, StyleTransferGenerator
    from nnunet_unpaired.training.glua_style import style_generator_weights
    from nnunet_unpaired.training.source_only import EXTRAS_KEY
    from nnunet_unpaired.training.unpaired_joint import CHECKPOINT_KEY

    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path} does not exist")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    extras = checkpoint.get(CHECKPOINT_KEY, {})
    config = extras.get(EXTRAS_KEY, {}).get("style_config")
    if config is None or "training_modules" not in extras:
        raise UserError(f"{path} holds no style-transfer model: use the checkpoint of {DEFAULT_TRAINER} (or of a "
                        f"GLUA stage-2 trainer) in the SOURCE dataset's model folder")
    # the EMA generator of stage 1 where there is one
    weights = style_generator_weights(extras["training_modules"], path)
    generator = StyleTransferGenerator(StyleConfig(**config))
    generator.load_state_dict(weights)
    return generator.to(device).eval(), checkpoint["init_args"], extras["partner"]


def _dataset(preprocessed: str, name: str, plans_name: str, configuration: str):
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_file = os.path.join(preprocessed, name, plans_name + ".json")
    if not os.path.isfile(plans_file):
        raise UserError(f"{plans_file} does not exist: {name} is not preprocessed here (check nnUNet_preprocessed)")
    manager = PlansManager(load_json(plans_file))
    cm = manager.get_configuration(configuration)
    folder = os.path.join(preprocessed, name, cm.data_identifier)
    if not os.path.isdir(folder):
        raise UserError(f"{folder} does not exist: configuration {configuration} of {name} is not preprocessed")
    dataset = infer_dataset_class(folder)(folder)
    return dataset, manager, cm


def _image(dataset, identifier: str) -> Tuple[np.ndarray, Dict]:
    """The preprocessed image (C, Z, Y, X) as float32 and the case's properties (labels are not touched)."""
    data, _, _, properties = dataset.load_case(identifier)
    return np.asarray(data[:], dtype=np.float32), properties


def _center_crop(image: np.ndarray, size) -> np.ndarray:
    slices = [slice(None)]
    for n, s in zip(image.shape[1:], size):
        start = max(0, (n - s) // 2)
        slices.append(slice(start, start + min(n, s)))
    return image[tuple(slices)]


def translate_volume(generator, image: np.ndarray, style_image: np.ndarray, two_d: bool, patch_size,
                     device: str = "cpu") -> Tuple[np.ndarray, np.ndarray]:
    """(source image as translated, its translation); both (C, Z, Y, X). ``style_image`` is a target image."""
    import torch

    with torch.no_grad():
        if two_d:
            reference = torch.from_numpy(style_image[:, style_image.shape[1] // 2][None]).to(device)
            style = generator.style_of(reference)
            slices = torch.from_numpy(np.moveaxis(image, 1, 0).copy())  # (Z, C, Y, X): one 2D image per slice
            out = [generator.translate_normalized(chunk.to(device), style).cpu() for chunk in slices.split(SLICE_BATCH)]
            return image, np.moveaxis(torch.cat(out).numpy(), 0, 1)
        crop = _center_crop(image, patch_size)
        reference = torch.from_numpy(_center_crop(style_image, patch_size)[None].copy()).to(device)
        style = generator.style_of(reference)
        out = generator.translate_normalized(torch.from_numpy(crop[None].copy()).to(device), style)
        return crop, out[0].cpu().numpy()


def _write_nifti(array: np.ndarray, spacing_zyx, path: str) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing(tuple(float(s) for s in reversed(spacing_zyx)))
    sitk.WriteImage(image, path, useCompression=True)


def _write_grid(rows: List[Tuple[str, np.ndarray, np.ndarray, str, np.ndarray]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 3, figsize=(9, 3 * len(rows)), squeeze=False)
    for r, (case, source, translated, style_case, style) in enumerate(rows):
        for c, (title, img) in enumerate(((f"{case}: source", source), ("translated", translated),
                                          (f"style: {style_case}", style))):
            plane = img[0, img.shape[1] // 2]
            low, high = np.percentile(plane, (1, 99))
            axes[r, c].imshow(plane, cmap="gray", vmin=low, vmax=high if high > low else low + 1)
            axes[r, c].set_title(title, fontsize=8)
            axes[r, c].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args) -> int:
    if args.num_cases < 1:
        raise UserError("--num-cases must be at least 1")
    path = checkpoint_path(args)
    generator, init_args, partner = load_style_model(path, args.device)
    preprocessed = os.environ.get("nnUNet_preprocessed")
    if not preprocessed:
        raise UserError("nnUNet_preprocessed is not set; the preprocessed images of both datasets are needed")
    plans, configuration = init_args["plans"], init_args["configuration"]
    from nnunet_unpaired.pairing import read_pairing

    pairing = read_pairing(plans, path)
    source, source_pm, cm = _dataset(preprocessed, plans["dataset_name"], plans["plans_name"], configuration)
    target, _, _ = _dataset(preprocessed, partner, pairing.partner_plans, configuration)
    two_d = len(cm.patch_size) == 2
    sources = sorted(source.identifiers)[:args.num_cases]
    targets = sorted(target.identifiers)
    os.makedirs(args.output, exist_ok=True)
    rows = []
    for i, case in enumerate(sources):
        image, properties = _image(source, case)
        style_case = targets[i % len(targets)]
        style_image, _ = _image(target, style_case)
        shown, translated = translate_volume(generator, image, style_image, two_d, cm.patch_size, args.device)
        spacing = [properties["spacing"][0], *cm.spacing] if two_d else list(cm.spacing)
        for channel in range(shown.shape[0]):
            suffix = "" if shown.shape[0] == 1 else f"_{channel:04d}"
            _write_nifti(shown[channel], spacing, os.path.join(args.output, f"{case}_source{suffix}.nii.gz"))
            _write_nifti(translated[channel], spacing, os.path.join(args.output, f"{case}_translated{suffix}.nii.gz"))
        style_shown = style_image if two_d else _center_crop(style_image, cm.patch_size)
        rows.append((case, shown, translated, style_case, style_shown))
    grid = os.path.join(args.output, "translations.png")
    _write_grid(rows, grid)
    print(f"translated {len(rows)} case(s) of {plans['dataset_name']} into the style of {partner} "
          f"(model: {path}); wrote NIfTI files and {grid} to {args.output}")
    return 0
