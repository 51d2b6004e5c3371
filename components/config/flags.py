"""The released code's flag names (script_util's model_and_diffusion_defaults, sr_model_and_diffusion_defaults,
classifier_defaults) -> our configs.

The flag dicts are those of the released checkpoints (shared/checkpoint_formats/*.json, "flags"; presets.py pins
them); ``diffusion_config_from_flags`` mirrors ``create_gaussian_diffusion``.
"""

from .overrides import parse_ints, parse_mult
from .sections import ClassifierConfig, DiffusionConfig, UNetConfig, UpsamplerConfig


def _bool(v) -> bool:
    if isinstance(v, str):
        return v.lower() in ("1", "true", "yes")
    return bool(v)


def _unet_fields(flags: dict, num_classes: int) -> dict:
    """The UNet settings that the diffusion model's and the upsampler's flags name alike (script_util's defaults
    where a flag is absent); `in_channels` and `channel_mult` are not released flags, accepted for small configs."""
    return dict(
        in_channels=int(flags.get("in_channels", 3)),
        model_channels=int(flags["num_channels"]),
        num_res_blocks=int(flags["num_res_blocks"]),
        attention_resolutions=parse_ints(flags.get("attention_resolutions", "16,8"), "attention_resolutions"),
        channel_mult=parse_mult(flags.get("channel_mult", "")),
        dropout=float(flags.get("dropout", 0.0)),
        num_classes=num_classes if _bool(flags.get("class_cond", False)) else None,
        num_heads=int(flags.get("num_heads", 4)),
        num_head_channels=int(flags.get("num_head_channels", -1)),
        num_heads_upsample=int(flags.get("num_heads_upsample", -1)),
        use_scale_shift_norm=_bool(flags.get("use_scale_shift_norm", True)),
        resblock_updown=_bool(flags.get("resblock_updown", False)),
        learn_sigma=_bool(flags.get("learn_sigma", False)),
    )


def unet_config_from_flags(flags: dict, num_classes: int = 1000) -> UNetConfig:
    """Released flags (image_size, num_channels, ..., class_cond, learn_sigma) -> UNetConfig."""
    return UNetConfig(image_size=int(flags["image_size"]),
                      use_new_attention_order=_bool(flags.get("use_new_attention_order", False)),
                      **_unet_fields(flags, num_classes))


def superres_config_from_flags(flags: dict, num_classes: int = 1000) -> UpsamplerConfig:
    """Released super-resolution flags (sr_model_and_diffusion_defaults: large_size, small_size, num_channels, ...)
    -> UpsamplerConfig, as sr_create_model builds it: image_size = large_size, channel_mult chosen by large_size
    (UPSAMPLER_CHANNEL_MULT) unless a `channel_mult` flag is given, the legacy attention order (sr_create_model has
    no use_new_attention_order), 3 channels unless `in_channels` is given. use_fp16 and use_checkpoint change no
    weight and are ignored, like the diffusion flags (diffusion_config_from_flags reads those)."""
    return UpsamplerConfig(image_size=int(flags["large_size"]), small_size=int(flags["small_size"]),
                           use_new_attention_order=False, **_unet_fields(flags, num_classes))


def classifier_config_from_flags(flags: dict, num_classes: int = 1000, classifier_channel_mult=None,
                                 classifier_num_head_channels: int = 64) -> ClassifierConfig:
    """Released classifier flags (classifier_width, classifier_depth, ...) -> ClassifierConfig."""
    return ClassifierConfig(
        image_size=int(flags["image_size"]),
        in_channels=int(flags.get("in_channels", 3)),
        model_channels=int(flags.get("classifier_width", 128)),
        depth=int(flags.get("classifier_depth", 2)),
        attention_resolutions=parse_ints(flags.get("classifier_attention_resolutions", "32,16,8"),
                                          "classifier_attention_resolutions"),
        channel_mult=parse_mult(classifier_channel_mult or ""),
        num_head_channels=int(classifier_num_head_channels),
        use_scale_shift_norm=_bool(flags.get("classifier_use_scale_shift_norm", True)),
        resblock_updown=_bool(flags.get("classifier_resblock_updown", True)),
        pool=str(flags.get("classifier_pool", "attention")),
        num_classes=int(num_classes),
    )


def diffusion_config_from_flags(flags: dict) -> DiffusionConfig:
    return DiffusionConfig(
        steps=int(flags.get("diffusion_steps", 1000)),
        noise_schedule=str(flags.get("noise_schedule", "linear")),
        learn_sigma=_bool(flags.get("learn_sigma", False)),
        sigma_small=_bool(flags.get("sigma_small", False)),
        use_kl=_bool(flags.get("use_kl", False)),
        predict_xstart=_bool(flags.get("predict_xstart", False)),
        rescale_timesteps=_bool(flags.get("rescale_timesteps", False)),
        rescale_learned_sigmas=_bool(flags.get("rescale_learned_sigmas", False)),
        timestep_respacing=str(flags.get("timestep_respacing", "")),
    )
