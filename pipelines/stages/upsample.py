"""The cascade's second stage (Dhariwal & Nichol 2021, Sec. 5.2 and Table 6): the base samples of chosen grid cells
upsampled by ADM-U with Ray Data actors.

Only the base model is guided: the upsampler runs the unguided loop of ``upsample.sampler`` at the large size,
conditioned on each base sample (``low_res`` in model_kwargs, through components/guided.py's ``upsample_batch``) and
its label. Sample i of cell c draws its noise from a seed derived from (``upsample.seed``, c's key, i) only
(components.sampling.upsample_seed), so a result depends only on (seed, cell, checkpoints). The work, every (cell,
sample index) pair in a fixed order cut in shards of ``batch_size``, is a Ray Data dataset of shard numbers;
``CascadeUpsampler`` actors load the upsampler once and write each shard atomically, so 1 actor or N give the same
bytes (on CPUs: for the same torch threads per actor), and a rerun skips the shards already written (plan.json guards
the folder against a job of other cells, samples or networks). What is made of the shards (one folder per cell, and
the same base samples brought to the large size bilinearly, the baseline at the large size) and the MLflow runs:
upsample_outputs.py.
"""

import dataclasses
import json
import posixpath
from dataclasses import dataclass, field

import fsspec
import numpy as np
import ray
import torch

from components.config import UpsampleConfig, UserError, to_dict
from components.config.grid import grid_cells
from components.config.kinds import has_noise_level
from components.config.validation import check_upsample, diffusion_problems, raise_problems
from components.guided import GuidedNetworks, upsample_batch
from components.precision import autocast_context, configured, speed_up
from components.sampling import upsample_seed
from pipelines.infra.console import progress
from pipelines.infra.dataset import load_manifest
from pipelines.infra.model_refs import NetworkRef, resolve
from pipelines.infra.resources import actor_plan
from pipelines.infra.services import connect_ray
from pipelines.infra.storage import check_writable, exists, read_npz, write_bytes_atomic
from pipelines.stages.champion import champion_cell
from pipelines.stages.context import Stage, StageContext
from pipelines.stages.evaluate_inputs import discover_samples
from pipelines.stages.sample_outputs import ShardActor, shard_url
from pipelines.stages.upsample_outputs import UpsampleResult, assemble, log_to_mlflow, write_sheet


@dataclass
class UpsampleJob:
    """An upsampling job: the upsample section of the config plus the base samples, the upsampler, where the
    results go, and tracking."""

    samples: str  # an output folder of `adm sample` (one folder per cell with its samples NPZ and cell.json)
    upsampler: str  # checkpoint folder, runs:/RUN_ID, models:/NAME@ALIAS or /VERSION, or a weights file (+ preset)
    out: str  # output folder or fsspec URL
    config: UpsampleConfig = field(default_factory=UpsampleConfig)
    preset: str | None = None  # for a bare weights file (a released .pt upsampler: imagenet256-cascade, ...)
    actors: int | None = None  # None: actors_per_gpu per GPU, else one per 2 CPUs (or actor_cpus each)
    tracking_uri: str | None = None
    experiment: str = "adm"
    parent_run_id: str | None = None
    class_names: tuple | None = None  # row labels of the grids

    def base(self) -> dict:
        """{cell key: Source} of the base cells to upsample: upsample.cells (every cell of `samples` when none)."""
        found = discover_samples(self.samples)
        chosen = self.config.cells or tuple(found)
        missing = [c for c in chosen if c not in found]
        if missing:
            raise UserError(f"upsample.cells {', '.join(missing)} not in {self.samples}; its cells are "
                            f"{', '.join(found)}")
        return {c: found[c] for c in chosen}


def plan_shards(counts: list[int], batch_size: int) -> list[list[tuple[int, int]]]:
    """Shards of (cell index, sample index) pairs, every cell's samples in order, `batch_size` pairs each."""
    pairs = [(j, i) for j, n in enumerate(counts) for i in range(n)]
    return [pairs[k:k + batch_size] for k in range(0, len(pairs), batch_size)]


# --- validation before any actor starts ---------------------------------------------------------------------------
def validate(job: UpsampleJob) -> tuple[NetworkRef, dict]:
    """The upsampler (its weights checked) and the base cells, checked against each other: the base samples are the
    upsampler's low-resolution input (size and channels), labelled when it is class-conditional."""
    check_upsample(job.config)
    if job.actors is not None and job.actors <= 0:
        raise UserError(f"--actors ({job.actors}) must be positive")
    ref = resolve(job.upsampler, "upsampler", job.preset, job.tracking_uri)
    raise_problems(diffusion_problems(ref.process, [job.config.sampler], "the upsampler's diffusion",
                                      "upsample.sampler"))
    base, cfg = job.base(), ref.config
    for key, source in base.items():
        if source.shape != (cfg.small_size, cfg.small_size, cfg.in_channels):
            raise UserError(f"the samples of {key} are {source.shape} (HWC) but the upsampler {job.upsampler} takes "
                            f"{cfg.small_size}x{cfg.small_size}x{cfg.in_channels}: upsample a base model of its "
                            "small_size")
        if cfg.num_classes is not None and source.labels is None:
            raise UserError(f"the samples of {key} carry no labels (arr_1) but the upsampler is class-conditional")
        if source.labels is not None and cfg.num_classes is not None and len(source.labels) and \
                not 0 <= int(source.labels.min()) <= int(source.labels.max()) < cfg.num_classes:
            raise UserError(f"the samples of {key} have labels outside the upsampler's {cfg.num_classes} classes")
    if job.config.low_res_noise and not has_noise_level(ref.preset):
        raise UserError(f"upsample.low_res_noise={job.config.low_res_noise:g}: {job.upsampler} was trained without "
                        "conditioning augmentation (train_upsampler.low_res_noise=0); sample it at 0")
    check_writable(job.out, "output folder", "--out")
    return ref, base


def check_plan(job: UpsampleJob, base: dict, num_shards: int) -> None:
    """plan.json in the output folder: written on the first run, compared on a rerun."""
    url = posixpath.join(job.out.rstrip("/"), "plan.json")
    cfg = job.config
    plan = {"cells": list(base), "counts": [s.total for s in base.values()], "samples": job.samples,
            "sampler": cfg.sampler, "low_res_noise": cfg.low_res_noise, "eta": cfg.eta, "seed": cfg.seed,
            "batch_size": cfg.batch_size, "shards": num_shards, "upsampler": job.upsampler,
            # the arithmetic and layout the shards were made in: a rerun in others would mix them within a cell
            "speed": {"precision": cfg.precision, "channels_last": cfg.channels_last, "compile": cfg.compile}}
    if exists(url):
        with fsspec.open(url, "r") as f:
            found = json.load(f)
        if found != plan:
            changed = sorted(k for k in plan if found.get(k) != plan[k])
            raise UserError(f"{job.out} holds upsamplings of another job (it differs in {', '.join(changed)}); pass "
                            "a new --out folder, or delete this one")
        return
    write_bytes_atomic(url, json.dumps(plan, indent=1).encode())


# --- the actor ---------------------------------------------------------------------------------------------------
class CascadeUpsampler(ShardActor):
    """Ray Data actor: loads the upsampler once, then upsamples shard after shard (components/guided.py)."""

    def __init__(self, job: UpsampleJob, threads: int = 1):
        torch.set_num_threads(max(1, threads))
        self.job = job
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        ref, base = validate(job)
        cfg = job.config
        network = ref.build()
        # set, not measured (upsample.precision / channels_last / compile; auto: the plain float32 path)
        self.settings = configured(self.device, cfg.precision, cfg.channels_last, cfg.compile)
        fast = speed_up(network.to(self.device), self.settings)
        self.nets = GuidedNetworks(fast, ref.config, ref.process, self.device,
                                   noise_level=bool(getattr(network, "noise_level", False)))
        self.keys, self.sources = list(base), list(base.values())
        self.shards = plan_shards([s.total for s in self.sources], cfg.batch_size)
        self.shards_done = 0
        self._arrays = {}

    def _base(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        """(images, labels) of base cell j, read once per actor."""
        if j not in self._arrays:
            arrays = read_npz(self.sources[j].urls[0])
            self._arrays[j] = arrays["arr_0"], arrays.get("arr_1", np.zeros(len(arrays["arr_0"]), dtype=np.int64))
        return self._arrays[j]

    def make_shard(self, k: int) -> dict:
        pairs, cfg = self.shards[k], self.job.config
        low_res = np.stack([self._base(j)[0][i] for j, i in pairs])
        labels = [int(self._base(j)[1][i]) for j, i in pairs]
        seeds = [upsample_seed(cfg.seed, self.keys[j], i) for j, i in pairs]
        with autocast_context(self.device, self.settings.precision):
            images, cost = upsample_batch(self.nets, cfg.sampler, seeds, labels, low_res, cfg.low_res_noise,
                                          cfg.clip_denoised, cfg.eta)
        return {"images": images, "labels": np.array(labels, dtype=np.int64),
                "cells": np.array([self.keys[j] for j, _ in pairs]), "indices": np.array([i for _, i in pairs]),
                "network_evals": np.array(cost.network_evals, dtype=np.int64)}


# --- the driver --------------------------------------------------------------------------------------------------
def run_upsampling(job: UpsampleJob, log=print) -> UpsampleResult:
    ref, base = validate(job)
    shards = plan_shards([s.total for s in base.values()], job.config.batch_size)
    check_plan(job, base, len(shards))
    fs, _ = fsspec.core.url_to_fs(job.out)
    pending = [k for k in range(len(shards)) if not fs.exists(fsspec.core.url_to_fs(shard_url(job.out, k))[1])]
    total = sum(len(shards[k]) for k in pending)
    log(f"upsampling {total} images of {len(base)} cells to {ref.config.image_size}px with {job.config.sampler} in "
        f"{len(pending)} shards ({len(shards) - len(pending)} already done) -> {job.out}")
    busy = 0.0
    if pending:
        connect_ray()
        n, resources = actor_plan(job.actors, len(pending), job.config.actor_cpus, job.config.actors_per_gpu)
        ds = ray.data.from_items([{"shard": k} for k in pending], override_num_blocks=len(pending))
        ds = ds.map_batches(CascadeUpsampler, fn_constructor_args=(job, max(1, round(resources["num_cpus"]))),
                            batch_size=1, compute=ray.data.ActorPoolStrategy(size=n), batch_format="numpy",
                            **resources)
        made = 0
        for row in ds.iter_rows():
            made, busy = made + int(row["images"]), busy + float(row["seconds"])
            progress(log, "[upsample] images", made, total)
    result = assemble(job, base, shards, ref)
    result.computed_shards, result.skipped_shards, result.busy_seconds = len(pending), len(shards) - len(pending), busy
    return result


# --- as a stage of `adm run` -------------------------------------------------------------------------------------
def default_cells(preset) -> tuple[str, ...]:
    """upsample.cells, or when none the grid's unguided cell and the champion cell (evaluate.champion_*): the
    paper's Table 6 pairs (base, guided base), each with and without the upsampler."""
    if preset.upsample.cells:
        return tuple(preset.upsample.cells)
    champion = champion_cell(preset)
    unguided = {**champion, "guidance_scale": 0.0}
    keys = []
    for cell in (unguided, champion):
        (found,) = grid_cells([cell["sampler"]], [cell["guidance_scale"]], [cell["guidance_interval"]],
                              [cell["guidance_method"]])
        keys.append(found.key)
    return tuple(dict.fromkeys(keys))


def cache_inputs(ctx: StageContext, inputs: dict) -> dict:
    """The upsampler's training run, the base samples, the upsample section and, when it names no cells, what
    chooses them: the champion policy and the grid's first sampler, method and interval."""
    preset = ctx.preset
    key = {"upsampler": inputs["train"]["upsampler"], "sample": inputs["sample"],
           "upsample": to_dict(preset.upsample)}
    if not preset.upsample.cells:
        key["champion"] = {k: v for k, v in to_dict(preset.evaluate).items()
                           if k in ("champion_sampler", "champion_method", "champion_scale")}
        key["grid"] = {k: to_dict(preset.sample)[k] for k in ("samplers", "guidance_methods", "guidance_intervals")}
    return key


def upsamplings_exist(outputs: dict) -> bool:
    return all(exists(url) for url in outputs["npz"].values())


def run(ctx: StageContext, inputs: dict) -> dict:
    """The chosen cells of the sample stage's folder upsampled by the trained upsampler into
    runs/<pipeline run>/cascade; one child run per upsampled cell and per bilinear baseline."""
    names = load_manifest(inputs["ingest"]["data_url"]).get("class_names")
    config = dataclasses.replace(ctx.preset.upsample, cells=default_cells(ctx.preset))
    job = UpsampleJob(samples=inputs["sample"]["out"], upsampler=f"runs:/{inputs['train']['upsampler']['run_id']}",
                      out=ctx.run_path("cascade"), config=config, tracking_uri=ctx.tracker.uri,
                      experiment=ctx.experiment, parent_run_id=ctx.run_id,
                      class_names=tuple(names) if names else None)
    result = log_to_mlflow(job, run_upsampling(job, log=ctx.log), log=ctx.log)
    return {"out": job.out, "cells": list(config.cells), "sampler": config.sampler, "npz": dict(result.npz),
            "cell_runs": dict(result.run_ids), "sheet": write_sheet(job.out, result.grids)}


def publish(ctx: StageContext, outputs: dict) -> None:
    """The cascade's grids side by side on the pipeline run (samples/cascade.png)."""
    if outputs.get("sheet") and exists(outputs["sheet"]):
        ctx.tracker.log_url(ctx.pipeline_run_id, outputs["sheet"], "samples")


def applies(preset) -> bool:
    return preset.upsample is not None


STAGE = Stage("upsample", run, cache_inputs, still_valid=upsamplings_exist, publish=publish, applies=applies)
