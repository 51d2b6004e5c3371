"""Configuration as frozen dataclasses, conversion from the released code's flag names, and validation.

A network is described by :class:`UNetConfig` or :class:`ClassifierConfig`; the diffusion process by
:class:`DiffusionConfig`. ``unet_config_from_flags`` / ``classifier_config_from_flags`` take the flag dicts of the
released ADM checkpoints (see shared/checkpoint_formats/*.json, "flags").
"""

import dataclasses
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
    batch_size: int = 64
    champion_metric: str = "fid"  # the metric that decides the registry's `champion` alias
    champion_scale: float = 1.0  # ... at this guidance scale (one of sample.guidance_scales)


HIGHER_IS_BETTER = ("precision", "recall", "evaluator_precision", "evaluator_recall", "score", "accuracy")
LOWER_IS_BETTER = ("fid", "sfid", "evaluator_fid")


SPEED_SETTINGS = ("auto", "on", "off")


def validate_speed(preset) -> None:
    """compile / channels_last of every training section and of sampling, cuda_graphs of training: auto, on or off;
    the sampler actors' placement (actors_per_gpu, actor_cpus)."""
    names = {"sample": ("compile", "channels_last")}
    for section in ("train_diffusion", "train_classifier", "train_evaluator", "sample"):
        for name in names.get(section, ("compile", "channels_last", "cuda_graphs")):
            value = getattr(getattr(preset, section), name)
            if value not in SPEED_SETTINGS:
                raise ConfigError(f"{section}.{name}={value!r} must be auto (on for CUDA only), on or off")
    per_gpu = preset.sample.actors_per_gpu
    if not isinstance(per_gpu, int) or per_gpu < 1:
        raise ConfigError(f"sample.actors_per_gpu={per_gpu!r} must be a whole number >= 1 (1 for large networks, "
                          "2 for small launch-bound ones)")
    cpus = preset.sample.actor_cpus
    if cpus is not None and not (isinstance(cpus, (int, float)) and cpus > 0):
        raise ConfigError(f"sample.actor_cpus={cpus!r} must be a number of CPUs > 0 (e.g. 1) or none")


def validate_evaluate(preset) -> None:
    cfg = preset.evaluate
    if cfg.features not in ("inception", "evaluator", "both"):
        raise ConfigError(f"evaluate.features={cfg.features!r} must be inception, evaluator or both")
    if cfg.fid_method not in ("eigh", "sqrtm"):
        raise ConfigError(f"evaluate.fid_method={cfg.fid_method!r} must be eigh or sqrtm")
    if cfg.champion_metric not in HIGHER_IS_BETTER + LOWER_IS_BETTER:
        raise ConfigError(f"evaluate.champion_metric={cfg.champion_metric!r} is not one of "
                          f"{HIGHER_IS_BETTER + LOWER_IS_BETTER}")
    if float(cfg.champion_scale) not in [float(s) for s in preset.sample.guidance_scales]:
        raise ConfigError(f"evaluate.champion_scale={cfg.champion_scale} is not in sample.guidance_scales="
                          f"{preset.sample.guidance_scales}; pick one of them")
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
    data: dict = field(default_factory=dict)


def _parse_ints(text: str | tuple | list, name: str) -> tuple[int, ...]:
    if isinstance(text, (tuple, list)):
        return tuple(int(x) for x in text)
    try:
        return tuple(int(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{name}={text!r} is not a comma-separated list of integers, e.g. '32,16,8'") from None


def _parse_mult(text: str | tuple | list) -> tuple[float, ...]:
    if isinstance(text, (tuple, list)):
        return tuple(float(x) if float(x) != int(float(x)) else int(float(x)) for x in text)
    return _parse_mult([x for x in str(text).split(",") if x.strip()])


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


def _bool(v) -> bool:
    if isinstance(v, str):
        return v.lower() in ("1", "true", "yes")
    return bool(v)


def unet_config_from_flags(flags: dict, num_classes: int = 1000) -> UNetConfig:
    """Released flags (image_size, num_channels, ..., class_cond, learn_sigma) -> UNetConfig."""
    image_size = int(flags["image_size"])
    return UNetConfig(
        image_size=image_size,
        in_channels=int(flags.get("in_channels", 3)),
        model_channels=int(flags["num_channels"]),
        num_res_blocks=int(flags["num_res_blocks"]),
        attention_resolutions=_parse_ints(flags.get("attention_resolutions", "16,8"), "attention_resolutions"),
        channel_mult=_parse_mult(flags.get("channel_mult", "")),
        dropout=float(flags.get("dropout", 0.0)),
        num_classes=num_classes if _bool(flags.get("class_cond", False)) else None,
        num_heads=int(flags.get("num_heads", 4)),
        num_head_channels=int(flags.get("num_head_channels", -1)),
        num_heads_upsample=int(flags.get("num_heads_upsample", -1)),
        use_scale_shift_norm=_bool(flags.get("use_scale_shift_norm", True)),
        resblock_updown=_bool(flags.get("resblock_updown", False)),
        use_new_attention_order=_bool(flags.get("use_new_attention_order", False)),
        learn_sigma=_bool(flags.get("learn_sigma", False)),
    )


def classifier_config_from_flags(flags: dict, num_classes: int = 1000, classifier_channel_mult=None,
                                 classifier_num_head_channels: int = 64) -> ClassifierConfig:
    """Released classifier flags (classifier_width, classifier_depth, ...) -> ClassifierConfig."""
    return ClassifierConfig(
        image_size=int(flags["image_size"]),
        in_channels=int(flags.get("in_channels", 3)),
        model_channels=int(flags.get("classifier_width", 128)),
        depth=int(flags.get("classifier_depth", 2)),
        attention_resolutions=_parse_ints(flags.get("classifier_attention_resolutions", "32,16,8"),
                                          "classifier_attention_resolutions"),
        channel_mult=_parse_mult(classifier_channel_mult or ""),
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


def _coerce(value: str, current):
    if isinstance(current, bool):
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError("expected true or false")
        return value.lower() in ("true", "1", "yes")
    if isinstance(current, tuple):
        items = [x for x in value.split(",") if x.strip()]
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
        sub = getattr(preset, section)
        names = [f.name for f in dataclasses.fields(sub)]
        if name not in names:
            raise ConfigError(f"override {item!r}: {section} has no field {name!r}; fields are {names}")
        optional = "None" in str(next(f.type for f in dataclasses.fields(sub) if f.name == name))
        try:
            new_value = None if optional and value.strip().lower() == "none" else _coerce(value.strip(),
                                                                                          getattr(sub, name))
        except ValueError as e:
            raise ConfigError(f"override {item!r}: bad value for {section}.{name} ({e})") from None
        preset = dataclasses.replace(preset, **{section: dataclasses.replace(sub, **{name: new_value})})
    return preset


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
                 "evaluate": EvaluateConfig}


def preset_from_dict(values: dict) -> Preset:
    """Inverse of to_dict(preset) (JSON round trip: lists become tuples again)."""
    sections = {name: _from_dict(cls, values[name]) for name, cls in SECTION_TYPES.items() if name in values}
    return Preset(name=values["name"], description=values.get("description", ""), data=dict(values.get("data", {})),
                  **sections)
