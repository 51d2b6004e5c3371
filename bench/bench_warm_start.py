"""Retraining on grown data: steps to the champion's FID from a warm start against from scratch (issue 24).

Three trainings of the preset's diffusion model through the product path (pipelines.stages.train.train, the code
behind `adm train` and `adm run`'s train stage: Ray Train, MLflow), each with evaluation while training
(train_diffusion.eval_interval): eval_fid of the fixed 64-sample set (DPM-Solver++(2M)-10 from the EMA weights),
Inception pool features against the first 1000 images of the dataset's validation split. No classifier trains beside
them, so the samples are unguided (eval_guided_by_step 0) and the FID measures the diffusion model alone.

1. champion: random init on the first --subset images of Fashion-MNIST's train split (data.limit), the preset's
   train_diffusion.steps;
2. from scratch on the whole train split (the grown data), --max-steps;
3. warm start (train_diffusion.init_from = the champion's final checkpoint, as `adm retrain` does with `champion`) on
   the whole train split, --max-steps.

The grown dataset's validation split starts with the subset's held-out images in the same order (the split is carved
by content after the limit: tests/pipelines/test_ingest.py), so all three FIDs use the same 1000 reference images.
Target: the champion's eval_fid at its last step. Prints each curve, the first evaluated step at which each retraining
run reaches the target, and warm/scratch (the issue's goal: at most 0.5).

    python bench/bench_warm_start.py [--work DIR] [--subset 30000] [--max-steps 900] [--eval-interval 50]
"""

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from components.config import apply_overrides
from components.config.presets import get_preset
from pipelines.stages.ingest import ingest, ingest_options
from pipelines.stages.sources import FASHION_MNIST_DIR
from pipelines.stages.train import TrainOptions, train


def fid_curve(tracking_uri: str, run_id: str) -> list[tuple[int, float]]:
    history = MlflowClient(tracking_uri).get_metric_history(run_id, "eval_fid")
    return sorted((m.step, m.value) for m in history)


def first_reaching(curve, target: float) -> int | None:
    return next((step for step, fid in curve if fid <= target), None)


def trained(name: str, preset, data_url: str, work: Path, tracking_uri: str) -> tuple[str, list]:
    started = time.perf_counter()
    opts = TrainOptions(storage=str(work / "storage"), tracking_uri=tracking_uri, experiment=f"warm-start-{name}")
    outcome = train(preset, data_url, opts, ("diffusion",), log=lambda *_: None)["diffusion"]
    curve = fid_curve(tracking_uri, outcome.run_id)
    print(f"{name:9s} {outcome.steps} steps in {time.perf_counter() - started:.0f}s, run {outcome.run_id}, eval_fid "
          + " ".join(f"{step}:{fid:.1f}" for step, fid in curve), flush=True)
    return outcome.checkpoint, curve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="fashion-mnist")
    ap.add_argument("--fashion-mnist", default=FASHION_MNIST_DIR, help="folder of the four IDX .gz files")
    ap.add_argument("--subset", type=int, default=30000, help="the champion's data: the first N train images")
    ap.add_argument("--max-steps", type=int, default=0, help="steps of the two retraining runs (0: 2x the preset's)")
    ap.add_argument("--eval-interval", type=int, default=50)
    ap.add_argument("--work", default=None, help="folder for datasets, checkpoints and the MLflow store (default: a "
                    "temporary folder)")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-warm-start-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    tracking_uri = f"sqlite:///{work / 'mlflow.db'}"
    base = apply_overrides(get_preset(args.preset), [f"train_diffusion.eval_interval={args.eval_interval}"])
    max_steps = args.max_steps or 2 * base.train_diffusion.steps
    source = f"fashion-mnist:{args.fashion_mnist}"
    small, grown = str(work / "data-small"), str(work / "data-grown")
    ingest(source, small, dataclasses.replace(ingest_options(base), limit=args.subset), log=lambda *_: None)
    ingest(source, grown, ingest_options(base), log=lambda *_: None)
    print(f"preset {base.name}: champion on the first {args.subset} train images, {base.train_diffusion.steps} steps; "
          f"retraining on all of them, {max_steps} steps; eval every {args.eval_interval}; work folder {work}")

    champion_ckpt, champion = trained("champion", base, small, work, tracking_uri)
    longer = apply_overrides(base, [f"train_diffusion.steps={max_steps}"])
    _, scratch = trained("scratch", longer, grown, work, tracking_uri)
    warm_preset = apply_overrides(longer, [f"train_diffusion.init_from={champion_ckpt}"])
    _, warm = trained("warm", warm_preset, grown, work, tracking_uri)

    target = champion[-1][1]
    reached = {name: first_reaching(curve, target) for name, curve in (("scratch", scratch), ("warm", warm))}
    print(f"target: the champion's eval_fid {target:.2f} at step {champion[-1][0]}")
    for name, step in reached.items():
        print(f"{name:9s} reaches it at step {step if step is not None else f'> {max_steps} (never)'}")
    if reached["warm"] is not None and reached["scratch"] is not None:
        print(f"warm/scratch steps: {reached['warm'] / reached['scratch']:.2f} (goal <= 0.5)")
    elif reached["warm"] is not None:
        print(f"warm/scratch steps: < {reached['warm'] / max_steps:.2f} (scratch never reached it; goal <= 0.5)")
    print(f"best eval_fid within {max_steps} steps: scratch {min(f for _, f in scratch):.2f}, warm "
          f"{min(f for _, f in warm):.2f}")


if __name__ == "__main__":
    main()
