"""Sampling loops: ancestral DDPM (Ho et al. 2020, Alg. 2), DDIM (Song et al. 2021, Eq. 12), DPM-Solver++(2M) (Lu et
al. 2022, Alg. 2) and EDM's Heun sampler (Karras et al. 2022, Alg. 2).

All are free functions with one signature: ``loop(model, diffusion, noise, model_kwargs=None, cond_fn=None,
clip_denoised=True, eta=0.0, progress=None, cost=None) -> x_0`` (the solvers add ``steps``; ``sampler_loop`` binds it
from a sampler string). Guidance is composed in through ``cond_fn`` (see guidance.py): DDPM shifts the mean (Alg. 1
of Dhariwal & Nichol 2021), DDIM and the solvers shift the score (Alg. 2). ``cost`` (samplers.SampleCost) counts the
network evaluations per sample; ClassifierGuidance counts the classifier passes into the same object.

Randomness comes from :class:`SampleNoise`: one generator per sample, seeded by the caller, so a sample depends on
its own seed (and label and scale) only, never on which batch it was drawn in.
"""

import functools
import hashlib

import numpy as np
import torch

from .compute import SampleCost
from .config import ConfigError
from .config.grid import SamplerSpec
from .diffusion import GaussianDiffusion, extract
from .guidance import condition_mean, condition_score


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


def _p_mean_variance(model, diffusion, x, t, clip_denoised, model_kwargs, cost: SampleCost | None) -> dict:
    if cost is not None:
        cost.add_network_eval()
    return diffusion.p_mean_variance(model, x, t, clip_denoised, model_kwargs)


def _nonzero_mask(t: torch.Tensor, ndim: int) -> torch.Tensor:
    return (t != 0).float().reshape(-1, *([1] * (ndim - 1)))  # no noise at the last step


def ddpm_sample(model, diffusion, noise: SampleNoise, model_kwargs=None, cond_fn=None, clip_denoised=True,
                eta=0.0, progress=None, cost: SampleCost | None = None) -> torch.Tensor:
    """x_{t-1} = mu(x_t) [+ Sigma grad log p(y|x_t)] + sigma z. ``eta`` is unused (DDPM is always stochastic)."""
    del eta
    x = noise.draw()
    with _grad_context(cond_fn):
        for t in _timesteps(diffusion, len(noise), x.device):
            out = _p_mean_variance(model, diffusion, x, t, clip_denoised, model_kwargs, cost)
            if cond_fn is not None:
                out = condition_mean(diffusion, cond_fn, out, x, t, model_kwargs)
            z = noise.draw()
            x = out["mean"] + _nonzero_mask(t, x.ndim) * torch.exp(0.5 * out["log_variance"]) * z
            if progress is not None:
                progress(1)
    return x


def ddim_sample(model, diffusion, noise: SampleNoise, model_kwargs=None, cond_fn=None, clip_denoised=True,
                eta=0.0, progress=None, cost: SampleCost | None = None) -> torch.Tensor:
    """x_{t-1} = sqrt(abar_{t-1}) x0_hat + sqrt(1 - abar_{t-1} - sigma^2) eps_hat + sigma z (eta scales sigma)."""
    x = noise.draw()
    with _grad_context(cond_fn):
        for t in _timesteps(diffusion, len(noise), x.device):
            out = _p_mean_variance(model, diffusion, x, t, clip_denoised, model_kwargs, cost)
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


# --- ODE solvers on the trained timesteps -------------------------------------------------------------------------
def _log_snr(diffusion) -> np.ndarray:
    """lambda_t = log(alpha_t / sigma_t) = log(abar_t / (1 - abar_t)) / 2 of each timestep of the process."""
    alpha_bar = diffusion.alphas_cumprod
    return 0.5 * (np.log(alpha_bar) - np.log1p(-alpha_bar))


# The noisiest sigma the solvers start from: EDM's sigma_max for the iDDPM / ADM networks (Karras et al. 2022, Table
# 1). x_T ~ N(0, I) is taken at the trained timestep nearest it. Why not T - 1: the cosine schedule's last timesteps
# (beta clipped at 0.999, sigma up to ~1e4) hold the network's least trained predictions, and stepping through them
# costs FID (for DDIM too, whose strides stop below them; see bench/bench_solvers.py).
SIGMA_MAX = 80.0


def _top_timestep(log_snr: np.ndarray, sigma_max: float) -> int:
    """The noisiest timestep a solver uses: the trained sigma = exp(-lambda) nearest sigma_max in log sigma (T - 1
    when sigma_max is above every trained sigma)."""
    if sigma_max >= np.exp(-log_snr[-1]):
        return len(log_snr) - 1
    return int(np.argmin(np.abs(log_snr + np.log(sigma_max))))


def solver_timesteps(log_snr: np.ndarray, targets) -> list[int]:
    """The process timesteps a solver evaluates the network at, noisiest first: each target log-SNR rounded to the
    timestep nearest in log-SNR, then kept strictly decreasing and inside [0, T-1]. Near t = 0 the trained log-SNRs
    lie further apart than fine targets (linear schedule: 0.4 between t = 0 and 1), so a target whose nearest
    timestep is taken moves to the next free one, and N targets always give N distinct timesteps (N <= T)."""
    num, out = len(targets), []
    if not 1 <= num <= len(log_snr):
        raise ConfigError(f"a solver needs between 1 and {len(log_snr)} steps on this process, not {num}")
    for i, target in enumerate(targets):
        t = int(np.argmin(np.abs(log_snr - target)))
        highest = out[-1] - 1 if out else len(log_snr) - 1
        out.append(min(max(t, num - 1 - i), highest))  # leave room for the num - 1 - i cleaner steps
    return out


def _data_prediction(model, diffusion, x, t: int, model_kwargs, cond_fn, clip_denoised, cost) -> torch.Tensor:
    """x_theta(x_t, t): the network's x_0 at process timestep t (the eps half of a learned-sigma output, clipped to
    [-1, 1] if asked) and, with cond_fn, from DDIM's conditional score eps - sqrt(1 - abar_t) grad (condition_score),
    so the solvers guide exactly as ddim_sample does."""
    t = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
    out = _p_mean_variance(model, diffusion, x, t, clip_denoised, model_kwargs, cost)
    if cond_fn is not None:
        out = condition_score(diffusion, cond_fn, out, x, t, model_kwargs)
    return out["pred_xstart"]


def dpm_solver_2m_sample(model, diffusion, noise: SampleNoise, model_kwargs=None, cond_fn=None, clip_denoised=True,
                         eta=0.0, progress=None, steps: int | None = None, sigma_max: float = SIGMA_MAX,
                         cost: SampleCost | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2): ``steps`` network evaluations at timesteps uniform in log-SNR from
    the trained sigma nearest ``sigma_max`` down to t = 0 (solver_timesteps), x_T taken at the first. With h_i =
    lambda_i - lambda_{i-1} and r = h_{i-1} / h_i: x_i = (sigma_i / sigma_{i-1}) x_{i-1} - alpha_i (e^{-h_i} - 1) D_i,
    D_i = (1 + 1/(2r)) x0_{i-1} - 1/(2r) x0_{i-2} (D_1 = x0_0: the first step is DDIM). The last step, from t = 0 to
    sigma = 0 (h infinite), is first order: x_0 = x0 at t = 0, as DDIM's last step. Deterministic: ``eta`` is unused,
    x_T is the only draw."""
    del eta
    lam = _log_snr(diffusion)
    alpha, sigma = np.sqrt(diffusion.alphas_cumprod), np.sqrt(1 - diffusion.alphas_cumprod)
    top = _top_timestep(lam, sigma_max)
    timesteps = solver_timesteps(lam[:top + 1], np.linspace(lam[top], lam[0], steps or top + 1))
    x, x0_prev, h_prev = noise.draw(), None, None
    with _grad_context(cond_fn):
        for i, t in enumerate(timesteps):
            x0 = _data_prediction(model, diffusion, x, t, model_kwargs, cond_fn, clip_denoised, cost)
            if i + 1 == len(timesteps):
                x = x0
            else:
                s = timesteps[i + 1]
                h = lam[s] - lam[t]
                d = x0 if x0_prev is None else (1 + h / (2 * h_prev)) * x0 - h / (2 * h_prev) * x0_prev
                x = (sigma[s] / sigma[t]) * x - alpha[s] * np.expm1(-h) * d
                x0_prev, h_prev = x0, h
            if progress is not None:
                progress(1)
    return x


def karras_sigmas(sigma_max: float, sigma_min: float, n: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. 2022, Eq. 5: n noise levels from sigma_max to sigma_min, dense near sigma_min for rho > 1."""
    ramp = np.linspace(0, 1, n)
    return (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def heun_sample(model, diffusion, noise: SampleNoise, model_kwargs=None, cond_fn=None, clip_denoised=True, eta=0.0,
                progress=None, steps: int | None = None, sigma_max: float = SIGMA_MAX, s_churn=0.0, s_tmin=0.0,
                s_tmax=float("inf"), s_noise=1.0, cost: SampleCost | None = None) -> torch.Tensor:
    """EDM's sampler (Karras et al. 2022, Alg. 2) on x / alpha_t, whose noise level is sigma_t = sqrt((1 - abar_t) /
    abar_t): ``steps`` Karras noise levels (rho = 7) from the trained sigma nearest ``sigma_max`` down to t = 0's, each
    moved to the nearest trained sigma (solver_timesteps, in log sigma = -lambda), so the network always sees a trained
    timestep with its exact input scaling (k-diffusion's DiscreteEpsDDPMDenoiser quantises t the same way). Heun
    steps, Euler on the last one to sigma = 0: 2 steps - 1 network evaluations. S_churn > 0 raises sigma_i to the
    trained sigma nearest sigma_i (1 + gamma), gamma = min(S_churn / steps, sqrt(2) - 1) within [S_tmin, S_tmax],
    adding fresh noise from the sample's stream; S_churn = 0 (default) is deterministic given x_T."""
    del eta
    lam = _log_snr(diffusion)
    trained = np.exp(-lam)  # sigma_t of every process timestep
    top = _top_timestep(lam, sigma_max)
    num = steps or top + 1
    timesteps = solver_timesteps(lam[:top + 1], -np.log(karras_sigmas(trained[top], trained[0], num)))
    sigmas = [float(trained[t]) for t in timesteps] + [0.0]
    x = noise.draw() * np.sqrt(1 + sigmas[0] ** 2)  # x_T / alpha_T: x_T ~ N(0, I) at the first timestep
    with _grad_context(cond_fn):
        for i, t in enumerate(timesteps):
            gamma = min(s_churn / num, np.sqrt(2) - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.0
            t_hat = int(np.argmin(np.abs(lam + np.log(sigmas[i] * (1 + gamma))))) if gamma > 0 else t
            sigma_hat = float(trained[t_hat])
            if sigma_hat > sigmas[i]:
                x = x + np.sqrt(sigma_hat**2 - sigmas[i] ** 2) * s_noise * noise.draw()
            x = _heun_step(model, diffusion, x, (t_hat, sigma_hat), timesteps[i + 1:i + 2], sigmas[i + 1],
                           (model_kwargs, cond_fn, clip_denoised, cost))
            if progress is not None:
                progress(1)
    return x


def _heun_step(model, diffusion, x, at, next_t, sigma_next, args):
    """One step of Alg. 2 from (timestep, sigma) to sigma_next: Euler, then the trapezoidal correction unless
    sigma_next = 0. The denoiser D(x; sigma) is x_theta of the network input x * alpha = x / sqrt(1 + sigma^2)."""
    def denoised(x_hat, t, sigma):
        return _data_prediction(model, diffusion, x_hat / np.sqrt(1 + sigma**2), t, *args)

    t, sigma = at
    d = (x - denoised(x, t, sigma)) / sigma
    x_next = x + (sigma_next - sigma) * d
    if sigma_next == 0:
        return x_next
    d_next = (x_next - denoised(x_next, next_t[0], sigma_next)) / sigma_next
    return x + (sigma_next - sigma) * (d + d_next) / 2


def sampler_loop(spec: SamplerSpec):
    """The loop of a parsed sampler string, with the signature of the module docstring."""
    if spec.kind in ("ddpm", "ddim"):
        return ddpm_sample if spec.kind == "ddpm" else ddim_sample
    return functools.partial(dpm_solver_2m_sample if spec.kind == "dpm++2m" else heun_sample, steps=spec.steps)


def class_conditional(model, class_cond: bool):
    """Wrap an unconditional model so it ignores the labels that guidance needs (model_kwargs["y"]); any other
    model_kwargs (an upsampler's low_res) still reach it."""
    if class_cond:
        return model

    def unconditional(x, t, y=None, **kwargs):
        return model(x, t, **kwargs)

    return unconditional


def sample_seed(base_seed: int, index: int) -> int:
    """The seed of sample `index`: the same for every guidance scale, so scales are compared on the same noise."""
    return (int(base_seed) * 1_000_003 + int(index)) % (2**63)


def upsample_seed(base_seed: int, cell: str, index: int) -> int:
    """The seed of the upsampling of sample `index` of grid cell `cell` (its key): from (seed, cell, index) only, so an
    upsampled cell never depends on which other cells, shards or actors there are, and two cells upsample the same
    base seed with different noise."""
    digest = hashlib.blake2b(f"{int(base_seed)}:{cell}:{int(index)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % (2**63)


def sample_label(seed: int, num_classes: int) -> int:
    """The class of a sample, uniform at random as in the paper, from the sample's own seed."""
    g = torch.Generator().manual_seed(int(seed) ^ 0x5DEECE66D)
    return int(torch.randint(num_classes, (1,), generator=g))
