"""Throughput of a training step and a guided DDIM step: this implementation vs a straightforward fp32 one.

Fixed config (issue 2): 32x32 RGB, 64 channels, 2 res blocks, channel_mult 1,2,2, attention at 16 and 8, learned
sigma, class-conditional; the guiding classifier is a small noisy classifier (32 channels, depth 1, attention pool).

baseline : fp32, einsum attention (the released code's form), NCHW, eager.
fast     : SDPA attention, channels_last, bf16 autocast where the hardware has native bf16, torch.compile.
Both are measured in the same process on the same machine; the ratio is what counts.

On CUDA more variants: + fused AdamW, + CUDA graphs (torch.compile mode="reduce-overhead"), + cudnn.benchmark
(cuDNN times its convolution algorithms once per shape and keeps the fastest).

    python bench/bench_components.py [--batch 32] [--iters 10] [--device cpu|cuda] [--no-compile]
                                     [--only train|guided] [--variants 3,4] [--profile]
"""

import argparse
import copy
import dataclasses
import platform
import time

import torch

from components import build_classifier, build_unet
from components.config import ClassifierConfig, DiffusionConfig, UNetConfig
from components.config.grid import Cell
from components.diffusion import create_diffusion
from components.guidance import condition_score
from components.guided import GuidedNetworks, compose
from components.losses import training_losses
from components.nn import set_attention_backend
from components.precision import autocast_context, bf16_supported

UNET = UNetConfig(image_size=32, in_channels=3, model_channels=64, num_res_blocks=2, attention_resolutions=(16, 8),
                  channel_mult=(1, 2, 2), num_classes=10, num_head_channels=32, learn_sigma=True, dropout=0.0)
CLASSIFIER = ClassifierConfig(image_size=32, in_channels=3, model_channels=32, depth=1, attention_resolutions=(8,),
                              channel_mult=(1, 2, 2), num_head_channels=32, num_classes=10)
DIFFUSION = DiffusionConfig(steps=1000, noise_schedule="cosine", learn_sigma=True)


@dataclasses.dataclass
class Variant:
    name: str
    attention: str
    channels_last: bool
    autocast: bool
    compile: bool
    fused_adamw: bool = False  # one kernel for the whole AdamW update (CUDA)
    cuda_graphs: bool = False  # torch.compile mode="reduce-overhead": replay the step's kernels as CUDA graphs
    cudnn_benchmark: bool = False  # let cuDNN time its convolution algorithms for these shapes and pick the fastest


def prepare(net, v: Variant, device):
    net = set_attention_backend(copy.deepcopy(net), v.attention).to(device)
    if v.channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net


def _input(x, v: Variant):
    return x.contiguous(memory_format=torch.channels_last) if v.channels_last else x


def train_step_fn(v: Variant, device, batch):
    torch.manual_seed(0)
    model = prepare(build_unet(UNET), v, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=v.fused_adamw or None)
    diffusion = create_diffusion(DIFFUSION)
    mode = "reduce-overhead" if v.cuda_graphs else None
    fwd = torch.compile(model, mode=mode) if v.compile else model
    x0 = _input(torch.rand(batch, 3, 32, 32, device=device) * 2 - 1, v)
    y = torch.randint(0, 10, (batch,), device=device)

    def step():
        t = torch.randint(0, 1000, (batch,), device=device)
        with autocast_context(device, "bf16" if v.autocast and bf16_supported(device) else "fp32"):
            loss = training_losses(diffusion, fwd, x0, t, {"y": y})["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def guided_step_fn(v: Variant, device, batch):
    torch.manual_seed(0)
    model = prepare(build_unet(UNET), v, device).eval()
    classifier = prepare(build_classifier(CLASSIFIER), v, device).eval()
    for p in list(model.parameters()) + list(classifier.parameters()):
        p.data.normal_(0, 0.02)
        p.requires_grad_(False)
    fwd = torch.compile(model) if v.compile else model
    clf = torch.compile(classifier) if v.compile else classifier
    diffusion = create_diffusion(DIFFUSION, "ddim25")
    x = _input(torch.randn(batch, 3, 32, 32, device=device), v)
    y = torch.randint(0, 10, (batch,), device=device)
    # the sample stage's guidance composition of a batch of classifier-guided cells at scale 2
    _, guidance = compose(GuidedNetworks(fwd, UNET, DIFFUSION, device, classifier=clf), [Cell("ddim25", 2.0)] * batch)

    def step():
        t = torch.full((batch,), 12, dtype=torch.long, device=device)
        with torch.no_grad(), autocast_context(device, "bf16" if v.autocast and bf16_supported(device) else "fp32"):
            out = diffusion.p_mean_variance(fwd, x, t, True, {"y": y})
            out = condition_score(diffusion, guidance, out, x, t, {"y": y})
        return out["mean"]

    return step


def measure(step, iters: int, warmup: int, device) -> float:
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--only", choices=("train", "guided"), help="measure one of the two steps")
    parser.add_argument("--profile", action="store_true",
                        help="after timing, profile 5 steps of the last variant and print its costliest kernels")
    parser.add_argument("--variants", help="comma list of variant numbers to run (0 = baseline, always run); "
                                           "default: all")
    args = parser.parse_args()
    device = torch.device(args.device)
    variants = [
        Variant("baseline fp32 einsum NCHW", "einsum", False, False, False),
        Variant("sdpa", "sdpa", False, True, False),
        Variant("sdpa + channels_last", "sdpa", True, True, False),
    ]
    if not args.no_compile:
        variants.append(Variant("sdpa + channels_last + compile", "sdpa", True, True, True))
    if not args.no_compile and device.type == "cuda":
        variants += [Variant("sdpa + cl + compile + fused AdamW", "sdpa", True, True, True, fused_adamw=True),
                     Variant("sdpa + cl + compile + fused + CUDA graphs", "sdpa", True, True, True, True, True),
                     Variant("sdpa + cl + compile + cudnn.benchmark", "sdpa", True, True, True, cudnn_benchmark=True),
                     Variant("sdpa + cl + compile + graphs + cudnn.bm", "sdpa", True, True, True, True, True, True)]
    if args.variants:
        keep = {0, *map(int, args.variants.split(","))}
        variants = [v for i, v in enumerate(variants) if i in keep]
    print(f"device={device} torch={torch.__version__} cpu={platform.processor() or platform.machine()} "
          f"threads={torch.get_num_threads()} native_bf16={bf16_supported(device)} batch={args.batch}")
    steps = (("train step", train_step_fn), ("guided DDIM step", guided_step_fn))
    for what, make in [s for s in steps if args.only is None or s[0].startswith(args.only)]:
        base = None
        for v in variants:
            if what.startswith("guided") and v.fused_adamw:
                continue  # training-only variants
            torch.backends.cudnn.benchmark = v.cudnn_benchmark
            step = make(v, device, args.batch)
            seconds = measure(step, args.iters, args.warmup + (2 if v.compile else 0), device)
            rate = args.batch / seconds
            base = base or rate
            name = v.name + (" + bf16" if v.autocast and bf16_supported(device) else "")
            print(f"{what:17s} {name:41s} {rate:9.1f} images/s  x{rate / base:.2f}", flush=True)
        if args.profile:
            profile(step, device)


def profile(step, device):
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(5):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=60), flush=True)


if __name__ == "__main__":
    main()
