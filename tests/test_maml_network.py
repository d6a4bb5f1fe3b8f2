"""MAML network: shapes (2D/3D, several channel counts), the modality-aware attention module, missing modalities,
deep-supervision switching, the trainer's static builder and the strict load of the deployed network."""

from __future__ import annotations

import random

import pytest
import torch
from maml_helpers import tiny_architecture, tiny_plans
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from torch import nn

from nnunet_unpaired.errors import UserError
from nnunet_unpaired.modules.maml_network import MAMLNetwork, build_maml_network, scale_width
from nnunet_unpaired.modules.modality_aware_attention import ModalityAwareAttention
from nnunet_unpaired.training.maml import nnUNetTrainerMAML, resolve_settings

NUM_CLASSES = 3


def _network(dim: int, channels: int, deep_supervision: bool = True, features=(8, 16, 32), residual=False,
             width_factor=0.5) -> MAMLNetwork:
    torch.manual_seed(0)
    arch = tiny_architecture(dim, features, residual)
    return build_maml_network(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                              channels, NUM_CLASSES, width_factor, deep_supervision)


def _input(dim: int, channels: int, batch: int = 2) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(batch, channels, *([16] * dim))


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize("dim,channels", [(2, 2), (2, 4), (3, 2), (3, 3)])
def test_deep_supervision_outputs_of_fused_and_peers(dim, channels):
    network = _network(dim, channels)
    network.keep_peer_outputs = True
    x = _input(dim, channels)
    fused = network(x)
    expected = [(2, NUM_CLASSES, *([16 // 2 ** s] * dim)) for s in range(3 - 1)]
    assert [tuple(o.shape) for o in fused] == expected
    assert len(network.peer_outputs) == channels
    for peer in network.peer_outputs:
        assert [tuple(o.shape) for o in peer] == expected


@pytest.mark.parametrize("dim", [2, 3])
def test_without_deep_supervision_every_output_is_one_tensor(dim):
    network = _network(dim, 3, deep_supervision=False)
    fused, peers = network.forward_with_peers(_input(dim, 3))
    assert fused.shape == (2, NUM_CLASSES, *([16] * dim))
    assert all(isinstance(p, torch.Tensor) and p.shape == fused.shape for p in peers)


def test_peers_are_single_channel_unets_at_the_requested_width():
    network = _network(2, 3, features=(8, 16, 32), width_factor=0.5)
    assert len(network.peers) == 3
    for peer in network.peers:
        assert peer.encoder.output_channels == [4, 8, 16]
        assert peer.encoder.stages[0][0].convs[0].conv.in_channels == 1
    assert network.attention.channels == 4 and network.head.out_channels == NUM_CLASSES
    assert scale_width({"features_per_stage": [32, 64], "stem_channels": None}, 0.25) == \
        {"features_per_stage": [8, 16], "stem_channels": None}
    assert scale_width({"features_per_stage": [3]}, 0.1)["features_per_stage"] == [1]
    # a capped nnU-Net plan: the base is halved, the cap kept, as in the public code (issue 17)
    plan = {"features_per_stage": [32, 64, 128, 256, 320, 320], "stem_channels": 32}
    assert scale_width(plan, 0.5) == {"features_per_stage": [16, 32, 64, 128, 256, 320], "stem_channels": 16}
    assert plan["features_per_stage"] == [32, 64, 128, 256, 320, 320]  # not modified
    assert scale_width({"features_per_stage": [32, 48, 64]}, 0.5)["features_per_stage"] == [16, 24, 32]  # uniform
    assert scale_width({"features_per_stage": [32, 64, 64]}, 2.0)["features_per_stage"] == [64, 128, 128]
    with pytest.raises(ValueError, match="width_factor must be positive"):
        scale_width({}, 0)


def test_residual_encoder_plans_work_too():
    network = _network(2, 2, residual=True)
    assert [tuple(o.shape) for o in network(_input(2, 2))] == [(2, NUM_CLASSES, 16, 16), (2, NUM_CLASSES, 8, 8)]


def test_the_last_output_has_no_nonlinearity_and_the_input_channel_count_is_checked():
    network = _network(2, 2, deep_supervision=False)
    out = network(_input(2, 2) * 10)
    assert out.min() < 0 or out.max() > 1  # raw logits, no softmax / sigmoid
    with pytest.raises(ValueError, match="expects 2 input channels, got 3"):
        network(_input(2, 3))


def test_one_channel_is_refused():
    with pytest.raises(ValueError, match="at least 2 input channels"):
        _network(2, 1)


def test_every_parameter_gets_a_gradient():
    network = _network(2, 3)
    network.keep_peer_outputs = True
    fused = network(_input(2, 3))
    loss = sum(o.square().mean() for o in fused) + sum(o.square().mean() for p in network.peer_outputs for o in p)
    loss.backward()
    missing = [name for name, p in network.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []


# ---------------------------------------------------------------- modality-aware attention


def _attention(channels=4, modalities=3, dim=2) -> ModalityAwareAttention:
    torch.manual_seed(2)
    conv = nn.Conv3d if dim == 3 else nn.Conv2d
    norm = nn.InstanceNorm3d if dim == 3 else nn.InstanceNorm2d
    return ModalityAwareAttention(channels, modalities, conv, norm, {"affine": True}, nn.LeakyReLU, {})


def _features(channels=4, modalities=3, dim=2):
    torch.manual_seed(3)
    return [torch.randn(2, channels, *([6] * dim)) for _ in range(modalities)]


@pytest.mark.parametrize("dim", [2, 3])
def test_attention_maps_are_voxel_and_channel_wise_in_0_1(dim):
    module, features = _attention(dim=dim), _features(dim=dim)
    out, maps = module(features, return_attention=True)
    assert out.shape == features[0].shape
    assert sorted(maps) == [0, 1, 2]
    for a in maps.values():
        assert a.shape == features[0].shape and (a > 0).all() and (a < 1).all()
        assert a.std() > 0  # not constant over voxels and channels


def _by_hand(module: ModalityAwareAttention, features, available):
    """fused = conv(concat of M/|S| F_i, zeros if missing); output = mean over S of sigmoid(branch_i[F_i, fused]) F_i"""
    m, s = module.num_modalities, len(available)
    stacked = torch.cat([features[i] * m / s if i in available else torch.zeros_like(features[0]) for i in range(m)], 1)
    fused = module.fusion(stacked)
    terms = [torch.sigmoid(module.attention[i](torch.cat([features[i], fused], 1))) * features[i] for i in available]
    return sum(terms) / s


@pytest.mark.parametrize("available", [(0, 1, 2), (0, 2), (1,)])
def test_attention_output_matches_the_formula(available):
    module, features = _attention(), _features()
    given = [f if i in available else None for i, f in enumerate(features)]
    torch.testing.assert_close(module(given), _by_hand(module, features, available))


def test_with_every_modality_the_fusion_is_a_plain_convolution_of_the_concatenation():
    module, features = _attention(), _features()
    _, maps = module(features, return_attention=True)
    fused = module.fusion(torch.cat(features, 1))
    expected = torch.sigmoid(module.attention[1](torch.cat([features[1], fused], 1)))
    torch.testing.assert_close(maps[1], expected)


def test_missing_modalities_get_no_gradient_and_do_not_matter():
    module, features = _attention(), _features()
    module([features[0], None, features[2]]).sum().backward()
    assert all(p.grad is None for p in module.attention[1].parameters())
    assert all(p.grad is not None for p in module.attention[0].parameters())


def test_attention_refuses_bad_input():
    module, features = _attention(), _features()
    with pytest.raises(ValueError, match="at least one available modality"):
        module([None, None, None])
    with pytest.raises(ValueError, match="expected 3 feature maps"):
        module(features[:2])
    with pytest.raises(ValueError, match="feature map 1 has shape"):
        module([features[0], features[1][:, :2], features[2]])
    with pytest.raises(ValueError, match="at least 2 modalities"):
        ModalityAwareAttention(4, 1, nn.Conv2d)


# ---------------------------------------------------------------- missing modalities in the network


def test_a_single_available_modality_uses_its_own_peer():
    network = _network(2, 3, deep_supervision=False).eval()
    x = _input(2, 3)
    network.available_modalities = [1]
    with torch.no_grad():
        torch.testing.assert_close(network(x), network.peers[1](x[:, 1:2]))


def test_missing_channels_are_never_read_and_their_peers_do_not_run():
    network = _network(2, 3, deep_supervision=False).eval()
    network.keep_peer_outputs = True
    x = _input(2, 3)
    network.available_modalities = (2, 0)
    assert network.available_modalities == (0, 2)
    with torch.no_grad():
        reference = network(x)
        assert len(network.peer_outputs) == 2
        x[:, 1] = 1e6
        torch.testing.assert_close(network(x), reference)
        network.available_modalities = None
        assert network.available_modalities == (0, 1, 2)
        assert not torch.allclose(network(x), reference)


def test_fusion_over_a_subset_with_deep_supervision_averages_the_peers_at_low_resolution():
    network = _network(2, 3, deep_supervision=True).eval()
    network.available_modalities = (0, 2)
    with torch.no_grad():
        fused, peers = network.forward_with_peers(_input(2, 3))
    torch.testing.assert_close(fused[1], (peers[0][1] + peers[1][1]) / 2)


@pytest.mark.parametrize("bad,message", [([], "at least one"), ([3], "channel\\(s\\) \\[3\\] do not exist"),
                                         ([0, -1], "do not exist")])
def test_invalid_available_modalities_are_refused(bad, message):
    network = _network(2, 3)
    with pytest.raises(ValueError, match=message):
        network.available_modalities = bad


def test_modality_dropout_changes_the_fusion_in_training_only():
    network = _network(2, 3, deep_supervision=False)
    x = _input(2, 3)
    network.train()
    torch.manual_seed(0)
    reference = network(x)
    network.modality_dropout = 1.0
    random.seed(0)
    dropped = network(x)
    assert not torch.allclose(dropped, reference)
    network.eval()
    with torch.no_grad():
        evaluated = network(x)
        network.modality_dropout = 0.0
        torch.testing.assert_close(network(x), evaluated)


def test_deep_supervision_switch_follows_to_the_peers():
    network = _network(2, 2, deep_supervision=True)
    network.deep_supervision = False
    assert all(p.decoder.deep_supervision is False for p in network.peers)
    assert isinstance(network(_input(2, 2)), torch.Tensor)


# ---------------------------------------------------------------- trainer's static builder, deployment, settings


def _build(plans: dict, deep_supervision: bool, channels: int = 3):
    manager = PlansManager(plans)
    return nnUNetTrainerMAML.build_network_architecture(manager, manager.get_configuration("2d"), channels,
                                                        NUM_CLASSES, deep_supervision)


def test_deployed_network_loads_strictly_like_the_predictor_does():
    trained = _build(tiny_plans(2), deep_supervision=True)
    state = trained.state_dict()
    assert {key.split(".")[0] for key in state} == {"peers", "attention", "head"}
    deployed = _build(tiny_plans(2), deep_supervision=False)
    deployed.load_state_dict(state, strict=True)
    deployed.eval()
    trained.eval()
    trained.deep_supervision = False
    x = _input(2, 3)
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), trained(x))


def test_the_width_factor_travels_in_the_plans():
    plans = tiny_plans(2, extra={"maml": {"peer_width_factor": 1.0}})
    wide = _build(plans, deep_supervision=False)
    assert wide.peers[0].encoder.output_channels == [8, 16, 32]
    with pytest.raises(RuntimeError, match="size mismatch"):
        _build(tiny_plans(2), deep_supervision=False).load_state_dict(wide.state_dict(), strict=True)


def test_settings_come_from_environment_then_plans_then_defaults():
    defaults = {"peer_width_factor": 0.5, "distillation_weight": 0.0, "distillation_temperature": 1.0,
                "modality_dropout": 0.0}
    plans = {"maml": {"distillation_weight": 0.3, "distillation_temperature": 2.0}}
    environ = {"nnUNet_unpaired_maml_distill_temperature": "4", "nnUNet_unpaired_maml_width": " "}
    assert resolve_settings(defaults, plans, environ) == {"peer_width_factor": 0.5, "distillation_weight": 0.3,
                                                          "distillation_temperature": 4.0, "modality_dropout": 0.0}
    with pytest.raises(ValueError, match="modality_dropout from nnUNet_unpaired_maml_modality_dropout is '2'"):
        resolve_settings(defaults, {}, {"nnUNet_unpaired_maml_modality_dropout": "2"})
    with pytest.raises(ValueError, match="peer_width_factor .* must be a positive number"):
        resolve_settings(defaults, {"maml": {"peer_width_factor": "wide"}}, {})


def test_trainer_refuses_a_single_channel_dataset():
    dataset_json = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1}, "numTraining": 1,
                    "file_ending": ".nii.gz"}
    with pytest.raises(UserError, match="at least 2 co-registered input channels.*has 1"):
        nnUNetTrainerMAML(tiny_plans(2), "2d", 0, dataset_json, torch.device("cpu"))


def test_trainer_glue_loss_reads_the_peers_and_deep_supervision_switch(nnunet_dirs, monkeypatch):
    monkeypatch.setenv("nnUNet_unpaired_maml_distill_weight", "0.5")
    dataset_json = {"channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "a": 1, "b": 2},
                    "numTraining": 1, "file_ending": ".nii.gz"}
    plans = tiny_plans(2, extra={"continue_training": False})  # nnUNetv2_train adds this key
    trainer = nnUNetTrainerMAML(plans, "2d", 0, dataset_json, torch.device("cpu"))
    assert trainer.distillation_weight == 0.5 and plans["maml"]["distillation_weight"] == 0.5
    trainer.network = trainer.build_network_architecture(trainer.plans_manager, trainer.configuration_manager, 2,
                                                         NUM_CLASSES, True)
    trainer.maml_network().keep_peer_outputs = True
    loss = trainer._build_loss()
    x = _input(2, 2)
    target = [torch.randint(0, NUM_CLASSES, (2, 1, s, s)).float() for s in (16, 8)]
    total = loss(trainer.network(x), target)
    terms = loss.mutual.last_terms
    torch.testing.assert_close(total, terms["seg_fused"] + terms["seg_peers"] + 0.5 * terms["distillation"])
    assert terms["distillation"] > 0
    trainer.set_deep_supervision_enabled(False)
    assert isinstance(trainer.network(x), torch.Tensor)
