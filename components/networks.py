"""Network construction: the network of each kind of the system (config/kinds.py), from configs and from the released
code's flags.

``model_from_flags`` / ``superres_from_flags`` / ``classifier_from_flags`` return networks whose state_dict keys and
shapes equal those of the released ADM checkpoints (shared/checkpoint_formats/), so those files load with
``strict=True``.
"""

from torch import nn

from .classifier import EncoderUNetModel
from .config.flags import classifier_config_from_flags, superres_config_from_flags, unet_config_from_flags
from .config.kinds import NetworkKind, has_noise_level, has_null_class
from .config.kinds import kind as network_kind
from .config.sections import ClassifierConfig, UNetConfig, UpsamplerConfig, attention_ds, network_channel_mult
from .config.validation import validate_classifier, validate_unet, validate_upsampler
from .superres import SuperResModel
from .unet import EncoderSpec, UNetModel


def _unet_spec(cfg: UNetConfig) -> EncoderSpec:
    mult = network_channel_mult(cfg)
    return EncoderSpec(
        in_channels=cfg.in_channels,
        model_channels=cfg.model_channels,
        num_res_blocks=cfg.num_res_blocks,
        attention_ds=attention_ds(cfg.image_size, cfg.attention_resolutions, mult),
        channel_mult=mult,
        dropout=cfg.dropout,
        num_heads=cfg.num_heads,
        num_head_channels=cfg.num_head_channels,
        use_scale_shift_norm=cfg.use_scale_shift_norm,
        resblock_updown=cfg.resblock_updown,
        use_new_attention_order=cfg.use_new_attention_order,
    )


def build_unet(cfg: UNetConfig, null_class: bool = False, noise_level: bool = False) -> UNetModel:
    """The UNet of `cfg`; ``null_class`` adds the null label's embedding row of classifier-free guidance. An
    UpsamplerConfig (a UNetConfig too) gives its super-resolution UNet, never a plain UNet of the wrong width, with
    the noise-level embedding of conditioning augmentation if ``noise_level``."""
    if isinstance(cfg, UpsamplerConfig):
        return build_superres(cfg, null_class=null_class, noise_level=noise_level)
    validate_unet(cfg)
    out_channels = cfg.in_channels * (2 if cfg.learn_sigma else 1)
    return UNetModel(_unet_spec(cfg), out_channels, cfg.num_classes, cfg.num_heads_upsample, null_class=null_class)


def build_superres(cfg: UpsamplerConfig, null_class: bool = False, noise_level: bool = False) -> SuperResModel:
    """The super-resolution UNet (ADM-U) of `cfg`: cfg.in_channels image channels in and out (twice out with learned
    sigma), the upsampled low_res concatenated inside (superres.py); ``noise_level`` adds the embedding of
    conditioning augmentation's level (train_upsampler.low_res_noise > 0; not in the released layout)."""
    validate_upsampler(cfg)
    out_channels = cfg.in_channels * (2 if cfg.learn_sigma else 1)
    return SuperResModel(_unet_spec(cfg), out_channels, cfg.num_classes, cfg.num_heads_upsample,
                         null_class=null_class, noise_level=noise_level)


def build_classifier(cfg: ClassifierConfig) -> EncoderUNetModel:
    validate_classifier(cfg)
    mult = network_channel_mult(cfg)
    spec = EncoderSpec(
        in_channels=cfg.in_channels,
        model_channels=cfg.model_channels,
        num_res_blocks=cfg.depth,
        attention_ds=attention_ds(cfg.image_size, cfg.attention_resolutions, mult),
        channel_mult=mult,
        dropout=cfg.dropout,
        num_heads=1,
        num_head_channels=cfg.num_head_channels,
        use_scale_shift_norm=cfg.use_scale_shift_norm,
        resblock_updown=cfg.resblock_updown,
        use_new_attention_order=False,
    )
    return EncoderUNetModel(spec, cfg.image_size, cfg.num_classes, cfg.pool)


def model_from_flags(flags: dict, num_classes: int = 1000) -> nn.Module:
    """The diffusion UNet for a released flag dict (e.g. the "flags" of 256x256_diffusion.json)."""
    return build_unet(unet_config_from_flags(flags, num_classes=num_classes))


def superres_from_flags(flags: dict, num_classes: int = 1000) -> nn.Module:
    """The super-resolution UNet for a released flag dict (e.g. the "flags" of 64_256_upsampler.json)."""
    return build_superres(superres_config_from_flags(flags, num_classes=num_classes))


def classifier_from_flags(flags: dict, num_classes: int = 1000, classifier_channel_mult=None,
                          classifier_num_head_channels: int = 64) -> nn.Module:
    """The noisy classifier for a released flag dict (e.g. the "flags" of 256x256_classifier.json)."""
    cfg = classifier_config_from_flags(flags, num_classes, classifier_channel_mult, classifier_num_head_channels)
    return build_classifier(cfg)


def from_released_flags(name: str, flags: dict, num_classes: int = 1000) -> nn.Module:
    """The network of a released checkpoint by its name in presets.RELEASED_FLAGS (or its file's stem): a classifier
    (*_classifier), an upsampler (*_upsampler) or a diffusion UNet, built from `flags`."""
    if "classifier" in name:
        return classifier_from_flags(flags, num_classes=num_classes)
    if "upsampler" in name:
        return superres_from_flags(flags, num_classes=num_classes)
    return model_from_flags(flags, num_classes=num_classes)


def build_network(kind: NetworkKind | str, preset) -> nn.Module:
    """The network of `kind` (a NetworkKind or its name) for `preset`, randomly initialised: the UNet (with the null
    class of classifier-free guidance when the preset trains it with label dropout), the upsampler (with the
    noise-level embedding when it trains with conditioning augmentation) or the encoder classifier."""
    kind = network_kind(kind) if isinstance(kind, str) else kind
    if kind.is_unet:
        return build_unet(kind.network_config(preset), null_class=has_null_class(preset, kind),
                          noise_level=has_noise_level(preset, kind))
    return build_classifier(kind.network_config(preset))
