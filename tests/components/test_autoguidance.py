"""Autoguidance (Karras et al. 2024): eps_main + s (eps_main - eps_guide), through the one guidance composition.

Checked against closed forms on analytic networks, against the unguided samples when the guide is the model itself,
and for its compute: the guide runs only on rows that autoguidance guides, and is counted apart."""

import json

import pytest
import torch

from components import build_unet
from components.compute import SampleCost
from components.config.grid import Cell
from components.diffusion import create_diffusion
from components.guidance import Autoguidance, trained_sigmas
from components.guided import GuidedNetworks, compose, sample_batch
from components.sampling import sample_label, sample_seed
from tests.components.test_sampling import CFG as PROCESS
from tests.components.test_sampling import UNET, _random

pytestmark = pytest.mark.usefixtures("one_thread")

SIGMAS = trained_sigmas(PROCESS)
SEEDS = [sample_seed(9, i) for i in range(3)]
LABELS = [sample_label(s, 4) for s in SEEDS]


def analytic(factor: float, variance: float = 0.0):
    """eps(x, t, y) = factor (y + 1) x; the variance channels hold `variance` + y."""
    def net(x, t, y=None):
        scale = factor * (y.float() + 1).view(-1, 1, 1, 1)
        return torch.cat([scale * x, (variance + y.float()).view(-1, 1, 1, 1).expand_as(x)], dim=1)
    return net


def test_the_guided_output_is_the_closed_form():
    x, t, y = torch.randn(3, 3, 8, 8), torch.tensor([10, 10, 10]), torch.tensor([0, 2, 3])
    s = torch.tensor([2.0, 0.5, 0.0])
    out = Autoguidance(analytic(1.0), analytic(0.5, variance=7.0), s)(x, t, y)
    eps_m, eps_g = (y.float() + 1).view(-1, 1, 1, 1) * x, 0.5 * (y.float() + 1).view(-1, 1, 1, 1) * x
    torch.testing.assert_close(out[:, :3], eps_m + s.view(-1, 1, 1, 1) * (eps_m - eps_g), rtol=1e-6, atol=1e-6)
    assert torch.equal(out[:, 3:], y.float().view(-1, 1, 1, 1).expand_as(x))  # the variance is the main model's


def test_the_eps_and_x0_forms_agree():
    """EDM2 combines denoised images, D_guide + w (D_main - D_guide); x0 is affine in eps at fixed x_t, so guiding eps
    gives the same x0 (before clipping)."""
    process = create_diffusion(PROCESS, "")
    x, t, y = torch.randn(3, 3, 8, 8), torch.tensor([80, 40, 5]), torch.tensor([1, 0, 3])
    s = torch.tensor([3.0, 1.0, 0.25])
    main, guide = analytic(1.0), analytic(0.3)
    eps = Autoguidance(main, guide, s)(x, t, y)[:, :3]
    x0_m = process.predict_xstart_from_eps(x, t, main(x, t, y)[:, :3])
    x0_g = process.predict_xstart_from_eps(x, t, guide(x, t, y)[:, :3])
    w = (1 + s).view(-1, 1, 1, 1)
    torch.testing.assert_close(process.predict_xstart_from_eps(x, t, eps), x0_g + w * (x0_m - x0_g), rtol=1e-5,
                               atol=1e-5)


@pytest.fixture(scope="module")
def nets():
    model, guide = _random(build_unet(UNET), 0), _random(build_unet(UNET), 4, std=0.03)
    return GuidedNetworks(model, UNET, PROCESS, "cpu", guide=guide)


@pytest.mark.parametrize("sampler", ["ddim10", "dpm++2m-5", "heun-3", "10"])
def test_the_model_guiding_itself_is_unguided_sampling_bytewise(nets, sampler):
    itself = GuidedNetworks(nets.model, UNET, PROCESS, "cpu", guide=nets.model)
    unguided, _ = sample_batch(itself, [Cell(sampler, 0.0)] * 3, SEEDS, LABELS)
    guided, cost = sample_batch(itself, [Cell(sampler, 4.0, None, "auto")] * 3, SEEDS, LABELS)
    assert guided.tobytes() == unguided.tobytes()
    assert cost.guide_evals == cost.network_evals  # it still ran, once per step: counted


def test_scale_zero_never_calls_the_guide(nets):
    def refuse(*args, **kwargs):
        raise AssertionError("the guide ran at s = 0")

    plain = GuidedNetworks(nets.model, UNET, PROCESS, "cpu", guide=refuse)
    model, cond_fn = compose(plain, [Cell("ddim10", 0.0)] * 3)
    assert model is nets.model and cond_fn is None
    images, cost = sample_batch(plain, [Cell("ddim10", 0.0)] * 3, SEEDS, LABELS)
    assert cost.guide_evals == [0, 0, 0]


def test_the_guide_runs_on_the_guided_rows_only_and_is_counted_apart(nets):
    """Row 0: auto everywhere (10 guide evaluations with DDIM-10); row 1: unguided (s = 0), no guide; row 2: auto
    inside [lo, hi] only (the steps whose trained sigma lies there); the main model's evaluations are 10 for every
    row."""
    from components.config.respacing import space_timesteps

    lo, hi = 0.5, 5.0
    inside = sum(lo <= SIGMAS[t] <= hi for t in space_timesteps(100, "ddim10"))
    assert 0 < inside < 10
    cells = [Cell("ddim10", 2.0, None, "auto"), Cell("ddim10", 0.0), Cell("ddim10", 2.0, (lo, hi), "auto")]
    _, cost = sample_batch(nets, cells, SEEDS, LABELS)
    assert cost.network_evals == [10, 10, 10] and cost.classifier_passes == [0, 0, 0]
    assert cost.guide_evals == [10, 0, inside]


def test_each_row_of_a_mixed_batch_is_its_cell_alone(nets):
    """Autoguided rows beside unguided ones: each row as if sampled alone (within one level: the forward passes hold
    other rows, and fp32 convolutions round with the batch)."""
    cells = [Cell("dpm++2m-5", 3.0, None, "auto"), Cell("dpm++2m-5", 0.0), Cell("dpm++2m-5", 1.0, (0.5, 5.0), "auto")]
    mixed, _ = sample_batch(nets, cells, SEEDS, LABELS)
    for i, cell in enumerate(cells):
        alone, _ = sample_batch(nets, [cell] * 3, SEEDS, LABELS)
        assert abs(mixed[i].astype(int) - alone[i].astype(int)).max() <= 1, cell.key


def test_without_a_guide_autoguidance_is_refused(nets):
    no_guide = GuidedNetworks(nets.model, UNET, PROCESS, "cpu")
    with pytest.raises(ValueError, match="needs a guiding network"):
        compose(no_guide, [Cell("ddim10", 1.0, None, "auto")], SampleCost(1))


# --- the guide network trained beside the diffusion model (config) ------------------------------------------------
def test_a_guide_network_is_a_fifth_kind_of_the_same_shape():
    from components.config import ConfigError, apply_overrides
    from components.config.kinds import kind_of, preset_kinds
    from components.config.presets import get_preset
    from components.config.validation import preset_problems
    from components.networks import build_network

    preset = get_preset("fashion-mnist-autoguide")
    assert preset_problems(preset) == [] and preset.sample.guide_from == "trained"
    assert preset_kinds(preset) == ("diffusion", "classifier", "evaluator", "guide")
    # smaller and less trained than the main model, of the same family (Karras et al. 2024), with its own EMA
    size = {k: sum(p.numel() for p in build_network(k, preset).parameters()) for k in ("diffusion", "guide")}
    assert size["guide"] < size["diffusion"] / 2
    assert preset.train_guide.steps < preset.train_diffusion.steps and preset.train_guide.ema_rate
    default = get_preset("fashion-mnist")
    assert preset_kinds(default) == ("diffusion", "classifier", "evaluator")
    with pytest.raises(ConfigError, match="presets with a guide section"):
        kind_of(default, "guide")
    with pytest.raises(ConfigError, match="no guide network, so no guide section"):
        apply_overrides(default, ["guide.model_channels=64"])
    # refused before any work: a trained guide without one; shapes that cannot guide; the null class
    assert "needs a guide network" in " ".join(preset_problems(apply_overrides(default, ["sample.guide_from=trained"])))
    for override, field in (("guide.image_size=32", "guide.image_size=32 but unet.image_size=16"),
                            ("guide.num_classes=4", "guide.num_classes=4 but unet.num_classes=10"),
                            ("guide.in_channels=3", "guide.in_channels=3 but unet.in_channels=1"),
                            ("train_guide.label_dropout=0.1", "train_guide.label_dropout must be 0")):
        assert any(field in p for p in preset_problems(apply_overrides(preset, [override]))), override


def test_every_preset_round_trips_through_its_json_form():
    """A checkpoint's model.json holds to_dict(preset) and preset_from_dict reads it back: a section the reader does not
    know (the guide's) would come back as None and the guide could not be built from its own checkpoint."""
    from components.config import preset_from_dict, to_dict
    from components.config.presets import PRESET_BUILDERS, get_preset

    for name in PRESET_BUILDERS:
        preset = get_preset(name)
        assert preset_from_dict(json.loads(json.dumps(to_dict(preset)))) == preset, name
