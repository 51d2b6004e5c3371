"""`adm upsample`: a cascade's second stage outside a pipeline: ADM-U upsamples the cells of an `adm sample` folder.

The settings are the config's `upsample` section (components/config/sections.py UpsampleConfig, or the --preset's):
each flag below sets one of its fields, as `--override upsample.FIELD=VALUE` would, and has no default of its own.
`adm sample --upsampler REF` runs the same after sampling, into OUT/cascade.
"""

from components.config import UpsampleConfig, override_section
from components.config.presets import get_preset
from pipelines.cli.common import command_console, tracking_args, verbose_arg

# flag -> field of the upsample section it sets
UPSAMPLE_FLAGS = {"cells": "cells", "upsample_sampler": "sampler", "low_res_noise": "low_res_noise",
                  "upsample_batch_size": "batch_size", "upsample_seed": "seed", "upsample_eta": "eta",
                  "upsample_actor_cpus": "actor_cpus"}


def upsample_config(args) -> UpsampleConfig:
    preset = get_preset(args.preset) if args.preset else None
    base = preset.upsample if preset is not None and preset.upsample is not None else UpsampleConfig()
    given = {field: getattr(args, flag) for flag, field in UPSAMPLE_FLAGS.items() if getattr(args, flag, None)
             is not None}
    return override_section("upsample", base, given)


def run_upsample(args, samples: str, out: str, log) -> dict:
    """Upsample the cells of `samples` into `out` (and log them unless --no-track); {cascade key: NPZ URL}."""
    from pipelines.stages.upsample import UpsampleJob, log_to_mlflow, run_upsampling

    job = UpsampleJob(samples=samples, upsampler=args.upsampler, out=out, config=upsample_config(args),
                      preset=args.preset, actors=args.actors, tracking_uri=args.tracking_uri,
                      experiment=args.experiment)
    result = run_upsampling(job, log=log)
    if not args.no_track:
        log_to_mlflow(job, result, log=log)
    return result.npz


def cmd_upsample(args) -> int:
    with command_console(args, "upsample") as log:
        npz = run_upsample(args, args.samples, args.out, log)
    for key, url in npz.items():
        print(f"{key}: {url}")
    return 0


def upsample_flags(p, sampler_flag: str) -> None:
    """The flags of the upsample section, shared by `adm upsample` and `adm sample --upsampler`."""
    d = UpsampleConfig()
    p.add_argument("--cells", help="comma-separated cell keys of the samples folder to upsample, e.g. "
                   "ddim25/scale_0,ddim25/scale_4 (upsample.cells; default: every cell)")
    p.add_argument(sampler_flag, dest="upsample_sampler", help="the upsampler's sampler, unguided: ddimN, a DDPM "
                   f"step count such as 250, dpm++2m-N, heun-N (upsample.sampler; default {d.sampler})")
    p.add_argument("--low-res-noise", help="conditioning augmentation at sampling time: sigma of the noise on the "
                   "base samples, given to an upsampler trained with it (upsample.low_res_noise; default "
                   f"{d.low_res_noise:g})")
    p.add_argument("--upsample-batch-size", help=f"samples per shard (upsample.batch_size; default {d.batch_size})")
    p.add_argument("--upsample-seed", help="base seed; sample i of cell c uses a seed derived from (seed, c, i) "
                   f"(upsample.seed; default {d.seed})")
    p.add_argument("--upsample-eta", help=f"DDIM eta of the upsampler (upsample.eta; default {d.eta:g})")
    p.add_argument("--upsample-actor-cpus", help="CPUs (and torch threads) per CPU actor (upsample.actor_cpus; "
                   "default: the cluster's CPUs shared out)")


def add_parsers(sub) -> None:
    p = sub.add_parser("upsample", help="a cascade's second stage: ADM-U upsamples the cells of an adm sample "
                       "folder, unguided (Ray Data)")
    p.add_argument("--samples", required=True, help="an output folder of adm sample (its cells' samples are the "
                   "low-resolution inputs)")
    p.add_argument("--upsampler", required=True, help="the upsampler: checkpoint folder, runs:/RUN_ID, "
                   "models:/NAME@ALIAS, models:/NAME/VERSION, or a weights file (+ --preset; a released .pt too)")
    p.add_argument("--preset", default=None, help="the settings' base (its upsample section), and the network of a "
                   "bare weights file (e.g. imagenet256-cascade for 64_256_upsampler.pt)")
    upsample_flags(p, "--sampler")
    p.add_argument("--actors", type=int, default=None, help="upsampler actors (default: one per GPU, or one per "
                   "2 CPUs)")
    p.add_argument("--out", default="adm-cascade", help="output folder or fsspec URL")
    tracking_args(p)
    verbose_arg(p)
    p.set_defaults(func=cmd_upsample)
