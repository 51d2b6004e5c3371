"""The logged MLflow model of a network: loaded back by MLflow (models from code: safetensors weights and the network's
description, nothing pickled), it predicts what the network computes, for each kind of network, including a diffusion
model trained with label dropout (the null class of classifier-free guidance is one more label row) and a cascade's
upsampler, with and without the noise-level embedding of conditioning augmentation."""

import json

import mlflow
import numpy as np
import pytest
import torch

from components.checkpoint import save_weights
from components.config import apply_overrides
from components.config.presets import get_preset
from components.networks import build_network
from pipelines.infra.tracking import Tracker
from pipelines.stages.train import network_description


@pytest.mark.parametrize("kind,overrides", [("diffusion", []), ("diffusion", ["train_diffusion.label_dropout=0.1"]),
                                            ("classifier", []), ("evaluator", [])])
def test_a_logged_network_loads_and_predicts_as_the_network(tmp_path, kind, overrides):
    preset = apply_overrides(get_preset("smoke"), overrides)
    torch.manual_seed(0)
    net = build_network(kind, preset).eval()
    weights, config = tmp_path / "model.safetensors", tmp_path / "network.json"
    save_weights(net.state_dict(), weights)
    config.write_text(json.dumps(network_description(kind, preset)))
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = tracker.start_run("models", "logged")
    uri = tracker.log_network(run_id, f"{kind}_model", weights, config)
    model = mlflow.pyfunc.load_model(uri)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([5, 900])
    y = torch.tensor([1, getattr(net, "null_label", None) or 2])  # the null label where the network has one
    with torch.no_grad():
        expected = net(x, t, y) if kind == "diffusion" else net(x, t)
    got = model.predict({"x_t": x.numpy(), "t": t.numpy(), **({"y": y.numpy()} if kind == "diffusion" else {})})
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("overrides", [[], ["train_upsampler.low_res_noise=0.2"]])
def test_a_logged_upsampler_loads_and_predicts_from_low_res(tmp_path, overrides):
    preset = apply_overrides(get_preset("smoke-cascade"), overrides)
    torch.manual_seed(0)
    net = build_network("upsampler", preset).eval()
    for p in net.parameters():  # the output layer starts at zero
        p.data.normal_(0, 0.05)
    weights, config = tmp_path / "model.safetensors", tmp_path / "network.json"
    save_weights(net.state_dict(), weights)
    config.write_text(json.dumps(network_description("upsampler", preset)))
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    uri = tracker.log_network(tracker.start_run("models", "logged"), "upsampler_model", weights, config)
    model = mlflow.pyfunc.load_model(uri)
    x, t, y, low = torch.randn(2, 3, 16, 16), torch.tensor([5, 900]), torch.tensor([1, 3]), torch.randn(2, 3, 8, 8)
    level = {"low_res_sigma": torch.tensor([0.0, 0.1])} if overrides else {}
    with torch.no_grad():
        expected = net(x, t, low_res=low, y=y, **level)
    got = model.predict({"x_t": x.numpy(), "t": t.numpy(), "y": y.numpy(), "low_res": low.numpy(),
                         **{k: v.numpy() for k, v in level.items()}})
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-5)
def test_a_training_runs_snapshot_is_a_network_reference(tmp_path, monkeypatch):
    """runs:/RUN_ID/snapshots/step_N (train_<kind>.snapshot_steps, autoguidance's step:N guide): downloaded once into
    the cache and read as that checkpoint's network, its EMA weights."""
    from components.config import to_dict
    from components.training import Learner
    from pipelines.infra.model_refs import resolve, snapshot_path

    monkeypatch.setenv("ADM_CACHE_DIR", str(tmp_path / "cache"))
    preset = get_preset("smoke")
    learner = Learner("diffusion", preset, torch.device("cpu"))
    folder = tmp_path / "snapshot"
    learner.save(folder, config={"kind": "diffusion", "preset": to_dict(preset), "step": 10})
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = tracker.start_run("snapshots", "train-diffusion")
    tracker.log_artifacts(run_id, folder, snapshot_path(10))
    ref = resolve(f"runs:/{run_id}/{snapshot_path(10)}", "diffusion", tracking_uri=tracker.uri)
    assert ref.weights.startswith(str(tmp_path / "cache")) and ref.weights.endswith("ema_0.99.safetensors")
    expected = learner.ema_network().state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in ref.build().state_dict().items())
