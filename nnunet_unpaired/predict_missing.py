"""``nnunet_unpaired predict-missing``: predict with a MAML model when some input channels are missing.

A model trained with ``nnUNetTrainerMAML`` (Zhang et al., MICCAI 2021, arXiv 2107.09842) has one peer network per
input channel. With every channel present, ``nnUNetv2_predict`` works as for any nnU-Net model. When channels are
missing, this command predicts from the available ones only:

- the input folder is laid out as for ``nnUNetv2_predict`` (``CASE_XXXX<file_ending>``, XXXX = channel index); the
  files of missing channels may simply be absent;
- ``--available 0 2`` (indices or channel names from dataset.json) names the channels to use for every case; without
  it each case uses the channels whose files are present;
- two or more available channels: the attention module fuses the available peers only; one available channel: that
  channel's own peer predicts alone (as the paper's authors recommend).

nnU-Net's own machinery does the rest: the plans' image reader, the configuration's preprocessor (the missing channels
enter it as zero images and are never looked at by the network), the predictor's sliding window, test-time mirroring,
fold ensembling and export. ``predict_missing.json`` in the output folder records which channels each case used.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from nnunet_unpaired.errors import UserError
from nnunet_unpaired.registration import ENV_VAR, env_with_trainers

HELP = "predict with a MAML model when some input channels are missing"


@dataclass(frozen=True)
class MissingChannelCase:
    """One case to predict: its id, the channels it uses and their files."""

    case_id: str
    available: Tuple[int, ...]
    files: Tuple[str, ...]


def parse_channels(tokens: Sequence[Union[str, int]], channel_names: Mapping[str, str]) -> Tuple[int, ...]:
    """Channel indices from indices or names (as in dataset.json ``channel_names``); sorted, without duplicates.

    Raises:
        UserError: an unknown channel, or nothing left.
    """
    names = {int(k): v for k, v in channel_names.items()}
    described = ", ".join(f"{k} ({v})" for k, v in sorted(names.items()))
    chosen = set()
    for token in tokens:
        text = str(token).strip()
        by_name = [k for k, v in names.items() if v.lower() == text.lower()]
        if text.isdigit() and int(text) in names:
            chosen.add(int(text))
        elif by_name:
            chosen.add(by_name[0])
        else:
            raise UserError(f"channel {text!r} does not exist; the model's channels are {described}")
    if not chosen:
        raise UserError(f"no channel left to predict from; name at least one of {described}")
    return tuple(sorted(chosen))


def find_cases(input_folder: str, file_ending: str, num_channels: int,
               available: Optional[Sequence[int]] = None) -> List[MissingChannelCase]:
    """Group ``CASE_XXXX<file_ending>`` files into cases and decide which channels each case uses.

    Args:
        input_folder: folder with the images.
        file_ending: e.g. ``.nii.gz`` (from the model's dataset.json).
        num_channels: channels the model was trained with.
        available: channels to use for every case (each must have its file); ``None``: the channels present.

    Raises:
        UserError: no images, a channel index the model does not have, or a requested channel file that is absent.
    """
    if not os.path.isdir(input_folder):
        raise UserError(f"input folder {input_folder} does not exist")
    pattern = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})" + re.escape(file_ending) + "$")
    present: Dict[str, Dict[int, str]] = {}
    for name in sorted(os.listdir(input_folder)):
        match = pattern.match(name)
        if match:
            present.setdefault(match["case"], {})[int(match["channel"])] = os.path.join(input_folder, name)
    if not present:
        raise UserError(f"no images named CASE_XXXX{file_ending} in {input_folder} (XXXX = channel index, e.g. "
                        f"case1_0000{file_ending})")
    cases = []
    for case_id, files in present.items():
        extra = sorted(c for c in files if c >= num_channels)
        if extra:
            raise UserError(f"{files[extra[0]]}: channel {extra[0]} does not exist; the model has channels "
                            f"0..{num_channels - 1}")
        use = tuple(sorted(files)) if available is None else tuple(sorted(available))
        absent = [c for c in use if c not in files]
        if absent:
            expected = os.path.join(input_folder, f"{case_id}_{absent[0]:04d}{file_ending}")
            raise UserError(f"case {case_id}: --available names channel {absent[0]} but {expected} does not exist; "
                            f"add the file or leave the channel out of --available")
        cases.append(MissingChannelCase(case_id, use, tuple(files[c] for c in use)))
    return cases


def _model_folder(args) -> str:
    if args.m:
        return args.m
    if not (args.d and args.c):
        raise UserError("give the model either with -m MODEL_FOLDER or with -d DATASET -c CONFIGURATION "
                        "(and -tr / -p when they differ from the defaults)")
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    try:
        dataset = maybe_convert_to_dataset_name(args.d)
    except RuntimeError as e:
        raise UserError(f"dataset {args.d!r} not found in nnUNet_raw / nnUNet_preprocessed / nnUNet_results: {e}")
    return get_output_folder(dataset, args.tr, args.p, args.c)


def _preprocessed(cases: Sequence[MissingChannelCase], predictor, network, output_folder: str) -> Iterator[dict]:
    """nnU-Net's preprocessing of each case, the missing channels filled with zeros; sets the network's available
    channels right before the predictor gets the case (the predictor consumes one case at a time)."""
    plans_manager, configuration_manager = predictor.plans_manager, predictor.configuration_manager
    num_channels = network.num_modalities
    reader = plans_manager.image_reader_writer_class()
    preprocessor = configuration_manager.preprocessor_class(verbose=False)
    for case in cases:
        images, properties = reader.read_images(list(case.files))
        data = np.zeros((num_channels, *images.shape[1:]), dtype=np.float32)
        data[list(case.available)] = images
        data, _, properties = preprocessor.run_case_npy(data, None, properties, plans_manager, configuration_manager,
                                                        predictor.dataset_json)
        network.available_modalities = case.available
        yield {"data": torch.from_numpy(data).to(torch.float32).contiguous(), "data_properties": properties,
               "ofile": os.path.join(output_folder, case.case_id)}


def predict_missing(model_folder: str, input_folder: str, output_folder: str,
                    available: Optional[Sequence[Union[str, int]]] = None,
                    folds: Sequence[Union[int, str]] = (0, 1, 2, 3, 4), checkpoint: str = "checkpoint_final.pth",
                    device: Union[str, torch.device] = "cuda", tile_step_size: float = 0.5, use_mirroring: bool = True,
                    num_processes_export: int = 2) -> Dict[str, List[int]]:
    """Predict every case of ``input_folder`` from its available channels; returns {case id: channels used}.

    Args: see ``nnunet_unpaired predict-missing --help``; ``available`` takes indices or channel names.

    Side effect: adds this plugin's trainer folder to ``nnUNet_extTrainer`` in ``os.environ`` (the predictor looks the
    trainer class up by the name stored in the checkpoint).

    Raises:
        UserError: missing model or checkpoint, a model not trained with nnUNetTrainerMAML, bad channels or files.
    """
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunet_unpaired.modules.maml_network import MAMLNetwork

    if not os.path.isfile(os.path.join(model_folder, "dataset.json")):
        raise UserError(f"model folder {model_folder} not found (no dataset.json); train it with nnUNetv2_train ... "
                        f"-tr nnUNetTrainerMAML, or point -m at the folder")
    folds = [f if str(f) == "all" else int(f) for f in folds]
    for fold in folds:
        if not os.path.isfile(os.path.join(model_folder, f"fold_{fold}", checkpoint)):
            found = sorted(d for d in os.listdir(model_folder) if d.startswith("fold_"))
            raise UserError(f"{os.path.join(model_folder, f'fold_{fold}', checkpoint)} does not exist; folds "
                            f"present: {found}. Choose them with -f (e.g. -f all) or the checkpoint with -chk")
    if num_processes_export < 1:
        raise UserError(f"the number of export processes must be >= 1, got {num_processes_export}")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("CUDA is not available on this machine; add -device cpu")
    with open(os.path.join(model_folder, "dataset.json")) as f:
        channel_names = json.load(f)["channel_names"]
    wanted = parse_channels(available, channel_names) if available is not None else None

    os.environ[ENV_VAR] = env_with_trainers()[ENV_VAR]  # the predictor resolves the trainer class from the checkpoint
    predictor = nnUNetPredictor(tile_step_size=tile_step_size, use_gaussian=True, use_mirroring=use_mirroring,
                                perform_everything_on_device=True, device=device, verbose=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(model_folder, folds, checkpoint)
    network = getattr(predictor.network, "_orig_mod", predictor.network)
    if not isinstance(network, MAMLNetwork):
        raise UserError(f"{model_folder} was trained with {predictor.trainer_name}, not nnUNetTrainerMAML; predict "
                        f"with nnUNetv2_predict (it needs every channel)")
    cases = find_cases(input_folder, predictor.dataset_json["file_ending"], network.num_modalities, wanted)

    dropout = float((predictor.plans_manager.plans.get("maml") or {}).get("modality_dropout", 0.0))
    if dropout == 0 and any(2 <= len(c.available) < network.num_modalities for c in cases):
        print("predict-missing: WARNING: this model was trained without modality dropout, so its fusion has never seen "
              "a subset of the channels; on the phantom such subset fusion lost even structures visible in every "
              "channel. Compare with single channels (--available C) or retrain with "
              "nnUNet_unpaired_maml_modality_dropout=0.5 (docs/maml.md).", file=sys.stderr)
    os.makedirs(output_folder, exist_ok=True)
    names = {int(k): v for k, v in channel_names.items()}
    used = {case.case_id: list(case.available) for case in cases}
    for case in cases:
        print(f"predict-missing: {case.case_id} from channel(s) "
              + ", ".join(f"{c} ({names[c]})" for c in case.available))
    try:
        predictor.predict_from_data_iterator(_preprocessed(cases, predictor, network, output_folder),
                                             save_probabilities=False,
                                             num_processes_segmentation_export=num_processes_export)
    finally:
        network.available_modalities = None
    shutil.copyfile(os.path.join(model_folder, "dataset.json"), os.path.join(output_folder, "dataset.json"))
    shutil.copyfile(os.path.join(model_folder, "plans.json"), os.path.join(output_folder, "plans.json"))
    with open(os.path.join(output_folder, "predict_missing.json"), "w") as f:
        json.dump({"model_folder": os.path.abspath(model_folder), "folds": [str(x) for x in folds],
                   "channel_names": channel_names, "available_per_case": used}, f, indent=2)
    return used


def add_arguments(parser) -> None:
    parser.add_argument("-i", required=True, help="input folder with CASE_XXXX<file_ending> images (XXXX = channel); "
                                                  "the files of missing channels may be absent")
    parser.add_argument("-o", required=True, help="output folder for the segmentations")
    parser.add_argument("-d", help="dataset name or id (with -c, -tr, -p this locates the model in nnUNet_results)")
    parser.add_argument("-c", help="configuration, e.g. 2d or 3d_fullres")
    parser.add_argument("-tr", default="nnUNetTrainerMAML", help="trainer the model was trained with")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier")
    parser.add_argument("-m", help="model folder (instead of -d/-c/-tr/-p), the one holding fold_X/")
    parser.add_argument("-f", nargs="+", default=["0", "1", "2", "3", "4"], help="folds to ensemble, or 'all'")
    parser.add_argument("--available", nargs="+", metavar="CHANNEL",
                        help="channels to predict from, by index (the XXXX of the file names) or by name from "
                             "dataset.json; default: per case, the channels whose files are present")
    parser.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint file name")
    parser.add_argument("-step_size", type=float, default=0.5, help="sliding-window step size (fraction of a patch)")
    parser.add_argument("--disable_tta", action="store_true", help="no test-time mirroring")
    parser.add_argument("-device", default="cuda", choices=["cuda", "cpu", "mps"], help="device to predict on")
    parser.add_argument("-nps", type=int, default=2, help="processes for resampling and export (>= 1)")


def run(args) -> int:
    used = predict_missing(_model_folder(args), args.i, args.o, available=args.available, folds=args.f,
                           checkpoint=args.chk, device=args.device, tile_step_size=args.step_size,
                           use_mirroring=not args.disable_tta, num_processes_export=args.nps)
    print(f"predict-missing: {len(used)} case(s) written to {args.o}")
    return 0
