"""``nnunet_unpaired export``: a model folder (and optionally a zip) that STOCK nnU-Net predicts with, without this
plugin installed and without ``nnUNet_extTrainer``.

A model folder of this plugin names its trainer in every checkpoint (``trainer_name``), and ``nnUNetv2_predict`` looks
that class up to build the network. For most of our trainers the deployed network is nnU-Net's plain network, built by
``nnUNetTrainer.build_network_architecture`` from plans.json (every training-only module lives outside
``network_weights``). Their model folders can therefore be rewritten as plain nnU-Net model folders:

- trainer ``nnUNetTrainer`` (in the checkpoint and in the folder name) and a plans identifier that names the method,
  ``<plans>_<method>`` (e.g. ``nnUNetPlans_EAM``; nnU-Net splits folder names on ``__``, so the name has none), so
  the folder ``nnUNet_results/<dataset>/nnUNetTrainer__nnUNetPlans_EAM__<configuration>`` cannot collide with the
  user's own vanilla results (``nnUNetTrainer__nnUNetPlans__...``);
- plans.json with ``plans_name`` set to that identifier and only nnU-Net's own top-level keys; this plugin's keys
  (pairing record, method settings) move under :data:`PROVENANCE_KEY`, which also records where the model came from;
- a checkpoint holding only plain Python, numpy and torch objects (nothing that unpickles into this package), whose
  ``network_weights`` are checked here by a strict load into ``nnUNetTrainer.build_network_architecture``'s network;
- the rest copied: ``progress.png`` (drawn from the checkpoint's log when missing), ``debug.json``, training logs,
  ``validation/``, ``dataset.json``, ``dataset_fingerprint.json``.

Refused, with the reason: trainers whose deployed network is built by their own ``build_network_architecture``
(``nnUNetTrainerMAML``: one U-Net per channel and the modality-aware fusion; ``nnUNetTrainerCMC``: the bottleneck
fusion and modality head), plans whose network class or imported arguments point into this package, and weights that
do not load strictly into nnU-Net's plain network. Those models are shared as they are
(``nnUNetv2_export_model_to_zip``) and need the plugin where they run.

Every folder is written to a temporary folder and renamed into place (a rerun replaces an earlier export; a folder that
this command did not write is never replaced). ``-o FILE.zip`` also writes a zip of them with nnU-Net's own
exporter (what ``nnUNetv2_export_model_to_zip`` writes), for ``nnUNetv2_install_pretrained_model_from_zip``.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import re
import shutil
from typing import List, Optional, Sequence

from nnunet_unpaired.errors import UserError
from nnunet_unpaired.pairing import PAIRING_KEY, require_env
from nnunet_unpaired.phantom import replace_folder

HELP = "write a model folder / zip that stock nnU-Net predicts with, without this plugin installed"

#: the trainer every exported model folder names (nnU-Net's own)
STOCK_TRAINER = "nnUNetTrainer"
#: plans.json key of the exported folder: where the model came from, and this plugin's plans keys
PROVENANCE_KEY = "nnunet_unpaired_export"
#: the top-level plans keys nnU-Net's planners write (nnunetv2 2.8); everything else is moved under PROVENANCE_KEY
STOCK_PLANS_KEYS = ("dataset_name", "plans_name", "original_median_spacing_after_transp",
                    "original_median_shape_after_transp", "image_reader_writer", "transpose_forward",
                    "transpose_backward", "configurations", "experiment_planner_used", "label_manager",
                    "foreground_intensity_properties_per_channel", "foreground_intensity_properties_by_modality")
#: top-level packages a stock nnU-Net installation does not have
PLUGIN_PACKAGES = ("nnunet_unpaired",)
#: modules whose objects may appear in an exported checkpoint (stock nnU-Net can unpickle them)
_PICKLABLE_MODULES = ("builtins", "collections", "numpy", "torch")
#: per-fold files copied when present (the checkpoint is rewritten, progress.png drawn when missing)
_FOLD_FILES = ("debug.json", "progress_terms.png", "network_architecture.pdf")
_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]|_(?!_))*[A-Za-z0-9]$")


# ------------------------------------------------------------------------------------------------------ names
def default_plans_name(plans_identifier: str, trainer_name: str) -> str:
    """``nnUNetPlans`` + ``nnUNetTrainerEAM`` -> ``nnUNetPlans_EAM``."""
    method = trainer_name[len(STOCK_TRAINER):] if trainer_name.startswith(STOCK_TRAINER) else trainer_name
    return f"{plans_identifier}_{method.strip('_') or trainer_name}"


def check_plans_name(name: str, source_plans: str) -> str:
    if not _NAME.match(name):
        raise UserError(f"--plans-name {name!r}: use letters, digits, '.', '-' and single '_' (nnU-Net splits model "
                        f"folder names on '__'), starting and ending with a letter or digit, e.g. "
                        f"{source_plans}_MyMethod")
    if name == source_plans:
        raise UserError(f"--plans-name {name!r} is the source's plans identifier: the export would be named "
                        f"{STOCK_TRAINER}__{name}__<configuration>, the folder of a vanilla nnU-Net run. Choose "
                        f"another name (default: {source_plans}_<method>)")
    return name


def dataset_folder_name(results: str, dataset: str) -> str:
    """``902`` or ``Dataset902_PhantomMR`` -> ``Dataset902_PhantomMR`` (looked up in ``nnUNet_results``)."""
    if os.path.isdir(os.path.join(results, dataset)):
        return dataset
    if dataset.isdigit():
        prefix = f"Dataset{int(dataset):03d}_"
        found = sorted(d for d in os.listdir(results)
                       if d.startswith(prefix) and os.path.isdir(os.path.join(results, d)))
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise UserError(f"dataset id {dataset} matches several folders in {results}: {found}; give the full name")
    raise UserError(f"no trained models of dataset {dataset!r} in nnUNet_results={results}: train it first "
                    f"(nnUNetv2_train ...) or check nnUNet_results")


# -------------------------------------------------------------------------------------------- what needs our code
def find_trainer_class(trainer_name: str):
    """The trainer class a checkpoint names: this plugin's (``nnunet_unpaired.ext_trainers``), else nnU-Net's own."""
    import nnunet_unpaired.ext_trainers as ext

    for module in pkgutil.iter_modules(ext.__path__):
        found = getattr(importlib.import_module(f"{ext.__name__}.{module.name}"), trainer_name, None)
        if inspect.isclass(found):
            return found
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    found = recursive_find_python_class(os.path.join(nnunetv2.__path__[0], "training", "nnUNetTrainer"),
                                        trainer_name, "nnunetv2.training.nnUNetTrainer")
    if found is None:
        raise UserError(f"trainer {trainer_name!r} (named in the checkpoint) is neither one of this plugin's nor one "
                        f"of nnU-Net's, so it is unknown whether its network is nnU-Net's plain one; nothing exported")
    return found


def _in_plugin(dotted: str) -> bool:
    return str(dotted).split(".")[0] in PLUGIN_PACKAGES


def _first_sentence(obj) -> str:
    doc = inspect.getdoc(obj) or ""
    return re.split(r"(?<=[.;])\s", doc.strip().split("\n\n")[0].replace("\n", " "), maxsplit=1)[0].rstrip(";.")


def network_blocker(trainer_cls, plans_manager, configuration: str, dataset_json: dict) -> Optional[str]:
    """Why stock nnU-Net cannot build this model's deployed network, or None when it can."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    cm = plans_manager.get_configuration(configuration)
    builder = trainer_cls.build_network_architecture
    if builder is not nnUNetTrainer.build_network_architecture:
        what = f"{trainer_cls.__name__}.build_network_architecture ({builder.__module__})"
        try:
            network = builder(plans_manager, cm, determine_num_input_channels(plans_manager, cm, dataset_json),
                              plans_manager.get_label_manager(dataset_json).num_segmentation_heads, False)
            kind = type(network)
            what = (f"{kind.__module__}.{kind.__qualname__} ({_first_sentence(kind)}), built by "
                    f"{trainer_cls.__name__}.build_network_architecture")
        except Exception:  # the network's class is only for the message; the builder alone decides
            pass
        return f"its deployed network is {what}, code that only this package has"
    paths = {"network class": cm.network_arch_class_name}
    for key in cm.network_arch_init_kwargs_req_import or ():
        paths[f"network argument {key!r}"] = cm.network_arch_init_kwargs.get(key)
    for what, dotted in paths.items():
        if _in_plugin(dotted):
            return f"plans.json (configuration {configuration}) names the {what} {dotted}, which is this package's code"
    return None


def stock_resolution_problems(plans_manager, configuration: str) -> List[str]:
    """What stock nnU-Net's predictor looks up by name and would not find (readers, preprocessor, normalization...)."""
    import pydoc

    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    problems = []
    cm = plans_manager.get_configuration(configuration)
    checks = [("image reader/writer", lambda: plans_manager.image_reader_writer_class),
              ("label manager", lambda: plans_manager.label_manager_class),
              ("preprocessor", lambda: cm.preprocessor_class),
              ("resampling", lambda: (cm.resampling_fn_data, cm.resampling_fn_seg, cm.resampling_fn_probabilities)),
              ("network class", lambda: pydoc.locate(cm.network_arch_class_name))]
    for scheme in cm.normalization_schemes:
        checks.append((f"normalization {scheme}", lambda s=scheme: recursive_find_python_class(
            os.path.join(nnunetv2.__path__[0], "preprocessing", "normalization"), s,
            "nnunetv2.preprocessing.normalization")))
    for what, resolve in checks:
        try:
            ok = resolve()
        except Exception as e:  # nnU-Net raises RuntimeError / AssertionError for unknown names
            ok, what = None, f"{what} ({type(e).__name__}: {e})"
        if ok is None or (isinstance(ok, tuple) and None in ok):
            problems.append(what)
    return problems


# ------------------------------------------------------------------------------------------------- the contents
def stock_plans(plans: dict, plans_name: str, provenance: dict) -> dict:
    """plans.json for the exported folder: nnU-Net's keys, ``plans_name`` renamed, our keys under the provenance."""
    out = {k: v for k, v in plans.items() if k in STOCK_PLANS_KEYS}
    out["plans_name"] = plans_name
    moved = {k: v for k, v in plans.items() if k not in STOCK_PLANS_KEYS}
    out[PROVENANCE_KEY] = {**provenance, "plans_keys": moved}
    return out


def _check_picklable(obj, where: str = "checkpoint") -> None:
    """Raise when ``obj`` holds an object stock nnU-Net could not unpickle (anything outside builtins/numpy/torch)."""
    module = type(obj).__module__.split(".")[0]
    if module not in _PICKLABLE_MODULES:
        raise UserError(f"{where} holds a {type(obj).__module__}.{type(obj).__qualname__}, which stock nnU-Net cannot "
                        f"load; nothing exported")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_picklable(k, where)
            _check_picklable(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple, set)):
        for i, v in enumerate(obj):
            _check_picklable(v, f"{where}[{i}]")


def stock_checkpoint(checkpoint: dict, plans: dict, dataset_json: dict, configuration: str) -> dict:
    """The checkpoint nnU-Net's predictor reads, with trainer ``nnUNetTrainer`` and nothing of this package."""
    init_args = dict(checkpoint.get("init_args") or {})
    out = {
        "network_weights": checkpoint["network_weights"],
        "trainer_name": STOCK_TRAINER,
        "init_args": {"plans": plans, "configuration": configuration, "fold": init_args.get("fold"),
                      "dataset_json": dataset_json, "device": init_args.get("device")},
        "inference_allowed_mirroring_axes": checkpoint.get("inference_allowed_mirroring_axes"),
        "current_epoch": checkpoint.get("current_epoch"),
        "_best_ema": checkpoint.get("_best_ema"),
        "logging": checkpoint.get("logging") or {},
    }
    if out["init_args"]["device"] is None:
        del out["init_args"]["device"]
    _check_picklable(out)
    return out


def check_weights(weights: dict, plans_manager, configuration: str, dataset_json: dict, source: str) -> None:
    """Strict load into the network ``nnUNetTrainer.build_network_architecture`` builds (what the predictor does)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    cm = plans_manager.get_configuration(configuration)
    network = nnUNetTrainer.build_network_architecture(
        plans_manager, cm, determine_num_input_channels(plans_manager, cm, dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads, enable_deep_supervision=False)
    try:
        network.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        summary = str(e).split("\n")[0] + " " + " ".join(str(e).split("\n")[1:3])
        raise UserError(f"the network_weights of {source} do not load strictly into nnU-Net's plain network built "
                        f"from plans.json ({summary.strip()}): the deployed network needs this package's code; "
                        f"nothing exported. Share the plugin's model folder instead (nnUNetv2_export_model_to_zip)")


# --------------------------------------------------------------------------------------------- folders, atomically
def _copy(src: str, dst: str) -> None:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copyfile(src, dst)


def _replace_folder(tmp: str, target: str) -> None:
    """Move the finished ``tmp`` to ``target``; an earlier export there is replaced, anything else refused."""
    if os.path.lexists(target):
        plans_file = os.path.join(target, "plans.json")
        ours = False
        if os.path.isfile(plans_file):
            from batchgenerators.utilities.file_and_folder_operations import load_json

            try:
                ours = PROVENANCE_KEY in load_json(plans_file)
            except ValueError:
                ours = False
        if not ours:
            shutil.rmtree(tmp, ignore_errors=True)
            raise UserError(f"{target} exists and was not written by 'nnunet_unpaired export'; it is left alone. "
                            f"Move it away, or export under another name with --plans-name")
    replace_folder(tmp, target)


def _training_command(plans: dict, dataset: str, configuration: str, fold: str, trainer: str,
                      flag: str = "--c") -> str:
    """The command that continues (``--c``) or validates (``--val``) this model's training; a partner's model folder
    is trained from its dataset A."""
    record = plans.get(PAIRING_KEY) or {}
    trained_on = record.get("partner", dataset) if record.get("role") == "B" else dataset
    return f"nnUNetv2_train {trained_on} {configuration} {fold} -tr {trainer} {flag}"


def source_folds(source: str, folds: Optional[Sequence[str]], checkpoint_name: str, plans: dict, dataset: str,
                 configuration: str, trainer: str) -> List[str]:
    available = sorted(d[len("fold_"):] for d in os.listdir(source)
                       if d.startswith("fold_") and os.path.isdir(os.path.join(source, d)))
    wanted = list(folds) if folds else [f for f in available
                                        if os.path.isfile(os.path.join(source, f"fold_{f}", checkpoint_name))]
    if not wanted:
        command = _training_command(plans, dataset, configuration, "FOLD", trainer)
        raise UserError(f"{source} has no fold_*/{checkpoint_name} (folds present: {available or 'none'}): the "
                        f"training has not finished. Finish it ({command}) or export another checkpoint with --chk "
                        f"checkpoint_best.pth")
    for fold in wanted:
        checkpoint = os.path.join(source, f"fold_{fold}", checkpoint_name)
        if not os.path.isfile(checkpoint):
            raise UserError(f"{checkpoint} does not exist: fold {fold} has not finished training. Finish it "
                            f"({_training_command(plans, dataset, configuration, fold, trainer)}), export another "
                            f"checkpoint with --chk checkpoint_best.pth, or leave the fold out (-f)")
    return wanted


def export_model(dataset: str, trainer: str, configuration: str, plans_identifier: str = "nnUNetPlans",
                 folds: Optional[Sequence[str]] = None, checkpoint_name: str = "checkpoint_final.pth",
                 plans_name: Optional[str] = None, log=print) -> str:
    """Write the stock-nnU-Net model folder of one trained model; returns its path (see the module docstring)."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json, save_json
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_unpaired import __version__
    from nnunet_unpaired.training.progress import plot_progress

    results = require_env("nnUNet_results")["nnUNet_results"]
    dataset = dataset_folder_name(results, str(dataset))
    source = os.path.join(results, dataset, f"{trainer}__{plans_identifier}__{configuration}")
    if not os.path.isdir(source):
        present = sorted(os.listdir(os.path.join(results, dataset)))
        raise UserError(f"no model folder {source}: check -tr / -p / -c (model folders of {dataset}: {present}) or "
                        f"train it first (nnUNetv2_train {dataset} {configuration} FOLD -tr {trainer})")
    for name in ("plans.json", "dataset.json"):
        if not os.path.isfile(os.path.join(source, name)):
            raise UserError(f"{os.path.join(source, name)} is missing: the model folder is incomplete. Rerun the "
                            f"training of this model (nnUNetv2_train ... -tr {trainer})")
    plans = load_json(os.path.join(source, "plans.json"))
    dataset_json = load_json(os.path.join(source, "dataset.json"))
    plans_name = check_plans_name(plans_name or default_plans_name(plans_identifier, trainer), plans_identifier)
    wanted = source_folds(source, folds, checkpoint_name, plans, dataset, configuration, trainer)

    checkpoints = {f: torch.load(os.path.join(source, f"fold_{f}", checkpoint_name), map_location="cpu",
                                 weights_only=False) for f in wanted}
    names = {c.get("trainer_name") for c in checkpoints.values()}
    if len(names) != 1:
        raise UserError(f"the folds of {source} name different trainers {sorted(map(str, names))}; export them one by "
                        f"one (-f)")
    trainer_name = names.pop()
    trainer_cls = find_trainer_class(trainer_name)
    if trainer_cls.__module__.split(".")[0] == "nnunetv2":
        raise UserError(f"{source} was trained with nnU-Net's own {trainer_name}: it already works without this "
                        f"plugin. Share it as it is: nnUNetv2_export_model_to_zip -d {dataset} -o MODEL.zip "
                        f"-c {configuration} -tr {trainer} -p {plans_identifier} -f {' '.join(wanted)}")
    source_pm = PlansManager(plans)
    blocker = network_blocker(trainer_cls, source_pm, configuration, dataset_json)
    if blocker:
        raise UserError(f"{trainer_name} models cannot run on stock nnU-Net without this plugin: {blocker}. Share the "
                        f"model folder as it is (nnUNetv2_export_model_to_zip -d {dataset} -o MODEL.zip -c "
                        f"{configuration} -tr {trainer} -p {plans_identifier}) and install nnunet-unpaired where it "
                        f"is predicted (then: eval \"$(nnunet_unpaired env)\")")
    problems = stock_resolution_problems(source_pm, configuration)
    if problems:
        raise UserError(f"{os.path.join(source, 'plans.json')} names what stock nnU-Net cannot find: "
                        f"{'; '.join(problems)}; nothing exported")

    provenance = {"trainer": trainer_name, "plans": plans_identifier, "configuration": configuration,
                  "source_folder": os.path.relpath(source, results), "checkpoint": checkpoint_name,
                  "folds": wanted, "nnunet_unpaired_version": __version__}
    new_plans = stock_plans(plans, plans_name, provenance)
    new_pm = PlansManager(new_plans)
    target = os.path.join(results, dataset, f"{STOCK_TRAINER}__{plans_name}__{configuration}")
    tmp = os.path.join(results, dataset, f".{os.path.basename(target)}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        save_json(new_plans, os.path.join(tmp, "plans.json"), sort_keys=False)
        save_json(dataset_json, os.path.join(tmp, "dataset.json"), sort_keys=False)
        fingerprint = [os.path.join(source, "dataset_fingerprint.json"),
                       os.path.join(os.environ.get("nnUNet_preprocessed", ""), dataset, "dataset_fingerprint.json")]
        found = next((f for f in fingerprint if os.path.isfile(f)), None)
        if found:
            _copy(found, os.path.join(tmp, "dataset_fingerprint.json"))
        else:
            log(f"note: no dataset_fingerprint.json in {source}; nnUNetv2_export_model_to_zip needs one")
        for fold in wanted:
            src, dst = os.path.join(source, f"fold_{fold}"), os.path.join(tmp, f"fold_{fold}")
            checkpoint = checkpoints[fold]
            check_weights(checkpoint["network_weights"], new_pm, configuration, dataset_json,
                          os.path.join(src, checkpoint_name))
            os.makedirs(dst)
            torch.save(stock_checkpoint(checkpoint, new_plans, dataset_json, configuration),
                       os.path.join(dst, checkpoint_name))
            for name in _FOLD_FILES + tuple(n for n in os.listdir(src) if n.startswith("training_log_")):
                if os.path.isfile(os.path.join(src, name)):
                    _copy(os.path.join(src, name), os.path.join(dst, name))
            if os.path.isfile(os.path.join(src, "progress.png")):
                _copy(os.path.join(src, "progress.png"), os.path.join(dst, "progress.png"))
            else:
                plot_progress(checkpoint.get("logging") or {}, dst)
            if os.path.isdir(os.path.join(src, "validation")):
                shutil.copytree(os.path.join(src, "validation"), os.path.join(dst, "validation"))
            else:
                log(f"note: {src} has no validation/ (nnUNetv2_export_model_to_zip needs validation/summary.json): "
                    f"validate first ({_training_command(plans, dataset, configuration, fold, trainer, '--val')})")
        _replace_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def write_zip(folders: Sequence[str], zip_file: str, checkpoint_name: str = "checkpoint_final.pth") -> None:
    """The exported folders as a zip, written by nnU-Net's own exporter (``nnUNetv2_export_model_to_zip``), for
    ``nnUNetv2_install_pretrained_model_from_zip``; written atomically."""
    from nnunetv2.model_sharing.model_export import export_pretrained_model

    dataset = os.path.basename(os.path.dirname(folders[0]))
    _, plans_name, _ = os.path.basename(folders[0]).split("__")
    folds = sorted({d[len("fold_"):] for folder in folders for d in os.listdir(folder) if d.startswith("fold_")})
    for folder in folders:
        for fold in folds:
            for name in ("progress.png", os.path.join("validation", "summary.json")):
                if not os.path.isfile(os.path.join(folder, f"fold_{fold}", name)):
                    raise UserError(f"{os.path.join(folder, f'fold_{fold}', name)} is missing and nnU-Net's zip "
                                    f"export needs it: validate the model first (nnUNetv2_train ... --val on the "
                                    f"trained model) and rerun the export, or share the exported folder without -o")
    tmp = f"{zip_file}.tmp{os.getpid()}.zip"
    os.makedirs(os.path.dirname(os.path.abspath(zip_file)), exist_ok=True)
    try:
        export_pretrained_model(dataset, tmp, configurations=tuple(os.path.basename(f).split("__")[2] for f in folders),
                                trainer=STOCK_TRAINER, plans_identifier=plans_name,
                                folds=tuple(int(f) if f.isdigit() else f for f in folds), strict=True,
                                save_checkpoints=(checkpoint_name,))
        os.replace(tmp, zip_file)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ---------------------------------------------------------------------------------------------------------- CLI
def add_arguments(parser) -> None:
    parser.add_argument("-d", required=True, help="dataset name or id (the model's dataset; for the partner's model "
                                                  "of a joint training, the partner's)")
    parser.add_argument("-c", nargs="+", required=True, help="configuration(s), e.g. 2d 3d_fullres")
    parser.add_argument("-tr", required=True, help="trainer the model was trained with, e.g. nnUNetTrainerEAM")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier of the trained model")
    parser.add_argument("-f", nargs="+", help="folds to export; when not given, every fold with the checkpoint")
    parser.add_argument("--chk", default="checkpoint_final.pth", help="checkpoint file to export")
    parser.add_argument("--plans-name", help="plans identifier of the export (default: <plans>_<method>, e.g. "
                                             "nnUNetPlans_EAM); the folder is nnUNetTrainer__<name>__<configuration>")
    parser.add_argument("-o", metavar="ZIP", help="also write a zip for nnUNetv2_install_pretrained_model_from_zip")


def run(args) -> int:
    folders = [export_model(args.d, args.tr, c, args.p, args.f, args.chk, args.plans_name) for c in args.c]
    plans_name = os.path.basename(folders[0]).split("__")[1]
    dataset = os.path.basename(os.path.dirname(folders[0]))
    for folder in folders:
        print(f"export: wrote {folder}")
    if args.o:
        write_zip(folders, args.o, args.chk)
        print(f"export: wrote {args.o} (install it with: nnUNetv2_install_pretrained_model_from_zip {args.o})")
    folds = sorted({d[len("fold_"):] for folder in folders for d in os.listdir(folder) if d.startswith("fold_")})
    print(f"Predict with stock nnU-Net (no plugin, no nnUNet_extTrainer needed):\n"
          f"  nnUNetv2_predict -i INPUT -o OUTPUT -d {dataset} -c {args.c[0]} -f {' '.join(folds)} "
          f"-tr {STOCK_TRAINER} -p {plans_name}")
    return 0
