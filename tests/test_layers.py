"""The package's layers point one way (README, "Architecture"): modules/ and losses/ <- training/ (and trainers/) <-
benchmark/ <- the command line. Read from the source's import statements, so a new import that breaks it fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nnunet_unpaired"

#: layer -> the layers of this package it must never import
FORBIDDEN = {
    "modules": ("nnunet_unpaired.training", "nnunet_unpaired.benchmark", "nnunet_unpaired.cli"),
    "losses": ("nnunet_unpaired.training", "nnunet_unpaired.benchmark", "nnunet_unpaired.cli"),
    "training": ("nnunet_unpaired.benchmark", "nnunet_unpaired.cli"),
    "benchmark": ("nnunet_unpaired.cli",),
}


def imported_modules(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) of every import statement in a file, at any depth (function-level imports count)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:  # relative import: resolve against the file's package
                parts = list(path.relative_to(ROOT).with_suffix("").parts)[:-node.level]
                base = ".".join(parts + [node.module])
            found.append((node.lineno, base, [alias.name for alias in node.names]))
    return found


def files_of(layer: str) -> list[Path]:
    if layer == "trainers":
        return sorted((ROOT / "trainers").glob("*.py"))
    return sorted((PACKAGE / layer).glob("*.py"))


def violations(layer: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in files_of(layer):
        for line, module, names in imported_modules(path):
            targets = [module] + [f"{module}.{n}" for n in names]
            if any(t == f or t.startswith(f + ".") for t in targets for f in forbidden):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module} {names or ''}")
    return bad


@pytest.mark.parametrize("layer", sorted(FORBIDDEN) + ["trainers"])
def test_no_layer_imports_a_layer_above_it(layer):
    forbidden = FORBIDDEN.get(layer, FORBIDDEN["training"])
    assert files_of(layer), f"no files found for layer {layer}"
    assert violations(layer, forbidden) == []


def test_the_check_finds_an_upward_import(tmp_path, monkeypatch):
    """The check above must be able to fail: a trainer module importing the benchmark is reported."""
    fake_root = tmp_path
    (fake_root / "nnunet_unpaired" / "training").mkdir(parents=True)
    (fake_root / "nnunet_unpaired" / "training" / "probe.py").write_text(
        "def f():\n    from nnunet_unpaired.benchmark.registry import Method\n")
    monkeypatch.setitem(globals(), "ROOT", fake_root)
    monkeypatch.setitem(globals(), "PACKAGE", fake_root / "nnunet_unpaired")
    assert violations("training", FORBIDDEN["training"]) == [
        "nnunet_unpaired/training/probe.py:2 imports nnunet_unpaired.benchmark.registry ['Method']"]


def test_no_benchmark_module_uses_another_modules_private_names():
    """``from x import _name`` and ``module._name`` across modules of the package are both refused."""
    bad = []
    ours = {p.stem for p in (PACKAGE / "benchmark").glob("*.py")} | {"harness", "registry", "interface", "budget"}
    for path in files_of("benchmark"):
        tree = ast.parse(path.read_text(), str(path))
        for line, module, names in imported_modules(path):
            if module.startswith("nnunet_unpaired"):
                bad += [f"{path.name}:{line} imports {module}.{n}" for n in names if n.startswith("_")]
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and isinstance(node.value, ast.Name) and node.value.id in ours):
                bad.append(f"{path.name}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert bad == []


def test_the_interface_matches_the_trainers():
    """What the benchmark reads about the trainers (nnunet_unpaired.training.interface) is what they do."""
    from nnunet_unpaired.training import glua, interface

    for name in interface.PREREQUISITES:
        assert getattr(glua, name).style_trainer == interface.PREREQUISITES[name]
    uses_target = {name for name in dir(glua) if name.startswith("nnUNetTrainer")
                   and getattr(getattr(glua, name), "uses_target_images", False)}
    assert uses_target == set(interface.USES_TARGET_IMAGES)
    assert glua.ENV_STYLE_CHECKPOINT == interface.GLUA_ENV_STYLE_CHECKPOINT


def test_every_benchmark_method_names_a_trainer_nnunet_can_find():
    """The method table names trainers by class name; each must be exported in trainers/ (nnUNet_extTrainer)."""
    from nnunet_unpaired.benchmark import registry

    exported = set()
    for path in files_of("trainers"):
        for _, _, names in imported_modules(path):
            exported |= {n for n in names if n.startswith("nnUNetTrainer")}
    missing = {m.name: m.trainer for m in registry.METHODS if m.trainer not in exported}
    assert missing == {}
