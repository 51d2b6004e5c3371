"""DPM-Solver++(2M), EDM's Heun sampler and DDIM against the exact probability-flow ODE of Gaussian data.

For x_0 ~ N(mu, s^2) per pixel under the ADM linear schedule, E[eps | x_t] is known in closed form, so an analytic
"network" returns the exact eps. In x / alpha_t with sigma_t = sqrt((1 - abar_t) / abar_t), the PF-ODE is
dx/dsigma = eps = sigma (x - mu) / (s^2 + sigma^2): (x - mu) / sqrt(s^2 + sigma^2) stays constant, and the map from
x_T to x_0 is affine. With a constant guidance gradient g, DDIM's conditional score eps - sqrt(1 - abar) g adds
-g sigma / sqrt(1 + sigma^2), and the invariant moves by g [log(sqrt(1 + sigma^2) + sqrt(s^2 + sigma^2))] from sigma_T
down to 0. The solvers must converge to these maps: the error falls ~4x per doubling of the steps (second order),
DDIM's ~2x (first order).
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

from components.compute import SampleCost
from components.config import DiffusionConfig
from components.config.grid import parse_sampler
from components.diffusion import create_diffusion
from components.sampling import (
    SampleNoise,
    ddim_sample,
    dpm_solver_2m_sample,
    heun_sample,
    karras_sigmas,
    sampler_loop,
    solver_timesteps,
)

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = DiffusionConfig(steps=1000, noise_schedule="linear", learn_sigma=True)
MU, S = 0.3, 0.5
SHAPE = (3, 4, 4)


class GaussianEps(nn.Module):
    """The exact eps(x_t, t) = sqrt(1 - abar)(x_t - sqrt(abar) mu) / (abar s^2 + 1 - abar) for N(mu, s^2) data, in the
    learned-sigma layout [eps, v] (v = 0), so the samplers must take the eps half."""

    def __init__(self, alphas_cumprod: np.ndarray):
        super().__init__()
        self.alpha_bar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)

    def forward(self, x, t, y=None):
        a = self.alpha_bar[t].view(-1, 1, 1, 1)
        eps = (1 - a).sqrt() * (x.double() - a.sqrt() * MU) / (a * S**2 + 1 - a)
        return torch.cat([eps.float(), torch.zeros_like(x)], dim=1)


def exact_x0(x_T: torch.Tensor, alpha_bar_T: float, g: float = 0.0) -> torch.Tensor:
    """The PF-ODE's x_0 from x_T at abar_T (module docstring), in float64."""
    sigma2 = (1 - alpha_bar_T) / alpha_bar_T
    u = (x_T.double() / math.sqrt(alpha_bar_T) - MU) / math.sqrt(S**2 + sigma2)
    u = u + g * (math.log(math.sqrt(1 + sigma2) + math.sqrt(S**2 + sigma2)) - math.log(1 + S))
    return MU + S * u


FULL = create_diffusion(CFG, "")
NET = GaussianEps(FULL.alphas_cumprod)
SIGMAS = np.sqrt((1 - FULL.alphas_cumprod) / FULL.alphas_cumprod)
TOP = int(np.argmin(np.abs(np.log(SIGMAS / 80.0))))  # the solvers start at the trained sigma nearest EDM's 80


def _noise():
    return SampleNoise([1, 2, 3, 4], SHAPE)


def _constant_gradient(g):
    return None if g == 0 else (lambda x, t, y=None: torch.full_like(x, g))


def _error(loop, steps: int, g: float, sigma_max: float = 80.0) -> float:
    """Max |x_0 - exact| after `steps`: ODE solvers on the full process from the trained sigma nearest sigma_max,
    DDIM on the process respaced to `steps` (from T - 1)."""
    if loop is ddim_sample:
        diffusion, kwargs, start = create_diffusion(CFG, str(steps)), {}, -1  # "N": N timesteps from T - 1 down to 0
    else:
        diffusion, kwargs = FULL, {"steps": steps, "sigma_max": sigma_max}
        start = TOP if sigma_max == 80.0 else -1
    x_0 = loop(NET, diffusion, _noise(), cond_fn=_constant_gradient(g), clip_denoised=False, **kwargs)
    expected = exact_x0(_noise().draw(), diffusion.alphas_cumprod[start], g)
    return float((x_0.double() - expected).abs().max())


@pytest.mark.parametrize("g", [0.0, 0.7])
@pytest.mark.parametrize("loop,order", [(dpm_solver_2m_sample, 2), (heun_sample, 2), (ddim_sample, 1)])
def test_converges_to_the_exact_ode_solution_at_its_order(loop, order, g):
    errors = [_error(loop, n, g) for n in (20, 40, 80)]
    orders = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    assert all(order - 0.3 < p < order + 0.6 for p in orders), (errors, orders)
    assert errors[-1] < (2e-2 if order == 2 else 1e-1), errors


@pytest.mark.parametrize("loop", [dpm_solver_2m_sample, heun_sample])
def test_from_the_top_timestep_with_sigma_max_infinite(loop):
    errors = [_error(loop, n, 0.0, sigma_max=math.inf) for n in (20, 40, 80)]
    orders = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    assert all(1.7 < p < 2.6 for p in orders), (errors, orders)


def test_dpm_solver_2m_converges_at_second_order_on_unequal_log_snr_steps():
    """On a process respaced uniformly in t, every timestep used: the log-SNR steps h_i are far from equal, so the
    multistep coefficients 1 + 1/(2r), r = h_{i-1} / h_i, matter (with equal steps r = 1 hides an inverted r)."""
    errors = []
    for n in (40, 80, 160):
        diffusion = create_diffusion(CFG, str(n))
        x_0 = dpm_solver_2m_sample(NET, diffusion, _noise(), clip_denoised=False, sigma_max=math.inf)
        errors.append(float((x_0.double() - exact_x0(_noise().draw(), diffusion.alphas_cumprod[-1])).abs().max()))
    orders = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    assert all(1.7 < p < 2.6 for p in orders), (errors, orders)


def test_solver_timesteps_are_distinct_trained_timesteps_uniform_in_log_snr():
    alpha_bar = FULL.alphas_cumprod
    lam = 0.5 * np.log(alpha_bar / (1 - alpha_bar))
    targets = np.linspace(lam[-1], lam[0], 10)
    steps = solver_timesteps(lam, targets)
    assert steps[0] == 999 and steps[-1] == 0 and all(a > b for a, b in zip(steps, steps[1:]))
    gaps = np.abs(np.diff(lam))  # rounding to the nearest trained log-SNR: within half the local gap
    assert all(abs(lam[t] - x) <= max(gaps[max(t - 1, 0)], gaps[min(t, 998)]) / 2 for t, x in zip(steps, targets))
    crowded = solver_timesteps(lam, np.linspace(lam[-1], lam[0], 200))  # many targets between t = 0 and t = 1
    assert len(set(crowded)) == 200 and crowded[-1] == 0 and crowded == sorted(crowded, reverse=True)
    assert solver_timesteps(lam, np.linspace(lam[-1], lam[0], 1000)) == list(range(999, -1, -1))


def test_karras_sigmas():
    sigmas = karras_sigmas(80.0, 0.002, 18)
    assert sigmas[0] == pytest.approx(80.0) and sigmas[-1] == pytest.approx(0.002)
    assert sigmas[9] == pytest.approx((80 ** (1 / 7) + 9 / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7)


class _FirstDrawOnly(SampleNoise):
    """x_T of SampleNoise(seeds); every later draw comes from another stream."""

    def __init__(self, seeds, later_seed):
        super().__init__(seeds, SHAPE)
        self.first, self.later = True, torch.Generator().manual_seed(later_seed)

    def draw(self):
        if self.first:
            self.first = False
            return super().draw()
        return torch.randn((len(self), *self.shape), generator=self.later)


@pytest.mark.parametrize("loop", [dpm_solver_2m_sample, heun_sample])
def test_deterministic_given_x_T(loop):
    a = loop(NET, FULL, _FirstDrawOnly([5, 6], 1), steps=8)
    b = loop(NET, FULL, _FirstDrawOnly([5, 6], 2), steps=8)
    assert torch.equal(a, b)
    if loop is heun_sample:  # churn draws fresh noise from the sample's stream
        c = heun_sample(NET, FULL, _FirstDrawOnly([5, 6], 2), steps=8, s_churn=10.0)
        assert not torch.allclose(a, c)


def test_churned_heun_samples_the_data_distribution():
    """With the exact eps, Alg. 2 with churn (EDM's ImageNet-64 settings) draws from N(mu, s^2): mean and std within
    0.02 at 80 steps (standard error 0.005; the discretisation bias, 0.06 in the std at 18 steps, falls with steps)."""
    churn = {"s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 50.0}
    x_0 = heun_sample(NET, FULL, SampleNoise(range(256), SHAPE), steps=80, clip_denoised=False, **churn)
    assert abs(float(x_0.mean()) - MU) < 0.02
    assert abs(float(x_0.std()) - S) < 0.02


# the first timestep each loop gives the network: the solvers start at the trained sigma nearest EDM's 80 (TOP); the
# respaced ones at the top of their spacing, which for "ddimN" is the released code's range(0, T, T // N) (900 here,
# not T - 1) and for an even "N" spacing T - 1
@pytest.mark.parametrize("name,first", [("dpm++2m-7", TOP), ("heun-6", TOP), ("ddim10", 900), ("10", 999)])
def test_network_evaluations_per_sample_are_counted(name, first):
    spec = parse_sampler(name)
    cost = SampleCost(2)
    calls = []  # the timesteps of each network call

    def counting(x, t, y=None):
        calls.append(t.tolist())
        return NET(x, t)

    x_0 = sampler_loop(spec)(counting, create_diffusion(CFG, spec.respacing), SampleNoise([1, 2], SHAPE), cost=cost)
    assert x_0.shape == (2, *SHAPE)
    assert cost.network_evals == [len(calls)] * 2 == [spec.network_evals(1000)] * 2
    assert cost.classifier_passes == [0, 0]
    assert calls[0] == [first] * 2
    assert calls[-1] == [0, 0]
