"""Feature extraction throughput of the evaluation stage's extractors (images/s on this machine).

Inception: the baseline is the wheel's TorchScript forward as shipped (NCHW input at 299x299, pool3 only); ours is
`InceptionFeatures` (the network rebuilt with batch norm folded into its convolutions, channels_last, pool3 and the
sFID spatial features from one pass) in fp32 and in bf16, all on the same 28x28 grey images upsampled to 299, in
interleaved rounds (the best round of each is reported). Evaluator: the preset's evaluator network (random weights),
t = 0. Last, the fp32 ceiling: the network's FLOPs per image (torch's FLOP counter) against the best fp32 throughput
of a plain 3x3 convolution of Inception's own shape on this machine, i.e. the most images/s any fp32 arrangement of
the same arithmetic can reach here.

    python bench/bench_features.py [--images 64] [--batch-size 32] [--rounds 3] [--preset fashion-mnist]
"""

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from components.config.kinds import EVALUATOR
from components.config.presets import get_preset
from components.features import EvaluatorFeatures, InceptionFeatures, default_inception_path
from components.networks import build_network


def rate(fn, batches) -> float:
    fn(batches[0])  # warm-up (TorchScript profiling runs, allocator)
    start = time.perf_counter()
    for batch in batches:
        fn(batch)
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


def conv_gflops(rounds: int = 10) -> float:
    """fp32 GFLOP/s of a 192 -> 192 3x3 convolution at 35x35, batch 32 (a mixed-block convolution of Inception)."""
    x = torch.randn(32, 192, 35, 35).contiguous(memory_format=torch.channels_last)
    w = torch.randn(192, 192, 3, 3).contiguous(memory_format=torch.channels_last)
    flops = 2 * 32 * 192 * 192 * 9 * 35 * 35
    with torch.inference_mode():
        F.conv2d(x, w, padding=1)
        start = time.perf_counter()
        for _ in range(rounds):
            F.conv2d(x, w, padding=1)
    return flops * rounds / (time.perf_counter() - start) / 1e9


def inception_gflop(extractor: InceptionFeatures) -> float:
    x = torch.zeros(1, 3, 299, 299).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        extractor.net(x)
    return counter.get_total_flops() / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--preset", default="fashion-mnist")
    args = parser.parse_args()
    preset = get_preset(args.preset)
    cfg = preset.evaluator
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, size=(args.images, 28, 28, 1), dtype=np.uint8)
    batches = [grey[i:i + args.batch_size] for i in range(0, args.images, args.batch_size)]
    archive = torch.jit.load(str(default_inception_path())).eval()
    fp32, bf16 = InceptionFeatures(), InceptionFeatures(precision="bf16")
    candidates = {"TorchScript archive as shipped (NCHW, fp32, pool3 only)":
                  lambda b: archive(fp32.preprocess(b).contiguous()),
                  "InceptionFeatures fp32 (folded batch norm, channels_last, pool3 + spatial)": fp32,
                  "InceptionFeatures bf16": bf16}
    best = dict.fromkeys(candidates, 0.0)
    with torch.inference_mode():
        for _ in range(args.rounds):
            for name, fn in candidates.items():
                best[name] = max(best[name], rate(fn, batches))
    baseline = next(iter(best.values()))
    for name, value in best.items():
        print(f"inception  {name}: {value:.2f} images/s  x{value / baseline:.2f}")
    gflop, peak = inception_gflop(fp32), max(conv_gflops() for _ in range(3))
    print(f"fp32 ceiling: {gflop:.2f} GFLOP per image, 3x3 convolution at {peak:.0f} GFLOP/s -> at most "
          f"{peak / gflop:.1f} images/s in fp32 (x{peak / gflop / baseline:.2f})")
    images = rng.integers(0, 256, size=(args.images * 8, cfg.image_size, cfg.image_size, cfg.in_channels),
                          dtype=np.uint8)
    evaluator = EvaluatorFeatures(build_network(EVALUATOR, preset), cfg.image_size, cfg.in_channels)
    ebatches = [images[i:i + args.batch_size] for i in range(0, len(images), args.batch_size)]
    print(f"evaluator  ({args.preset}, {cfg.image_size}px): {rate(evaluator, ebatches):.1f} images/s")
    print(f"threads: {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
