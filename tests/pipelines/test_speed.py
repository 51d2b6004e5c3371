"""`auto` in the product path: the trainers' and the sampling jobs' measured speed choice, its cache and its key,
with a stubbed clock (no service, no timing: the fast tier)."""

import json

import pytest
import torch

from components import precision
from components.config import SampleConfig, apply_overrides
from components.config.presets import get_preset
from components.precision import Choice, SpeedSettings
from components.training import Learner
from pipelines.infra import speed
from pipelines.infra.speed import cache_key, cached_choice
from pipelines.stages import sample
from pipelines.stages.sample import SampleJob, choose_sampling_speed
from pipelines.stages.train_worker import WorkerConfig, _speed_choice

AMD = "cpu AMD EPYC family 26 model 2 flags avx2,avx512f,avx512_bf16 onednn_bf16 True"
INTEL = "cpu Intel(R) Xeon(R) family 6 model 207 flags avx2,avx512f,avx512_bf16 onednn_bf16 True"


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch, tmp_path):
    """The measurements' clock, stubbed; an empty speed cache."""
    monkeypatch.setenv("ADM_CACHE_DIR", str(tmp_path / "cache"))
    stub = Clock()
    monkeypatch.setattr(precision, "now", stub)
    return stub


def test_the_cache_key_changes_with_the_device_description_and_the_work():
    work = dict(what="train-diffusion", networks={"network": {"model_channels": 64}}, batch=32,
                asked={"precision": "auto", "channels_last": "auto", "compile": "auto"})
    key = cache_key(AMD, **work)
    assert key == cache_key(AMD, **work)
    assert key != cache_key(INTEL, **work)
    assert key != cache_key(AMD.replace("avx512_bf16", "avx512_bf16,amx_bf16"), **work)
    assert key != cache_key(AMD, **{**work, "batch": 64})
    assert key != cache_key(AMD, **{**work, "networks": {"network": {"model_channels": 128}}})
    assert key != cache_key(AMD, **{**work, "asked": {**work["asked"], "precision": "fp32"}})
    assert key != cache_key(AMD, **{**work, "what": "sample"})


def test_a_cached_choice_is_reused_on_the_same_device_only(clock, monkeypatch):
    calls = []

    def measure():
        calls.append(1)
        return Choice(SpeedSettings("bf16"), "measured", {"fp32 nchw": 1.0, "bf16 nchw": 0.5})

    work = dict(what="train-evaluator", networks={"n": 1}, batch=8, asked={"compile": "off"}, measure=measure)
    monkeypatch.setattr(speed, "device_description", lambda device: AMD)
    assert cached_choice("cpu", **work).source == "measured"
    again = cached_choice("cpu", **work)
    assert again.source == "cached" and again.settings == SpeedSettings("bf16") and len(calls) == 1
    monkeypatch.setattr(speed, "device_description", lambda device: INTEL)
    assert cached_choice("cpu", **work).source == "measured" and len(calls) == 2


def _charge(clock, seen, costs):
    """A trial step that only moves the clock by the cost of the trial learner's settings (real trial steps:
    tests/components/test_precision.py)."""

    def charged(self, x0, y, *args, **kw):
        seen.append(self.settings)
        clock.now += costs(self.settings)
        return {}

    return charged


@pytest.mark.parametrize("faster", ["bf16", "fp32"])
def test_the_trainer_takes_the_faster_candidate_and_caches_it(clock, monkeypatch, faster):
    """What train_loop_per_worker runs with under `auto`: rank 0's measured choice (real trial steps of the
    trainer's network, the clock stubbed), cached, so the next trainer of that network starts without trial steps."""
    if not precision.bf16_supported("cpu"):
        pytest.skip("bf16 is no candidate on this CPU (oneDNN without bf16): only fp32 is ever chosen")
    seen = []
    monkeypatch.setattr(Learner, "train_step", _charge(
        clock, seen, lambda s: (0.4 if s.precision == faster else 1.0) + 0.5 * s.channels_last))
    job = WorkerConfig(kind="evaluator", preset=apply_overrides(get_preset("smoke"), ["train_evaluator.steps=5"]),
                       run_id="r", tracking_uri="", seed=0, threads=1, nonfinite_marker="")
    choice = _speed_choice(job, torch.device("cpu"), rank=0, world=1, tracker=None)
    assert choice.settings == SpeedSettings(faster) and choice.source == "measured"
    assert {s.precision for s in seen} == {"fp32", "bf16"} and set(choice.timings) >= {"fp32 nchw", "bf16 nchw"}
    seen.clear()
    cached = _speed_choice(job, torch.device("cpu"), rank=0, world=1, tracker=None)
    assert cached.settings == choice.settings and cached.source == "cached" and seen == []
    # a setting forced by the user is no choice: nothing is timed
    forced = WorkerConfig(**{**job.__dict__, "preset": apply_overrides(job.preset, [
        "train_evaluator.precision=fp32", "train_evaluator.channels_last=off", "train_evaluator.compile=off"])})
    assert _speed_choice(forced, torch.device("cpu"), 0, 1, None).settings == SpeedSettings("fp32") and seen == []


def _save(kind, preset, folder):
    learner = Learner(kind, preset, torch.device("cpu"), seed=1)
    learner.ema = {}
    learner.save(folder, config={"kind": kind, "preset": __import__("dataclasses").asdict(preset)})
    return str(folder)


def test_the_sampling_job_times_guided_batches_and_takes_the_faster(clock, monkeypatch, tmp_path):
    """The sampling job's choice times trial batches through sample_batch with every method of the grid in them
    (the classifier's backward pass included); with the clock charging per arithmetic it takes the cheaper."""
    if not precision.bf16_supported("cpu"):
        pytest.skip("bf16 is no candidate on this CPU (oneDNN without bf16): only fp32 is ever chosen")
    preset = get_preset("smoke")
    nets = {k: _save(k, preset, tmp_path / k) for k in ("diffusion", "classifier")}
    batches = []
    real = sample.sample_batch

    def charged(nets_, rows, *args, **kw):
        batches.append(rows)
        out = real(nets_, rows, *args, **kw)
        layout = nets_.model.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)
        clock.now += (0.3 if torch.is_autocast_enabled("cpu") else 1.0) + 0.5 * layout
        return out

    monkeypatch.setattr(sample, "sample_batch", charged)
    job = SampleJob(diffusion=nets["diffusion"], classifier=nets["classifier"], out=str(tmp_path / "out"),
                    config=SampleConfig(samplers=("ddim5",), guidance_scales=(0.0, 2.0), num_samples=4, batch_size=4))
    choice = Choice.from_dict(choose_sampling_speed(job, threads=1, run_steps=10))
    assert choice.settings == SpeedSettings("bf16") and choice.source == "measured"
    assert all(r.sampler == sample.TRIAL_SAMPLER for rows in batches for r in rows)
    assert all({c.classifier_scale for c in rows} == {0.0, 2.0} for rows in batches)  # guided rows in every batch
    # the next job of these networks on this device takes the cached choice, whatever its batch size
    batches.clear()
    other = SampleJob(**{**job.__dict__, "config": SampleConfig(samplers=("ddim5",), guidance_scales=(0.0, 2.0),
                                                                num_samples=4, batch_size=2)})
    assert Choice.from_dict(choose_sampling_speed(other, 1, 10)).source == "cached" and batches == []
    stored = list((tmp_path / "cache" / "speed").glob("*.json"))
    assert len(stored) == 1 and json.loads(stored[0].read_text())["choice"]["settings"]["precision"] == "bf16"


def test_a_restarted_trainer_goes_on_in_the_settings_its_run_recorded(clock, monkeypatch, tmp_path):
    """A worker group that restarts (or a resumed run) takes the settings the run's first part recorded, without
    trial steps and without recording them again (MLflow refuses a param that changes): its checkpoint's optimizer
    state and numerics go on as they began, whatever the speed cache of the new node says."""
    from pipelines.infra.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = tracker.start_run("speed", "train-evaluator")
    first = Choice(SpeedSettings("bf16", channels_last=True), "measured", {"bf16 channels_last": 0.5})
    speed.record(tracker, run_id, "train-evaluator", first)
    seen = []
    monkeypatch.setattr(Learner, "train_step", _charge(clock, seen, lambda s: 1.0))
    job = WorkerConfig(kind="evaluator", preset=get_preset("smoke"), run_id=run_id, tracking_uri=tracker.uri, seed=0,
                       threads=1, nonfinite_marker="")
    again = _speed_choice(job, torch.device("cpu"), rank=0, world=1, tracker=tracker)
    assert again.settings == first.settings and again.source == "run" and seen == []
    # a run with nothing recorded measures
    other = tracker.start_run("speed", "train-evaluator")
    fresh = _speed_choice(WorkerConfig(**{**job.__dict__, "run_id": other}), torch.device("cpu"), 0, 1, tracker)
    assert fresh.source == "measured" and seen


@pytest.mark.parametrize("record", [
    "not json", {"choice": {"settings": {"precision": "fp32"}, "timings": {"fp32 nchw": "x"}}},
    {"choice": {"settings": {"precision": "auto"}}}, {"choice": {"settings": {"precision": "fp16"}}},
    {"choice": {"settings": {"precision": "bf16", "channels_last": "yes"}}}, {"choice": []}, {"other": 1}])
def test_a_cache_record_this_code_did_not_write_is_measured_again(clock, record):
    key = cache_key(AMD, "train-diffusion", {}, 8, {})
    root = speed.cache_root()
    root.mkdir(parents=True)
    (root / f"{key}.json").write_text(record if isinstance(record, str) else json.dumps(record))
    assert speed.load_cached(key) is None
    good = Choice(SpeedSettings("bf16", True), "measured", {"bf16 channels_last": 0.5})
    speed.store(key, good, {})
    assert speed.load_cached(key).settings == good.settings
    assert (root / f"{key}.json").stat().st_mode & 0o044 == 0o044  # readable by the machine's other users


def test_a_cache_folder_that_cannot_be_written_costs_a_measurement_not_the_run(monkeypatch, tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    monkeypatch.setenv("ADM_CACHE_DIR", str(blocked))  # its speed/ folder cannot be made
    with pytest.warns(UserWarning, match="measured again"):
        speed.store("k", Choice(SpeedSettings()), {})
    assert speed.load_cached("k") is None


def test_a_trial_batch_smaller_than_the_grid_times_every_guidance():
    from components.config.grid import Cell

    cells = [Cell("ddim5", 0.0), Cell("dpm++2m-4", 0.0), Cell("ddim5", 2.0), Cell("dpm++2m-4", 2.0),
             Cell("ddim5", 2.0, method="cfg")]
    rows = sample.trial_cells(cells, 3)
    assert {(c.method, c.scale > 0) for c in rows} == {("classifier", False), ("classifier", True), ("cfg", True)}
    assert all(c.sampler == sample.TRIAL_SAMPLER for c in rows)
