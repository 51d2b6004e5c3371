"""Training losses, per example (Nichol & Dhariwal 2021, Sec. 3.1 "hybrid objective"; Dhariwal & Nichol 2021, Sec. 4).

L_hybrid = L_simple + lambda L_vlb, where L_simple = ||eps - eps_theta(x_t, t)||^2 (mean over pixels) and L_vlb is
the variational bound term in bits per dimension computed with the predicted mean *detached*, so L_vlb trains only the
variance (lambda = 1 as released; with ``rescale_learned_sigmas`` the term is scaled by T / 1000). With ``use_kl`` the
loss is the whole bound L_vlb = sum_t L_t, estimated from one uniform t as T * L_t (the released RESCALED_KL).
The noisy classifier is trained with cross-entropy on x_t ~ q(x_t | x_0) at uniform t.
Every function returns per-example values [B]; the caller weights, reduces and logs.
"""

import math

import torch
import torch.nn.functional as F

from .diffusion import GaussianDiffusion


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=list(range(1, x.ndim)))


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def discretized_gaussian_log_likelihood(x, means, log_scales) -> torch.Tensor:
    """Log-likelihood of images in [-1, 1] quantised to 256 bins under N(means, exp(log_scales)^2), elementwise."""
    centered_x = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered_x + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered_x - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


def vb_terms_bpd(diffusion: GaussianDiffusion, model_output, x_start, x_t, t, clip_denoised=False) -> torch.Tensor:
    """L_t in bits/dim: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) for t > 0, decoder NLL at t = 0. Shape [B]."""
    true_mean, _, true_log_variance = diffusion.q_posterior_mean_variance(x_start, x_t, t)
    out = diffusion.p_mean_variance(None, x_t, t, clip_denoised=clip_denoised, model_output=model_output)
    kl = mean_flat(normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])) / math.log(2.0)
    nll = -discretized_gaussian_log_likelihood(x_start, out["mean"], 0.5 * out["log_variance"])
    nll = mean_flat(nll) / math.log(2.0)
    return torch.where(t == 0, nll, kl)


def training_losses(diffusion: GaussianDiffusion, model, x_start, t, model_kwargs=None, noise=None) -> dict:
    """Per-example terms {"loss", "mse", and with learned sigma "vb"}; with use_kl, "loss" is T * L_t (the bound)."""
    noise = torch.randn_like(x_start) if noise is None else noise
    x_t = diffusion.q_sample(x_start, t, noise=noise)
    model_output = model(x_t, diffusion.model_timesteps(t), **(model_kwargs or {})).float()
    cfg = diffusion.config
    if cfg.use_kl:
        vb = vb_terms_bpd(diffusion, model_output, x_start, x_t, t)
        return {"loss": vb * diffusion.num_timesteps, "vb": vb}
    terms = {}
    if cfg.learn_sigma:
        eps_out, var_values = torch.split(model_output, x_start.shape[1], dim=1)
        frozen = torch.cat([eps_out.detach(), var_values], dim=1)  # L_vlb must not move the mean
        terms["vb"] = vb_terms_bpd(diffusion, frozen, x_start, x_t, t)
        if cfg.rescale_learned_sigmas:
            terms["vb"] = terms["vb"] * (diffusion.num_timesteps / 1000.0)
        model_output = eps_out
    target = x_start if cfg.predict_xstart else noise
    terms["mse"] = mean_flat((target - model_output) ** 2)
    terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
    return terms


def classifier_losses(diffusion: GaussianDiffusion, classifier, x_start, labels, t, noise=None) -> dict:
    """Noisy-classifier terms on x_t ~ q(x_t | x_0): per-example cross-entropy, top-1 and top-5 correctness."""
    x_t = diffusion.q_sample(x_start, t, noise=noise)
    logits = classifier(x_t, diffusion.model_timesteps(t)).float()
    return {"loss": F.cross_entropy(logits, labels, reduction="none"), **topk_correct(logits, labels)}


def topk_correct(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """Per-example 0/1 correctness for top-1 and top-k (k = min(5, classes))."""
    k = min(5, logits.shape[-1])
    top = logits.topk(k, dim=-1).indices
    hit = top == labels[:, None]
    return {"top1": hit[:, 0].float(), f"top{k}": hit.any(dim=-1).float()}
