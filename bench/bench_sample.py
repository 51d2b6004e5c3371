"""Guided sampling throughput: through Ray Data (GuidedSampler actors) vs the same sampler in one process, and the
cost of guidance (guided vs unguided step time).

Networks: the preset's diffusion model and noisy classifier with random weights (throughput does not depend on the
weights). The Ray number is the wall time of run_sampling after ray.init, actor start-up and model loading included.

    python bench/bench_sample.py [--preset fashion-mnist] [--num-samples 64] [--batch-size 32] [--sampler ddim10]
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
    args = parser.parse_args()
    preset = get_preset(args.preset)
    threads = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        job = SampleJob(diffusion=save_random("diffusion", preset, f"{tmp}/d"),
                        classifier=save_random("classifier", preset, f"{tmp}/c"), out=f"{tmp}/out",
                        scales=(2.0,), num_samples=args.num_samples, sampler=args.sampler,
                        batch_size=args.batch_size)
        guided = in_process(job, threads)
        unguided = in_process(dataclasses.replace(job, scales=(0.0,)), threads)
        import ray

        ray.init(num_cpus=threads, log_to_driver=False)
        start = time.perf_counter()
        run_sampling(job, log=lambda *_: None)
        through_ray = args.num_samples / (time.perf_counter() - start)
        ray.shutdown()
    print(f"preset={args.preset} sampler={args.sampler} samples={args.num_samples} batch={args.batch_size} "
          f"threads={threads}")
    print(f"unguided, one process   {unguided:8.2f} images/s")
    print(f"guided, one process     {guided:8.2f} images/s  (guidance costs x{unguided / guided:.2f} time per step)")
    print(f"guided, Ray Data        {through_ray:8.2f} images/s  x{through_ray / guided:.2f} of one process")


if __name__ == "__main__":
    main()
