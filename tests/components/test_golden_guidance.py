"""Classifier guidance against openai/guided-diffusion: the cond_fn (the classifier sees the original timesteps of a
respaced process), condition_mean (DDPM) and condition_score (DDIM) at two scales, and whole DDIM (eta 0 and 1) and
DDPM trajectories replayed with the released run's own noise."""

import numpy as np
import pytest
import torch
from golden import GOLDEN_NETS, ReplayNoise, assert_close, assert_pmv, pmv_atol, t_

from components.diffusion import create_diffusion
from components.guidance import ClassifierGuidance, condition_mean, condition_score
from components.sampling import ddim_sample, ddpm_sample

RESPACINGS = ("25", "ddim10")
SCALES = {"s0.5": 0.5, "s4": 4.0}


def guidance_inputs(golden, name, key):
    z, net = golden.npz(f"{name}_guidance"), golden.net(name)
    d = create_diffusion(net.diffusion_config("linear"), key)
    return z, net, d, t_(z[f"{key}.x_t"]), t_(z[f"{key}.t"]), {"y": t_(z[f"{key}.y"])}


def reference_pmv(z, key) -> dict:
    return {k: t_(z[f"{key}.pmv.{k}"]) for k in ("mean", "variance", "log_variance", "pred_xstart")}


@pytest.mark.parametrize("key", RESPACINGS)
@pytest.mark.parametrize("name", GOLDEN_NETS)
def test_classifier_gradient_at_original_timesteps(golden, name, key):
    z, net, d, x_t, t, kwargs = guidance_inputs(golden, name, key)
    t_original = d.model_timesteps(t)
    assert t_original.tolist() == z[f"{key}.t_original"].tolist()
    with torch.no_grad():
        assert_close(net.classifier(x_t, t_original), z[f"{key}.classifier_logits"], atol=1e-5, what="logits")
    grad = ClassifierGuidance(net.classifier, 1.0)(x_t, t_original, **kwargs)
    ref = z[f"{key}.grad_log_prob"]
    assert_close(grad, ref, atol=1e-5 * np.abs(ref).max(), what=f"{name} {key} grad log p(y | x_t)")
    with torch.no_grad():
        pmv = d.p_mean_variance(net.unet, x_t, t, clip_denoised=True, model_kwargs=kwargs)
    assert_pmv(pmv, z, f"{key}.pmv", d, z[f"{key}.t"], f"{name} {key} p_mean_variance")


def assert_guidance_term(got: torch.Tensor, expected: np.ndarray, base: torch.Tensor, atol: torch.Tensor,
                         t: torch.Tensor, what: str):
    """The guided value, and the guidance term itself (guided - unguided, both from the same unguided base) on the
    rows where it is large enough to measure (t > 0: at t = 0 the variance is ~1e-8), to a tenth of the value's
    tolerance plus 1%: a sign or scale error fails the second even where the term is small."""
    assert_close(got, expected, atol=atol, rtol=1e-5, what=what)
    term, ref_term = got - base, t_(expected) - base
    rows = t > 0
    assert_close(term[rows], ref_term[rows], atol=0.1 * atol[rows], rtol=1e-2, what=f"{what} (guidance term)")


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("key", RESPACINGS)
@pytest.mark.parametrize("name", GOLDEN_NETS)
def test_condition_mean_and_score(golden, name, key, scale):
    z, net, d, x_t, t, kwargs = guidance_inputs(golden, name, key)
    pmv = reference_pmv(z, key)  # the released p_mean_variance: this test isolates the guidance step
    cond_fn = ClassifierGuidance(net.classifier, SCALES[scale])
    atol = pmv_atol(d, z[f"{key}.t"], x_t.ndim)
    guided = condition_mean(d, cond_fn, pmv, x_t, t, kwargs)
    assert_guidance_term(guided["mean"], z[f"{key}.condition_mean.{scale}.mean"], pmv["mean"], atol["mean"], t,
                         f"{name} {key} condition_mean {scale}")
    scored = condition_score(d, cond_fn, pmv, x_t, t, kwargs)
    for k in ("mean", "pred_xstart"):
        assert_guidance_term(scored[k], z[f"{key}.condition_score.{scale}.{k}"], pmv[k], atol[k], t,
                             f"{name} {key} condition_score {scale} {k}")


class Recorder(torch.nn.Module):
    """The UNet, recording the x_t and t it is called with: the trajectory the loop actually took."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, []

    def forward(self, x, t, **kwargs):
        self.calls.append((x.detach().clone(), t.clone()))
        return self.net(x, t, **kwargs)


RUNS = {  # run name in the golden file: (loop, respacing, eta, guidance scale)
    "ddim10_eta0_unguided": (ddim_sample, "ddim10", 0.0, None),
    "ddim10_eta0_guided_s4": (ddim_sample, "ddim10", 0.0, 4.0),
    "ddim10_eta1_guided_s2": (ddim_sample, "ddim10", 1.0, 2.0),
    "ddpm25_unguided": (ddpm_sample, "25", 0.0, None),
    "ddpm25_guided_s2": (ddpm_sample, "25", 0.0, 2.0),
}
TRAJECTORIES = [("grey16", run) for run in RUNS] + [("rgb32", run) for run in ("ddim10_eta0_unguided",
                                                                                "ddim10_eta0_guided_s4")]


@pytest.mark.parametrize("name,run", TRAJECTORIES)
def test_whole_trajectory(golden, name, run):
    z, net = golden.npz(f"{name}_trajectories"), golden.net(name)
    loop, respacing, eta, scale = RUNS[run]
    ref = {k.split(".", 1)[1]: v for k, v in z.items() if k.startswith(f"{run}.")}
    d = create_diffusion(net.diffusion_config("linear"), respacing)
    noise = ReplayNoise(ref["x_T"], ref["step_noise"])
    model = Recorder(net.unet)
    cond_fn = None if scale is None else ClassifierGuidance(net.classifier, scale)
    x_0 = loop(model, d, noise, {"y": t_(ref["y"])}, cond_fn=cond_fn, clip_denoised=True, eta=eta)
    assert not noise.queue, "the loop drew a different number of noise tensors than the released one"
    assert [int(t[0]) for _, t in model.calls] == ref["t_original_sequence"].tolist()
    visited = torch.stack([x for x, _ in model.calls[1:]])  # step k starts from the sample of step k - 1
    assert_close(visited, ref["samples"][:-1], atol=1e-4, what=f"{name} {run} intermediate samples")
    assert_close(x_0, ref["x_0"], atol=1e-4, what=f"{name} {run} x_0")
