"""The trainer's CUDA-graphs path on a GPU: `Learner` with compile + CUDA graphs vs compile alone vs eager.

Same seed and batches for the three; prints, and exits non-zero if a check fails:
1. per-step losses of the graphed trainer stay close to eager (bf16 autocast on both) over the first steps;
2. after the steps the weights differ from compile alone's no more than two compiled runs differ from each other,
   and save() -> load() round-trips them bit-exactly;
3. steps/s of each (the last half of the steps, after compilation and graph recording).

    python bench/gpu_train_graphs.py [--preset fashion-mnist] [--steps 40] [--kind diffusion] [--device cuda]
"""

import argparse
import sys
import tempfile
import time

import torch

from components.config import apply_overrides
from components.config.presets import get_preset
from components.training import Learner

FAILURES = []


def run(preset, kind: str, setting: str, steps: int, batches, device):
    overrides = ["precision=bf16", "channels_last=on"] + {  # the GPU settings this script measured (RESULTS.md)
        "eager": ["compile=off"], "compile": ["compile=on", "cuda_graphs=off"],
        "graphs": ["compile=on", "cuda_graphs=on"]}[setting]
    preset = apply_overrides(preset, [f"train_{kind}.{o}" for o in overrides])
    learner = Learner(kind, preset, device, seed=0)
    losses, start = [], None
    for i in range(steps):
        if i == steps // 2:
            sync(device)
            start = time.perf_counter()
        x, y = batches[i]
        losses.append(learner.train_step(x, y)["loss"])
    sync(device)
    rate = (steps - steps // 2) / (time.perf_counter() - start)
    return learner, losses, rate


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def check(name: str, ok: bool, detail: str):
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)
    if not ok:
        FAILURES.append(name)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="fashion-mnist")
    parser.add_argument("--kind", default="diffusion", choices=("diffusion", "classifier", "evaluator"))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--device", default="cuda", help="cpu only checks the script (no CUDA graphs there)")
    args = parser.parse_args()
    device = torch.device(args.device)
    preset = get_preset(args.preset)
    cfg = preset.unet if args.kind == "diffusion" else preset.classifier
    batch = getattr(preset, f"train_{args.kind}").batch_size
    gen = torch.Generator().manual_seed(0)
    shape = (batch, cfg.in_channels, cfg.image_size, cfg.image_size)
    batches = [(torch.rand(shape, generator=gen).mul(2).sub(1).to(device),
                torch.randint(0, cfg.num_classes or 1, (batch,), generator=gen).to(device)) for _ in range(args.steps)]
    results = {s: run(preset, args.kind, s, args.steps, batches, device) for s in ("eager", "compile", "graphs")}
    for s, (_, losses, rate) in results.items():
        print(f"{args.kind} {s:8s} {rate * batch:9.1f} images/s  x{rate / results['eager'][2]:.2f}  "
              f"loss {losses[0]:.4f} -> {losses[-1]:.4f}", flush=True)
    eager, graphs = results["eager"], results["graphs"]
    first = 5
    worst = max(abs(a - b) / max(abs(a), 1e-3) for a, b in zip(eager[1][:first], graphs[1][:first]))
    check("losses", worst < 0.05, f"first {first} steps within {worst:.2e} (relative) of eager")
    check("finite", all(torch.isfinite(torch.tensor(graphs[1]))), "every graphed step's loss is finite")
    # graph replay runs the compiled kernels: the graphed weights may differ from compile's only as much as two
    # compiled runs differ from each other (atomic adds in some backward kernels, e.g. the upsampling's, are not
    # deterministic, and AdamW's normalised updates carry such differences into every weight); eager is for reference
    def drift(a, b):
        return max(float((p - q).detach().abs().max()) for p, q in zip(a.net.parameters(), b.net.parameters()))

    again = run(preset, args.kind, "compile", args.steps, batches, device)[0]
    noise, graphed = drift(results["compile"][0], again), drift(results["compile"][0], graphs[0])
    check("weights", graphed <= 2 * noise + 1e-6, f"max |graphed - compiled| weight after {args.steps} steps "
          f"{graphed:.2e}; two compiled runs differ by {noise:.2e}; graphed vs eager {drift(eager[0], graphs[0]):.2e}")
    with tempfile.TemporaryDirectory() as tmp:
        graphs[0].save(tmp, config={})
        again = Learner(args.kind, preset, device)
        again.load(tmp)
        same = all(torch.equal(a, b) for a, b in zip(again.net.state_dict().values(),
                                                    graphs[0].net.state_dict().values()))
        check("checkpoint", same, "save() -> load() of the graphed trainer is bit-exact")
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
