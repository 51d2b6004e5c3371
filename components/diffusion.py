"""Gaussian diffusion (Ho et al. 2020; Nichol & Dhariwal 2021; Dhariwal & Nichol 2021, Sec. 2).

Noise schedules (linear, cosine), the forward process q(x_t | x_0), the posterior q(x_{t-1} | x_t, x_0), the model's
p(x_{t-1} | x_t) with learned-range variance (Nichol & Dhariwal 2021, Eq. 15: Sigma = exp(v log beta_t + (1 - v) log
beta~_t)), and timestep respacing ("250", "ddim25", "10,10,5"). A respaced process keeps ``timestep_map`` so the network
always sees the original timesteps 0..T-1.

Schedule arrays are float64 NumPy, gathered per timestep into float32 tensors, as in the released code.
"""

import math

import numpy as np
import torch

from .config import ConfigError, DiffusionConfig
from .config.respacing import space_timesteps
from .config.sections import NOISE_SCHEDULES
from .config.validation import check_diffusion


def betas_for_alpha_bar(num_steps: int, alpha_bar, max_beta: float = 0.999) -> np.ndarray:
    """beta_t = min(1 - alpha_bar((t + 1) / T) / alpha_bar(t / T), max_beta)."""
    return np.array(
        [min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta) for i in range(num_steps)],
        dtype=np.float64,
    )


def get_named_beta_schedule(name: str, num_steps: int) -> np.ndarray:
    if name == "linear":
        scale = 1000 / num_steps  # keeps the schedule's shape for any number of steps
        return np.linspace(scale * 0.0001, scale * 0.02, num_steps, dtype=np.float64)
    if name == "cosine":
        return betas_for_alpha_bar(num_steps, lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2)
    raise ConfigError(f"noise_schedule={name!r} is unknown; use one of {', '.join(NOISE_SCHEDULES)}")


def extract(arr: np.ndarray, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """arr[t] as float32 on t's device, shaped [B, 1, 1, ...] to broadcast against an ndim tensor."""
    out = torch.from_numpy(arr).to(device=t.device)[t].float()
    return out.reshape(-1, *([1] * (ndim - 1)))


class GaussianDiffusion:
    """One (possibly respaced) diffusion process. Methods use the names of the released code."""

    def __init__(self, betas: np.ndarray, config: DiffusionConfig, timestep_map: list[int] | None = None):
        self.config = config
        self.betas = betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ConfigError("betas must be a 1-D array in (0, 1]")
        self.num_timesteps = len(betas)
        self.timestep_map = np.asarray(timestep_map if timestep_map is not None else range(len(betas)))
        self.original_num_steps = config.steps
        alphas = 1.0 - betas
        self.alphas_cumprod = ac = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, ac[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(ac)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - ac)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / ac)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / ac - 1)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - ac)
        # log of the posterior variance, with the t=0 value (0) replaced by the t=1 value
        self.posterior_log_variance_clipped = np.log(np.append(self.posterior_variance[1], self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - ac)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - ac)

    # --- forward process -------------------------------------------------------------------------------------
    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps."""
        noise = torch.randn_like(x_start) if noise is None else noise
        return (extract(self.sqrt_alphas_cumprod, t, x_start.ndim) * x_start
                + extract(self.sqrt_one_minus_alphas_cumprod, t, x_start.ndim) * noise)

    def q_posterior_mean_variance(self, x_start, x_t, t):
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        mean = (extract(self.posterior_mean_coef1, t, x_t.ndim) * x_start
                + extract(self.posterior_mean_coef2, t, x_t.ndim) * x_t)
        return (mean, extract(self.posterior_variance, t, x_t.ndim),
                extract(self.posterior_log_variance_clipped, t, x_t.ndim))

    # --- parameterisation ------------------------------------------------------------------------------------
    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Timesteps of this (respaced) process -> the original timesteps the networks were trained on."""
        mapped = torch.as_tensor(self.timestep_map, device=t.device, dtype=t.dtype)[t]
        if self.config.rescale_timesteps:
            return mapped.float() * (1000.0 / self.original_num_steps)
        return mapped

    def predict_xstart_from_eps(self, x_t, t, eps):
        return (extract(self.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t
                - extract(self.sqrt_recipm1_alphas_cumprod, t, x_t.ndim) * eps)

    def predict_eps_from_xstart(self, x_t, t, pred_xstart):
        return ((extract(self.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t - pred_xstart)
                / extract(self.sqrt_recipm1_alphas_cumprod, t, x_t.ndim))

    def model_variance(self, var_values: torch.Tensor | None, t: torch.Tensor, ndim: int):
        """(variance, log_variance) of p(x_{t-1} | x_t): learned range, or fixed large / small."""
        if self.config.learn_sigma:
            min_log = extract(self.posterior_log_variance_clipped, t, ndim)
            max_log = extract(np.log(self.betas), t, ndim)
            frac = (var_values + 1) / 2  # the network outputs v in [-1, 1]
            log_variance = frac * max_log + (1 - frac) * min_log
            return torch.exp(log_variance), log_variance
        if self.config.sigma_small:
            return (extract(self.posterior_variance, t, ndim), extract(self.posterior_log_variance_clipped, t, ndim))
        large = np.append(self.posterior_variance[1], self.betas[1:])
        return extract(large, t, ndim), extract(np.log(large), t, ndim)

    def p_mean_variance(self, model, x, t, clip_denoised=True, model_kwargs=None, model_output=None):
        """Mean, variance, log-variance and predicted x_0 of p(x_{t-1} | x_t). The network sees original t."""
        if model_output is None:
            model_output = model(x, self.model_timesteps(t), **(model_kwargs or {}))
        model_output = model_output.float()
        var_values = None
        if self.config.learn_sigma:
            model_output, var_values = torch.split(model_output, x.shape[1], dim=1)
        variance, log_variance = self.model_variance(var_values, t, x.ndim)
        if self.config.predict_xstart:
            pred_xstart = model_output
        else:
            pred_xstart = self.predict_xstart_from_eps(x, t, model_output)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return {"mean": mean, "variance": variance, "log_variance": log_variance, "pred_xstart": pred_xstart}


def create_diffusion(config: DiffusionConfig, timestep_respacing: str | None = None) -> GaussianDiffusion:
    """The process of `config`, respaced by `timestep_respacing` (default: config.timestep_respacing)."""
    check_diffusion(config)
    betas = get_named_beta_schedule(config.noise_schedule, config.steps)
    respacing = config.timestep_respacing if timestep_respacing is None else timestep_respacing
    if not respacing:
        return GaussianDiffusion(betas, config)
    use_timesteps = space_timesteps(config.steps, respacing)
    alphas_cumprod = np.cumprod(1.0 - betas)
    new_betas, last = [], 1.0
    for i in use_timesteps:
        new_betas.append(1 - alphas_cumprod[i] / last)
        last = alphas_cumprod[i]
    return GaussianDiffusion(np.array(new_betas), config, timestep_map=use_timesteps)
