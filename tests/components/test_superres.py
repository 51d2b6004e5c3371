"""ADM-U, the super-resolution UNet: its config from the released flags and its rules, the network's input and
output, and low_res travelling through model_kwargs into every sampling loop and both guidance methods. The values
against the released code are in test_golden_superres.py."""

import dataclasses

import pytest
import torch

from components import build_classifier, build_superres, build_unet, superres_from_flags
from components.config import ConfigError, UNetConfig
from components.config.flags import superres_config_from_flags
from components.config.grid import parse_sampler
from components.config.presets import RELEASED_FLAGS
from components.config.sections import UpsamplerConfig, network_channel_mult
from components.config.validation import network_problems
from components.diffusion import create_diffusion
from components.guidance import ClassifierFreeGuidance, ClassifierGuidance
from components.losses import training_losses
from components.sampling import SampleNoise, class_conditional, sampler_loop
from components.superres import SuperResModel, downsample_area
from tests.components.test_sampling import CFG as PROCESS
from tests.components.test_sampling import CLF, _random

pytestmark = pytest.mark.usefixtures("one_thread")

# a 4x upsampler 2 -> 8 px small enough for the fast tier; 4 classes as test_sampling's classifier
TINY = UpsamplerConfig(image_size=8, small_size=2, in_channels=3, model_channels=32, num_res_blocks=1,
                       attention_resolutions=(4,), channel_mult=(1, 2), num_classes=4, num_head_channels=32)


@pytest.fixture(scope="module")
def tiny():
    return _random(build_superres(TINY), 0)


def _inputs(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    large = torch.rand(n, 3, 8, 8, generator=g) * 2 - 1
    return large, downsample_area(large, 2), torch.arange(n) % 4


# --- config ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,large,small,mult", [("64_256_upsampler", 256, 64, (1, 1, 2, 2, 4, 4)),
                                                   ("128_512_upsampler", 512, 128, (1, 1, 2, 2, 4, 4))])
def test_released_flags_give_the_upsampler_config(name, large, small, mult):
    cfg = superres_config_from_flags(RELEASED_FLAGS[name])
    assert isinstance(cfg, UNetConfig) and (cfg.image_size, cfg.small_size, cfg.in_channels) == (large, small, 3)
    assert cfg.num_classes == 1000 and cfg.learn_sigma and cfg.resblock_updown and not cfg.use_new_attention_order
    # sr_create_model's table, not the diffusion model's (512 there starts at 0.5 and has seven levels)
    assert cfg.channel_mult == () and network_channel_mult(cfg) == mult
    assert network_channel_mult(dataclasses.replace(cfg, channel_mult=(1, 2))) == (1, 2)


def test_small_configs_take_channel_mult_and_in_channels_flags():
    flags = dict(large_size=32, small_size=8, num_channels=32, num_res_blocks=1, attention_resolutions="8",
                 channel_mult="1,2,2", in_channels=1, class_cond=False, use_fp16=True, use_checkpoint=True)
    cfg = superres_config_from_flags(flags)
    assert (cfg.in_channels, cfg.channel_mult, cfg.num_classes, cfg.learn_sigma) == (1, (1, 2, 2), None, False)
    net = superres_from_flags(flags)
    assert net.input_blocks[0][0].in_channels == 2 and net.out[-1].out_channels == 1


@pytest.mark.parametrize("small,match", [
    (0, "upsampler.small_size=0 must be a whole number >= 1"),
    (8, "upsampler.small_size=8 must be below image_size=8"),
    (3, "upsampler.image_size=8 is not a multiple of small_size=3; .* e.g. small_size=2"),
])
def test_small_size_rules(small, match):
    with pytest.raises(ConfigError, match=match):
        build_superres(dataclasses.replace(TINY, small_size=small))


def test_every_unet_rule_holds_for_an_upsampler():
    problems = network_problems("upsampler", dataclasses.replace(TINY, attention_resolutions=(2,)))
    assert any("attention resolution 2 is not reached" in p for p in problems)
    problems = network_problems("upsampler", dataclasses.replace(TINY, model_channels=0, small_size=16))
    assert any("model_channels=0" in p for p in problems) and any("small_size=16 must be below" in p for p in problems)
    with pytest.raises(ConfigError, match="only \\[64, 256, 512\\]"):  # sr_create_model has no 128 entry
        build_superres(UpsamplerConfig(image_size=128, small_size=32))


def test_build_unet_of_an_upsampler_config_is_the_upsampler():
    assert isinstance(build_unet(TINY), SuperResModel)


# --- the network -------------------------------------------------------------------------------------------------
def test_the_first_convolution_sees_the_image_and_low_res(tiny):
    large, low_res, y = _inputs()
    assert tiny.input_blocks[0][0].in_channels == 6
    with torch.no_grad():
        out = tiny(large, torch.tensor([1, 500, 999]), low_res=low_res, y=y)
        other = tiny(large, torch.tensor([1, 500, 999]), low_res=-low_res, y=y)
    assert out.shape == (3, 6, 8, 8)  # eps and v for 3 channels
    assert (out - other).abs().amax(dim=(1, 2, 3)).min() > 0  # every row reads its low_res
    with pytest.raises(ValueError, match="needs low_res"):
        tiny(large, torch.tensor([1, 2, 3]), y=y)


def test_area_downsample_averages_blocks():
    large = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert downsample_area(large, 2).flatten().tolist() == [2.5, 4.5, 10.5, 12.5]


# --- low_res through model_kwargs ----------------------------------------------------------------------------------
def test_hybrid_loss_takes_low_res(tiny):
    large, low_res, y = _inputs()
    d = create_diffusion(PROCESS)
    t, noise = torch.tensor([0, 10, 99]), torch.randn(large.shape, generator=torch.Generator().manual_seed(1))
    terms = training_losses(d, tiny, large, t, {"low_res": low_res, "y": y}, noise=noise)
    assert set(terms) == {"loss", "mse", "vb"} and all(v.shape == (3,) and v.isfinite().all() for v in terms.values())


@pytest.mark.parametrize("sampler", ["ddim3", "3", "dpm++2m-3", "heun-2"])
def test_every_sampling_loop_passes_low_res(tiny, sampler):
    """Each loop, unguided and classifier-guided, reaches the upsampler with every row's own low_res: a batch equals
    its rows sampled one at a time (SampleNoise gives each row its own stream)."""
    large, low_res, y = _inputs()
    spec = parse_sampler(sampler)
    d = create_diffusion(PROCESS, spec.respacing)
    clf = _random(build_classifier(CLF), 1)
    for cond_fn in (None, ClassifierGuidance(clf, 2.0)):
        batch = sampler_loop(spec)(tiny, d, SampleNoise([5, 6, 7], (3, 8, 8)), {"low_res": low_res, "y": y},
                                   cond_fn=cond_fn)
        rows = [sampler_loop(spec)(tiny, d, SampleNoise([5 + i], (3, 8, 8)),
                                   {"low_res": low_res[i:i + 1], "y": y[i:i + 1]}, cond_fn=cond_fn)
                for i in range(3)]
        torch.testing.assert_close(batch, torch.cat(rows), atol=1e-5, rtol=0)


def test_an_unconditional_upsampler_keeps_low_res():
    net = _random(build_superres(dataclasses.replace(TINY, num_classes=None)), 2)
    large, low_res, y = _inputs()
    model = class_conditional(net, False)
    with torch.no_grad():
        torch.testing.assert_close(model(large, torch.tensor([3, 4, 5]), y=y, low_res=low_res),
                                   net(large, torch.tensor([3, 4, 5]), low_res=low_res))


def test_classifier_free_guidance_keeps_each_rows_low_res():
    """Rows at s = 0 (conditional pass only), s = -1 (unconditional only) and s = 2 (both) reorder the batch inside
    the wrapper; each row must still see its own low_res in each of its passes."""
    net = _random(build_superres(TINY, null_class=True), 3)
    large, low_res, y = _inputs(4, seed=4)
    y, t, s = torch.tensor([0, 1, 2, 3]), torch.tensor([900, 500, 100, 10]), [0.0, -1.0, 2.0, 2.0]
    with torch.no_grad():
        got = ClassifierFreeGuidance(net, s, null_label=net.null_label)(large, t, y=y, low_res=low_res)
        cond = net(large, t, low_res=low_res, y=y)
        uncond = net(large, t, low_res=low_res, y=torch.full_like(y, net.null_label))
    expected = cond.clone()
    expected[1] = uncond[1]
    expected[2:, :3] = cond[2:, :3] + 2.0 * (cond[2:, :3] - uncond[2:, :3])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="one entry per row"):
        ClassifierFreeGuidance(net, s, null_label=net.null_label)(large, t, y=y, low_res=low_res[:2])
