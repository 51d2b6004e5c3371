"""Guided sampling fan-out with Ray Data over the grid of cells (Dhariwal & Nichol 2021, Sec. 4 and 5).

A cell is (sampler, guidance method, scale, interval) (components/config/grid.py); the grid is every sampler x method
x scale x interval of the config's sample section. The work is every (cell, sample index) pair, in a fixed order, cut
into shards of ``batch_size`` within each sampler (one sampling loop per batch); a shard may span several methods,
scales and intervals (all per-row), so actors stay full whatever the grid. Each shard is one row of a Ray Data
dataset; ``GuidedSampler`` actors load the networks once, sample each shard through the one guidance composition
(components/guided.py) and write it as an NPZ, atomically. A sample depends only on (seed, label, cell, checkpoints);
shard composition is fixed by the plan, so the bytes do not depend on the number of actors. Rerunning an interrupted
job skips the shards already written (plan.json guards the folder against a job of another grid). What is made of the
shards per cell, and the MLflow runs: sample_outputs.py.
"""

import dataclasses
import json
import os
import posixpath
import socket
from dataclasses import dataclass, field

import fsspec
import numpy as np
import ray
import torch

from components.config import SampleConfig, UserError, to_dict
from components.config.grid import Cell, grid_cells, parse_sampler
from components.config.kinds import has_null_class
from components.config.sections import TRAINED_GUIDE
from components.config.validation import check_sample, diffusion_problems, guide_step, raise_problems
from components.guidance import trained_sigmas
from components.guided import GuidedNetworks, sample_batch
from components.precision import (
    Choice,
    SpeedSettings,
    apply_layout,
    autocast_context,
    candidates,
    configured,
    decide_compile,
    kept_rng,
    measure_choice,
    speed_up,
    sync_for,
)
from components.sampling import sample_label, sample_seed
from pipelines.infra import speed, tags
from pipelines.infra.console import progress
from pipelines.infra.dataset import load_manifest
from pipelines.infra.model_refs import NetworkRef, resolve, snapshot_path
from pipelines.infra.resources import actor_plan
from pipelines.infra.services import connect_ray
from pipelines.infra.storage import check_writable, exists, write_bytes_atomic
from pipelines.infra.system_metrics import SystemMetrics
from pipelines.infra.tracking import Tracker
from pipelines.stages.context import Stage, StageContext
from pipelines.stages.sample_outputs import (
    SampleResult,
    ShardActor,
    assemble,
    log_to_mlflow,
    shard_url,
    write_sheet,
)


@dataclass
class SampleJob:
    """A sampling job: the sample section of the config (grid, sizes, speed, placement) plus the networks, where the
    samples go, and tracking."""

    diffusion: str  # checkpoint folder, runs:/RUN_ID, models:/NAME@ALIAS or /VERSION, or weights file (+ preset)
    out: str  # output folder or fsspec URL
    config: SampleConfig = field(default_factory=SampleConfig)
    classifier: str | None = None
    label: int | None = None  # a fixed class for every sample; None: uniform at random per sample
    preset: str | None = None  # for bare weights files
    actors: int | None = None  # None: actors_per_gpu per GPU, else one per 2 CPUs (at least 1)
    tracking_uri: str | None = None
    experiment: str = "adm"
    parent_run_id: str | None = None
    class_names: tuple | None = None  # row labels of the grids (the dataset's); None: "class <label>"

    @property
    def cells(self) -> list[Cell]:
        cfg = self.config
        return grid_cells(cfg.samplers, cfg.guidance_scales, cfg.guidance_intervals, cfg.guidance_methods)


def plan_shards(cells: list[Cell], num_samples: int, batch_size: int) -> list[list[tuple[int, int]]]:
    """Shards of (cell index, sample index) pairs, cut within each sampler: a batch runs one sampling loop."""
    shards = []
    for sampler in dict.fromkeys(c.sampler for c in cells):
        pairs = [(j, i) for j, c in enumerate(cells) if c.sampler == sampler for i in range(num_samples)]
        shards += [pairs[k:k + batch_size] for k in range(0, len(pairs), batch_size)]
    return shards


@dataclass
class SampleNetworks:
    """The networks a job samples with, resolved and checked against each other."""

    diffusion: NetworkRef
    classifier: NetworkRef | None = None
    guide: NetworkRef | None = None  # autoguidance's guiding network


def guide_reference(job: SampleJob) -> str | None:
    """Where autoguidance's guide comes from: sample.guide_from, with step:N read as the diffusion model's own
    snapshot at step N (runs:/<its training run>/snapshots/step_N); None without one."""
    text = str(job.config.guide_from).strip()
    if text == TRAINED_GUIDE:
        raise UserError(f"sample.guide_from={TRAINED_GUIDE} is the guide network trained in the same `adm run`; for "
                        "adm sample, pass that network's reference with --guide (runs:/RUN_ID of its training run, "
                        "models:/...-guide@champion, a checkpoint folder)")
    step = guide_step(text)
    if step is None:
        return text or None
    if job.diffusion.startswith("runs:/"):
        run_id = job.diffusion[len("runs:/"):].strip("/").split("/")[0]
    elif job.diffusion.startswith("models:/"):
        run_id = Tracker(job.tracking_uri).model_source_run(job.diffusion)
    else:
        raise UserError(f"sample.guide_from={text}: a snapshot of the diffusion model's training run needs --diffusion "
                        "runs:/RUN_ID or models:/...; for a folder or file, pass the guide's own reference")
    return f"runs:/{run_id}/{snapshot_path(step)}"


# --- validation before any actor starts ---------------------------------------------------------------------------
def validate(job: SampleJob) -> SampleNetworks:
    check_sample(job.config)
    if job.actors is not None and job.actors <= 0:
        raise UserError(f"--actors ({job.actors}) must be positive")
    networks = _networks(job)
    classes = networks.diffusion.config.num_classes
    if job.label is not None and not 0 <= job.label < (classes or 0):
        raise UserError(f"--label {job.label}: the diffusion model has " + (
            f"{classes} classes, labels 0 to {classes - 1}; pass one of them, or leave --label out for classes drawn "
            "at random" if classes else "no classes (it is unconditional); leave --label out"))
    raise_problems(diffusion_problems(networks.diffusion.preset.diffusion, job.config.samplers))
    if any(c.cfg_scale > 0 for c in job.cells) and not has_null_class(networks.diffusion.preset):
        raise UserError(f"guidance method cfg/both needs a diffusion model trained with label dropout (it learns the "
                        f"null class); {job.diffusion} was not (train_diffusion.label_dropout=0, e.g. a released "
                        "checkpoint): guide it with the classifier (sample.guidance_methods=classifier) or train "
                        "one with train_diffusion.label_dropout=0.1")
    check_writable(job.out, "output folder", "--out")  # last: it creates the folder, which only a go-ahead may
    return networks


def _networks(job: SampleJob) -> SampleNetworks:
    """The diffusion model, the classifier and the guide the grid needs, their weights checked, and checked against
    each other."""
    diffusion = resolve(job.diffusion, "diffusion", job.preset, job.tracking_uri)
    unet, networks = diffusion.config, SampleNetworks(diffusion)
    if job.classifier is None and any(c.classifier_scale > 0 for c in job.cells):
        raise UserError("classifier guidance at scales above 0 needs a noisy classifier: pass --classifier URI "
                        "(or guide with sample.guidance_methods=cfg alone)")
    if job.classifier is not None:
        networks.classifier = resolve(job.classifier, "classifier", job.preset, job.tracking_uri)
        clf = networks.classifier.config
        if (clf.image_size, clf.in_channels) != (unet.image_size, unet.in_channels):
            raise UserError(f"the classifier sees {clf.image_size}px x {clf.in_channels} channel(s) but the "
                            f"diffusion model makes {unet.image_size}px x {unet.in_channels}; use a matching pair")
        if unet.num_classes is not None and clf.num_classes != unet.num_classes:
            raise UserError(f"the classifier has {clf.num_classes} classes but the diffusion model {unet.num_classes}")
    guide = guide_reference(job) if any(c.auto_scale > 0 for c in job.cells) else None
    if guide is not None:
        # the diffusion model's own snapshot or another diffusion model, or a guide network trained beside it
        networks.guide = resolve(guide, ("diffusion", "guide"), job.preset, job.tracking_uri)
        g = networks.guide.config
        if (g.image_size, g.in_channels, g.num_classes) != (unet.image_size, unet.in_channels, unet.num_classes):
            raise UserError(f"the guide {guide} makes {g.image_size}px x {g.in_channels} channel(s) with "
                            f"{g.num_classes} classes, the diffusion model {unet.image_size}px x {unet.in_channels} "
                            f"with {unet.num_classes}: autoguidance needs a guide of the same image size, channels "
                            "and classes (a smaller or earlier version of the model)")
    return networks


def check_plan(job: SampleJob, num_shards: int) -> dict:
    """plan.json in the output folder: written on the first run, compared on a rerun, so shards left by a job of
    another grid are never mixed into this one's samples. Returns the plan, with the speed settings an earlier run
    of the job chose (its actors' arithmetic: a resumed job keeps it)."""
    url = posixpath.join(job.out.rstrip("/"), "plan.json")
    cfg = job.config
    plan = {"cells": [c.key for c in job.cells], "num_samples": cfg.num_samples, "batch_size": cfg.batch_size,
            "seed": cfg.seed, "eta": cfg.eta, "label": job.label, "shards": num_shards,
            "diffusion": job.diffusion, "classifier": job.classifier,
            "speed_asked": {"precision": cfg.precision, "channels_last": cfg.channels_last, "compile": cfg.compile}}
    if any(c.auto_scale > 0 for c in job.cells):
        plan["guide"] = guide_reference(job)
    if exists(url):
        with fsspec.open(url, "r") as f:
            found = json.load(f)
        # a plan of before the measured choice: its shards were drawn under the old fixed rule, which a measured
        # choice for the rest could contradict within one cell (a "speed_asked" of None names the cause)
        changed = sorted(k for k in plan if found.get(k) != plan[k])
        if changed:
            raise UserError(f"{job.out} holds samples of another job (it differs in {', '.join(changed)}); pass a "
                            "new --out folder, or delete this one")
        return found
    write_plan(job, plan)
    return plan


def write_plan(job: SampleJob, plan: dict) -> None:
    write_bytes_atomic(posixpath.join(job.out.rstrip("/"), "plan.json"), json.dumps(plan, indent=1).encode())


# --- the actor ---------------------------------------------------------------------------------------------------
def guided_networks(refs: SampleNetworks, device: torch.device, settings: SpeedSettings) -> GuidedNetworks:
    """The job's networks on `device` in `settings`' memory format (compiled when they say so)."""

    def load(ref):
        return None if ref is None else speed_up(ref.build().to(device), settings)

    network = refs.diffusion.build()
    return GuidedNetworks(speed_up(network.to(device), settings), refs.diffusion.config,
                          refs.diffusion.preset.diffusion, device, null_label=network.null_label,
                          classifier=load(refs.classifier), guide=load(refs.guide))


class GuidedSampler(ShardActor):
    """Ray Data actor: loads the networks once (the diffusion model, and the classifier and guide the grid needs), then
    samples shard after shard through the one guidance composition (components/guided.py)."""

    def __init__(self, job: SampleJob, threads: int = 1, settings: dict | None = None):
        torch.set_num_threads(max(1, threads))
        self.job = job
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        refs = validate(job)
        cfg = job.config
        # the job's speed settings, the same in every actor (chosen once per job before the actors start, kept in
        # plan.json: the samples must not depend on which actor drew them); without them, what the config sets
        self.settings = SpeedSettings.from_dict(settings) if settings else configured(
            self.device, cfg.precision, cfg.channels_last, cfg.compile)
        self.nets = guided_networks(refs, self.device, self.settings)
        unet = refs.diffusion.config
        self.num_classes = unet.num_classes or (refs.classifier.config.num_classes if refs.classifier else 1)
        self.cells = job.cells
        self.shards = plan_shards(self.cells, cfg.num_samples, cfg.batch_size)
        self.shards_done = 0
        # this machine's CPU, memory and GPU on the sampling run, under a name per actor (several share a machine)
        interval = cfg.system_metrics_interval if job.parent_run_id else 0
        self.system = SystemMetrics(job.tracking_uri, job.parent_run_id, interval,
                                    node=f"sampler-{socket.gethostname()}-{os.getpid()}")

    def __del__(self):
        """Ray Data drops the actor when the pool shuts down: the system metrics' last sample."""
        if getattr(self, "system", None) is not None:
            self.system.stop()

    def make_shard(self, k: int) -> dict:
        pairs = self.shards[k]
        cells = [self.cells[j] for j, _ in pairs]
        indices = np.array([i for _, i in pairs], dtype=np.int64)
        seeds = [sample_seed(self.job.config.seed, i) for i in indices]
        labels = [self.job.label if self.job.label is not None else sample_label(s, self.num_classes) for s in seeds]
        with autocast_context(self.device, self.settings.precision):
            images, cost = sample_batch(self.nets, cells, seeds, labels, self.job.config.clip_denoised,
                                        self.job.config.eta)
        return {"images": images, "labels": np.array(labels, dtype=np.int64),
                "cells": np.array([c.key for c in cells]), "indices": indices,
                "network_evals": np.array(cost.network_evals, dtype=np.int64),
                "classifier_passes": np.array(cost.classifier_passes, dtype=np.int64),
                "guide_evals": np.array(cost.guide_evals, dtype=np.int64)}


# --- the job's speed settings, chosen once before the actors start -------------------------------------------------
TRIAL_SAMPLER = "ddim2"  # a trial batch: two network evaluations per row


def trial_cells(cells: list[Cell], batch_size: int) -> list[Cell]:
    """The rows of a trial batch: the job's cells in turn, one cell of each guidance (unguided, each method guided)
    first, so that even a batch smaller than the grid times the classifier's backward pass, classifier-free and
    autoguided rows; on a two-step sampler."""
    kinds: dict = {}
    for cell in cells:
        kinds.setdefault(cell.method if cell.scale > 0 else None, cell)
    order = list(kinds.values()) + [c for c in cells if c not in kinds.values()]
    return [dataclasses.replace(order[i % len(order)], sampler=TRIAL_SAMPLER) for i in range(batch_size)]


def batch_trial(base: GuidedNetworks, rows: list[Cell], seeds: list[int], labels: list[int],
                clip_denoised: bool = True, eta: float = 0.0):
    """trial(settings) -> one batch of `rows` through sample_batch in those settings (`base`'s networks converted
    in place to the memory format, compiled copies kept per setting): what precision.measure_choice times."""
    compiled = {}

    def trial(settings: SpeedSettings):
        for net in (base.model, base.classifier, base.guide):
            if net is not None:
                apply_layout(net, settings.channels_last)
        nets = base
        if settings.compile:
            if settings not in compiled:
                compiled[settings] = dataclasses.replace(base, **{
                    name: torch.compile(getattr(base, name)) for name in ("model", "classifier", "guide")
                    if getattr(base, name) is not None})
            nets = compiled[settings]

        def step():
            with autocast_context(base.device, settings.precision):
                sample_batch(nets, rows, seeds, labels, clip_denoised, eta)

        return step

    return trial


def sampling_trial(job: SampleJob, refs: SampleNetworks, device: torch.device):
    """The job's trial: its networks, a trial batch of its cells (trial_cells), its seeds and labels."""
    base = guided_networks(refs, device, SpeedSettings())
    rows = trial_cells(job.cells, job.config.batch_size)
    classes = refs.diffusion.config.num_classes or (refs.classifier.config.num_classes if refs.classifier else 1)
    seeds = [sample_seed(job.config.seed, i) for i in range(len(rows))]
    return batch_trial(base, rows, seeds, [sample_label(s, classes) for s in seeds], job.config.clip_denoised,
                       job.config.eta)


def choose_sampling_speed(job: SampleJob, threads: int, run_steps: int) -> dict:
    """The job's speed choice, on a device like the actors' (a Ray task with an actor's resources): from the speed
    cache, else by trial batches of every candidate (pipelines/infra/speed.py). `run_steps`: trial batches' worth
    of work per actor, which decides whether compiling pays."""
    torch.set_num_threads(max(1, threads))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    refs, cfg = validate(job), job.config
    cands = candidates(device, cfg.precision, cfg.channels_last)
    named = {"diffusion": refs.diffusion, "classifier": refs.classifier, "guide": refs.guide}
    networks = {k: dataclasses.asdict(ref.config) for k, ref in named.items() if ref is not None}
    networks["methods"] = sorted({c.method for c in job.cells if c.scale > 0})
    asked = {"precision": cfg.precision, "channels_last": cfg.channels_last, "compile": cfg.compile}

    def measure(cached: Choice | None = None) -> Choice:
        with kept_rng(device):
            trial = sampling_trial(job, refs, device)
            if cached is not None:
                return decide_compile(cached, trial, run_steps, sync=sync_for(device))
            return measure_choice(trial, cands, cfg.compile, run_steps, sync=sync_for(device))

    return speed.cached_choice(device, "sample", networks, None, asked, measure, measure, run_steps).as_dict()


def job_speed(job: SampleJob, plan: dict, resources: dict, threads: int, run_steps: int, log) -> Choice | None:
    """The settings every actor of this job samples with: those of its plan.json when the job resumes, else the
    measured choice (written into the plan); None when no setting is auto (each actor applies the config)."""
    if plan.get("speed"):
        choice = dataclasses.replace(Choice.from_dict(plan["speed"]), source="plan")
        log(f"[sample] speed: {choice.summary()}")
        return choice
    cfg = job.config
    if "auto" not in (cfg.precision, cfg.channels_last, cfg.compile):
        return None
    task = ray.remote(choose_sampling_speed).options(num_cpus=resources["num_cpus"],
                                                     num_gpus=resources.get("num_gpus", 0))
    choice = Choice.from_dict(ray.get(task.remote(job, threads, run_steps)))
    write_plan(job, {**plan, "speed": choice.as_dict()})
    log(f"[sample] speed: {choice.summary()}")
    return choice


def trial_steps(job: SampleJob, shards, num_timesteps: int) -> int:
    """The job's whole work in trial batches (two network evaluations of batch_size rows): what compiling must
    repay. Not per actor: whether the actors compile, and so the samples' bytes, must not depend on the actor count
    (each actor then pays the compile time for a share of the work, so compile is taken a little too readily)."""
    evals = sum(len(rows) * parse_sampler(job.cells[rows[0][0]].sampler).network_evals(num_timesteps)
                for rows in shards)
    return int(evals / (2 * job.config.batch_size))


# --- the driver --------------------------------------------------------------------------------------------------
class CellProgress:
    """Images made per grid cell as shards finish. On a terminal each cell gets its own bar; a log (CI) keeps the one
    line of the whole stage, which says how many cells are done."""

    def __init__(self, cells: list[Cell], shards, pending: list[int], log):
        self.cells, self.shards, self.log = cells, shards, log
        self.total = np.zeros(len(cells), dtype=np.int64)
        self.done = np.zeros(len(cells), dtype=np.int64)
        waiting = set(pending)
        for k, shard in enumerate(shards):
            for j, _ in shard:
                self.total[j] += 1
                self.done[j] += k not in waiting
        self.live = bool(getattr(log, "live", False))

    @property
    def finished(self) -> int:
        return int((self.done == self.total).sum())

    def shard_done(self, k: int) -> None:
        touched = set()
        for j, _ in self.shards[k]:
            self.done[j] += 1
            touched.add(j)
        if self.live:
            for j in sorted(touched):
                progress(self.log, f"[sample] {self.cells[j].key}", int(self.done[j]), int(self.total[j]))


def run_sampling(job: SampleJob, log=print) -> SampleResult:
    diffusion_ref = validate(job).diffusion
    cells = job.cells
    shards = plan_shards(cells, job.config.num_samples, job.config.batch_size)
    plan = check_plan(job, len(shards))
    fs, _ = fsspec.core.url_to_fs(job.out)
    pending = [k for k in range(len(shards)) if not fs.exists(fsspec.core.url_to_fs(shard_url(job.out, k))[1])]
    total = sum(len(shards[k]) for k in pending)
    log(f"sampling {total} images of {len(cells)} cells in {len(pending)} shards ({len(shards) - len(pending)} "
        f"already done) -> {job.out}")
    busy = warm_seconds = 0.0
    warm_images, choice = 0, None
    if pending:
        connect_ray()
        n, resources = actor_plan(job.actors, len(pending), job.config.actor_cpus, job.config.actors_per_gpu)
        threads = max(1, round(resources["num_cpus"]))
        steps = trial_steps(job, shards, diffusion_ref.preset.diffusion.steps)
        choice = job_speed(job, plan, resources, threads, steps, log)
        settings = choice.settings.as_dict() if choice else None
        ds = ray.data.from_items([{"shard": k} for k in pending], override_num_blocks=len(pending))
        ds = ds.map_batches(GuidedSampler, fn_constructor_args=(job, threads, settings), batch_size=1,
                            compute=ray.data.ActorPoolStrategy(size=n), batch_format="numpy", **resources)
        made, cells_made = 0, CellProgress(cells, shards, pending, log)
        for row in ds.iter_rows():
            made, busy = made + int(row["images"]), busy + float(row["seconds"])
            if not row["first"]:
                warm_images, warm_seconds = warm_images + int(row["images"]), warm_seconds + float(row["seconds"])
            cells_made.shard_done(int(row["shard"]))
            progress(log, "[sample] images", made, total, f"{cells_made.finished}/{len(cells)} cells done")
    if choice is None and plan.get("speed"):  # every shard was made by an earlier part: the settings it made them in
        choice = Choice.from_dict(plan["speed"])
    npz, grids, coords = assemble(job, shards, trained_sigmas(diffusion_ref.preset.diffusion))
    return SampleResult(job.out, npz, grids, len(pending), len(shards) - len(pending), cells=coords,
                        busy_seconds=busy, warm_images=warm_images, warm_seconds=warm_seconds,
                        speed=choice.as_dict() if choice else {})


def sample_and_track(job: SampleJob, log=print) -> SampleResult:
    """`adm sample` with MLflow: the sampling run first (the actors log their machines' system metrics to it), then
    the samples and one child run per cell under it; the run ends FINISHED, or FAILED with the error."""
    validate(job)  # a job refused for its input leaves no run behind
    tracker = Tracker(job.tracking_uri)
    run_id = tracker.start_run(job.experiment, "sample", tags={tags.STAGE: "sample"})
    job = dataclasses.replace(job, tracking_uri=tracker.uri, parent_run_id=run_id)
    try:
        result = log_to_mlflow(job, run_sampling(job, log=log), log=log)
    except BaseException as e:
        tracker.end_failed(run_id, e)
        raise
    tracker.end_run(run_id)
    return result


# --- as a stage of `adm run` -------------------------------------------------------------------------------------
def cache_inputs(ctx: StageContext, inputs: dict) -> dict:
    """The networks the grid samples with (a cascade's upsampler is the upsample stage's) and the sample section."""
    return {"train": {k: v for k, v in inputs["train"].items() if k != "upsampler"},
            "sample": to_dict(ctx.preset.sample)}


def samples_exist(outputs: dict) -> bool:
    return all(exists(url) for url in outputs["npz"].values())


def run(ctx: StageContext, inputs: dict) -> dict:
    """The grid of the preset's sample section from the trained networks, into runs/<pipeline run>/samples; one child
    run per cell under the stage run; the dataset's class names label the grids' rows."""
    trained = inputs["train"]
    names = load_manifest(inputs["ingest"]["data_url"]).get("class_names")
    config = ctx.preset.sample
    if str(config.guide_from).strip() == TRAINED_GUIDE:  # the guide network trained beside the diffusion model
        config = dataclasses.replace(config, guide_from=f"runs:/{trained['guide']['run_id']}")
    job = SampleJob(diffusion=f"runs:/{trained['diffusion']['run_id']}",
                    classifier=f"runs:/{trained['classifier']['run_id']}", out=ctx.run_path("samples"),
                    config=config, tracking_uri=ctx.tracker.uri, experiment=ctx.experiment,
                    parent_run_id=ctx.run_id, class_names=tuple(names) if names else None)
    result = log_to_mlflow(job, run_sampling(job, log=ctx.log), log=ctx.log)
    sheet = write_sheet(job.out, job.cells, result.grids)
    return {"out": job.out, "npz": dict(result.npz), "cell_runs": dict(result.run_ids), "sheet": sheet}


def publish(ctx: StageContext, outputs: dict) -> None:
    """All cells' sample grids side by side on the pipeline run (samples/all_cells.png); a sample stage reused from
    before the sheet existed has none."""
    if outputs.get("sheet") and exists(outputs["sheet"]):
        ctx.tracker.log_url(ctx.pipeline_run_id, outputs["sheet"], "samples")


STAGE = Stage("sample", run, cache_inputs, still_valid=samples_exist, publish=publish)
