"""Run by test_stack in its own process, a driver of the stack's two-node cluster: a checkpoint-sized file (1 GiB of
random bytes) logged to an MLflow run by a Ray task on the head node, then read back by a Ray task on the worker node,
each through the tracking server that proxies the object store, with nothing but the product's own settings (the
tasks run in the cluster's workers, which inherit nothing from this process). Prints one JSON line.

    python artifact_round_trip.py GCS_ADDRESS TRACKING_URI HEAD_TEMP_DIR WORKER_TEMP_DIR
"""

import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipelines.infra.tracking import Tracker
from pipelines.infra.tracking_checks import ARTIFACT_TRANSFER

SIZE = 1 << 30  # the released ImageNet checkpoints are 0.2-2.2 GB
BLOCK = 64 << 20
NAME = "checkpoint-1GiB.bin"


def _settings() -> dict:
    return {k: os.environ.get(k) for k in ARTIFACT_TRANSFER}


@ray.remote(num_cpus=1)
def log_checkpoint(uri: str, run_id: str) -> dict:
    tracker = Tracker(uri)
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / NAME
        with open(path, "wb") as f:
            for _ in range(SIZE // BLOCK):
                block = os.urandom(BLOCK)
                digest.update(block)
                f.write(block)
        started = time.perf_counter()
        tracker.log_artifact(run_id, path, "checkpoint")
        seconds = time.perf_counter() - started
    return {"node": ray.get_runtime_context().get_node_id(), "sha256": digest.hexdigest(), "seconds": seconds,
            "settings": _settings()}


@ray.remote(num_cpus=1)
def read_checkpoint(uri: str, run_id: str) -> dict:
    tracker = Tracker(uri)
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        local = tracker.download_artifacts(run_id, f"checkpoint/{NAME}", tmp)
        seconds = time.perf_counter() - started
        size = os.path.getsize(local)
        with open(local, "rb") as f:
            while block := f.read(BLOCK):
                digest.update(block)
    return {"node": ray.get_runtime_context().get_node_id(), "sha256": digest.hexdigest(), "seconds": seconds,
            "size": size, "settings": _settings()}


def node_of(temp_dir: str) -> str:
    """The id of the node started with this temp folder (both nodes share this machine's address)."""
    (found,) = [n["NodeID"] for n in ray.nodes() if n["Alive"] and temp_dir in n["RayletSocketName"]]
    return found


def main(gcs: str, uri: str, head_dir: str, worker_dir: str) -> None:
    ray.init(address=gcs, log_to_driver=False)
    head, worker = node_of(head_dir), node_of(worker_dir)
    tracker = Tracker(uri)
    run_id = tracker.start_run("stack-artifacts", "checkpoint-round-trip")
    on = lambda node: NodeAffinitySchedulingStrategy(node, soft=False)  # noqa: E731
    logged = ray.get(log_checkpoint.options(scheduling_strategy=on(head)).remote(uri, run_id))
    read = ray.get(read_checkpoint.options(scheduling_strategy=on(worker)).remote(uri, run_id))
    tracker.log_metrics(run_id, {"upload_seconds": logged["seconds"], "download_seconds": read["seconds"],
                                 "size_bytes": SIZE}, step=0)
    tracker.end_run(run_id)
    print(json.dumps({"run_id": run_id, "size": SIZE, "head": head, "worker": worker, "logged": logged,
                      "read": read}))


if __name__ == "__main__":
    main(*sys.argv[1:])
