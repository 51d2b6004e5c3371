"""Where a training step's time goes, and the four eager settings side by side: issue 36's convolution-bound limit.

The network and batch of bench_vs_released.py (32x32 RGB, 64 channels, the released flags). For fp32 and bf16
autocast (NCHW) one step runs under torch.profiler, and its self CPU time is split into convolution (forward and
backward, any kernel), matmul / attention, normalisation, elementwise and the optimizer; the convolution share bounds
what any change outside the convolutions can give (a step whose convolutions take 85% cannot run more than 1/0.85 =
x1.18 faster without faster convolutions). Then fp32 / bf16 x NCHW / channels_last are timed interleaved, `--rounds`
rounds of `--steps` steps, reported as the fastest round and the median (load only adds time).

    python bench/bench_step_profile.py [--batch 32] [--rounds 5] [--steps 3]
"""

import argparse
import platform
import statistics
import time

import torch
from bench_vs_released import our_preset  # bench/ is on sys.path when this script runs

from components.precision import SpeedSettings, bf16_supported
from components.training import Learner

GROUPS = {  # op-name fragments -> group; the first match wins
    "convolution": ("conv", "mkldnn_convolution"),
    "matmul / attention": ("mm", "matmul", "linear", "attention", "bmm", "addmm", "softmax", "baddbmm"),
    "normalisation": ("group_norm", "native_group_norm", "layer_norm", "batch_norm"),
    "optimizer": ("adam", "_foreach", "lerp"),
}


def group_of(name: str) -> str:
    low = name.lower()
    for group, parts in GROUPS.items():
        if any(p in low for p in parts):
            return group
    return "elementwise / other"


def profile_step(learner: Learner, x0, y) -> dict:
    learner.train_step(x0, y)  # warm
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        learner.train_step(x0, y)
    shares: dict[str, float] = {}
    for event in prof.key_averages():
        shares[group_of(event.key)] = shares.get(group_of(event.key), 0.0) + event.self_cpu_time_total
    total = sum(shares.values())
    return {g: v / total for g, v in sorted(shares.items(), key=lambda kv: -kv[1])}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    device = torch.device("cpu")
    preset = our_preset(args.batch, 1000)
    torch.manual_seed(0)
    x0 = torch.rand(args.batch, 3, 32, 32) * 2 - 1
    y = torch.randint(0, 10, (args.batch,))
    precisions = ("fp32", "bf16") if bf16_supported(device) else ("fp32",)
    settings = [SpeedSettings(p, cl) for p in precisions for cl in (False, True)]
    learners = {s.name: Learner("diffusion", preset, device, seed=0, settings=s) for s in settings}
    for p in precisions:
        shares = profile_step(learners[SpeedSettings(p).name], x0, y)
        print(f"{p} nchw, self CPU time of one step: " + ", ".join(f"{g} {v:.0%}" for g, v in shares.items()),
              flush=True)
    times = {name: [] for name in learners}
    for learner in learners.values():
        learner.train_step(x0, y)
    for r in range(args.rounds):
        for name, learner in learners.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                learner.train_step(x0, y)
            times[name].append((time.perf_counter() - start) / args.steps)
        print(f"round {r + 1}: " + ", ".join(f"{n} {v[-1] * 1000:.0f} ms" for n, v in times.items()), flush=True)
    plain = min(times[SpeedSettings("fp32").name])
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, batch {args.batch}")
    for name, v in sorted(times.items(), key=lambda kv: min(kv[1])):
        print(f"{name:22s} fastest {min(v) * 1000:6.0f} ms  median {statistics.median(v) * 1000:6.0f} ms  "
              f"x{plain / min(v):.2f} of fp32 nchw")


if __name__ == "__main__":
    main()
