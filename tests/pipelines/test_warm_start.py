"""`train_<kind>.init_from` against a real MLflow server and a local Ray instance: a trainer started from the
registry's champion starts at its weights and names its parent; bad starting points fail before any worker starts."""

import dataclasses
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from components.checkpoint import load_into, save_weights
from components.config import ConfigError, apply_overrides, to_dict
from components.config.presets import get_preset
from components.diffusion import create_diffusion
from components.images import make_shapes, to_model_input
from components.losses import training_losses
from components.networks import build_network
from components.training import Learner
from pipelines.infra.lineage import config_hash
from pipelines.infra.tracking import Tracker
from pipelines.infra.tracking_checks import TrackingError
from pipelines.stages.ingest import ingest
from pipelines.stages.sources import IngestOptions
from pipelines.stages.train import TrainOptions, train
from pipelines.workflow.request import RunRequest
from pipelines.workflow.retrain import warm_start

PREFIX = "ws"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    dest = tmp_path_factory.mktemp("data") / "shapes"
    ingest("shapes", str(dest), IngestOptions(resolution=16, num_images=64, rows_per_shard=64), log=lambda *_: None)
    return str(dest)


def _batch(n=8):
    images, labels, _ = make_shapes(n, 16, 4, seed=3)
    return to_model_input(images), torch.from_numpy(labels)


def _register_trained(tracker, kind: str, folder: Path) -> None:
    """`kind` trained a few steps in this process (so its weights are no seed's random init), logged as an `adm
    train` run logs it and registered as PREFIX-<kind> with the alias champion, both networks by one pipeline run."""
    preset = get_preset("smoke")
    learner = Learner(kind, preset, torch.device("cpu"), seed=11)
    x, y = _batch(16)
    for _ in range(5):
        learner.train_step(x, y)
    learner.save(folder, config={"kind": kind, "preset": to_dict(preset), "step": learner.step})
    run_id = tracker.start_run("warm-seed", f"train-{kind}")
    tracker.log_artifacts(run_id, folder, "checkpoint")
    weights = folder / ("ema_0.99.safetensors" if learner.ema else "model.safetensors")
    model_uri = tracker.log_network(run_id, f"{kind}_model", weights, folder / "model.json")
    version = tracker.register(model_uri, f"{PREFIX}-{kind}", run_id, tags={"adm.pipeline_run": "seed"})
    tracker.set_alias(f"{PREFIX}-{kind}", "champion", version)
    tracker.end_run(run_id)


@pytest.fixture(scope="module")
def champion(tmp_path_factory, mlflow_server):
    """The champion pair, version 1 of ws-diffusion and ws-classifier; returns the diffusion checkpoint folder."""
    tracker, root = Tracker(mlflow_server), tmp_path_factory.mktemp("champion")
    for kind in ("diffusion", "classifier"):
        _register_trained(tracker, kind, root / kind)
    return root / "diffusion"


def _loss(net, preset) -> float:
    """The hybrid loss of `net` on a fixed batch, timesteps and noise."""
    x, y = _batch()
    t = torch.tensor([0, 100, 250, 400, 550, 700, 850, 999])
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        terms = training_losses(create_diffusion(preset.diffusion, ""), net.eval(), x, t, {"y": y}, noise=noise)
    return float(terms["loss"].mean())


def _network(preset, weights) -> torch.nn.Module:
    return load_into(build_network("diffusion", preset), str(weights))


def test_trainer_starts_at_the_champion_and_names_it(tmp_path, shapes, champion, ray_cluster, mlflow_server):
    """One step at a negligible learning rate: the trainer's weights after it are its starting weights, so their loss
    on a fixed batch is the champion's (a random init's is far from it); the run records the pinned version."""
    preset = apply_overrides(get_preset("smoke"), ["train_diffusion.init_from=champion", "train_diffusion.steps=1",
                                                   "train_diffusion.lr=1e-12", "train_diffusion.sample_interval=0"])
    opts = TrainOptions(storage=str(tmp_path / "storage"), tracking_uri=mlflow_server, experiment="warm",
                        model_prefix=PREFIX)
    outcome = train(preset, shapes, opts, kinds=("diffusion",), log=lambda *_: None)["diffusion"]
    started = _loss(_network(preset, Path(outcome.checkpoint) / "model.safetensors"), preset)
    parent = _loss(_network(preset, champion / "ema_0.99.safetensors"), preset)
    torch.manual_seed(0)
    scratch = _loss(build_network("diffusion", preset), preset)
    assert abs(started - parent) < 1e-4 * abs(parent)
    assert abs(scratch - parent) > 100 * abs(started - parent)
    run = MlflowClient(mlflow_server).get_run(outcome.run_id)
    assert run.data.tags["adm.init_from"] == f"models:/{PREFIX}-diffusion/1"
    assert run.data.tags["adm.parent_version"] == f"{PREFIX}-diffusion/1"
    assert run.data.params["train_diffusion.init_from"] == "champion"


def test_bad_starting_points_fail_before_workers_start(tmp_path, shapes, champion, mlflow_server, actor_count):
    actors, smoke = actor_count(), get_preset("smoke")
    opts = TrainOptions(storage=str(tmp_path / "storage"), tracking_uri=mlflow_server, experiment="warm-bad",
                        model_prefix=PREFIX)

    def fails(overrides, pattern, error=ConfigError, kind="diffusion", **changes):
        with pytest.raises(error, match=pattern):
            train(apply_overrides(smoke, overrides), shapes, TrainOptions(**{**opts.__dict__, **changes}),
                  kinds=(kind,), log=lambda *_: None)

    fails([f"train_diffusion.init_from={champion}", "unet.model_channels=64"],
          r"train_diffusion.init_from='.*': it holds a diffusion network of another architecture "
          r"\(model_channels=32 there, 64 here\)")
    fails(["train_diffusion.init_from=champion"], r"train_diffusion.init_from='champion': the MLflow registry at "
          r".* has no registered model 'nobody-diffusion'", model_prefix="nobody")
    MlflowClient(mlflow_server).create_registered_model("ws-unpromoted")
    fails(["train_diffusion.init_from=models:/ws-unpromoted@champion"], r"registered model 'ws-unpromoted' has no "
          r"alias 'champion'")
    fails([f"train_diffusion.init_from=models:/{PREFIX}-diffusion/7"], r"has no version '7' of 'ws-diffusion'")
    other = tmp_path / "classifier.safetensors"  # a released-style weights file of another network
    save_weights(build_network("classifier", smoke).state_dict(), other)
    fails([f"train_diffusion.init_from={other}"], r"train_diffusion.init_from=.*does not fit the network: missing keys")
    fails(["train_evaluator.init_from=champion"], "the evaluator network is never registered", kind="evaluator")
    fails(["train_diffusion.init_from=champion"], "unreachable", TrackingError, tracking_uri="http://127.0.0.1:9")
    assert actor_count() == actors  # no Ray Train controller, no worker
    experiment = MlflowClient(mlflow_server).get_experiment_by_name("warm-bad")
    assert experiment is None or not MlflowClient(mlflow_server).search_runs([experiment.experiment_id])


def test_retrain_starts_from_a_champion_that_fits(champion, mlflow_server):
    """`adm retrain`'s choice: the champion pair when it fits the preset, else random weights, saying why; the
    config hash (what the next cycle compares) does not see the choice."""
    tracker = Tracker(mlflow_server)
    req = RunRequest(get_preset("smoke"), data="shapes", tracking_uri=mlflow_server, model_prefix=PREFIX)
    warm, why = warm_start(tracker, req)
    assert why == "warm start from champion v1"
    assert warm.preset.train_diffusion.init_from == warm.preset.train_classifier.init_from == "champion"
    assert warm.preset.train_evaluator.init_from == "" and config_hash(warm.preset) == config_hash(req.preset)
    for change, why in (({"from_scratch": True}, "--from-scratch"), ({"model_prefix": "none"}, "no champion yet")):
        other = dataclasses.replace(req, **change)
        assert warm_start(tracker, other) == (other, f"from scratch ({why})")
    wider = dataclasses.replace(req, preset=apply_overrides(req.preset, ["unet.model_channels=64"]))
    kept, why = warm_start(tracker, wider)
    assert kept is wider and why.startswith("from scratch (the champion cannot be the starting point: "
                                            "train_diffusion.init_from='champion': it holds a diffusion network of "
                                            "another architecture (model_channels=32 there, 64 here)")
