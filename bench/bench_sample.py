"""Guided sampling throughput: through Ray Data (GuidedSampler actors) vs the same sampler in one process, and the
cost of guidance (guided vs unguided step time).

Networks: the preset's diffusion model and noisy classifier with random weights (throughput does not depend on the
weights). The Ray number is the wall time of run_sampling after ray.init, actor start-up and model loading included; the
"inside the actors" number divides the images by the time the actors spent in their shards (sampling + NPZ write),
which separates Ray's fixed cost from a slowdown of the sampling itself. The one-process guided rate is measured before
and after the Ray run and the ratios use their mean, so drift of a shared machine does not land on one side.

    python bench/bench_sample.py [--preset fashion-mnist] [--num-samples 64] [--batch-size 32] [--sampler ddim10]
                                 [--threads N]

With --threads below the machine's core count the actor asks for exactly that many CPUs (--actor-cpus), so both
sides run the same number of torch threads and the rest of the machine is left to Ray's own processes.
"""

import argparse
import dataclasses
import os
import tempfile
import time

import torch

from components.presets import get_preset
from components.training import Learner
from pipelines.sample import GuidedSampler, SampleJob, plan_shards, run_sampling


def save_random(kind: str, preset, folder: str) -> str:
    learner = Learner(kind, preset, torch.device("cpu"))
    for p in learner.net.parameters():
        p.data.normal_(0, 0.02)
    learner.ema = {}
    learner.save(folder, config={"kind": kind, "preset": dataclasses.asdict(preset)})
    return folder


def in_process(job: SampleJob, threads: int) -> float:
    sampler = GuidedSampler(job, threads)
    sampler.sample_shard(0)  # warm-up (CUDA context, cuDNN plans, compile) out of the timed loop
    start = time.perf_counter()
    n = 0
    for k in range(len(plan_shards(job.scales, job.num_samples, job.batch_size))):
        n += len(sampler.sample_shard(k)["labels"])
    return n / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="fashion-mnist")
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sampler", default="ddim10")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads of the one-process sampler and of the (single) Ray Data actor")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                        help="torch.compile in both samplers (auto: on CUDA only)")
    args = parser.parse_args()
    preset = get_preset(args.preset)
    threads = args.threads
    with tempfile.TemporaryDirectory() as tmp:
        job = SampleJob(diffusion=save_random("diffusion", preset, f"{tmp}/d"),
                        classifier=save_random("classifier", preset, f"{tmp}/c"), out=f"{tmp}/out",
                        scales=(2.0,), num_samples=args.num_samples, sampler=args.sampler,
                        batch_size=args.batch_size, actors=1, compile=args.compile,
                        actor_cpus=threads if threads < (os.cpu_count() or 1) else None)
        guided = in_process(job, threads)
        unguided = in_process(dataclasses.replace(job, scales=(0.0,)), threads)
        import ray

        ray.init(num_cpus=os.cpu_count() or 1, log_to_driver=False)
        start = time.perf_counter()
        result = run_sampling(job, log=lambda *_: None)
        wall = time.perf_counter() - start
        through_ray = args.num_samples / wall
        in_actors = args.num_samples / result.busy_seconds
        ray.shutdown()
        guided_after = in_process(job, threads)  # again after Ray: the baseline is the mean of before and after
    print(f"preset={args.preset} sampler={args.sampler} samples={args.num_samples} batch={args.batch_size} "
          f"threads={threads} compile={args.compile} device={'cuda' if torch.cuda.is_available() else 'cpu'}")
    print(f"unguided, one process   {unguided:8.2f} images/s")
    print(f"guided, one process     {guided:8.2f} images/s before Ray, {guided_after:.2f} after "
          f"(guidance costs x{unguided / guided:.2f} time per step)")
    guided = (guided + guided_after) / 2
    print(f"guided, Ray Data        {through_ray:8.2f} images/s  x{through_ray / guided:.2f} of one process "
          f"(wall {wall:.1f} s)")
    print(f"  inside the actors     {in_actors:8.2f} images/s  x{in_actors / guided:.2f} of one process "
          f"(shard sampling + write time {result.busy_seconds:.1f} s; the rest of the wall time is start-up and "
          "scheduling)")


if __name__ == "__main__":
    main()
