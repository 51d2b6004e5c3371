"""Training throughput: the diffusion trainer through Ray Train vs the same loop in plain PyTorch, one process.

Both run the default preset's diffusion model on the same ingested data for the same number of steps; the plain loop
reads the decoded images from memory, the Ray trainer gets them through Ray Data. images/s is measured over the second
half of the steps on both sides (warm-up and start-up excluded): the plain loop times it, the Ray worker logs it as its
images_per_s metric (the rate since its previous log line, logged at half-way and at the end).

    python bench/bench_train.py --data adm-data/fashion-mnist [--steps 40] [--preset fashion-mnist] [--threads 2]
"""

import argparse
import os
import tempfile
import time

import torch

from components.config import apply_overrides
from components.config.presets import get_preset
from components.images import to_model_input
from components.training import Learner
from pipelines.infra.dataset import read_split
from pipelines.stages.train import TrainOptions, train


def plain(preset, data: str, steps: int) -> float:
    images, labels = read_split(data, "train", limit=steps * preset.train_diffusion.batch_size)
    learner = Learner("diffusion", preset, torch.device("cpu"))
    batch = preset.train_diffusion.batch_size
    half = steps // 2
    for i in range(steps):
        if i == half:
            start = time.perf_counter()
        sl = slice(i * batch, (i + 1) * batch)
        learner.train_step(to_model_input(images[sl]), torch.from_numpy(labels[sl]))
    return (steps - half) * batch / (time.perf_counter() - start)


def through_ray(preset, data: str, steps: int) -> float:
    import ray
    from mlflow import MlflowClient

    ray.init(num_cpus=os.cpu_count() or 1, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        outcome = train(preset, data, TrainOptions(storage=f"{tmp}/storage", tracking_uri=uri),
                        kinds=("diffusion",), log=lambda *_: None)["diffusion"]
        history = MlflowClient(uri).get_metric_history(outcome.run_id, "images_per_s")
    ray.shutdown()
    return max(history, key=lambda m: m.step).value


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--preset", default="fashion-mnist")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads of the plain loop; below the core count the Ray worker asks for exactly "
                             "this many CPUs (train_diffusion.cpus_per_worker) and runs as many threads")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    preset = apply_overrides(get_preset(args.preset), [
        f"train_diffusion.steps={args.steps}", f"train_diffusion.log_interval={args.steps // 2}",
        f"train_diffusion.save_interval={args.steps}", "train_diffusion.sample_interval=0",
        *([f"train_diffusion.cpus_per_worker={args.threads}"] if args.threads < cores else [])])
    torch.set_num_threads(args.threads)
    print(f"preset={args.preset} steps={args.steps} batch={preset.train_diffusion.batch_size} "
          f"threads={args.threads}", flush=True)
    base = plain(preset, args.data, args.steps)
    print(f"plain PyTorch loop   {base:8.1f} images/s  x1.00", flush=True)
    ray_rate = through_ray(preset, args.data, args.steps)
    print(f"Ray Train (1 worker) {ray_rate:8.1f} images/s  x{ray_rate / base:.2f}", flush=True)


if __name__ == "__main__":
    main()
