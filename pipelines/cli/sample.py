"""`adm sample`: guided sampling over a grid of cells (sampler x guidance method x scale x interval) with Ray Data.

The sampling settings are the config's `sample` section (components/config/sections.py SampleConfig, or the --preset's):
each flag below sets one of its fields, as `--override sample.FIELD=VALUE` would, and has no default of its own.
"""

import posixpath

from components.config import SampleConfig, override_section
from components.config.presets import get_preset
from components.config.sections import PRECISIONS, SPEED_SETTINGS
from pipelines.cli.common import command_console, tracking_args, verbose_arg
from pipelines.cli.upsample import run_upsample, upsample_flags

# flag -> field of the sample section it sets
SAMPLE_FLAGS = {"scales": "guidance_scales", "intervals": "guidance_intervals", "methods": "guidance_methods",
               "num_samples": "num_samples",
               "samplers": "samplers", "sampler": "sampler", "eta": "eta",
                "batch_size": "batch_size", "seed": "seed", "actors_per_gpu": "actors_per_gpu",
                "actor_cpus": "actor_cpus", "compile": "compile", "channels_last": "channels_last",
                "precision": "precision", "system_metrics_interval": "system_metrics_interval",
                "guide": "guide_from"}


def sample_config(args) -> SampleConfig:
    base = get_preset(args.preset).sample if args.preset else SampleConfig()
    given = {field: getattr(args, flag) for flag, field in SAMPLE_FLAGS.items() if getattr(args, flag) is not None}
    if args.scales is None and args.diffusion.startswith("models:/"):
        from pipelines.infra.registry import best_scale

        best = best_scale(args.diffusion, args.tracking_uri)
        if best is not None:  # the register stage chose it (evaluate.champion_scale=auto)
            print(f"guidance scale {best:g}: the best of the grid for {args.diffusion} (its adm.best_scale); "
                  "--scales to choose others")
            given["guidance_scales"] = f"{best:g}"
    return override_section("sample", base, given)


def cmd_sample(args) -> int:
    from pipelines.stages.sample import SampleJob, run_sampling, sample_and_track

    job = SampleJob(diffusion=args.diffusion, classifier=args.classifier, out=args.out, config=sample_config(args),
                    label=args.label, preset=args.preset, actors=args.actors, tracking_uri=args.tracking_uri,
                    experiment=args.experiment)
    with command_console(args, "sample") as log:
        result = run_sampling(job, log=log) if args.no_track else sample_and_track(job, log=log)
        upsampled = run_upsample(args, args.out, posixpath.join(args.out.rstrip("/"), "cascade"), log) \
            if args.upsampler else {}
    for key, url in result.npz.items():
        print(f"{key}: {url}  grid {result.grids[key]}")
    for key, url in upsampled.items():
        print(f"{key}: {url}")
    return 0


def add_parsers(sub) -> None:
    d = SampleConfig()
    p = sub.add_parser("sample", help="classifier-guided sampling over a grid of samplers, scales and guidance "
                       "intervals (Ray Data)")
    p.add_argument("--diffusion", required=True, help="checkpoint folder, runs:/RUN_ID, models:/NAME@ALIAS, "
                   "models:/NAME/VERSION, or weights file (+ --preset)")
    p.add_argument("--classifier", default=None, help="noisy classifier: same forms; needed for scales above 0")
    p.add_argument("--preset", default=None, help="the sampling settings' base (its sample section; default: "
                   "SampleConfig's), and the networks of bare weights files (e.g. imagenet256 for released .pt)")
    p.add_argument("--scales", help="comma-separated guidance scales, 0 = unguided (sample.guidance_scales; default "
                   f"{','.join(f'{s:g}' for s in d.guidance_scales)})")
    p.add_argument("--intervals", help="comma-separated guidance intervals of noise levels sigma, 'all' or LO:HI, "
                   f"e.g. all,0.3:5 (sample.guidance_intervals; default {','.join(d.guidance_intervals)})")
    p.add_argument("--methods", help="comma-separated guidance methods: classifier, cfg (classifier-free: needs a "
                   "diffusion model trained with label dropout), both, auto (autoguidance: needs --guide) "
                   f"(sample.guidance_methods; default {','.join(d.guidance_methods)})")
    p.add_argument("--guide", help="autoguidance's guiding network: step:N (the diffusion model's snapshot at step N "
                   "of its training run), runs:/RUN_ID, models:/..., a checkpoint folder or weights file "
                   "(sample.guide_from)")
    p.add_argument("--num-samples", help=f"samples per cell (sample.num_samples; default {d.num_samples})")
    p.add_argument("--samplers", help="comma-separated samplers: ddimN (DDIM, e.g. ddim25), dpm++2m-N (DPM-Solver++"
                   "(2M), N network evaluations), heun-N (EDM Heun, 2N-1 evaluations) or DDPM step counts, e.g. 250 "
                   f"(sample.samplers; default {','.join(d.samplers)})")
    p.add_argument("--sampler", help="one sampler, taken whole (DDPM sections such as 10,10,5 included)")
    p.add_argument("--eta", help=f"DDIM eta, 0: deterministic (sample.eta; default {d.eta:g})")
    p.add_argument("--batch-size", help=f"samples per shard / actor call (sample.batch_size; default {d.batch_size})")
    p.add_argument("--seed", help=f"base seed; sample i uses a seed derived from (seed, i) (sample.seed; default "
                   f"{d.seed})")
    p.add_argument("--label", type=int, default=None, help="one class for all samples (default: uniform at random)")
    p.add_argument("--actors", type=int, default=None,
                   help="sampler actors (default: --actors-per-gpu per GPU, or one per 2 CPUs)")
    p.add_argument("--actors-per-gpu", help="actors sharing each GPU when --actors is not given: 2 overlap the "
                   "kernel launches of small networks, 1 suits large ones (sample.actors_per_gpu; default "
                   f"{d.actors_per_gpu})")
    p.add_argument("--actor-cpus", help="CPUs (and torch threads) per CPU actor (sample.actor_cpus; default: the "
                   "cluster's CPUs shared out)")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="the actors' arithmetic, bf16 = autocast (sample.precision; default auto: the faster, measured "
                   "once per job and machine)")
    p.add_argument("--compile", choices=SPEED_SETTINGS,
                   help="torch.compile the networks in each actor (sample.compile; default auto: measured, where the "
                   "job is long enough to repay compiling)")
    p.add_argument("--channels-last", choices=SPEED_SETTINGS,
                   help="channels_last memory format for the networks (sample.channels_last; default auto: measured)")
    p.add_argument("--upsampler", default=None, help="a cascade: then upsample the cells with this ADM-U (same "
                   "forms as --diffusion) into OUT/cascade, as adm upsample does")
    upsample_flags(p, "--upsample-sampler")
    p.add_argument("--system-metrics-interval", metavar="SECONDS", help="each sampler actor's machine (CPU, memory, "
                   "GPU) on the sampling run's System metrics every SECONDS, 0: off (sample.system_metrics_interval; "
                   f"default {d.system_metrics_interval:g})")
    p.add_argument("--out", default="adm-samples", help="output folder or fsspec URL")
    tracking_args(p)
    verbose_arg(p)
    p.set_defaults(func=cmd_sample)
