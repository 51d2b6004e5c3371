"""Run by test_multinode in its own process (a driver of the two-node cluster): builds the training split the way
the train stage does, has a reader holding most of the head's CPUs (as a trainer does) and kills the worker node,
then reads every row. Prints the row count; a split that lost blocks with the node would hang here."""

import os
import subprocess
import sys
import time

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipelines.stages.train import TrainOptions, training_dataset


@ray.remote(num_cpus=1.5)
class Reader:
    def rows(self, dataset) -> int:
        return sum(len(b["label"]) for b in dataset.iter_batches(batch_size=None))


def main(gcs: str, data_url: str, stop_script: str, worker_dir: str) -> None:
    ray.init(address=gcs, log_to_driver=False)
    head = ray.get_runtime_context().get_node_id()
    dataset = training_dataset(data_url, TrainOptions(storage="unused"))
    reader = Reader.options(scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False)).remote()
    ray.get(reader.__ray_ready__.remote())
    subprocess.run([stop_script, worker_dir], env={**os.environ, "SIGNAL": "KILL"}, check=True, capture_output=True)
    deadline = time.time() + 120
    while sum(n["Alive"] for n in ray.nodes()) > 1:  # until the cluster knows the node is gone
        assert time.time() < deadline, "the killed worker node was never marked dead"
        time.sleep(1)
    print("rows", ray.get(reader.rows.remote(dataset), timeout=120), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4], os.environ["ADM_WORKER_DIR"])  # not in argv: stop.sh kills processes naming the dir
