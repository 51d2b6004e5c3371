"""`adm retrain` cycles against a real MLflow server and a local Ray instance: skip, promote and keep."""

from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from components.config import apply_overrides
from components.config.presets import get_preset
from components.images import make_shapes
from pipelines.infra.tags import WATCHED
from pipelines.infra.tracking import Tracker
from pipelines.workflow.request import RunRequest
from pipelines.workflow.retrain import decide_skip, retrain

# Inception features: one fixed extractor, so FID is comparable between cycles (the evaluator is retrained each
# time). The networks train for one step: their samples are noise-like whatever the data, so which candidate wins is
# decided by the data each cycle's FID is measured against (the first rows of the train split are the reference).
# Two cycles train: the first against a champion registered before it (seed_champion), the second against the first;
# each samples only the champion's scale (2).
OVERRIDES = ["evaluate.features=inception", "evaluate.champion_metric=fid", "sample.guidance_scales=2",
             *[f"train_{k}.steps=1" for k in ("diffusion", "classifier", "evaluator")]]


def add_shapes(folder: Path, count: int, seed: int) -> None:
    """`count` shape images in class sub-folders (an image-folder source that grows between cycles)."""
    images, labels, names = make_shapes(count, 16, 4, seed)
    for i, (image, label) in enumerate(zip(images, labels)):
        target = folder / names[label]
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(target / f"s{seed}-{i:04d}.png")


def add_first(folder: Path, prefix: str, images: np.ndarray) -> None:
    """Images that sort first in the first class folder, so they become the evaluation reference."""
    target = sorted(p for p in folder.iterdir() if p.is_dir())[0]
    for i, image in enumerate(images):
        Image.fromarray(image).save(target / f"{prefix}-{i:04d}.png")


def cycle(tmp_path, server, folder, log=lambda *_: None):
    preset = apply_overrides(get_preset("smoke"), OVERRIDES)
    req = RunRequest(preset, data=str(folder), workdir=str(tmp_path / "work"), tracking_uri=server,
                     experiment="retrain", model_prefix="rt")
    return retrain(req, log=log)


def output_lost_at_register(line: str) -> None:
    """The driver's log (print to a pipe that went away, or a Ctrl-C) fails just as the register stage begins: after
    ingest, train, sample and evaluate, before any registry call."""
    if line.startswith("[register]"):
        raise BrokenPipeError("the driver's output went away")


def versions(client) -> dict:
    return {kind: len(client.search_model_versions(f"name = 'rt-{kind}'")) for kind in ("diffusion", "classifier")}


def champion(client):
    return client.get_model_version_by_alias("rt-diffusion", "champion").version


def seed_champion(client, fid: float) -> str:
    """A champion registered before any cycle ran (by hand, or by an older pipeline), with the FID it was chosen for;
    returns its diffusion version."""
    run = client.create_run(client.create_experiment("retrain-seed"))
    tags = {"adm.fid_scale_2": str(fid), **{key: "seeded" for key in WATCHED}}
    for kind in ("diffusion", "classifier"):
        client.create_registered_model(f"rt-{kind}")
        version = client.create_model_version(f"rt-{kind}", f"{run.info.artifact_uri}/{kind}_model", run.info.run_id,
                                              tags=tags).version
        client.set_registered_model_alias(f"rt-{kind}", "champion", version)
    return champion(client)


def test_no_champion_yet_means_run(tmp_path, mlflow_server):
    req = RunRequest(get_preset("smoke"), data=str(tmp_path), tracking_uri=mlflow_server, model_prefix="none-yet")
    assert decide_skip(Tracker(mlflow_server), req, {k: "x" for k in WATCHED}) == (None, ["no champion yet"])


def test_retrain_cycles_skip_promote_and_keep(tmp_path, ray_cluster, mlflow_server):
    client = MlflowClient(mlflow_server)
    folder = tmp_path / "images"
    add_shapes(folder, 128, seed=1)
    rng = np.random.default_rng(0)
    # noise images are the reference, close to the noise-like samples: the first cycle beats the seeded champion
    add_first(folder, "b-noise", rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8))
    seeded = seed_champion(client, 1e6)

    first = cycle(tmp_path, mlflow_server, folder)
    reg = first["registered"]["diffusion"]
    assert "changed: data_fingerprint, code_version, config_hash" in first["reason"]
    assert "from scratch (the champion cannot be the starting point" in first["reason"]  # the seeded one has no files
    assert reg["previous"] == 1e6 and reg["value"] < reg["previous"], first["reason"]
    assert first["decision"] == "promoted" and champion(client) == reg["version"] != seeded
    assert client.get_model_version_by_alias("rt-classifier", "champion").version == \
        first["registered"]["classifier"]["version"]

    again = cycle(tmp_path, mlflow_server, folder)  # same data, code and config: skipped, nothing trained
    assert again["decision"] == "skipped" and "run_id" not in again
    assert len(client.search_model_versions("name = 'rt-diffusion'")) == 2

    # new data: flat grey images become the reference, far from the samples -> higher FID -> champion kept
    add_first(folder, "a-flat", np.full((40, 16, 16, 3), 128, dtype=np.uint8))
    worse = cycle(tmp_path, mlflow_server, folder)
    reg = worse["registered"]["diffusion"]
    assert "changed: data_fingerprint" in worse["reason"]
    assert f"warm start from champion v{first['registered']['diffusion']['version']}" in worse["reason"]
    for kind in ("diffusion", "classifier"):  # both networks started from the champion pair, and say so
        parent = first["registered"][kind]["version"]
        version = client.get_model_version(f"rt-{kind}", worse["registered"][kind]["version"])
        assert version.tags["adm.parent_version"] == f"rt-{kind}/{parent}"
        assert version.tags["adm.init_from"] == f"models:/rt-{kind}/{parent}"
    assert reg["value"] > reg["previous"], worse["reason"]
    assert worse["decision"] == "kept" and champion(client) == first["registered"]["diffusion"]["version"]
    assert client.get_model_version_by_alias("rt-classifier", "champion").version == \
        first["registered"]["classifier"]["version"]
    tried = cycle(tmp_path, mlflow_server, folder)  # this exact candidate was already tried: skipped
    assert tried["decision"] == "skipped" and "already tried" in tried["reason"]

    # a cycle that trains new networks on new data and fails before registering them leaves the champion alone
    before = versions(client)
    add_shapes(folder, 16, seed=3)
    with pytest.raises(BrokenPipeError):
        cycle(tmp_path, mlflow_server, folder, log=output_lost_at_register)
    assert champion(client) == first["registered"]["diffusion"]["version"]
    assert client.get_model_version_by_alias("rt-classifier", "champion").version == \
        first["registered"]["classifier"]["version"]
    assert versions(client) == before

    experiment = client.get_experiment_by_name("retrain").experiment_id
    runs = client.search_runs([experiment], "tags.`adm.retrain_cycle` = 'smoke'",
                              order_by=["attributes.start_time ASC"])
    decisions = [r.data.tags["adm.decision"] for r in runs]
    assert decisions == ["promoted", "skipped", "kept", "skipped", "failed"]
    assert [r.info.status for r in runs] == ["FINISHED"] * 4 + ["FAILED"]
    assert all(r.data.tags["adm.reason"] for r in runs)
    # the failed cycle got as far as claimed: every stage before register finished, the networks freshly trained
    (pipeline,) = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{runs[-1].info.run_id}'")
    stages = {r.data.tags["adm.stage"]: r
              for r in client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{pipeline.info.run_id}'")}
    assert [stages[s].info.status for s in ("ingest", "train", "sample", "evaluate")] == ["FINISHED"] * 4
    assert "adm.reused_from" not in stages["train"].data.tags
    assert stages["register"].info.status != "FINISHED" and pipeline.info.status == "FAILED"
    runs = runs[:4]
    assert client.get_run(first["run_id"]).data.tags["mlflow.parentRunId"] == first["cycle_run_id"]
    assert len({r.data.tags["adm.data_fingerprint"] for r in runs}) == 2
