"""What the sample stage writes per grid cell, and its MLflow runs.

Output folder OUT: plan.json, shards/part-NNNNN.npz (what the actors write, one per shard), then per cell
<sampler>/[<method>_]scale_<s>[_sigma_<lo>-<hi>]/ with samples_NxHxWxC.npz in the reference evaluator's layout (arr_0
uint8 NHWC, arr_1 int64 labels), grid.png (rows = classes, columns = samples) and cell.json (the cell's coordinates
and compute per sample, which evaluation reads); all_cells.png, every cell's grid side by side. MLflow: one child run
per cell with its coordinates and compute as params and numeric metrics and its grid as an artifact.
"""

import json
import posixpath
import time
from dataclasses import dataclass, field

import numpy as np

from components.config.grid import Cell, parse_sampler
from components.precision import Choice
from pipelines.infra import speed, tags
from pipelines.infra.storage import npz_bytes, read_bytes, read_npz, write_bytes_atomic
from pipelines.infra.tracking import Tracker
from pipelines.stages.grids import cells_sheet, labeled_grid


@dataclass
class SampleResult:
    out: str
    npz: dict  # cell key -> URL of its NPZ
    grids: dict  # cell key -> URL of its grid PNG
    computed_shards: int
    skipped_shards: int
    cells: dict = field(default_factory=dict)  # cell key -> its cell.json (coordinates and compute per sample)
    run_ids: dict = field(default_factory=dict)  # cell key -> MLflow child run id
    busy_seconds: float = 0.0  # actor time spent sampling and writing shards (all actors together)
    warm_images: int = 0  # images of the shards that were not their actor's first (no CUDA / compile warm-up)
    warm_seconds: float = 0.0  # actor time spent on those shards
    speed: dict = field(default_factory=dict)  # the actors' speed choice (precision.Choice.as_dict); {}: as configured


def shard_url(out: str, k: int) -> str:
    return posixpath.join(out.rstrip("/"), "shards", f"part-{k:05d}.npz")


class ShardActor:
    """What the sampling and upsampling actors share: a Ray Data batch of shard numbers in, each shard made by
    `make_shard(k)` (a dict of per-row arrays, "indices" among them) and written atomically to shard_url(job.out, k),
    its time shared equally by its rows (what a cell cost is the sum over its rows); out per shard its images, actor
    seconds and whether it was the actor's first (CUDA and compile warm-up). Subclasses set job, shards and
    shards_done = 0."""

    def make_shard(self, k: int) -> dict:
        raise NotImplementedError

    def __call__(self, batch: dict) -> dict:
        done, seconds, first = [], [], []
        for k in batch["shard"]:
            start = time.perf_counter()
            shard = self.make_shard(int(k))
            shard["seconds"] = np.full(len(shard["indices"]), (time.perf_counter() - start) / len(shard["indices"]))
            write_bytes_atomic(shard_url(self.job.out, int(k)), npz_bytes(**shard))
            done.append(len(self.shards[int(k)]))
            seconds.append(time.perf_counter() - start)
            first.append(self.shards_done == 0)
            self.shards_done += 1
        return {"shard": np.asarray(batch["shard"]), "images": np.array(done, dtype=np.int64),
                "seconds": np.array(seconds), "first": np.array(first)}


def cell_folder(out: str, cell: Cell) -> str:
    return posixpath.join(out.rstrip("/"), cell.key)


def cell_record(cell: Cell, num_timesteps: int, max_sigma: float, rows: dict) -> dict:
    """cell.json: the cell's coordinates and its compute per sample (means over its rows; seconds are actor time,
    each shard's time shared equally by its rows)."""
    n = len(rows["indices"])
    lo, hi = cell.interval if cell.interval is not None else (0.0, max_sigma)
    spec = parse_sampler(cell.sampler)
    return {"cell": cell.key, "sampler": cell.sampler, "guidance_method": cell.method, "guidance_scale": cell.scale,
            "classifier_scale": cell.classifier_scale, "cfg_scale": cell.cfg_scale,
            "guidance_interval": cell.interval_text, "interval_lo": float(lo), "interval_hi": float(hi),
            "steps": spec.steps or num_timesteps, "network_evals": float(rows["network_evals"].mean()),
            "classifier_passes": float(rows["classifier_passes"].mean()),
            "guide_evals": float(rows["guide_evals"].mean()) if "guide_evals" in rows else 0.0,
            "sample_seconds": float(rows["seconds"].sum()), "seconds_per_sample": float(rows["seconds"].sum() / n)}


def assemble(job, shards, sigmas: np.ndarray) -> tuple[dict, dict, dict]:
    """Per cell of the SampleJob `job`: the reference-layout NPZ, a class x sample grid and cell.json, from the shard
    files."""
    parts = [read_npz(shard_url(job.out, k)) for k in range(len(shards))]
    merged = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    npz, grids, coords = {}, {}, {}
    for cell in job.cells:
        rows = np.flatnonzero(merged["cells"] == cell.key)
        rows = rows[np.argsort(merged["indices"][rows], kind="stable")]
        images, labels = merged["images"][rows], merged["labels"][rows]
        folder = cell_folder(job.out, cell)
        shape = "x".join(str(d) for d in images.shape)
        npz[cell.key] = posixpath.join(folder, f"samples_{shape}.npz")
        write_bytes_atomic(npz[cell.key], npz_bytes(arr_0=images, arr_1=labels))
        grids[cell.key] = posixpath.join(folder, "grid.png")
        write_bytes_atomic(grids[cell.key], labeled_grid(images, labels, f"{cell.label}, {len(images)} samples",
                                                         job.class_names))
        coords[cell.key] = cell_record(cell, len(sigmas), float(sigmas[-1]),
                                       {k: merged[k][rows] for k in ("indices", "network_evals", "classifier_passes",
                                                                     "guide_evals", "seconds") if k in merged})
        write_bytes_atomic(posixpath.join(folder, "cell.json"), json.dumps(coords[cell.key], indent=1).encode())
    return npz, grids, coords


def log_to_mlflow(job, result: SampleResult, log=print) -> SampleResult:
    """One child run per cell of the SampleJob `job`: its coordinates and compute as params and as numeric
    metrics (so the compare view can plot any metric against any of them), the grid as an image artifact, the NPZ URL
    as a tag. A cell's run made by an earlier attempt of a resumed stage is completed, not made again."""
    tracker = Tracker(job.tracking_uri)
    parent = job.parent_run_id or tracker.start_run(job.experiment, "sample", tags={tags.STAGE: "sample"})
    cfg = job.config
    earlier = tracker.children_by_tag(job.experiment, parent, tags.CELL)  # logged before a resume: completed
    for cell in job.cells:
        record = result.cells[cell.key]
        name = f"sample-{cell.key.replace('/', '-')}"
        cell_tags = {tags.STAGE: "sample", tags.SAMPLES_NPZ: result.npz[cell.key], tags.CELL: cell.key}
        run_id = earlier.get(cell.key)
        if run_id is None:
            run_id = tracker.start_run(job.experiment, name, parent, tags=cell_tags)
        else:  # RUNNING again, without what ended the earlier attempt (the sentinel's KILLED)
            tracker.reopen(run_id)
            tracker.set_tags(run_id, cell_tags)
        tracker.log_params(run_id, {"guidance_scale": cell.scale, "sampler": cell.sampler,
                                    "guidance_method": cell.method, "guidance_interval": cell.interval_text,
                                    "eta": cfg.eta, "num_samples": cfg.num_samples, "seed": cfg.seed,
                                    "diffusion": job.diffusion, "classifier": job.classifier or ""})
        # params are strings in MLflow (sorting gives 0, 1, 16, 2, ...): the cell's numbers as metrics as well
        numbers = {k: v for k, v in record.items() if isinstance(v, (int, float))}
        tracker.log_new_metrics(run_id, {**numbers, "num_samples": cfg.num_samples, "eta": cfg.eta}, step=0)
        tracker.set_tags(run_id, {tags.DESCRIPTION: f"{cfg.num_samples} samples of {cell.label}: "
                                  f"{record['network_evals']:g} network evaluations and "
                                  f"{record['classifier_passes']:g} classifier passes per sample; the grid is "
                                  f"grid.png, the samples {result.npz[cell.key]}"})
        tracker.log_url(run_id, result.grids[cell.key])
        tracker.end_run(run_id)
        result.run_ids[cell.key] = run_id
    if result.speed:
        speed.record(tracker, parent, "sample", Choice.from_dict(result.speed))
    if job.parent_run_id is None:
        tracker.end_run(parent)
    log(f"MLflow: {len(job.cells)} child runs under {parent} at {tracker.uri}")
    return result


def write_sheet(out: str, cells: list[Cell], grids: dict) -> str:
    """all_cells.png in OUT: every cell's grid (cell key -> its URL) side by side; returns its URL."""
    sheet = posixpath.join(out.rstrip("/"), "all_cells.png")
    write_bytes_atomic(sheet, cells_sheet({key: read_bytes(url) for key, url in grids.items()}, cells))
    return sheet
