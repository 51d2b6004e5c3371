"""A real two-node Ray cluster on this machine (cluster/local scripts: a head and a worker node, token auth on): the
training split outlives the worker node, a job that fails says how to read its logs, tokens are checked. The smoke
pipeline as a Ray job surviving the loss of the worker node under a trainer is the stack tier's
(tests/stack/test_stack.py), against the deployed stack."""

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from pipelines.ops.jobs import JobError, connect
from pipelines.stages.ingest import ingest
from pipelines.stages.sources import IngestOptions

ROOT = Path(__file__).resolve().parents[2]
LOCAL = ROOT / "cluster" / "local"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    """The cluster of the job tests."""
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
