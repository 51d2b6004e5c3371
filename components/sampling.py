"""Ancestral DDPM (Ho et al. 2020, Alg. 2) and DDIM (Song et al. 2021, Eq. 12) sampling loops.

Both are free functions with one signature: ``loop(model, diffusion, noise, model_kwargs=None, cond_fn=None,
clip_denoised=True, eta=0.0, progress=None) -> x_0``. Guidance is composed in through ``cond_fn`` (see guidance.py):
DDPM shifts the mean (Alg. 1 of Dhariwal & Nichol 2021), DDIM shifts the score (Alg. 2).

Randomness comes from :class:`SampleNoise`: one generator per sample, seeded by the caller, so a sample depends on
its own seed (and label and scale) only, never on which batch it was drawn in.
"""

import torch

from . import samplers
from .config import ConfigError
from .diffusion import GaussianDiffusion, extract
from .guidance import condition_mean, condition_score
from .samplers import SamplerSpec


class SampleNoise:
    """Per-sample Gaussian noise streams: sample i draws from torch.Generator seeded with seeds[i]."""

    def __init__(self, seeds: list[int], shape: tuple[int, ...], device: torch.device | str = "cpu"):
        self.shape = tuple(shape)  # one sample, e.g. (C, H, W)
        self.device = torch.device(device)
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def __len__(self) -> int:
        return len(self.generators)

    def draw(self) -> torch.Tensor:
        """The next [N, *shape] float32 draw; generated on the CPU so results do not depend on the device."""
        z = torch.stack([torch.randn(self.shape, generator=g) for g in self.generators])
        return z.to(self.device)


def _timesteps(diffusion: GaussianDiffusion, n: int, device: torch.device):
    for i in reversed(range(diffusion.num_timesteps)):
        yield torch.full((n,), i, dtype=torch.long, device=device)


def _grad_context(cond_fn):
    # guidance needs autograd through the classifier; unguided sampling can use inference mode
    return torch.no_grad() if cond_fn is not None else torch.inference_mode()


def _nonzero_mask(t: torch.Tensor, ndim: int) -> torch.Tensor:
    return (t != 0).float().reshape(-1, *([1] * (ndim - 1)))  # no noise at the last step


def ddpm_sample(model, diffusion, noise: SampleNoise, model_kwargs=None, cond_fn=None, clip_denoised=True,
                eta=0.0, progress=None) -> torch.Tensor:
    """x_{t-1} = mu(x_t) [+ Sigma grad log p(y|x_t)] + sigma z. ``eta`` is unused (DDPM is always stochastic)."""
    del eta
    x = noise.draw()
    with _grad_context(cond_fn):
        for t in _timesteps(diffusion, len(noise), x.device):
            out = diffusion.p_mean_variance(model, x, t, clip_denoised, model_kwargs)
            if cond_fn is not None:
                out = condition_mean(diffusion, cond_fn, out, x, t, model_kwargs)
            z = noise.draw()
            x = out["mean"] + _nonzero_mask(t, x.ndim) * torch.exp(0.5 * out["log_variance"]) * z
            if progress is not None:
                progress(1)
    return x


def ddim_sample(model, diffusion, noise: SampleNoise, model_kwargs=None, cond_fn=None, clip_denoised=True,
                eta=0.0, progress=None) -> torch.Tensor:
    """x_{t-1} = sqrt(abar_{t-1}) x0_hat + sqrt(1 - abar_{t-1} - sigma^2) eps_hat + sigma z (eta scales sigma)."""
    x = noise.draw()
    with _grad_context(cond_fn):
        for t in _timesteps(diffusion, len(noise), x.device):
            out = diffusion.p_mean_variance(model, x, t, clip_denoised, model_kwargs)
            if cond_fn is not None:
                out = condition_score(diffusion, cond_fn, out, x, t, model_kwargs)
            eps = diffusion.predict_eps_from_xstart(x, t, out["pred_xstart"])
            alpha_bar = extract(diffusion.alphas_cumprod, t, x.ndim)
            alpha_bar_prev = extract(diffusion.alphas_cumprod_prev, t, x.ndim)
            sigma = (eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar))
                     * torch.sqrt(1 - alpha_bar / alpha_bar_prev))
            z = noise.draw()
            mean_pred = (out["pred_xstart"] * torch.sqrt(alpha_bar_prev)
                         + torch.sqrt(1 - alpha_bar_prev - sigma**2) * eps)
            x = mean_pred + _nonzero_mask(t, x.ndim) * sigma * z
            if progress is not None:
                progress(1)
    return x


def sampler_loop(spec: SamplerSpec):
    """The loop of a parsed sampler string, with the signature of the module docstring."""
    loops = {"ddpm": ddpm_sample, "ddim": ddim_sample}
    if spec.kind not in loops:
        raise ConfigError(f"sampler {spec.name!r}: {spec.kind} is not available in this version")
    return loops[spec.kind]


def parse_sampler(name: str):
    """(loop, respacing) of a sampler string, as the sample stage unpacks it; the string is parsed by
    samplers.parse_sampler (the one parser), and the loop runs on ``create_diffusion(cfg, respacing)``."""
    spec = samplers.parse_sampler(name)
    return sampler_loop(spec), spec.respacing


def class_conditional(model, class_cond: bool):
    """Wrap an unconditional model so it ignores the labels that guidance needs (model_kwargs["y"])."""
    if class_cond:
        return model

    def unconditional(x, t, y=None):
        return model(x, t)

    return unconditional


def sample_seed(base_seed: int, index: int) -> int:
    """The seed of sample `index`: the same for every guidance scale, so scales are compared on the same noise."""
    return (int(base_seed) * 1_000_003 + int(index)) % (2**63)


def sample_label(seed: int, num_classes: int) -> int:
    """The class of a sample, uniform at random as in the paper, from the sample's own seed."""
    g = torch.Generator().manual_seed(int(seed) ^ 0x5DEECE66D)
    return int(torch.randint(num_classes, (1,), generator=g))
