"""Classifier guidance (Dhariwal & Nichol 2021, Sec. 4), classifier-free guidance (Ho & Salimans 2022) and
autoguidance (Karras et al. 2024).

``ClassifierGuidance`` is the cond_fn: s * grad_{x_t} log p_phi(y | x_t, t), with the scale s given per sample so one
batch may mix guidance scales. It is composed into a sampler through:

* :func:`condition_mean` (DDPM, Alg. 1): mu + s Sigma grad log p(y | x_t);
* :func:`condition_score` (DDIM, Alg. 2): eps_hat = eps - sqrt(1 - alpha_bar_t) s grad log p(y | x_t), from which
  x_0 and the posterior mean are recomputed.

Rows whose guidance term is exactly zero (scale 0, or outside their guidance interval of noise levels) keep the
unguided prediction, so scale 0 is exactly unguided; the classifier never runs on them.

``ClassifierFreeGuidance`` wraps the diffusion model instead (every sampler takes it as the model): eps = eps_c +
s (eps_c - eps_u), with eps_c = eps(x, t, y), eps_u = eps(x, t, null) and the scale s per sample, as Ho & Salimans
write it ((1 + s) eps_c - s eps_u). One scale convention for every method: s = 0 is the conditional model, s > 0
guides (s = -1 is the unconditional model). Both methods at once: the wrapped model with a ClassifierGuidance
cond_fn, whose term is added to the CFG eps. ``Autoguidance`` wraps the model as CFG does, with a weaker network of
the same kind (smaller, less trained, or an earlier checkpoint) in place of the unconditional branch: eps_main +
s (eps_main - eps_guide). guided.py composes them for a batch of grid cells.
"""

import numpy as np
import torch
import torch.nn.functional as F

from .compute import SampleCost
from .diffusion import extract, get_named_beta_schedule


class ClassifierGuidance:
    """cond_fn(x_t, t, y) -> scale * d/dx_t log softmax(classifier(x_t, t))[y], per sample. t: original timesteps.

    ``interval`` = (sigma_lo, sigma_hi), numbers or one per row: a row is guided only while its noise level sigma_t =
    sqrt((1 - abar_t) / abar_t) lies in [sigma_lo, sigma_hi] (Kynkaanniemi et al. 2024); None guides at every level.
    ``sigmas`` gives sigma_t per trained timestep (trained_sigmas), needed with an interval. The classifier runs only
    on the rows that are guided at this step (scale != 0, inside their interval); ``cost`` counts those passes."""

    def __init__(self, classifier, scales, interval=None, sigmas=None, cost: SampleCost | None = None):
        if interval is not None and sigmas is None:
            raise ValueError("a guidance interval needs the trained noise levels: pass sigmas=trained_sigmas(config)")
        self.classifier = classifier
        self.scales = scales
        self.interval = interval
        self.sigmas = None if sigmas is None else torch.as_tensor(np.asarray(sigmas, dtype=np.float64))
        self.cost = cost

    def guided_rows(self, t: torch.Tensor, n: int) -> torch.Tensor:
        """[n] bool: the rows guided at original timesteps t."""
        scales = torch.as_tensor(self.scales, dtype=torch.float32, device=t.device).expand(n)
        return (scales != 0) & inside_interval(t, n, self.interval, self.sigmas)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, **_) -> torch.Tensor:
        if y is None:
            raise ValueError("classifier guidance needs target labels y")
        scales = torch.as_tensor(self.scales, dtype=torch.float32, device=x.device).expand(x.shape[0])
        grad = torch.zeros_like(x, dtype=torch.float32)
        active = self.guided_rows(t, x.shape[0])
        if self.cost is not None:
            self.cost.add_classifier_passes(active)
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


def inside_interval(t: torch.Tensor, n: int, interval, sigmas) -> torch.Tensor:
    """[n] bool: rows whose noise level sigma_t lies in their interval (lo, hi), numbers or one per row; None: all."""
    if interval is None:
        return torch.ones(n, dtype=torch.bool, device=t.device)
    if t.is_floating_point():
        raise ValueError("guidance intervals need integer timesteps (rescale_timesteps=False, as released)")
    sigma = sigmas[t.cpu()].expand(n).to(t.device)
    lo, hi = (torch.as_tensor(b, dtype=torch.float64, device=t.device).expand(n) for b in interval)
    return (lo <= sigma) & (sigma <= hi)


class ClassifierFreeGuidance:
    """The diffusion model with classifier-free guidance, called as the model: (x_t, t, y) -> its output with the eps
    channels replaced by eps_c + s (eps_c - eps_u) per row (s: ``scales``, a number or one per row). A row's
    conditional and unconditional predictions come from one batched forward pass; its learned variance channels come
    from the conditional branch. Rows at s = 0, or outside their ``interval`` of noise levels (as in
    ClassifierGuidance; ``sigmas`` per trained timestep), take the conditional pass only, rows at s = -1 the
    unconditional pass only (variance included: that row is the unconditional model); ``cost`` counts the second
    pass of the others. ``null_label``: the UNet's null class (UNetModel.null_label). Tensors among the other model
    kwargs (an upsampler's low_res) hold one entry per row and follow their rows into both passes (per_row)."""

    def __init__(self, model, scales, null_label: int, interval=None, sigmas=None, cost: SampleCost | None = None):
        if interval is not None and sigmas is None:
            raise ValueError("a guidance interval needs the trained noise levels: pass sigmas=trained_sigmas(config)")
        self.model, self.scales, self.null_label, self.cost = model, scales, null_label, cost
        self.interval = interval
        self.sigmas = None if sigmas is None else torch.as_tensor(np.asarray(sigmas, dtype=np.float64))

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        if y is None:
            raise ValueError("classifier-free guidance needs target labels y")
        n, channels = x.shape[0], x.shape[1]
        # the weight of the eps_u + w (eps_c - eps_u) form, w = 1 + s (summed in float64, as a Python float would be):
        # the arithmetic of the form below, which equals eps_c + s (eps_c - eps_u)
        w = (1 + torch.as_tensor(self.scales, dtype=torch.float64)).to(torch.float32).to(x.device).expand(n)
        uncond = (w != 1) & inside_interval(t, n, self.interval, self.sigmas)
        cond = ~uncond | (w != 0)
        both = cond & uncond
        if self.cost is not None:
            self.cost.add_network_evals(both)
        # one forward pass: the conditional rows, then the unconditional ones (all rows in order when only one kind)
        rows = torch.cat([torch.nonzero(cond).view(-1), torch.nonzero(uncond).view(-1)])
        labels = torch.cat([y[cond], torch.full_like(y[uncond], self.null_label)])
        out = self.model(x[rows], t[rows], y=labels, **per_row(kwargs, rows, n))
        num_cond = int(cond.sum())
        guided = out.new_empty((n, *out.shape[1:]))
        guided[cond] = out[:num_cond]
        guided[uncond & ~cond] = out[num_cond:][~cond[uncond]]
        eps_c, eps_u = guided[both][:, :channels], out[num_cond:][cond[uncond]][:, :channels]
        weight = w[both].view(-1, *([1] * (x.ndim - 1))).to(eps_u.dtype)
        guided[both, :channels] = eps_u + weight * (eps_c - eps_u)
        return guided


def per_row(model_kwargs: dict, rows: torch.Tensor, n: int) -> dict:
    """model_kwargs for the batch x[rows]: every tensor in them holds one entry per row of x (n rows; an upsampler's
    low_res, as the label), so it is indexed by the same rows, and a row's own low-resolution image goes with it
    into both of its passes. Anything else passes through unchanged."""
    out = {}
    for key, value in model_kwargs.items():
        if isinstance(value, torch.Tensor):
            if value.ndim == 0 or value.shape[0] != n:
                raise ValueError(f"model_kwargs[{key!r}] has shape {tuple(value.shape)}, not one entry per row of "
                                 f"the batch ({n})")
            value = value[rows]
        out[key] = value
    return out


class Autoguidance:
    """The diffusion model guided by a weaker version of itself (Karras et al. 2024, "Guiding a diffusion model with
    a bad version of itself"; EDM2's generate_images.py), called as the model: the eps channels become eps_main +
    s (eps_main - eps_guide) per row, written as eps_guide + w (eps_main - eps_guide) with w = 1 + s, the form EDM2
    uses for D (the combination is affine, so it is the same in x0 as in eps). The guide is conditioned on the same
    label and runs only on the rows with s != 0 inside their ``interval``; the variance channels come from the main
    model; ``cost`` counts the guide's evaluations apart from the main model's (it is smaller)."""

    def __init__(self, model, guide, scales, interval=None, sigmas=None, cost: SampleCost | None = None):
        if interval is not None and sigmas is None:
            raise ValueError("a guidance interval needs the trained noise levels: pass sigmas=trained_sigmas(config)")
        self.model, self.guide, self.scales, self.cost = model, guide, scales, cost
        self.interval = interval
        self.sigmas = None if sigmas is None else torch.as_tensor(np.asarray(sigmas, dtype=np.float64))

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        n, channels = x.shape[0], x.shape[1]
        w = (1 + torch.as_tensor(self.scales, dtype=torch.float64)).to(torch.float32).to(x.device).expand(n)
        rows = (w != 1) & inside_interval(t, n, self.interval, self.sigmas)
        if self.cost is not None:
            self.cost.add_guide_evals(rows)
        out = self.model(x, t, y=y, **kwargs)
        if not bool(rows.any()):
            return out
        labels = None if y is None else y[rows]
        eps_g = self.guide(x[rows], t[rows], y=labels, **per_row(kwargs, rows, n))[:, :channels]
        eps_m = out[rows][:, :channels]
        weight = w[rows].view(-1, *([1] * (x.ndim - 1))).to(eps_m.dtype)
        guided = out.clone()
        guided[rows, :channels] = eps_g.to(eps_m.dtype) + weight * (eps_m - eps_g.to(eps_m.dtype))
        return guided


def trained_sigmas(config) -> np.ndarray:
    """sigma_t = sqrt((1 - abar_t) / abar_t) of every trained timestep t of a DiffusionConfig's schedule."""
    alpha_bar = np.cumprod(1.0 - get_named_beta_schedule(config.noise_schedule, config.steps))
    return np.sqrt((1 - alpha_bar) / alpha_bar)


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
