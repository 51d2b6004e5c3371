"""What bf16 Inception does to the metrics: one run's samples evaluated twice through the evaluation stage's own code
(`run_evaluation`, Ray Data feature actors), with evaluate.inception_precision fp32 and bf16, reference features
computed afresh for each. Prints FID, sFID, precision and recall per guidance scale and the relative differences.

    python bench/bench_inception_precision.py --samples adm-work/runs/RUN/samples --reference adm-work/data/DATASET \
        [--preset fashion-mnist]
"""

import argparse
import dataclasses
import tempfile
import time

from components.config.presets import get_preset
from pipelines.stages.evaluate import EvaluateJob, run_evaluation

METRICS = ("fid", "sfid", "precision", "recall")


def evaluate(args, precision: str) -> tuple[list, float]:
    config = dataclasses.replace(get_preset(args.preset).evaluate, features="inception", inception_precision=precision)
    with tempfile.TemporaryDirectory() as cache:
        job = EvaluateJob(samples=args.samples, reference=args.reference, config=config, cache_dir=cache)
        start = time.perf_counter()
        rows = run_evaluation(job, log=lambda *_: None).rows
        return rows, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", required=True, help="the sampling stage's output folder")
    parser.add_argument("--reference", required=True, help="the ingested dataset")
    parser.add_argument("--preset", default="fashion-mnist", help="whose evaluate section (num_reference, ...)")
    args = parser.parse_args()
    (fp32, t32), (bf16, t16) = evaluate(args, "fp32"), evaluate(args, "bf16")
    print(f"evaluation wall time: fp32 {t32:.1f} s, bf16 {t16:.1f} s")
    print("| scale | " + " | ".join(f"{m} fp32 | {m} bf16 | diff." for m in METRICS) + " |")
    worst = worst_points = 0.0
    for a, b in zip(fp32, bf16):
        cells = []
        for m in METRICS:
            if m in ("fid", "sfid"):
                rel = abs(b[m] - a[m]) / max(abs(a[m]), 1e-12)
                worst = max(worst, rel)
                cells.append(f"{a[m]:.4f} | {b[m]:.4f} | {100 * rel:.2f}%")
            else:  # fractions of 100 samples (precision) or of the reference (recall): the change in points
                worst_points = max(worst_points, abs(b[m] - a[m]))
                cells.append(f"{a[m]:.4f} | {b[m]:.4f} | {100 * (b[m] - a[m]):+.2f} pt")
        print(f"| {a['guidance_scale']:g} | " + " | ".join(cells) + " |")
    print(f"largest relative difference of FID/sFID: {100 * worst:.2f}%; largest change of precision/recall: "
          f"{100 * worst_points:.2f} points")


if __name__ == "__main__":
    main()
