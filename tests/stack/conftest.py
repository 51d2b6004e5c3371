"""The stack tier (marker `stack`): one stack for the whole tier, as users deploy it (services.py): PostgreSQL as
MLflow's backend store, an S3 server as its artifact destination proxied by the server of cluster/mlflow/server.sh,
and a two-node Ray cluster that runs the pipeline as Ray jobs (`adm submit`)."""

import os
from dataclasses import dataclass

import pytest

from tests.stack.services import ObjectStore, Postgres, RayCluster, TrackingServer

HERE = os.path.dirname(os.path.abspath(__file__))


def pytest_collection_modifyitems(items):
    for item in items:
        if str(item.path).startswith(HERE):
            item.add_marker(pytest.mark.stack)


@dataclass
class Stack:
    postgres: Postgres
    store: ObjectStore
    mlflow: TrackingServer
    ray: RayCluster


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """Started once for the tier (about a minute on 2 cores, most of it the MLflow server's 4 workers and the two Ray
    nodes), stopped at the end; a test that kills a part starts it again before it returns."""
    root = tmp_path_factory.mktemp("stack")
    parts = []
    try:
        postgres = Postgres()
        parts.append(postgres)
        store = ObjectStore(root)
        parts.append(store)
        mlflow = TrackingServer(root, postgres, store)
        parts.append(mlflow)
        mlflow.start(wait=False)  # its 4 workers start while the Ray nodes do
        ray = RayCluster()
        parts.append(ray)
        mlflow.wait()
        yield Stack(postgres, store, mlflow, ray)
    finally:
        for part in reversed(parts):
            part.close()
