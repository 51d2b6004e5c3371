"""What the tracking layer guarantees whatever store it writes to (here: sqlite files, no server): each metric step
once when a stage is run again (a resumed pipeline) or a second stage writes into a run, no child run twice, the
large-artifact settings in every process that tracks, MLflow system metrics on runs addressed by id, and a first probe
that waits out a slow server but not a missing one."""

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from components.config import EvaluateConfig, SampleConfig, apply_overrides
from components.config.presets import get_preset
from pipelines.infra.system_metrics import SystemMetrics
from pipelines.infra.tracking import Tracker
from pipelines.infra.tracking_checks import ARTIFACT_TRANSFER, TrackingError, _probe_server
from pipelines.stages.champion import champion_cell
from pipelines.stages.evaluate import EvaluateJob, EvaluationResult
from pipelines.stages.report import log_evaluation, log_summary
from pipelines.stages.sample import SampleJob
from pipelines.stages.sample_outputs import SampleResult, cell_record, log_to_mlflow
from pipelines.workflow.sentinel import mark_killed

ROOT = Path(__file__).resolve().parents[2]


def steps_of(client, run_id: str) -> dict:
    """{metric: its steps, in logging order} of a run."""
    keys = client.get_run(run_id).data.metrics
    return {key: [m.step for m in client.get_metric_history(run_id, key)] for key in keys}


def assert_each_step_once(client, run_id: str) -> None:
    for key, steps in steps_of(client, run_id).items():
        assert len(steps) == len(set(steps)), (client.get_run(run_id).info.run_name, key, steps)


def _sampled(tmp_path, tracker, stage_run: str):
    """A sampling job of two cells as the sample stage records it: the cells' grids on disk, their records."""
    job = SampleJob(diffusion="runs:/d", classifier="runs:/c", out=str(tmp_path / "samples"), tracking_uri=tracker.uri,
                    experiment="e", parent_run_id=stage_run,
                    config=SampleConfig(samplers=("ddim5",), guidance_scales=(0.0, 2.0), num_samples=4))
    grid = tmp_path / "grid.png"
    grid.write_bytes(bytes.fromhex("89504e470d0a1a0a"))  # a grid's bytes: only their upload is tested here
    rows = {"indices": np.arange(4), "network_evals": np.full(4, 5), "classifier_passes": np.full(4, 5),
            "seconds": np.full(4, 0.25)}
    cells = {c.key: cell_record(c, 1000, 80.0, rows) for c in job.cells}
    result = SampleResult(job.out, {k: f"{job.out}/{k}/samples.npz" for k in cells}, {k: str(grid) for k in cells},
                          computed_shards=1, skipped_shards=0, cells=cells)
    return job, result


def _evaluated(job, result, eval_run: str) -> tuple:
    rows = [{"cell": key, "sampler": "ddim5", "guidance_method": "classifier", "guidance_interval": "all",
             **result.cells[key], "num_samples": 4, "fid": 10.0 + i, "precision": 0.5, "recall": 0.5}
            for i, key in enumerate(result.cells)]
    evaluation = EvaluateJob(samples=job.out, reference="ref", config=EvaluateConfig(), tracking_uri=job.tracking_uri,
                             experiment="e", parent_run_id=eval_run, cell_run_ids=dict(result.run_ids))
    return evaluation, EvaluationResult(rows)


def test_a_stage_run_again_logs_each_run_and_each_step_once(tmp_path):
    """The sample stage's cell runs, the evaluate stage's metrics in them, the pipeline run's metrics along the scales:
    once each in one pass (the evaluate stage logged the cells' coordinates a second time at step 0), and still once
    when a resumed pipeline runs the stages again in the same runs (a driver killed while they logged)."""
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    pipeline = tracker.start_run("e", "adm-run-smoke")
    sample_run, eval_run = (tracker.start_run("e", name, pipeline) for name in ("sample", "evaluate"))
    job, result = _sampled(tmp_path, tracker, sample_run)
    preset = apply_overrides(get_preset("smoke"), ["sample.samplers=ddim5"])
    client = MlflowClient(tracker.uri)
    for attempt in range(2):  # the second: the stages again in the runs of a resumed pipeline
        if attempt:  # the driver died while it logged the cells: the sentinel ends what was still RUNNING
            for cell in tracker.children("e", sample_run):
                client.update_run(cell.info.run_id, "RUNNING")
            mark_killed(pipeline, "e", tracker.uri)
        log_to_mlflow(job, result, log=lambda *_: None)
        evaluation, scored = _evaluated(job, result, eval_run)
        log_evaluation(evaluation, scored, log=lambda *_: None)
        log_summary(tracker, pipeline, scored.rows, champion_cell(preset, scored.rows))
        cells = tracker.children("e", sample_run)
        assert sorted(r.data.tags["adm.cell"] for r in cells) == ["ddim5/scale_0", "ddim5/scale_2"], attempt
        for run_id in [pipeline] + [r.info.run_id for r in cells]:
            assert_each_step_once(client, run_id)
        assert all(r.info.status == "FINISHED" and "adm.ended_by" not in r.data.tags for r in cells), attempt
        assert tracker.children("e", eval_run) == []  # the cells' metrics went to the sampling runs
    metrics = client.get_run(result.run_ids["ddim5/scale_2"]).data.metrics
    assert metrics["fid"] == 11.0 and metrics["guidance_scale"] == 2.0 and metrics["network_evals"] == 5
    assert steps_of(client, pipeline)["fid_by_scale"] == [0, 1]


def test_cells_of_a_reused_sample_stage_get_one_evaluate_run_each(tmp_path):
    """A sample stage reused from another pipeline: evaluate makes its own cell runs, and a resumed evaluate stage
    completes them instead of making a second set."""
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    eval_run = tracker.start_run("e", "evaluate")
    job, result = _sampled(tmp_path, tracker, tracker.start_run("e", "sample"))
    for _ in range(2):
        evaluation, scored = _evaluated(job, result, eval_run)
        evaluation.cell_run_ids = {}
        log_evaluation(evaluation, scored, log=lambda *_: None)
        runs = tracker.children("e", eval_run)
        assert sorted(r.info.run_name for r in runs) == ["evaluate-ddim5/scale_0", "evaluate-ddim5/scale_2"]
        for run in runs:
            assert_each_step_once(MlflowClient(tracker.uri), run.info.run_id)
            assert run.info.status == "FINISHED"
        mark_killed(eval_run, "e", tracker.uri)  # the driver dies: the evaluate stage is resumed


def test_large_artifact_settings_reach_every_process_that_tracks(tmp_path):
    """A process that opens a Tracker (a Ray worker on another node inherits nothing from the driver) turns on the
    multipart transfers through signed URLs; a user's own setting wins."""
    code = ("import json, os; from pipelines.infra.tracking import Tracker; "
            f"Tracker('sqlite:///{tmp_path / 'm.db'}'); "
            "print(json.dumps({k: v for k, v in os.environ.items() if k.startswith('MLFLOW_')}))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = str(ROOT)

    def settings(**given):
        done = subprocess.run([sys.executable, "-c", code], env={**env, **given}, capture_output=True, text=True,
                              timeout=120, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    assert ARTIFACT_TRANSFER["MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD"] == "true"
    assert settings().items() >= ARTIFACT_TRANSFER.items()
    mine = settings(MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE="1")
    assert mine["MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE"] == "1"


def test_system_metrics_on_a_run_by_id(tmp_path):
    """MLflow's system metrics monitor on a run addressed by id: a span shorter than the interval still gets its
    sample (logged when the monitor stops), a second monitor on the run (a restarted worker group) goes on at the next
    step, a node name goes into the metric names, and interval 0 logs nothing."""
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient(tracker.uri)
    run_id = tracker.start_run("e", "train-diffusion")
    for _ in range(2):
        with SystemMetrics(tracker.uri, run_id, interval=3600):
            pass
    steps = steps_of(client, run_id)
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(steps)
    assert all(s == [0, 1] for s in steps.values()), steps
    SystemMetrics(tracker.uri, run_id, interval=3600, node="sampler-1").stop()
    assert steps_of(client, run_id)["system/sampler-1/cpu_utilization_percentage"] == [2]
    quiet = tracker.start_run("e", "train-classifier")
    with SystemMetrics(tracker.uri, quiet, interval=0):
        pass
    assert client.get_run(quiet).data.metrics == {}


def test_a_resumed_run_drops_the_marks_of_the_attempt_that_died(tmp_path):
    """The sentinel marks the runs of a dead driver KILLED (adm.ended_by), a failed stage records its error: once a
    resume reopens the run, it is no longer ended by anyone, and when it finishes it must not say it was."""
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    pipeline = tracker.start_run("e", "adm-run-smoke")
    stage = tracker.start_run("e", "train", pipeline)
    assert sorted(mark_killed(pipeline, "e", tracker.uri)) == sorted([pipeline, stage])
    tracker.set_tags(stage, {"error": "KeyboardInterrupt: "})
    for run_id in (pipeline, stage):
        assert tracker.run(run_id).data.tags["adm.ended_by"].startswith("sentinel")
        tracker.reopen(run_id)
        run = tracker.run(run_id)
        assert run.info.status == "RUNNING" and not {"adm.ended_by", "error"} & set(run.data.tags)


def test_the_first_probe_waits_for_a_slow_server_not_for_a_missing_one():
    """A server that took the connection and has not answered yet (busy: workers starting, a loaded node) is asked
    again: a Ray worker's Tracker failed a whole task when the stack tier's server was slow for 5 s. Nothing
    listening still fails at once."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(2)
        uri = f"http://127.0.0.1:{listener.getsockname()[1]}"

        def serve():
            silent, _ = listener.accept()  # the first request: taken, never answered
            with silent:
                answered, _ = listener.accept()  # asked again: answered
                with answered:
                    answered.recv(4096)
                    answered.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nOK")

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        _probe_server(uri, timeout=0.5, patience=60)
        server.join(timeout=60)
        assert not server.is_alive()
    with socket.socket() as closed:  # a port with nothing listening: refused, no second try
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(TrackingError, match="unreachable"):
        _probe_server(f"http://127.0.0.1:{port}", timeout=0.5, patience=3600)
