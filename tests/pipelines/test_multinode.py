"""A real two-node Ray cluster on this machine (cluster/local scripts: a head and a worker node, token auth on):
`adm submit` runs the smoke pipeline as a Ray job, its runs land on the MLflow server, and killing the worker node
while one of the trainers runs on it is survived: that trainer resumes from its checkpoint on the head."""

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipelines.ops.jobs import JobError, connect
from pipelines.stages.ingest import ingest
from pipelines.stages.sources import IngestOptions
from tests.pipelines.test_train import assert_each_step_once

ROOT = Path(__file__).resolve().parents[2]
LOCAL = ROOT / "cluster" / "local"
# long enough that a trainer seen early in the job's (lagging) log is still training when its node is killed:
# the evaluator's tiny steps took ~20 ms, and at 40 steps it had finished before the kill landed
STEPS = 200
KILL_BEFORE = 50
STEP_LINE = re.compile(r"RayTrainWorker pid=(\d+).*?\[(diffusion|classifier|evaluator)\] step (\d+)/")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ancestors(pid: int) -> list[int]:
    chain = []
    while pid > 1:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            break
        pid = int(fields[1])
        chain.append(pid)
    return chain


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@contextlib.contextmanager
def _two_node_cluster():
    """A head and a worker node of 2 CPUs each (starting them costs ~20 s), killed and removed on exit."""
    tag = uuid.uuid4().hex[:6]  # short temp dirs: Ray's socket paths must stay under ~100 characters
    head_dir, worker_dir = f"/tmp/admt-{tag}-head", f"/tmp/admt-{tag}-w1"
    port, dashboard = _free_port(), _free_port()
    env = {**os.environ, "RAY_PORT": str(port), "DASHBOARD_PORT": str(dashboard), "NUM_CPUS": "2"}
    env.pop("RAY_ADDRESS", None)
    try:
        for script, temp_dir in (("start-head.sh", head_dir), ("start-worker.sh", worker_dir)):
            # each node's dashboard agent on its own free port: a local ray.init() of other tests may hold 52365
            subprocess.run([str(LOCAL / script)], env={**env, "RAY_TEMP_DIR": temp_dir, "DASHBOARD_AGENT_PORT":
                                                       str(_free_port())}, check=True, capture_output=True, timeout=180)
        yield {"address": f"http://127.0.0.1:{dashboard}", "gcs": f"127.0.0.1:{port}", "worker_dir": worker_dir}
    finally:
        subprocess.run([str(LOCAL / "stop.sh"), head_dir, worker_dir], env={**env, "SIGNAL": "KILL"},
                       capture_output=True, timeout=60)
        for d in (head_dir, worker_dir):
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def two_nodes():
    """One cluster for the job tests: the node-loss test kills the worker node, the next test needs only the head."""
    with _two_node_cluster() as cluster:
        yield cluster


@pytest.mark.services  # starts its own services
def test_training_split_outlives_the_worker_node(tmp_path):
    """The train stage's split stays readable when a worker node dies while a reader holds most of the head's CPUs
    (before session 9 its blocks were made by 1-CPU read tasks: those lost with the node were re-read by tasks that
    never fit beside the reader, and the CI job hung)."""
    ingest("shapes", str(tmp_path / "ds"), IngestOptions(resolution=16, num_images=1024, rows_per_shard=128),
           log=lambda *_: None)
    with _two_node_cluster() as cluster:
        done = subprocess.run([sys.executable, str(Path(__file__).with_name("node_loss_reader.py")), cluster["gcs"],
                               str(tmp_path / "ds"), str(LOCAL / "stop.sh")], capture_output=True, text=True,
                              timeout=400, env={**os.environ, "RAY_AUTH_MODE": "token", "PYTHONPATH": str(ROOT),
                                                "ADM_WORKER_DIR": cluster["worker_dir"]})
    assert done.returncode == 0 and "rows 1024" in done.stdout, done.stdout[-2000:] + done.stderr[-4000:]


def _on_worker_node(pid: int, worker_dir: str) -> bool:
    return any(worker_dir in _cmdline(p) and "raylet" in _cmdline(p) for p in _ancestors(pid))


def test_submit_smoke_and_survive_worker_node_loss(tmp_path, two_nodes, mlflow_server):
    # the evaluator network's features only: Inception on these CPUs adds minutes and nothing cluster-specific
    steps = [*(f"train_{k}.steps={STEPS}" for k in ("diffusion", "classifier", "evaluator")),
             "evaluate.features=evaluator", "evaluate.champion_metric=evaluator_fid"]
    cmd = [sys.executable, "-m", "pipelines.cli", "submit", "--address", two_nodes["address"], "--preset", "smoke",
           "--workdir", str(tmp_path / "work"), "--tracking-uri", mlflow_server, "--experiment", "multinode",
           "--model-prefix", "multinode", *[x for s in steps for x in ("--override", s)],
           "--verbose"]  # the workers' own step lines, with their pids, in the job's log: where each trainer runs
    submitted = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    job_id = re.search(r"submitted job (\S+)", submitted.stdout).group(1)
    client = connect(two_nodes["address"])

    killed = None
    deadline = time.time() + 600
    while killed is None and time.time() < deadline:
        assert str(client.get_job_status(job_id).value) not in ("FAILED", "STOPPED"), client.get_job_logs(job_id)
        for pid, kind, step in STEP_LINE.findall(client.get_job_logs(job_id)):
            if 15 <= int(step) < KILL_BEFORE and _on_worker_node(int(pid), two_nodes["worker_dir"]):
                killed = (kind, int(step))  # it has passed its step-10 checkpoint and is still training
                break
        time.sleep(1)
    assert killed, "no trainer was seen training on the worker node"
    subprocess.run([str(LOCAL / "stop.sh"), two_nodes["worker_dir"]], env={**os.environ, "SIGNAL": "KILL"},
                   check=True, capture_output=True, timeout=60)

    deadline = time.time() + 900
    while str(client.get_job_status(job_id).value) not in ("SUCCEEDED", "FAILED", "STOPPED"):
        assert time.time() < deadline, ("the job did not finish after the node was killed; its log ends:\n"
                                        + client.get_job_logs(job_id)[-8000:])
        time.sleep(3)
    logs = client.get_job_logs(job_id)
    assert str(client.get_job_status(job_id).value) == "SUCCEEDED", logs[-5000:]

    mlflow = MlflowClient(mlflow_server)
    experiment = mlflow.get_experiment_by_name("multinode").experiment_id
    (pipeline,) = mlflow.search_runs([experiment], "tags.`adm.pipeline` = 'smoke'")
    assert pipeline.info.status == "FINISHED"
    trainers = {r.data.tags["adm.network"]: r for r in mlflow.search_runs([experiment], "tags.`adm.stage` = 'train'")
                if "adm.network" in r.data.tags}
    assert set(trainers) == {"diffusion", "classifier", "evaluator"}
    run = trainers[killed[0]]
    resumed = int(run.data.tags["adm.resumed_from_step"])  # the restarted group's own record (the job's log of
    # worker stdout can drop the restarted worker's lines when the driver's log monitor lost its node)
    # from a checkpoint taken before the kill: not from scratch, not after the end (the job's log lags the worker,
    # so the step seen there can be older than the last checkpoint)
    assert 10 <= resumed < STEPS
    assert max(m.step for m in mlflow.get_metric_history(run.info.run_id, "loss")) == STEPS
    assert_each_step_once(mlflow, run.info.run_id)
    assert all(r.info.status == "FINISHED" for r in trainers.values())


def test_failed_job_and_token_errors(tmp_path, two_nodes, mlflow_server):
    """A job that fails on the cluster names its id and the logs command; a missing or wrong token is explained."""
    cmd = [sys.executable, "-m", "pipelines.cli", "submit", "--address", two_nodes["address"], "--wait",
           "--preset", "smoke", "--data", str(tmp_path / "no-such-folder"), "--workdir", str(tmp_path / "work"),
           "--tracking-uri", mlflow_server, "--experiment", "multinode-fail"]
    failed = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert failed.returncode == 1, failed.stdout[-2000:] + failed.stderr[-2000:]
    job_id = re.search(r"submitted job (\S+)", failed.stdout).group(1)
    assert f"job {job_id} failed" in failed.stderr
    assert f"adm jobs logs {job_id} --address {two_nodes['address']}" in failed.stderr

    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_TOKEN")}
    no_token = subprocess.run([sys.executable, "-m", "pipelines.cli", "jobs", "list", "--address",
                               two_nodes["address"]], capture_output=True, text=True, timeout=120,
                              env={**env, "HOME": str(tmp_path)}, cwd=tmp_path)
    assert no_token.returncode == 2 and "requires a token" in no_token.stderr, no_token.stderr[-2000:]
    wrong = tmp_path / "wrong-token"
    wrong.write_text("0" * 32)
    with pytest.raises(JobError, match="rejected the token"):
        connect(two_nodes["address"], token_file=str(wrong))
