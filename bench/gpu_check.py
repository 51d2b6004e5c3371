"""Correctness of the GPU path (CUDA fp32 and bf16 autocast), for a machine with a GPU.

Prints, and exits non-zero if any check fails:
1. the bench config's UNet and the guiding classifier give the same outputs on CUDA (fp32, TF32 off) as on CPU;
2. bf16 autocast on CUDA stays close to fp32 (relative error of the UNet output);
3. guided DDIM sampling on CUDA: scale 0 equals unguided exactly, a seeded sample does not depend on its batch,
   and CUDA fp32 samples agree with CPU samples.

    python bench/gpu_check.py [cuda|cpu]   (cpu only checks the script itself)
"""

import sys

import torch

from components import build_classifier, build_unet
from components.config.grid import Cell
from components.diffusion import create_diffusion
from components.guided import GuidedNetworks, compose
from components.precision import autocast_context
from components.sampling import SampleNoise, ddim_sample

sys.path.insert(0, "bench")
from bench_components import CLASSIFIER, DIFFUSION, UNET  # noqa: E402

FAILURES = []


def check(name: str, ok: bool, detail: str):
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    if not ok:
        FAILURES.append(name)


def networks():
    torch.manual_seed(0)
    model, classifier = build_unet(UNET).eval(), build_classifier(CLASSIFIER).eval()
    for p in list(model.parameters()) + list(classifier.parameters()):
        p.data.normal_(0, 0.02)
        p.requires_grad_(False)
    return model, classifier


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


def sample(model, classifier, device, seeds, labels, scales, autocast=False):
    diffusion = create_diffusion(DIFFUSION, "ddim10")
    noise = SampleNoise(seeds, (3, 32, 32), device=device)
    cells = [Cell("ddim10", float(s)) for s in (scales or [0.0] * len(seeds))]
    _, guidance = compose(GuidedNetworks(model, UNET, DIFFUSION, device, classifier=classifier), cells)
    with autocast_context(device, "bf16" if autocast else "fp32"):
        return ddim_sample(model, diffusion, noise, {"y": torch.tensor(labels, device=device)}, cond_fn=guidance).cpu()


def main():
    device = torch.device(sys.argv[1] if len(sys.argv) > 1 else "cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "none"
    print(f"torch={torch.__version__} device={device} gpu={gpu}")
    model, classifier = networks()
    x = torch.randn(8, 3, 32, 32)
    t = torch.randint(0, 1000, (8,))
    y = torch.randint(0, 10, (8,))
    with torch.no_grad():
        cpu_out, cpu_logits = model(x, t, y), classifier(x, t)
        model, classifier = model.to(device), classifier.to(device)
        gx, gt, gy = x.to(device), t.to(device), y.to(device)
        gpu_out, gpu_logits = model(gx, gt, gy).cpu(), classifier(gx, gt).cpu()
        with autocast_context(device, "bf16"):
            bf16_out = model(gx, gt, gy).cpu()
    err = relative(gpu_out, cpu_out)
    check("UNet CUDA fp32 == CPU", err < 1e-5, f"relative error {err:.2e}")
    check("classifier CUDA fp32 == CPU", relative(gpu_logits, cpu_logits) < 1e-5,
          f"relative error {relative(gpu_logits, cpu_logits):.2e}")
    check("UNet bf16 autocast ~ fp32", relative(bf16_out, gpu_out) < 3e-2,
          f"relative error {relative(bf16_out, gpu_out):.2e}")

    seeds, labels = [11, 12, 13, 14], [0, 1, 2, 3]
    for autocast in (False, True):
        tag = "bf16" if autocast else "fp32"
        unguided = sample(model, classifier, device, seeds, labels, None, autocast)
        zero = sample(model, classifier, device, seeds, labels, [0.0] * 4, autocast)
        check(f"{tag}: scale 0 == unguided", torch.equal(unguided, zero),
              f"max diff {(unguided - zero).abs().max():.2e}")
        batch = sample(model, classifier, device, seeds, labels, [1.0, 2.0, 4.0, 8.0], autocast)
        alone = sample(model, classifier, device, [13], [2], [4.0], autocast)
        diff = float((batch[2] - alone[0]).abs().max())
        check(f"{tag}: seeded sample independent of its batch", diff < (5e-2 if autocast else 1e-4),
              f"max diff {diff:.2e}")
        check(f"{tag}: guidance changes the sample", not torch.allclose(batch, unguided),
              f"max diff {(batch - unguided).abs().max():.2e}")
    gpu = sample(model, classifier, device, seeds, labels, [1.0, 2.0, 4.0, 8.0])
    cpu = sample(model.cpu(), classifier.cpu(), torch.device("cpu"), seeds, labels, [1.0, 2.0, 4.0, 8.0])
    diff = float((gpu - cpu).abs().max())
    check("guided DDIM CUDA fp32 == CPU", diff < 1e-3, f"max diff {diff:.2e}")
    print("all GPU checks passed" if not FAILURES else f"{len(FAILURES)} GPU checks FAILED: {FAILURES}")
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
