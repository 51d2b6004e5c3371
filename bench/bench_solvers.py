"""FID against network evaluations: DDIM vs DPM-Solver++(2M) vs EDM's Heun sampler on trained networks (issue 22).

Each sampler string of --samplers draws the same samples (per-sample seeds and labels as the sample stage draws them)
at one guidance scale; the evaluator network's features give an FID against the dataset's reference split. Prints,
per sampler, the network evaluations and classifier passes per sample (counted by SampleCost), seconds, and FID, then
for each family the fewest evaluations on the grid that reach the FID of --target (DDIM-50 by default) and the ratio
to DDIM's. Issue 22's goal: DPM-Solver++ needs at most a third of DDIM's evaluations.

    python bench/bench_solvers.py --diffusion DIR --classifier DIR --evaluator DIR [--scale 4] [--num-samples 500]
        [--reference 2000] [--samplers ddim10,ddim25,ddim50,dpm++2m-5,...] [--threads 1]
    python bench/bench_solvers.py --random                     # random networks: checks the script, not the solvers

DIR: checkpoint folders written by `adm train` (model.json beside the weights), runs:/ or models:/ URIs.
"""

import argparse
import dataclasses
import time

import numpy as np
import torch

from components.compute import SampleCost
from components.config.grid import Cell, parse_sampler
from components.config.presets import get_preset
from components.features import EvaluatorFeatures
from components.guided import GuidedNetworks, sample_batch
from components.images import decode_fashion_mnist, fit_to
from components.metrics import feature_statistics, frechet_distance
from components.networks import build_network
from components.sampling import sample_label, sample_seed
from pipelines.infra.model_refs import resolve

GRID = ("ddim10,ddim25,ddim50,ddim100,dpm++2m-5,dpm++2m-8,dpm++2m-10,dpm++2m-15,dpm++2m-20,heun-4,heun-6,heun-8,"
        "heun-13")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


@dataclasses.dataclass
class Networks:
    preset: object
    unet: torch.nn.Module
    classifier: torch.nn.Module
    evaluator: torch.nn.Module


def load_networks(args) -> Networks:
    if args.random:
        preset = get_preset(args.preset)
        nets = []
        for kind in ("diffusion", "classifier", "evaluator"):
            torch.manual_seed(len(nets))
            net = build_network(kind, preset)
            for p in net.parameters():
                p.data.normal_(0, 0.02)
            nets.append(net.eval())
        return Networks(preset, *nets)
    refs = [resolve(uri, kind) for uri, kind in ((args.diffusion, "diffusion"), (args.classifier, "classifier"),
                                                 (args.evaluator, "evaluator"))]
    return Networks(refs[0].preset, *(ref.build() for ref in refs))


def reference_images(preset, count: int) -> np.ndarray:
    """Fashion-MNIST (the default preset's data) at the preset's resolution, as ingest prepares it."""
    if preset.data.source != "fashion-mnist":
        raise SystemExit(f"preset {preset.name} is trained on {preset.data.source}; this bench reads Fashion-MNIST")
    def read(name):
        with open(f"{FASHION_MNIST_DIR}/{name}", "rb") as f:
            return f.read()

    images, _ = decode_fashion_mnist(read)[preset.evaluate.reference_split]
    return fit_to(images[:count], preset.unet.image_size, preset.data.resize)


def sample(nets: Networks, name: str, scale: float, num: int, batch: int):
    """uint8 samples, SampleCost and seconds of sampler string `name` at classifier-guidance scale `scale`: the
    sample stage's seeds, labels and guidance composition (components/guided.py)."""
    cfg = nets.preset.unet
    guided = GuidedNetworks(nets.unet, cfg, nets.preset.diffusion, "cpu", classifier=nets.classifier)
    cell = Cell(parse_sampler(name).name, scale)
    images, cost = [], SampleCost(num)
    start = time.perf_counter()
    for lo in range(0, num, batch):
        seeds = [sample_seed(nets.preset.sample.seed, i) for i in range(lo, min(lo + batch, num))]
        labels = [sample_label(s, cfg.num_classes or 10) for s in seeds]
        part, used = sample_batch(guided, [cell] * len(seeds), seeds, labels, nets.preset.sample.clip_denoised)
        images.append(part)
        cost.network_evals[lo:lo + len(seeds)] = used.network_evals
        cost.classifier_passes[lo:lo + len(seeds)] = used.classifier_passes
    return np.concatenate(images), cost, time.perf_counter() - start


def fewest_evals(rows: list[dict], target: float) -> dict:
    """Per family, the fewest network evaluations on the grid whose FID is at most `target` (None: none reaches it)."""
    out = {}
    for row in rows:
        family = parse_sampler(row["sampler"]).kind
        if row["fid"] <= target and (out.get(family) is None or row["nfe"] < out[family]):
            out[family] = row["nfe"]
        out.setdefault(family, None)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--diffusion"), p.add_argument("--classifier"), p.add_argument("--evaluator")
    p.add_argument("--random", action="store_true", help="random networks of --preset (a check of this script)")
    p.add_argument("--preset", default="fashion-mnist", help="with --random")
    p.add_argument("--scale", type=float, default=None, help="guidance scale (default: evaluate.champion_scale)")
    p.add_argument("--samplers", default=GRID)
    p.add_argument("--target", default="ddim50", help="the sampler whose FID the others must reach")
    p.add_argument("--num-samples", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--reference", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    if not args.random and not (args.diffusion and args.classifier and args.evaluator):
        p.error("pass --diffusion, --classifier and --evaluator, or --random")
    torch.set_num_threads(args.threads)
    nets = load_networks(args)
    scale = nets.preset.evaluate.champion_scale if args.scale is None else args.scale
    u = nets.preset.unet
    features = EvaluatorFeatures(nets.evaluator, u.image_size, u.in_channels)
    ref_mu, ref_sigma = feature_statistics(features(reference_images(nets.preset, args.reference))["pool"])
    print(f"preset {nets.preset.name}, scale {scale:g}, {args.num_samples} samples, {args.reference} reference images, "
          f"{args.threads} thread(s)")
    print(f"{'sampler':12s} {'NFE':>5s} {'clf passes':>10s} {'seconds':>8s} {'evaluator FID':>14s}")
    rows = []
    for name in args.samplers.split(","):
        images, cost, seconds = sample(nets, name, scale, args.num_samples, args.batch_size)
        mu, sigma = feature_statistics(features(images)["pool"])
        rows.append({"sampler": name, "nfe": float(np.mean(cost.network_evals)), "seconds": seconds,
                     "passes": float(np.mean(cost.classifier_passes)),
                     "fid": frechet_distance(mu, sigma, ref_mu, ref_sigma, method="eigh")})
        r = rows[-1]
        print(f"{name:12s} {r['nfe']:5.0f} {r['passes']:10.0f} {seconds:8.1f} {r['fid']:14.3f}", flush=True)
    target = next((r["fid"] for r in rows if r["sampler"] == args.target), None)
    if target is None:
        return
    reach = fewest_evals(rows, target)
    print(f"fewest network evaluations on the grid reaching {args.target}'s FID {target:.3f}:")
    for family, nfe in reach.items():
        ratio = f"{nfe / reach['ddim']:.2f} x DDIM's" if nfe and reach.get("ddim") else ""
        print(f"  {family:8s} {'not reached' if nfe is None else f'{nfe:.0f}':>12s}  {ratio}")


if __name__ == "__main__":
    main()
