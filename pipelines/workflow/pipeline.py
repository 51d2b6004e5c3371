"""`adm run`: the stages of CHAIN in order, as one MLflow parent run with one child run per stage.

Every stage has one contract (stages/context.py): ``run(ctx, inputs) -> outputs`` and ``cache_inputs``; StageCache
(stage_cache.py) reuses or resumes them. ``--resume RUN_ID`` reopens a pipeline run that died: finished stages are
skipped, the unfinished one starts again in its old run. Files go under ``workdir``: ``data/`` (ingested datasets,
shared), ``checkpoints/``, ``cache/`` and ``runs/<pipeline run id>/`` (per run, so concurrent runs never share an
output folder).
"""

import os
import posixpath
import shutil
import time

import ray

from components.config import ConfigError, to_dict
from pipelines.infra import tags
from pipelines.infra.console import Console, verbose_requested
from pipelines.infra.lineage import config_hash
from pipelines.infra.ray_logs import RunLogs
from pipelines.infra.storage import write_bytes_atomic
from pipelines.infra.tracking import Tracker
from pipelines.infra.tracking_checks import check_tracking
from pipelines.stages import evaluate, ingest, register, report, sample, train, upsample, upsample_outputs
from pipelines.stages.context import StageContext
from pipelines.workflow.request import RunRequest
from pipelines.workflow.stage_cache import StageCache

CHAIN = (
    ingest.STAGE,  # the source -> Parquet shards + manifest, with a content fingerprint
    train.STAGE,  # diffusion model, noisy classifier, evaluator (a cascade: + ADM-U): concurrent Ray Train trainers
    sample.STAGE,  # Ray Data: every cell of the grid (sampler x method x scale x interval)
    upsample.STAGE,  # a cascade only: ADM-U upsamples chosen cells' samples (Ray Data), unguided
    evaluate.STAGE,  # FID, sFID, precision/recall, score, accuracy per cell (a cascade's at the large size); plots
    register.STAGE,  # registered versions; the champion alias moves when the new set is better
)
STAGES = tuple(stage.name for stage in CHAIN)


def stage_names(preset) -> tuple[str, ...]:
    """The stages of CHAIN a run of `preset` has (the upsample stage: a cascade's)."""
    return tuple(stage.name for stage in CHAIN if stage.applies(preset))


def chain(req: RunRequest) -> tuple:
    """The stages a request runs: those of CHAIN that apply to its config (upsample: a cascade's), but register with
    --no-register."""
    return tuple(stage for stage in CHAIN if (req.register or stage is not register.STAGE)
                 and stage.applies(req.preset))


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
            outputs = self._chain()
        except BaseException as e:
            self.keep_logs(logs, interrupted=not isinstance(e, Exception))
            self.tracker.end_failed(self.run_id, e)
            raise
        self.write_report(outputs["evaluate"])
        self.keep_logs(logs)
        self.tracker.end_run(self.run_id)
        return {"run_id": self.run_id, **outputs, "stage_times": self.cache.times}

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
        """The stages in order, each from the cache where its inputs match a finished run; {stage: its outputs}."""
        req = self.req
        ctx = StageContext(self.preset, req.source, req.workdir, req.prefix, self.tracker, req.experiment,
                           self.run_id, req.source_fingerprint, self.log)
        done = {}
        for stage in chain(req):
            done[stage.name] = self.cache.run(stage, ctx, done)
            if stage.publish is not None:
                stage.publish(ctx, done[stage.name])
        return done

    def write_report(self, evaluation: dict) -> None:
        """report.md (machine, wall time, metrics table, what the grid resolves; a cascade's table at the large size)
        beside the run's outputs and on the pipeline run; `evaluation`: the evaluate stage's outputs."""
        rows = evaluation["rows"]
        cluster = os.environ.get("RAY_ADDRESS") or "local instance"
        if ray.is_initialized():
            found = ray.cluster_resources()
            cluster += f" ({found.get('CPU', 0):g} CPUs, {found.get('GPU', 0):g} GPUs)"
        text = report.run_report(self.run_id, self.preset.name, rows, time.time() - self.started, cluster,
                                 self.cache.times, evaluation.get("comparisons"))
        if evaluation.get("cascade_rows"):
            text += "\n" + upsample_outputs.cascade_section(rows, evaluation["cascade_rows"],
                                                            evaluation.get("cascade_pairs"))
        url = self.path("runs", self.run_id, "report.md")
        write_bytes_atomic(url, text.encode())
        self.tracker.log_text(self.run_id, text, "report.md")
        self.tracker.set_tags(self.run_id, {tags.DESCRIPTION: text})  # the run page's description: the summary
        self.log(f"report: {url}")
