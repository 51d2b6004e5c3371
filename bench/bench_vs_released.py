"""Our training step against openai/guided-diffusion's, side by side in one process, interleaved.

Same network (32x32 RGB, 64 channels, 2 res blocks, channel_mult 1,2,2, attention at 16 and 8 px, 4 heads, learned
sigma, class-conditional, built by each side from the same released flags and holding the same weights), same batch,
same torch threads. Rounds alternate: k released steps, then k of each of ours, so load on the machine hits all alike.

released    : the body of guided_diffusion.train_util.TrainLoop.run_step on one process: MixedPrecisionTrainer
              (fp16 with loss scaling on CUDA, as the released GPU runs; fp32 on CPUs), UniformSampler,
              diffusion.training_losses, log_loss_dict, AdamW, update_ema. (TrainLoop itself needs MPI and blobfile.)
ours fp32   : components.training.Learner.train_step in float32, NCHW, eager: the product's plain path.
ours bf16   : the same with bf16 autocast (where the device has bf16 kernels).
ours auto   : the settings a trainer of this network and batch takes under `auto` (precision, channels_last,
              compile): the measured choice (components.training.training_choice), timed here like the others.

    python bench/bench_vs_released.py --released /path/to/guided-diffusion [--batch 32] [--rounds 6] [--steps 4]
        [--run-steps 500000]

The checkout is only imported from; nothing else needs it.
"""

import argparse
import dataclasses
import platform
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
from bench_components import measure  # bench/ is on sys.path when this script runs

from components.config.flags import diffusion_config_from_flags, unet_config_from_flags
from components.config.presets import get_preset
from components.diffusion import create_diffusion
from components.losses import training_losses
from components.precision import SpeedSettings, bf16_supported
from components.training import Learner, trainer_candidates, training_choice

FLAGS = dict(image_size=32, num_channels=64, num_res_blocks=2, channel_mult="1,2,2", learn_sigma=True,
             class_cond=True, use_checkpoint=False, attention_resolutions="16,8", num_heads=4, num_head_channels=-1,
             num_heads_upsample=-1, use_scale_shift_norm=True, dropout=0.0, resblock_updown=True, use_fp16=False,
             use_new_attention_order=False, diffusion_steps=1000, noise_schedule="linear", timestep_respacing="",
             use_kl=False, predict_xstart=False, rescale_timesteps=False, rescale_learned_sigmas=False)
NUM_CLASSES = 10
LR, EMA_RATE = 1e-4, 0.9999


def import_released(path: str):
    root = Path(path)
    if not (root / "guided_diffusion" / "train_util.py").is_file():
        sys.exit(f"--released {path}: not a guided-diffusion checkout (no guided_diffusion/train_util.py); "
                 "clone https://github.com/openai/guided-diffusion and pass its folder")
    sys.path.insert(0, str(root))
    # train_util imports blobfile and (through dist_util) mpi4py at module level; the step uses neither (they save
    # checkpoints and set up MPI), so empty stand-ins let us call its log_loss_dict as the released loop does
    for name in ("blobfile", "mpi4py"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["mpi4py"].MPI = None
    from guided_diffusion import fp16_util, logger, nn, resample, script_util, train_util

    script_util.NUM_CLASSES = NUM_CLASSES  # create_model reads the module constant
    logger.configure(dir=tempfile.mkdtemp(prefix="gd-bench-"), format_strs=[])
    return fp16_util, logger, nn, resample, script_util, train_util


class ReleasedStep:
    """TrainLoop.run_step for one process without microbatches: forward_backward, optimize, EMA, log."""

    def __init__(self, gd, device, fp16: bool):
        fp16_util, self.logger, self.nn, resample, script_util, self.train_util = gd
        keys = script_util.model_and_diffusion_defaults().keys()
        self.model, self.diffusion = script_util.create_model_and_diffusion(
            **{k: v for k, v in {**FLAGS, "use_fp16": fp16}.items() if k in keys})
        self.model.to(device)
        self.trainer = fp16_util.MixedPrecisionTrainer(model=self.model, use_fp16=fp16)
        self.opt = torch.optim.AdamW(self.trainer.master_params, lr=LR, weight_decay=0.0)
        self.ema = [p.detach().clone() for p in self.trainer.master_params]
        self.sampler = resample.UniformSampler(self.diffusion)
        self.device = device

    def __call__(self, x0, y):
        self.trainer.zero_grad()
        t, weights = self.sampler.sample(x0.shape[0], self.device)
        losses = self.diffusion.training_losses(self.model, x0, t, model_kwargs={"y": y})
        loss = (losses["loss"] * weights).mean()
        self.train_util.log_loss_dict(self.diffusion, t, {k: v * weights for k, v in losses.items()})
        self.trainer.backward(loss)
        if self.trainer.optimize(self.opt):
            self.nn.update_ema(self.ema, self.trainer.master_params, rate=EMA_RATE)
        self.logger.dumpkvs()


def our_preset(batch: int, run_steps: int = 500_000):
    base = get_preset("fashion-mnist")
    return dataclasses.replace(
        base, unet=unet_config_from_flags(FLAGS, num_classes=NUM_CLASSES), diffusion=diffusion_config_from_flags(FLAGS),
        train_diffusion=dataclasses.replace(base.train_diffusion, steps=run_steps, batch_size=batch, lr=LR,
                                            ema_rate=(EMA_RATE,), label_dropout=0.0))  # the released has no null class


def our_learner(device, batch: int, state_dict: dict, settings: SpeedSettings | None = None,
                run_steps: int = 500_000) -> Learner:
    learner = Learner("diffusion", our_preset(batch, run_steps), device, seed=0, settings=settings)
    learner.net.load_state_dict(state_dict)  # the released network's weights, strict
    for p, e in zip(learner.net.parameters(), learner.ema[EMA_RATE]):
        e.copy_(p.detach())
    return learner


def check_same_function(released: ReleasedStep, learner: Learner, device):
    """In float32, the released loss and ours on the same weights, batch, t and noise: the same number."""
    torch.manual_seed(1)
    x0 = torch.rand(4, 3, 32, 32, device=device) * 2 - 1
    y, t = torch.randint(0, NUM_CLASSES, (4,), device=device), torch.tensor([0, 10, 500, 999], device=device)
    noise = torch.randn_like(x0)
    with torch.no_grad():
        ref = released.diffusion.training_losses(released.model, x0, t, model_kwargs={"y": y}, noise=noise)["loss"]
        ours = training_losses(create_diffusion(learner.preset.diffusion), learner.net.float(), x0, t, {"y": y},
                               noise=noise)["loss"]
    diff = (ref.float() - ours).abs().max().item()
    print(f"same function: fp32 losses {[round(v, 5) for v in ref.tolist()]}, max |ours - released| = {diff:.2e}")
    if diff > 1e-4 * max(1.0, ref.abs().max().item()):
        sys.exit("the two networks do not compute the same loss: the comparison would be meaningless")


def load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def our_sides(device, batch: int, state: dict, run_steps: int) -> dict:
    """name -> Learner: the plain float32 path, bf16 autocast, and the measured choice of `auto`."""
    preset = our_preset(batch, run_steps)
    cfg = preset.train_diffusion
    start = time.perf_counter()
    choice = training_choice("diffusion", preset, device, trainer_candidates(cfg, device), cfg.compile)
    print(f"auto's measured choice for a {run_steps}-step run ({time.perf_counter() - start:.1f} s): "
          f"{choice.summary()}")
    settings = {"ours fp32": SpeedSettings("fp32")}
    if bf16_supported(device):
        settings["ours bf16"] = SpeedSettings("bf16")
    settings["ours auto"] = choice.settings
    return {name: our_learner(device, batch, state, s, run_steps) for name, s in settings.items()}


def report(rates: dict) -> None:
    per_round = {name: [o / r for o, r in zip(v, rates["released"])] for name, v in rates.items()}
    plain = rates["ours fp32"]
    for name, v in rates.items():
        ratios, vs_plain = per_round[name], [o / p for o, p in zip(v, plain)]
        print(f"{name:12s} median {statistics.median(v):6.1f} img/s  vs released x{statistics.median(ratios):.2f} "
              f"({min(ratios):.2f}-{max(ratios):.2f})  vs ours fp32 x{statistics.median(vs_plain):.2f} "
              f"({min(vs_plain):.2f}-{max(vs_plain):.2f})")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--released", required=True, help="a guided-diffusion checkout (only imported from)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=4, help="steps per side per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per side first (ours compiles here)")
    parser.add_argument("--run-steps", type=int, default=500_000,
                        help="the training run auto chooses for (whether compiling pays depends on it)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    gd = import_released(args.released)

    torch.manual_seed(0)
    released = ReleasedStep(gd, device, fp16=device.type == "cuda")
    state = {k: v.float() for k, v in released.model.state_dict().items()}
    ours = our_sides(device, args.batch, state, args.run_steps)
    first = next(iter(ours.values()))
    n_ours, n_released = (sum(p.numel() for p in m.parameters()) for m in (first.net, released.model))
    print(f"parameters: ours {n_ours:,}, released {n_released:,}")
    if device.type == "cpu":
        check_same_function(released, our_learner(device, args.batch, state), device)

    x0 = torch.rand(args.batch, 3, 32, 32, device=device) * 2 - 1
    y = torch.randint(0, NUM_CLASSES, (args.batch,), device=device)
    sides = {"released": lambda: released(x0, y)}
    sides.update({name: (lambda learner=learner: learner.train_step(x0, y)) for name, learner in ours.items()})
    start = time.perf_counter()
    for step in sides.values():
        measure(step, args.warmup, 0, device)
    print(f"warm-up: {args.warmup} steps each (ours compiles here if it compiles): {time.perf_counter() - start:.1f} s")
    rates = {name: [] for name in sides}
    for r in range(args.rounds):
        for name, step in sides.items():
            rates[name].append(args.batch / measure(step, args.steps, 0, device))
        print(f"round {r + 1}: " + ", ".join(f"{n} {v[-1]:.1f}" for n, v in rates.items()) + f" img/s; load {load()}",
              flush=True)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, device {device}, native bf16 {bf16_supported(device)}")
    report(rates)


if __name__ == "__main__":
    main()
