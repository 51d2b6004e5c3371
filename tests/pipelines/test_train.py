"""Ray Train stages on a real local Ray instance (2 CPUs) against a real MLflow tracking server (the three trainers
of a whole pipeline, as many at once as the CPUs allow, are checked in
test_run.py::test_smoke_pipeline_tree_cache_and_registry)."""

import json
import os
import signal
import threading
import time

import pytest
from mlflow import MlflowClient

from components.config import ConfigError, UserError, apply_overrides
from components.config.presets import get_preset
from pipelines.infra.resources import CpuSlots, first_wave
from pipelines.infra.tracking_checks import TrackingError
from pipelines.stages.ingest import ingest
from pipelines.stages.sources import IngestOptions
from pipelines.stages.train import TrainingError, TrainOptions, train, worker_resources

TINY = ["train_diffusion.steps=20", "train_diffusion.log_interval=5", "train_diffusion.save_interval=10",
        "train_diffusion.sample_interval=10", "train_classifier.steps=20", "train_classifier.log_interval=5",
        "train_classifier.save_interval=10", "train_evaluator.steps=20", "train_evaluator.log_interval=5",
        "train_evaluator.save_interval=10"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    dest = tmp_path_factory.mktemp("data") / "shapes"
    ingest("shapes", str(dest), IngestOptions(resolution=16, num_images=256, rows_per_shard=64), log=lambda *_: None)
    return str(dest)


def _opts(tmp_path, uri, experiment, **kw):
    return TrainOptions(storage=str(tmp_path / "storage"), tracking_uri=uri, experiment=experiment, **kw)


def test_killed_worker_resumes_while_a_nonfinite_trainer_stops(tmp_path, shapes, ray_cluster, mlflow_server):
    """Two trainers side by side, each meeting a fault: the diffusion trainer's worker process is killed (it restarts
    from its last checkpoint and finishes in the same MLflow run); the evaluator's loss becomes inf/NaN (it stops at
    that step and fails, keeping its last good checkpoint). Neither fault stops the other trainer."""
    preset = apply_overrides(get_preset("smoke"), ["train_diffusion.steps=60", "train_diffusion.save_interval=10",
                                                   "train_diffusion.log_interval=5",
                                                   "train_diffusion.sample_interval=0",
                                                   "train_evaluator.lr=1e30", "train_evaluator.save_interval=1",
                                                   "train_evaluator.max_failures=0"])
    client, killed = MlflowClient(mlflow_server), {}

    def rank0(run):
        """(pid, last logged step) of the trainer's rank-0 worker, from what it tells MLflow."""
        worker = client.get_run(run.info.run_id).data.tags.get("adm.worker", "")
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
        return (int(worker.split(" pid ")[1]) if " pid " in worker else None), max(steps, default=0)

    def killer():
        deadline = time.time() + 400
        while time.time() < deadline:
            experiment = client.get_experiment_by_name("faults")
            found = client.search_runs([experiment.experiment_id], "tags.`adm.network` = 'diffusion'") \
                if experiment else []
            if found and registered_checkpoint(tmp_path / "storage") and rank0(found[0])[1] >= 15:
                pid, step = rank0(found[0])
                os.kill(pid, signal.SIGKILL)  # a real kill of the training worker process
                killed.update(pid=pid, step=step, run=found[0])
                return
            time.sleep(0.5)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    opts = _opts(tmp_path, mlflow_server, "faults")
    with pytest.raises(TrainingError, match=r"evaluator: the loss became NaN/inf at step \d+") as failed:
        train(preset, shapes, opts, kinds=("diffusion", "evaluator"), log=lambda *_: None)
    assert "diffusion" not in str(failed.value)
    thread.join(timeout=5)
    assert killed, "the worker was never killed"
    assert rank0(killed["run"])[0] != killed["pid"]  # the restarted worker group's rank 0 recorded itself
    found = client.search_runs([client.get_experiment_by_name("faults").experiment_id])
    runs = {r.data.tags["adm.network"]: r for r in found}
    assert len(found) == 2 and set(runs) == {"diffusion", "evaluator"}  # one each: the restart continued its run
    diffusion = runs["diffusion"].info.run_id
    resumed = int(runs["diffusion"].data.tags["adm.resumed_from_step"])
    assert resumed % 10 == 0 and 10 <= resumed <= killed["step"]
    assert runs["diffusion"].info.status == "FINISHED"
    assert max(m.step for m in client.get_metric_history(diffusion, "loss")) == 60
    assert_each_step_once(client, diffusion)
    assert runs["evaluator"].info.status == "FAILED"
    kept = list((tmp_path / "storage").glob("evaluator-*/checkpoint_*/model.safetensors"))
    assert kept, "the evaluator's last good checkpoint must stay in storage"


def registered_checkpoint(storage) -> bool:
    """Whether Ray Train has registered a checkpoint of the diffusion trainer: its controller's own record (the
    checkpoint manager's snapshot beside the checkpoints), which a restarted worker group resumes from."""
    for snapshot in storage.glob("diffusion-*/checkpoint_manager_snapshot.json"):
        try:
            if json.loads(snapshot.read_text()).get("latest_checkpoint_result"):
                return True
        except json.JSONDecodeError:  # written as we read: the next poll sees it whole
            pass
    return False


def assert_each_step_once(client, run_id: str) -> None:
    """Every metric of a training run has each step once, as an uninterrupted run has: the steps a lost worker group
    logged after its last checkpoint are not logged again when training goes on from that checkpoint."""
    for key in client.get_run(run_id).data.metrics:
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert len(steps) == len(set(steps)), (key, sorted(steps))


def test_bad_input_fails_before_workers_start(tmp_path, shapes, mlflow_server, actor_count):
    preset, actors = get_preset("smoke"), actor_count()
    with pytest.raises(ConfigError, match="image_size=32 but the dataset is 16px"):
        train(apply_overrides(preset, ["unet.image_size=32", "unet.attention_resolutions=16"]), shapes,
              _opts(tmp_path, mlflow_server, "bad"))
    with pytest.raises(ConfigError, match="num_classes=7"):
        train(apply_overrides(preset, ["classifier.num_classes=7"]), shapes, _opts(tmp_path, mlflow_server, "bad"))
    with pytest.raises(TrackingError, match="unreachable"):
        train(preset, shapes, _opts(tmp_path, "http://127.0.0.1:9", "bad"))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="not writable"):
        train(preset, shapes, TrainOptions(storage=str(blocker / "sub"), tracking_uri=mlflow_server))
    with pytest.raises(ConfigError, match="train_diffusion.compile='fast'"):
        train(apply_overrides(preset, ["train_diffusion.compile=fast"]), shapes, _opts(tmp_path, mlflow_server, "bad"))
    with pytest.raises(ConfigError, match="train_classifier.cpus_per_worker=-1.0 must be a finite number >= 0"):
        train(apply_overrides(preset, ["train_classifier.cpus_per_worker=-1"]), shapes,
              _opts(tmp_path, mlflow_server, "bad"))
    with pytest.raises(ConfigError, match="train_evaluator.shuffle_rows=-5 must be a whole number >= 0"):
        train(apply_overrides(preset, ["train_evaluator.shuffle_rows=-5"]), shapes,
              _opts(tmp_path, mlflow_server, "bad"))
    # no worker started: no Ray Train controller actor, no run folder or checkpoint in storage, no MLflow run
    assert actor_count() == actors
    storage = tmp_path / "storage"
    assert not storage.exists() or not any(storage.iterdir())  # the tracking check comes after the writable check
    experiment = MlflowClient(mlflow_server).get_experiment_by_name("bad")
    assert experiment is None or not MlflowClient(mlflow_server).search_runs([experiment.experiment_id])


def test_worker_resources_share_the_cluster_or_take_what_is_set():
    preset = get_preset("smoke")
    kinds = ("diffusion", "classifier", "evaluator")
    # 2 CPUs, 3 one-worker trainers: two at once (half a CPU left for Ray Data), the third when one finishes
    assert worker_resources(preset, kinds, 2.0, 2.0) == {k: 0.75 for k in kinds}
    assert first_wave(preset, kinds, 2.0) == ["diffusion", "classifier"]
    assert worker_resources(preset, kinds, 4.0, 4.0) == {k: 1.17 for k in kinds}
    assert first_wave(preset, kinds, 4.0) == list(kinds)
    assert first_wave(preset, kinds, 1.0) == ["diffusion"]
    gpu = apply_overrides(preset, ["train_evaluator.use_gpu=true"])  # placed by Ray as asked: never waits
    assert first_wave(gpu, kinds, 1.0) == ["diffusion", "evaluator"]
    fixed = apply_overrides(preset, ["train_diffusion.cpus_per_worker=1"])
    assert worker_resources(fixed, kinds, 8.0, 4.0) == {"diffusion": 1.0, "classifier": 3.25, "evaluator": 3.25}
    assert worker_resources(fixed, ("diffusion",), 8.0, 4.0) == {"diffusion": 1.0}


def test_cpu_slots_start_waiting_trainers_in_order_as_slots_free():
    """Two slots, four one-slot trainers and one that takes none (a GPU trainer): the first two start at once, the
    third only when one of them finishes, the fourth after the third, whatever order their threads start in."""
    slots = CpuSlots(2, {"a": 1, "b": 1, "c": 1, "d": 1}, order=("a", "b", "gpu", "c", "d"))
    started, finish = [], {k: threading.Event() for k in "abcd"}

    def trainer(kind):
        started.append(kind)
        if kind in finish:
            finish[kind].wait(timeout=30)
        return kind

    futures = {kind: slots.start(kind, trainer, kind) for kind in ("d", "c", "gpu", "b", "a")}  # in reverse order

    def state(holding, waiting):
        """The gate's own record, once every trainer has reached it: who holds slots, who waits for them."""
        assert slots.wait_for(lambda s: s.holding == set(holding) and s.waiting == set(waiting), timeout=30), \
            (slots.holding, slots.waiting)

    state("ab", "cd")  # d and c, started first, still wait for a and b
    assert sorted(started) == ["a", "b", "gpu"]
    finish["b"].set()
    state("ac", "d")  # c, not d: the queue's order
    finish["c"].set()
    state("ad", "")
    for e in finish.values():
        e.set()
    assert {k: f.result(timeout=5) for k, f in futures.items()} == {k: k for k in futures}
    assert slots.free == 2 and slots.started_after == {"a": None, "b": None, "c": "b", "d": "c"}


def test_closed_cpu_slots_start_no_waiting_trainer(tmp_path):
    """Ctrl-C closes the gate: a trainer still waiting for a slot never starts (it used to start into a Ray that was
    shutting down and end FAILED with `SystemExit: 0`); one already training is not touched. A run reopened to resume
    loses the error that stopped it."""
    from concurrent.futures import CancelledError

    from pipelines.infra.tracking import Tracker

    slots, release, started = CpuSlots(1, {"a": 1, "b": 1}, order=("a", "b")), threading.Event(), []
    first = slots.start("a", lambda: started.append("a") or release.wait(timeout=30))
    second = slots.start("b", lambda: started.append("b"))
    assert slots.wait_for(lambda s: s.holding == {"a"} and s.waiting == {"b"}, timeout=30)
    slots.close()
    with pytest.raises(CancelledError, match="b never started"):
        second.result(timeout=5)
    release.set()
    assert first.result(timeout=5) is True and started == ["a"]

    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db")
    run_id = tracker.start_run("interrupted", "train-b")
    tracker.end_failed(run_id, SystemExit(0))
    assert tracker.run(run_id).info.status == "KILLED"
    tracker.reopen(run_id)
    run = tracker.run(run_id)
    assert run.info.status == "RUNNING" and "error" not in run.data.tags
