"""Presets as data: the paper's released ImageNet models and small configurations that train on a 2-core CPU.

RELEASED_FLAGS holds the exact flags of the released checkpoints (as listed in shared/checkpoint_formats/); a wrong head
count or attention order still loads with strict=True and gives garbage, so every flag is pinned here.
Guidance scales and samplers for the ImageNet presets are those of the paper / released sampling commands.
"""

from dataclasses import replace

from .flags import (
    classifier_config_from_flags,
    diffusion_config_from_flags,
    superres_config_from_flags,
    unet_config_from_flags,
)
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
    UpsampleConfig,
    UpsamplerConfig,
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


def _fashion_mnist_autoguide() -> Preset:
    # The default preset with autoguidance's guide trained beside the diffusion model (Karras et al. 2024: a smaller,
    # less trained model of the same family, with its own EMA): the same width at the top level but no wider below
    # (channel_mult 1,1,1: about a third of the parameters; GroupNorm's 32 groups set the narrowest width), a third
    # of the steps. The grid's auto cells are guided by it instead of the diffusion model's snapshot at step 150.
    base = _fashion_mnist()
    return replace(
        base, name="fashion-mnist-autoguide",
        description=base.description + "; autoguidance's guide (a third of the parameters and of the steps) "
                                       "trained beside the diffusion model",
        sample=replace(base.sample, guide_from="trained"),
        guide=replace(base.unet, channel_mult=(1, 1, 1)),
        train_guide=replace(base.train_diffusion, steps=150, save_interval=150, sample_interval=0, label_dropout=0.0,
                            snapshot_steps=()),
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


# --- cascades: a guided base model followed by ADM-U (Sec. 5.2, Table 6) ---------------------------------------------
def _small_upsampler(image_size: int, small_size: int, in_channels: int, num_classes: int, **kw) -> UpsamplerConfig:
    base = dict(image_size=image_size, small_size=small_size, in_channels=in_channels, model_channels=32,
                num_res_blocks=1, attention_resolutions=(8,), channel_mult=(1, 2, 2), dropout=0.0,
                num_classes=num_classes, num_heads=4, num_head_channels=32, use_scale_shift_norm=True,
                resblock_updown=True, use_new_attention_order=True, learn_sigma=True)
    return UpsamplerConfig(**{**base, **kw})


def _fashion_mnist_cascade() -> Preset:
    # Fashion-MNIST ingested at 32x32 (28 px resized), the base model's 16x16 area-downsampled from it at ingest; the
    # base networks are fashion-mnist's, trained without label dropout (the paper's ADM-G: classifier guidance only);
    # ADM-U makes 32x32 from the base samples. The whole pipeline within 15 minutes on a 2-core CPU (bench/RESULTS.md)
    fm = _fashion_mnist()
    return replace(
        fm, name="fashion-mnist-cascade",
        description="Fashion-MNIST at 32x32 grey from a guided 16x16 base model and ADM-U (16 -> 32): the paper's "
                    "cascade on a 2-core CPU",
        sample=SampleConfig(samplers=("ddim25",), guidance_scales=(0.0, 4.0), num_samples=200, batch_size=50,
                            actors_per_gpu=2, actor_cpus=1.0),
        train_diffusion=replace(fm.train_diffusion, label_dropout=0.0),
        evaluate=EvaluateConfig(num_reference=500, champion_scale=4.0),
        data=DataConfig(source="fashion-mnist", resolution=32, channels=1, resize="resize"),
        upsampler=_small_upsampler(32, 16, 1, 10),
        # the released upsamplers' process: linear schedule, 1000 steps, learned sigma
        upsampler_diffusion=DiffusionConfig(steps=1000, noise_schedule="linear", learn_sigma=True),
        train_upsampler=TrainConfig(steps=300, batch_size=32, lr=2e-3, ema_rate=(0.99,), save_interval=150,
                                    sample_interval=150, log_interval=20),
        upsample=UpsampleConfig(sampler="ddim25", batch_size=50, actors_per_gpu=2, actor_cpus=1.0),
    )


def _smoke_cascade() -> Preset:
    smoke = _smoke()
    return replace(
        smoke, name="smoke-cascade",
        description="Synthetic shapes at 16x16 from an 8x8 base model and a tiny ADM-U: the cascade in a minute or two",
        unet=_small_unet(8, 3, 4, model_channels=32, num_res_blocks=1, attention_resolutions=(4,),
                         channel_mult=(1, 2), dropout=0.0),
        classifier=_small_classifier(8, 3, 4, channel_mult=(1, 2), attention_resolutions=(4,)),
        evaluator=_small_classifier(8, 3, 4, channel_mult=(1, 2), attention_resolutions=(4,), pool="adaptive"),
        upsampler=_small_upsampler(16, 8, 3, 4, channel_mult=(1, 2)),
        upsampler_diffusion=DiffusionConfig(steps=1000, noise_schedule="linear", learn_sigma=True),
        train_upsampler=TrainConfig(steps=20, batch_size=16, lr=1e-3, ema_rate=(0.99,), save_interval=10,
                                    log_interval=5),
        upsample=UpsampleConfig(sampler="ddim10", batch_size=16, actors_per_gpu=2, actor_cpus=1.0),
    )


# name: (base ImageNet preset, the released upsampler)
_IMAGENET_CASCADES = {
    "imagenet256-cascade": ("imagenet64", "64_256_upsampler"),
    "imagenet512-cascade": ("imagenet128", "128_512_upsampler"),
}


def _imagenet_cascade(name: str) -> Preset:
    """The paper's ADM-G + ADM-U: the released base model, classifier and upsampler flags; both stages sampled with
    250 DDPM steps, as the released README's upsampling command. The upsampler's trainer takes the base diffusion
    trainer's settings (not pinned from the paper)."""
    base_name, up_key = _IMAGENET_CASCADES[name]
    base = _imagenet_preset(base_name)
    up = superres_config_from_flags(RELEASED_FLAGS[up_key])
    return replace(
        base, name=name,
        description=f"ADM-G + ADM-U on ImageNet {up.image_size}x{up.image_size}: the released {base_name} base "
                    f"(guided) and {up_key}.pt",
        data=replace(base.data, resolution=up.image_size),
        upsampler=up,
        upsampler_diffusion=diffusion_config_from_flags(RELEASED_FLAGS[up_key]),
        train_upsampler=base.train_diffusion,
        upsample=UpsampleConfig(sampler="250", batch_size=16),
    )


PRESET_BUILDERS = {"fashion-mnist": _fashion_mnist, "fashion-mnist-autoguide": _fashion_mnist_autoguide,
                   "smoke": _smoke,
                   **{name: (lambda n=name: _imagenet_preset(n)) for name in _IMAGENET},
                   "fashion-mnist-cascade": _fashion_mnist_cascade, "smoke-cascade": _smoke_cascade,
                   **{name: (lambda n=name: _imagenet_cascade(n)) for name in _IMAGENET_CASCADES}}
DEFAULT_PRESET = "fashion-mnist"


def get_preset(name: str) -> Preset:
    if name not in PRESET_BUILDERS:
        raise ConfigError(f"unknown preset {name!r}; presets are {sorted(PRESET_BUILDERS)}")
    return PRESET_BUILDERS[name]()
