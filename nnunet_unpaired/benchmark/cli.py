"""``nnunet_unpaired benchmark``: train every method and vanilla nnU-Net with one budget, predict, evaluate, report.

Examples::

    nnunet_unpaired benchmark --preset cpu-small --scarce-b 2          # phantom: the pair methods, ~40 min on 2 cores
    nnunet_unpaired benchmark --pair 701 702 -c 3d_fullres --folds 0 1 2 3 4 --preset full

See :mod:`nnunet_unpaired.benchmark.harness` for the steps and the folder layout, and docs/benchmarks.md.
"""

from __future__ import annotations

import argparse

from nnunet_unpaired.errors import UserError

HELP = "train and compare methods against vanilla nnU-Net"


# options without a default value of their own (absent from the parsed arguments when not given)
_OPTIONAL = ("pair", "configuration", "methods", "epochs", "iters", "val_iters", "max_features", "batch_size",
             "in_plane_spacing",
             "num_train", "num_test", "date", "device", "multichannel_dataset", "archive")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from nnunet_unpaired.benchmark.config import PRESETS

    none = argparse.SUPPRESS  # no default of its own: absent from the parsed arguments unless given (see build)
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--pair", nargs=2, metavar=("A", "B"), default=none,
                      help="two raw datasets in $nnUNet_raw (ids or names), each with imagesTs/labelsTs test cases; "
                           "A is the one nnU-Net plans (plan-pair), B the partner (--scarce-b applies to B)")
    data.add_argument("--phantom", action="store_true",
                      help="the built-in synthetic CT-like + MR-like pair (the default when --pair is not given)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-small",
                        help="defaults for everything below: " + "; ".join(f"{p.name}: {p.description}"
                                                                          for p in PRESETS.values()))
    parser.add_argument("-c", "--configuration", default=none, help="nnU-Net configuration (default: the preset's)")
    parser.add_argument("--folds", nargs="+", default=["0"], help="cross-validation folds (0-4 or 'all')")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], metavar="SEED",
                        help="training seeds (nnUNet_unpaired_seed): every method trains once per seed and fold, with "
                             "the same seeds, so runs pair up; the summary gives paired differences with 95%% "
                             "intervals over test cases and seeds (default: 0)")
    parser.add_argument("--methods", nargs="+", default=none,
                        help="registered methods to compare (vanilla is always added); default: every registered "
                             "method of a kind the harness runs")
    parser.add_argument("--epochs", type=int, default=none, help="epochs (default: the preset's)")
    parser.add_argument("--iters", type=int, default=none, help="training iterations per epoch (default: the preset's)")
    parser.add_argument("--val-iters", type=int, default=none,
                        help="validation iterations per epoch (default: the preset's)")
    parser.add_argument("--max-features", type=int, default=none,
                        help="cap of the feature maps per stage (default: the preset's)")
    parser.add_argument("--in-plane-spacing", type=float, default=none, metavar="MM",
                        help="plan-pair --in-plane-spacing: plan at this coarser in-plane spacing (default: the "
                             "preset's; cpu-real: 3.0)")
    parser.add_argument("--batch-size", type=int, default=none,
                        help="batch size (default: the preset's, or nnU-Net's plan)")
    parser.add_argument("--num-train", type=int, default=none,
                        help="phantom: training cases per modality (default: the preset's)")
    parser.add_argument("--num-test", type=int, default=none,
                        help="phantom: test cases per modality (default: the preset's)")
    parser.add_argument("--scarce-b", type=int, nargs="+", default=[], metavar="N",
                        help="also run the scarce-label setting: B trains with only N labelled cases per fold, A "
                             "keeps all (test cases unchanged)")
    parser.add_argument("--no-full-label", action="store_true", help="run only the --scarce-b setting(s)")
    parser.add_argument("--no-mechanism", action="store_true",
                        help="skip the class-feature agreement of the methods that share one network (joint, EAM, ...)")
    parser.add_argument("--uda-directions", nargs="+", choices=("a2b", "b2a"), default=["a2b", "b2a"],
                        help="uda methods (glua, ...): adaptation directions, a2b = A labelled source, B unlabelled "
                             "target (default: both)")
    parser.add_argument("--semi-labelled", type=int, nargs="+", default=[10, 20], metavar="PERCENT",
                        help="semi methods (cmc): share of labelled training cases per modality (default: 10 20)")
    parser.add_argument("--multichannel-dataset", default=none,
                        help="multichannel methods (maml): a raw multi-channel dataset in $nnUNet_raw (id or name) "
                             "with imagesTs/labelsTs; default: the built-in multi-channel phantom")
    parser.add_argument("--phantom-mr-contrast", choices=("permuted", "inverted"), default="permuted",
                        help="the pair phantom's MR-like contrast: permuted (structures reordered against CT; the "
                             "stress case) or inverted (one learnable inversion, to validate image translation)")
    parser.add_argument("--multichannel-phantom", choices=("redundant", "exclusive"), default="redundant",
                        help="layout of the built-in multi-channel phantom: redundant (each structure strong in one "
                             "channel, weak in the next: a missing channel can be compensated; default) or exclusive "
                             "(each structure in one channel only: the stress case)")
    parser.add_argument("--output", default="nnunet_unpaired_benchmarks",
                        help="folder for results; each benchmark gets <A>__<B>__<configuration>__<date> inside")
    parser.add_argument("--date", default=none,
                        help="date part of the result folder (YYYY-MM-DD, default: today); resume an older run")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=none,
                        help="default: cuda when available, else cpu")
    parser.add_argument("--restart", action="store_true",
                        help="delete this benchmark's result folder and start over (default: resume, skipping "
                             "finished steps)")
    parser.add_argument("--archive", default=none, metavar="DIR",
                        help="keep the result folder's record (step markers, logs, timing, per-case metrics, loss "
                             "curves; no images, no models) in DIR after every method, and restore it from there "
                             "first: a benchmark then continues on another machine (commit DIR to carry it)")
    parser.add_argument("--archive-checkpoints", action="store_true",
                        help="with --archive: keep the latest checkpoint of each unfinished training in DIR too "
                             "(restored with the record, so the training continues instead of starting over; a "
                             "few MB for the CPU presets, far more for nnU-Net's own networks)")
    parser.add_argument("-np", "--num-processes", type=int, default=2, help="processes for planning/preprocessing")


def build(args: argparse.Namespace):
    """``(BenchmarkSpec, RunOptions)`` from the parsed arguments and the preset."""
    import os
    from pathlib import Path

    from nnunet_unpaired.benchmark.config import PRESETS, BenchmarkSpec, RunOptions, phantom_spec

    preset = PRESETS[args.preset]
    args = argparse.Namespace(**{**{name: None for name in _OPTIONAL}, **vars(args)})

    def pick(value, default):
        return default if value is None else value

    for name in ("epochs", "iters", "val_iters", "max_features", "batch_size", "num_train", "num_test"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    phantom = args.pair is None
    spec = BenchmarkSpec(
        datasets=None if phantom else tuple(args.pair), configuration=pick(args.configuration, preset.configuration),
        epochs=pick(args.epochs, preset.epochs), iters=pick(args.iters, preset.iters),
        val_iters=pick(args.val_iters, preset.val_iters), no_mirroring=preset.no_mirroring,
        max_features=pick(args.max_features, preset.max_features), batch_size=pick(args.batch_size, preset.batch_size),
        in_plane_spacing=pick(args.in_plane_spacing, preset.in_plane_spacing),
        phantom=phantom_spec(pick(args.num_train, preset.num_train), pick(args.num_test, preset.num_test),
                             mr_contrast=args.phantom_mr_contrast)
        if phantom else None)
    if not phantom and (args.num_train is not None or args.num_test is not None):
        raise UserError("--num-train/--num-test describe the phantom; they do not apply to --pair datasets")
    if any(s < 0 for s in args.seeds):
        raise UserError(f"--seeds takes non-negative integers, got {' '.join(map(str, args.seeds))}")
    options = RunOptions(output=Path(args.output), folds=tuple(args.folds), seeds=tuple(dict.fromkeys(args.seeds)),
                         methods=tuple(args.methods) if args.methods else None, scarce_b=tuple(args.scarce_b),
                         full_label=not args.no_full_label, device=args.device, restart=args.restart, date=args.date,
                         env=tuple((k, v) for k, v in preset.env if not os.environ.get(k)),
                         predict_processes=preset.predict_processes,
                         plan_processes=args.num_processes,
                         uda_directions=tuple(dict.fromkeys(args.uda_directions)),
                         semi_percent=tuple(dict.fromkeys(args.semi_labelled)),
                         multichannel_dataset=args.multichannel_dataset, mechanism=not args.no_mechanism,
                         multichannel_phantom=args.multichannel_phantom,
                         archive=None if args.archive is None else Path(args.archive).resolve(),
                         archive_checkpoints=args.archive_checkpoints)
    if options.archive_checkpoints and options.archive is None:
        raise UserError("--archive-checkpoints keeps checkpoints in the record of --archive DIR: give --archive too")
    if any(not 0 < p < 100 for p in options.semi_percent):
        raise UserError(f"--semi-labelled takes percentages between 0 and 100 (exclusive), got "
                        f"{' '.join(map(str, options.semi_percent))}")
    return spec, options


def run(args: argparse.Namespace) -> int:
    from nnunet_unpaired.benchmark.harness import run_benchmark

    spec, options = build(args)
    run_benchmark(spec, options)
    return 0
