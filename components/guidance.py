"""Classifier guidance (Dhariwal & Nichol 2021, Sec. 4).

``ClassifierGuidance`` is the cond_fn: s * grad_{x_t} log p_phi(y | x_t, t), with the scale s given per sample so one
batch may mix guidance scales. It is composed into a sampler through:

* :func:`condition_mean` (DDPM, Alg. 1): mu + s Sigma grad log p(y | x_t);
* :func:`condition_score` (DDIM, Alg. 2): eps_hat = eps - sqrt(1 - alpha_bar_t) s grad log p(y | x_t), from which
  x_0 and the posterior mean are recomputed.

Rows whose guidance term is exactly zero (scale 0) keep the unguided prediction, so scale 0 is exactly unguided.
"""

import torch
import torch.nn.functional as F

from .diffusion import extract


class ClassifierGuidance:
    """cond_fn(x_t, t, y) -> scale * d/dx_t log softmax(classifier(x_t, t))[y], per sample. t: original timesteps."""

    def __init__(self, classifier, scales):
        self.classifier = classifier
        self.scales = scales

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, **_) -> torch.Tensor:
        if y is None:
            raise ValueError("classifier guidance needs target labels y")
        scales = torch.as_tensor(self.scales, dtype=torch.float32, device=x.device).expand(x.shape[0])
        grad = torch.zeros_like(x, dtype=torch.float32)
        active = scales != 0
        if not bool(active.any()):
            return grad
        with torch.enable_grad():
            x_in = x[active].detach().float().requires_grad_(True)
            logits = self.classifier(x_in, t[active])
            log_probs = F.log_softmax(logits.float(), dim=-1)
            selected = log_probs[torch.arange(len(logits), device=x.device), y[active].view(-1)]
            (g,) = torch.autograd.grad(selected.sum(), x_in)
        grad[active] = g.float() * scales[active].view(-1, *([1] * (x.ndim - 1)))
        return grad


def _unguided_rows(gradient: torch.Tensor) -> torch.Tensor:
    return (gradient == 0).flatten(1).all(dim=1).view(-1, *([1] * (gradient.ndim - 1)))


def condition_mean(diffusion, cond_fn, p_mean_var: dict, x, t, model_kwargs=None) -> dict:
    """DDPM guidance: the mean moves by Sigma * gradient."""
    gradient = cond_fn(x, diffusion.model_timesteps(t), **(model_kwargs or {}))
    out = dict(p_mean_var)
    out["mean"] = p_mean_var["mean"].float() + p_mean_var["variance"] * gradient.float()
    return out


def condition_score(diffusion, cond_fn, p_mean_var: dict, x, t, model_kwargs=None) -> dict:
    """DDIM guidance: the noise prediction moves by -sqrt(1 - alpha_bar) * gradient."""
    gradient = cond_fn(x, diffusion.model_timesteps(t), **(model_kwargs or {})).float()
    alpha_bar = extract(diffusion.alphas_cumprod, t, x.ndim)
    eps = diffusion.predict_eps_from_xstart(x, t, p_mean_var["pred_xstart"])
    eps = eps - torch.sqrt(1 - alpha_bar) * gradient
    pred_xstart = diffusion.predict_xstart_from_eps(x, t, eps)
    mean, _, _ = diffusion.q_posterior_mean_variance(pred_xstart, x, t)
    keep = _unguided_rows(gradient)
    out = dict(p_mean_var)
    out["pred_xstart"] = torch.where(keep, p_mean_var["pred_xstart"], pred_xstart)
    out["mean"] = torch.where(keep, p_mean_var["mean"], mean)
    return out
