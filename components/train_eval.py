"""Evaluation while training: fixed held-out measurements that are comparable from one step to the next.

The noisy classifier is scored per noise-level quartile of t (t in [q T/4, (q+1) T/4)), as the released
classifier_train.py logs its training loss per quartile (Dhariwal & Nichol 2021, Sec. 4), but on held-out images with
t and noise drawn from fixed seeds, so two steps see exactly the same x_t. The evaluator (clean images) is scored at
t = 0. The diffusion model samples a small fixed set (fixed seeds and labels, a fast sampler), whose FID the worker
computes. Pure PyTorch: the Ray worker (pipelines/stages/train_worker.py) supplies the images and logs the numbers.
"""

import numpy as np
import torch

from .config import DiffusionConfig, UNetConfig
from .config.grid import Cell, parse_sampler
from .diffusion import GaussianDiffusion
from .guided import GuidedNetworks, sample_batch, upsample_batch
from .images import downsample_area_uint8
from .losses import classifier_losses
from .sampling import sample_label, sample_seed

QUARTILES = 4


def quartile_draws(n: int, num_timesteps: int, quartile: int, shape: tuple, seed: int) -> tuple:
    """(t [n], noise [n, *shape]) for one quartile, from a generator seeded by (seed, quartile) alone: the same
    draws at every call, on every device."""
    gen = torch.Generator().manual_seed(seed * QUARTILES + quartile)
    low = quartile * num_timesteps // QUARTILES
    high = max(low + 1, (quartile + 1) * num_timesteps // QUARTILES)
    t = torch.randint(low, high, (n,), generator=gen)
    return t, torch.randn((n, *shape), generator=gen)


@torch.no_grad()
def classifier_scores(net, diffusion: GaussianDiffusion, x_start: torch.Tensor, labels: torch.Tensor, noised: bool,
                      seed: int = 0) -> dict:
    """Held-out scores of a classifier on x_start [N, C, H, W] in [-1, 1]: val_accuracy_q0..q3 and val_loss (mean
    cross-entropy over the quartiles) for the noisy classifier; val_accuracy and val_loss at t = 0 for a clean one.
    val_loss is the one number that ranks checkpoints (eval_score): unlike accuracy on a few dozen images it has no
    ties."""
    was_training = net.training
    net.eval()
    try:
        if not noised:
            t = torch.zeros(len(labels), dtype=torch.long, device=x_start.device)
            logits = net(x_start, t).float()
            loss = torch.nn.functional.cross_entropy(logits, labels)
            return {"val_accuracy": float((logits.argmax(-1) == labels).float().mean()), "val_loss": float(loss)}
        out, losses = {}, []
        for q in range(QUARTILES):
            t, noise = quartile_draws(len(labels), diffusion.num_timesteps, q, tuple(x_start.shape[1:]), seed)
            terms = classifier_losses(diffusion, net, x_start, labels, t.to(x_start.device), noise.to(x_start.device))
            out[f"val_accuracy_q{q}"] = float(terms["top1"].mean())
            losses.append(terms["loss"].mean())
        return {**out, "val_loss": float(torch.stack(losses).mean())}
    finally:
        net.train(was_training)


# --- the diffusion model: a small fixed sample set -------------------------------------------------------------------
EVAL_SAMPLER = "dpm++2m-10"  # 10 network evaluations per sample (bench/RESULTS.md: near DDIM-50's FID)


def fixed_set(n: int, num_classes: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """(seeds, labels) of the fixed sample set: sample i has the seed and the label the sample stage would give it."""
    seeds = [sample_seed(seed, i) for i in range(n)]
    return seeds, [sample_label(s, num_classes) for s in seeds]


def sample_fixed_set(model, config: DiffusionConfig, unet: UNetConfig, n: int, num_classes: int, device,
                     classifier=None, scale: float = 0.0, sampler: str = EVAL_SAMPLER) -> np.ndarray:
    """uint8 [n, H, W, C] samples of the fixed set from `model`, guided by `classifier` at `scale` when given
    (classifier guidance, Dhariwal & Nichol 2021 Alg. 2), else unguided. Same seeds and labels at every call."""
    seeds, labels = fixed_set(n, num_classes)
    nets = GuidedNetworks(model, unet, config, device, classifier=classifier)
    cell = Cell(parse_sampler(sampler).name, scale if classifier is not None else 0.0)
    images, _ = sample_batch(nets, [cell] * n, seeds, labels)
    return images


def upsample_fixed_set(model, config: DiffusionConfig, upsampler, large: np.ndarray, labels: np.ndarray, device,
                       noise_level: bool = False, sampler: str = EVAL_SAMPLER) -> np.ndarray:
    """uint8 upsamplings of the fixed held-out images `large` (their area downsample to upsampler.small_size, with
    `labels`) by the upsampler `model` (taking the augmentation level when `noise_level`; given 0), with fixed seeds:
    the same draws at every call, so an upsampler's FID compares from one step to the next."""
    seeds = [sample_seed(0, i) for i in range(len(large))]
    nets = GuidedNetworks(model, upsampler, config, device, noise_level=noise_level)
    low_res = downsample_area_uint8(large, upsampler.small_size)  # as a cascade's base data: area, then uint8
    images, _ = upsample_batch(nets, sampler, seeds, [int(v) for v in labels], low_res)
    return images
