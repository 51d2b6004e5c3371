"""Our classifier-guided DDIM sampling against openai/guided-diffusion's, side by side in one process, interleaved:
the guided-sampling twin of bench_vs_released.py.

Same networks on both sides, holding the same weights: the diffusion model of bench_vs_released.py (32x32 RGB, 64
channels, 2 res blocks, channel_mult 1,2,2, attention at 16 and 8 px, learned sigma, class-conditional) and a noisy
classifier half as wide (32 channels, 2 res blocks per level, attention at 16 and 8 px, attention pooling: the
released classifiers' width ratio to their diffusion models); same batch, seeds, labels and scale; same threads.
Rounds alternate one batch of each side, so load on the machine hits all alike. Per step = per batch / DDIM steps.

released    : GaussianDiffusion.ddim_sample_loop of the respaced process with scripts/classifier_sample.py's cond_fn
              (the classifier's log-softmax gradient times the scale) and model_fn, in float32 (use_fp16 on CUDA).
ours fp32   : components.guided.sample_batch (the sampling actors' path) in float32, NCHW, eager.
ours bf16   : the same under bf16 autocast (where the device has bf16 kernels).
ours auto   : the settings a sampling job of these networks takes under `auto`: the measured choice over trial
              batches (pipelines/stages/sample.py's batch_trial and trial_cells), timed here like the others.

    python bench/bench_guided_vs_released.py --released /path/to/guided-diffusion [--batch 32] [--ddim 10]
        [--rounds 5] [--scale 4]
"""

import argparse
import copy
import importlib
import statistics
import time

import torch
from bench_vs_released import FLAGS, NUM_CLASSES, import_released, load  # bench/ is on sys.path when run

from components import build_classifier, build_unet
from components.config import ClassifierConfig
from components.config.flags import diffusion_config_from_flags, unet_config_from_flags
from components.config.grid import Cell
from components.guided import GuidedNetworks, sample_batch
from components.precision import SpeedSettings, bf16_supported, candidates, measure_choice
from components.sampling import SampleNoise, sample_seed
from pipelines.stages.sample import batch_trial, trial_cells

CLASSIFIER = ClassifierConfig(image_size=32, in_channels=3, model_channels=32, depth=2, attention_resolutions=(16, 8),
                              channel_mult=(1, 2, 2), num_head_channels=64, num_classes=NUM_CLASSES)


class Released:
    """The released DDIM loop with classifier guidance, as scripts/classifier_sample.py runs it."""

    def __init__(self, gd, device, ddim: int, scale: float):
        _, _, _, _, script_util, _ = gd
        keys = script_util.model_and_diffusion_defaults().keys()
        flags = {**FLAGS, "timestep_respacing": f"ddim{ddim}"}
        self.model, self.diffusion = script_util.create_model_and_diffusion(**{k: v for k, v in flags.items()
                                                                               if k in keys})
        unet = importlib.import_module("guided_diffusion.unet")  # on sys.path after import_released
        c = CLASSIFIER
        self.classifier = unet.EncoderUNetModel(
            image_size=c.image_size, in_channels=c.in_channels, model_channels=c.model_channels,
            out_channels=c.num_classes, num_res_blocks=c.depth, attention_resolutions=tuple(
                c.image_size // r for r in c.attention_resolutions), channel_mult=c.channel_mult, use_fp16=False,
            num_head_channels=c.num_head_channels, use_scale_shift_norm=True, resblock_updown=True, pool="attention")
        for net in (self.model, self.classifier):
            net.to(device).eval()
            for p in net.parameters():
                p.data.normal_(0, 0.02)  # weights that guide: zero-initialised output layers would give no gradient
        self.scale, self.device = scale, device

    def cond_fn(self, x, t, y=None):
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_probs = torch.log_softmax(self.classifier(x_in, t), dim=-1)
            selected = log_probs[range(len(log_probs)), y.view(-1)]
            return torch.autograd.grad(selected.sum(), x_in)[0] * self.scale

    def __call__(self, noise: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.diffusion.ddim_sample_loop(lambda x, t, y=None: self.model(x, t, y), tuple(noise.shape),
                                               noise=noise, clip_denoised=True, model_kwargs={"y": y},
                                               cond_fn=self.cond_fn, device=self.device)


def our_networks(released: Released, device) -> GuidedNetworks:
    unet = unet_config_from_flags(FLAGS, num_classes=NUM_CLASSES)
    model, classifier = build_unet(unet), build_classifier(CLASSIFIER)
    model.load_state_dict(released.model.state_dict())  # strict: the released layouts
    classifier.load_state_dict(released.classifier.state_dict())
    return GuidedNetworks(model.to(device).eval(), unet, diffusion_config_from_flags(FLAGS), device,
                          classifier=classifier.to(device).eval())


def check_same_function(released: Released, nets: GuidedNetworks, cells, seeds, labels, device) -> None:
    noise = SampleNoise(seeds, (3, 32, 32), device).draw()  # x_T of our loop's per-sample streams
    ours = sample_batch(nets, cells, seeds, labels)[0]
    theirs = released(noise, torch.tensor(labels, device=device))
    theirs = ((theirs + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    off = int((ours.astype(int) - theirs.astype(int)).__abs__().max())
    print(f"same function: float32 guided DDIM samples from the same x_T, max |ours - released| = {off} grey levels")
    if off > 2:
        raise SystemExit("the two sides do not sample the same function: the comparison would be meaningless")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--released", required=True, help="a guided-diffusion checkout (only imported from)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--ddim", type=int, default=10, help="DDIM steps per sampled batch")
    parser.add_argument("--scale", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--run-batches", type=int, default=1000, help="batches per actor auto chooses for")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    released = Released(import_released(args.released), device, args.ddim, args.scale)
    base = our_networks(released, device)
    cells = [Cell(f"ddim{args.ddim}", args.scale)] * args.batch
    seeds = [sample_seed(0, i) for i in range(args.batch)]
    labels = [i % NUM_CLASSES for i in range(args.batch)]
    if device.type == "cpu":
        check_same_function(released, base, cells, seeds, labels, device)
    start = time.perf_counter()
    trial_nets = copy.deepcopy(base)
    choice = measure_choice(batch_trial(trial_nets, trial_cells(cells, args.batch), seeds, labels),
                            candidates(device), "auto", args.run_batches * args.ddim // 2)
    print(f"auto's measured choice ({time.perf_counter() - start:.1f} s): {choice.summary()}")
    settings = {"ours fp32": SpeedSettings("fp32")}
    if bf16_supported(device):
        settings["ours bf16"] = SpeedSettings("bf16")
    settings["ours auto"] = choice.settings
    sides = {"released": lambda: released(SampleNoise(seeds, (3, 32, 32), device).draw(),
                                          torch.tensor(labels, device=device))}
    for name, s in settings.items():
        step = batch_trial(copy.deepcopy(base), cells, seeds, labels)(s)
        sides[name] = step
    for step in sides.values():
        step()  # warm-up (compiles where auto compiles)
    per_step = {name: [] for name in sides}
    for r in range(args.rounds):
        for name, step in sides.items():
            t = time.perf_counter()
            step()
            per_step[name].append((time.perf_counter() - t) / args.ddim)
        print(f"round {r + 1}: " + ", ".join(f"{n} {v[-1] * 1000:.0f}" for n, v in per_step.items())
              + f" ms per guided step; load {load()}", flush=True)
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}, device {device}, batch {args.batch}, "
          f"DDIM-{args.ddim}, scale {args.scale:g}")
    for name, v in per_step.items():
        vs_released = [r / o for o, r in zip(v, per_step["released"])]
        vs_plain = [p / o for o, p in zip(v, per_step["ours fp32"])]
        print(f"{name:12s} median {statistics.median(v) * 1000:6.1f} ms/step  vs released "
              f"x{statistics.median(vs_released):.2f} ({min(vs_released):.2f}-{max(vs_released):.2f})  vs ours fp32 "
              f"x{statistics.median(vs_plain):.2f} ({min(vs_plain):.2f}-{max(vs_plain):.2f})")


if __name__ == "__main__":
    main()
