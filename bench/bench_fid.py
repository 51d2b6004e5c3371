"""FID over a grid of guidance scales: the reference covariance's root once per evaluation, then one N x N
eigenproblem per scale (what the evaluation stage does with --fid-method eigh), vs a full eigh FID per scale and the
released evaluator's general matrix square root (sqrtm) per scale. Random 2048-d features; prints seconds and ratios.

    python bench/bench_fid.py [--scales 8] [--samples 100] [--reference 400] [--dim 2048] [--no-sqrtm]
"""

import argparse
import time

import numpy as np

from components.metrics import covariance_root, feature_statistics, frechet_distance, frechet_distance_to_reference


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", type=int, default=8)
    parser.add_argument("--samples", type=int, default=100, help="samples per scale")
    parser.add_argument("--reference", type=int, default=400, help="reference images")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--no-sqrtm", action="store_true", help="skip the (slow) released sqrtm baseline")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    ref_mu, ref_sigma = feature_statistics(rng.standard_normal((args.reference, args.dim)))
    grid = [rng.standard_normal((args.samples, args.dim)) * (1 + 0.1 * s) for s in range(args.scales)]
    timings, values = {}, {}
    methods = ["eigh per scale", "root once + N x N per scale"] + ([] if args.no_sqrtm else ["sqrtm per scale"])
    for name in methods:
        start = time.perf_counter()
        if name.startswith("root"):
            root = covariance_root(ref_sigma)
            values[name] = [frechet_distance_to_reference(f, ref_mu, ref_sigma, root) for f in grid]
        else:
            method = name.split()[0]
            values[name] = [frechet_distance(*feature_statistics(f), ref_mu, ref_sigma, method=method) for f in grid]
        timings[name] = time.perf_counter() - start
    base = timings["eigh per scale"]
    print(f"{args.scales} scales x {args.samples} samples, reference {args.reference}, {args.dim}-d features")
    for name in methods:
        gap = max(abs(a - b) / abs(b) for a, b in zip(values[name], values["eigh per scale"]))
        print(f"{name:30s} {timings[name]:8.2f} s  x{base / timings[name]:6.1f} vs eigh   max rel. diff {gap:.1e}")


if __name__ == "__main__":
    main()
