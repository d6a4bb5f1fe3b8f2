"""GLUA style-transfer module: shapes in 2D and 3D (anisotropic strides), AdaIN by hand, the decoder follows the
style code, translation of any size, configuration checks."""

from __future__ import annotations

import pytest
import torch

from nnunet_unpaired.modules.style_transfer import (AdaIN, StyleConfig, StyleTransferGenerator, build_discriminators,
                                                    style_strides_from_plan)

CASES = [
    (2, [[2, 2], [2, 2]], (16, 12)),
    (3, [[2, 2, 2], [1, 2, 2]], (4, 8, 12)),  # anisotropic, like nnU-Net's 3d_fullres plans for thick slices
]


def _config(dim, strides, **kwargs):
    return StyleConfig(dim=dim, strides=strides, width=4, n_res=1, style_dim=3, mlp_width=8, discriminator_width=4,
                       **kwargs)


@pytest.mark.parametrize("dim,strides,size", CASES)
def test_shapes(dim, strides, size):
    torch.manual_seed(0)
    config = _config(dim, strides, in_channels=2)
    generator = StyleTransferGenerator(config)
    source, target = torch.randn(3, 2, *size), torch.randn(2, 2, *size)
    p = generator(source, target)
    reduced = tuple(n // s for n, s in zip(size, config.total_stride))
    assert p.content_source.shape == (3, 4 * 2 ** len(strides), *reduced)
    assert p.style_source.shape == (3, 3) and p.style_target.shape == (2, 3)
    for image, batch in ((p.rec_source, 3), (p.source_to_target, 3), (p.rec_target, 2), (p.target_to_source, 2)):
        assert image.shape == (batch, 2, *size)
    assert p.content_source_to_target.shape == p.content_source.shape
    assert p.style_source_to_target.shape == (3, 3) and p.style_target_used.shape == (3, 3)
    # the two batches differ in size: styles are taken in turn
    torch.testing.assert_close(p.style_target_used[2], p.style_target[0])
    for name, disc in build_discriminators(config).items():
        assert disc(source).shape == (3, 1, *reduced), name


@pytest.mark.parametrize("dim,strides,size", CASES)
def test_translate_pads_any_size_and_keeps_it(dim, strides, size):
    config = _config(dim, strides)
    generator = StyleTransferGenerator(config)
    odd = tuple(n + 3 for n in size)
    out = generator.translate(torch.randn(2, 1, *odd), torch.randn(1, 3))
    assert out.shape == (2, 1, *odd)
    with pytest.raises(ValueError, match="divisible"):
        generator.encode(torch.randn(1, 1, *odd), "source")


def test_adain_hand_computed():
    # one channel, values (1, 3): mean 2, std 1 -> normalized (-1, 1); scale 2, shift 5 -> (3, 7)
    x = torch.tensor([1.0, 3.0]).view(1, 1, 2, 1)
    out = AdaIN(eps=0.0)(x, torch.tensor([[2.0]]), torch.tensor([[5.0]]))
    torch.testing.assert_close(out.flatten(), torch.tensor([3.0, 7.0]))
    with pytest.raises(ValueError, match="scale and shift"):
        AdaIN()(x, torch.ones(1, 2), torch.ones(1, 2))


def test_decoder_output_follows_style_and_content():
    torch.manual_seed(0)
    generator = StyleTransferGenerator(_config(2, [[2, 2]]))
    content = generator.content_encoder(torch.randn(1, 1, 8, 8))
    a, b = torch.randn(1, 3), torch.randn(1, 3)
    assert not torch.allclose(generator.decode(content, a), generator.decode(content, b))
    torch.testing.assert_close(generator.decode(content, a), generator.decode(content, a.clone()))
    other = generator.content_encoder(torch.randn(1, 1, 8, 8))
    assert not torch.allclose(generator.decode(content, a), generator.decode(other, a))


def test_content_encoder_shared_style_encoders_per_domain():
    generator = StyleTransferGenerator(_config(2, [[2, 2]]))
    assert set(generator.style_encoders) == {"source", "target"}
    x = torch.randn(2, 1, 8, 8)
    c_source, s_source = generator.encode(x, "source")
    c_target, s_target = generator.encode(x, "target")
    torch.testing.assert_close(c_source, c_target)
    assert not torch.allclose(s_source, s_target)


def test_content_code_ignores_global_intensity_scaling():
    """Instance normalization after the first convolution: scaling the intensities does not change the code."""
    generator = StyleTransferGenerator(_config(2, [[2, 2]]))
    x = torch.randn(1, 1, 8, 8)
    c, _ = generator.encode(x, "source")
    c2, _ = generator.encode(3 * x, "source")
    torch.testing.assert_close(c, c2, atol=2e-4, rtol=1e-3)


def test_config_round_trip_and_checks():
    config = _config(3, [[1, 2, 2]])
    assert StyleConfig(**config.to_dict()) == config
    assert config.total_stride == (1, 2, 2)
    with pytest.raises(ValueError, match="dim"):
        StyleConfig(dim=4)
    with pytest.raises(ValueError, match="3 entries"):
        StyleConfig(dim=3, strides=[[2, 2]])
    with pytest.raises(ValueError, match="at least one"):
        StyleConfig(dim=2, strides=[])
    with pytest.raises(ValueError, match="width"):
        StyleConfig(dim=2, width=0)
    generator = StyleTransferGenerator(_config(2, [[2, 2]]))
    with pytest.raises(ValueError, match="got shape"):
        generator(torch.randn(1, 2, 8, 8), torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match="style must be"):
        generator.decode(torch.randn(2, 8, 4, 4), torch.randn(3, 3))


def test_strides_from_an_nnunet_plan():
    plan = [[1, 1, 1], [2, 2, 2], [1, 2, 2], [1, 2, 2]]
    assert style_strides_from_plan(plan, 2) == [[2, 2, 2], [1, 2, 2]]
    assert style_strides_from_plan(plan[:2], 2) == [[2, 2, 2]]
    with pytest.raises(ValueError, match="no down-sampling"):
        style_strides_from_plan([[1, 1]], 2)


def test_tanh_output_windows_and_normalized_translation_round_trip():
    torch.manual_seed(0)
    config = StyleConfig(dim=2, strides=[[2, 2]], width=4, n_res=1, style_dim=3, mlp_width=8)
    generator = StyleTransferGenerator(config)
    out = generator.decode(torch.randn(2, 8, 4, 4) * 50, torch.randn(2, 3) * 50)
    assert out.abs().max() <= 1  # tanh: images in [-1, 1]
    generator.set_window("source", -2.0, 6.0)
    generator.set_window("target", 0.0, 1.0)
    x = torch.tensor([[[[-2.0, 2.0], [6.0, 10.0]]]])
    unit = generator.to_unit(x, "source")
    assert unit.flatten().tolist() == [-1.0, 0.0, 1.0, 1.0]  # clipped to the window
    assert generator.from_unit(torch.tensor([-1.0, 0.0, 1.0]), "target").tolist() == [0.0, 0.5, 1.0]
    # the windows travel with the weights (stage 2 and translate rebuild the generator from the state dict)
    again = StyleTransferGenerator(config)
    again.load_state_dict(generator.state_dict())
    assert torch.equal(again.windows, generator.windows)
    y = generator.translate_normalized(torch.randn(2, 1, 8, 8), generator.style_of(torch.rand(2, 1, 8, 8)))
    assert y.min() >= 0 and y.max() <= 1  # in the target's window
    with pytest.raises(ValueError, match="high > low"):
        generator.set_window("target", 1.0, 1.0)


def test_style_reaches_every_decoder_block_and_the_first_version_is_kept():
    torch.manual_seed(0)
    config = StyleConfig(dim=2, strides=[[2, 2], [2, 2]], width=4, n_res=1, style_dim=3, mlp_width=8)
    decoder = StyleTransferGenerator(config).decoder
    assert len(decoder.adain_up) == 2 and decoder.param_sizes == [4 * 16, 2 * 8, 2 * 4]
    # with the residual blocks' AdaIN held neutral, the style still changes the image through the up-sampling blocks
    content, styles = torch.randn(1, 16, 2, 2), torch.randn(2, 3)
    with torch.no_grad():
        last = decoder.mlp[-1]
        last.weight[:64].zero_()
        last.bias[:64].zero_()
        a, b = decoder(content, styles[:1]), decoder(content, styles[1:])
    assert (a - b).abs().max() > 1e-4
    old = StyleTransferGenerator(StyleConfig(dim=2, strides=[[2, 2]], width=4, n_res=1, style_dim=3, mlp_width=8,
                                             output="linear", adain_everywhere=False))
    assert len(old.decoder.adain_up) == 0 and not isinstance(old.decoder.up[-1], torch.nn.Tanh)
    with pytest.raises(ValueError, match="output"):
        StyleConfig(dim=2, output="sigmoid")


def test_cycle_and_content_discriminator():
    from nnunet_unpaired.modules.style_transfer import build_discriminators

    torch.manual_seed(0)
    config = StyleConfig(dim=2, strides=[[2, 2]], width=4, n_res=1, style_dim=3, mlp_width=8)
    generator = StyleTransferGenerator(config)
    p = generator(torch.randn(2, 1, 8, 8), torch.randn(3, 1, 8, 8))
    assert p.cycle_source.shape == p.source.shape and p.cycle_target.shape == p.target.shape
    # the cycle decodes the translation's content with the source's own style
    torch.testing.assert_close(p.cycle_source, generator.decode(p.content_source_to_target, p.style_source))
    discriminators = build_discriminators(config, generator.content_encoder.out_channels)
    assert set(discriminators) == {"source", "target", "content"}
    assert discriminators["content"](p.content_source).shape == (2, 1, 4, 4)


def test_a_generator_of_the_first_stage_1_is_refused_with_the_fix():
    from nnunet_unpaired.errors import UserError
    from nnunet_unpaired.training.glua_style import style_generator_weights

    config = StyleConfig(dim=2, strides=[[2, 2]], width=4, n_res=1, style_dim=3, mlp_width=8)
    state = {f"style_generator.{k}": v for k, v in StyleTransferGenerator(config).state_dict().items()}
    ema = {f"style_generator_ema.copies.0.{k}": v + 1 for k, v in StyleTransferGenerator(config).state_dict().items()}
    chosen = style_generator_weights({**state, **ema})  # the EMA generator's where there is one
    assert torch.equal(chosen["windows"], ema["style_generator_ema.copies.0.windows"])
    assert set(style_generator_weights(state)) == {k[len("style_generator."):] for k in state}
    old = {k: v for k, v in state.items() if not k.endswith("windows")}  # the first stage 1 had no windows
    with pytest.raises(UserError, match="(?s)/x/checkpoint_final.pth.*first GLUA stage 1.*-tr nnUNetTrainerGLUAStyle"):
        style_generator_weights(old, "/x/checkpoint_final.pth")
