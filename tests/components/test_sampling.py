import functools
import math

import numpy as np
import pytest
import torch

from components import build_classifier, build_unet
from components.compute import SampleCost
from components.config import ClassifierConfig, DiffusionConfig, UNetConfig
from components.config.grid import parse_sampler as parse_sampler_string
from components.diffusion import create_diffusion
from components.guidance import ClassifierGuidance, condition_mean, trained_sigmas
from components.sampling import (
    SampleNoise,
    ddim_sample,
    ddpm_sample,
    dpm_solver_2m_sample,
    heun_sample,
    sampler_loop,
)

pytestmark = pytest.mark.usefixtures("one_thread")

UNET = UNetConfig(image_size=8, model_channels=32, channel_mult=(1, 2), attention_resolutions=(4,), num_classes=4,
                  num_head_channels=32)
CLF = ClassifierConfig(image_size=8, model_channels=32, depth=1, channel_mult=(1, 2), attention_resolutions=(4,),
                       num_head_channels=32, num_classes=4)
CFG = DiffusionConfig(steps=100, noise_schedule="linear", learn_sigma=True)


def _random(net, seed, std=0.05):
    torch.manual_seed(seed)
    for p in net.parameters():
        p.data.normal_(0, std)
    return net.eval()


@pytest.fixture(scope="module")
def nets():
    return _random(build_unet(UNET), 0), _random(build_classifier(CLF), 1)


def _sample(loop, nets, seeds, labels, scales, respacing, eta=0.0, **guidance):
    """guidance: ClassifierGuidance's interval, sigmas and cost."""
    model, clf = nets
    diffusion = create_diffusion(CFG, respacing)
    noise = SampleNoise(seeds, (3, 8, 8))
    cond_fn = None if scales is None else ClassifierGuidance(clf, torch.tensor(scales, dtype=torch.float32), **guidance)
    return loop(model, diffusion, noise, {"y": torch.tensor(labels)}, cond_fn=cond_fn, eta=eta)


LOOPS = [(ddim_sample, "ddim10"), (ddpm_sample, "10"), (functools.partial(dpm_solver_2m_sample, steps=6), ""),
         (functools.partial(heun_sample, steps=4), "")]


@pytest.mark.parametrize("loop,respacing", LOOPS)
def test_scale_zero_is_exactly_unguided(nets, loop, respacing):
    unguided = _sample(loop, nets, [1, 2, 3], [0, 1, 2], None, respacing)
    zero = _sample(loop, nets, [1, 2, 3], [0, 1, 2], [0.0, 0.0, 0.0], respacing)
    mixed = _sample(loop, nets, [1, 2, 3], [0, 1, 2], [0.0, 5.0, 0.0], respacing)
    assert torch.equal(unguided, zero)
    assert torch.equal(mixed[0], unguided[0]) and torch.equal(mixed[2], unguided[2])
    assert not torch.allclose(mixed[1], unguided[1])


@pytest.mark.parametrize("loop,respacing", LOOPS)
def test_seeded_sample_does_not_depend_on_its_batch(nets, loop, respacing):
    batch = _sample(loop, nets, [11, 12, 13, 14], [0, 1, 2, 3], [1.0, 2.0, 3.0, 4.0], respacing)
    alone = _sample(loop, nets, [13], [2], [3.0], respacing)
    other = _sample(loop, nets, [99, 13], [1, 2], [0.0, 3.0], respacing)
    assert torch.allclose(batch[2], alone[0], atol=1e-5)
    assert torch.allclose(batch[2], other[1], atol=1e-5)


class _FirstDrawOnly(SampleNoise):
    """Same x_T as SampleNoise(seeds); every later draw is fresh noise from elsewhere."""

    def __init__(self, seeds, shape, later_seed):
        super().__init__(seeds, shape)
        self.first = True
        self.later = torch.Generator().manual_seed(later_seed)

    def draw(self):
        if self.first:
            self.first = False
            return super().draw()
        return torch.randn((len(self), *self.shape), generator=self.later)


def test_ddim_eta_zero_is_deterministic_given_x_T(nets):
    model, _ = nets
    diffusion = create_diffusion(CFG, "ddim10")
    y = {"y": torch.tensor([0, 3])}
    a = ddim_sample(model, diffusion, _FirstDrawOnly([5, 6], (3, 8, 8), 1), y)
    b = ddim_sample(model, diffusion, _FirstDrawOnly([5, 6], (3, 8, 8), 2), y)
    assert torch.equal(a, b)
    c = ddim_sample(model, diffusion, _FirstDrawOnly([5, 6], (3, 8, 8), 2), y, eta=1.0)
    assert not torch.allclose(a, c)


def test_guided_ddpm_mean_raises_log_p_y(nets):
    model = nets[0]
    clf = _random(build_classifier(CLF), 1, std=0.3)  # a sharper classifier than the nearly flat default
    diffusion = create_diffusion(CFG)
    torch.manual_seed(3)
    x = torch.randn(6, 3, 8, 8)
    t = torch.full((6,), 60)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    with torch.no_grad():
        out = diffusion.p_mean_variance(model, x, t, model_kwargs={"y": y})
        guided = condition_mean(diffusion, ClassifierGuidance(clf, 100.0), out, x, t, {"y": y})
    assert not torch.equal(guided["mean"], out["mean"])

    def log_p(z):
        return torch.log_softmax(clf(z, t), -1)[torch.arange(6), y]

    with torch.no_grad():
        assert (log_p(guided["mean"]) > log_p(out["mean"])).all()


def test_sampler_loop_of_each_sampler_string():
    assert sampler_loop(parse_sampler_string("ddim25")) is ddim_sample
    assert sampler_loop(parse_sampler_string("250")) is ddpm_sample
    spec = parse_sampler_string("dpm++2m-10")  # the solvers run on the full process and choose their own steps
    loop = sampler_loop(spec)
    assert (loop.func, loop.keywords, spec.respacing) == (dpm_solver_2m_sample, {"steps": 10}, "")
    with pytest.raises(ValueError):
        parse_sampler_string("euler")


SIGMAS = trained_sigmas(CFG)


@pytest.mark.parametrize("loop,respacing", LOOPS)
def test_guidance_interval_everywhere_is_plain_guidance_and_empty_is_none(nets, loop, respacing):
    args = (loop, nets, [1, 2, 3], [0, 1, 2], [2.0, 4.0, 0.0], respacing)
    plain = _sample(*args)
    assert torch.equal(_sample(*args, interval=(0.0, math.inf), sigmas=SIGMAS), plain)
    assert torch.equal(_sample(*args, interval=(SIGMAS[0], SIGMAS[-1]), sigmas=SIGMAS), plain)
    unguided = _sample(loop, nets, [1, 2, 3], [0, 1, 2], None, respacing)
    assert not torch.equal(plain, unguided)
    assert torch.equal(_sample(*args, interval=(1.0, 0.5), sigmas=SIGMAS), unguided)
    assert torch.equal(_sample(*args, interval=(1e6, 1e7), sigmas=SIGMAS), unguided)


def test_classifier_runs_only_on_the_rows_inside_their_interval(nets):
    model, clf = nets
    seen = []  # the trained sigma of every row the classifier saw, call by call

    def counting(x, t):
        seen.append(SIGMAS[t.numpy()])
        return clf(x, t)

    lo, hi = 0.3, 3.0
    cost = SampleCost(3)
    interval = (torch.tensor([0.0, 1.0, lo]), torch.tensor([math.inf, 0.5, hi]))  # rows: everywhere, empty, [lo, hi]
    cond_fn = ClassifierGuidance(counting, torch.tensor([2.0, 2.0, 2.0]), interval, SIGMAS, cost)
    loop = sampler_loop(parse_sampler_string("dpm++2m-10"))
    loop(model, create_diffusion(CFG, ""), SampleNoise([1, 2, 3], (3, 8, 8)), {"y": torch.tensor([0, 1, 2])},
         cond_fn=cond_fn, cost=cost)
    assert cost.network_evals == [10, 10, 10] and len(seen) == 10
    assert cost.classifier_passes[:2] == [10, 0] and 0 < cost.classifier_passes[2] < 10
    assert sum(len(s) for s in seen) == sum(cost.classifier_passes)
    assert sum(len(s) == 2 for s in seen) == cost.classifier_passes[2]
    assert all((lo <= s[0] <= hi) == (len(s) == 2) for s in seen)
    with pytest.raises(ValueError, match="sigmas"):
        ClassifierGuidance(clf, 1.0, interval=(lo, hi))


def _zero_model(x, t, y=None):
    return torch.zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:])  # eps = 0 and v = 0 (the middle of the range)


def _reference_zero_model_loop(loop, diffusion, seeds, clip: bool) -> np.ndarray:
    """The released DDPM step and DDIM (eta 0) step written out in float64 for a network predicting eps = 0, v = 0:
    x0 = x / sqrt(abar) (clipped or not), eps recomputed from x0; DDIM: x <- sqrt(abar_prev) x0 + sqrt(1 - abar_prev)
    eps; DDPM: x <- coef1 x0 + coef2 x + [t > 0] exp(log_var / 2) z with log_var = (log beta + log beta~) / 2."""
    noise = SampleNoise(seeds, (3, 8, 8))
    x = noise.draw().double().numpy()
    betas = diffusion.betas
    abar = np.cumprod(1 - betas)
    abar_prev = np.append(1.0, abar[:-1])
    beta_tilde = betas * (1 - abar_prev) / (1 - abar)
    for t in reversed(range(len(betas))):
        x0 = x / np.sqrt(abar[t])
        if clip:
            x0 = np.clip(x0, -1, 1)
        eps = (x / np.sqrt(abar[t]) - x0) / np.sqrt(1 / abar[t] - 1)
        z = noise.draw().double().numpy()
        if loop is ddim_sample:
            x = np.sqrt(abar_prev[t]) * x0 + np.sqrt(1 - abar_prev[t]) * eps
        else:
            coef1 = betas[t] * np.sqrt(abar_prev[t]) / (1 - abar[t])
            coef2 = (1 - abar_prev[t]) * np.sqrt(1 - betas[t]) / (1 - abar[t])
            log_var = 0.5 * np.log(betas[t]) + 0.5 * np.log(beta_tilde[max(t, 1)])  # beta~_0 = 0: the t = 1 value
            x = coef1 * x0 + coef2 * x + (t > 0) * np.exp(0.5 * log_var) * z
    return x


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("loop,respacing", [(ddim_sample, "ddim10"), (ddpm_sample, "10")])
def test_loops_match_a_float64_reference(loop, respacing, clip):
    diffusion = create_diffusion(CFG, respacing)
    x_0 = loop(_zero_model, diffusion, SampleNoise([4, 5], (3, 8, 8)), clip_denoised=clip)
    expected = _reference_zero_model_loop(loop, diffusion, [4, 5], clip)
    assert np.allclose(x_0.double().numpy(), expected, rtol=1e-4, atol=1e-5)
    if loop is ddim_sample and not clip:  # eps = 0 throughout: x_0 = x_T / sqrt(abar_T)
        x_T = SampleNoise([4, 5], (3, 8, 8)).draw()
        assert torch.allclose(x_0, x_T / np.sqrt(diffusion.alphas_cumprod[-1]), rtol=1e-4)
