#!/usr/bin/env python
"""Make the tiny fixed checkpoints of the model-behaviour test (tests/components/test_behaviour.py), once.

    python scripts/make_behaviour_checkpoints.py [--out tests/data/behaviour]

Trains, on the CPU and without Ray, an unconditional diffusion model, a noisy classifier and a clean-image evaluator
on synthetic 8x8 shapes (4 classes that differ in colour and shape), with the project's own Learner, and writes
their weights (safetensors, rounded to bfloat16 for size: the test upcasts them exactly) and the resolved
configuration (preset.json) to OUT. An unconditional model makes every class about equally often at scale 0, so
what guidance does to the samples' classes is its own effect. The run is seeded: the same torch build on the same
CPU remakes the same files; the test reads the committed ones (about 2 minutes on 2 cores; 3.2 MB).
"""

import argparse
import json
from pathlib import Path

import torch

from components.checkpoint import save_weights
from components.config import apply_overrides, to_dict
from components.config.presets import get_preset
from components.images import make_shapes, to_model_input
from components.training import Learner

SIZE, CLASSES = 8, 4
OVERRIDES = [
    *(f"{net}.image_size={SIZE}" for net in ("unet", "classifier", "evaluator")),
    *(f"{net}.attention_resolutions=4" for net in ("unet", "classifier", "evaluator")),
    "unet.num_classes=none", "data.resolution=8",
    "train_diffusion.steps=600", "train_diffusion.batch_size=64", "train_diffusion.lr=2e-3",
    "train_classifier.steps=400", "train_classifier.batch_size=64", "train_classifier.lr=2e-3",
    "train_evaluator.steps=200", "train_evaluator.batch_size=64", "train_evaluator.lr=2e-3",
]


def preset():
    return apply_overrides(get_preset("smoke"), OVERRIDES)


def train(kind: str, images: torch.Tensor, labels: torch.Tensor, seed: int) -> torch.nn.Module:
    learner = Learner(kind, preset(), torch.device("cpu"), seed=seed)
    cfg, gen = learner.cfg, torch.Generator().manual_seed(seed)
    while learner.step < cfg.steps:
        rows = torch.randint(len(labels), (cfg.batch_size,), generator=gen)
        metrics = learner.train_step(images[rows], labels[rows])
        if learner.step % 100 == 0:
            print(f"{kind} step {learner.step}: loss {metrics['loss']:.4f}", flush=True)
    return learner.ema_network()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("tests/data/behaviour"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    images, labels, names = make_shapes(4096, SIZE, CLASSES, seed=7)
    x, y = to_model_input(images), torch.as_tensor(labels)
    args.out.mkdir(parents=True, exist_ok=True)
    for seed, kind in enumerate(("diffusion", "classifier", "evaluator")):
        net = train(kind, x, y, seed)
        weights = {k: v.to(torch.bfloat16).contiguous() for k, v in net.state_dict().items()}
        save_weights(weights, args.out / f"{kind}.safetensors")
    (args.out / "preset.json").write_text(json.dumps({"preset": to_dict(preset()), "class_names": names,
                                                      "made_by": "python scripts/make_behaviour_checkpoints.py",
                                                      "torch": torch.__version__}, indent=1))
    size = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"wrote {sorted(p.name for p in args.out.iterdir())} ({size} bytes)")


if __name__ == "__main__":
    main()
