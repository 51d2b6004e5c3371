"""EMA warm-up (k-diffusion's EMAWarmup) against its closed form, and a Learner started from given weights."""

import math

import pytest
import torch

from components.checkpoint import CheckpointError
from components.config import apply_overrides
from components.config.presets import get_preset
from components.config.validation import preset_problems
from components.images import make_shapes, to_model_input
from components.training import Learner, ema_initial_share, ema_warmup_decay, ema_warmup_on


def _batch(n=8):
    images, labels, _ = make_shapes(n, 16, 4, seed=0)
    return to_model_input(images), torch.from_numpy(labels)


def test_warmup_decay_closed_form():
    assert ema_warmup_decay(0, 0.9999, 1.0, 0.75) == 0.0  # the first update copies the weights
    assert math.isclose(ema_warmup_decay(9999, 0.9999, 1.0, 0.75), 0.999, rel_tol=0, abs_tol=1e-12)  # 1 - 10^4^-3/4
    assert math.isclose(ema_warmup_decay(9, 0.9999, 1.0, 0.5), 1 - 10 ** -0.5, abs_tol=1e-12)
    assert math.isclose(ema_warmup_decay(10, 0.9, 10.0, 1.0), 0.5, abs_tol=1e-12)  # 1 - (1 + 10/10)^-1
    assert ema_warmup_decay(10**7, 0.99, 1.0, 0.75) == 0.99  # clipped at the configured rate
    values = [ema_warmup_decay(t, 0.9999, 1.0, 2 / 3) for t in range(0, 5000, 97)]
    assert values == sorted(values) and len(set(values)) == len(values)  # strictly increasing below the rate


def test_warmup_auto_is_on_for_random_init_only():
    cfg = get_preset("smoke").train_diffusion
    assert cfg.ema_warmup == "auto" and ema_warmup_on(cfg)
    started = apply_overrides(get_preset("smoke"), ["train_diffusion.init_from=champion"]).train_diffusion
    assert not ema_warmup_on(started)
    forced = apply_overrides(get_preset("smoke"), ["train_diffusion.init_from=champion",
                                                   "train_diffusion.ema_warmup=on"]).train_diffusion
    assert ema_warmup_on(forced)
    off = apply_overrides(get_preset("smoke"), ["train_diffusion.ema_warmup=off", "train_diffusion.steps=450"])
    assert ema_initial_share(off.train_diffusion, 0.995) == 0.995 ** 450
    assert ema_initial_share(cfg, 0.99) == 0.0


def test_learner_ema_follows_the_warmup():
    """Two steps with the warm-up: after the first the EMA is the weights (decay 0); after the second it mixes them
    with decay 1 - 2^-3/4. Without it the first update keeps 0.99 of the random init."""
    x, y = _batch()
    for setting in ("on", "off"):
        preset = apply_overrides(get_preset("smoke"), [f"train_diffusion.ema_warmup={setting}"])
        learner = Learner("diffusion", preset, torch.device("cpu"), seed=0)
        init = [p.detach().clone() for p in learner.net.parameters()]
        learner.train_step(x, y)
        after1 = [p.detach().clone() for p in learner.net.parameters()]
        decay = 0.0 if setting == "on" else 0.99
        for e, a, i in zip(learner.ema[0.99], after1, init):
            assert torch.allclose(e, decay * i + (1 - decay) * a, atol=1e-6)
        learner.train_step(x, y)
        decay2 = 1 - 2 ** -0.75 if setting == "on" else 0.99
        for e, a, b, i in zip(learner.ema[0.99], after1, learner.net.parameters(), init):
            first = decay * i + (1 - decay) * a
            assert torch.allclose(e, decay2 * first + (1 - decay2) * b.detach(), atol=1e-6)


def test_warm_start_sets_network_and_ema_and_refuses_another_architecture():
    x, y = _batch()
    preset = apply_overrides(get_preset("smoke"), ["train_diffusion.init_from=some/folder"])
    source = Learner("diffusion", preset, torch.device("cpu"), seed=5)
    source.train_step(x, y)
    state = {k: v.clone() for k, v in source.net.state_dict().items()}
    learner = Learner("diffusion", preset, torch.device("cpu"), seed=0)
    learner.warm_start(state, source="test")
    for (name, p), e in zip(learner.net.named_parameters(), learner.ema[0.99]):
        assert torch.equal(p, state[name]) and torch.equal(e, state[name])
    wider = apply_overrides(get_preset("smoke"), ["unet.model_channels=64"])
    with pytest.raises(CheckpointError, match="shape mismatches"):
        Learner("diffusion", wider, torch.device("cpu"), seed=0).warm_start(state, source="test")


def test_bad_warm_start_settings_are_reported():
    bad = apply_overrides(get_preset("smoke"), ["train_diffusion.ema_warmup=maybe",
                                                "train_classifier.ema_warmup_power=0"])
    problems = "\n".join(preset_problems(bad))
    assert "train_diffusion.ema_warmup='maybe' must be one of auto, on, off" in problems
    assert "train_classifier.ema_warmup_power=0.0 must be a finite number > 0" in problems
