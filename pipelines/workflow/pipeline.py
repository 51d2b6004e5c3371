"""`adm run`: ingest -> train (diffusion model, noisy classifier, evaluator; concurrently) -> guided sampling over the
grid of cells -> evaluation -> registration, as one MLflow parent run with one child run per stage.

Each stage is a module of pipelines/stages/ with its body and its cache-key inputs; StageCache (stage_cache.py) reuses
or resumes them. ``--resume RUN_ID`` reopens a pipeline run that died: finished stages are skipped, the unfinished one
starts again in its old run. Files go under ``workdir``: ``data/`` (ingested datasets, shared), ``checkpoints/``,
``cache/`` and ``runs/<pipeline run id>/`` (per run, so concurrent runs never share an output folder).
"""

import os
import posixpath
import shutil
import time

import ray

from components.config import ConfigError, to_dict
from components.config.kinds import KINDS
from pipelines.infra import tags
from pipelines.infra.console import Console, verbose_requested
from pipelines.infra.dataset import load_manifest
from pipelines.infra.init_from import resolve_inits
from pipelines.infra.ray_logs import RunLogs
from pipelines.infra.storage import exists, write_bytes_atomic
from pipelines.infra.tracking import Tracker
from pipelines.infra.tracking_checks import check_tracking
from pipelines.stages import evaluate, ingest, register, report, sample, train
from pipelines.workflow.request import RunRequest, code_version, config_hash
from pipelines.workflow.stage_cache import StageCache, stage_key

STAGES = ("ingest", "train", "sample", "evaluate", "register")


PIPELINE_SECTIONS = ("data", "diffusion", "sample", "evaluate")  # what the pipeline run's own metrics depend on


def pipeline_params(preset, req: RunRequest) -> dict:
    """The pipeline run's params: the preset, the data and the config sections its metrics are plotted against (the
    grid and its evaluation); each network's sections are params of its training run, and the whole resolved config
    is the artifact config/resolved.json."""
    values = to_dict(preset)
    return {"preset": preset.name, "source": req.source, "config_hash": config_hash(preset),
            **{name: values[name] for name in PIPELINE_SECTIONS}}


class Pipeline:
    def __init__(self, req: RunRequest, log=print, on_start=None):
        self.req, self.preset, self.log, self.on_start = req, req.preset, log, on_start
        self.tracker = Tracker(req.tracking_uri)
        check_tracking(self.tracker.uri)
        self.run_id: str | None = None
        self.cache: StageCache | None = None

    def start(self) -> None:
        self.run_id = self._resume() if self.req.resume else self._open()
        self.cache = StageCache(self.tracker, self.req.experiment, self.run_id, self.req.force, self.log)
        if self.on_start is not None:  # e.g. the sentinel that marks runs KILLED if this process is killed
            self.on_start(self)

    def _resume(self) -> str:
        run_id = self.req.resume
        if self.tracker.run(run_id).data.tags.get(tags.PIPELINE) is None:
            raise ConfigError(f"run {run_id} is not an `adm run` pipeline run; pass the parent run's id")
        self.tracker.reopen(run_id)
        for child in self.tracker.children(self.req.experiment, run_id):  # left RUNNING by a killed driver
            if child.info.status == "RUNNING":
                self.tracker.end_run(child.info.run_id, "KILLED")
        self.log(f"resuming pipeline run {run_id}")
        return run_id

    def _open(self) -> str:
        run_id = self.tracker.start_run(self.req.experiment, f"adm-run-{self.preset.name}", self.req.parent_run_id,
                                        tags={tags.PIPELINE: self.preset.name})
        self.tracker.log_params(run_id, pipeline_params(self.preset, self.req))
        self.tracker.log_dict(run_id, {"preset": to_dict(self.preset), "data": self.req.data,
                                       "workdir": self.req.workdir}, "config/resolved.json")
        self.log(f"pipeline run {run_id} (experiment {self.req.experiment!r}, tracking {self.tracker.uri})")
        return run_id

    def path(self, *parts: str) -> str:
        return posixpath.join(self.req.workdir.rstrip("/"), *parts)

    def execute(self) -> dict:
        self.started = time.time()
        self.start()
        logs = RunLogs()
        # from the command line (a Console) and not --verbose: Ray's native driver output to the log too
        logs.start(native=isinstance(self.log, Console) and not verbose_requested())
        try:
            result = self._chain()
        except BaseException as e:
            self.keep_logs(logs, interrupted=not isinstance(e, Exception))
            self.tracker.end_failed(self.run_id, e)
            raise
        self.write_report(result["rows"])
        self.keep_logs(logs)
        self.tracker.end_run(self.run_id)
        return {"run_id": self.run_id, **result}

    def keep_logs(self, logs: RunLogs, interrupted: bool = False) -> None:
        """Ray's and MLflow's logs of this run into runs/<id>/logs and the run's `logs` artifacts. After Ctrl-C only
        the driver's: Ray is shutting down, and the user is waiting."""
        try:
            folder = logs.collect(self.path("runs", self.run_id), workers=not interrupted)
            self.tracker.log_artifacts(self.run_id, folder, "logs")
        except Exception as e:  # the logs are a convenience: never the reason a finished run fails
            self.log(f"note: the run's Ray and MLflow logs were not kept ({type(e).__name__}: {e})")
        finally:
            shutil.rmtree(logs.folder, ignore_errors=True)

    def _chain(self) -> dict:
        """The stages in order, each from the cache where its inputs match a finished run."""
        preset, req, tracker, run = self.preset, self.req, self.tracker, self.cache.run
        inits = resolve_inits(preset, KINDS, tracker.uri, req.prefix)  # warm starts, checked before any worker starts
        inputs = ingest.cache_inputs(preset, req.source, req.source_fingerprint)
        data = run("ingest", inputs, lambda run_id: ingest.ingest_stage(
            tracker, run_id, self.run_id, preset, req.source, self.path("data"), stage_key("ingest", inputs),
            self.log), still_valid=ingest.dataset_exists)
        trained = run("train", train.cache_inputs(preset, data["fingerprint"], inits), lambda run_id: train.train_stage(
            tracker, run_id, preset, data["data_url"], self.path("checkpoints"), req.experiment, self.log, req.prefix))
        names = load_manifest(data["data_url"]).get("class_names")  # the grids' row labels
        sampled = run("sample", sample.cache_inputs(preset, trained), lambda run_id: sample.sample_stage(
            run_id, preset, trained, self.path("runs", self.run_id, "samples"), tracker.uri, req.experiment,
            self.log, names), still_valid=sample.samples_exist)
        self.log_sheet(sampled.get("sheet"))
        # metrics go into the sampling stage's per-cell runs when that stage ran in this invocation
        cell_runs = sampled["cell_runs"] if "sample" in self.cache.computed else {}
        evaluated = run("evaluate", evaluate.cache_inputs(preset, data["fingerprint"], sampled),
                        lambda run_id: evaluate.evaluate_stage(
                            run_id, preset, data["data_url"], trained["evaluator"]["run_id"], sampled,
                            self.path("cache"), cell_runs, tracker.uri, req.experiment, self.log))
        report.log_summary(tracker, self.run_id, evaluated["rows"], register.champion_cell(preset, evaluated["rows"]))
        registered = {}
        if req.register:
            lineage = {tags.PIPELINE_RUN: self.run_id, tags.CODE_VERSION: code_version(),
                       tags.CONFIG_HASH: config_hash(preset), tags.DATA_FINGERPRINT: data["fingerprint"]}
            registered = run("register", register.cache_inputs(preset, req.prefix, trained, evaluated),
                             lambda run_id: register.register(tracker, run_id, preset, req.prefix, trained,
                                                              evaluated["rows"], lineage, self.log))
            tracker.set_tags(self.run_id, {f"{tags.REGISTERED}.{kind}": f"{r['name']} v{r['version']} "
                                           + ("(champion)" if r["champion"] else "(champion kept)")
                                           for kind, r in registered.items()})
        return {"data": data, "train": trained, "sample": sampled, "rows": evaluated["rows"],
                "registered": registered, "stage_times": self.cache.times}

    def log_sheet(self, url: str | None) -> None:
        """All cells' sample grids side by side, on the pipeline run (samples/all_cells.png); a sample stage reused
        from before the sheet existed has none."""
        if url and exists(url):
            self.tracker.log_url(self.run_id, url, "samples")

    def write_report(self, rows: list) -> None:
        """report.md (machine, wall time, metrics table) beside the run's outputs and on the pipeline run."""
        cluster = os.environ.get("RAY_ADDRESS") or "local instance"
        if ray.is_initialized():
            found = ray.cluster_resources()
            cluster += f" ({found.get('CPU', 0):g} CPUs, {found.get('GPU', 0):g} GPUs)"
        text = report.run_report(self.run_id, self.preset.name, rows, time.time() - self.started, cluster,
                                 self.cache.times)
        url = self.path("runs", self.run_id, "report.md")
        write_bytes_atomic(url, text.encode())
        self.tracker.log_text(self.run_id, text, "report.md")
        self.tracker.set_tags(self.run_id, {tags.DESCRIPTION: text})  # the run page's description: the summary
        self.log(f"report: {url}")
