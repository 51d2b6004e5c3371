"""Guided sampling fan-out with Ray Data over a grid of guidance scales (Dhariwal & Nichol 2021, Sec. 4 and 5).

The work is every (guidance scale, sample index) pair, in a fixed order, cut into shards of ``batch_size``; a shard
may span two scales (the scale is a per-row tensor), so actors stay full whatever the grid. Each shard is one row of a
Ray Data dataset; ``GuidedSampler`` actors load both networks once and write each shard as an NPZ, atomically. A sample
depends only on (seed, label, scale, checkpoints, sampler); shard composition is fixed by the plan, so the bytes do not
depend on the number of actors. Rerunning an interrupted job skips the shards already written.

Output at OUT: shards/part-NNNNN.npz, then per scale scale_<s>/samples_NxHxWxC.npz in the reference evaluator's
layout (arr_0 uint8 NHWC, arr_1 int64 labels) and scale_<s>/grid.png (rows = classes, columns = samples).
"""

import functools
import io
import posixpath
import tempfile
import time
from dataclasses import dataclass, field

import fsspec
import numpy as np
import torch

from components.config import SampleConfig, UserError, to_dict
from components.data import class_grid, to_uint8
from components.diffusion import create_diffusion
from components.guidance import ClassifierGuidance
from components.precision import autocast_context, speed_up
from components.sampling import SampleNoise, class_conditional, parse_sampler, sample_label, sample_seed
from components.validation import check_sample
from pipelines.infra import tags
from pipelines.infra.console import progress
from pipelines.infra.model_refs import NetworkRef, resolve
from pipelines.infra.resources import actor_plan
from pipelines.infra.services import connect_ray
from pipelines.infra.storage import check_writable, exists, npz_bytes, read_npz, write_bytes_atomic
from pipelines.infra.tracking import Tracker


@dataclass
class SampleJob:
    """A sampling job: the sample section of the config (grid, sampler, sizes, speed, placement) plus the networks,
    where the samples go, and tracking."""

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

    @property
    def scales(self) -> tuple[float, ...]:
        return tuple(float(s) for s in self.config.guidance_scales)


@dataclass
class SampleResult:
    out: str
    npz: dict  # scale -> URL of its NPZ
    grids: dict  # scale -> URL of its grid PNG
    computed_shards: int
    skipped_shards: int
    run_ids: dict = field(default_factory=dict)  # scale -> MLflow child run id
    busy_seconds: float = 0.0  # actor time spent sampling and writing shards (all actors together)
    warm_images: int = 0  # images of the shards that were not their actor's first (no CUDA / compile warm-up)
    warm_seconds: float = 0.0  # actor time spent on those shards


def scale_key(scale: float) -> str:
    return f"{float(scale):g}"


def plan_shards(scales, num_samples: int, batch_size: int) -> list[list[tuple[float, int]]]:
    pairs = [(float(s), i) for s in scales for i in range(num_samples)]
    return [pairs[k:k + batch_size] for k in range(0, len(pairs), batch_size)]


def shard_url(out: str, k: int) -> str:
    return posixpath.join(out.rstrip("/"), "shards", f"part-{k:05d}.npz")


# --- validation before any actor starts ---------------------------------------------------------------------------
def validate(job: SampleJob) -> tuple[NetworkRef, NetworkRef | None]:
    check_sample(job.config)
    if job.actors is not None and job.actors <= 0:
        raise UserError(f"--actors ({job.actors}) must be positive")
    parse_sampler(job.config.sampler)
    networks = _networks(job)
    check_writable(job.out, "output folder", "--out")  # last: it creates the folder, which only a go-ahead may
    return networks


def _networks(job: SampleJob) -> tuple[NetworkRef, NetworkRef | None]:
    """The diffusion model and classifier, their weights checked, and checked against each other."""
    diffusion = resolve(job.diffusion, "diffusion", job.preset, job.tracking_uri)
    if job.classifier is None:
        if any(s > 0 for s in job.scales):
            raise UserError("guidance scales above 0 need a noisy classifier: pass --classifier URI")
        return diffusion, None
    classifier = resolve(job.classifier, "classifier", job.preset, job.tracking_uri)
    unet, clf = diffusion.config, classifier.config
    if (clf.image_size, clf.in_channels) != (unet.image_size, unet.in_channels):
        raise UserError(f"the classifier sees {clf.image_size}px x {clf.in_channels} channel(s) but the diffusion "
                        f"model makes {unet.image_size}px x {unet.in_channels}; use a matching pair")
    if unet.num_classes is not None and clf.num_classes != unet.num_classes:
        raise UserError(f"the classifier has {clf.num_classes} classes but the diffusion model {unet.num_classes}")
    return diffusion, classifier


# --- the actor ---------------------------------------------------------------------------------------------------
class GuidedSampler:
    """Ray Data actor: loads the diffusion model and classifier once, then samples shard after shard."""

    def __init__(self, job: SampleJob, threads: int = 1):
        torch.set_num_threads(max(1, threads))
        self.job = job
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        diffusion_ref, classifier_ref = validate(job)
        self.unet_cfg = diffusion_ref.config
        cfg = job.config
        fast = functools.partial(speed_up, device=self.device, channels_last=cfg.channels_last, compile=cfg.compile)
        self.model = class_conditional(fast(diffusion_ref.build().to(self.device)),
                                       self.unet_cfg.num_classes is not None)
        self.classifier = fast(classifier_ref.build().to(self.device)) if classifier_ref else None
        self.num_classes = self.unet_cfg.num_classes or (classifier_ref.config.num_classes if classifier_ref else 1)
        self.loop, respacing = parse_sampler(job.config.sampler)
        self.diffusion = create_diffusion(diffusion_ref.preset.diffusion, respacing)
        self.shards = plan_shards(job.scales, job.config.num_samples, job.config.batch_size)
        self.shards_done = 0

    def sample_shard(self, k: int) -> dict:
        pairs = self.shards[k]
        scales = torch.tensor([s for s, _ in pairs], dtype=torch.float32, device=self.device)
        indices = np.array([i for _, i in pairs], dtype=np.int64)
        seeds = [sample_seed(self.job.config.seed, i) for i in indices]
        labels = [self.job.label if self.job.label is not None else sample_label(s, self.num_classes) for s in seeds]
        y = torch.tensor(labels, dtype=torch.long, device=self.device)
        cfg = self.unet_cfg
        noise = SampleNoise(seeds, (cfg.in_channels, cfg.image_size, cfg.image_size), self.device)
        guided = self.classifier is not None and bool((scales > 0).any())
        cond_fn = ClassifierGuidance(self.classifier, scales) if guided else None
        with autocast_context(self.device):
            x0 = self.loop(self.model, self.diffusion, noise, {"y": y}, cond_fn=cond_fn,
                           clip_denoised=self.job.config.clip_denoised, eta=self.job.config.eta)
        return {"images": to_uint8(x0), "labels": np.array(labels, dtype=np.int64),
                "scales": scales.cpu().numpy(), "indices": indices}

    def __call__(self, batch: dict) -> dict:
        done, seconds, first = [], [], []
        for k in batch["shard"]:
            start = time.perf_counter()
            write_bytes_atomic(shard_url(self.job.out, int(k)), npz_bytes(**self.sample_shard(int(k))))
            done.append(len(self.shards[int(k)]))
            seconds.append(time.perf_counter() - start)
            first.append(self.shards_done == 0)
            self.shards_done += 1
        return {"shard": np.asarray(batch["shard"]), "images": np.array(done, dtype=np.int64),
                "seconds": np.array(seconds), "first": np.array(first)}


# --- the driver --------------------------------------------------------------------------------------------------
def run_sampling(job: SampleJob, log=print) -> SampleResult:
    import ray

    validate(job)
    shards = plan_shards(job.scales, job.config.num_samples, job.config.batch_size)
    fs, _ = fsspec.core.url_to_fs(job.out)
    pending = [k for k in range(len(shards)) if not fs.exists(fsspec.core.url_to_fs(shard_url(job.out, k))[1])]
    total = sum(len(shards[k]) for k in pending)
    log(f"sampling {total} images in {len(pending)} shards ({len(shards) - len(pending)} already done) -> {job.out}")
    busy = warm_seconds = 0.0
    warm_images = 0
    if pending:
        connect_ray()
        n, resources = actor_plan(job.actors, len(pending), job.config.actor_cpus, job.config.actors_per_gpu)
        ds = ray.data.from_items([{"shard": k} for k in pending], override_num_blocks=len(pending))
        ds = ds.map_batches(GuidedSampler, fn_constructor_args=(job, max(1, round(resources["num_cpus"]))),
                            batch_size=1, compute=ray.data.ActorPoolStrategy(size=n), batch_format="numpy",
                            **resources)
        made = 0
        for row in ds.iter_rows():
            made, busy = made + int(row["images"]), busy + float(row["seconds"])
            if not row["first"]:
                warm_images, warm_seconds = warm_images + int(row["images"]), warm_seconds + float(row["seconds"])
            progress(log, "[sample] images", made, total)
    npz, grids = assemble(job, shards)
    return SampleResult(job.out, npz, grids, len(pending), len(shards) - len(pending), busy_seconds=busy,
                        warm_images=warm_images, warm_seconds=warm_seconds)


def assemble(job: SampleJob, shards) -> tuple[dict, dict]:
    """Per scale: the reference-layout NPZ and a class x sample grid, from the shard files."""
    parts = []
    for k in range(len(shards)):
        parts.append(read_npz(shard_url(job.out, k)))
    merged = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    npz, grids = {}, {}
    for scale in job.scales:
        rows = np.flatnonzero(merged["scales"] == np.float32(scale))
        rows = rows[np.argsort(merged["indices"][rows], kind="stable")]
        images, labels = merged["images"][rows], merged["labels"][rows]
        folder = posixpath.join(job.out.rstrip("/"), f"scale_{scale_key(scale)}")
        shape = "x".join(str(d) for d in images.shape)
        npz[scale] = posixpath.join(folder, f"samples_{shape}.npz")
        write_bytes_atomic(npz[scale], npz_bytes(arr_0=images, arr_1=labels))
        grids[scale] = posixpath.join(folder, "grid.png")
        caption = f"guidance scale {scale:g}, {job.config.sampler}, {len(images)} samples"
        write_bytes_atomic(grids[scale], labeled_grid(images, labels, caption))
    return npz, grids


def labeled_grid(images: np.ndarray, labels: np.ndarray, caption: str, width: int = 512) -> bytes:
    """The class x sample grid as PNG bytes, upscaled (nearest) to about `width` px so that the MLflow UI does not show
    a 16 px-per-image thumbnail, with each row's class label at its left and `caption` (the grid cell) on top."""
    from PIL import Image, ImageDraw

    grid = class_grid(images, labels)  # uint8 [H, W, C], one row of images per class, classes ascending
    classes = sorted(set(labels.tolist()))[:10]
    factor = max(1, width // grid.shape[1])
    big = grid.repeat(factor, axis=0).repeat(factor, axis=1)
    picture = Image.fromarray(big[..., 0] if big.shape[-1] == 1 else big).convert("RGB")
    margin, top = 64, 20
    canvas = Image.new("RGB", (picture.width + margin, picture.height + top), "white")
    canvas.paste(picture, (margin, top))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), caption, fill="black")
    row = picture.height / max(1, len(classes))
    for i, label in enumerate(classes):
        draw.text((4, top + int((i + 0.5) * row) - 6), f"class {label}", fill="black")
    out = io.BytesIO()
    canvas.save(out, format="PNG")
    return out.getvalue()


def log_to_mlflow(job: SampleJob, result: SampleResult, log=print) -> SampleResult:
    """One child run per scale (param guidance_scale, the grid as an image artifact, the NPZ URL as a tag)."""
    tracker = Tracker(job.tracking_uri)
    parent = job.parent_run_id or tracker.start_run(job.experiment, "sample", tags={tags.STAGE: "sample"})
    cfg = job.config
    for scale in job.scales:
        run_id = tracker.start_run(job.experiment, f"sample-scale-{scale_key(scale)}", parent,
                                   tags={tags.STAGE: "sample", tags.SAMPLES_NPZ: result.npz[scale]})
        tracker.log_params(run_id, {"guidance_scale": scale, "sampler": cfg.sampler, "eta": cfg.eta,
                                    "num_samples": cfg.num_samples, "seed": cfg.seed, "diffusion": job.diffusion,
                                    "classifier": job.classifier or ""})
        # params are strings in MLflow (sorting gives 0, 1, 16, 2, ...): the cell's numbers as metrics as well
        tracker.log_metrics(run_id, {"guidance_scale": scale, "num_samples": cfg.num_samples, "eta": cfg.eta}, step=0)
        tracker.set_tags(run_id, {tags.DESCRIPTION: f"{cfg.num_samples} samples at guidance scale {scale:g} "
                                  f"({cfg.sampler}); the grid is grid.png, the samples {result.npz[scale]}"})
        with tempfile.TemporaryDirectory() as tmp:
            local = posixpath.join(tmp, "grid.png")
            with fsspec.open(result.grids[scale], "rb") as src, open(local, "wb") as dst:
                dst.write(src.read())
            tracker.log_artifact(run_id, local)
        tracker.end_run(run_id)
        result.run_ids[scale] = run_id
    if job.parent_run_id is None:
        tracker.end_run(parent)
    log(f"MLflow: {len(job.scales)} child runs under {parent} at {tracker.uri}")
    return result


# --- as a stage of `adm run` -------------------------------------------------------------------------------------
def cache_inputs(preset, trained: dict) -> dict:
    return {"train": trained, "sample": to_dict(preset.sample)}


def samples_exist(outputs: dict) -> bool:
    return all(exists(url) for url in outputs["npz"].values())


def sample_stage(run_id: str, preset, trained: dict, out: str, tracking_uri: str, experiment: str, log=print) -> dict:
    """The grid of the preset's sample section from the trained networks; one child run per scale under `run_id`."""
    job = SampleJob(diffusion=f"runs:/{trained['diffusion']['run_id']}",
                    classifier=f"runs:/{trained['classifier']['run_id']}", out=out, config=preset.sample,
                    tracking_uri=tracking_uri, experiment=experiment, parent_run_id=run_id)
    result = log_to_mlflow(job, run_sampling(job, log=log), log=log)
    return {"out": job.out, "npz": {scale_key(s): u for s, u in result.npz.items()},
            "scale_runs": {scale_key(s): r for s, r in result.run_ids.items()}}

