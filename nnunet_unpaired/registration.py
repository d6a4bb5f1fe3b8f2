"""How nnU-Net finds this plugin's trainers: the ``nnUNet_extTrainer`` environment variable.

nnU-Net (>= 2.8) looks a trainer name up in its own package first, then in every folder listed in
``nnUNet_extTrainer`` (separated by ``os.pathsep``). This plugin ships such a folder (the repository's ``trainers/``,
installed as ``nnunet_unpaired.ext_trainers``); ``nnunet_unpaired env`` prints the line that exports it.
The variable must be set for ``nnUNetv2_train`` (also with ``--c`` and ``--val``) and for ``nnUNetv2_predict``:
the predictor resolves the trainer class again from the checkpoint to build the network.
"""

from __future__ import annotations

import os
import shlex
from typing import Dict, Mapping, Optional

ENV_VAR = "nnUNet_extTrainer"

HELP = "print the export line(s) that let nnU-Net find this plugin's trainers"


def ext_trainer_folder() -> str:
    """Absolute path of the folder to put in ``nnUNet_extTrainer`` (works for editable and regular installs)."""
    import nnunet_unpaired.ext_trainers as ext

    return os.path.dirname(os.path.abspath(ext.__file__))


def env_with_trainers(base: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """A copy of ``base`` (default: ``os.environ``) whose ``nnUNet_extTrainer`` includes our folder."""
    env = dict(os.environ if base is None else base)
    folder = ext_trainer_folder()
    parts = [p for p in env.get(ENV_VAR, "").split(os.pathsep) if p]
    if folder not in parts:
        parts.append(folder)
    env[ENV_VAR] = os.pathsep.join(parts)
    return env


def is_registered(env: Optional[Mapping[str, str]] = None) -> bool:
    env = os.environ if env is None else env
    folder = os.path.realpath(ext_trainer_folder())
    return any(os.path.realpath(p) == folder for p in env.get(ENV_VAR, "").split(os.pathsep) if p)


def export_line() -> str:
    value = env_with_trainers()[ENV_VAR]
    return f"export {ENV_VAR}={shlex.quote(value)}"


def add_arguments(parser) -> None:
    parser.add_argument("--check", action="store_true",
                        help="exit with status 1 (and say why) when the current shell does not have the variable set")


def run(args) -> int:
    if args.check:
        if is_registered():
            print(f"OK: {ENV_VAR} contains {ext_trainer_folder()}")
            return 0
        print(f"{ENV_VAR} does not contain {ext_trainer_folder()}, so nnU-Net cannot find nnUNetTrainerEAM & co.\n"
              f"Fix: eval \"$(nnunet_unpaired env)\"   (add that line to your ~/.bashrc to make it permanent)")
        return 1
    print(f"# Let nnU-Net find the nnunet-unpaired trainers (paste into your shell or ~/.bashrc):")
    print(export_line())
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        if not os.environ.get(name):
            print(f"# {name} is not set either; nnU-Net needs it: export {name}=/path/to/{name}")
    return 0
