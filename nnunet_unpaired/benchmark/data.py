"""Step 1 of a benchmark, data and splits: the two source datasets (the user's, or the phantom written once), their
links in a setting's nnUNet_raw, and the ``splits_final.json`` every method of a setting trains on."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from nnunet_unpaired.benchmark.config import (
    PHANTOM_IDS,
    SCARCE_SEED,
    SPLIT_SEED,
    BenchmarkSpec,
    Context,
    Dataset,
    phantom_config,
    say,
)
from nnunet_unpaired.benchmark.steps import run_step, write_json_atomic
from nnunet_unpaired.errors import UserError


def read_dataset(raw_folder: Path, name: str) -> Dataset:
    from nnunetv2.utilities.dataset_name_id_conversion import convert_dataset_name_to_id

    folder = raw_folder / name
    with open(folder / "dataset.json") as f:
        labels = json.load(f)["labels"]
    labels = {k: v for k, v in labels.items() if not (isinstance(v, int) and v == 0)}
    return Dataset(name=name, id=convert_dataset_name_to_id(name), raw=folder.resolve(), labels=labels)


def check_test_cases(dataset: Dataset) -> None:
    images, labels = dataset.raw / "imagesTs", dataset.raw / "labelsTs"
    if not images.is_dir() or not labels.is_dir() or not any(labels.iterdir()):
        raise UserError(f"{dataset.raw} has no held-out test cases (imagesTs/ and labelsTs/ with files). The "
                        f"benchmark evaluates on them and never on training cases: move some cases of {dataset.name} "
                        f"into imagesTs/labelsTs (the converters do this) and run again.")


def user_datasets(pair: tuple[str, str]) -> tuple[str, str]:
    """Resolve ``--pair A B`` (ids or names) against ``$nnUNet_raw`` to dataset folder names."""
    from nnunet_unpaired.plan_pair import resolve_dataset

    names = (resolve_dataset(pair[0]), resolve_dataset(pair[1]))
    if names[0] == names[1]:
        raise UserError(f"--pair needs two different datasets, got {names[0]} twice")
    return names


def prepare_data(spec: BenchmarkSpec, result: Path, log: Callable[[str], None] = say) -> tuple[Dataset, Dataset]:
    """The two source datasets: the user's (checked for test cases) or the phantom, written once into the result."""
    if spec.datasets is not None:
        raw = Path(os.environ["nnUNet_raw"])
        a, b = (read_dataset(raw, name) for name in spec.datasets)
    else:
        from nnunet_unpaired.phantom import dataset_folder_name, write_phantom_pair

        raw = result / "phantom_raw"
        config = phantom_config(spec.phantom)

        def write(log_file: Path) -> dict:
            with open(log_file, "w") as f:
                write_phantom_pair(str(raw), PHANTOM_IDS, config, log=lambda msg: print(msg, file=f))
            return {"raw": str(raw)}

        run_step(result, "phantom", write, log, products=[raw])
        a, b = (read_dataset(raw, dataset_folder_name(i, m)) for i, m in zip(PHANTOM_IDS, ("CT", "MR")))
    for dataset in (a, b):
        check_test_cases(dataset)
    return a, b


def link_raw(ctx: Context) -> None:
    """The setting's nnUNet_raw holds symbolic links to the source datasets (only read by nnU-Net)."""
    raw = ctx.nnunet["nnUNet_raw"]
    for folder in ctx.nnunet.values():
        folder.mkdir(parents=True, exist_ok=True)
    for dataset in (ctx.a, ctx.b):
        link = raw / dataset.name
        if link.is_symlink() and Path(os.readlink(link)) == dataset.raw:
            continue
        if link.is_symlink():
            link.unlink()
        elif link.exists():
            raise UserError(f"{link} exists and is not a link to {dataset.raw}; remove it or pass --restart")
        link.symlink_to(dataset.raw, target_is_directory=True)


def case_identifiers(preprocessed: Path) -> list[str]:
    gt = preprocessed / "gt_segmentations"
    with open(preprocessed / "dataset.json") as f:
        ending = json.load(f)["file_ending"]
    return sorted(p.name[: -len(ending)] for p in gt.iterdir() if p.name.endswith(ending))


def default_splits(identifiers: Sequence[str]) -> list[dict[str, list[str]]]:
    """nnU-Net's own 5-fold split (what nnUNetTrainer.do_split would write)."""
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    if len(identifiers) < 5:
        raise UserError(f"{len(identifiers)} training cases are too few for nnU-Net's 5-fold cross-validation. Use "
                        f"more cases, or put your own splits_final.json into the raw dataset folder.")
    return [{"train": [str(c) for c in s["train"]], "val": [str(c) for c in s["val"]]}
            for s in generate_crossval_split(sorted(identifiers), seed=SPLIT_SEED, n_splits=5)]


def scarce_splits(splits: Sequence[Mapping[str, Sequence[str]]], n: int, seed: int = SCARCE_SEED
                  ) -> list[dict[str, list[str]]]:
    """Each fold's training list cut to ``n`` cases (a seeded choice, written sorted); validation lists unchanged."""
    import numpy as np

    result = []
    for index, split in enumerate(splits):
        train = sorted(split["train"])
        if n > len(train):
            raise UserError(f"--scarce-b {n} asks for more labelled cases than fold {index} of B has for training "
                            f"({len(train)}).")
        chosen = np.random.default_rng([seed, index]).choice(len(train), size=n, replace=False)
        result.append({"train": sorted(train[i] for i in chosen), "val": list(split["val"])})
    return result


def write_splits(ctx: Context) -> dict:
    """Both datasets get a ``splits_final.json`` before any training, so every method trains on the same split."""

    def action(log_file: Path) -> dict:
        info = {}
        for dataset in (ctx.a, ctx.b):
            base = ctx.nnunet["nnUNet_preprocessed"] / dataset.name
            path = base / "splits_final.json"
            if path.is_file():  # the dataset's own split (copied from the raw folder by the planner)
                splits = json.loads(path.read_text())
                source = "the dataset's own splits_final.json"
            else:
                splits = default_splits(case_identifiers(base))
                source = f"nnU-Net's 5-fold split (seed {SPLIT_SEED})"
            if dataset is ctx.b and ctx.scarce_b is not None:
                splits = scarce_splits(splits, ctx.scarce_b)
                source += f", training lists cut to {ctx.scarce_b} labelled cases (seed {SCARCE_SEED})"
            write_json_atomic(path, splits)
            with open(log_file, "a") as f:
                print(f"{dataset.name}: {source}", file=f)
            info[dataset.name] = {"source": source,
                                  "train_per_fold": [len(s["train"]) for s in splits],
                                  "val_per_fold": [len(s["val"]) for s in splits]}
            if dataset is ctx.b and ctx.scarce_b is not None:
                info[dataset.name]["train_cases"] = [s["train"] for s in splits]
        return info

    products = [ctx.nnunet["nnUNet_preprocessed"] / d.name / "splits_final.json" for d in (ctx.a, ctx.b)]
    return run_step(ctx.root, "splits", action, ctx.log, products=products, must_match=(ctx.a.name, ctx.b.name))


def test_cases(dataset: Dataset) -> list[str]:
    with open(dataset.raw / "dataset.json") as f:
        ending = json.load(f)["file_ending"]
    return sorted(p.name[: -len(ending)] for p in (dataset.raw / "labelsTs").iterdir() if p.name.endswith(ending))
