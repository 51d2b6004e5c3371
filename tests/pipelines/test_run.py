"""`adm run` end to end (smoke preset) on a local Ray instance against a real MLflow tracking server."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from components.config import ConfigError, apply_overrides
from components.presets import get_preset
from pipelines.run import STAGES, Pipeline, RunRequest, check_request

ROOT = Path(__file__).resolve().parents[2]


def children(client, experiment_id, run_id):
    return client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'")


def stage_runs(client, run_id):
    run = client.get_run(run_id)
    return {r.data.tags["adm.stage"]: r for r in children(client, run.info.experiment_id, run_id)}


def test_config_errors_before_any_stage(tmp_path):
    bad = apply_overrides(get_preset("smoke"), ["evaluate.champion_scale=3"])
    with pytest.raises(ConfigError, match="champion_scale"):
        check_request(RunRequest(bad, workdir=str(tmp_path)))
    assert not any(tmp_path.iterdir())


def test_smoke_pipeline_tree_cache_and_registry(tmp_path, ray_cluster, mlflow_server):
    req = RunRequest(get_preset("smoke"), workdir=str(tmp_path / "work"), tracking_uri=mlflow_server,
                     experiment="e2e")
    first = Pipeline(req, log=lambda *_: None).execute()
    client = MlflowClient(mlflow_server)
    parent = client.get_run(first["run_id"])
    assert parent.info.status == "FINISHED"
    stages = stage_runs(client, first["run_id"])
    assert set(stages) == set(STAGES) and all(r.info.status == "FINISHED" for r in stages.values())
    trainers = children(client, parent.info.experiment_id, stages["train"].info.run_id)
    assert sorted(r.data.tags["adm.network"] for r in trainers) == ["classifier", "diffusion", "evaluator"]
    scale_runs = children(client, parent.info.experiment_id, stages["sample"].info.run_id)
    assert sorted(float(r.data.params["guidance_scale"]) for r in scale_runs) == [0.0, 2.0]
    for run in scale_runs:
        for key in ("fid", "sfid", "precision", "recall", "evaluator_fid", "score", "accuracy"):
            assert key in run.data.metrics, key
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["grid.png"]
    assert {"fid_scale_0", "fid_scale_2", "accuracy_scale_2"} <= set(parent.data.metrics)
    plots = {a.path for a in client.list_artifacts(first["run_id"], "plots")}
    assert "plots/precision_vs_recall.png" in plots
    assert parent.inputs.dataset_inputs[0].dataset.digest == first["data"]["fingerprint"][:36]
    for kind in ("diffusion", "classifier"):
        champion = client.get_model_version_by_alias(f"adm-smoke-{kind}", "champion")
        assert champion.version == first["registered"][kind]["version"]

    lines = []
    second = Pipeline(req, log=lines.append).execute()
    assert sum("reused" in line for line in lines) == len(STAGES)
    again = stage_runs(client, second["run_id"])
    assert again["train"].data.tags["adm.reused_from"] == stages["train"].info.run_id
    assert second["rows"] == first["rows"]
    assert len(client.search_model_versions("name = 'adm-smoke-diffusion'")) == 1

    # the champion alias moves only when the chosen metric (FID at scale 2) improves
    pipeline = Pipeline(RunRequest(get_preset("smoke"), tracking_uri=mlflow_server, experiment="e2e",
                                   model_prefix="champ"), log=lambda *_: None)
    pipeline.run_id = first["run_id"]
    scratch = client.create_run(parent.info.experiment_id).info.run_id
    trained = first["train"]
    swapped = {"diffusion": trained["classifier"], "classifier": trained["evaluator"]}
    rows = [{"guidance_scale": 2.0, "fid": 50.0}]
    assert pipeline.register(scratch, trained, rows)["diffusion"]["champion"]
    assert not pipeline.register(scratch, swapped, [{"guidance_scale": 2.0, "fid": 60.0}])["diffusion"]["champion"]
    assert client.get_model_version_by_alias("champ-diffusion", "champion").version == "1"
    improved = {"diffusion": trained["evaluator"], "classifier": trained["diffusion"]}
    assert pipeline.register(scratch, improved, [{"guidance_scale": 2.0, "fid": 40.0}])["diffusion"]["champion"]
    assert client.get_model_version_by_alias("champ-diffusion", "champion").version == "3"


def _wait(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(2)
    pytest.fail(f"timed out waiting for {what}")


def test_resume_after_killed_driver(tmp_path, mlflow_server):
    client = MlflowClient(mlflow_server)
    cmd = [sys.executable, "-m", "pipelines.cli", "run", "--preset", "smoke", "--workdir", str(tmp_path / "work"),
           "--tracking-uri", mlflow_server, "--experiment", "run-resume", "--no-register"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)

    def train_finished():
        exp = client.get_experiment_by_name("run-resume")
        found = exp and client.search_runs([exp.experiment_id], "tags.`adm.pipeline` = 'smoke'")
        train = found and stage_runs(client, found[0].info.run_id).get("train")
        return train if train and train.info.status == "FINISHED" else None

    try:
        train = _wait(train_finished, 600, "the train stage to finish")
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    parent_id = train.data.tags["mlflow.parentRunId"]
    _wait(lambda: client.get_run(parent_id).info.status == "KILLED", 60, "the sentinel to mark the run KILLED")

    resumed = subprocess.run(cmd[:4] + ["--resume", parent_id, "--tracking-uri", mlflow_server, "--experiment",
                                        "run-resume", "--no-register"], env=env, cwd=tmp_path, capture_output=True,
                             text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "[train] finished earlier in this run" in resumed.stdout
    assert stage_runs(client, parent_id)["train"].info.run_id == train.info.run_id
    assert client.get_run(parent_id).info.status == "FINISHED"
    stages = [r for r in children(client, train.info.experiment_id, parent_id)]
    assert sorted(r.data.tags["adm.stage"] for r in stages) == ["evaluate", "ingest", "sample", "train"]
    assert all(r.info.status == "FINISHED" for r in stages)


def test_mlflow_project_entry_point(tmp_path, mlflow_server):
    dest = tmp_path / "shapes"
    done = subprocess.run([sys.executable, "-m", "mlflow", "run", str(ROOT / "mlflow_projects"), "-e", "ingest",
                           "-P", "source=shapes", "-P", f"dest={dest}", "-P", "resolution=16", "-P", "num_images=32",
                           "--env-manager", "local", "--experiment-name", "projects"],
                          env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (dest / "manifest.json").exists()
    client = MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("projects").experiment_id])
    assert runs[0].info.status == "FINISHED" and runs[0].data.tags["mlflow.project.entryPoint"] == "ingest"

