"""Guided sampling throughput: through Ray Data (GuidedSampler actors) vs the same sampler in one process, and the
cost of guidance (guided vs unguided step time).

Networks: the preset's diffusion model and noisy classifier with random weights (throughput does not depend on the
weights). Two comparisons, each with the same accounting on both sides:

- whole job: `run_sampling` (after ray.init: Ray Data planning, actor start-up, model loading, sampling, shard writes,
  per-scale NPZ and grid) against the same job done by one fresh Python process (interpreter and imports, model
  loading, the same GuidedSampler over every shard, the same writes), timed from outside that process;
- steady state: images per second of shard work after each side's first shard (CUDA / cuDNN / compile warm-up left
  out on both sides), inside the actors vs in one process. The one-process rate is measured before and after the Ray
  job and the ratios use their mean, so drift of a shared machine does not land on one side.

    python bench/bench_sample.py [--preset fashion-mnist] [--num-samples 64] [--batch-size 32] [--sampler ddim10]
                                 [--scales 2] [--preset-job] [--actors 1] [--threads N] [--compile auto]

--preset-job samples the preset's own sampling job (its scale grid, samples per scale, batch size and sampler).
With --threads below the machine's core count each CPU actor asks for exactly that many CPUs (--actor-cpus), so both
sides run the same number of torch threads and the rest of the machine is left to Ray's own processes;
`--actors 2 --actor-cpus 1 --threads 2` compares two one-thread actors with one two-thread process.
"""

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from components.config import SampleConfig
from components.config.grid import grid_cells
from components.config.presets import get_preset
from components.guidance import trained_sigmas
from components.training import Learner
from pipelines.stages.sample import GuidedSampler, SampleJob, assemble, plan_shards, run_sampling

PRESET = ["fashion-mnist"]  # the preset of this run, for the one-process job's subprocess


def save_random(kind: str, preset, folder: str) -> str:
    learner = Learner(kind, preset, torch.device("cpu"))
    for p in learner.net.parameters():
        p.data.normal_(0, 0.02)
    learner.ema = {}
    learner.save(folder, config={"kind": kind, "preset": dataclasses.asdict(preset)})
    return folder


def steady_rate(job: SampleJob, threads: int) -> float:
    """Images/s of one process over every shard but the first, a warm-up (CUDA context, cuDNN plans, compile), as
    the actors' rate leaves out each actor's first shard."""
    sampler = GuidedSampler(job, threads)
    shards = plan_shards(job.cells, job.config.num_samples, job.config.batch_size)
    sampler.make_shard(0)
    start = time.perf_counter()
    n = sum(len(sampler.make_shard(k)["labels"]) for k in range(1, len(shards)))
    return n / (time.perf_counter() - start)


def whole_job_in_one_process(job: SampleJob, threads: int) -> float:
    """Wall seconds of a fresh Python process doing the whole job without Ray (see --one-process-job)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"job": dataclasses.asdict(job), "threads": threads, "preset": PRESET[0]}, f, default=list)
    start = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--one-process-job", f.name], check=True)
    wall = time.perf_counter() - start
    os.unlink(f.name)
    return wall


def one_process_job(spec_file: str) -> None:
    with open(spec_file) as f:
        spec = json.load(f)
    config = spec["job"].pop("config")
    job = SampleJob(**spec["job"], config=SampleConfig(**{k: tuple(v) if isinstance(v, list) else v
                                                          for k, v in config.items()}))
    shards = plan_shards(job.cells, job.config.num_samples, job.config.batch_size)
    GuidedSampler(job, spec["threads"])({"shard": np.arange(len(shards))})
    assemble(job, shards, trained_sigmas(get_preset(spec["preset"]).diffusion))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="fashion-mnist")
    parser.add_argument("--num-samples", type=int, default=64, help="samples per cell")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sampler", default="ddim10")
    parser.add_argument("--scales", default="2", help="comma-separated guidance scales")
    parser.add_argument("--preset-job", action="store_true",
                        help="use the preset's sampling job (scales, samples, batch, sampler) instead of the above")
    parser.add_argument("--actors", type=int, default=1, help="Ray Data actors (on one GPU they share it)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads of the one-process sampler (and of each CPU actor unless --actor-cpus)")
    parser.add_argument("--actor-cpus", type=float, default=None,
                        help="CPUs and torch threads of each CPU actor (default: --threads when below the core "
                             "count, else the product's plan)")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                        help="torch.compile in both samplers (auto: on CUDA only)")
    parser.add_argument("--one-process-job", help=argparse.SUPPRESS)
    return parser.parse_args()


def main():
    args = parse_args()
    if args.one_process_job:
        return one_process_job(args.one_process_job)
    preset = get_preset(args.preset)
    size = dict(guidance_scales=tuple(float(s) for s in args.scales.split(",")), num_samples=args.num_samples,
                samplers=(args.sampler,), batch_size=args.batch_size)
    if args.preset_job:
        s = preset.sample
        size = dict(guidance_scales=tuple(s.guidance_scales), num_samples=s.num_samples, samplers=s.samplers,
                    guidance_intervals=s.guidance_intervals, batch_size=s.batch_size)
    PRESET[0] = args.preset
    images = len(grid_cells(size["samplers"], size["guidance_scales"], size.get("guidance_intervals", ("all",)))) \
        * size["num_samples"]
    threads = args.threads
    with tempfile.TemporaryDirectory() as tmp:
        job = SampleJob(diffusion=save_random("diffusion", preset, f"{tmp}/d"),
                        classifier=save_random("classifier", preset, f"{tmp}/c"), out=f"{tmp}/ray", actors=args.actors,
                        config=SampleConfig(**size, compile=args.compile, actor_cpus=args.actor_cpus or (
                            threads if threads < (os.cpu_count() or 1) else None)))
        guided = steady_rate(job, threads)
        unguided_config = dataclasses.replace(job.config, guidance_scales=(0.0,), num_samples=images)
        unguided = steady_rate(dataclasses.replace(job, classifier=None, config=unguided_config), threads)
        alone = whole_job_in_one_process(dataclasses.replace(job, out=f"{tmp}/alone"), threads)
        import ray

        ray.init(num_cpus=os.cpu_count() or 1, log_to_driver=False)
        start = time.perf_counter()
        result = run_sampling(job, log=lambda *_: None)
        wall = time.perf_counter() - start
        ray.shutdown()
        guided_after = steady_rate(job, threads)
        alone_after = whole_job_in_one_process(dataclasses.replace(job, out=f"{tmp}/alone2"), threads)
    report(args, size, images, threads, unguided, (guided, guided_after), (alone, alone_after), wall, result)


def report(args, size, images, threads, unguided, guided_runs, alone_runs, wall, result):
    guided, alone = sum(guided_runs) / 2, sum(alone_runs) / 2
    print(f"preset={args.preset} scales={','.join(f'{s:g}' for s in size['guidance_scales'])} samples/scale="
          f"{size['num_samples']} ({images} images) batch={size['batch_size']} samplers={','.join(size['samplers'])} "
          f"actors={args.actors} actor_cpus={args.actor_cpus} threads={threads} compile={args.compile} "
          f"device={'cuda' if torch.cuda.is_available() else 'cpu'}")
    print("steady state (first shard of each side left out):")
    print(f"  unguided, one process   {unguided:9.2f} images/s")
    print(f"  guided, one process     {guided:9.2f} images/s (before Ray {guided_runs[0]:.2f}, after "
          f"{guided_runs[1]:.2f}; guidance costs x{unguided / guided:.2f} time per step)")
    if result.warm_images:
        inside = result.warm_images / result.warm_seconds * args.actors
        print(f"  guided, in {args.actors} actor(s)    {inside:9.2f} images/s  x{inside / guided:.2f} of one "
              f"process (per-actor rate x actors; {result.warm_seconds:.1f} s of warm shard work)")
    print("whole job (start-up, sampling and writes on both sides):")
    print(f"  one fresh process       {images / alone:9.2f} images/s ({alone_runs[0]:.1f} s before Ray, "
          f"{alone_runs[1]:.1f} s after)")
    print(f"  Ray Data                {images / wall:9.2f} images/s  x{alone / wall:.2f} of one process "
          f"(wall {wall:.1f} s; shard work {result.busy_seconds:.1f} s over all actors)")


if __name__ == "__main__":
    main()
