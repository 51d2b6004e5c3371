"""Configuration as frozen dataclasses, the lists of allowed values, and overrides from text (rules: validation.py).

A network is described by :class:`UNetConfig` or :class:`ClassifierConfig`; the diffusion process by
:class:`DiffusionConfig`. ``unet_config_from_flags`` / ``classifier_config_from_flags`` take the flag dicts of the
released ADM checkpoints (see shared/checkpoint_formats/*.json, "flags").
"""

import dataclasses
import math
import re
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
    # the grid: every sampler x every guidance scale x every guidance interval is a cell (components/samplers.py)
    samplers: tuple[str, ...] = ("ddim25",)  # "ddim25", "250" (DDPM), "dpm++2m-10", "heun-18"; see samplers.py
    eta: float = 0.0
    clip_denoised: bool = True
    guidance_scales: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0, 8.0)
    # noise levels sigma_t = sqrt((1 - abar_t) / abar_t) where guidance applies: "all", or "LO:HI" (e.g. 0.3:5)
    guidance_intervals: tuple[str, ...] = ("all",)
    # classifier | cfg (classifier-free: needs train_diffusion.label_dropout > 0) | both; see samplers.METHODS
    guidance_methods: tuple[str, ...] = ("classifier",)
    num_samples: int = 100  # per cell
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
    # ... at this guidance scale (one of sample.guidance_scales), or "auto": the grid's scale with the best metric
    champion_scale: float | str = 1.0
    champion_sampler: str = ""  # ... with this sampler (one of sample.samplers; "": the first), guided at all levels
    champion_method: str = ""  # ... and this guidance method (one of sample.guidance_methods; "": the first)


FEATURE_SETS = ("inception", "evaluator", "both")  # evaluate.features
FID_METHODS = ("eigh", "sqrtm")  # evaluate.fid_method: symmetric eigendecompositions, or the released sqrtm
INCEPTION_PRECISIONS = ("fp32", "bf16")  # evaluate.inception_precision
HIGHER_IS_BETTER = ("precision", "recall", "evaluator_precision", "evaluator_recall", "score", "accuracy")
LOWER_IS_BETTER = ("fid", "sfid", "evaluator_fid")


SPEED_SETTINGS = ("auto", "on", "off")  # compile, channels_last, cuda_graphs
RESIZE_MODES = ("pad", "resize")  # data.resize
POOLS = ("attention", "adaptive")  # classifier.pool
NOISE_SCHEDULES = ("linear", "cosine")  # diffusion.noise_schedule
SCHEDULE_SAMPLERS = ("uniform", "loss-second-moment")  # train_*.schedule_sampler


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
    # the weights training starts from: "" (random), champion (this network's `champion` version in the registry,
    # models <prefix>-<network>), models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID, a checkpoint folder or a
    # weights file (.safetensors, or a .pt read with weights_only=True); the EMA starts from the same weights
    init_from: str = ""
    # EMA warm-up (k-diffusion's EMAWarmup): the decay at update t (0-based) is 1 - (1 + t / inv_gamma) ** -power,
    # clipped to [0, rate], so the average forgets a random init; auto: on for a random init, off with init_from
    ema_warmup: str = "auto"  # auto | on | off
    ema_warmup_inv_gamma: float = 1.0
    ema_warmup_power: float = 0.75  # 3/4: decay 0.999 at 10k updates (2/3: at 31.6k, for runs of 1M+ steps)
    # diffusion only: each label is replaced by the null class with this probability (p_uncond of classifier-free
    # guidance, e.g. 0.1); > 0 gives the UNet its null-class row (components.kinds.has_null_class)
    label_dropout: float = 0.0
    # every eval_interval steps (and at the end) rank 0 scores the EMA weights on fixed held-out data: classifiers'
    # accuracy on the validation split per noise quartile, the diffusion model's FID of a small fixed sample set
    # (pipelines/stages/train_eval.py); 0: off
    eval_interval: int = 0
    # keep the checkpoint with the best eval score (out of keep_checkpoints' rotation) and report it as the final
    # model, so the register stage registers it; needs eval_interval
    keep_best: bool = False


@dataclass(frozen=True)
class DataConfig:
    source: str = ""  # fashion-mnist, shapes, imagenet-folder, an image folder URL; --data overrides it
    resolution: int = 0  # ingest resolution; 0: the UNet's image size
    channels: int = 3
    resize: str = "pad"  # small sources (Fashion-MNIST): "pad" or "resize" to the resolution
    num_images: int = 1024  # synthetic shapes only, per split
    splits: tuple[str, ...] = ("train",)
    # share of train held out as the `validation` split (chosen by content hash, so reruns hold out the same images)
    # when the source has none; the trainers' eval_interval reads it. 0: no validation split
    validation_fraction: float = 0.05
    # at most this many images of each split of the source, the first in its own order (0: all): part of a dataset
    # for a trial, or a dataset that grows between retraining cycles (bench/bench_warm_start.py)
    limit: int = 0


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
    # only exact halvings: 17px reaches 8 only by rounding down, and the upsampling path cannot undo that
    reachable = {image_size // 2**level: 2**level for level in range(len(channel_mult)) if image_size % 2**level == 0}
    out = []
    for res in resolutions:
        if res not in reachable:
            raise ConfigError(
                f"attention resolution {res} is not reached by a {image_size}px network with channel_mult="
                f"{','.join(str(m) for m in channel_mult)}; reachable resolutions are {sorted(reachable, reverse=True)}"
            )
        out.append(reachable[res])
    return tuple(out)


def _number(text: str, whole: bool):
    """A whole or finite number from text; ValueError with a message that says which (not int()'s parse error)."""
    if whole:
        if not re.fullmatch(r"[+-]?\d+", text):
            raise ValueError(f"{text!r} is not a whole number")
        return int(text)
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


def _items(text: str) -> list[str]:
    """Comma-separated items; '' is none, and an empty item (`1,,2`) is a mistake rather than something to drop."""
    if not text.strip():
        return []
    items = [x.strip() for x in text.split(",")]
    if not all(items):
        raise ValueError(f"{text!r} has an empty item; separate values with single commas, e.g. 0,1,2")
    return items


def _coerce(value: str, current):
    if isinstance(current, bool):
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError("expected true or false")
        return value.lower() in ("true", "1", "yes")
    if isinstance(current, tuple):
        items = _items(value)
        if current and all(isinstance(x, str) for x in current):
            return tuple(items)  # e.g. data.splits=train,test
        return tuple(_number(x, whole=bool(re.fullmatch(r"[+-]?\d+", x))) for x in items)
    if value.lower() == "none" and current is None:
        return None
    if current is None:  # an unset number (e.g. sample.actor_cpus=1.5)
        return _number(value, whole=bool(re.fullmatch(r"[+-]?\d+", value)))
    if isinstance(current, (int, float)):
        return _number(value, whole=isinstance(current, int))
    return value


def apply_overrides(preset: Preset, overrides: list[str]) -> Preset:
    """Apply "section.field=value" overrides (e.g. unet.model_channels=64) to a preset; every bad one is reported."""
    problems = []
    for item in overrides:
        try:
            preset = _apply_override(preset, item)
        except ConfigError as e:
            problems.append(str(e))
    if len(problems) > 1:
        raise ConfigError(f"{len(problems)} overrides are invalid:\n  - " + "\n  - ".join(problems))
    if problems:
        raise ConfigError(problems[0])
    return preset


def _apply_override(preset: Preset, item: str) -> Preset:
    key, sep, value = item.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot:
        raise ConfigError(f"override {item!r} must look like section.field=value, e.g. unet.model_channels=64")
    sections = {f.name for f in dataclasses.fields(preset) if dataclasses.is_dataclass(getattr(preset, f.name))}
    if section not in sections:
        raise ConfigError(f"override {item!r}: unknown section {section!r}; sections are {sorted(sections)}")
    changed = override_field(section, getattr(preset, section), name, value, item)
    return dataclasses.replace(preset, **{section: changed})


def override_section(section: str, sub, values: dict):
    """`sub` (the config section called `section`) with fields set from text, as `--override section.field=value`
    would set them: how CLI flags that are shortcuts for one config field apply (e.g. adm sample --num-samples)."""
    for name, value in values.items():
        sub = override_field(section, sub, name, str(value), f"{section}.{name}={value}")
    return sub


# older names that still read: the single-sampler form (`sample.sampler=250`, also DDPM sections "10,10,5" whole)
ALIASES = {("sample", "sampler"): "samplers"}


# numbers that may also be chosen by the run itself
AUTO_FIELDS = {("evaluate", "champion_scale")}
AUTO = "auto"


def override_field(section: str, sub, name: str, value: str, item: str):
    names = [f.name for f in dataclasses.fields(sub)]
    if (section, name) in ALIASES:
        return dataclasses.replace(sub, **{ALIASES[section, name]: (value.strip(),)})
    if (section, name) in AUTO_FIELDS:
        try:
            chosen = AUTO if value.strip().lower() == AUTO else _number(value.strip(), whole=False)
        except ValueError as e:
            raise ConfigError(f"override {item!r}: bad value for {section}.{name} ({e}; or auto)") from None
        return dataclasses.replace(sub, **{name: chosen})
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
    if cls is SampleConfig and "sampler" in values and "samplers" not in values:  # a config logged before the grid
        values = {**values, "samplers": [values["sampler"]]}
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
