import pytest

from components import build_unet
from components.config import ConfigError, DataConfig, UNetConfig, apply_overrides
from components.config.presets import PRESET_BUILDERS, get_preset
from components.config.validation import data_problems, validate_preset


def test_unreachable_attention_resolution_is_named():
    with pytest.raises(ConfigError, match="attention resolution 4"):
        build_unet(UNetConfig(image_size=16, channel_mult=(1, 2), attention_resolutions=(4,)))


def test_head_channels_must_divide_widths():
    with pytest.raises(ConfigError, match="num_head_channels=48"):
        build_unet(UNetConfig(image_size=16, channel_mult=(1, 2), attention_resolutions=(8,), num_head_channels=48))


def test_unknown_size_needs_channel_mult():
    with pytest.raises(ConfigError, match="channel_mult"):
        build_unet(UNetConfig(image_size=48))


def test_overrides_coerce_and_reject():
    p = apply_overrides(get_preset("smoke"), ["unet.model_channels=64", "sample.guidance_scales=0,1.5",
                                              "unet.learn_sigma=false", "unet.num_classes=none"])
    assert p.unet.model_channels == 64 and p.sample.guidance_scales == (0, 1.5)
    assert p.unet.learn_sigma is False and p.unet.num_classes is None
    with pytest.raises(ConfigError, match="no field 'width'"):
        apply_overrides(p, ["unet.width=3"])
    with pytest.raises(ConfigError, match="unknown section"):
        apply_overrides(p, ["model.width=3"])
    with pytest.raises(ConfigError, match="bad value"):
        apply_overrides(p, ["unet.model_channels=abc"])


def test_speed_settings_are_auto_on_or_off():
    validate_preset(apply_overrides(get_preset("smoke"), ["train_classifier.cuda_graphs=on", "sample.compile=off"]))
    with pytest.raises(ConfigError, match="train_diffusion.cuda_graphs='yes' must be one of auto"):
        validate_preset(apply_overrides(get_preset("smoke"), ["train_diffusion.cuda_graphs=yes"]))
    with pytest.raises(ConfigError, match="sample.channels_last='fast' must be one of auto"):
        validate_preset(apply_overrides(get_preset("smoke"), ["sample.channels_last=fast"]))
    # precision: auto (measured), fp32 or bf16, for every trainer and the sampling actors
    validate_preset(apply_overrides(get_preset("smoke"), ["train_diffusion.precision=bf16", "sample.precision=fp32"]))
    with pytest.raises(ConfigError, match="2 problems") as problems:
        validate_preset(apply_overrides(get_preset("smoke"), ["train_evaluator.precision=fp16",
                                                              "sample.precision=half"]))
    assert "train_evaluator.precision='fp16' must be one of auto" in str(problems.value)
    assert "sample.precision='half' must be one of auto" in str(problems.value)
    validate_preset(apply_overrides(get_preset("smoke"), ["sample.actors_per_gpu=3", "sample.actor_cpus=1.5"]))
    assert apply_overrides(get_preset("fashion-mnist"), ["sample.actor_cpus=none"]).sample.actor_cpus is None
    with pytest.raises(ConfigError, match="sample.actor_cpus=-1 must be a number of CPUs > 0"):
        validate_preset(apply_overrides(get_preset("smoke"), ["sample.actor_cpus=-1"]))
    with pytest.raises(ConfigError, match="sample.actors_per_gpu=0 must be a whole number >= 1"):
        validate_preset(apply_overrides(get_preset("smoke"), ["sample.actors_per_gpu=0"]))


@pytest.mark.parametrize("name", sorted(PRESET_BUILDERS))
def test_every_preset_builds(name):
    import torch

    from components import build_classifier

    p = get_preset(name)
    with torch.device("meta"):
        build_unet(p.unet)
        build_classifier(p.classifier)
    assert p.unet.learn_sigma == p.diffusion.learn_sigma


def test_every_problem_is_reported_at_once():
    bad = apply_overrides(get_preset("smoke"), ["train_diffusion.lr=-1", "train_classifier.steps=0",
                                                "train_evaluator.ema_rate=1.5", "sample.guidance_scales=0,-2"])
    with pytest.raises(ConfigError) as e:
        validate_preset(bad)
    for field in ("train_diffusion.lr", "train_classifier.steps", "train_evaluator.ema_rate", "guidance_scales"):
        assert field in str(e.value)
    assert "champion_scale" not in str(e.value)  # a consequence of the bad scales, not a problem of its own


def test_reachable_attention_resolutions_are_exact_halvings():
    with pytest.raises(ConfigError, match=r"reachable resolutions are \[17\]") as e:
        validate_preset(apply_overrides(get_preset("smoke"), ["unet.image_size=17", "unet.attention_resolutions=8"]))
    assert "unet.image_size=17 is not a multiple of 2" in str(e.value)


@pytest.mark.parametrize("override, says", [("sample.guidance_scales=1,,2", "empty item"),
                                            ("train_diffusion.steps=nan", "'nan' is not a whole number"),
                                            ("train_diffusion.lr=1e999", "'1e999' is not a finite number"),
                                            ("sample.guidance_scales=0,inf", "'inf' is not a finite number")])
def test_overrides_refuse_empty_items_and_non_finite_numbers(override, says):
    with pytest.raises(ConfigError, match=says):
        apply_overrides(get_preset("smoke"), [override])


@pytest.mark.parametrize("sampler", ["ddim0", "abc", "0", "ddim999", "2000"])
def test_sampler_strings_the_diffusion_cannot_run_are_refused(sampler):
    # ddim999 and 2000 parse, but 1000 trained steps have no stride giving 999 and no 2000 steps to keep
    with pytest.raises(ConfigError, match=f"sample.sampler.*{sampler}"):
        validate_preset(apply_overrides(get_preset("smoke"), [f"sample.sampler={sampler}"]))


def test_data_limit_is_a_count_or_zero_for_every_image():
    assert data_problems(DataConfig(limit=0)) == [] and data_problems(DataConfig(limit=30000)) == []
    (problem,) = data_problems(DataConfig(limit=-1))
    assert "data.limit=-1" in problem and "0: every image" in problem
    assert data_problems(DataConfig(limit=2.5)) != []
