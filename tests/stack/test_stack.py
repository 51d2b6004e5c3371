"""The stack users deploy, tested as they run it (conftest.py: PostgreSQL-backed MLflow server with S3 artifacts
proxied by it, a two-node Ray cluster, the pipeline as Ray jobs through `adm submit`), with faults.

- A checkpoint-sized artifact (1 GiB) logged by a Ray worker on one node, read back by a Ray worker on the other,
  through the proxying server: in parts through signed URLs, with only the product's settings.
- The smoke pipeline once undisturbed, once with faults: the worker node killed while a trainer runs on it, the MLflow
  server killed while the trainers log and started again, PostgreSQL restarted while the grid is sampled, and the
  driver killed, then resumed with `adm submit run --resume`. After each fault the faulted run's MLflow tree so far
  is held against the undisturbed one's (nothing it lacks, nothing twice); at the end it must be the undisturbed one:
  the same runs once each, all FINISHED, the same metrics at the same steps each logged once, the same artifacts, one
  registered version per network. One undisturbed run serves every comparison.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from mlflow import MlflowClient

from components.config.kinds import preset_kinds
from components.config.presets import get_preset
from pipelines.infra import tags
from pipelines.infra.lineage import code_version
from pipelines.infra.tracking_checks import ARTIFACT_TRANSFER
from pipelines.ops.jobs import TERMINAL, connect
from tests.stack.services import clean_env, wait_for

HERE = Path(__file__).resolve().parent
# long enough to inject the node and server faults while the trainers run, on a fast machine too: the node is killed
# while a trainer on it is past its first checkpoint and at most at step LATEST (its loss logged every 5 steps)
STEPS, SAVE, LATEST = 200, 10, 150
RUN = ["--preset", "smoke", *[x for k in preset_kinds(get_preset("smoke"))
                              for x in ("--override", f"train_{k}.steps={STEPS}")],
       # the evaluator network's features only: Inception on these CPUs adds minutes and nothing stack-specific
       "--override", "evaluate.features=evaluator", "--override", "evaluate.champion_metric=evaluator_fid"]
JOB_S = 900  # a pipeline job on the busy 2-core CI machine


# --- the checkpoint-sized artifact ----------------------------------------------------------------------------------
def test_checkpoint_sized_artifact_through_the_proxy(stack, tmp_path, record_property):
    """1 GiB logged by a Ray task on the head node, read back by one on the worker node, through the server that
    proxies the object store (mlflow#7564, #8963: such uploads failed or timed out through the proxy)."""
    done = subprocess.run([sys.executable, str(HERE / "artifact_round_trip.py"), stack.ray.gcs, stack.mlflow.uri,
                           stack.ray.head_dir, stack.ray.worker_dir], capture_output=True, text=True, timeout=1200,
                          env=clean_env(RAY_AUTH_MODE="token"), cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    logged, read = out["logged"], out["read"]
    assert (logged["node"], read["node"]) == (out["head"], out["worker"]) and out["head"] != out["worker"]
    assert read["size"] == out["size"] == 1 << 30 and read["sha256"] == logged["sha256"]
    # the product set what it needs in the cluster's workers, which got no MLFLOW_* variable from anyone
    assert logged["settings"] == read["settings"] == ARTIFACT_TRANSFER
    client = MlflowClient(stack.mlflow.uri)
    run = client.get_run(out["run_id"])
    (listed,) = client.list_artifacts(out["run_id"], "checkpoint")
    assert listed.file_size == 1 << 30
    # sent in parts through URLs the server signed: S3 gives an object made of N parts the ETag "<digest>-N"
    key = f"mlflow-artifacts/{run.info.experiment_id}/{out['run_id']}/artifacts/checkpoint/{Path(listed.path).name}"
    s3 = stack.store.client()
    etag = s3.head_object(Bucket=stack.store.bucket, Key=key)["ETag"].strip('"')
    assert re.fullmatch(r"[0-9a-f]{32}-\d+", etag) and int(etag.split("-")[1]) > 1, etag
    s3.delete_object(Bucket=stack.store.bucket, Key=key)  # 1 GiB less in the S3 server's memory
    for name in ("upload_seconds", "download_seconds"):
        record_property(name, round(run.data.metrics[name], 1))
    print(f"\n1 GiB round trip through {stack.mlflow.uri}: upload {run.data.metrics['upload_seconds']:.1f} s (head "
          f"node), download {run.data.metrics['download_seconds']:.1f} s (worker node)")


# --- the pipeline, undisturbed and under faults -----------------------------------------------------------------------
def submit(stack, tmp_path, *command) -> str:
    """`adm submit` of an adm command, from this checkout (its working_dir is the checkout under test); the job id."""
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "submit", "--address", stack.ray.address, *command],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=clean_env())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return re.search(r"submitted job (\S+)", done.stdout).group(1)


def pipeline_args(stack, name: str, tmp_path) -> list:
    return ["--workdir", str(tmp_path / name), "--tracking-uri", stack.mlflow.uri, "--experiment", name,
            "--model-prefix", name]


class Faulted:
    """The faulted pipeline, followed through MLflow: each fault waits (polling, bounded) for the state it needs,
    then acts. A job that ends FAILED on the way (a fault it did not survive) is resumed, as a user would: once the
    driver is gone its runs must leave RUNNING (the sentinel), then `adm submit run --resume`."""

    def __init__(self, stack, tmp_path):
        self.stack, self.tmp_path = stack, tmp_path
        self.jobs = connect(stack.ray.address)
        self.client = MlflowClient(stack.mlflow.uri)
        self.job = submit(stack, tmp_path, "run", *RUN, *pipeline_args(stack, "stack-faults", tmp_path))
        self.resumes = []  # why each resume was needed

    def status(self) -> str:
        return str(self.jobs.get_job_status(self.job).value)

    def runs(self, filter_string: str = "") -> list:
        found = self.client.get_experiment_by_name("stack-faults")
        return self.client.search_runs([found.experiment_id], filter_string, max_results=1000) if found else []

    def pipeline(self):
        found = self.runs(f"tags.`{tags.PIPELINE}` = 'smoke'")
        return found[0] if found else None

    def until(self, what: str, condition, timeout: float = JOB_S):
        """condition()'s first true value, resuming the pipeline whenever its job ended without finishing."""
        deadline = time.time() + timeout
        while True:
            status = self.status()  # before the condition: a job that succeeds between the two reads still meets it
            found = condition()
            if found:
                return found
            assert status != "SUCCEEDED", f"the pipeline finished before {what}"
            if status in TERMINAL:
                self.resume(f"job {self.job} {status.lower()} before {what}")
            assert time.time() < deadline, f"{what}: not within {timeout} s; the job's log ends:\n" + \
                self.jobs.get_job_logs(self.job)[-6000:]
            time.sleep(0.5)

    def ended(self) -> None:
        """Wait (bounded) for the job to end and for its dead driver's runs to leave RUNNING (the sentinel marks them
        KILLED); no resume here."""
        wait_for(f"the job {self.job} to end", lambda: self.status() in TERMINAL, timeout=120)
        wait_for(f"the runs of the dead driver of job {self.job} to leave RUNNING",
                 lambda: not self.runs("attributes.status = 'RUNNING'"), timeout=120)

    def resume(self, why: str) -> None:
        self.ended()
        run = self.pipeline()
        self.resumes.append(why)
        self.job = submit(self.stack, self.tmp_path, "run", "--resume", run.info.run_id,
                          *pipeline_args(self.stack, "stack-faults", self.tmp_path)[2:])

    def registered_checkpoint(self, run) -> bool:
        """Whether Ray Train's controller has registered a checkpoint of the trainer of `run` (its checkpoint
        manager's snapshot beside the checkpoints, which a restarted worker group resumes from): a checkpoint that
        the worker wrote but the controller had not yet taken would be lost with the node, and the trainer would
        start again from step 0."""
        folder = f"{run.data.tags[tags.NETWORK]}-{run.info.run_id}"
        snapshot = self.tmp_path / "stack-faults" / "checkpoints" / folder / "checkpoint_manager_snapshot.json"
        try:
            return bool(json.loads(snapshot.read_text()).get("latest_checkpoint_result"))
        except (OSError, json.JSONDecodeError):  # not there yet, or written as we read: the next poll sees it
            return False

    def trainer_on_worker_node(self):
        """A trainer whose rank 0 runs on the worker node, past a registered checkpoint and far from its last step,
        frozen there (SIGSTOP) so that it cannot finish before the node is killed, however fast this machine
        trains."""
        for run in self.runs(f"tags.`{tags.STAGE}` = 'train' and attributes.status = 'RUNNING'"):
            pid = run.data.tags.get(tags.WORKER, "").rpartition(" pid ")[2]
            steps = [m.step for m in self.client.get_metric_history(run.info.run_id, "loss")]
            early = SAVE < max(steps, default=0) <= LATEST and self.registered_checkpoint(run)
            if pid.isdigit() and early and on_node(int(pid), self.stack.ray.worker_dir):
                try:
                    os.kill(int(pid), signal.SIGSTOP)
                except ProcessLookupError:  # ended between the two reads: look again
                    continue
                return run
        return None

    def training(self):
        return self.runs(f"tags.`{tags.NETWORK}` != '' and attributes.status = 'RUNNING'")

    def sampling(self):
        return self.runs(f"tags.`{tags.STAGE}` = 'sample' and attributes.status = 'RUNNING'")

    def past_sampling(self):
        """A cell's run of the sample stage (made when its samples are written), or the evaluate stage running."""
        return self.runs(f"tags.`{tags.CELL}` != ''") or self.runs(f"tags.`{tags.STAGE}` = 'evaluate'")

    def kill_driver(self) -> None:
        pid = self.jobs.get_job_info(self.job).driver_info.pid
        assert "pipelines.cli" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        os.kill(int(pid), signal.SIGKILL)


def on_node(pid: int, temp_dir: str) -> bool:
    """Whether process `pid` descends from the raylet of the node started with `temp_dir`."""
    while pid > 1:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            return False
        if "raylet" in cmdline and temp_dir in cmdline:
            return True
    return False


def test_pipeline_under_faults_matches_an_undisturbed_run(stack, tmp_path, record_property):
    jobs = connect(stack.ray.address)
    clean = submit(stack, tmp_path, "run", *RUN, *pipeline_args(stack, "stack-clean", tmp_path))
    wait_for(f"the undisturbed job {clean}", lambda: str(jobs.get_job_status(clean).value) in TERMINAL, JOB_S, 2)
    assert str(jobs.get_job_status(clean).value) == "SUCCEEDED", jobs.get_job_logs(clean)[-6000:]
    client = MlflowClient(stack.mlflow.uri)
    undisturbed = run_tree(client, "stack-clean")

    def so_far(after: str) -> None:
        """The faulted tree as it stands after a fault, against the undisturbed one: nothing in it that the
        undisturbed run lacks, nothing made or logged twice (it is still growing: what is missing is not checked)."""
        problems = differences(undisturbed, run_tree(client, "stack-faults"), partial=True)
        assert not problems, f"after {after}:\n" + "\n".join(problems)

    run = Faulted(stack, tmp_path)
    faults = []
    # 1. the worker node dies while a trainer runs on it: the trainer goes on from its checkpoint on the head
    trainer = run.until("a trainer past a checkpoint on the worker node", run.trainer_on_worker_node)
    stack.ray.kill_worker()
    faults.append(f"worker node killed under {trainer.data.tags[tags.NETWORK]}")
    run.until("the trainer resumed after the node loss",
              lambda: tags.RESUMED_FROM_STEP in run.client.get_run(trainer.info.run_id).data.tags)
    so_far(faults[-1])
    stack.ray.start_worker()
    # 2. the MLflow server dies while the trainers log, and comes back (its start takes its time: the outage)
    run.until("a trainer training", run.training)
    stack.mlflow.kill()
    down = time.time()
    stack.mlflow.start()
    faults.append(f"MLflow server killed during training, back after {time.time() - down:.0f} s")
    # 3. PostgreSQL restarts under the server while the grid is sampled
    run.until("the sample stage", run.sampling)
    stack.postgres.restart()
    faults.append("PostgreSQL restarted during sampling")
    so_far(" and ".join(faults[-2:]))  # the trainers have logged again through the restarted server by now
    # 4. the driver dies: the job fails, its runs are marked KILLED, `adm submit run --resume` finishes it
    run.until("a cell's samples or evaluation", run.past_sampling)
    run.kill_driver()
    faults.append("driver killed after sampling")
    # not until(): a job seen ended there would be resumed by it, and the wait would then be for the resumed job
    run.ended()
    so_far(faults[-1])
    run.resume("the driver was killed")
    run.until("the resumed pipeline to finish", lambda: run.status() == "SUCCEEDED")
    record_property("faults", faults)
    record_property("resumes", run.resumes)
    print(f"\nfaults: {faults}; resumes: {run.resumes}")

    problems = differences(undisturbed, run_tree(client, "stack-faults"))
    assert not problems, "after all the faults and resumes:\n" + "\n".join(problems)
    resumed = int(client.get_run(trainer.info.run_id).data.tags[tags.RESUMED_FROM_STEP])
    assert SAVE <= resumed < STEPS  # from a checkpoint taken before the node died: not from scratch
    for prefix in ("stack-clean", "stack-faults"):  # one version per network, made by this checkout's code
        for network in ("diffusion", "classifier"):
            (version,) = client.search_model_versions(f"name = '{prefix}-{network}'")
            assert version.tags[tags.CODE_VERSION] == code_version()


# --- the MLflow run tree --------------------------------------------------------------------------------------------
SYSTEM = "system/"
VOLATILE_TAGS = {tags.RESUMED_FROM_STEP}  # what only a restarted trainer records, by design


def artifacts(client, run_id: str, path: str | None = None) -> set:
    """Every file artifact of a run, but the Ray worker logs (their names carry pids and node ids)."""
    found = set()
    for item in client.list_artifacts(run_id, path):
        if item.path.startswith("logs/ray"):
            continue
        found |= artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def run_tree(client, experiment: str) -> dict:
    """{the path of run names from the pipeline run down: what that run holds}, of the one pipeline tree of
    `experiment`; a path met twice (a doubled run) is a list of both."""
    exp = client.get_experiment_by_name(experiment).experiment_id
    runs = {r.info.run_id: r for r in client.search_runs([exp], max_results=1000)}

    def path(run) -> str:
        parent = runs.get(run.data.tags.get("mlflow.parentRunId"))
        return f"{path(parent)}/{run.info.run_name}" if parent else run.info.run_name

    tree = {}
    for run in runs.values():
        rid = run.info.run_id
        steps = {k: [m.step for m in client.get_metric_history(rid, k)] for k in run.data.metrics}
        held = {"status": run.info.status, "params": set(run.data.params), "artifacts": artifacts(client, rid),
                "tags": {k for k in run.data.tags if k.startswith("adm.")} - VOLATILE_TAGS,
                "metrics": {k: s for k, s in steps.items() if not k.startswith(SYSTEM)},
                "system": {k: s for k, s in steps.items() if k.startswith(SYSTEM)}}
        key = path(run)
        tree[key] = [tree[key], held] if key in tree else held
    return tree


def differences(undisturbed: dict, faulted: dict, partial: bool = False) -> list:
    """What differs between the two trees (empty: nothing), and what either does wrong on its own: a run made twice,
    a run not FINISHED, a metric step logged twice, a trainer or the sampling run without system metrics. `partial`:
    the faulted tree is still being made (runs RUNNING or KILLED, steps and artifacts to come): only what it holds
    is compared, each part of it must be in the undisturbed tree, once."""
    found = [f"made twice: {p}" for tree in (undisturbed, faulted) for p, held in tree.items()
             if isinstance(held, list)]
    extra, missing = sorted(set(faulted) - set(undisturbed)), sorted(set(undisturbed) - set(faulted))
    if found or extra or (missing and not partial):
        return found + [f"runs only in the faulted tree: {extra}, only in the undisturbed one: {missing}"]
    if partial:
        for path in sorted(faulted):
            mine, theirs = faulted[path], undisturbed[path]
            found += [f"{path}: {key} logged at steps {sorted(steps)}"
                      for key, steps in {**mine["metrics"], **mine["system"]}.items() if len(steps) != len(set(steps))]
            found += [f"{path}: {key} at steps {sorted(set(steps) - set(theirs['metrics'].get(key, [])))}, not in "
                      f"the undisturbed run" for key, steps in mine["metrics"].items()
                      if not set(steps) <= set(theirs["metrics"].get(key, []))]
            found += [f"{path}: {name} not in the undisturbed run: {sorted(mine[name] - theirs[name])}"
                      for name in ("params", "artifacts") if not mine[name] <= theirs[name]]
        return found
    for path in sorted(undisturbed):
        mine, theirs = faulted[path], undisturbed[path]
        if not mine["status"] == theirs["status"] == "FINISHED":
            found.append(f"{path}: status {mine['status']} (undisturbed: {theirs['status']})")
        for which, held in (("faulted", mine), ("undisturbed", theirs)):
            found += [f"{path} ({which}): {key} logged at steps {sorted(steps)}"
                      for key, steps in {**held["metrics"], **held["system"]}.items() if len(steps) != len(set(steps))]
            if ("/train/" in path or path.endswith("/sample")) and not held["system"]:
                found.append(f"{path} ({which}): no system metrics")
        for key in sorted(set(mine["metrics"]) | set(theirs["metrics"])):
            if sorted(mine["metrics"].get(key, [])) != sorted(theirs["metrics"].get(key, [])):
                found.append(f"{path}: {key} at steps {sorted(mine['metrics'].get(key, []))}, undisturbed "
                             f"{sorted(theirs['metrics'].get(key, []))}")
        for name in ("params", "artifacts", "tags"):
            if mine[name] != theirs[name]:
                found.append(f"{path}: {name} only faulted {sorted(mine[name] - theirs[name])}, only undisturbed "
                             f"{sorted(theirs[name] - mine[name])}")
    return found
