"""Validation of a resolved configuration: each rule once, every problem of a config reported together.

Each section has a function that returns its problems as messages naming the field, the value and the fix;
``validate_preset`` joins them for a whole config with the rules between sections, ``check_sample`` /
``check_evaluate`` check one section on its own (`adm sample` and `adm evaluate` have no whole preset). A value that
would only fail inside a stage, after ingest and training spent their time (a sampler string the diffusion cannot
respace, an image size the UNet cannot halve and double back, an EMA rate of 1.5), is refused here.

Pure Python, like everything it imports (no torch): `adm config` validates without loading torch.
"""

import math

from .grid import grid_cells, parse_interval, parse_method, parse_sampler
from .respacing import space_timesteps
from .sections import (
    AUTO,
    CASCADE_SECTIONS,
    FEATURE_SETS,
    FID_METHODS,
    GUIDE_SECTIONS,
    HIGHER_IS_BETTER,
    INCEPTION_PRECISIONS,
    LOWER_IS_BETTER,
    NOISE_SCHEDULES,
    POOLS,
    PRECISIONS,
    RESIZE_MODES,
    SCHEDULE_SAMPLERS,
    SPEED_SETTINGS,
    TRAINED_GUIDE,
    ClassifierConfig,
    ConfigError,
    DataConfig,
    DiffusionConfig,
    EvaluateConfig,
    SampleConfig,
    TrainConfig,
    UNetConfig,
    UpsampleConfig,
    UpsamplerConfig,
    attention_ds,
    network_channel_mult,
)

TRAIN_SECTIONS = ("train_diffusion", "train_classifier", "train_evaluator")  # every preset's; optional kinds add theirs


def train_sections(preset) -> tuple[str, ...]:
    """The training sections `preset` has: TRAIN_SECTIONS and those of its optional networks (upsampler, guide)."""
    return TRAIN_SECTIONS + tuple(n for n in ("train_upsampler", "train_guide") if getattr(preset, n) is not None)


def raise_problems(problems: list[str]) -> None:
    """One ConfigError listing every problem (none: return)."""
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(f"the configuration has {len(problems)} problems:\n  - " + "\n  - ".join(problems))


def _is_number(value, whole: bool = False) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) if whole else math.isfinite(value)


def _at_least(name: str, value, low, whole: bool = True, hint: str = "", above: bool = False) -> list[str]:
    """[] if `value` is a number (whole if asked) >= low (> low with `above`), else the problem."""
    ok = _is_number(value, whole) and (value > low if above else value >= low)
    if ok:
        return []
    kind = "a whole number" if whole else "a finite number"
    return [f"{name}={value!r} must be {kind} {'>' if above else '>='} {low:g}" + (f" ({hint})" if hint else "")]


def _one_of(name: str, value, allowed) -> list[str]:
    return [] if value in allowed else [f"{name}={value!r} must be one of {', '.join(map(str, allowed))}"]


def _speed(section: str, cfg, names: tuple[str, ...]) -> list[str]:
    return [p for n in names for p in _one_of(f"{section}.{n}", getattr(cfg, n), SPEED_SETTINGS)] + _one_of(
        f"{section}.precision", cfg.precision, PRECISIONS)


# --- networks --------------------------------------------------------------------------------------------------------
def _levels_problems(section: str, cfg, mult: tuple) -> list[str]:
    """The network halves the resolution once per level after the first and doubles it back (UNet), so the image size
    must divide exactly: 17px with 3 levels gives 17 -> 8 -> 4 and back 8 -> 16, which the skip connections refuse."""
    factor = 2 ** (len(mult) - 1)
    if cfg.image_size % factor:
        down = cfg.image_size // factor * factor or factor
        up = down + factor
        return [f"{section}.image_size={cfg.image_size} is not a multiple of {factor}, but channel_mult has "
                f"{len(mult)} levels, which halve the resolution {len(mult) - 1} time(s): use a multiple of {factor}, "
                f"e.g. {down} or {up}, or fewer levels in channel_mult"]
    return []


def _width_problems(section: str, cfg, mult: tuple, ds: tuple, num_heads: int) -> list[str]:
    widths = sorted({int(mult[i] * cfg.model_channels) for i in range(len(mult)) if 2**i in ds}
                    | {int(mult[-1] * cfg.model_channels)})  # attention levels and the middle block
    out = []
    if cfg.num_head_channels != -1:
        out += [f"{section}: attention width {w} is not divisible by num_head_channels={cfg.num_head_channels}; "
                "choose a num_head_channels that divides every attention level's channels"
                for w in widths if w % cfg.num_head_channels]
    else:
        out += [f"{section}: attention width {w} is not divisible by num_heads={num_heads}; choose a head count "
                "that divides every attention level's channels" for w in widths if w % num_heads]
    out += [f"{section}: level width {int(m * cfg.model_channels)} (model_channels={cfg.model_channels} x {m}) is not "
            "a multiple of 32, which GroupNorm's 32 groups need; change model_channels" for m in dict.fromkeys(mult)
            if int(m * cfg.model_channels) % 32]
    return out


def network_problems(section: str, cfg: UNetConfig | ClassifierConfig) -> list[str]:
    """Sizes in range, then shapes the network can actually run: exact halvings, reachable attention resolutions,
    widths that split into heads and GroupNorm groups."""
    unet = isinstance(cfg, UNetConfig)
    blocks = ("num_res_blocks", cfg.num_res_blocks) if unet else ("depth", cfg.depth)
    out = [p for name, value in (("image_size", cfg.image_size), ("in_channels", cfg.in_channels),
                                 ("model_channels", cfg.model_channels), blocks)
           for p in _at_least(f"{section}.{name}", value, 1)]
    if not (_is_number(cfg.dropout) and 0 <= cfg.dropout < 1):
        out.append(f"{section}.dropout={cfg.dropout!r} must be in [0, 1)")
    if not (cfg.num_classes is None and unet):
        out += _at_least(f"{section}.num_classes", cfg.num_classes, 1, hint="none: unconditional" if unet else "")
    if cfg.num_head_channels != -1:
        out += _at_least(f"{section}.num_head_channels", cfg.num_head_channels, 1, hint="-1: use num_heads")
    num_heads = cfg.num_heads if unet else 1
    out += _at_least(f"{section}.num_heads", num_heads, 1)
    if not unet:
        out += _one_of(f"{section}.pool", cfg.pool, POOLS)
        if cfg.pool == "attention" and cfg.num_head_channels == -1:
            out.append(f"{section}.pool=attention needs num_head_channels (e.g. 64)")
    if not all(_is_number(m) and m > 0 for m in cfg.channel_mult):
        out.append(f"{section}.channel_mult={cfg.channel_mult!r} must be numbers > 0, e.g. 1,2,2")
    if isinstance(cfg, UpsamplerConfig):
        out += _small_size_problems(section, cfg)
    if out:
        return out  # the shape rules below need sane sizes
    try:
        mult = network_channel_mult(cfg)
    except ConfigError as e:
        return [f"{section}.{e}"]
    out += _levels_problems(section, cfg, mult)
    try:
        ds = attention_ds(cfg.image_size, cfg.attention_resolutions, mult)
    except ConfigError as e:
        return out + [f"{section}: {e}"]
    return out + _width_problems(section, cfg, mult, ds, num_heads)


def _small_size_problems(section: str, cfg: UpsamplerConfig) -> list[str]:
    """An upsampler's low-resolution input: smaller than the image, and a whole fraction of it (released: 4x), so
    the training pairs' area downsample averages whole blocks of pixels."""
    out = _at_least(f"{section}.small_size", cfg.small_size, 1, hint="the low-resolution input's size, e.g. 64")
    if out or not _is_number(cfg.image_size, whole=True) or cfg.image_size < 1:
        return out
    if cfg.small_size >= cfg.image_size:
        return [f"{section}.small_size={cfg.small_size} must be below image_size={cfg.image_size} (the large size "
                "the upsampler makes), e.g. small_size=64 with image_size=256"]
    if cfg.image_size % cfg.small_size:
        nearest = min((d for d in range(1, cfg.image_size) if cfg.image_size % d == 0),
                      key=lambda d: abs(d - cfg.small_size))
        return [f"{section}.image_size={cfg.image_size} is not a multiple of small_size={cfg.small_size}; choose "
                f"sizes with a whole factor between them, e.g. small_size={nearest}"]
    return []


def validate_unet(cfg: UNetConfig) -> None:
    raise_problems(network_problems("unet", cfg))


def validate_upsampler(cfg: UpsamplerConfig) -> None:
    raise_problems(network_problems("upsampler", cfg))


def validate_classifier(cfg: ClassifierConfig) -> None:
    raise_problems(network_problems("classifier", cfg))


# --- diffusion, sampling, evaluation ---------------------------------------------------------------------------------
def diffusion_problems(cfg: DiffusionConfig, samplers=(), section: str = "diffusion",
                       samplers_field: str = "sample.samplers") -> list[str]:
    """Steps, schedule and variance flags; the config's respacing and the sampler's, against the trained steps.
    `section` names the process (the upsampler's is upsampler_diffusion), `samplers_field` where the samplers are."""
    out = _at_least(f"{section}.steps", cfg.steps, 1, hint="e.g. 1000")
    out += _one_of(f"{section}.noise_schedule", cfg.noise_schedule, NOISE_SCHEDULES)
    if cfg.learn_sigma and cfg.sigma_small:
        out.append(f"{section}: learn_sigma and sigma_small exclude each other; set one of them false")
    if not _is_number(cfg.steps, whole=True) or cfg.steps < 1:
        return out  # the respacings below are counted in trained steps
    if cfg.timestep_respacing:
        try:
            space_timesteps(cfg.steps, cfg.timestep_respacing)
        except ConfigError as e:
            out.append(f"{section}.timestep_respacing: {e}")
    for sampler in samplers:
        problem = _sampler_fit(sampler, cfg.steps)
        if problem:
            out.append(f"{samplers_field}: {sampler!r} does not fit {section}.steps={cfg.steps}: {problem}")
    return out


def _sampler_fit(sampler: str, steps: int) -> str | None:
    """Why a sampler string cannot run on a process of `steps` trained timesteps, or None."""
    try:
        spec = parse_sampler(sampler)
    except ConfigError:
        return None  # sample_problems reports the string itself
    if spec.steps is not None and spec.steps > steps:
        return f"it takes {spec.steps} steps of the {steps} trained"
    if spec.respacing:
        try:
            space_timesteps(steps, spec.respacing)
        except ConfigError as e:
            return str(e)
    return None


def check_diffusion(cfg: DiffusionConfig) -> None:
    raise_problems(diffusion_problems(cfg))


def _scales_ok(scales) -> bool:
    return bool(scales) and all(_is_number(s) and s >= 0 for s in scales)


def _grid_axis(name: str, items, parse, example: str) -> list[str]:
    """Problems of one list of the grid (samplers, intervals, methods): empty, or items that do not parse."""
    out = [] if items else [f"sample.{name} is empty; give one or more, e.g. {example}"]
    for item in items:
        try:
            parse(item)
        except ConfigError as e:
            out.append(f"sample.{name}: {e}")
    return out


def sample_problems(cfg: SampleConfig) -> list[str]:
    out = _grid_axis("samplers", cfg.samplers, parse_sampler, "ddim25 or ddim25,dpm++2m-10 (--samplers)")
    out += _grid_axis("guidance_intervals", cfg.guidance_intervals, parse_interval,
                      "all (guidance at every noise level) or all,0.3:5 (--intervals)")
    out += _grid_axis("guidance_methods", cfg.guidance_methods, parse_method,
                      "classifier or classifier,cfg (--methods)")
    scales = cfg.guidance_scales
    if not _scales_ok(scales):
        out.append(f"sample.guidance_scales={scales!r} must be finite numbers >= 0 (0 = unguided), e.g. 0,1,2,4 "
                   "(--scales)")
    if not (_is_number(cfg.eta) and cfg.eta >= 0):
        out.append(f"sample.eta={cfg.eta!r} must be a finite number >= 0 (0: deterministic DDIM)")
    for name in ("num_samples", "batch_size"):
        out += _at_least(f"sample.{name}", getattr(cfg, name), 1, hint=f"--{name.replace('_', '-')}")
    out += _at_least("sample.seed", cfg.seed, 0)
    out += _speed("sample", cfg, ("compile", "channels_last"))
    out += _at_least("sample.actors_per_gpu", cfg.actors_per_gpu, 1, hint="1 for large networks, 2 for small "
                     "launch-bound ones")
    if cfg.actor_cpus is not None and not (_is_number(cfg.actor_cpus) and cfg.actor_cpus > 0):
        out.append(f"sample.actor_cpus={cfg.actor_cpus!r} must be a number of CPUs > 0 (e.g. 1) or none")
    out += _at_least("sample.system_metrics_interval", cfg.system_metrics_interval, 0, whole=False,
                     hint="seconds; 0: off")
    return out + guide_problems(cfg)


def guide_step(guide_from: str) -> int | None:
    """N of sample.guide_from="step:N" (the diffusion model's snapshot at step N), else None."""
    text = str(guide_from).strip()
    if not text.startswith("step:"):
        return None
    step = text[len("step:"):]
    return int(step) if step.isdigit() and int(step) > 0 else -1


def guide_problems(cfg: SampleConfig) -> list[str]:
    """Autoguidance needs its guiding network, named by sample.guide_from."""
    out = []
    methods = {str(m).strip().lower() for m in cfg.guidance_methods}
    if "auto" in methods and not str(cfg.guide_from).strip():
        out.append("sample.guidance_methods has auto (autoguidance), which needs a guiding network: set "
                   "sample.guide_from (step:N, the diffusion model's snapshot at step N of train_diffusion."
                   "snapshot_steps; trained, the preset's guide network; or runs:/RUN_ID, models:/..., a checkpoint "
                   "or weights file) (--guide)")
    if guide_step(cfg.guide_from) == -1:
        out.append(f"sample.guide_from={cfg.guide_from!r}: step:N needs a step N >= 1, e.g. step:100")
    return out


def check_sample(cfg: SampleConfig) -> None:
    """The sample section on its own (`adm sample` takes the diffusion's steps from its checkpoint)."""
    raise_problems(sample_problems(cfg))


def evaluate_problems(cfg: EvaluateConfig) -> list[str]:
    out = _one_of("evaluate.features", cfg.features, FEATURE_SETS)
    out += _one_of("evaluate.fid_method", cfg.fid_method, FID_METHODS)
    out += _one_of("evaluate.inception_precision", cfg.inception_precision, INCEPTION_PRECISIONS)
    out += _one_of("evaluate.champion_metric", cfg.champion_metric, HIGHER_IS_BETTER + LOWER_IS_BETTER)
    out += _at_least("evaluate.num_reference", cfg.num_reference, 4, hint="precision/recall need >= 4")
    out += _at_least("evaluate.batch_size", cfg.batch_size, 1)
    if cfg.bootstrap != 0:
        out += _at_least("evaluate.bootstrap", cfg.bootstrap, 20, hint="replicates of each cell's intervals, e.g. 200; "
                         "0: no intervals")
    for name in ("ci_level", "promotion_level"):
        if not (_is_number(getattr(cfg, name)) and 0.5 <= getattr(cfg, name) < 1):
            out.append(f"evaluate.{name}={getattr(cfg, name)!r} must be a level in [0.5, 1), e.g. 0.9")
    return out


def check_evaluate(cfg: EvaluateConfig) -> None:
    """The evaluate section on its own (`adm evaluate` has no sampling section to check it against)."""
    raise_problems(evaluate_problems(cfg))


def upsample_problems(cfg: UpsampleConfig) -> list[str]:
    """The upsample section on its own: its sampler string, sizes, the sampling-time augmentation level, speed."""
    out = [f"upsample.sampler: {e}" for e in _parse_errors(parse_sampler, [cfg.sampler])]
    if not isinstance(cfg.cells, tuple) or not all(isinstance(c, str) and c.strip() for c in cfg.cells):
        out.append(f"upsample.cells={cfg.cells!r} must be cell keys of the sample grid, e.g. ddim25/scale_0,"
                   "ddim25/scale_4 (none: the unguided cell and the champion cell)")
    if not (_is_number(cfg.low_res_noise) and cfg.low_res_noise >= 0):
        out.append(f"upsample.low_res_noise={cfg.low_res_noise!r} must be a finite number >= 0 (0: the base samples "
                   "as they are)")
    if not (_is_number(cfg.eta) and cfg.eta >= 0):
        out.append(f"upsample.eta={cfg.eta!r} must be a finite number >= 0 (0: deterministic DDIM)")
    out += _at_least("upsample.batch_size", cfg.batch_size, 1) + _at_least("upsample.seed", cfg.seed, 0)
    out += _speed("upsample", cfg, ("compile", "channels_last"))
    out += _at_least("upsample.actors_per_gpu", cfg.actors_per_gpu, 1)
    if cfg.actor_cpus is not None and not (_is_number(cfg.actor_cpus) and cfg.actor_cpus > 0):
        out.append(f"upsample.actor_cpus={cfg.actor_cpus!r} must be a number of CPUs > 0 (e.g. 1) or none")
    return out


def _parse_errors(parse, items) -> list[str]:
    out = []
    for item in items:
        try:
            parse(item)
        except ConfigError as e:
            out.append(str(e))
    return out


def check_upsample(cfg: UpsampleConfig) -> None:
    """The upsample section on its own (`adm upsample` takes the processes from the checkpoints)."""
    raise_problems(upsample_problems(cfg))


# --- training and data -----------------------------------------------------------------------------------------------
def train_problems(section: str, cfg: TrainConfig) -> list[str]:
    out = []
    for name, low, hint in (("steps", 1, ""), ("batch_size", 1, "per worker"), ("log_interval", 1, ""),
                            ("save_interval", 1, ""), ("sample_interval", 0, "0: at the end only"),
                            ("keep_checkpoints", 1, ""), ("shuffle_rows", 0, "0: read in shard order"),
                            ("num_workers", 1, "")):
        out += _at_least(f"{section}.{name}", getattr(cfg, name), low, hint=hint)
    if cfg.microbatch != -1:
        out += _at_least(f"{section}.microbatch", cfg.microbatch, 1, hint="-1: no gradient accumulation")
    if cfg.max_failures != -1:
        out += _at_least(f"{section}.max_failures", cfg.max_failures, 0, hint="-1: retry without limit")
    out += _at_least(f"{section}.lr", cfg.lr, 0, whole=False, above=True, hint="e.g. 1e-4")
    share = "0: share the cluster's CPUs out"
    for name, hint in (("weight_decay", ""), ("grad_clip", "0: off"), ("cpus_per_worker", share),
                       ("system_metrics_interval", "seconds; 0: off")):
        out += _at_least(f"{section}.{name}", getattr(cfg, name), 0, whole=False, hint=hint)
    bad_rates = [r for r in cfg.ema_rate if not (_is_number(r) and 0 <= r < 1)]
    if bad_rates:
        out.append(f"{section}.ema_rate={cfg.ema_rate!r}: every rate must be in [0, 1) (e.g. 0.9999; none: "
                   f"{section}.ema_rate=), not {', '.join(map(str, bad_rates))}")
    out += _one_of(f"{section}.schedule_sampler", cfg.schedule_sampler, SCHEDULE_SAMPLERS)
    if not (_is_number(cfg.label_dropout) and 0 <= cfg.label_dropout < 1):
        out.append(f"{section}.label_dropout={cfg.label_dropout!r} must be in [0, 1) (e.g. 0.1; 0: no label dropout)")
    if not (_is_number(cfg.low_res_noise) and cfg.low_res_noise >= 0):
        out.append(f"{section}.low_res_noise={cfg.low_res_noise!r} must be a finite number >= 0 (e.g. 0.2; 0: off)")
    if not isinstance(cfg.use_gpu, bool) or not isinstance(cfg.anneal_lr, bool):
        out.append(f"{section}.use_gpu and anneal_lr must be true or false")
    out += _speed(section, cfg, ("compile", "channels_last", "cuda_graphs")) + warm_start_problems(section, cfg)
    bad = [s for s in cfg.snapshot_steps if not (_is_number(s, whole=True) and 1 <= s <= (cfg.steps or 0))]
    if bad:
        out.append(f"{section}.snapshot_steps={','.join(map(str, cfg.snapshot_steps))}: each must be a step of the "
                   f"run, 1 to {section}.steps={cfg.steps}, not {', '.join(map(str, bad))}")
    return out + eval_problems(section, cfg)


def eval_problems(section: str, cfg: TrainConfig) -> list[str]:
    """Evaluation while training: an interval (0: off), and keep_best only with something to rank checkpoints by."""
    out = _at_least(f"{section}.eval_interval", cfg.eval_interval, 0, hint="0: off")
    if not isinstance(cfg.keep_best, bool):
        out.append(f"{section}.keep_best={cfg.keep_best!r} must be true or false")
    elif cfg.keep_best and not (_is_number(cfg.eval_interval, whole=True) and cfg.eval_interval > 0):
        out.append(f"{section}.keep_best needs evaluation while training to pick the best checkpoint: set "
                   f"{section}.eval_interval (e.g. 50) or keep_best=false")
    return out


def warm_start_problems(section: str, cfg: TrainConfig) -> list[str]:
    """init_from and the EMA warm-up; whether init_from names a network that fits is checked where the registry and
    the files can be reached (pipelines/infra/init_from.py), still before any worker starts."""
    out = _one_of(f"{section}.ema_warmup", cfg.ema_warmup, SPEED_SETTINGS)
    for name in ("ema_warmup_inv_gamma", "ema_warmup_power"):
        out += _at_least(f"{section}.{name}", getattr(cfg, name), 0, whole=False, above=True, hint="e.g. 1 or 0.75")
    if not isinstance(cfg.init_from, str):
        out.append(f"{section}.init_from={cfg.init_from!r} must be text: champion, a models:/ or runs:/ URI, a "
                   "checkpoint folder or a weights file ('' for random weights)")
    return out


def data_problems(cfg: DataConfig) -> list[str]:
    out = _at_least("data.resolution", cfg.resolution, 0, hint="0: the UNet's image size")
    out += _at_least("data.channels", cfg.channels, 1)
    out += _at_least("data.num_images", cfg.num_images, 1)
    out += _at_least("data.limit", cfg.limit, 0, hint="0: every image")
    out += _one_of("data.resize", cfg.resize, RESIZE_MODES)
    if not (_is_number(cfg.validation_fraction) and 0 <= cfg.validation_fraction < 1):
        out.append(f"data.validation_fraction={cfg.validation_fraction!r} must be in [0, 1) (e.g. 0.05; 0: no "
                   "validation split)")
    if not cfg.splits or not all(isinstance(s, str) and s.strip() for s in cfg.splits):
        out.append(f"data.splits={cfg.splits!r} must name one or more splits, e.g. train or train,test")
    return out


# --- the whole config ------------------------------------------------------------------------------------------------
def _between_sections(preset) -> list[str]:
    """Rules that relate sections: the networks must fit each other and the sampling grid."""
    out, unet = [], preset.unet
    if unet.learn_sigma != preset.diffusion.learn_sigma:
        out.append(f"unet.learn_sigma={unet.learn_sigma} but diffusion.learn_sigma={preset.diffusion.learn_sigma}: "
                   "the UNet's outputs must match what the diffusion reads; set both alike")
    for section in ("classifier", "evaluator"):
        net = getattr(preset, section)
        if (net.image_size, net.in_channels) != (unet.image_size, unet.in_channels):
            out.append(f"{section} sees {net.image_size}px x {net.in_channels} channel(s) but the UNet makes "
                       f"{unet.image_size}px x {unet.in_channels}; set {section}.image_size and in_channels alike")
    data = preset.data
    if preset.upsampler is None and data.resolution not in (0, unet.image_size):
        out.append(f"data.resolution={data.resolution} but unet.image_size={unet.image_size}: training needs the "
                   "data at the UNet's size; set data.resolution=0 (the UNet's size) or change both")
    if data.channels != unet.in_channels:
        out.append(f"data.channels={data.channels} but unet.in_channels={unet.in_channels}; set both alike")
    if unet.num_classes is not None and preset.classifier.num_classes != unet.num_classes:
        out.append(f"classifier.num_classes={preset.classifier.num_classes} but unet.num_classes={unet.num_classes}")
    out += _label_dropout_problems(preset) + _held_out_problems(preset) + cascade_problems(preset)
    if _is_number(preset.sample.num_samples, whole=True) and 1 <= preset.sample.num_samples < 4:
        out.append(f"sample.num_samples={preset.sample.num_samples}: evaluation needs at least 4 per scale")
    scale = preset.evaluate.champion_scale
    scales = [float(s) for s in preset.sample.guidance_scales]  # valid only: else sample_problems says so
    if _scales_ok(scales) and scale != AUTO and not (_is_number(scale) and float(scale) in scales):
        out.append(f"evaluate.champion_scale={scale} is not in sample.guidance_scales="
                   f"{','.join(f'{s:g}' for s in scales)}; pick one of them, or auto (the best of the grid)")
    champion = preset.evaluate.champion_sampler
    if champion and champion.strip().lower() not in [str(x).strip().lower() for x in preset.sample.samplers]:
        out.append(f"evaluate.champion_sampler={champion!r} is not in sample.samplers="
                   f"{','.join(preset.sample.samplers)}; pick one of them or leave it empty (the first)")
    step = guide_step(preset.sample.guide_from)
    if step not in (None, -1) and step not in preset.train_diffusion.snapshot_steps:
        kept = ",".join(map(str, preset.train_diffusion.snapshot_steps)) or "none"
        out.append(f"sample.guide_from=step:{step}: the diffusion trainer keeps no snapshot at step {step} (it keeps "
                   f"{kept}); add {step} to train_diffusion.snapshot_steps")
    return out


def _label_dropout_problems(preset) -> list[str]:
    """Label dropout teaches the diffusion model the null class of classifier-free guidance; nothing else has one."""
    out = []
    for section in ("train_classifier", "train_evaluator"):
        if getattr(preset, section).label_dropout != 0:
            out.append(f"{section}.label_dropout must be 0: only the diffusion model learns the null class of "
                       "classifier-free guidance (train_diffusion.label_dropout)")
    dropout = preset.train_diffusion.label_dropout
    if dropout not in (0, 0.0) and preset.unet.num_classes is None:
        out.append("train_diffusion.label_dropout > 0 needs a class-conditional UNet (unet.num_classes); set it to 0 "
                   "for an unconditional model")
    methods = {str(m).strip().lower() for m in preset.sample.guidance_methods}
    if methods & {"cfg", "both"} and dropout in (0, 0.0):
        out.append("sample.guidance_methods has classifier-free guidance (cfg/both), which needs a diffusion model "
                   "trained with label dropout: set train_diffusion.label_dropout (e.g. 0.1) or drop cfg/both")
    champion = preset.evaluate.champion_method
    if champion and champion.strip().lower() not in methods:
        out.append(f"evaluate.champion_method={champion!r} is not in sample.guidance_methods="
                   f"{','.join(preset.sample.guidance_methods)}; pick one of them or leave it empty (the first)")
    return out


def _held_out_problems(preset) -> list[str]:
    """Evaluation while training reads the validation split, which ingest carves only with a fraction > 0."""
    data = preset.data
    if data.validation_fraction not in (0, 0.0) or "validation" in data.splits:
        return []
    return [f"{section}.eval_interval needs a validation split: set data.validation_fraction (e.g. 0.05) or "
            f"{section}.eval_interval=0" for section in train_sections(preset)
            if getattr(preset, section).eval_interval]


def cascade_problems(preset) -> list[str]:
    """A cascade (ADM-U after the base model): all four sections or none; the upsampler takes the base model's
    output (its small_size is the UNet's image size, same channels and classes) and makes the data's size; it learns
    no null class; conditioning augmentation only on its low-resolution input, sampled within the trained levels;
    the cells it upsamples are cells of the grid."""
    present = [name for name in CASCADE_SECTIONS if getattr(preset, name) is not None]
    out = [f"{name}.low_res_noise must be 0: only the upsampler's low-resolution input is augmented "
           "(train_upsampler.low_res_noise)" for name in TRAIN_SECTIONS if getattr(preset, name).low_res_noise != 0]
    if not present:
        return out
    if len(present) < len(CASCADE_SECTIONS):
        missing = [name for name in CASCADE_SECTIONS if name not in present]
        return out + [f"a cascade needs the sections {', '.join(CASCADE_SECTIONS)}; this config lacks "
                      f"{', '.join(missing)} (start from a cascade preset, e.g. fashion-mnist-cascade)"]
    up, unet, data = preset.upsampler, preset.unet, preset.data
    if up.small_size != unet.image_size:
        out.append(f"upsampler.small_size={up.small_size} but unet.image_size={unet.image_size}: the upsampler's "
                   "low-resolution input is the base model's output; set both alike")
    if up.in_channels != unet.in_channels:
        out.append(f"upsampler.in_channels={up.in_channels} but unet.in_channels={unet.in_channels}; set both alike")
    if up.num_classes is not None and up.num_classes != unet.num_classes:
        out.append(f"upsampler.num_classes={up.num_classes} but unet.num_classes={unet.num_classes}: the upsampler "
                   "is given the base sample's label; set both alike (or none: an unconditional upsampler)")
    if up.learn_sigma != preset.upsampler_diffusion.learn_sigma:
        out.append(f"upsampler.learn_sigma={up.learn_sigma} but upsampler_diffusion.learn_sigma="
                   f"{preset.upsampler_diffusion.learn_sigma}; set both alike")
    if data.resolution not in (0, up.image_size):
        out.append(f"data.resolution={data.resolution} but upsampler.image_size={up.image_size}: a cascade ingests "
                   "the data at the large size (and the base model's size from it); set data.resolution=0 or "
                   f"{up.image_size}")
    train = preset.train_upsampler
    if train.label_dropout != 0:
        out.append("train_upsampler.label_dropout must be 0: the upsampler is sampled unguided and learns no null "
                   "class (train_diffusion.label_dropout is the one for classifier-free guidance)")
    level = preset.upsample.low_res_noise
    if _is_number(level) and _is_number(train.low_res_noise) and level > train.low_res_noise:
        hint = ("set train_upsampler.low_res_noise (e.g. 0.2) to train with conditioning augmentation, or "
                "upsample.low_res_noise=0" if not train.low_res_noise else
                f"pick a level within it (<= {train.low_res_noise:g})")
        out.append(f"upsample.low_res_noise={level:g} is above the levels the upsampler is trained on "
                   f"(train_upsampler.low_res_noise={train.low_res_noise:g}); {hint}")
    return out + _upsample_cells_problems(preset)


def _upsample_cells_problems(preset) -> list[str]:
    """upsample.cells are keys of the sample grid; none (the unguided and champion cells) needs a champion cell known
    before evaluation: champion_scale=auto is chosen after it."""
    cells = preset.upsample.cells
    if not cells:
        if preset.evaluate.champion_scale == AUTO:
            return ["upsample.cells is empty (the unguided and the champion cell) but evaluate.champion_scale=auto "
                    "chooses the champion only after evaluation: name the cells, e.g. upsample.cells="
                    f"{preset.sample.samplers[0]}/scale_0,{preset.sample.samplers[0]}/scale_1"]
        return []
    s = preset.sample
    try:
        keys = [c.key for c in grid_cells(s.samplers, s.guidance_scales, s.guidance_intervals, s.guidance_methods)]
    except (ConfigError, TypeError, ValueError):
        return []  # sample_problems says what is wrong with the grid
    return [f"upsample.cells: {cell!r} is not a cell of the sample grid ({', '.join(keys)})"
            for cell in cells if isinstance(cell, str) and cell.strip() not in keys]


def preset_problems(preset) -> list[str]:
    out = network_problems("unet", preset.unet) + network_problems("classifier", preset.classifier)
    out += network_problems("evaluator", preset.evaluator)
    out += diffusion_problems(preset.diffusion, preset.sample.samplers)
    out += sample_problems(preset.sample) + evaluate_problems(preset.evaluate)
    for section in train_sections(preset):
        out += train_problems(section, getattr(preset, section))
    if preset.upsampler is not None:
        out += network_problems("upsampler", preset.upsampler)
    if preset.upsampler_diffusion is not None:
        samplers = (preset.upsample.sampler,) if preset.upsample is not None else ()
        out += diffusion_problems(preset.upsampler_diffusion, samplers, "upsampler_diffusion", "upsample.sampler")
    if preset.upsample is not None:
        out += upsample_problems(preset.upsample)
    return out + data_problems(preset.data) + _between_sections(preset) + trained_guide_problems(preset)


def trained_guide_problems(preset) -> list[str]:
    """A guide network trained beside the diffusion model (autoguidance, Karras et al. 2024): both sections or none;
    the same image size, channels, classes and output layout as the diffusion model (it runs on the same x_t with the
    same label, under the same process); conditional on the label, never on the null class."""
    present = [name for name in GUIDE_SECTIONS if getattr(preset, name) is not None]
    if not present:
        return [f"sample.guide_from={TRAINED_GUIDE} needs a guide network, which preset {preset.name} has not (guide "
                "and train_guide sections): start from fashion-mnist-autoguide, or use sample.guide_from=step:N"] \
            if str(preset.sample.guide_from).strip() == TRAINED_GUIDE else []
    if len(present) < len(GUIDE_SECTIONS):
        return [f"a guide network needs the sections {', '.join(GUIDE_SECTIONS)}; this config lacks "
                f"{', '.join(n for n in GUIDE_SECTIONS if n not in present)}"]
    guide, unet, out = preset.guide, preset.unet, network_problems("guide", preset.guide)
    for name in ("image_size", "in_channels", "num_classes", "learn_sigma"):
        if getattr(guide, name) != getattr(unet, name):
            out.append(f"guide.{name}={getattr(guide, name)} but unet.{name}={getattr(unet, name)}: autoguidance "
                       f"runs the guide on the diffusion model's x_t with its label; set both alike")
    return out + [f"train_guide.{name} must be 0: {why}" for name, why in (
        ("label_dropout", "the guide is always given the sample's label"),
        ("low_res_noise", "only the upsampler's low-resolution input is augmented"))
        if getattr(preset.train_guide, name) != 0]


def validate_preset(preset) -> None:
    """The one check of a whole resolved config, before any stage or command does work: every problem at once."""
    raise_problems(preset_problems(preset))
