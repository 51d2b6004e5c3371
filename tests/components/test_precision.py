"""The measured speed choice (components/precision.py) with a stubbed clock: which candidate it takes, in which
order it times them, when it tries and takes torch.compile, and what a cached choice means for a run. No test here
depends on how fast anything runs."""

import dataclasses

import pytest
import torch

from components import precision, training
from components.config import apply_overrides
from components.config.presets import get_preset
from components.precision import (
    Choice,
    SpeedSettings,
    autocast_context,
    beside_compiled,
    candidates,
    choose,
    configured,
    measure_choice,
    reuse_choice,
)
from components.training import Learner, trainer_candidates, training_choice

FP32, FP32_CL = SpeedSettings("fp32"), SpeedSettings("fp32", True)
BF16, BF16_CL = SpeedSettings("bf16"), SpeedSettings("bf16", True)
FOUR = [FP32, FP32_CL, BF16, BF16_CL]


class Clock:
    """A stub timer: time moves only when a fake step says so."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_trial(clock: Clock, cost: dict, calls: list, compile_cost: float = 0.0):
    """trial(settings) -> a step that advances the clock by cost[settings] (a compiled step's first call by
    compile_cost more); every call of trial is recorded."""
    first = set()

    def trial(settings):
        calls.append(settings)

        def step():
            clock.now += cost[settings]
            if settings.compile and settings not in first:
                first.add(settings)
                clock.now += compile_cost

        return step

    return trial


@pytest.mark.parametrize("fastest", FOUR)
def test_the_faster_candidate_is_taken(fastest):
    clock, calls = Clock(), []
    cost = {c: 0.5 if c == fastest else 1.0 for c in FOUR}
    choice = measure_choice(fake_trial(clock, cost, calls), FOUR, timer=clock)
    assert choice.settings == fastest and choice.source == "measured"
    assert choice.timings[fastest.name] == 0.5
    assert {s.compile for s in calls} == {False}  # compile is off unless asked: never tried


def test_candidates_are_timed_interleaved_and_clear_losers_dropped():
    clock, calls = Clock(), []
    cost = {FP32: 0.9, FP32_CL: 1.6, BF16: 0.8, BF16_CL: 2.5}
    measure_choice(fake_trial(clock, cost, calls), FOUR, timer=clock, rounds=3)
    # round 1 every candidate in turn; then all but the clear loser (over 3x the best), again in turn (ABAB, not AABB)
    assert calls == FOUR + [FP32, FP32_CL, BF16] * 2
    clock, calls = Clock(), []
    measure_choice(fake_trial(clock, {**cost, BF16_CL: 0.8 * 3.01}, calls), FOUR, timer=clock, rounds=3)
    assert calls == FOUR + [FP32, FP32_CL, BF16] * 2


def test_a_load_spike_in_the_first_round_does_not_lose_the_fastest():
    """Load only adds time: a candidate slowed 2.5x by a spike in round 1 (the one that drops clear losers) and in
    round 2 is still taken on its quiet round."""
    clock, calls = Clock(), []
    cost = {FP32: 1.0, FP32_CL: 1.1, BF16: 0.6, BF16_CL: 1.2}
    spikes = {1: 1.5 - 0.6, 2: 1.5 - 0.6}  # BF16's first two rounds: 1.5 s, its true cost 0.6 s

    def trial(settings):
        step = fake_trial(clock, cost, calls)(settings)
        extra = spikes.get(calls.count(BF16), 0.0) if settings == BF16 else 0.0

        def spiky():
            step()
            clock.now += extra  # on the warm-up step and the timed one

        return spiky

    choice = measure_choice(trial, FOUR, timer=clock, rounds=3)
    assert choice.settings == BF16 and choice.timings[BF16.name] == pytest.approx(0.6)


def test_the_plain_path_is_kept_unless_another_is_faster_beyond_the_margin():
    times = {FP32: [1.0, 1.0, 1.0], BF16: [0.99, 0.98, 0.99]}
    assert choose(times) == FP32
    assert choose({FP32: [1.0, 1.0, 1.0], BF16: [0.9, 2.0, 2.0]}) == BF16  # the fastest round: load only adds time


def test_one_candidate_and_no_compile_trial_times_nothing():
    calls = []
    choice = measure_choice(fake_trial(Clock(), {BF16: 1.0}, calls), [BF16], compile="on")
    assert calls == [] and choice.source == "set" and choice.settings == dataclasses.replace(BF16, compile=True)


def test_compile_is_tried_only_where_the_run_could_repay_it_and_taken_where_it_does():
    compiled = dataclasses.replace(BF16, compile=True)
    cost = {FP32: 1.0, BF16: 0.5, compiled: 0.25}
    # a short run: even a 30% faster step cannot repay the assumed compile time, so it is not even tried
    clock, calls = Clock(), []
    short = measure_choice(fake_trial(clock, cost, calls, compile_cost=100.0), [FP32, BF16], compile="auto",
                           run_steps=100, compile_estimate=60.0, timer=clock)
    assert short.settings == BF16 and compiled not in calls and short.compile_seconds is None
    # a long run: tried; its measured compile cost (the first call less an eager step) is repaid, so taken
    clock, calls = Clock(), []
    long = measure_choice(fake_trial(clock, cost, calls, compile_cost=100.0), [FP32, BF16], compile="auto",
                          run_steps=10_000, compile_estimate=60.0, timer=clock)
    assert long.settings == compiled and long.compile_seconds == pytest.approx(100.0 + 0.25 - 0.5)
    # the eager time of the candidate rounds is kept; the compile trial's eager rounds are recorded beside it
    assert long.timings[BF16.name] == 0.5 and long.timings[beside_compiled(BF16)] == 0.5
    # long enough to try, too short to repay what compiling measured: left eager
    clock, calls = Clock(), []
    middle = measure_choice(fake_trial(clock, cost, calls, compile_cost=1000.0), [FP32, BF16], compile="auto",
                            run_steps=1000, compile_estimate=60.0, timer=clock)
    assert compiled in calls and middle.settings == BF16


def test_a_cached_choice_decides_compile_again_for_the_run():
    compiled = dataclasses.replace(BF16, compile=True)
    timed = Choice(BF16, "measured", {FP32.name: 1.0, BF16.name: 0.5, beside_compiled(BF16): 0.5, compiled.name: 0.25},
                   compile_seconds=100.0)
    assert reuse_choice(timed, "auto", 10_000, 60.0).settings == compiled
    assert reuse_choice(timed, "auto", 100, 60.0).settings == BF16
    assert reuse_choice(timed, "off", 10_000, 60.0).settings == BF16
    untimed = Choice(BF16, "measured", {FP32.name: 1.0, BF16.name: 0.5})
    assert reuse_choice(untimed, "auto", 100, 60.0).settings == BF16  # still too short to try
    assert reuse_choice(untimed, "auto", 10_000, 60.0) is None  # long enough: compile must be timed now
    assert reuse_choice(untimed, "on", 100, 60.0).settings == compiled
    assert reuse_choice(untimed, "auto", 100, 60.0).source == "cached"


def test_candidates_follow_the_settings_asked():
    assert candidates("cpu", "fp32", "off") == [FP32]
    assert candidates("cpu", "bf16", "auto") == [BF16, BF16_CL]
    both = candidates("cpu", "auto", "off")
    assert both[0] == FP32 and set(both) <= {FP32, BF16}
    with pytest.raises(ValueError):
        candidates("cpu", "fp16", "off")
    # without a measurement auto is the plain path; on / off / bf16 as set
    assert configured("cpu") == FP32
    assert configured("cpu", "bf16", "on", "on") == SpeedSettings("bf16", True, True, False)
    assert configured("cuda", "auto", "auto", "on", "auto").cuda_graphs


def test_autocast_follows_the_precision():
    with autocast_context("cpu", "bf16"):
        assert torch.is_autocast_enabled("cpu")
    with autocast_context("cpu", "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError, match="auto is resolved"):
        autocast_context("cpu", "auto")


def test_the_trainer_takes_the_faster_candidate_of_its_real_trial_steps(monkeypatch):
    """training_choice times real Learner steps of the trainer's network and batch (the trial Learner's own, never
    the trainer's); with a clock that charges per setting, it takes the cheaper. The trainer's RNG stream is
    untouched by the trial."""
    clock, seen = Clock(), []
    step = Learner.train_step

    def charged(self, x0, y, *args, **kw):
        seen.append(self.settings)
        out = step(self, x0, y, *args, **kw)
        clock.now += {"bf16": 0.4, "fp32": 1.0}[self.settings.precision] + 0.3 * self.settings.channels_last
        return out

    monkeypatch.setattr(Learner, "train_step", charged)
    monkeypatch.setattr(precision, "now", clock)
    preset = apply_overrides(get_preset("smoke"), ["train_evaluator.steps=5"])
    cfg = preset.train_evaluator
    torch.manual_seed(123)
    before = torch.get_rng_state()
    choice = training_choice("evaluator", preset, torch.device("cpu"), FOUR, cfg.compile)
    assert torch.equal(torch.get_rng_state(), before)
    assert choice.settings == BF16 and {s.precision for s in seen} == {"fp32", "bf16"}
    monkeypatch.setattr(Learner, "train_step", lambda self, *a, **k: (seen.append(self.settings),
                                                                      setattr(clock, "now", clock.now + 1.0
                                                                              - 0.5 * (self.settings == FP32))))
    assert training_choice("evaluator", preset, torch.device("cpu"), FOUR, "off").settings == FP32


def test_learner_runs_in_its_settings():
    preset = get_preset("smoke")
    cfg = preset.train_diffusion
    assert trainer_candidates(cfg, torch.device("cpu"))[0] == FP32
    learner = Learner("diffusion", preset, torch.device("cpu"), settings=BF16_CL)
    assert learner.settings == BF16_CL and learner.fast is learner.net
    assert learner.net.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    entered = []
    real = training.autocast_context
    training_autocast = lambda device, precision: (entered.append(precision), real(device, precision))[1]  # noqa: E731
    training.autocast_context, saved = training_autocast, real
    try:
        images = torch.rand(4, 3, 16, 16) * 2 - 1
        learner.train_step(images, torch.tensor([0, 1, 2, 3]))
    finally:
        training.autocast_context = saved
    assert entered == ["bf16"]
