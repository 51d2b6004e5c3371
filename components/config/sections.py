"""The configuration's sections as frozen dataclasses, the lists of allowed values, and the errors a user can fix.

One definition per setting: a field here is the truth; presets (presets.py) fill it in, overrides (overrides.py) change
it from text, validation.py states every rule it must satisfy. A network is described by :class:`UNetConfig` (a
super-resolution UNet by its subclass :class:`UpsamplerConfig`) or :class:`ClassifierConfig`; the diffusion process
by :class:`DiffusionConfig`.
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
# channel_mult of the released super-resolution models, by their large size (script_util.sr_create_model): not the
# table above, 512 has six levels starting at 1 (the 128 -> 512 upsampler), and there is no 128 entry
UPSAMPLER_CHANNEL_MULT = {
    512: (1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
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
class UpsamplerConfig(UNetConfig):
    """ADM-U, the super-resolution UNet of the paper's upsampling stacks (released as SuperResModel): every UNet
    setting, with image_size the large (output) size and in_channels the image's channels, plus the size of the
    low-resolution input. A subclass rather than a copy, so each UNet setting (and each UNet rule of validation.py)
    is defined once; the network doubles in_channels itself (the noisy image and the upsampled low_res, concatenated
    on channels). An empty channel_mult takes UPSAMPLER_CHANNEL_MULT's, as sr_create_model does."""

    small_size: int = 8  # the low-resolution input's size; 4x below the default image_size, as released (64 -> 256)


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
    # the grid: every sampler x every guidance scale x every guidance interval is a cell (grid.py)
    samplers: tuple[str, ...] = ("ddim25",)  # "ddim25", "250" (DDPM), "dpm++2m-10", "heun-18"; see grid.py
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
    # speed settings of the sampling actors; auto: measured once per job on the actors' device, the fastest of the
    # candidates (components/precision.py), cached in $ADM_CACHE_DIR and kept in the job's plan.json
    precision: str = "auto"  # arithmetic: auto | fp32 | bf16 (autocast; float32 weights)
    compile: str = "auto"  # torch.compile the networks: auto (measured where the job is long enough) | on | off
    channels_last: str = "auto"  # channels_last memory format: auto (measured) | on | off
    actors_per_gpu: int = 1  # sampler actors sharing each GPU: 2 overlap the kernel launches of small networks
    actor_cpus: float | None = None  # CPUs and torch threads per CPU actor; None: one actor per 2 CPUs
    # MLflow system metrics (CPU, memory, disk, network, GPU where present) of each sampler actor's machine on the
    # sampling run (the sample stage's run), every this many seconds and when the actor stops; 0: off
    system_metrics_interval: float = 10.0
    # the guiding network of method auto (autoguidance): "step:N", the diffusion model's own snapshot at step N
    # (train_diffusion.snapshot_steps); "trained", the guide network trained beside it (the preset's guide and
    # train_guide sections); or runs:/RUN_ID, models:/..., a checkpoint folder or weights file
    guide_from: str = ""


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
    # every metric of every cell with its interval at ci_level: the metrics recomputed on `bootstrap` random subsets of
    # the cell's samples (components/uncertainty.py; 0: point values only), and paired comparisons between cells
    bootstrap: int = 200
    ci_level: float = 0.9
    # the register stage promotes a new model only when its paired difference from the champion, on the same seeds
    # and labels at the champion cell, is better at this level; otherwise the champion stays
    promotion_level: float = 0.9


FEATURE_SETS = ("inception", "evaluator", "both")  # evaluate.features
FID_METHODS = ("eigh", "sqrtm")  # evaluate.fid_method: symmetric eigendecompositions, or the released sqrtm
INCEPTION_PRECISIONS = ("fp32", "bf16")  # evaluate.inception_precision
HIGHER_IS_BETTER = ("precision", "recall", "evaluator_precision", "evaluator_recall", "score", "accuracy")
LOWER_IS_BETTER = ("fid", "sfid", "evaluator_fid")


SPEED_SETTINGS = ("auto", "on", "off")  # compile, channels_last, cuda_graphs
PRECISIONS = ("auto", "fp32", "bf16")  # train_*.precision, sample.precision
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
    # speed settings; auto: measured by the trainer's first worker on its device, the fastest of the candidates
    # (components/precision.py), cached in $ADM_CACHE_DIR and recorded on the training run
    precision: str = "auto"  # arithmetic: auto | fp32 | bf16 (autocast; float32 master weights)
    compile: str = "auto"  # torch.compile the training step: auto (measured where the run repays it) | on | off
    channels_last: str = "auto"  # channels_last memory format: auto (measured) | on | off
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
    # guidance, e.g. 0.1); > 0 gives the UNet its null-class row (kinds.has_null_class)
    label_dropout: float = 0.0
    # upsampler only (conditioning augmentation, Ho et al. 2021's cascades; not in the released code): each training
    # pair's low-resolution input gets Gaussian noise of a level drawn uniformly from [0, low_res_noise] (pixels in
    # [-1, 1]), and the network is given the level (one more embedding, added to the timestep's); at sampling time the
    # level is upsample.low_res_noise. 0: off, the released layout
    low_res_noise: float = 0.0
    # every eval_interval steps (and at the end) rank 0 scores the EMA weights on fixed held-out data: classifiers'
    # accuracy on the validation split per noise quartile, the diffusion model's FID of a small fixed sample set
    # (pipelines/stages/train_monitor.py); 0: off
    eval_interval: int = 0
    # steps whose weights (the EMA of the first rate, else the trained ones) are kept as the run's MLflow artifacts
    # snapshots/step_NNNNNNN, out of the checkpoints' rotation: an earlier version of the network (autoguidance's
    # guide: sample.guide_from=step:N)
    snapshot_steps: tuple[int, ...] = ()
    # keep the checkpoint with the best eval score (out of keep_checkpoints' rotation) and report it as the final
    # model, so the register stage registers it; needs eval_interval
    keep_best: bool = False
    # MLflow system metrics (CPU, memory, disk, network, GPU where present) of rank 0's machine on the training run,
    # every this many seconds and when training ends; 0: off
    system_metrics_interval: float = 10.0


@dataclass(frozen=True)
class UpsampleConfig:
    """The cascade's second stage (the upsample stage of `adm run`, `adm upsample`): base samples of chosen grid cells
    upsampled by ADM-U, unguided, conditioned on them (Dhariwal & Nichol 2021, Sec. 5.2 / Table 6)."""

    # cell keys of the sample grid, e.g. ddim25/scale_0,ddim25/scale_4; (): the unguided cell and the champion cell
    # (evaluate.champion_*) of the grid (adm upsample: every cell of --samples)
    cells: tuple[str, ...] = ()
    sampler: str = "ddim25"  # the upsampler's loop, a sampler string of sample.samplers (ddim25, 250, dpm++2m-10, ...)
    # conditioning augmentation at sampling time: sigma of the Gaussian noise added to the base samples and given to
    # the network; > 0 needs an upsampler trained with it (train_upsampler.low_res_noise >= this)
    low_res_noise: float = 0.0
    eta: float = 0.0
    clip_denoised: bool = True
    batch_size: int = 32
    seed: int = 0  # sample i of a cell draws from a seed derived from (seed, cell, i)
    # the upsampler actors' speed settings: set, not measured (auto is the plain path: fp32, NCHW, eager)
    precision: str = "auto"  # auto (fp32) | fp32 | bf16 (autocast)
    compile: str = "auto"  # torch.compile the upsampler: auto (off) | on | off
    channels_last: str = "auto"  # auto (off) | on | off
    actors_per_gpu: int = 1
    actor_cpus: float | None = None  # CPUs and torch threads per CPU actor; None: one actor per 2 CPUs


@dataclass(frozen=True)
class DataConfig:
    source: str = ""  # fashion-mnist, shapes, an image folder URL ("": none, pass --data); --data overrides it
    resolution: int = 0  # ingest resolution; 0: the UNet's image size (in a cascade preset: the upsampler's)
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
    # the cascade (ADM-U, Sec. 5.2): only cascade presets have these sections (all four; None: no upsampler, no upsample
    # stage). The upsampler has its own diffusion process (the released upsamplers: linear, 1000 steps)
    upsampler: UpsamplerConfig | None = None
    upsampler_diffusion: DiffusionConfig | None = None
    train_upsampler: TrainConfig | None = None
    upsample: UpsampleConfig | None = None
    # autoguidance's guide trained beside the diffusion model (Karras et al. 2024): a smaller UNet of the same image
    # size, channels and classes, under the same diffusion process, with its own training (a fraction of the main
    # model's steps, its own EMA); sample.guide_from=trained samples with it. None: no guide network (the guide may
    # still be a snapshot of the diffusion model, sample.guide_from=step:N)
    guide: UNetConfig | None = None
    train_guide: TrainConfig | None = None

    @property
    def cascade(self) -> bool:
        """Whether this preset has the cascade's sections (validation.py refuses some without the others)."""
        return any(getattr(self, name) is not None for name in CASCADE_SECTIONS)


CASCADE_SECTIONS = ("upsampler", "upsampler_diffusion", "train_upsampler", "upsample")
GUIDE_SECTIONS = ("guide", "train_guide")
TRAINED_GUIDE = "trained"  # sample.guide_from: the guide network trained in the same pipeline run


# a number that may also be chosen by the run itself (evaluate.champion_scale=auto: the grid's best scale)
AUTO = "auto"


def resolve_channel_mult(image_size: int, channel_mult: tuple[float, ...],
                         defaults: dict = DEFAULT_CHANNEL_MULT) -> tuple[float, ...]:
    if channel_mult:
        return tuple(channel_mult)
    if image_size not in defaults:
        raise ConfigError(
            f"image_size={image_size} has no released default channel_mult (only {sorted(defaults)}); "
            "pass channel_mult explicitly, e.g. channel_mult=1,2,2"
        )
    return defaults[image_size]


def network_channel_mult(cfg) -> tuple[float, ...]:
    """The channel_mult a network config builds with: its own, else the released default for its image size (the
    super-resolution table for an UpsamplerConfig, as sr_create_model chooses it)."""
    defaults = UPSAMPLER_CHANNEL_MULT if isinstance(cfg, UpsamplerConfig) else DEFAULT_CHANNEL_MULT
    return resolve_channel_mult(cfg.image_size, cfg.channel_mult, defaults)


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
                 "evaluate": EvaluateConfig, "data": DataConfig, "upsampler": UpsamplerConfig,
                 "upsampler_diffusion": DiffusionConfig, "train_upsampler": TrainConfig, "upsample": UpsampleConfig,
                 "guide": UNetConfig, "train_guide": TrainConfig}


def preset_from_dict(values: dict) -> Preset:
    """Inverse of to_dict(preset) (JSON round trip: lists become tuples again)."""
    sections = {name: _from_dict(cls, values[name]) for name, cls in SECTION_TYPES.items()
                if values.get(name) is not None}  # a preset without the cascade has None for its sections
    return Preset(name=values["name"], description=values.get("description", ""), **sections)
