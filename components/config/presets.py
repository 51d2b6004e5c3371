"""Presets as data: the paper's released ImageNet models and small configurations that train on a 2-core CPU.

RELEASED_FLAGS holds the exact flags of the released checkpoints (as listed in shared/checkpoint_formats/); a wrong head
count or attention order still loads with strict=True and gives garbage, so every flag is pinned here.
Guidance scales and samplers for the ImageNet presets are those of the paper / released sampling commands.
"""

from dataclasses import replace

from .flags import classifier_config_from_flags, diffusion_config_from_flags, unet_config_from_flags
from .sections import (
    ClassifierConfig,
    ConfigError,
    DataConfig,
    DiffusionConfig,
    EvaluateConfig,
    Preset,
    SampleConfig,
    TrainConfig,
    UNetConfig,
)

_UNET_COMMON = dict(
    channel_mult="", use_checkpoint=False, num_heads=4, num_heads_upsample=-1, num_head_channels=64, dropout=0.0,
    use_fp16=False, use_new_attention_order=False, learn_sigma=True, use_scale_shift_norm=True, resblock_updown=True,
    attention_resolutions="32,16,8", class_cond=True, num_channels=256, num_res_blocks=2,
)
_CLASSIFIER_COMMON = dict(
    classifier_use_fp16=False, classifier_width=128, classifier_attention_resolutions="32,16,8",
    classifier_use_scale_shift_norm=True, classifier_resblock_updown=True, classifier_pool="attention",
    classifier_depth=2,
)

# the super-resolution models' flags are sr_model_and_diffusion_defaults whole (model and diffusion flags together),
# with the values of the released README's sampling commands
_UPSAMPLER_COMMON = dict(
    attention_resolutions="32,16,8", class_cond=True, diffusion_steps=1000, dropout=0.0, large_size=256,
    learn_sigma=True, noise_schedule="linear", num_channels=192, num_head_channels=-1, num_heads=4,
    num_heads_upsample=-1, num_res_blocks=2, predict_xstart=False, resblock_updown=True, rescale_learned_sigmas=False,
    rescale_timesteps=False, small_size=64, timestep_respacing="", use_checkpoint=False, use_fp16=True, use_kl=False,
    use_scale_shift_norm=True,
)

RELEASED_FLAGS = {
    "64x64_diffusion": {**_UNET_COMMON, "image_size": 64, "num_channels": 192, "num_res_blocks": 3, "dropout": 0.1,
                        "use_new_attention_order": True},
    "128x128_diffusion": {**_UNET_COMMON, "image_size": 128, "num_head_channels": -1},
    "256x256_diffusion": {**_UNET_COMMON, "image_size": 256},
    "256x256_diffusion_uncond": {**_UNET_COMMON, "image_size": 256, "class_cond": False},
    "512x512_diffusion": {**_UNET_COMMON, "image_size": 512},
    "64x64_classifier": {**_CLASSIFIER_COMMON, "image_size": 64, "classifier_depth": 4},
    "128x128_classifier": {**_CLASSIFIER_COMMON, "image_size": 128},
    "256x256_classifier": {**_CLASSIFIER_COMMON, "image_size": 256},
    "512x512_classifier": {**_CLASSIFIER_COMMON, "image_size": 512},
    "64_256_upsampler": dict(_UPSAMPLER_COMMON),
    "128_512_upsampler": {**_UPSAMPLER_COMMON, "large_size": 512, "small_size": 128, "attention_resolutions": "32,16",
                          "num_head_channels": 64},
}

# Paper / released commands: noise schedule per resolution, guidance scale of the headline ADM-G result.
_IMAGENET = {
    # name: (diffusion flags, classifier flags, noise schedule, headline guidance scale, diffusion lr, global batch)
    "imagenet64": ("64x64_diffusion", "64x64_classifier", "cosine", 1.0, 3e-4, 2048),
    "imagenet128": ("128x128_diffusion", "128x128_classifier", "linear", 0.5, 1e-4, 256),
    "imagenet256": ("256x256_diffusion", "256x256_classifier", "linear", 1.0, 1e-4, 256),
    "imagenet256-uncond": ("256x256_diffusion_uncond", "256x256_classifier", "linear", 10.0, 1e-4, 256),
    "imagenet512": ("512x512_diffusion", "512x512_classifier", "linear", 4.0, 1e-4, 256),
}


def _imagenet_preset(name: str) -> Preset:
    unet_key, clf_key, schedule, scale, lr, batch = _IMAGENET[name]
    unet = unet_config_from_flags(RELEASED_FLAGS[unet_key])
    return Preset(
        name=name,
        description=f"ADM-G on ImageNet {unet.image_size}x{unet.image_size}, flags of the released {unet_key}.pt",
        unet=unet,
        classifier=classifier_config_from_flags(RELEASED_FLAGS[clf_key]),
        diffusion=diffusion_config_from_flags({**RELEASED_FLAGS[unet_key], "noise_schedule": schedule}),
        sample=SampleConfig(samplers=("250",), guidance_scales=(0.0, scale / 2, scale, scale * 2, scale * 4),
                            num_samples=50000, batch_size=64),
        train_diffusion=TrainConfig(steps=500_000, batch_size=batch // 8, lr=lr, ema_rate=(0.9999,),
                                    num_workers=8, use_gpu=True, save_interval=10_000, log_interval=100),
        train_classifier=TrainConfig(steps=300_000, batch_size=256 // 8, lr=3e-4, weight_decay=0.05, anneal_lr=True,
                                     ema_rate=(), num_workers=8, use_gpu=True, save_interval=10_000),
        evaluator=replace(classifier_config_from_flags(RELEASED_FLAGS[clf_key]), pool="adaptive"),
        train_evaluator=TrainConfig(steps=100_000, batch_size=256 // 8, lr=3e-4, weight_decay=0.05, ema_rate=(),
                                    num_workers=8, use_gpu=True, save_interval=10_000),
        evaluate=EvaluateConfig(num_reference=10_000, champion_scale=scale),
        data=DataConfig(source="", resolution=unet.image_size, channels=3),  # ImageNet is not on disk: --data FOLDER
    )


def _small_unet(image_size: int, in_channels: int, num_classes: int, **kw) -> UNetConfig:
    base = dict(image_size=image_size, in_channels=in_channels, model_channels=64, num_res_blocks=2,
                attention_resolutions=(16, 8), channel_mult=(1, 2, 2), dropout=0.1, num_classes=num_classes,
                num_heads=4, num_head_channels=32, use_scale_shift_norm=True, resblock_updown=True,
                use_new_attention_order=True, learn_sigma=True)
    return UNetConfig(**{**base, **kw})


def _small_classifier(image_size: int, in_channels: int, num_classes: int, **kw) -> ClassifierConfig:
    base = dict(image_size=image_size, in_channels=in_channels, model_channels=32, depth=1,
                attention_resolutions=(8,), channel_mult=(1, 2, 2), num_head_channels=32, pool="attention",
                num_classes=num_classes)
    return ClassifierConfig(**{**base, **kw})


def _fashion_mnist() -> Preset:
    # Sized for the README's main job: the whole pipeline in about 15 minutes on a 2-core CPU. 16x16 keeps the
    # classes apart (trousers, bags, shoes, tops) at a quarter of the 32x32 compute.
    return Preset(
        name="fashion-mnist",
        description="Fashion-MNIST resized to 16x16 grey; a small ADM, noisy classifier and evaluator that train on "
                    "a 2-core CPU in minutes",
        unet=_small_unet(16, 1, 10, model_channels=32, num_res_blocks=1, attention_resolutions=(4,), dropout=0.0),
        classifier=_small_classifier(16, 1, 10, attention_resolutions=(4,)),
        diffusion=DiffusionConfig(steps=1000, noise_schedule="cosine", learn_sigma=True),
        # the grid: classifier guidance, classifier-free guidance and autoguidance (its guide: the diffusion model's
        # own snapshot at a third of its training), each up to a scale past the fidelity gains (a model this small
        # needs large classifier scales before diversity loss wins), with DPM-Solver++(2M) at 10 network evaluations
        # (bench/RESULTS.md: DDIM-50's FID). 10 cells of 200 samples rather than 20 of 100: the intervals of the
        # paper's claim (the best scale against unguided) are resolved at 90%, and the run costs the same
        sample=SampleConfig(samplers=("dpm++2m-10",), guidance_methods=("classifier", "cfg", "auto"),
                            guidance_scales=(0.0, 1.0, 4.0, 16.0), guide_from="step:150",
                            num_samples=200, batch_size=50, actors_per_gpu=2, actor_cpus=1.0),
        # without the EMA warm-up (on by default for a random init) the EMA starts from the initial weights, as
        # released, which still weigh rate**steps at the end: 0.995 left 10% of the random init in the sampled weights
        # (Inception FID 279 at scale 0); 0.99 leaves 1% (FID 121)
        # label dropout 0.1 (Ho & Salimans 2022): the same network also runs unconditionally, for CFG
        train_diffusion=TrainConfig(steps=450, batch_size=64, lr=2e-3, ema_rate=(0.99,), save_interval=150,
                                    sample_interval=150, log_interval=20, label_dropout=0.1, snapshot_steps=(150,)),
        train_classifier=TrainConfig(steps=500, batch_size=64, lr=1e-3, weight_decay=0.05, anneal_lr=True,
                                     ema_rate=(), save_interval=250, log_interval=20),
        evaluator=_small_classifier(16, 1, 10, pool="adaptive", attention_resolutions=(4,)),
        train_evaluator=TrainConfig(steps=250, batch_size=64, lr=1e-3, weight_decay=0.05, ema_rate=(),
                                    save_interval=250, log_interval=20),
        evaluate=EvaluateConfig(num_reference=400, champion_scale=4.0),
        data=DataConfig(source="fashion-mnist", resolution=16, channels=1, resize="resize"),
    )


def _smoke() -> Preset:
    return Preset(
        name="smoke",
        description="Synthetic shapes at 16x16 with tiny networks: the whole pipeline in a minute or two",
        unet=_small_unet(16, 3, 4, model_channels=32, num_res_blocks=1, attention_resolutions=(8,),
                         channel_mult=(1, 2), dropout=0.0),
        classifier=_small_classifier(16, 3, 4, channel_mult=(1, 2), attention_resolutions=(8,)),
        diffusion=DiffusionConfig(steps=1000, noise_schedule="linear", learn_sigma=True),
        sample=SampleConfig(samplers=("ddim10",), guidance_scales=(0.0, 2.0), num_samples=16, batch_size=16,
                            actors_per_gpu=2),
        train_diffusion=TrainConfig(steps=20, batch_size=16, lr=1e-3, ema_rate=(0.99,), save_interval=10,
                                    log_interval=5),
        train_classifier=TrainConfig(steps=20, batch_size=16, lr=1e-3, ema_rate=(), save_interval=10, log_interval=5),
        evaluator=_small_classifier(16, 3, 4, channel_mult=(1, 2), attention_resolutions=(8,), pool="adaptive"),
        train_evaluator=TrainConfig(steps=20, batch_size=16, lr=1e-3, ema_rate=(), save_interval=10, log_interval=5),
        evaluate=EvaluateConfig(num_reference=32, batch_size=16, champion_scale=2.0),
        data=DataConfig(source="shapes", resolution=16, channels=3, num_images=256),
    )


PRESET_BUILDERS = {"fashion-mnist": _fashion_mnist, "smoke": _smoke,
                   **{name: (lambda n=name: _imagenet_preset(n)) for name in _IMAGENET}}
DEFAULT_PRESET = "fashion-mnist"


def get_preset(name: str) -> Preset:
    if name not in PRESET_BUILDERS:
        raise ConfigError(f"unknown preset {name!r}; presets are {sorted(PRESET_BUILDERS)}")
    return PRESET_BUILDERS[name]()
