"""Configuration as frozen dataclasses, conversion from the released code's flag names, and validation.

A network is described by :class:`UNetConfig` or :class:`ClassifierConfig`; the diffusion process by
:class:`DiffusionConfig`. ``unet_config_from_flags`` / ``classifier_config_from_flags`` take the flag dicts of the
released ADM checkpoints (see shared/checkpoint_formats/*.json, "flags").
"""

import dataclasses
import math
from dataclasses import dataclass, field

# channel_mult of the released code, by image size (used by both the UNet and the classifier)
DEFAULT_CHANNEL_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}


class UserError(ValueError):
    """Bad input a user can fix; the message names the input and the fix. The CLI prints it without a traceback."""


class ConfigError(UserError):
    """A configuration a user wrote is invalid; the message names the field and the fix."""


@dataclass(frozen=True)
class UNetConfig:
    image_size: int = 32
    in_channels: int = 3
    model_channels: int = 64
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16, 8)  # resolutions in pixels, as in the released flags
    channel_mult: tuple[float, ...] = ()  # () -> the released default for image_size
    dropout: float = 0.0
    num_classes: int | None = 10  # None -> unconditional
    num_heads: int = 4
    num_head_channels: int = -1
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    use_new_attention_order: bool = False
    learn_sigma: bool = True


@dataclass(frozen=True)
class ClassifierConfig:
    image_size: int = 32
    in_channels: int = 3
    model_channels: int = 128  # classifier_width
    depth: int = 2  # classifier_depth: residual blocks per level
    attention_resolutions: tuple[int, ...] = (32, 16, 8)
    channel_mult: tuple[float, ...] = ()
    num_head_channels: int = 64
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    pool: str = "attention"
    num_classes: int = 1000
    dropout: float = 0.0


@dataclass(frozen=True)
class DiffusionConfig:
    steps: int = 1000
    noise_schedule: str = "linear"
    learn_sigma: bool = True
    sigma_small: bool = False
    use_kl: bool = False
    predict_xstart: bool = False
    rescale_timesteps: bool = False
    rescale_learned_sigmas: bool = False
    timestep_respacing: str = ""


@dataclass(frozen=True)
class SampleConfig:
    sampler: str = "ddim25"  # a respacing string: "250" (DDPM), "ddim25" (DDIM), "10,10,5" (DDPM sections)
    eta: float = 0.0
    clip_denoised: bool = True
    guidance_scales: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0, 8.0)
    num_samples: int = 100  # per scale
    batch_size: int = 64
    seed: int = 0
    compile: str = "auto"  # torch.compile the networks: auto (on CUDA) | on | off
    channels_last: str = "auto"  # channels_last memory format: auto (on CUDA) | on | off
    actors_per_gpu: int = 1  # sampler actors sharing each GPU: 2 overlap the kernel launches of small networks
    actor_cpus: float | None = None  # CPUs and torch threads per CPU actor; None: one actor per 2 CPUs


@dataclass(frozen=True)
class EvaluateConfig:
    features: str = "both"  # inception | evaluator | both
    num_reference: int = 10_000  # reference images from the dataset's split
    reference_split: str = "train"
    fid_method: str = "eigh"  # or "sqrtm", exactly as the released evaluator
    # Inception's arithmetic: fp32, or bf16 (measured against fp32 on the default run: bench/RESULTS.md)
    inception_precision: str = "fp32"
    batch_size: int = 64
    champion_metric: str = "fid"  # the metric that decides the registry's `champion` alias
    champion_scale: float = 1.0  # ... at this guidance scale (one of sample.guidance_scales)


FEATURE_SETS = ("inception", "evaluator", "both")  # evaluate.features
FID_METHODS = ("eigh", "sqrtm")  # evaluate.fid_method: symmetric eigendecompositions, or the released sqrtm
INCEPTION_PRECISIONS = ("fp32", "bf16")  # evaluate.inception_precision
HIGHER_IS_BETTER = ("precision", "recall", "evaluator_precision", "evaluator_recall", "score", "accuracy")
LOWER_IS_BETTER = ("fid", "sfid", "evaluator_fid")


SPEED_SETTINGS = ("auto", "on", "off")


def validate_speed(preset) -> None:
    """compile / channels_last / cuda_graphs of every training section: auto, on or off."""
    for section in ("train_diffusion", "train_classifier", "train_evaluator"):
        for name in ("compile", "channels_last", "cuda_graphs"):
            value = getattr(getattr(preset, section), name)
            if value not in SPEED_SETTINGS:
                raise ConfigError(f"{section}.{name}={value!r} must be auto (on for CUDA only), on or off")


def check_sample(cfg: SampleConfig) -> None:
    """The sample section: the grid, sizes, speed settings and the sampler actors' placement. (The sampler string
    is parsed by components.sampling.parse_sampler, which the callers run too.)"""
    scales = cfg.guidance_scales
    if not scales or not all(isinstance(s, (int, float)) and math.isfinite(s) and s >= 0 for s in scales):
        raise ConfigError(f"sample.guidance_scales={scales!r} must be finite numbers >= 0 (0 = unguided), "
                          "e.g. 0,1,2,4 (--scales)")
    for name in ("num_samples", "batch_size"):
        if not getattr(cfg, name) > 0:
            raise ConfigError(f"sample.{name}={getattr(cfg, name)!r} must be positive (--{name.replace('_', '-')})")
    for name in ("compile", "channels_last"):
        if getattr(cfg, name) not in SPEED_SETTINGS:
            raise ConfigError(f"sample.{name}={getattr(cfg, name)!r} must be auto (on for CUDA only), on or off")
    if not isinstance(cfg.actors_per_gpu, int) or cfg.actors_per_gpu < 1:
        raise ConfigError(f"sample.actors_per_gpu={cfg.actors_per_gpu!r} must be a whole number >= 1 (1 for large "
                          "networks, 2 for small launch-bound ones)")
    cpus = cfg.actor_cpus
    if cpus is not None and not (isinstance(cpus, (int, float)) and cpus > 0):
        raise ConfigError(f"sample.actor_cpus={cpus!r} must be a number of CPUs > 0 (e.g. 1) or none")


def validate_preset(preset) -> None:
    """The one check of a whole resolved config: every section, before any stage or command does work."""
    validate_unet(preset.unet)
    validate_classifier(preset.classifier)
    validate_classifier(preset.evaluator)
    validate_speed(preset)
    check_sample(preset.sample)
    validate_evaluate(preset)
    if preset.sample.num_samples < 4:
        raise ConfigError(f"sample.num_samples={preset.sample.num_samples}: evaluation needs at least 4 per scale")


def validate_evaluate(preset) -> None:
    cfg = preset.evaluate
    check_evaluate(cfg)
    if float(cfg.champion_scale) not in [float(s) for s in preset.sample.guidance_scales]:
        raise ConfigError(f"evaluate.champion_scale={cfg.champion_scale} is not in sample.guidance_scales="
                          f"{preset.sample.guidance_scales}; pick one of them")


def check_evaluate(cfg: EvaluateConfig) -> None:
    """The evaluate section on its own (`adm evaluate` has no sampling section to check it against)."""
    if cfg.features not in FEATURE_SETS:
        raise ConfigError(f"evaluate.features={cfg.features!r} must be one of {', '.join(FEATURE_SETS)}")
    if cfg.fid_method not in FID_METHODS:
        raise ConfigError(f"evaluate.fid_method={cfg.fid_method!r} must be one of {', '.join(FID_METHODS)}")
    if cfg.inception_precision not in INCEPTION_PRECISIONS:
        raise ConfigError(f"evaluate.inception_precision={cfg.inception_precision!r} must be one of "
                          f"{', '.join(INCEPTION_PRECISIONS)}")
    if cfg.champion_metric not in HIGHER_IS_BETTER + LOWER_IS_BETTER:
        raise ConfigError(f"evaluate.champion_metric={cfg.champion_metric!r} is not one of "
                          f"{HIGHER_IS_BETTER + LOWER_IS_BETTER}")
    if cfg.num_reference < 4:
        raise ConfigError(f"evaluate.num_reference={cfg.num_reference} is too small; precision/recall need >= 4")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_size: int = 32  # per worker
    microbatch: int = -1  # -1: no gradient accumulation
    lr: float = 1e-4
    weight_decay: float = 0.0
    ema_rate: tuple[float, ...] = (0.9999,)
    schedule_sampler: str = "uniform"  # or "loss-second-moment"
    anneal_lr: bool = False
    grad_clip: float = 0.0  # 0: off, as released
    log_interval: int = 10
    save_interval: int = 500
    sample_interval: int = 500  # diffusion: a grid of EMA samples to MLflow every N steps (0: at the end only)
    keep_checkpoints: int = 2
    # each epoch reads the rows through a shuffle buffer of this many rows, seeded by (seed, rank, step), so epochs
    # differ as with the released code's shuffling DataLoader and runs repeat; 0: in shard order
    shuffle_rows: int = 1024
    max_failures: int = 2  # worker-group restarts from the last checkpoint
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 0.0  # 0: the cluster's CPUs shared out among all trainers' workers (1 with a GPU)
    compile: str = "auto"  # torch.compile the training forward/backward: auto (on CUDA) | on | off
    channels_last: str = "auto"  # channels_last memory format: auto (on CUDA) | on | off
    # compiled with CUDA graphs (torch.compile mode="reduce-overhead": a step's kernels replayed as one graph):
    # auto (on CUDA when compiled; one-worker trainers, DDP keeps plain compile) | on | off
    cuda_graphs: str = "auto"


@dataclass(frozen=True)
class DataConfig:
    source: str = ""  # fashion-mnist, shapes, imagenet-folder, an image folder URL; --data overrides it
    resolution: int = 0  # ingest resolution; 0: the UNet's image size
    channels: int = 3
    resize: str = "pad"  # small sources (Fashion-MNIST): "pad" or "resize" to the resolution
    num_images: int = 1024  # synthetic shapes only, per split
    splits: tuple[str, ...] = ("train",)


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    unet: UNetConfig
    classifier: ClassifierConfig
    diffusion: DiffusionConfig
    sample: SampleConfig = field(default_factory=SampleConfig)
    train_diffusion: TrainConfig = field(default_factory=TrainConfig)
    train_classifier: TrainConfig = field(default_factory=TrainConfig)
    # the evaluator: a classifier of clean images for scores and sample accuracy, never used for guidance
    evaluator: ClassifierConfig = field(default_factory=lambda: ClassifierConfig(pool="adaptive"))
    train_evaluator: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    data: DataConfig = field(default_factory=DataConfig)


def parse_ints(text: str | tuple | list, name: str) -> tuple[int, ...]:
    if isinstance(text, (tuple, list)):
        return tuple(int(x) for x in text)
    try:
        return tuple(int(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{name}={text!r} is not a comma-separated list of integers, e.g. '32,16,8'") from None


def parse_mult(text: str | tuple | list) -> tuple[float, ...]:
    if isinstance(text, (tuple, list)):
        return tuple(float(x) if float(x) != int(float(x)) else int(float(x)) for x in text)
    return parse_mult([x for x in str(text).split(",") if x.strip()])


def resolve_channel_mult(image_size: int, channel_mult: tuple[float, ...]) -> tuple[float, ...]:
    if channel_mult:
        return tuple(channel_mult)
    if image_size not in DEFAULT_CHANNEL_MULT:
        raise ConfigError(
            f"image_size={image_size} has no released default channel_mult (only {sorted(DEFAULT_CHANNEL_MULT)}); "
            "pass channel_mult explicitly, e.g. channel_mult=1,2,2"
        )
    return DEFAULT_CHANNEL_MULT[image_size]


def attention_ds(image_size: int, resolutions: tuple[int, ...], channel_mult: tuple[float, ...]) -> tuple[int, ...]:
    """Resolutions in pixels -> downsampling factors, checking that the network reaches each of them."""
    reachable = {image_size // 2**level: 2**level for level in range(len(channel_mult))}
    out = []
    for res in resolutions:
        if res not in reachable or image_size % res:
            raise ConfigError(
                f"attention resolution {res} is not reached by a {image_size}px network with channel_mult="
                f"{','.join(str(m) for m in channel_mult)}; reachable resolutions are {sorted(reachable, reverse=True)}"
            )
        out.append(reachable[res])
    return tuple(out)


def _check_heads(widths: set[int], num_head_channels: int, what: str) -> None:
    if num_head_channels == -1:
        return
    for w in sorted(widths):
        if w % num_head_channels:
            raise ConfigError(
                f"{what}: attention width {w} is not divisible by num_head_channels={num_head_channels}; "
                "choose a num_head_channels that divides every attention level's channels"
            )


def _check_groups(model_channels: int, mult: tuple[float, ...], what: str) -> None:
    for m in mult:
        if int(m * model_channels) % 32:
            raise ConfigError(f"{what}: level width {int(m * model_channels)} (model_channels={model_channels} x {m}) "
                              "is not a multiple of 32, which GroupNorm's 32 groups need; change model_channels")


def validate_unet(cfg: UNetConfig) -> None:
    mult = resolve_channel_mult(cfg.image_size, cfg.channel_mult)
    ds = attention_ds(cfg.image_size, cfg.attention_resolutions, mult)
    widths = {int(mult[i] * cfg.model_channels) for i in range(len(mult)) if 2**i in ds}
    widths.add(int(mult[-1] * cfg.model_channels))  # middle block
    _check_heads(widths, cfg.num_head_channels, "unet")
    _check_groups(cfg.model_channels, mult, "unet")


def validate_classifier(cfg: ClassifierConfig) -> None:
    if cfg.pool not in ("attention", "adaptive"):
        raise ConfigError(f"classifier.pool={cfg.pool!r} must be 'attention' or 'adaptive'")
    mult = resolve_channel_mult(cfg.image_size, cfg.channel_mult)
    ds = attention_ds(cfg.image_size, cfg.attention_resolutions, mult)
    widths = {int(mult[i] * cfg.model_channels) for i in range(len(mult)) if 2**i in ds}
    widths.add(int(mult[-1] * cfg.model_channels))
    _check_heads(widths, cfg.num_head_channels, "classifier")
    _check_groups(cfg.model_channels, mult, "classifier")


def _coerce(value: str, current):
    if isinstance(current, bool):
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError("expected true or false")
        return value.lower() in ("true", "1", "yes")
    if isinstance(current, tuple):
        items = [x.strip() for x in value.split(",") if x.strip()]
        if current and all(isinstance(x, str) for x in current):
            return tuple(items)  # e.g. data.splits=train,test
        return tuple(float(x) if "." in x or "e" in x.lower() else int(x) for x in items)
    if current is None and value.lower() != "none" and not value.strip().lstrip("-").isdigit():
        return float(value)  # an unset number (e.g. sample.actor_cpus=1.5)
    if current is None or isinstance(current, int) and not isinstance(current, bool):
        return None if value.lower() == "none" else int(value)
    if isinstance(current, float):
        return float(value)
    return value


def apply_overrides(preset: Preset, overrides: list[str]) -> Preset:
    """Apply "section.field=value" overrides (e.g. unet.model_channels=64) to a preset, with clear errors."""
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot:
            raise ConfigError(f"override {item!r} must look like section.field=value, e.g. unet.model_channels=64")
        sections = {f.name for f in dataclasses.fields(preset) if dataclasses.is_dataclass(getattr(preset, f.name))}
        if section not in sections:
            raise ConfigError(f"override {item!r}: unknown section {section!r}; sections are {sorted(sections)}")
        changed = override_field(section, getattr(preset, section), name, value, item)
        preset = dataclasses.replace(preset, **{section: changed})
    return preset


def override_section(section: str, sub, values: dict):
    """`sub` (the config section called `section`) with fields set from text, as `--override section.field=value`
    would set them: how CLI flags that are shortcuts for one config field apply (e.g. adm sample --num-samples)."""
    for name, value in values.items():
        sub = override_field(section, sub, name, str(value), f"{section}.{name}={value}")
    return sub


def override_field(section: str, sub, name: str, value: str, item: str):
    names = [f.name for f in dataclasses.fields(sub)]
    if name not in names:
        raise ConfigError(f"override {item!r}: {section} has no field {name!r}; fields are {names}")
    optional = "None" in str(next(f.type for f in dataclasses.fields(sub) if f.name == name))
    try:
        new_value = None if optional and value.strip().lower() == "none" else _coerce(value.strip(), getattr(sub, name))
    except ValueError as e:
        raise ConfigError(f"override {item!r}: bad value for {section}.{name} ({e})") from None
    return dataclasses.replace(sub, **{name: new_value})


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def _from_dict(cls, values: dict):
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        v = values[f.name]
        kwargs[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**kwargs)


SECTION_TYPES = {"unet": UNetConfig, "classifier": ClassifierConfig, "diffusion": DiffusionConfig,
                 "sample": SampleConfig, "train_diffusion": TrainConfig, "train_classifier": TrainConfig,
                 "evaluator": ClassifierConfig, "train_evaluator": TrainConfig,
                 "evaluate": EvaluateConfig, "data": DataConfig}


def preset_from_dict(values: dict) -> Preset:
    """Inverse of to_dict(preset) (JSON round trip: lists become tuples again)."""
    sections = {name: _from_dict(cls, values[name]) for name, cls in SECTION_TYPES.items() if name in values}
    return Preset(name=values["name"], description=values.get("description", ""), **sections)
