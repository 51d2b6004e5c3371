"""The stack users deploy, started on 127.0.0.1 for the stack tier: PostgreSQL from the Debian package (a throw-away
cluster), an S3-compatible object store (moto's server), the MLflow tracking server of cluster/mlflow/server.sh (the
flags cluster/mlflow/mlflow.yaml runs) on the two, and a two-node Ray cluster of cluster/local. Each can be killed
and started again: the faults of test_stack.py. Every wait is bounded."""

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCAL = ROOT / "cluster" / "local"
SERVER_SH = ROOT / "cluster" / "mlflow" / "server.sh"
START_S = 300  # a service that has not answered after this long on a busy 2-core machine is broken


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, ready, timeout: float = START_S, every: float = 0.5, alive=None):
    """Poll `ready()` until it returns something true (returned), or fail after `timeout` s or once `alive()` is
    false; both bounds name `what`."""
    deadline = time.time() + timeout
    while True:
        found = ready()
        if found:
            return found
        if alive is not None and not alive():
            pytest.fail(f"{what}: the process ended")
        if time.time() > deadline:
            pytest.fail(f"{what}: not within {timeout:g} s")
        time.sleep(every)


def clean_env(**extra) -> dict:
    """This process's environment without MLflow's, AWS's or Ray's address variables: what a service or a cluster
    node gets must come from the product (or from `extra`), not from whatever earlier tests of the session set here."""
    drop = ("MLFLOW_", "AWS_", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    return {**env, "PYTHONPATH": str(ROOT), **extra}  # the checkout under test, wherever adm is installed from


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status == 200
    except OSError:
        return False


class Postgres:
    """A throw-away PostgreSQL cluster: initdb in a temporary folder, listening on 127.0.0.1 at a free port (no Unix
    socket), user `mlflow` trusted, database `mlflow`. PostgreSQL refuses to run as root: a root test runs it as the
    `postgres` user that the Debian package creates."""

    def __init__(self):
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parents[1].name))
        if not found:
            pytest.fail("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): scripts/setup.sh installs "
                        "the Debian package postgresql")
        self.bin = Path(found[-1]).parent
        self.root = Path(tempfile.mkdtemp(prefix="adm-pg-"))
        self.data, self.port = self.root / "data", free_port()
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user:
            shutil.chown(self.root, self.user, self.user)
        try:
            self._run("initdb", "-D", self.data, "-U", "mlflow", "--auth=trust", "-E", "UTF8", "--no-sync")
            self.start()
            self._run("createdb", "-h", "127.0.0.1", "-p", self.port, "-U", "mlflow", "mlflow")
        except BaseException:
            self.close()
            raise
        self.uri = f"postgresql+psycopg2://mlflow@127.0.0.1:{self.port}/mlflow"

    def _run(self, tool: str, *args) -> None:
        done = subprocess.run([str(self.bin / tool), *map(str, args)], user=self.user, capture_output=True, text=True,
                              timeout=START_S, env=clean_env(), cwd=self.root)
        assert done.returncode == 0, f"{tool}: {done.stdout[-2000:]}{done.stderr[-2000:]}"

    def _ctl(self, *args) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories=''"
        self._run("pg_ctl", "-D", self.data, "-l", self.root / "server.log", "-o", options, "-w", "-t", START_S, *args)

    def start(self) -> None:
        self._ctl("start")

    def restart(self) -> None:
        """What a restarted database pod does: the server stops (fast: open sessions are cut) and starts again."""
        self._ctl("restart", "-m", "fast")

    def close(self) -> None:
        with contextlib.suppress(AssertionError):
            self._ctl("stop", "-m", "immediate")
        shutil.rmtree(self.root, ignore_errors=True)


class ObjectStore:
    """moto's S3-compatible server with one bucket, on 127.0.0.1 at a free port."""

    KEYS = {"AWS_ACCESS_KEY_ID": "stack-test", "AWS_SECRET_ACCESS_KEY": "stack-test", "AWS_DEFAULT_REGION": "us-east-1"}

    def __init__(self, root: Path, bucket: str = "mlflow"):
        self.bucket, self.port = bucket, free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = open(root / "s3.log", "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=clean_env())
        try:
            wait_for("moto's S3 server", lambda: answers(f"{self.endpoint}/moto-api/"),
                     alive=lambda: self.proc.poll() is None)
            self.client().create_bucket(Bucket=bucket)
        except BaseException:
            self.close()
            raise

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.KEYS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.KEYS["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)
        self.log.close()


class TrackingServer:
    """cluster/mlflow/server.sh on PostgreSQL and the object store, on 127.0.0.1: the manifest's flags, this machine's
    addresses. Its own process group, so that kill() takes the server and its workers down at once, as a crash of
    its pod would."""

    def __init__(self, root: Path, postgres: Postgres, store: ObjectStore):
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.env = clean_env(**ObjectStore.KEYS, PYTHON=sys.executable, MLFLOW_S3_ENDPOINT_URL=store.endpoint,
                             MLFLOW_BACKEND_STORE_URI=postgres.uri,
                             MLFLOW_ARTIFACTS_DESTINATION=f"s3://{store.bucket}/mlflow-artifacts",
                             MLFLOW_HOST="127.0.0.1", MLFLOW_PORT=str(self.port),
                             MLFLOW_ALLOWED_HOSTS=f"127.0.0.1:{self.port},localhost:{self.port}")
        self.log = open(root / "mlflow-server.log", "a")
        self.proc = None

    def start(self, wait: bool = True) -> None:
        """Start the server; with `wait`, return once it answers (else call wait())."""
        self.proc = subprocess.Popen(["sh", str(SERVER_SH)], env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        if wait:
            self.wait()

    def wait(self) -> None:
        try:
            wait_for("the MLflow server of cluster/mlflow/server.sh", lambda: answers(f"{self.uri}/health"),
                     alive=lambda: self.proc.poll() is None)
        except BaseException:
            self.kill()
            raise

    def kill(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=60)

    def close(self) -> None:
        self.kill()
        self.log.close()


class RayCluster:
    """A head and a worker node of 2 CPUs each from cluster/local's scripts (token auth on), each with its own temp
    folder (short: Ray's socket paths must stay under ~100 characters) and free ports."""

    def __init__(self, env: dict | None = None):
        tag = uuid.uuid4().hex[:6]
        self.head_dir, self.worker_dir = f"/tmp/admt-{tag}-head", f"/tmp/admt-{tag}-w1"
        self.port, self.dashboard = free_port(), free_port()
        self.env = {**(env or clean_env()), "RAY_PORT": str(self.port), "DASHBOARD_PORT": str(self.dashboard),
                    "NUM_CPUS": "2"}
        self.address, self.gcs = f"http://127.0.0.1:{self.dashboard}", f"127.0.0.1:{self.port}"
        try:
            self._start("start-head.sh", self.head_dir)
            self.start_worker()
        except BaseException:
            self.close()
            raise

    def _start(self, script: str, temp_dir: str) -> None:
        # each node's dashboard agent on its own free port: a local ray.init() of other tests may hold 52365
        subprocess.run([str(LOCAL / script)], env={**self.env, "RAY_TEMP_DIR": temp_dir,
                                                   "DASHBOARD_AGENT_PORT": str(free_port())},
                       check=True, capture_output=True, timeout=START_S)

    def start_worker(self) -> None:
        self._start("start-worker.sh", self.worker_dir)

    def kill_worker(self) -> None:
        """A crash of the worker node: every process of it killed (cluster/local/stop.sh with SIGKILL)."""
        subprocess.run([str(LOCAL / "stop.sh"), self.worker_dir], env={**self.env, "SIGNAL": "KILL"}, check=True,
                       capture_output=True, timeout=60)

    def close(self) -> None:
        subprocess.run([str(LOCAL / "stop.sh"), self.head_dir, self.worker_dir], env={**self.env, "SIGNAL": "KILL"},
                       capture_output=True, timeout=60)
        for d in (self.head_dir, self.worker_dir):
            shutil.rmtree(d, ignore_errors=True)
