"""The quantities the guidance intervals, the ODE solvers and the compute counts rest on, pinned to values computed
outside the code under test: the released code's schedules (../shared/golden) and the definitions written out here.

* sigma_t of each trained timestep, sqrt((1 - abar_t) / abar_t): the noise level of x_t / sqrt(abar_t), k-diffusion's
  DiscreteEpsDDPMDenoiser `sigmas` and EDM's sigma(t) for a VP process, in which guidance intervals are given;
* the trained timesteps each sampler calls the network at, and how many (the compute a cell reports);
* classifier passes inside an interval: the calls whose sigma lies in [lo, hi].
"""

import numpy as np
import pytest
import torch

from components.config import DiffusionConfig, UNetConfig
from components.config.grid import Cell, parse_sampler
from components.diffusion import create_diffusion
from components.guidance import trained_sigmas
from components.guided import GuidedNetworks, sample_batch
from components.sampling import SIGMA_MAX, SampleNoise, sampler_loop


@pytest.fixture(scope="module")
def schedules(golden_dir):
    with np.load(golden_dir / "grey16_diffusion.npz") as z:
        return {s: z[f"{s}.alphas_cumprod"].astype(np.float64) for s in ("linear", "cosine")}


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_trained_sigmas_are_the_released_schedules_noise_levels(schedules, schedule):
    abar = schedules[schedule]
    expected = np.sqrt((1 - abar) / abar)
    got = trained_sigmas(DiffusionConfig(steps=1000, noise_schedule=schedule))
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    if schedule == "linear":  # beta_0 = 1e-4: sigma_0 = sqrt(1e-4 / (1 - 1e-4)); sigma_T ~ 157 (abar_T ~ 4.0e-5)
        assert got[0] == pytest.approx(np.sqrt(1e-4 / (1 - 1e-4)), rel=1e-12)
        assert 150 < got[-1] < 165


class Recorder:
    """A network with a known eps (zero) that records the trained timesteps it is called at."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, y=None):
        self.calls.append(int(t[0]))
        return torch.zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:])


def _calls(name: str, schedule: str) -> list[int]:
    spec, net = parse_sampler(name), Recorder()
    process = create_diffusion(DiffusionConfig(steps=1000, noise_schedule=schedule), spec.respacing)
    sampler_loop(spec)(net, process, SampleNoise([0], (1, 4, 4)), clip_denoised=False)
    return net.calls


def _nearest(levels: np.ndarray, targets: np.ndarray) -> list[int]:
    return [int(np.argmin(np.abs(levels - x))) for x in targets]


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_each_sampler_calls_the_network_at_the_timesteps_its_definition_gives(schedules, golden_dir, schedule):
    abar = schedules[schedule]
    log_sigma = 0.5 * np.log((1 - abar) / abar)  # -lambda_t
    top = int(np.argmin(np.abs(log_sigma - np.log(SIGMA_MAX))))  # the trained sigma nearest EDM's sigma_max = 80
    # DPM-Solver++(2M), 10 steps: uniform in log-SNR from the top down to t = 0, each to the nearest trained level
    assert _calls("dpm++2m-10", schedule) == _nearest(log_sigma, np.linspace(log_sigma[top], log_sigma[0], 10))
    # EDM's Heun, 6 levels: Karras et al. Eq. 5 (rho = 7) between the top's sigma and t = 0's; Euler on the last
    # step, so 2 * 6 - 1 calls: each level once, the next one again for the correction
    s_max, s_min = np.exp(log_sigma[top]), np.exp(log_sigma[0])
    ramp = np.linspace(0, 1, 6)
    karras = (s_max ** (1 / 7) + ramp * (s_min ** (1 / 7) - s_max ** (1 / 7))) ** 7
    levels = _nearest(log_sigma, np.log(karras))
    assert _calls("heun-6", schedule) == [t for a, b in zip(levels, levels[1:]) for t in (a, b)] + [levels[-1]]
    # DDIM-10 and DDPM on "25": the released code's respacing, noisiest first
    with np.load(golden_dir / "respacing.npz") as z:
        for name, key in (("ddim10", "ddim10"), ("25", "25")):
            assert _calls(name, schedule) == z[f"linear.{key}.timestep_map"][::-1].tolist(), name


def test_a_cell_reports_the_calls_and_the_classifier_passes_inside_its_interval(schedules):
    """A cell's compute per sample: one network evaluation per call, and a classifier pass at each call whose
    sigma_t (from the released schedule, not the code) lies in the cell's interval."""
    sigma = np.sqrt((1 - schedules["linear"]) / schedules["linear"])
    process = DiffusionConfig(steps=1000, noise_schedule="linear")

    def classifier(x, t):  # a constant classifier: its gradient is zero, so only the count matters
        return torch.zeros(x.shape[0], 2) + 0 * x.sum()

    unet = UNetConfig(image_size=4, in_channels=1, num_classes=2)
    nets = GuidedNetworks(Recorder(), unet, process, "cpu", classifier=classifier)
    for name, lo, hi in (("ddim10", 0.5, 5.0), ("dpm++2m-10", 0.1, 2.0), ("heun-6", 1.0, 30.0)):
        calls = _calls(name, "linear")
        nets.model.calls = []
        _, cost = sample_batch(nets, [Cell(name, 2.0, (lo, hi))], [0], [1])
        inside = sum(lo <= sigma[t] <= hi for t in calls)
        assert 0 < inside < len(calls), name
        assert cost.network_evals == [len(calls)] and cost.classifier_passes == [inside], name
