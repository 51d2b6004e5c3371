import math

import numpy as np
import pytest
import torch

from components.config import ConfigError, DiffusionConfig
from components.diffusion import create_diffusion, get_named_beta_schedule, space_timesteps
from components.losses import training_losses


def test_linear_schedule_closed_form():
    betas = get_named_beta_schedule("linear", 1000)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    assert np.allclose(np.diff(betas), (0.02 - 1e-4) / 999)
    assert get_named_beta_schedule("linear", 250)[-1] == pytest.approx(0.08)  # scaled by 1000 / T


def test_cosine_schedule_alpha_bar_closed_form():
    T = 1000
    ac = np.cumprod(1 - get_named_beta_schedule("cosine", T))
    f = lambda t: math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    expected = np.array([f(t + 1) / f(0) for t in range(T)])
    unclipped = get_named_beta_schedule("cosine", T) < 0.999
    assert np.allclose(ac[unclipped], expected[unclipped], rtol=1e-9, atol=1e-12)
    assert get_named_beta_schedule("cosine", T).max() == pytest.approx(0.999)


def test_posterior_closed_forms():
    d = create_diffusion(DiffusionConfig(steps=100))
    ac, acp, b = d.alphas_cumprod, d.alphas_cumprod_prev, d.betas
    assert np.allclose(d.posterior_variance, b * (1 - acp) / (1 - ac))
    # the posterior mean of x_t = sqrt(ac) x0 (no noise) is sqrt(acp) x0
    assert np.allclose(d.posterior_mean_coef1 + d.posterior_mean_coef2 * np.sqrt(ac), np.sqrt(acp))
    assert d.posterior_log_variance_clipped[0] == d.posterior_log_variance_clipped[1]


def test_respacing_maps():
    assert space_timesteps(1000, "ddim25") == list(range(0, 1000, 40))
    assert len(space_timesteps(1000, "250")) == 250
    steps = space_timesteps(300, "10,15,20")
    assert len(steps) == 45
    assert [s for s in steps if s < 100][:2] == [0, 11] and steps[-1] == 299
    assert space_timesteps(10, "10") == list(range(10))
    with pytest.raises(ConfigError):
        space_timesteps(10, "ddim11")
    with pytest.raises(ConfigError):
        space_timesteps(100, "200")


def test_respaced_process_keeps_alpha_bar_and_maps_timesteps():
    cfg = DiffusionConfig(steps=1000, noise_schedule="cosine")
    full, spaced = create_diffusion(cfg), create_diffusion(cfg, "ddim50")
    kept = space_timesteps(1000, "ddim50")
    assert np.allclose(spaced.alphas_cumprod, full.alphas_cumprod[kept])
    assert spaced.model_timesteps(torch.tensor([0, 49])).tolist() == [0, 980]
    assert spaced.model_timesteps(torch.tensor([1])).dtype == torch.long


def test_q_sample_moments():
    d = create_diffusion(DiffusionConfig(steps=1000))
    torch.manual_seed(0)
    x0 = torch.full((20000, 1, 1, 1), 0.7)
    t = torch.full((20000,), 300)
    xt = d.q_sample(x0, t)
    assert xt.mean().item() == pytest.approx(0.7 * math.sqrt(d.alphas_cumprod[300]), abs=0.01)
    assert xt.var().item() == pytest.approx(1 - d.alphas_cumprod[300], rel=0.03)


def test_learned_range_variance_interpolates_between_bounds():
    d = create_diffusion(DiffusionConfig(steps=100, learn_sigma=True))
    t = torch.tensor([10, 10])
    v = torch.tensor([-1.0, 1.0]).view(2, 1, 1, 1)
    var, log_var = d.model_variance(v, t, 4)
    assert log_var[0].item() == pytest.approx(d.posterior_log_variance_clipped[10], rel=1e-6)
    assert log_var[1].item() == pytest.approx(math.log(d.betas[10]), rel=1e-6)


def test_fixed_variances_closed_form():
    """learn_sigma=False as released: "fixed large" is beta_t, except at t = 0 where it is the posterior variance of
    t = 1 (beta_0 would be ~0); "fixed small" is the posterior variance, its log clipped at t = 0 the same way."""
    betas = get_named_beta_schedule("linear", 100)
    ac = np.cumprod(1 - betas)
    posterior_1 = betas[1] * (1 - ac[0]) / (1 - ac[1])  # beta~_1 = beta_1 (1 - abar_0) / (1 - abar_1)
    t = torch.tensor([0, 1, 50, 99])
    large, log_large = create_diffusion(DiffusionConfig(steps=100, learn_sigma=False)).model_variance(None, t, 2)
    expected = np.array([posterior_1, betas[1], betas[50], betas[99]])
    assert np.allclose(large.flatten().numpy(), expected, rtol=1e-6, atol=0)
    assert np.allclose(log_large.flatten().numpy(), np.log(expected), rtol=1e-6, atol=0)
    small, log_small = create_diffusion(DiffusionConfig(steps=100, learn_sigma=False, sigma_small=True)).model_variance(
        None, t, 2)
    beta_tilde = [0.0] + [betas[i] * (1 - ac[i - 1]) / (1 - ac[i]) for i in (1, 50, 99)]
    assert np.allclose(small.flatten().numpy(), beta_tilde, rtol=1e-6, atol=0)
    assert np.allclose(log_small.flatten().numpy(), np.log([posterior_1, *beta_tilde[1:]]), rtol=1e-6, atol=0)


def test_rescale_timesteps_maps_to_the_original_scale():
    """Released _WrappedModel: with rescale_timesteps the network sees timestep_map[t] * 1000 / (original T)."""
    d = create_diffusion(DiffusionConfig(steps=500, rescale_timesteps=True), "ddim10")  # map: 0, 50, ..., 450
    assert d.model_timesteps(torch.tensor([0, 1, 9])).tolist() == [0.0, 100.0, 900.0]


def test_predict_xstart_reads_the_output_as_x0():
    """With predict_xstart the network's output is x_0 itself: the posterior mean is coef1 x_0 + coef2 x_t, and the
    loss target is x_start (an exact prediction has zero loss)."""
    d = create_diffusion(DiffusionConfig(steps=100, learn_sigma=False, predict_xstart=True))
    torch.manual_seed(0)
    x_t, x0, t = torch.randn(2, 1, 4, 4), torch.rand(2, 1, 4, 4) - 0.5, torch.tensor([10, 60])
    out = d.p_mean_variance(lambda x, ts: x0, x_t, t, clip_denoised=True)
    betas = get_named_beta_schedule("linear", 100)
    ac = np.cumprod(1 - betas)
    i, j = t.numpy(), t.numpy() - 1
    coef1 = torch.from_numpy(betas[i] * np.sqrt(ac[j]) / (1 - ac[i])).float().view(2, 1, 1, 1)
    coef2 = torch.from_numpy((1 - ac[j]) * np.sqrt(1 - betas[i]) / (1 - ac[i])).float().view(2, 1, 1, 1)
    expected = coef1 * x0 + coef2 * x_t
    assert torch.equal(out["pred_xstart"], x0)
    assert torch.allclose(out["mean"], expected, atol=1e-6)
    assert training_losses(d, lambda x, ts: x0, x0, t)["mse"].abs().max() == 0
