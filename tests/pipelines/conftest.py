"""Real services for pipeline tests: a local Ray instance (2 CPUs) and an MLflow tracking server on 127.0.0.1."""

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


# the fixtures that start a real service: a local Ray instance, an MLflow server, a Ray cluster, an S3 server (item
# .fixturenames holds every fixture a test needs, those of its fixtures included)
SERVICE_FIXTURES = {"ray_cluster", "actor_count", "mlflow_server", "two_nodes", "s3_server"}


def pytest_collection_modifyitems(items):
    """The `services` tier by need: a test that uses a fixture starting Ray, an MLflow server or a cluster (or is
    marked `services` because it starts them itself). Everything else here is pure pipeline logic and runs in the
    fast tier, `pytest -m "not services"`."""
    for item in items:
        if str(item.path).startswith(HERE) and SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.services)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, log_to_driver=bool(os.environ.get("ADM_TEST_RAY_LOGS")))
    yield ray
    ray.shutdown()


@pytest.fixture
def actor_count(ray_cluster):
    """Counts the actors the test's Ray instance has ever had, dead ones included: equal counts before and after a
    call show that it started none (no Ray Train controller, no Ray Data actor pool)."""
    from ray.util.state import list_actors

    address = ray_cluster.get_runtime_context().gcs_address  # this instance, not another one on the machine
    return lambda: len(list_actors(address=address, limit=10_000))


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on 127.0.0.1 with a sqlite backend and proxied artifacts; yields its URI."""
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--artifacts-destination", str(root / "artifacts"),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, cwd=root,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"mlflow server did not start; see {root / 'server.log'}")
        time.sleep(1)
    yield uri
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
