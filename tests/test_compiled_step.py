"""Training steps through nnU-Net's torch.compile'd network (issue #14 item 2), on the CPU.

nnU-Net compiles only on CUDA (``nnUNetTrainer._do_i_compile`` returns False for the CPU); here its decision is
replaced by the one it makes on a GPU (``nnUNet_compile``, set to true) and ``torch.compile`` gets the ``aot_eager``
backend (dynamo + AOTAutograd, no code generation), wrapped to count the graphs it compiles. Each trainer whose
training step used to bypass the compiled network (or recompile) runs a few steps; the checks: the network is
compiled, the steps compile no new graph after the first (no recompilation for modality B, a new channel subset or a
new batch), the training-only modules still learn (their hooks saw the compiled forward), and the exported weights
load strictly into the trainer's own network, without ``_orig_mod.`` keys.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from maml_helpers import tiny_plans
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from pairs import NAMES, set_env
from torch import nn
from torch._dynamo.backends.registry import lookup_backend
from torch._dynamo.eval_frame import OptimizedModule

from nnunet_unpaired.modules.local_alignment import DecoderFeatureTap
from nnunet_unpaired.modules.maml_network import build_maml_network
from nnunet_unpaired.training.cmc import nnUNetTrainerCMC
from nnunet_unpaired.training.cmc_paired import nnUNetTrainerCMCPaired
from nnunet_unpaired.training.eam import nnUNetTrainerEAM
from nnunet_unpaired.training.glua import nnUNetTrainerGLUALocalOnly
from nnunet_unpaired.training.maml import nnUNetTrainerMAML
from nnunet_unpaired.training.ummkd import nnUNetTrainerUMMKD

CONFIG = "2d"
FOLD = 4  # no other test trains these trainers on fold 4 of the session's planned pair


class CountingBackend:
    """``aot_eager`` that counts the graphs dynamo hands it (one per compilation, recompilation or graph break)."""

    def __init__(self):
        self.graphs = 0
        self.inner = lookup_backend("aot_eager")

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        return self.inner(graph_module, example_inputs)


class Compiled:
    """The counting backend of every object torch.compile was called on (nnU-Net also compiles its Dice loss)."""

    def __init__(self):
        self.backends = []

    def graphs(self, target) -> int:
        """Graphs compiled for ``target`` (a module, e.g. the trainer's plain network)."""
        return sum(backend.graphs for compiled, backend in self.backends if compiled is target)


@pytest.fixture
def compiling(monkeypatch):
    """nnU-Net's compile decision as on a GPU (``nnUNet_compile``), torch.compile with counting backends."""
    registry = Compiled()
    original = torch.compile

    def compile_aot_eager(model, *args, **kwargs):
        backend = CountingBackend()
        registry.backends.append((model, backend))
        kwargs["backend"] = backend
        return original(model, *args, **kwargs)

    def do_i_compile(trainer):  # nnUNetTrainer._do_i_compile's answer off the CPU
        return os.environ.get("nnUNet_compile", "true").lower() in ("true", "1", "t")

    monkeypatch.setattr(torch, "compile", compile_aot_eager)
    monkeypatch.setattr(nnUNetTrainer, "_do_i_compile", do_i_compile)
    torch._dynamo.reset()
    yield registry
    torch._dynamo.reset()


def _trainer(env, monkeypatch, cls):
    set_env(env, monkeypatch)
    monkeypatch.setenv("nnUNet_compile", "true")  # after set_env, whose budget turns it off
    base = Path(env["nnUNet_preprocessed"]) / NAMES[0]
    plans = load_json(str(base / "nnUNetPlans.json"))
    plans["continue_training"] = False
    trainer = cls(plans, CONFIG, FOLD, load_json(str(base / "dataset.json")), torch.device("cpu"))
    trainer.initialize()
    assert isinstance(trainer.network, OptimizedModule), "nnU-Net did not compile the network"
    trainer.dataloader_train, trainer.dataloader_val = trainer.get_dataloaders()
    return trainer


def _steps(trainer, compiled, forwards_per_step, n=2):
    """n training steps, each calling the compiled network ``forwards_per_step`` times (A and B, ...); the number of
    graphs compiled for the network after the first step and after the last."""
    network = trainer._plain_network()
    calls = []
    hook = trainer.network.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    try:
        results = [trainer.train_step(next(trainer.dataloader_train))]
        first = compiled.graphs(network)
        assert first >= 1, "the training step did not run through the compiled network"
        results += [trainer.train_step(next(trainer.dataloader_train)) for _ in range(n - 1)]
    finally:
        hook.remove()
    assert len(calls) == n * forwards_per_step, f"{len(calls)} calls of the compiled network in {n} steps"
    for result in results:
        assert all(torch.isfinite(torch.as_tensor(v)).all() for v in result.values()), result
    return results, first, compiled.graphs(network)


def _exports_load_strictly(trainer, env, names=NAMES):
    """Save checkpoint_final.pth; every model folder's weights load strictly into the trainer's own network."""
    os.makedirs(trainer.output_folder, exist_ok=True)
    trainer.save_checkpoint(os.path.join(trainer.output_folder, "checkpoint_final.pth"))
    folder = f"{trainer.__class__.__name__}__nnUNetPlans__{CONFIG}"
    for name in names:
        checkpoint = torch.load(Path(env["nnUNet_results"]) / name / folder / f"fold_{FOLD}" / "checkpoint_final.pth",
                                map_location="cpu", weights_only=False)
        assert not any("_orig_mod." in k for k in checkpoint["network_weights"])
        manager = PlansManager(checkpoint["init_args"]["plans"])
        dataset_json = checkpoint["init_args"]["dataset_json"]
        network = type(trainer).build_network_architecture(
            manager, manager.get_configuration(CONFIG), len(dataset_json["channel_names"]),
            len(dataset_json["labels"]), False)
        network.load_state_dict(checkpoint["network_weights"], strict=True)


def _copy(module: nn.Module):
    return [p.detach().clone() for p in module.parameters()]


def _changed(before, module: nn.Module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


def test_eam_trains_compiled_and_its_hooks_see_the_compiled_forward(planned_pair, monkeypatch, compiling):
    _, env = planned_pair
    trainer = _trainer(env, monkeypatch, nnUNetTrainerEAM)
    module = trainer.training_modules["eam_stage-2"]
    before = _copy(module)
    results, first, last = _steps(trainer, compiling, forwards_per_step=2)  # A, then B
    assert last == first, "a later step recompiled (A and B, or a new batch, need one graph)"
    assert all({"eam_att", "eam_sem", "eam_str"} <= set(r) for r in results)
    assert _changed(before, module), "the EAM module got no gradient: its hooks did not see the forward"
    _exports_load_strictly(trainer, env)


def test_ummkd_runs_modality_b_through_the_compiled_network(planned_pair, monkeypatch, compiling):
    _, env = planned_pair
    trainer = _trainer(env, monkeypatch, nnUNetTrainerUMMKD)
    norm_before = _copy(trainer.partner_norm)
    a_before = {k: v.clone() for k, v in trainer._plain_network().state_dict().items() if k.endswith("norm.weight")}
    results, first, last = _steps(trainer, compiling, forwards_per_step=2)  # A, then B with B's norm parameters
    assert first == 1 and last == 1, "A and B (B's norm parameters swapped in) must share one compiled graph"
    assert _changed(norm_before, trainer.partner_norm), "B's normalization parameters got no gradient"
    assert all(r["kd"] >= 0 for r in results)
    assert any(not torch.equal(v, trainer._plain_network().state_dict()[k]) for k, v in a_before.items())
    # B's forward through the compiled network with B's parameters equals the plain network's (eager) forward
    x = next(trainer.dataloader_train_partner)["data"]  # a training batch's shape, with gradients: no recompilation
    compiled = trainer.forward_partner(x)[0]
    with trainer.partner_norm.substituted(trainer._plain_network()):
        eager = trainer._plain_network()(x)[0]
    torch.testing.assert_close(compiled, eager)
    assert compiling.graphs(trainer._plain_network()) == 1
    _exports_load_strictly(trainer, env)


def test_cmc_trains_through_the_compiled_network(planned_pair, monkeypatch, compiling):
    _, env = planned_pair
    trainer = _trainer(env, monkeypatch, nnUNetTrainerCMC)
    head_before = _copy(trainer.partner_head)
    results, first, last = _steps(trainer, compiling, forwards_per_step=2)  # the labelled pair, the unlabelled pair
    assert first == 1 and last == 1, "the labelled and the unlabelled pair must share one compiled graph"
    assert all({"seg_A", "seg_B", "csc", "cac"} <= set(r) for r in results)
    assert _changed(head_before, trainer.partner_head), "B's head got no gradient"
    _exports_load_strictly(trainer, env)


def test_glua_feature_tap_reads_the_compiled_network(planned_pair, monkeypatch, compiling):
    _, env = planned_pair
    trainer = _trainer(env, monkeypatch, nnUNetTrainerGLUALocalOnly)
    discriminator = trainer.training_modules["feature_discriminator"]
    before = _copy(discriminator)
    results, first, last = _steps(trainer, compiling, forwards_per_step=2)  # source batch, target batch
    assert last == first, "the source and the target batch need one compiled graph"
    assert all({"adv_local", "disc_local", "gap_target"} <= set(r) for r in results)
    assert _changed(before, discriminator), "the feature discriminator learned nothing from the tapped features"
    _exports_load_strictly(trainer, env)


def test_a_tap_attached_after_the_first_compiled_forward_fails_loudly(compiling):
    net = build_maml_network(*_tiny_unet_args(), num_modalities=2, num_classes=3).peers[0]
    compiled = torch.compile(net)
    x = torch.randn(1, 1, 32, 32)
    early = DecoderFeatureTap.attached(compiled, -1)
    compiled(x)
    assert early.take().shape[1] == DecoderFeatureTap.channels(net, -1)
    late = DecoderFeatureTap.attached(compiled, -2)
    compiled(x)  # the compiled graph was traced without this hook
    with pytest.raises(RuntimeError, match="saw no forward pass.*before the network's first forward"):
        late.take()
    assert early.take() is not None  # the early tap keeps working


def _tiny_unet_args():
    arch = tiny_plans(2)["configurations"]["2d"]["architecture"]
    return arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"]


def test_maml_subset_as_weights_equals_fusing_the_subset():
    """The 0/1 fusion weights give what fusing only the subset gives (the eager path of predict-missing)."""
    torch.manual_seed(0)
    network = build_maml_network(*_tiny_unet_args(), num_modalities=3, num_classes=3)
    x = torch.randn(2, 3, 32, 32)
    network.train()
    network.modality_dropout = 1.0
    network.fusion_mask_drawn_outside = True
    network.fusion_mask.copy_(torch.tensor([1.0, 0.0, 1.0]))
    with torch.no_grad():
        weighted = network(x)
        network.modality_dropout = 0.0
        network.available_modalities = (0, 2)
        subset = network(x)
    assert len(weighted) == len(subset) == 2  # deep supervision: both levels fused the same way
    for a, b in zip(weighted, subset):
        torch.testing.assert_close(a, b)


def _tiny_trainer(cls, nnunet_dirs, channel_names: dict):
    """A trainer of ``cls`` on tiny 2d plans (3 labels) without a dataset, initialized with the network compiled
    (``nnUNet_compile`` must be true); its steps are fed synthetic batches (:func:`_synthetic_batch`)."""
    plans = tiny_plans(2, extra={"continue_training": False})
    dataset_json = {"channel_names": channel_names, "labels": {"background": 0, "a": 1, "b": 2}, "numTraining": 1,
                    "file_ending": ".nii.gz"}
    folder = nnunet_dirs["nnUNet_preprocessed"] / plans["dataset_name"] / "nnUNetPlans_2d"
    folder.mkdir(parents=True)
    (folder / "case.b2nd").write_bytes(b"")  # lets nnU-Net's initialize() infer the dataset class; never read
    trainer = cls(plans, "2d", FOLD, dataset_json, torch.device("cpu"))
    trainer.initialize()
    assert isinstance(trainer.network, OptimizedModule)
    return trainer


def _synthetic_batch(generator: torch.Generator, channels: int) -> dict:
    """A batch of 2 random 32 x 32 images with deep-supervision targets at 32 and 16 (labels 0-2)."""
    data = torch.randn(2, channels, 32, 32, generator=generator)
    return {"data": data, "target": [torch.randint(0, 3, (2, 1, s, s), generator=generator).float()
                                     for s in (32, 16)]}


def test_maml_draws_channel_subsets_outside_the_compiled_graph(nnunet_dirs, monkeypatch, compiling):
    """3 channels, modality dropout 1: every step fuses a different 2-channel subset, all in one compiled graph."""
    monkeypatch.setenv("nnUNet_compile", "true")
    monkeypatch.setenv("nnUNet_unpaired_maml_modality_dropout", "1")
    trainer = _tiny_trainer(nnUNetTrainerMAML, nnunet_dirs, {"0": "T1", "1": "T2", "2": "FLAIR"})
    network = trainer.maml_network()
    drawn = []
    draw = network.draw_fusion_mask
    monkeypatch.setattr(network, "draw_fusion_mask", lambda: drawn.append(draw()) or drawn[-1])
    random.seed(3)
    generator = torch.Generator().manual_seed(0)

    def batch():
        return _synthetic_batch(generator, 3)

    weights_before = _copy(network)
    trainer.train_step(batch())
    first = compiling.graphs(network)
    assert first >= 1
    for _ in range(3):
        result = trainer.train_step(batch())
        assert torch.isfinite(torch.as_tensor(result["loss"]))
    assert len(set(drawn)) >= 2 and all(len(s) == 2 for s in drawn), drawn
    assert compiling.graphs(network) == first, "a new channel subset recompiled the network"
    assert _changed(weights_before, network)
    # the compiled network computes what the plain one computes for the subset drawn last
    x = batch()["data"]
    torch.testing.assert_close(trainer.network(x)[0], network(x)[0])
    os.makedirs(trainer.output_folder, exist_ok=True)
    trainer.save_checkpoint(os.path.join(trainer.output_folder, "checkpoint_final.pth"))
    checkpoint = torch.load(os.path.join(trainer.output_folder, "checkpoint_final.pth"), weights_only=False)
    assert not any("_orig_mod." in k or "fusion_mask" in k for k in checkpoint["network_weights"])
    manager = PlansManager(checkpoint["init_args"]["plans"])
    deployed = nnUNetTrainerMAML.build_network_architecture(manager, manager.get_configuration("2d"), 3, 3, False)
    deployed.load_state_dict(checkpoint["network_weights"], strict=True)


def test_cmc_paired_runs_labelled_and_unlabelled_batches_through_one_compiled_graph(nnunet_dirs, monkeypatch,
                                                                                    compiling):
    """The paired trainer's labelled and unlabelled two-channel batches (and the deployed forward) go through the
    compiled network; the mean teacher (eager, outside nnU-Net's network) follows; the export loads strictly."""
    monkeypatch.setenv("nnUNet_compile", "true")
    monkeypatch.setenv("nnUNet_unpaired_cmc_start", "0")  # every unlabelled term from the first step
    trainer = _tiny_trainer(nnUNetTrainerCMCPaired, nnunet_dirs, {"0": "CT", "1": "MR"})
    network = trainer.cmc_network()
    generator = torch.Generator().manual_seed(0)

    def batch():
        return _synthetic_batch(generator, 2)

    trainer.dataloader_unlabelled = iter(lambda: {"data": torch.randn(2, 2, 32, 32, generator=generator)}, None)
    calls = []
    hook = trainer.network.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape))
    weights_before, teacher_before = _copy(network), _copy(trainer.teacher)
    try:
        trainer.train_step(batch())
        first = compiling.graphs(network)
        assert first >= 1, "the training step did not run through the compiled network"
        results = [trainer.train_step(batch()) for _ in range(2)]
    finally:
        hook.remove()
    assert len(calls) == 3 * 2, "labelled and unlabelled batch: two compiled forwards per step"
    assert compiling.graphs(network) == first, "the unlabelled batch or a new batch recompiled the network"
    for result in results:
        assert {"seg_A", "seg_B", "csc", "cac", "st"} <= set(result)
        assert all(torch.isfinite(torch.as_tensor(v)).all() for v in result.values()), result
    assert _changed(weights_before, network) and _changed(teacher_before, trainer.teacher)
    os.makedirs(trainer.output_folder, exist_ok=True)
    trainer.save_checkpoint(os.path.join(trainer.output_folder, "checkpoint_final.pth"))
    checkpoint = torch.load(os.path.join(trainer.output_folder, "checkpoint_final.pth"), weights_only=False)
    assert not any("_orig_mod." in k for k in checkpoint["network_weights"])
    manager = PlansManager(checkpoint["init_args"]["plans"])
    deployed = nnUNetTrainerCMCPaired.build_network_architecture(manager, manager.get_configuration("2d"), 2, 3, False)
    deployed.load_state_dict(checkpoint["network_weights"], strict=True)

