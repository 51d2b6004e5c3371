"""Classifier-free guidance (Ho & Salimans 2022): the null-class row, label dropout, and the guided model against its
closed form and against plain conditional / null-label / classifier-guided sampling, bytewise."""

import functools
import math

import pytest
import torch

from components import build_classifier, build_unet
from components.checkpoint import CheckpointError, load_into
from components.compute import SampleCost
from components.config import apply_overrides
from components.config.presets import get_preset
from components.diffusion import create_diffusion
from components.guidance import ClassifierFreeGuidance, ClassifierGuidance, trained_sigmas
from components.networks import build_network
from components.sampling import SampleNoise, ddim_sample, ddpm_sample, dpm_solver_2m_sample, heun_sample
from tests.components.test_sampling import CFG as PROCESS
from tests.components.test_sampling import CLF, UNET, _random

pytestmark = pytest.mark.usefixtures("one_thread")

SIGMAS = trained_sigmas(PROCESS)
NULL = 4  # UNET's 4 classes, then the null class


@pytest.fixture(scope="module")
def nets():
    return _random(build_unet(UNET, null_class=True), 0), _random(build_classifier(CLF), 1)


LOOPS = [(ddim_sample, "ddim10"), (functools.partial(dpm_solver_2m_sample, steps=6), ""),
         (functools.partial(heun_sample, steps=4), "")]
ALL_LOOPS = LOOPS + [(ddpm_sample, "10")]


def _run(loop, respacing, model, labels, cond_fn=None, cost=None, seeds=(1, 2, 3)):
    diffusion = create_diffusion(PROCESS, respacing)
    return loop(model, diffusion, SampleNoise(list(seeds), (3, 8, 8)), {"y": torch.tensor(labels)}, cond_fn=cond_fn,
                cost=cost)


def test_the_null_class_is_one_more_label_row_only_with_label_dropout():
    plain, cfg = build_unet(UNET), build_unet(UNET, null_class=True)
    assert plain.label_emb.weight.shape[0] == 4 and plain.null_label is None
    assert cfg.label_emb.weight.shape[0] == 5 and cfg.null_label == NULL
    assert set(plain.state_dict()) == set(cfg.state_dict())
    preset = apply_overrides(get_preset("smoke"), ["train_diffusion.label_dropout=0.1"])
    from components.config.kinds import DIFFUSION

    assert build_network(DIFFUSION, preset).null_label == 4
    assert build_network(DIFFUSION, get_preset("smoke")).null_label is None


def test_weights_without_the_null_row_are_refused_with_the_reason():
    with pytest.raises(CheckpointError, match="trained without label dropout .* train_diffusion.label_dropout=0"):
        load_into(build_unet(UNET, null_class=True), build_unet(UNET).state_dict())
    with pytest.raises(CheckpointError, match="config has train_diffusion.label_dropout=0"):
        load_into(build_unet(UNET), build_unet(UNET, null_class=True).state_dict())


def test_the_guided_output_is_the_closed_form():
    """An analytic 'network': eps(x, t, y) = (y + 1) x, variance channels = y. At scale s: eps_c + s (eps_c - eps_u)
    with eps_u = (NULL + 1) x, and the variance channels of the conditional branch."""
    def analytic(x, t, y=None):
        scale = (y.float() + 1).view(-1, 1, 1, 1)
        return torch.cat([scale * x, y.float().view(-1, 1, 1, 1).expand_as(x)], dim=1)

    x, t, y = torch.randn(3, 3, 8, 8), torch.tensor([10, 10, 10]), torch.tensor([0, 2, 3])
    s = torch.tensor([2.0, -0.5, 0.0])
    out = ClassifierFreeGuidance(analytic, s, NULL)(x, t, y)
    eps_c, eps_u = (y.float() + 1).view(-1, 1, 1, 1) * x, (NULL + 1) * x
    expected = eps_c + s.view(-1, 1, 1, 1) * (eps_c - eps_u)
    assert torch.allclose(out[:, :3], expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(out[:, 3:], y.float().view(-1, 1, 1, 1).expand_as(x))


@pytest.mark.parametrize("loop,respacing", ALL_LOOPS)
def test_scale_zero_is_plain_conditional_sampling(nets, loop, respacing):
    model, _ = nets
    plain = _run(loop, respacing, model, [0, 1, 2])
    assert torch.equal(_run(loop, respacing, ClassifierFreeGuidance(model, 0.0, NULL), [0, 1, 2]), plain)


@pytest.mark.parametrize("loop,respacing", LOOPS)
def test_scale_minus_one_is_sampling_with_the_null_label(nets, loop, respacing):
    """DDIM and the ODE solvers read eps only; DDPM's variance comes from the conditional branch at every s."""
    model, _ = nets
    null = _run(loop, respacing, model, [NULL] * 3)
    assert torch.equal(_run(loop, respacing, ClassifierFreeGuidance(model, -1.0, NULL), [0, 1, 2]), null)


@pytest.mark.parametrize("loop,respacing", ALL_LOOPS)
def test_both_methods_with_classifier_scale_zero_is_pure_cfg(nets, loop, respacing):
    model, clf = nets
    cfg = ClassifierFreeGuidance(model, torch.tensor([2.0, -0.5, 1.0]), NULL)
    pure = _run(loop, respacing, cfg, [0, 1, 2])
    both = _run(loop, respacing, cfg, [0, 1, 2], cond_fn=ClassifierGuidance(clf, torch.zeros(3)))
    assert torch.equal(both, pure)
    guided = _run(loop, respacing, cfg, [0, 1, 2], cond_fn=ClassifierGuidance(clf, torch.full((3,), 4.0)))
    assert not torch.equal(guided, pure) and not torch.equal(pure, _run(loop, respacing, model, [0, 1, 2]))


def test_mixed_scales_equal_each_scale_alone(nets):
    """Per-row scales: each row as if sampled alone. Not bytewise: the forward pass holds another set of rows, and
    fp32 CPU convolutions round differently with the batch size (~3e-8 on one call)."""
    model, _ = nets
    mixed = _run(ddim_sample, "ddim10", ClassifierFreeGuidance(model, torch.tensor([0.0, 2.0, -1.0]), NULL), [0, 1, 2])
    for i, w in enumerate((0.0, 2.0, -1.0)):
        alone = _run(ddim_sample, "ddim10", ClassifierFreeGuidance(model, w, NULL), [[0, 1, 2][i]],
                     seeds=([1, 2, 3][i],))
        assert torch.allclose(mixed[i:i + 1], alone, atol=1e-5), w


def test_interval_everywhere_is_plain_cfg_and_empty_is_conditional(nets):
    model, _ = nets
    w = torch.tensor([2.0, 2.0, 2.0])
    plain = _run(ddim_sample, "ddim10", ClassifierFreeGuidance(model, w, NULL), [0, 1, 2])
    everywhere = ClassifierFreeGuidance(model, w, NULL, interval=(0.0, math.inf), sigmas=SIGMAS)
    assert torch.equal(_run(ddim_sample, "ddim10", everywhere, [0, 1, 2]), plain)
    empty = ClassifierFreeGuidance(model, w, NULL, interval=(1e6, 1e7), sigmas=SIGMAS)
    assert torch.equal(_run(ddim_sample, "ddim10", empty, [0, 1, 2]), _run(ddim_sample, "ddim10", model, [0, 1, 2]))


def test_a_cfg_step_costs_two_network_evaluations_one_outside_its_interval(nets):
    """DDIM-10: 10 steps. Row 0 at s = 0: 10; row 1 guided everywhere: 20; row 2 guided inside [lo, hi] only: 10 plus
    the steps whose trained sigma lies inside, counted here from the schedule; row 3 at s = -1 (unconditional): 10."""
    from components.config.respacing import space_timesteps

    model, _ = nets
    lo, hi = 0.5, 5.0
    inside = sum(lo <= SIGMAS[t] <= hi for t in space_timesteps(100, "ddim10"))
    assert 0 < inside < 10
    interval = (torch.tensor([0.0, 0.0, lo, 0.0]), torch.tensor([math.inf, math.inf, hi, math.inf]))
    cost = SampleCost(4)
    cfg = ClassifierFreeGuidance(model, torch.tensor([0.0, 1.0, 1.0, -1.0]), NULL, interval, SIGMAS, cost)
    _run(ddim_sample, "ddim10", cfg, [0, 1, 2, 3], cost=cost, seeds=(1, 2, 3, 4))
    assert cost.network_evals == [10, 20, 10 + inside, 10] and cost.classifier_passes == [0, 0, 0, 0]


def test_label_dropout_replaces_labels_by_the_null_class_at_its_rate():
    from components.training import Learner

    preset = apply_overrides(get_preset("smoke"), ["train_diffusion.label_dropout=0.25"])
    learner = Learner("diffusion", preset, torch.device("cpu"))
    y = torch.randint(0, 4, (20_000,))
    torch.manual_seed(0)
    dropped = learner.drop_labels(y)
    null = dropped == learner.net.null_label
    assert learner.net.null_label == 4 and abs(null.float().mean().item() - 0.25) < 0.01
    assert torch.equal(dropped[~null], y[~null])
    plain = Learner("diffusion", get_preset("smoke"), torch.device("cpu"))
    assert plain.drop_labels(y) is y
