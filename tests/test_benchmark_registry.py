"""Method table: the entries, kinds, baselines, duplicate names; and how the harness picks methods."""

from __future__ import annotations

import pytest

from nnunet_unpaired.benchmark import harness, registry, training_runs
from nnunet_unpaired.benchmark.registry import KINDS, Method
from nnunet_unpaired.errors import UserError


@pytest.fixture
def clean_registry(monkeypatch):
    """Methods registered at run time are forgotten after the test."""
    monkeypatch.setattr(registry, "_REGISTRY", {})


def test_table_entries():
    methods = registry.load_all()
    assert methods["vanilla"].trainer == "nnUNetTrainerVanilla" and methods["vanilla"].kind == "single"
    assert methods["joint"].trainer == "nnUNetTrainerUnpairedJoint" and methods["joint"].kind == "unpaired"
    assert registry.available() == sorted(methods)
    assert registry.get("joint") is methods["joint"]


def test_every_registered_trainer_is_exported_to_nnunet():
    """nnU-Net finds a trainer by its class name in the nnUNet_extTrainer folder (trainers/), so every registered
    trainer must be importable from there."""
    import importlib.util

    from nnunet_unpaired.registration import ext_trainer_folder

    folder = ext_trainer_folder()
    exported = set()
    for path in sorted(__import__("pathlib").Path(folder).glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"_ext_probe_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        exported |= {name for name in vars(module) if name.startswith("nnUNetTrainer")}
    missing = {m.name: m.trainer for m in registry.load_all().values() if m.trainer not in exported}
    assert not missing, f"registered trainers not exported in {folder}: {missing}"


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="kind 'paired'"):
        Method("x", "nnUNetTrainerX", "paired")
    assert set(training_runs.KIND_RUNNERS) <= set(KINDS)


def test_duplicate_name_needs_the_same_definition(clean_registry):
    method = Method("probe", "nnUNetTrainerProbe", "unpaired")
    assert registry.register(method) is method
    registry.register(Method("probe", "nnUNetTrainerProbe", "unpaired"))  # same definition: fine (re-import)
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(Method("probe", "nnUNetTrainerOther", "unpaired"))


def test_unknown_method_names_the_available_ones():
    with pytest.raises(UserError, match="available: .*joint.*vanilla"):
        registry.get("no_such_method")


def test_every_baseline_is_a_method_and_the_pair_methods_are_compared_with_vanilla_and_joint():
    methods = registry.load_all()
    for method in methods.values():
        assert set(method.baselines) <= set(methods), method
        assert method.name not in method.baselines
    for name in ("eam", "ummkd", "cmc"):
        assert methods[name].baselines == ("vanilla", "joint")
    assert "source-only" in methods["glua"].baselines


def test_harness_adds_the_baselines_of_a_pair_method(clean_registry):
    lines = []
    names = [m.name for m in harness.resolve_methods(["eam"], log=lines.append)]
    assert names == ["vanilla", "eam", "joint"]
    assert any("adding 'joint'" in line for line in lines)


def test_harness_default_methods_are_the_runnable_kinds_vanilla_first(clean_registry):
    registry.register(Method("probe_uda", "nnUNetTrainerProbeUDA", "uda"))
    registry.register(Method("probe_unpaired", "nnUNetTrainerProbe", "unpaired"))
    names = [m.name for m in harness.resolve_methods(None, log=lambda _: None)]
    assert names[0] == "vanilla" and "joint" in names and "probe_unpaired" in names
    assert "probe_uda" not in names


def test_harness_adds_vanilla_and_refuses_kinds_it_cannot_run(clean_registry, monkeypatch):
    lines = []
    assert [m.name for m in harness.resolve_methods(["joint"], log=lines.append)] == ["vanilla", "joint"]
    assert "adding 'vanilla'" in lines[0]
    registry.register(Method("probe_semi", "nnUNetTrainerProbeSemi", "semi"))
    monkeypatch.delitem(harness.EXPERIMENTS, "semi")
    with pytest.raises(NotImplementedError, match="'probe_semi'.*kind 'semi'.*KIND_RUNNERS"):
        harness.resolve_methods(["joint", "probe_semi"], log=lambda _: None)
    # an experiment module without run_settings is no runner either
    monkeypatch.setitem(harness.EXPERIMENTS, "semi", "nnunet_unpaired.benchmark.report")
    with pytest.raises(NotImplementedError, match="'probe_semi'"):
        harness.resolve_methods(["probe_semi"], log=lambda _: None)


def test_experiment_kinds_get_their_methods_and_pair_settings_only_when_asked(clean_registry):
    vanilla, joint = registry.get("vanilla"), registry.get("joint")
    uda = registry.register(Method("probe_uda2", "nnUNetTrainerProbeUDA", "uda"))
    semi = registry.register(Method("probe_semi2", "nnUNetTrainerProbeSemi", "semi"))
    assert harness.pair_methods([vanilla, uda]) == []  # vanilla alone does not run the pair settings for uda
    assert harness.pair_methods([vanilla]) == [vanilla]
    assert harness.pair_methods([vanilla, joint, uda]) == [vanilla, joint]
    assert harness.experiment_methods([vanilla, joint, uda, semi]) == {"uda": [vanilla, uda],
                                                                       "semi": [vanilla, semi]}


def test_new_kind_plugs_in_through_the_dispatch_table(clean_registry, monkeypatch):
    calls = []

    def train_probe(ctx, method, fold):
        calls.append((method.name, fold))
        return []

    monkeypatch.setitem(training_runs.KIND_RUNNERS, "multichannel", train_probe)
    method = registry.register(Method("probe_mc", "nnUNetTrainerProbeMC", "multichannel"))
    assert [m.name for m in harness.resolve_methods(["probe_mc"], log=lambda _: None)] == ["vanilla", "probe_mc"]
    assert training_runs.train_method(None, method, "0") == [] and calls == [("probe_mc", "0")]
