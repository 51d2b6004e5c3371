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
# time). Each cycle samples only the champion's scale (2), 32 samples. The champion is challenged with the paired
# difference of FID at that cell (register.challenge_champion): a cycle trained for 60 steps beats a champion trained
# for 1 (noise-like samples) by far more than the noise; a cycle whose networks are the champion's own (its train
# stage reused) samples the same images, a difference of exactly 0, never resolved.
OVERRIDES = ["evaluate.features=inception", "evaluate.champion_metric=fid", "sample.guidance_scales=2",
             "sample.num_samples=32", "sample.batch_size=32", "evaluate.num_reference=64",
             *[f"train_{k}.steps=1" for k in ("diffusion", "classifier", "evaluator")]]
TRAINED = ["train_diffusion.steps=60", "train_diffusion.lr=2e-3", "train_classifier.steps=20"]


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


def cycle(tmp_path, server, folder, overrides=(), from_scratch=False, force=False, log=lambda *_: None):
    preset = apply_overrides(get_preset("smoke"), [*OVERRIDES, *overrides])
    req = RunRequest(preset, data=str(folder), workdir=str(tmp_path / "work"), tracking_uri=server,
                     experiment="retrain", model_prefix="rt", from_scratch=from_scratch, force=force)
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


def test_no_champion_yet_means_run(tmp_path, mlflow_server):
    req = RunRequest(get_preset("smoke"), data=str(tmp_path), tracking_uri=mlflow_server, model_prefix="none-yet")
    assert decide_skip(Tracker(mlflow_server), req, {k: "x" for k in WATCHED}) == (None, ["no champion yet"])


def test_a_cycle_skips_what_the_champion_is_and_what_was_tried_and_kept(mlflow_server):
    """Registered versions carry the state they were built from (data, code, config): a cycle in the champion's
    state is skipped, one in the state of a version that was tried and kept out is skipped, any other runs."""
    client, tracker = MlflowClient(mlflow_server), Tracker(mlflow_server)
    run = client.create_run(client.create_experiment("decide-skip"))
    client.create_registered_model("ds-diffusion")
    states = {"champion": {k: f"c-{k}" for k in WATCHED}, "kept": {**{k: f"c-{k}" for k in WATCHED},
                                                                   WATCHED[0]: "new-data"}}
    for state in states.values():
        client.create_model_version("ds-diffusion", f"{run.info.artifact_uri}/m", run.info.run_id, tags=state)
    client.set_registered_model_alias("ds-diffusion", "champion", "1")
    req = RunRequest(get_preset("smoke"), tracking_uri=mlflow_server, model_prefix="ds")
    skip, changed = decide_skip(tracker, req, states["champion"])
    assert "unchanged since champion ds-diffusion v1" in skip and changed == []
    skip, changed = decide_skip(tracker, req, states["kept"])
    assert "already tried as ds-diffusion v2" in skip and changed == ["data_fingerprint"]
    other = {**states["kept"], WATCHED[2]: "another-config"}
    assert decide_skip(tracker, req, other) == (None, ["data_fingerprint", "config_hash"])


def test_retrain_cycles_skip_promote_and_keep(tmp_path, ray_cluster, mlflow_server):
    client = MlflowClient(mlflow_server)
    folder = tmp_path / "images"
    add_shapes(folder, 160, seed=1)

    first = cycle(tmp_path, mlflow_server, folder)  # one step of training: noise-like samples
    assert first["decision"] == "promoted" and "no champion yet" in first["reason"]
    assert champion(client) == first["registered"]["diffusion"]["version"]
    again = cycle(tmp_path, mlflow_server, folder)  # same data, code and config: skipped, nothing trained
    assert again["decision"] == "skipped" and "run_id" not in again

    # trained for 60 steps: better than the 1-step champion by far more than the noise (paired, resolved)
    better = cycle(tmp_path, mlflow_server, folder, TRAINED, from_scratch=True)
    reg = better["registered"]["diffusion"]
    assert "from scratch (--from-scratch)" in better["reason"]
    assert better["decision"] == "promoted" and reg["compared"]["resolved"] and reg["compared"]["delta"] < 0, reg
    assert reg["reason"].startswith("better: fid delta") and champion(client) == reg["version"]
    assert client.get_model_version_by_alias("rt-classifier", "champion").version == \
        better["registered"]["classifier"]["version"]

    # unchanged data and config, forced: every stage again, the networks retrained from scratch, which on this
    # machine gives the champion's very weights (training is deterministic). The challenge samples the champion with
    # the same seeds: the same images, a difference of exactly 0, never resolved: kept, and the versions say why
    same = cycle(tmp_path, mlflow_server, folder, TRAINED, from_scratch=True, force=True)
    reg = same["registered"]["diffusion"]
    assert reg["version"] != better["registered"]["diffusion"]["version"]  # a new training run: a new version
    assert same["decision"] == "kept" and reg["compared"]["delta"] == 0 and not reg["compared"]["resolved"]
    assert reg["reason"].startswith("not distinguishable: fid delta +0 [+0, +0]"), reg["reason"]
    assert champion(client) == better["registered"]["diffusion"]["version"]
    kept = client.get_model_version("rt-diffusion", reg["version"])
    assert kept.tags["adm.decision"] == "kept" and kept.tags["adm.reason"] == reg["reason"]

    # a cycle that trains new networks on new data, starting from the champion pair, and fails before registering
    # them leaves the champion alone
    before = versions(client)
    add_shapes(folder, 16, seed=3)
    with pytest.raises(BrokenPipeError):
        cycle(tmp_path, mlflow_server, folder, TRAINED, log=output_lost_at_register)
    assert champion(client) == better["registered"]["diffusion"]["version"]
    assert client.get_model_version_by_alias("rt-classifier", "champion").version == \
        better["registered"]["classifier"]["version"]
    assert versions(client) == before

    experiment = client.get_experiment_by_name("retrain").experiment_id
    runs = client.search_runs([experiment], "tags.`adm.retrain_cycle` = 'smoke'",
                              order_by=["attributes.start_time ASC"])
    decisions = [r.data.tags["adm.decision"] for r in runs]
    assert decisions == ["promoted", "skipped", "promoted", "kept", "failed"]
    assert [r.info.status for r in runs] == ["FINISHED"] * 4 + ["FAILED"]
    assert all(r.data.tags["adm.reason"] for r in runs)
    # the failed cycle got as far as claimed: every stage before register finished, the networks freshly trained from
    # the champion pair (their runs name it)
    (pipeline,) = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{runs[-1].info.run_id}'")
    stages = {r.data.tags["adm.stage"]: r
              for r in client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{pipeline.info.run_id}'")}
    assert [stages[s].info.status for s in ("ingest", "train", "sample", "evaluate")] == ["FINISHED"] * 4
    assert "adm.reused_from" not in stages["train"].data.tags
    assert stages["register"].info.status != "FINISHED" and pipeline.info.status == "FAILED"
    trainers = {r.data.tags["adm.network"]: r for r in
                client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{stages['train'].info.run_id}'")}
    for kind in ("diffusion", "classifier"):
        parent = better["registered"][kind]["version"]
        assert trainers[kind].data.tags["adm.init_from"] == f"models:/rt-{kind}/{parent}"
    assert client.get_run(better["run_id"]).data.tags["mlflow.parentRunId"] == better["cycle_run_id"]
