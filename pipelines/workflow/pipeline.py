"""`adm run`: ingest -> train (diffusion model, noisy classifier, evaluator; concurrently) -> guided sampling over the
scale grid -> evaluation -> registration, as one MLflow parent run with one child run per stage.

Stages exchange only URLs and MLflow run ids, recorded as the stage run's ``adm.outputs`` tag. Each stage run also
carries ``adm.stage_key``: a hash of its configuration and of its inputs' fingerprints. A finished stage run with the
same key (in any earlier pipeline run of the experiment) is reused unless ``force``: a child run tagged
``adm.reused_from`` records the link. ``--resume RUN_ID`` reopens a pipeline run that died: finished stages are
skipped, the unfinished one starts again in its old run (training continues from its last checkpoint, sampling skips
written shards). Files go under ``workdir``: ``data/`` (ingested datasets, shared), ``checkpoints/``, ``cache/`` and
``runs/<pipeline run id>/`` (per run, so concurrent runs never share an output folder).
"""

import hashlib
import json
import os
import posixpath
import re
import time
from dataclasses import dataclass

import fsspec

from components.config import HIGHER_IS_BETTER, ConfigError, Preset, to_dict, validate_evaluate
from components.training import KINDS
from pipelines import PROJECT_ROOT
from pipelines.infra.resources import cpu_plan
from pipelines.infra.tracking import Tracker, check_tracking

STAGES = ("ingest", "train", "sample", "evaluate", "register")
CHAMPION = "champion"


@dataclass
class RunRequest:
    preset: Preset
    data: str | None = None  # ingest source (default: the preset's), e.g. fashion-mnist, shapes, a folder URL
    workdir: str = "adm-work"
    tracking_uri: str | None = None
    experiment: str = "adm"
    force: bool = False
    resume: str | None = None  # pipeline run id to continue
    register: bool = True
    model_prefix: str | None = None  # registered model names: <prefix>-diffusion, <prefix>-classifier
    parent_run_id: str | None = None  # e.g. the `adm retrain` cycle that runs this pipeline
    source_fingerprint: str | None = None  # content of the source (retrain): new content => a new ingest

    @property
    def prefix(self) -> str:
        return self.model_prefix or f"adm-{self.preset.name}"


def _exists(url: str) -> bool:
    fs, path = fsspec.core.url_to_fs(url)
    return fs.exists(path)


def stage_key(name: str, inputs: dict) -> str:
    text = json.dumps({"stage": name, **inputs}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def config_hash(preset: Preset) -> str:
    return stage_key("config", to_dict(preset))[:16]


def code_version() -> str:
    """adm-pipeline's version and a digest of its Python sources (components/ and pipelines/)."""
    root = PROJECT_ROOT
    digest = hashlib.sha256()
    for path in sorted(p for folder in ("components", "pipelines") for p in (root / folder).rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    try:
        from importlib.metadata import version

        release = version("adm-pipeline")
    except Exception:
        release = "unknown"
    return f"{release}+{digest.hexdigest()[:12]}"


def ingest_options(preset: Preset, source: str):
    from pipelines.stages.ingest import IngestOptions

    data = preset.data
    num_classes = preset.unet.num_classes or preset.classifier.num_classes
    return IngestOptions(resolution=data.get("resolution", preset.unet.image_size), resize=data.get("resize", "pad"),
                         num_images=data.get("num_images", 1024), num_classes=num_classes,
                         splits=tuple(data.get("splits", ("train",))))


def check_request(req: RunRequest) -> None:
    """Every config error before the first stage starts."""
    from components.config import validate_classifier, validate_speed, validate_unet
    from components.training import train_config

    validate_speed(req.preset)
    validate_unet(req.preset.unet)
    validate_classifier(req.preset.classifier)
    validate_classifier(req.preset.evaluator)
    for kind in KINDS:
        train_config(req.preset, kind)
    validate_evaluate(req.preset)
    if req.preset.sample.num_samples < 4:
        raise ConfigError(f"sample.num_samples={req.preset.sample.num_samples}: evaluation needs at least 4 per scale")
    if not (req.data or req.preset.data.get("source")):
        raise ConfigError(f"preset {req.preset.name} names no data source; pass --data SOURCE")


def resources(preset: Preset, cluster_cpus: float) -> dict:
    """What each stage asks Ray for (for --dry-run)."""
    from pipelines.stages.train import plan

    s = preset.sample
    shards = -(-len(s.guidance_scales) * s.num_samples // s.batch_size)
    on_cpu = cpu_plan(cluster_cpus, cluster_cpus, None, shards, s.actor_cpus)
    at_most = cpu_plan(cluster_cpus, cluster_cpus, None, 2**31)
    return {"ingest": {"driver": "local threads"}, "train": plan(preset, KINDS, cluster_cpus),
            "sample": {"actors_per_gpu": s.actors_per_gpu, "on_cpu": {"actors": on_cpu[0], "CPU_each": on_cpu[1]}},
            "evaluate": {"actors_per_gpu": 1, "on_cpu": {"actors_at_most": at_most[0], "CPU_each": at_most[1]}},
            "register": {"driver": "MLflow registry calls"}}


class Pipeline:
    def __init__(self, req: RunRequest, log=print, on_start=None):
        self.req, self.preset, self.log, self.on_start = req, req.preset, log, on_start
        self.tracker = Tracker(req.tracking_uri)
        check_tracking(self.tracker.uri)
        self.run_id: str | None = None
        self.fresh: set = set()  # stages computed (not reused) in this invocation

    # --- the stage mechanism -----------------------------------------------------------------------------------------
    def _children(self) -> list:
        return self.tracker.children(self.req.experiment, self.run_id)

    def _reusable(self, key: str):
        if self.req.force:
            return None
        for run in self.tracker.search(self.req.experiment, f"tags.`adm.stage_key` = '{key}'", 20):
            if run.info.status == "FINISHED" and "adm.outputs" in run.data.tags:
                return run
        return None

    def stage(self, name: str, inputs: dict, body, still_valid=lambda outputs: True) -> dict:
        key = stage_key(name, inputs)
        mine = [r for r in self._children() if r.data.tags.get("adm.stage") == name]
        for run in mine:
            if run.info.status == "FINISHED" and run.data.tags.get("adm.stage_key") == key:
                self.log(f"[{name}] finished earlier in this run ({run.info.run_id})")
                return json.loads(run.data.tags["adm.outputs"])
        cached = self._reusable(key)
        if cached is not None and still_valid(json.loads(cached.data.tags["adm.outputs"])):
            origin = cached.data.tags.get("adm.reused_from", cached.info.run_id)
            run_id = self.tracker.start_run(self.req.experiment, name, self.run_id, tags={
                "adm.stage": name, "adm.stage_key": key, "adm.reused_from": origin,
                "adm.outputs": cached.data.tags["adm.outputs"]})
            self.tracker.end_run(run_id)
            self.log(f"[{name}] reused: same config and inputs as run {origin}")
            return json.loads(cached.data.tags["adm.outputs"])
        unfinished = [r for r in mine if r.info.status != "FINISHED" and r.data.tags.get("adm.stage_key") == key]
        if unfinished:
            run_id = unfinished[0].info.run_id
            self.tracker.reopen(run_id)
            self.log(f"[{name}] resuming run {run_id}")
        else:
            run_id = self.tracker.start_run(self.req.experiment, name, self.run_id,
                                            tags={"adm.stage": name, "adm.stage_key": key})
            self.log(f"[{name}] MLflow run {run_id}")
        try:
            outputs = body(run_id)
        except BaseException as e:
            self.tracker.end_failed(run_id, e)
            raise
        self.tracker.set_tags(run_id, {"adm.outputs": json.dumps(outputs)})
        self.tracker.end_run(run_id)
        self.fresh.add(name)
        return outputs

    # --- the pipeline run --------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._open()
        if self.on_start is not None:  # e.g. the sentinel that marks runs KILLED if this process is killed
            self.on_start(self)

    def _open(self) -> None:
        if self.req.resume:
            self.run_id = self.req.resume
            run = self.tracker.run(self.run_id)
            if run.data.tags.get("adm.pipeline") is None:
                raise ConfigError(f"run {self.run_id} is not an `adm run` pipeline run; pass the parent run's id")
            self.tracker.reopen(self.run_id)
            for child in self._children():  # stage runs left RUNNING by a killed driver
                if child.info.status == "RUNNING":
                    self.tracker.end_run(child.info.run_id, "KILLED")
            self.log(f"resuming pipeline run {self.run_id}")
            return
        self.run_id = self.tracker.start_run(self.req.experiment, f"adm-run-{self.preset.name}",
                                             self.req.parent_run_id, tags={"adm.pipeline": self.preset.name})
        self.tracker.log_params(self.run_id, to_dict(self.preset))
        self.tracker.log_dict(self.run_id, {"preset": to_dict(self.preset), "data": self.req.data,
                                            "workdir": self.req.workdir}, "config/resolved.json")
        self.log(f"pipeline run {self.run_id} (experiment {self.req.experiment!r}, tracking {self.tracker.uri})")

    def path(self, *parts: str) -> str:
        return posixpath.join(self.req.workdir.rstrip("/"), *parts)

    def execute(self) -> dict:
        self.started = time.time()
        self.start()
        try:
            data = self.stage("ingest", self.ingest_inputs(), self.ingest, still_valid=self._dataset_exists)
            trained = self.stage("train", {"data": data["fingerprint"], **self.sections("unet", "classifier",
                                 "diffusion", "train_diffusion", "train_classifier", "evaluator", "train_evaluator")},
                                 lambda run_id: self.train(run_id, data))
            sampled = self.stage("sample", {"train": trained, **self.sections("sample")},
                                 lambda run_id: self.sample(run_id, trained), still_valid=self._samples_exist)
            evaluated = self.stage("evaluate", {"data": data["fingerprint"], "samples": sampled,
                                                **self.sections("evaluate")},
                                   lambda run_id: self.evaluate(run_id, data, trained, sampled))
            self.summarise(evaluated["rows"])
            registered = {}
            if self.req.register:
                registered = self.stage("register", {"train": trained, "evaluate": evaluated},
                                        lambda run_id: self.register(run_id, trained, evaluated["rows"], data))
        except BaseException as e:
            self.tracker.end_failed(self.run_id, e)
            raise
        self.report(evaluated["rows"])
        self.tracker.end_run(self.run_id)
        return {"run_id": self.run_id, "data": data, "train": trained, "sample": sampled, "rows": evaluated["rows"],
                "registered": registered}

    def sections(self, *names: str) -> dict:
        return {name: to_dict(getattr(self.preset, name)) for name in names}

    # --- stages ------------------------------------------------------------------------------------------------------
    def source(self) -> str:
        return self.req.data or self.preset.data["source"]

    def ingest_inputs(self) -> dict:
        inputs = {"source": self.source(), "options": to_dict(ingest_options(self.preset, self.source()))}
        if self.req.source_fingerprint:
            inputs["content"] = self.req.source_fingerprint
        return inputs

    @staticmethod
    def _dataset_exists(outputs: dict) -> bool:
        return _exists(posixpath.join(outputs["data_url"], "manifest.json"))

    def ingest(self, run_id: str) -> dict:
        from pipelines.infra.dataset import load_manifest, read_manifest
        from pipelines.stages.ingest import ingest

        slug = re.sub(r"[^A-Za-z0-9]+", "-", self.source()).strip("-")[:40]
        url = self.path("data", f"{slug}-{stage_key('ingest', self.ingest_inputs())[:10]}")
        if read_manifest(url) is None:
            try:
                ingest(self.source(), url, ingest_options(self.preset, self.source()), log=self.log)
            except Exception:
                if read_manifest(url) is None:  # not a concurrent run's ingest that finished first
                    raise
        manifest = load_manifest(url)
        self.tracker.log_params(run_id, {"source": self.source(), "data_url": url})
        for target in (run_id, self.run_id):
            self.tracker.log_dataset(target, url, slug, manifest["fingerprint"])
        return {"data_url": url, "fingerprint": manifest["fingerprint"]}

    def train(self, run_id: str, data: dict) -> dict:
        from pipelines.stages.train import TrainOptions, train

        earlier = {r.data.tags.get("adm.network"): r for r in self.tracker.children(self.req.experiment, run_id)}
        done = {k: r for k, r in earlier.items() if r.info.status == "FINISHED" and "adm.model_uri" in r.data.tags}
        resume = {k: r.info.run_id for k, r in earlier.items() if k in KINDS and k not in done}
        outputs = {k: {"run_id": r.info.run_id, "model_uri": r.data.tags["adm.model_uri"]} for k, r in done.items()}
        kinds = tuple(k for k in KINDS if k not in done)
        if kinds:
            storage = self.path("checkpoints")
            storage = storage if "://" in storage else os.path.abspath(storage)  # Ray Train wants absolute paths
            opts = TrainOptions(storage=storage, tracking_uri=self.tracker.uri,
                                experiment=self.req.experiment, parent_run_id=run_id, run_ids=resume)
            for kind, outcome in train(self.preset, data["data_url"], opts, kinds, log=self.log).items():
                outputs[kind] = {"run_id": outcome.run_id, "model_uri": outcome.model_uri}
        return outputs

    @staticmethod
    def _samples_exist(outputs: dict) -> bool:
        return all(_exists(url) for url in outputs["npz"].values())

    def sample(self, run_id: str, trained: dict) -> dict:
        from pipelines.stages.sample import SampleJob, log_to_mlflow, run_sampling

        cfg = self.preset.sample
        job = SampleJob(diffusion=f"runs:/{trained['diffusion']['run_id']}",
                        classifier=f"runs:/{trained['classifier']['run_id']}", out=self.path("runs", self.run_id,
                        "samples"), scales=cfg.guidance_scales, num_samples=cfg.num_samples, sampler=cfg.sampler,
                        eta=cfg.eta, clip_denoised=cfg.clip_denoised, batch_size=cfg.batch_size, seed=cfg.seed,
                        compile=cfg.compile, channels_last=cfg.channels_last, actors_per_gpu=cfg.actors_per_gpu,
                        actor_cpus=cfg.actor_cpus,
                        tracking_uri=self.tracker.uri, experiment=self.req.experiment, parent_run_id=run_id)
        result = log_to_mlflow(job, run_sampling(job, log=self.log), log=self.log)
        return {"out": job.out, "npz": {f"{s:g}": u for s, u in result.npz.items()},
                "scale_runs": {f"{s:g}": r for s, r in result.run_ids.items()}}

    def evaluate(self, run_id: str, data: dict, trained: dict, sampled: dict) -> dict:
        from pipelines.stages.evaluate import EvaluateJob, run_evaluation
        from pipelines.stages.report import log_evaluation

        cfg = self.preset.evaluate
        scale_runs = {float(s): r for s, r in sampled["scale_runs"].items()} if "sample" in self.fresh else {}
        job = EvaluateJob(samples=sampled["out"], reference=data["data_url"], features=cfg.features,
                          evaluator=f"runs:/{trained['evaluator']['run_id']}", num_reference=cfg.num_reference,
                          reference_split=cfg.reference_split, batch_size=cfg.batch_size, fid_method=cfg.fid_method,
                          cache_dir=self.path("cache"), tracking_uri=self.tracker.uri,
                          experiment=self.req.experiment, parent_run_id=run_id, scale_run_ids=scale_runs)
        result = log_evaluation(job, run_evaluation(job, log=self.log), log=self.log)
        return {"rows": result.rows}

    def summarise(self, rows: list) -> None:
        """The trade-off at a glance on the pipeline run: table, plots and metric_at_scale values."""
        from pipelines.stages.report import log_tradeoff

        log_tradeoff(self.tracker, self.run_id, rows)
        flat = {f"{k}_scale_{row['guidance_scale']:g}": v for row in rows for k, v in row.items()
                if k not in ("guidance_scale", "num_samples")}
        self.tracker.log_metrics(self.run_id, flat, step=0)

    def report(self, rows: list) -> None:
        """report.md (machine, wall time, metrics table) beside the run's outputs and on the pipeline run."""
        import ray

        from pipelines.infra.storage import write_bytes_atomic
        from pipelines.stages.report import run_report

        cluster = os.environ.get("RAY_ADDRESS") or "local instance"
        if ray.is_initialized():
            found = ray.cluster_resources()
            cluster += f" ({found.get('CPU', 0):g} CPUs, {found.get('GPU', 0):g} GPUs)"
        text = run_report(self.run_id, self.preset.name, rows, time.time() - self.started, cluster)
        url = self.path("runs", self.run_id, "report.md")
        write_bytes_atomic(url, text.encode())
        self.tracker.log_text(self.run_id, text, "report.md")
        self.log(f"report: {url}")

    def register(self, run_id: str, trained: dict, rows: list, data: dict | None = None) -> dict:
        """Register both networks; `champion` moves to the pair only when the chosen metric beats the champion's."""
        cfg = self.preset.evaluate
        metric = cfg.champion_metric
        row = next(r for r in rows if float(r["guidance_scale"]) == float(cfg.champion_scale))
        if metric not in row:
            raise ConfigError(f"evaluate.champion_metric={metric!r} was not computed (features={cfg.features})")
        value, higher = float(row[metric]), metric in HIGHER_IS_BETTER
        tag = f"adm.{metric}_scale_{cfg.champion_scale:g}"
        tags = {tag: value, "adm.pipeline_run": self.run_id, "adm.code_version": code_version(),
                "adm.config_hash": config_hash(self.preset),
                **({"adm.data_fingerprint": data["fingerprint"]} if data else {})}
        names = {kind: f"{self.req.prefix}-{kind}" for kind in ("diffusion", "classifier")}
        versions = {kind: self.tracker.register(trained[kind]["model_uri"], name, trained[kind]["run_id"], tags=tags)
                    for kind, name in names.items()}
        current = self.tracker.alias_version(names["diffusion"], CHAMPION)
        best = None if current is None or tag not in current.tags else float(current.tags[tag])
        better = best is None or (value > best if higher else value < best)
        if better:  # both aliases move together, after both versions exist
            for kind, name in names.items():
                self.tracker.set_alias(name, CHAMPION, versions[kind])
        self.log(f"[register] {names['diffusion']} v{versions['diffusion']}, {names['classifier']} "
                 f"v{versions['classifier']}: {metric}@{cfg.champion_scale:g} = {value:.4g}"
                 + (" -> champion" if better else f" (champion keeps {best:.4g})"))
        self.tracker.log_params(run_id, {"champion_metric": metric, "champion_scale": cfg.champion_scale})
        return {kind: {"name": names[kind], "version": versions[kind], "champion": better, "metric": metric,
                       "value": value, "previous": best} for kind in names}
