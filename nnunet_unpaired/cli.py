"""Command line entry point: ``nnunet_unpaired <command> [options]``.

Each command lives in its own module, which provides ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``. Modules are imported only when their command is used, so ``nnunet_unpaired --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from nnunet_unpaired.errors import UserError

# command -> (module, one-line help). Keep this table the only place a command is registered.
COMMANDS = {
    "env": ("nnunet_unpaired.registration", "print the export line(s) that let nnU-Net find this plugin's trainers"),
    "phantom": ("nnunet_unpaired.phantom", "write a synthetic CT-like + MR-like dataset pair in nnU-Net raw format"),
    "phantom-multichannel": ("nnunet_unpaired.phantom_multichannel",
                             "write a synthetic paired multi-channel dataset (optionally with channel 1 misaligned)"),
    "plan-pair": ("nnunet_unpaired.plan_pair", "plan and preprocess two datasets of one anatomy together"),
    "remap-labels": ("nnunet_unpaired.remap_labels", "copy a raw dataset with renumbered labels (for pairing)"),
    "demo": ("nnunet_unpaired.demo", "phantom -> plan-pair -> train -> predict -> Dice table, end to end"),
    "convert": ("nnunet_unpaired.conversion.cli", "convert a public dataset (MM-WHS, CHAOS, BTCV, AMOS)"),
    "benchmark": ("nnunet_unpaired.benchmark.cli", "train and compare methods against vanilla nnU-Net"),
    "make-semisupervised": ("nnunet_unpaired.semisupervised",
                            "copy a dataset with only N% of its training cases labelled"),
    "translate": ("nnunet_unpaired.translate", "write target-like (style-transferred) source images as NIfTI + PNG"),
    "predict-missing": ("nnunet_unpaired.predict_missing",
                        "predict with a MAML model when some input channels are missing"),
    "export": ("nnunet_unpaired.export", "write a model folder / zip that stock nnU-Net predicts with, no plugin"),
}


def _usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = ["usage: nnunet_unpaired <command> [options]", "", "commands:"]
    lines += [f"  {c.ljust(width)}  {h}" for c, (_, h) in COMMANDS.items()]
    lines += ["", "Run 'nnunet_unpaired <command> --help' for the options of one command."]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from nnunet_unpaired import __version__
        print(__version__)
        return 0
    command = argv[0]
    if command not in COMMANDS:
        print(f"nnunet_unpaired: unknown command '{command}'\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, help_text = COMMANDS[command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"nnunet_unpaired {command}", description=help_text,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except UserError as e:
        print(f"nnunet_unpaired {command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
