"""Every MLflow client call of the project (runs, params, metrics, artifacts, datasets, the registry) goes through
this module. Elsewhere: mlflow_model.py is the model-from-code file a logged network carries (MLflow loads it);
tracking_checks.py probes a server over HTTP and sets MLflow's HTTP retry and large-artifact variables (a Tracker
applies the latter in every process that opens one); `adm ui` runs `mlflow ui`.

Runs are addressed by id (MlflowClient), never through the fluent "active run" stack, so the driver, Ray Train
workers and Ray Data actors can all log to the same run from different processes. With nothing configured the
tracking store is a local sqlite file (``sqlite:///<cwd>/mlflow.db``); remote workers need a tracking server URI
(``MLFLOW_TRACKING_URI=http://host:5000``).
"""

import fcntl
import getpass
import json
import posixpath
import tempfile
import threading
import time
import warnings
from pathlib import Path

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag, Metric, Param

from components.config import UserError
from pipelines.infra.storage import read_bytes
from pipelines.infra.tags import ENDED_BY
from pipelines.infra.tracking_checks import (
    TrackingError,
    check_tracking,
    raise_if_gone,
    resolve_tracking_uri,
    sqlite_path,
    use_artifact_transfer_settings,
)

_LOG_MODEL_LOCK = threading.Lock()
# MLflow 3's UI opens an experiment on its GenAI overview unless this experiment tag says it holds model training
# (the UI's own values; "custom_model_development" opens the runs table)
EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND_ML = (EXPERIMENT_KIND, "custom_model_development")
MODEL_FILE = Path(__file__).with_name("mlflow_model.py")


def _open_sqlite_store(uri: str):
    """An MlflowClient for a sqlite store, opened under a file lock: opening creates and migrates the schema, and two
    `adm run`s started at once in one folder would otherwise both migrate the new file and one would fail."""


    db = sqlite_path(uri)
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            client = MlflowClient(tracking_uri=uri)  # the tracking store: tables created and migrated here
            client.search_registered_models(max_results=1)  # the registry store on the same file
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return client


def flatten(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
    return out


def current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry or login variables
        return "unknown"


def _reissue(caught: list) -> None:
    """Warnings recorded around log_model, shown again but for MLflow's advice to type-hint predict(): its hints must
    be list[...] of rows, and our model takes one dict of [B, ...] arrays, which no hint describes (MLflow's own
    warnings filter inside log_model overrides any we set, hence record and re-issue)."""
    for w in caught:
        if "Add type hints to the `predict` method" not in str(w.message):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _documented(version):
    """A registered model version with its `version` a str, as MLflow declares it and its REST client returns it; a
    sqlite store opened directly hands out an int (MLflow 3.17), which broke every comparison with a version typed on
    the command line (adm models show 1) and every join of version numbers."""
    if not isinstance(version.version, str):
        version._version = str(version.version)
    return version


class Tracker:
    """A thin wrapper over MlflowClient for one tracking URI."""

    def __init__(self, uri: str | None = None):
        self.uri = resolve_tracking_uri(uri)
        check_tracking(self.uri)
        use_artifact_transfer_settings()  # every process that tracks: the driver, Ray Train workers, Ray Data actors
        self._client = None

    @property
    def client(self):
        """The MlflowClient, opened on first use: opening a sqlite store creates it, which only a write may do."""
        if self._client is None:
            self._client = _open_sqlite_store(self.uri) if sqlite_path(self.uri) else MlflowClient(self.uri)
        return self._client

    def _store_missing(self) -> bool:
        """True for a sqlite store that does not exist yet: it holds nothing, and a read must not create it."""
        db = sqlite_path(self.uri)
        return self._client is None and db is not None and not db.exists()

    def _reader(self, what: str):
        if self._store_missing():
            raise TrackingError(f"{what} cannot be in the MLflow store {self.uri}: no such file; pass the "
                                "--tracking-uri (or MLFLOW_TRACKING_URI) of the store that holds it")
        return self.client

    # --- runs ---------------------------------------------------------------------------------------------------------
    def experiment_id(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if EXPERIMENT_KIND not in found.tags:  # made by an older adm or by hand
                self.client.set_experiment_tag(found.experiment_id, *EXPERIMENT_KIND_ML)
            return found.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=self._artifact_location(name),
                                                 tags=dict([EXPERIMENT_KIND_ML]))
        except Exception as e:  # created concurrently by another process
            raise_if_gone(e)
            return self.client.get_experiment_by_name(name).experiment_id

    def _artifact_location(self, experiment: str) -> str | None:
        """Beside a sqlite store's file (MLflow's default, ./mlruns of the current folder, mixes the artifacts of every
        store started there); a server or database decides itself."""
        db = sqlite_path(self.uri)
        if db is None:
            return None
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in experiment)
        return str(db.parent / f"{db.stem}-artifacts" / name)

    def start_run(self, experiment: str, run_name: str, parent_run_id: str | None = None,
                  tags: dict | None = None) -> str:
        # who and what started it (the UI's "Created by" and "Source"; the fluent API sets them, create_run does not)
        tags = {"mlflow.user": current_user(), "mlflow.source.name": "adm", "mlflow.source.type": "LOCAL",
                **(tags or {})}
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(self.experiment_id(experiment), run_name=run_name, tags=tags)
        return run.info.run_id

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)

    def end_failed(self, run_id: str, error: BaseException) -> None:
        """End a run that `error` stopped: KILLED for Ctrl-C or an exiting process, else FAILED, with the error as its
        `error` tag."""
        self.set_tags(run_id, {"error": f"{type(error).__name__}: {error}"[:5000]})
        self.end_run(run_id, "KILLED" if isinstance(error, (KeyboardInterrupt, SystemExit)) else "FAILED")

    def run(self, run_id: str):
        return self._reader(f"run {run_id}").get_run(run_id)

    def reopen(self, run_id: str) -> None:
        """Mark a failed or killed run RUNNING again (resuming it), without the error that stopped it or the
        sentinel's record of ending it: a resumed run that finishes was ended by no one."""
        self.client.update_run(run_id, status="RUNNING")
        for key in set(self.run(run_id).data.tags) & {"error", ENDED_BY}:
            self.client.delete_tag(run_id, key)

    def search(self, experiment: str, filter_string: str, max_results: int = 100) -> list:
        """Runs of `experiment` matching an MLflow filter string, newest first."""
        if self._store_missing():
            return []
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            return []
        return list(self.client.search_runs([found.experiment_id], filter_string, max_results=max_results,
                                            order_by=["attributes.start_time DESC"]))

    def children(self, experiment: str, parent_run_id: str) -> list:
        return self.search(experiment, f"tags.`mlflow.parentRunId` = '{parent_run_id}'", max_results=1000)

    def children_by_tag(self, experiment: str, parent_run_id: str, key: str) -> dict:
        """{value of tag `key`: run id} of the child runs of `parent_run_id` that have the tag: what an earlier attempt
        of a resumed stage made, so that the stage reuses them instead of doubling them."""
        return {run.data.tags[key]: run.info.run_id for run in self.children(experiment, parent_run_id)
                if key in run.data.tags}

    def set_tags(self, run_id: str, tags: dict) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, str(value))

    # --- values -------------------------------------------------------------------------------------------------------
    def log_params(self, run_id: str, params: dict) -> None:
        items = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start:start + 100])

    def last_logged_step(self, run_id: str) -> int:
        """The highest step any metric of the run was logged at (0: none): where a resumed trainer's logging goes on,
        so that no step is logged twice."""
        keys = self.client.get_run(run_id).data.metrics
        return max((m.step for key in keys for m in self.client.get_metric_history(run_id, key)), default=0)

    def log_metrics(self, run_id: str, metrics: dict, step: int) -> None:
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items() if np.isfinite(v)]
        if items:
            self.client.log_batch(run_id, metrics=items)

    def log_new_metrics(self, run_id: str, metrics: dict, step: int) -> None:
        """log_metrics without the metrics the run already holds at `step` or later: a stage that runs again after a
        resume, or a second stage writing into a run (evaluate into the sampling cells'), logs no step twice."""
        present = self.client.get_run(run_id).data.metrics
        done = {k for k in metrics if k in present
                and any(m.step >= step for m in self.client.get_metric_history(run_id, k))}
        self.log_metrics(run_id, {k: v for k, v in metrics.items() if k not in done}, step)

    # --- files --------------------------------------------------------------------------------------------------------
    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def log_url(self, run_id: str, url: str, artifact_path: str | None = None) -> None:
        """The file at any fsspec URL as an artifact under its own name (MLflow logs local files only)."""

        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / posixpath.basename(url)
            local.write_bytes(read_bytes(url))
            self.log_artifact(run_id, local, artifact_path)

    def log_artifacts(self, run_id: str, folder: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(folder), artifact_path)

    def log_image(self, run_id: str, image: np.ndarray, artifact_file: str) -> None:
        """uint8 HWC (C = 1 or 3) image as a PNG artifact."""
        self.client.log_image(run_id, image[..., 0] if image.shape[-1] == 1 else image, artifact_file=artifact_file)

    def log_dict(self, run_id: str, values: dict, artifact_file: str) -> None:
        self.client.log_dict(run_id, values, artifact_file)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    def log_table(self, run_id: str, rows: list[dict], artifact_file: str) -> None:
        """Rows of equal keys as an MLflow table artifact (shown in the run's Artifacts and Evaluation views)."""
        columns = {key: [row.get(key) for row in rows] for key in rows[0]}
        self.client.log_table(run_id, data=columns, artifact_file=artifact_file)

    def log_figure(self, run_id: str, figure, artifact_file: str) -> None:
        self.client.log_figure(run_id, figure, artifact_file)

    def download_artifacts(self, run_id: str, path: str, dst: str | Path) -> str:
        return self._reader(f"run {run_id}").download_artifacts(run_id, path, str(dst))

    def log_dataset(self, run_id: str, url: str, name: str, fingerprint: str, context: str = "training") -> None:
        """Record an ingested dataset as the run's input (source URL, name, content fingerprint as digest)."""

        with warnings.catch_warnings():  # a local path matches two equivalent source types
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(url)
        dataset = MetaDataset(source, name=name, digest=fingerprint[:36])._to_mlflow_entity()
        self.client.log_inputs(run_id, [DatasetInput(dataset, [InputTag("mlflow.data.context", context)])])

    # --- models -------------------------------------------------------------------------------------------------------
    def log_network(self, run_id: str, name: str, weights: Path, config: Path) -> str:
        """Log a network as an MLflow pyfunc model defined from code (no pickled objects); returns its model URI."""

        with _LOG_MODEL_LOCK, warnings.catch_warnings(record=True) as caught:  # the fluent API keeps process state
            mlflow.set_tracking_uri(self.uri)
            with mlflow.start_run(run_id=run_id):
                info = mlflow.pyfunc.log_model(
                    name=name, python_model=str(MODEL_FILE),
                    artifacts={"weights": str(weights), "config": str(config)},
                    pip_requirements=["adm-pipeline"],
                )
        _reissue(caught)
        return info.model_uri

    def model_source_run(self, model_uri: str) -> str:
        """The id of the run that logged the model behind ``models:/NAME/VERSION``, ``models:/NAME@ALIAS``,
        ``models:/NAME/latest`` or ``models:/m-ID`` (raises UserError naming the URI when there is none)."""
        ref = model_uri[len("models:/"):].strip("/")
        self._reader(f"model {model_uri}")
        try:
            if ref.startswith("m-") and "/" not in ref and "@" not in ref:
                return self.client.get_logged_model(ref).source_run_id
            if "@" in ref:
                name, alias = ref.split("@", 1)
                return self.client.get_model_version_by_alias(name, alias).run_id
            name, _, version = ref.rpartition("/")
            if not name:
                raise UserError(f"{model_uri}: expected models:/NAME/VERSION, models:/NAME@ALIAS or models:/m-ID")
            if version == "latest":
                versions = self.model_versions(name)
                if not versions:
                    raise UserError(f"{model_uri}: registered model {name!r} has no versions")
                return max(versions, key=lambda v: int(v.version)).run_id
            return self.client.get_model_version(name, version).run_id
        except UserError:
            raise
        except Exception as e:
            raise_if_gone(e)
            raise UserError(f"cannot find model {model_uri} in the MLflow registry at {self.uri} "
                            f"({type(e).__name__}: {str(e)[:200]}); check the name, version or alias "
                            "(`adm` registers <prefix>-diffusion and <prefix>-classifier) and MLFLOW_TRACKING_URI"
                            ) from None

    # --- registry -----------------------------------------------------------------------------------------------------
    def register(self, model_uri: str, name: str, run_id: str, tags: dict) -> str:
        """A version of registered model `name` for `model_uri` (the existing one if this run already registered it)."""
        try:
            self.client.create_registered_model(name)
        except Exception as e:  # exists already
            raise_if_gone(e)
        model_id = model_uri[len("models:/"):] if model_uri.startswith("models:/m-") else None
        found = [v.version for v in self.model_versions(name) if v.run_id == run_id and v.source == model_uri]
        if not found:
            # a store opened directly (sqlite:///) looks the logged model up through a default MlflowClient, i.e. the
            # process's tracking URI: without this, a process that has logged no model (a resumed run whose train
            # stage finished earlier) looked in ./mlflow.db and failed
            mlflow.set_tracking_uri(self.uri)
        version = found[0] if found else _documented(self.client.create_model_version(
            name, model_uri, run_id=run_id, tags=tags, model_id=model_id)).version
        if model_id:
            self._link_version(model_id, name, version)
        return version

    def _link_version(self, model_id: str, name: str, version: str) -> None:
        """The logged model's list of its registered versions (tag mlflow.modelVersions): what makes the UI show the
        logged model as registered, with a link to the version. An MLflow server writes it when it creates a version
        for a logged model; a store opened directly (sqlite:///, `make run`) does not, so the client adds it here."""

        key = "mlflow.modelVersions"
        listed = json.loads(self.client.get_logged_model(model_id).tags.get(key) or "[]")
        if not any(e.get("name") == name and str(e.get("version")) == str(version) for e in listed):
            listed.append({"name": name, "version": int(version)})  # an int, as the server writes it
            self.client.set_logged_model_tags(model_id, {key: json.dumps(listed)})

    def alias_version(self, name: str, alias: str):
        """The model version behind `alias`, or None."""
        if self._store_missing():
            return None
        try:
            return _documented(self.client.get_model_version_by_alias(name, alias))
        except Exception as e:
            raise_if_gone(e)
            return None

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(name, alias, version)

    def set_version_tags(self, name: str, version: str, tags: dict) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(name, version, key, str(value))

    def registered_model(self, name: str):
        """The registered model `name` with its aliases, or None."""
        if self._store_missing():
            return None
        try:
            return self.client.get_registered_model(name)
        except Exception as e:
            raise_if_gone(e)
            return None

    def model_versions(self, name: str) -> list:
        if self._store_missing():
            return []
        try:
            return [_documented(v) for v in self.client.search_model_versions(f"name = '{name}'")]
        except Exception as e:
            raise_if_gone(e)
            return []
