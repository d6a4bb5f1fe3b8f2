"""``nnunet_unpaired convert <mmwhs|chaos|btcv|amos> --input PATH [options]``: argument parsing for the converters.

The same parser serves the nnU-Net style scripts in ``dataset_conversion/`` (``python
dataset_conversion/Dataset701_MMWHS.py --input PATH``) through :func:`main`.
"""

from __future__ import annotations

import argparse
import sys

from nnunet_unpaired.conversion.common import DEFAULT_GEOMETRY_TOLERANCE, parse_ids
from nnunet_unpaired.errors import UserError

HELP = "convert a public dataset (MM-WHS, CHAOS, BTCV, AMOS)"


def _common(p: argparse.ArgumentParser, default_ids: str) -> None:
    p.add_argument("--input", required=True, help="the unpacked archive as downloaded (never modified)")
    p.add_argument("--output-root", default=None,
                   help="where DatasetXXX_Name/ is written (default: $nnUNet_raw)")
    p.add_argument("--ids", nargs="+", default=None, metavar="N",
                   help="convert only these case numbers (default: all found)")
    p.add_argument("--dataset-id", nargs="+", type=int, default=None, metavar="ID",
                   help=f"nnU-Net dataset id(s) to write (default: {default_ids})")
    p.add_argument("--geometry-tolerance", type=float, default=DEFAULT_GEOMETRY_TOLERANCE, metavar="MM",
                   help="largest header difference (mm, direction cosines) tolerated between an image and its label "
                        "(default: %(default)s)")
    p.add_argument("--folds", type=int, default=5,
                   help="cross-validation folds in splits_final.json (default: %(default)s)")


def _modality(p: argparse.ArgumentParser, choices: list[str], default: str) -> None:
    p.add_argument("--modality", choices=choices, default=default,
                   help="which modality to convert; 'both' writes two datasets (default: %(default)s)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dataset", required=True, metavar="{mmwhs,chaos,btcv,amos}")
    fmt = argparse.HelpFormatter  # defaults are written into the help texts

    p = sub.add_parser("mmwhs", formatter_class=fmt, help="MM-WHS 2017 cardiac CT + MR (datasets 701 CT, 702 MR)")
    _common(p, "701 702 (CT MR)")
    _modality(p, ["ct", "mr", "both"], "both")
    p.add_argument("--protocol", choices=["mmwhs-7", "mmwhs-4"], default="mmwhs-7",
                   help="all 7 structures, or the 4-structure cross-modality protocol (AA, LAC, LVC, MYO) "
                        "(default: %(default)s)")
    p.add_argument("--ct-test-ids", nargs="+", default=None, metavar="N",
                   help="CT test cases (imagesTs), 'none' for none (default: protocol's 1003 1008 1014 1019)")
    p.add_argument("--mr-test-ids", nargs="+", default=None, metavar="N",
                   help="MR test cases (imagesTs), 'none' for none (default: protocol's 1007 1009 1018 1019)")

    p = sub.add_parser("chaos", formatter_class=fmt, help="CHAOS abdominal MR (703) and CT liver (704)")
    _common(p, "703 (MR), 704 (CT)")
    _modality(p, ["mr", "ct", "both"], "mr")
    p.add_argument("--protocol", choices=["abdomen-4", "liver"], default="abdomen-4",
                   help="MR labels: liver, kidneys, spleen (pairs with BTCV/AMOS abdomen-4) or liver only "
                        "(pairs with CHAOS CT) (default: %(default)s)")
    p.add_argument("--sequence", choices=["T2SPIR", "T1DUAL", "all"], default="T2SPIR",
                   help="MR sequence(s) (default: %(default)s)")
    p.add_argument("--t1-layout", choices=["channels", "cases"], default="channels",
                   help="T1-DUAL in/out phase as two channels of one case, or as two cases of one patient "
                        "(default: %(default)s)")
    p.add_argument("--mr-test-ids", nargs="+", default=None, metavar="N",
                   help="MR test patients, 'none' for none (default: SIFA's 1 13 32 38)")
    p.add_argument("--ct-test-ids", nargs="+", default=None, metavar="N",
                   help="CT test patients (default: none)")

    p = sub.add_parser("btcv", formatter_class=fmt, help="BTCV / Synapse abdominal CT (705)")
    _common(p, "705")
    p.add_argument("--protocol", choices=["btcv-13", "abdomen-4"], default="btcv-13",
                   help="all 13 organs, or the 4-organ protocol shared with CHAOS MR (default: %(default)s)")
    p.add_argument("--test-ids", nargs="+", default=None, metavar="N",
                   help="test cases, 'none' for none (default: SIFA's 1 9 30 32 33 39 with abdomen-4, none with "
                        "btcv-13)")

    p = sub.add_parser("amos", formatter_class=fmt, help="AMOS 2022 abdominal CT (706) + MR (707)")
    _common(p, "706 707 (CT MR)")
    _modality(p, ["ct", "mr", "both"], "both")
    p.add_argument("--protocol", choices=["amos-15", "abdomen-4"], default="amos-15",
                   help="all 15 organs, or the 4-organ protocol shared with CHAOS MR / BTCV (default: %(default)s)")
    p.add_argument("--test-ids", nargs="+", default=None, metavar="N", help="test cases (default: none)")
    p.add_argument("--va-as-test", action="store_true",
                   help="put AMOS's labelled validation cases (imagesVa) into imagesTs instead of training")


def _modalities(choice: str) -> list[str]:
    return ["ct", "mr"] if choice == "both" else [choice]


def _dataset_ids(args, modalities: list[str]) -> dict | None:
    if args.dataset_id is None:
        return None
    if len(args.dataset_id) != len(modalities):
        raise UserError(f"--dataset-id: give {len(modalities)} id(s), one per converted modality "
                        f"({', '.join(m.upper() for m in modalities)})")
    return dict(zip(modalities, args.dataset_id))


def _test_ids(args, modalities: list[str]) -> dict:
    out = {}
    for m in modalities:
        value = parse_ids(getattr(args, f"{m}_test_ids", None), f"--{m}-test-ids")
        if value is not None:
            out[m] = value
    return out


def run(args) -> int:
    common = {"output_root": args.output_root, "ids": parse_ids(args.ids, "--ids"),
              "geometry_tolerance": args.geometry_tolerance, "n_folds": args.folds}
    if args.folds < 1:
        raise UserError("--folds must be at least 1")
    if args.dataset in ("mmwhs", "chaos", "amos"):
        modalities = _modalities(args.modality)
        common["dataset_ids"] = _dataset_ids(args, modalities)
    if args.dataset == "mmwhs":
        from nnunet_unpaired.conversion.mmwhs import convert_mmwhs

        convert_mmwhs(args.input, modalities=modalities, protocol=args.protocol,
                      test_ids=_test_ids(args, modalities), **common)
    elif args.dataset == "chaos":
        from nnunet_unpaired.conversion.chaos import convert_chaos

        convert_chaos(args.input, modalities=modalities, protocol=args.protocol, sequence=args.sequence,
                      t1_layout=args.t1_layout, test_ids=_test_ids(args, modalities), **common)
    elif args.dataset == "btcv":
        from nnunet_unpaired.conversion.btcv import DEFAULT_ID, convert_btcv

        if args.dataset_id is not None and len(args.dataset_id) != 1:
            raise UserError("--dataset-id: BTCV writes one dataset, give one id")
        convert_btcv(args.input, protocol=args.protocol, test_ids=parse_ids(args.test_ids, "--test-ids"),
                     dataset_id=args.dataset_id[0] if args.dataset_id else DEFAULT_ID, **common)
    else:
        from nnunet_unpaired.conversion.amos import convert_amos

        convert_amos(args.input, modalities=modalities, protocol=args.protocol,
                     test_ids=parse_ids(args.test_ids, "--test-ids"), va_as_test=args.va_as_test, **common)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dataset_conversion/Dataset7xx_*.py`` scripts: argv starts with the dataset name."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="nnunet_unpaired convert", description=HELP,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except UserError as e:
        print(f"nnunet_unpaired convert: error: {e}", file=sys.stderr)
        return 2
