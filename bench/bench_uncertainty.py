"""The cost of the intervals of components/uncertainty.py for a default pipeline run's grid: every metric of every
cell (FID, sFID, precision, recall and KID on Inception-sized features; FID, precision, recall, score and accuracy
on the evaluator's), then the paired differences of neighbouring cells. Random features; prints seconds.

    python bench/bench_uncertainty.py [--cells 20] [--samples 100] [--reference 400] [--replicates 200]
                                      [--dims 2048 2023 128] [--classes 10]

What is timed apart: the once-per-reference work (covariance roots, k-NN radii, KID's reference kernel), which the
evaluation stage already does in part for its point estimates (the roots), and the point estimates themselves are
not timed: only what the intervals add.
"""

import argparse
import time

import numpy as np

from components.uncertainty import (
    FrechetStatistic,
    KIDStatistic,
    RecallStatistic,
    Reference,
    ResampledCell,
    ScoreStatistic,
    accuracy_statistic,
    precision_statistic,
    subsample,
)


def features(rng, n: int, d: int, shift: float = 0.0) -> np.ndarray:
    return rng.standard_normal((n, d)) * (1 + 0.1 * rng.standard_normal(d)) + shift


def cell_statistics(cell: dict, refs: dict, labels: np.ndarray) -> dict:
    pool, spatial, evaluator, probs = cell["pool"], cell["spatial"], cell["evaluator"], cell["probs"]
    return {"fid": FrechetStatistic(pool, refs["pool"]), "sfid": FrechetStatistic(spatial, refs["spatial"]),
            "precision": precision_statistic(pool, refs["pool"]), "recall": RecallStatistic(pool, refs["pool"]),
            "kid": KIDStatistic(pool, refs["pool"]),
            "evaluator_fid": FrechetStatistic(evaluator, refs["evaluator"]),
            "evaluator_precision": precision_statistic(evaluator, refs["evaluator"]),
            "evaluator_recall": RecallStatistic(evaluator, refs["evaluator"]),
            "score": ScoreStatistic(probs), "accuracy": accuracy_statistic(probs, labels)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=20)
    parser.add_argument("--samples", type=int, default=100, help="samples per cell")
    parser.add_argument("--reference", type=int, default=400, help="reference samples")
    parser.add_argument("--replicates", type=int, default=200)
    parser.add_argument("--dims", type=int, nargs=3, default=[2048, 2023, 128],
                        help="Inception pool, sFID spatial and evaluator feature dimensions")
    parser.add_argument("--classes", type=int, default=10)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    parts = ("pool", "spatial", "evaluator")
    start = time.perf_counter()
    refs = {part: Reference.of(features(rng, args.reference, d)) for part, d in zip(parts, args.dims)}
    for ref in refs.values():
        ref.covariance_root()
    for part in ("pool", "evaluator"):
        refs[part].radii, refs[part].kid_within  # noqa: B018 (computed on first use: here, to time them apart)
    reference_seconds = time.perf_counter() - start
    labels = np.arange(args.samples) % args.classes
    cells = []
    for c in range(args.cells):
        cell = {part: features(rng, args.samples, d, shift=0.02 * c) for part, d in zip(parts, args.dims)}
        logits = cell["evaluator"][:, :args.classes] * (1 + 0.1 * c)
        cell["probs"] = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        cells.append(cell)

    start, cpu_start = time.perf_counter(), time.process_time()
    statistics = [cell_statistics(cell, refs, labels) for cell in cells]
    prepare_seconds = time.perf_counter() - start
    start = time.perf_counter()
    sub = subsample(args.samples, args.replicates, seed=0)  # one per grid: every cell, every pair
    resampled = [ResampledCell(stats, sub) for stats in statistics]
    intervals = [cell.intervals(level=0.9) for cell in resampled]
    interval_seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    start = time.perf_counter()
    for a, b in zip(resampled, resampled[1:]):
        a.differences(b, level=0.9)
    paired_seconds = time.perf_counter() - start

    print(f"{args.cells} cells x {args.samples} samples, reference {args.reference}, features {args.dims}, "
          f"{args.replicates} replicates, {len(intervals[0])} metrics per cell")
    print(f"once per reference (roots, radii, KID kernel): {reference_seconds:7.2f} s")
    print(f"per-cell statistics prepared:                  {prepare_seconds:7.2f} s")
    print(f"intervals of every metric of every cell:       {interval_seconds:7.2f} s")
    print(f"  = all intervals together:                    {prepare_seconds + interval_seconds:7.2f} s "
          f"(CPU time of this process: {cpu_seconds:.2f} s)")
    print(f"paired differences of {args.cells - 1} neighbouring pairs:     {paired_seconds:7.2f} s")
    print("cell 0:", {name: f"{iv.estimate:.4g} [{iv.lo:.4g}, {iv.hi:.4g}]" for name, iv in intervals[0].items()})


if __name__ == "__main__":
    main()
