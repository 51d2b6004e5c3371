"""The diffusion process against openai/guided-diffusion: schedules, respacing, q_sample, the training losses
(hybrid, RESCALED_KL, the unscaled bound) and p_mean_variance, at full and respaced timesteps, on both golden networks.
Tolerances are those of shared/golden/README.md (about 10x the released code's own 1-vs-2-thread spread)."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from golden import GOLDEN_NETS, assert_close, assert_pmv, t_

from components.diffusion import create_diffusion, get_named_beta_schedule
from components.losses import training_losses, vb_terms_bpd

SCHEDULES = ("linear", "cosine")
RESPACINGS = {"25": "25", "ddim10": "ddim10", "10_5_3": "10,5,3", "ddim50": "ddim50"}


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_schedules_and_respacing_maps(golden, schedule):
    ref = golden.npz("respacing")
    assert np.allclose(get_named_beta_schedule(schedule, 1000), ref[f"{schedule}.betas"], rtol=0, atol=1e-15)
    cfg = golden.net("grey16").diffusion_config(schedule)
    for key, respacing in RESPACINGS.items():
        d = create_diffusion(cfg, respacing)
        assert d.timestep_map.tolist() == ref[f"{schedule}.{key}.timestep_map"].tolist(), respacing
        assert np.allclose(d.betas, ref[f"{schedule}.{key}.betas"], rtol=0, atol=1e-12), respacing
        assert np.allclose(d.alphas_cumprod, ref[f"{schedule}.{key}.alphas_cumprod"], rtol=0, atol=1e-12), respacing


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("name", GOLDEN_NETS)
def test_q_sample_and_network_input(golden, name, schedule):
    z, net = golden.npz(f"{name}_diffusion"), golden.net(name)
    d = create_diffusion(net.diffusion_config(schedule))
    assert np.allclose(d.betas, z[f"{schedule}.betas"], rtol=0, atol=1e-15)
    assert np.allclose(d.alphas_cumprod, z[f"{schedule}.alphas_cumprod"], rtol=0, atol=1e-12)
    assert_close(t_(z["x0"]), z["x0_uint8"].astype(np.float32) / 127.5 - 1, atol=1e-7, what="x0 from uint8")
    x_t = d.q_sample(t_(z["x0"]), t_(z["t"]), noise=t_(z["noise"]))
    assert_close(x_t, z[f"{schedule}.q_sample"], atol=1e-6, what=f"{name} {schedule} q_sample")


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("name", GOLDEN_NETS)
def test_training_losses(golden, name, schedule):
    z, net = golden.npz(f"{name}_diffusion"), golden.net(name)
    x0, t, noise, kwargs = t_(z["x0"]), t_(z["t"]), t_(z["noise"]), {"y": t_(z["y"])}
    cfg = net.diffusion_config(schedule)
    d = create_diffusion(cfg)
    with torch.no_grad():
        hybrid = training_losses(d, net.unet, x0, t, kwargs, noise=noise)
        for key in ("loss", "mse", "vb"):
            assert_close(hybrid[key], z[f"{schedule}.hybrid.{key}"], atol=0, rtol=1e-5, what=f"hybrid {key}")
        # use_kl=True is the released LossType.RESCALED_KL: the bound term times T
        kl_diffusion = create_diffusion(replace(cfg, use_kl=True))
        rescaled = training_losses(kl_diffusion, net.unet, x0, t, kwargs, noise=noise)
        assert_close(rescaled["loss"], z[f"{schedule}.rescaled_kl.loss"], atol=0, rtol=1e-5, what="rescaled_kl")
        # the bound itself (LossType.KL): the network's whole output, nothing detached
        x_t = d.q_sample(x0, t, noise=noise)
        bound = vb_terms_bpd(d, net.unet(x_t, t, **kwargs), x0, x_t, t)
        assert_close(bound, z[f"{schedule}.kl_unscaled.loss"], atol=0, rtol=1e-5, what="kl_unscaled")


@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("name", GOLDEN_NETS)
def test_p_mean_variance(golden, name, schedule, clip):
    z, net = golden.npz(f"{name}_diffusion"), golden.net(name)
    d = create_diffusion(net.diffusion_config(schedule))
    x_t, t = t_(z[f"{schedule}.q_sample"]), t_(z["t"])
    with torch.no_grad():
        out = d.p_mean_variance(net.unet, x_t, t, clip_denoised=clip, model_kwargs={"y": t_(z["y"])})
    assert_pmv(out, z, f"{schedule}.pmv_clip{int(clip)}", d, z["t"], f"{name} {schedule} clip={clip}")


@pytest.mark.parametrize("key", RESPACINGS)
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("name", GOLDEN_NETS)
def test_respaced_p_mean_variance(golden, name, schedule, key):
    """A respaced process: the network sees the original timesteps, the variance uses the respaced betas."""
    z, net = golden.npz(f"{name}_diffusion"), golden.net(name)
    prefix = f"{schedule}.respaced.{key}"
    d = create_diffusion(net.diffusion_config(schedule), RESPACINGS[key])
    t, y = t_(z[f"{prefix}.t"]), t_(z[f"{prefix}.y"])
    assert d.model_timesteps(t).tolist() == z[f"{prefix}.t_original"].tolist()
    n = len(t)
    x_t = d.q_sample(t_(z["x0"][:n]), t, noise=t_(z["noise"][:n]))
    assert_close(x_t, z[f"{prefix}.x_t"], atol=1e-6, what=f"{prefix} q_sample")
    with torch.no_grad():
        out = d.p_mean_variance(net.unet, x_t, t, clip_denoised=True, model_kwargs={"y": y})
    assert_pmv(out, z, prefix, d, z[f"{prefix}.t"], f"{name} {prefix}")
