"""The cascade's components: the upsampler as a fourth network kind (config sections, rules, presets), its training
pairs and conditioning augmentation in the Learner, and unguided upsampling through the guidance composition
(guided.upsample_batch). The network's values against the released code are test_golden_superres.py's."""

import dataclasses

import numpy as np
import pytest
import torch

from components.config import ConfigError, apply_overrides, preset_from_dict, to_dict
from components.config.kinds import has_noise_level, has_null_class, kind_of, preset_kinds
from components.config.presets import PRESET_BUILDERS, get_preset
from components.config.validation import preset_problems
from components.diffusion import create_diffusion
from components.guided import AUGMENT_SALT, GuidedNetworks, upsample_batch
from components.images import DataError, downsample_area_uint8, to_model_input
from components.networks import build_network
from components.sampling import SampleNoise, ddim_sample, upsample_seed
from components.superres import downsample_area
from components.training import Learner

pytestmark = pytest.mark.usefixtures("one_thread")
CASCADES = sorted(n for n in PRESET_BUILDERS if n.endswith("-cascade"))


def _problems(preset, overrides):
    return preset_problems(apply_overrides(preset, overrides))


# --- config --------------------------------------------------------------------------------------------------------
def test_the_cascade_presets_are_valid_and_the_others_have_no_upsampler():
    assert CASCADES == ["fashion-mnist-cascade", "imagenet256-cascade", "imagenet512-cascade", "smoke-cascade"]
    for name in PRESET_BUILDERS:
        preset = get_preset(name)
        assert preset_problems(preset) == [], name
        assert preset.cascade == (name in CASCADES)
        optional = ("upsampler",) * preset.cascade + ("guide",) * (preset.guide is not None)
        assert preset_kinds(preset) == ("diffusion", "classifier", "evaluator") + optional
        if preset.cascade:
            assert preset.upsampler.small_size == preset.unet.image_size
            with torch.device("meta"):
                assert type(build_network("upsampler", preset)).__name__ == "SuperResModel"


@pytest.mark.parametrize("name,base,up,large", [("imagenet256-cascade", "imagenet64", "64_256_upsampler", 256),
                                                ("imagenet512-cascade", "imagenet128", "128_512_upsampler", 512)])
def test_the_imagenet_cascades_take_the_released_flags(name, base, up, large):
    from components.config.flags import diffusion_config_from_flags, superres_config_from_flags
    from components.config.presets import RELEASED_FLAGS

    preset, base_preset = get_preset(name), get_preset(base)
    assert (preset.unet, preset.classifier, preset.diffusion) == (base_preset.unet, base_preset.classifier,
                                                                  base_preset.diffusion)
    assert preset.upsampler == superres_config_from_flags(RELEASED_FLAGS[up])
    assert preset.upsampler_diffusion == diffusion_config_from_flags(RELEASED_FLAGS[up])
    assert preset.upsampler_diffusion.noise_schedule == "linear" and preset.data.resolution == large
    assert preset.upsample.sampler == "250" and preset.sample.samplers == ("250",)  # the released README's 250/250
    # the released upsampler (no augmentation) has the released layout: no noise-level embedding
    assert not has_noise_level(preset)


def test_cascade_rules_report_every_problem():
    smoke = get_preset("smoke-cascade")
    problems = _problems(smoke, ["upsampler.small_size=4", "upsampler.in_channels=1", "upsampler.num_classes=3",
                                 "data.resolution=8", "train_upsampler.label_dropout=0.1",
                                 "upsample.low_res_noise=0.1", "upsample.cells=ddim10/scale_3",
                                 "upsample.sampler=ddim2000", "train_diffusion.low_res_noise=0.1"])
    expected = ["upsampler.small_size=4 but unet.image_size=8", "upsampler.in_channels=1 but unet.in_channels=3",
                "upsampler.num_classes=3 but unet.num_classes=4", "data.resolution=8 but upsampler.image_size=16",
                "train_upsampler.label_dropout must be 0", "upsample.low_res_noise=0.1 is above the levels",
                "upsample.cells: 'ddim10/scale_3' is not a cell of the sample grid (ddim10/scale_0, ddim10/scale_2)",
                "upsample.sampler: 'ddim2000' does not fit upsampler_diffusion.steps=1000",
                "train_diffusion.low_res_noise must be 0"]
    for text in expected:
        assert any(text in p for p in problems), (text, problems)
    assert _problems(smoke, ["train_upsampler.low_res_noise=0.2", "upsample.low_res_noise=0.1",
                             "upsample.cells=ddim10/scale_2"]) == []
    auto = _problems(smoke, ["evaluate.champion_scale=auto"])
    assert any("upsample.cells is empty" in p and "champion_scale=auto" in p for p in auto)
    assert _problems(smoke, ["evaluate.champion_scale=auto", "upsample.cells=ddim10/scale_0,ddim10/scale_2"]) == []


def test_a_cascade_has_all_four_sections_and_others_refuse_them():
    partial = dataclasses.replace(get_preset("smoke-cascade"), upsample=None, upsampler_diffusion=None)
    assert any("a cascade needs the sections" in p and "upsampler_diffusion, upsample" in p
               for p in preset_problems(partial))
    with pytest.raises(ConfigError, match="preset smoke has no cascade, so no upsampler section"):
        apply_overrides(get_preset("smoke"), ["upsampler.model_channels=64"])
    with pytest.raises(ConfigError, match="only cascade presets"):
        kind_of(get_preset("smoke"), "upsampler")


@pytest.mark.parametrize("name", ["smoke", "smoke-cascade", "imagenet512-cascade"])
def test_presets_round_trip_through_json(name):
    preset = get_preset(name)
    assert preset_from_dict(to_dict(preset)) == preset


def test_only_the_diffusion_model_learns_the_null_class_and_only_the_upsampler_the_noise_level():
    preset = apply_overrides(get_preset("smoke-cascade"), ["train_diffusion.label_dropout=0.1"])
    assert has_null_class(preset) and not has_null_class(preset, "upsampler") and not has_noise_level(preset)
    with torch.device("meta"):
        assert build_network("upsampler", preset).null_label is None
    augmented = apply_overrides(preset, ["train_upsampler.low_res_noise=0.2"])
    assert has_noise_level(augmented) and not has_noise_level(augmented, "diffusion")
    with torch.device("meta"):
        plain, noisy = build_network("upsampler", preset), build_network("upsampler", augmented)
    extra = set(noisy.state_dict()) - set(plain.state_dict())
    assert extra and all(k.startswith("noise_level_embed.") for k in extra)


# --- the network's noise level ---------------------------------------------------------------------------------------
def test_the_noise_level_conditions_an_augmented_upsampler_and_is_refused_by_a_plain_one():
    preset = apply_overrides(get_preset("smoke-cascade"), ["train_upsampler.low_res_noise=0.5"])
    torch.manual_seed(0)
    net = build_network("upsampler", preset).eval()
    for p in net.parameters():  # the output layer starts at zero: random weights everywhere
        p.data.normal_(0, 0.05)
    x, low, t = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 8, 8), torch.tensor([10, 900])
    y = torch.tensor([0, 1])
    with torch.no_grad():
        a = net(x, t, low_res=low, y=y, low_res_sigma=torch.zeros(2))
        b = net(x, t, low_res=low, y=y, low_res_sigma=torch.full((2,), 0.3))
    assert (a - b).abs().amax(dim=(1, 2, 3)).min() > 0
    with pytest.raises(ValueError, match="pass the level"):
        net(x, t, low_res=low, y=y)
    plain = build_network("upsampler", get_preset("smoke-cascade"))
    with pytest.raises(ValueError, match="needs an upsampler trained with conditioning augmentation"):
        plain(x, t, low_res=low, y=y, low_res_sigma=torch.full((2,), 0.3))


# --- training pairs --------------------------------------------------------------------------------------------------
class Spy(torch.nn.Module):
    """Records what the loss calls the network with; returns zeros of the UNet's output shape."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, []

    def forward(self, x, t, **kwargs):
        self.calls.append({k: v.detach().clone() for k, v in kwargs.items()})
        return torch.zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:]) + 0 * sum(p.sum() for p in self.parameters())


@pytest.mark.parametrize("level", [0.0, 0.4])
def test_the_upsampler_trains_on_area_downsamples_with_optional_augmentation(level):
    # 16 -> 4 px: at a factor of 2 bilinear (half-pixel centres, no antialias) would average the same 2x2 blocks
    preset = apply_overrides(get_preset("smoke-cascade"), [f"train_upsampler.low_res_noise={level}",
                                                           "train_diffusion.label_dropout=0.5",
                                                           "upsampler.small_size=4"])
    learner = Learner("upsampler", preset, torch.device("cpu"))
    x0 = torch.rand(64, 3, 16, 16) * 2 - 1
    y = torch.arange(64) % 4
    spy = Spy(learner.net)
    learner.train_step(x0, y, model=spy)
    (call,) = spy.calls
    torch.testing.assert_close(call["y"], y)  # no label dropout for the upsampler (the diffusion model's 0.5)
    pairs = downsample_area(x0, 4)
    if level == 0:
        assert set(call) == {"low_res", "y"}
        assert torch.equal(call["low_res"], pairs)  # exactly the released pairs: area, no augmentation
        return
    sigma = call["low_res_sigma"]
    assert sigma.shape == (64,) and 0 <= float(sigma.min()) and float(sigma.max()) <= level
    assert float(sigma.std()) > level / 8  # a level per image, not one per batch
    noise = (call["low_res"] - pairs) / sigma.reshape(-1, 1, 1, 1)
    assert abs(float(noise.mean())) < 0.05 and abs(float(noise.std()) - 1) < 0.05  # standard Gaussian, scaled


def test_an_upsampler_learner_steps_saves_and_shows_its_progress(tmp_path):
    preset = apply_overrides(get_preset("smoke-cascade"), ["train_upsampler.low_res_noise=0.2",
                                                           "upsampler_diffusion.noise_schedule=cosine"])
    learner = Learner("upsampler", preset, torch.device("cpu"))
    # its own process (cosine here), not the base model's (linear)
    assert np.array_equal(learner.diffusion.betas, create_diffusion(preset.upsampler_diffusion).betas)
    assert not np.array_equal(learner.diffusion.betas, create_diffusion(preset.diffusion).betas)
    x0, y = torch.rand(4, 3, 16, 16) * 2 - 1, torch.tensor([0, 1, 2, 3])
    assert np.isfinite(learner.train_step(x0, y)["loss"])
    grid = learner.upsample_grid(x0, y, steps="ddim3")
    assert grid.shape == (12, 3, 16, 16) and torch.equal(grid[8:], x0)
    learner.save(tmp_path, config={})
    again = Learner("upsampler", preset, torch.device("cpu"))
    again.load(tmp_path)
    assert again.step == 1 and all(torch.equal(a, b) for a, b in zip(again.net.parameters(),
                                                                       learner.net.parameters()))


# --- upsampling through the composition ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def upsamplers():
    torch.set_num_threads(1)
    preset = get_preset("smoke-cascade")
    out = {}
    for level in (0.0, 0.3):
        p = apply_overrides(preset, [f"train_upsampler.low_res_noise={level}"])
        torch.manual_seed(1)
        net = build_network("upsampler", p).eval()
        for q in net.parameters():
            q.data.normal_(0, 0.05)
        out[level] = GuidedNetworks(net, p.upsampler, p.upsampler_diffusion, "cpu", noise_level=level > 0)
    return out


def _low(n=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)


def test_upsample_batch_is_the_unguided_loop_with_low_res_and_each_row_its_own(upsamplers):
    nets, low, seeds, labels = upsamplers[0.0], _low(), [11, 12, 13], [0, 3, 1]
    images, cost = upsample_batch(nets, "ddim4", seeds, labels, low)
    assert images.shape == (3, 16, 16, 3) and cost.network_evals == [4, 4, 4] and cost.classifier_passes == [0] * 3
    by_hand = ddim_sample(nets.model, create_diffusion(nets.process, "ddim4"), SampleNoise(seeds, (3, 16, 16)),
                          {"low_res": to_model_input(low), "y": torch.tensor(labels)})
    expected = ((by_hand + 1) * 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(images, expected)
    one, _ = upsample_batch(nets, "ddim4", seeds[1:2], labels[1:2], low[1:2])
    assert np.array_equal(one[0], images[1])  # a row does not depend on its batch
    other, _ = upsample_batch(nets, "ddim4", seeds, labels, 255 - low)
    assert all((other[i] != images[i]).any() for i in range(3))  # every row reads its own low_res
    with pytest.raises(ValueError, match="trained with conditioning augmentation"):
        upsample_batch(nets, "ddim4", seeds, labels, low, noise_level=0.1)


def test_augmented_upsampling_adds_the_level_from_the_rows_own_stream(upsamplers):
    nets, low, seeds, labels = upsamplers[0.3], _low(seed=1), [21, 22], [2, 2]
    images, _ = upsample_batch(nets, "ddim3", seeds, labels, low[:2], noise_level=0.2)
    x = to_model_input(low[:2])
    noisy = x + 0.2 * SampleNoise([s ^ AUGMENT_SALT for s in seeds], (3, 8, 8)).draw()
    by_hand = ddim_sample(nets.model, create_diffusion(nets.process, "ddim3"), SampleNoise(seeds, (3, 16, 16)),
                          {"low_res": noisy, "y": torch.tensor(labels), "low_res_sigma": torch.full((2,), 0.2)})
    expected = ((by_hand + 1) * 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(images, expected)
    clean, _ = upsample_batch(nets, "ddim3", seeds, labels, low[:2], noise_level=0.0)
    assert (clean != images).any()


def test_upsample_seeds_depend_on_seed_cell_and_index_only():
    seeds = {upsample_seed(s, c, i) for s in (0, 1) for c in ("ddim10/scale_0", "ddim10/scale_2") for i in (0, 1)}
    assert len(seeds) == 8 and all(0 <= s < 2**63 for s in seeds)
    assert upsample_seed(0, "ddim10/scale_0", 0) == 320618286852411554  # pinned: changing it changes every result


def test_a_cascades_base_data_are_rounded_block_means():
    images = np.array([[1, 2], [2, 2]], dtype=np.uint8).reshape(1, 2, 2, 1)  # mean 1.75
    assert downsample_area_uint8(images, 1).item() == 2
    large = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 1), dtype=np.uint8)
    expected = downsample_area(torch.from_numpy(large).permute(0, 3, 1, 2).double(), 8).permute(0, 2, 3, 1)
    assert np.array_equal(downsample_area_uint8(large, 8), np.rint(expected.numpy()).astype(np.uint8))
    with pytest.raises(DataError, match="whole blocks"):
        downsample_area_uint8(np.zeros((1, 6, 6, 1), np.uint8), 4)
