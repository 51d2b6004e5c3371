"""Coverage of the intervals of components/uncertainty.py by simulation, for several subsample fractions r / N: how
often the interval of each metric covers E[metric_N] over redraws of a cell's N samples (the reference fixed), and
the ratio of the mean interval half-width to 1.645 standard deviations of the estimator (1 is exact, at level 0.9).
Gaussian features: references ~ N(0, I), samples ~ N(shift, scale^2 I). This is how SUBSAMPLE_FRACTION was chosen.

    python bench/bench_uncertainty_coverage.py [--samples 100] [--dim 256] [--reference 400] [--redraws 200]
                                               [--fractions 0.5 0.7 0.85] [--shift 0.3] [--scale 1.1]
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
    precision_statistic,
    subsample,
)

LEVEL = 0.9


def statistics(x: np.ndarray, reference: Reference) -> dict:
    return {"fid": FrechetStatistic(x, reference), "precision": precision_statistic(x, reference),
            "recall": RecallStatistic(x, reference), "kid": KIDStatistic(x, reference)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--reference", type=int, default=400)
    parser.add_argument("--redraws", type=int, default=200, help="intervals per fraction")
    parser.add_argument("--target-redraws", type=int, default=2000, help="redraws that estimate E[metric_N]")
    parser.add_argument("--replicates", type=int, default=200)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.7, 0.85])
    parser.add_argument("--shift", type=float, default=0.3)
    parser.add_argument("--scale", type=float, default=1.1)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    reference = Reference.of(rng.standard_normal((args.reference, args.dim)))

    def draw():
        return rng.standard_normal((args.samples, args.dim)) * args.scale + args.shift

    start = time.perf_counter()
    estimates = [{k: s.estimate for k, s in statistics(draw(), reference).items()} for _ in range(args.target_redraws)]
    target = {k: np.mean([e[k] for e in estimates]) for k in estimates[0]}
    sd = {k: np.std([e[k] for e in estimates]) for k in estimates[0]}
    covered = {(k, f): [] for k in target for f in args.fractions}
    half = {(k, f): [] for k in target for f in args.fractions}
    for r in range(args.redraws):
        stats = statistics(draw(), reference)
        for f in args.fractions:
            for k, iv in ResampledCell(stats, subsample(args.samples, args.replicates, r, f)).intervals(LEVEL).items():
                covered[k, f].append(not iv.excludes(target[k]))
                half[k, f].append(iv.width / 2)
    print(f"N={args.samples} D={args.dim} M={args.reference}, samples ~ N({args.shift}, {args.scale}^2 I), "
          f"{args.redraws} intervals per fraction at level {LEVEL}, {time.perf_counter() - start:.0f} s")
    print("metric     E[metric_N]  sd     " + "  ".join(f"r/N={f}: coverage width-ratio" for f in args.fractions))
    for k in target:
        cells = "  ".join(f"{np.mean(covered[k, f]):>17.3f} {np.mean(half[k, f]) / (1.645 * sd[k]):>11.2f}"
                          for f in args.fractions)
        print(f"{k:10s} {target[k]:11.4g}  {sd[k]:.3g}  {cells}")


if __name__ == "__main__":
    main()
