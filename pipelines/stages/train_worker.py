"""The body of every Ray Train worker: data from the dataset shard, Learner steps, checkpoints, rank-0 tracking.

Rank 0 logs the trainer's metrics, sample grids and its machine's system metrics (infra/system_metrics.py) to the
MLflow run. Checkpoints go through ``ray.train.report(..., checkpoint=...)`` every save_interval steps and at the end; a
restarted worker group resumes from ``ray.train.get_checkpoint()`` (weights, EMA, optimizer, step, sampler and RNG
state) and stops at the same total step count. A non-finite loss ends the trainer with a report naming the step; the
last good checkpoint stays the latest one.
"""

import dataclasses
import json
import math
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass

import fsspec
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from components.checkpoint import load_state_dict
from components.config import Preset, to_dict
from components.config.kinds import kind as network_kind
from components.images import image_grid, to_uint8
from components.precision import Choice
from components.training import Learner, trainer_candidates, training_choice
from pipelines.infra import speed, tags
from pipelines.infra.model_refs import locate_for, snapshot_path
from pipelines.infra.system_metrics import SystemMetrics
from pipelines.infra.tracking import Tracker
from pipelines.stages.train_monitor import SCORE, eval_due, make_eval

PREVIEW = 8  # images in an upsampler's sample grids


@dataclass(frozen=True)
class WorkerConfig:
    """What every Ray Train worker of one trainer is handed (as train_loop_config["worker"])."""

    kind: str  # diffusion | classifier | evaluator | upsampler
    preset: Preset
    run_id: str  # the trainer's MLflow run, created by the driver; rank 0 logs into it
    tracking_uri: str
    seed: int
    threads: int  # torch threads: the CPUs this worker asked for
    nonfinite_marker: str  # where rank 0 records the step of a NaN/inf loss
    board: object = None  # the driver's ProgressBoard actor (infra/console.py): progress reaches the driver once
    init_from: str = ""  # the pinned weights to start from (infra/init_from.py), checked by the driver; "": random
    data_url: str = ""  # the dataset: its validation split is what evaluation while training reads
    guide_dir: str = ""  # diffusion: the classifier trainer's checkpoint folder, whose latest guides its eval samples


def _gather_fn(world: int):
    if world == 1:
        return None

    def gather(t, losses):
        ts = [torch.zeros_like(t) for _ in range(world)]
        ls = [torch.zeros_like(losses) for _ in range(world)]
        dist.all_gather(ts, t)
        dist.all_gather(ls, losses.detach().float().contiguous())
        return torch.cat(ts), torch.cat(ls)

    return gather


class Progress:
    """Rank 0's progress line: steps, loss, images/s, ETA."""

    def __init__(self, kind: str, total: int, start_step: int, images_per_step: int):
        self.kind, self.total, self.images_per_step = kind, total, images_per_step
        self.t0, self.s0 = time.perf_counter(), start_step
        self.window = (self.t0, start_step)

    def rate(self, step: int) -> float:
        """images/s since this worker started (data pipeline start-up included)."""
        elapsed = time.perf_counter() - self.t0
        return (step - self.s0) * self.images_per_step / elapsed if elapsed > 0 else 0.0

    def window_rate(self, step: int) -> float:
        """images/s since the previous call: the current throughput."""
        now = time.perf_counter()
        (then, before), self.window = self.window, (now, step)
        return (step - before) * self.images_per_step / (now - then) if now > then else 0.0

    def detail(self, step: int, loss: float) -> str:
        rate = self.rate(step)
        eta = f"{(self.total - step) * self.images_per_step / rate / 60:.1f} min" if rate > 0 else "?"
        return f"loss {loss:.4f} {rate:.1f} img/s ETA {eta}"

    def line(self, step: int, loss: float) -> str:
        return f"[{self.kind}] step {step}/{self.total} {self.detail(step, loss)}"


def _say(job: WorkerConfig, line: str) -> None:
    """A line for the operator: to the driver's board when there is one; always to this worker's stdout (Ray's log
    file of the worker, and the driver's console with log_to_driver, i.e. `adm run --verbose`). Written, not print()ed:
    Ray Train patches print() on its workers to log as well as print, which showed every line twice."""
    if job.board is not None:
        job.board.say.remote(line)
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def train_loop_per_worker(config: dict) -> None:
    job: WorkerConfig = config["worker"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, job.threads))
    device = ray.train.torch.get_device()
    tracker = Tracker(job.tracking_uri) if rank == 0 else None
    choice = _speed_choice(job, device, rank, world, tracker)
    learner = Learner(job.kind, job.preset, device, seed=job.seed + rank, settings=choice.settings)
    resumed = _start(job, learner)
    model = learner.hot(ray.train.torch.prepare_model(learner.net)) if world > 1 else learner.fast
    cfg, logged = learner.cfg, 0
    if rank == 0:  # where this trainer runs now: operators (and the fault tests) find the process by it
        tracker.set_tags(job.run_id, {tags.WORKER: f"{socket.gethostname()} pid {os.getpid()}"})
        _say(job, f"[{job.kind}] speed: {choice.summary()}")
        if choice.source != "run":  # recorded once per run: MLflow refuses a param that changes
            speed.record(tracker, job.run_id, f"train-{job.kind}", choice)
    if resumed and rank == 0:
        # the steps after the checkpoint that the lost worker group logged are not logged again: each step once
        logged = tracker.last_logged_step(job.run_id)
        tracker.set_tags(job.run_id, {tags.RESUMED_FROM_STEP: str(learner.step)})
        _say(job, f"[{job.kind}] resumed from the checkpoint at step {learner.step}")
    shard = ray.train.get_dataset_shard("train")
    progress = Progress(job.kind, cfg.steps, learner.step, cfg.batch_size * world)
    gather = _gather_fn(world)
    held_out = make_eval(job.kind, job.data_url, job.guide_dir, device) if rank == 0 and cfg.eval_interval else None
    preview = None  # an upsampler's sample grids upsample the first images it trained on
    interval = cfg.system_metrics_interval if rank == 0 else 0  # this machine's CPU, memory, GPU on the run
    with SystemMetrics(job.tracking_uri, job.run_id, interval):
        while learner.step < cfg.steps:
            for batch in _epoch(shard, cfg, job.seed, rank, learner.step):
                images, labels = batch["image"].to(device), batch["label"].to(device)
                if preview is None and learner.network.upsamples:
                    preview = (images[:PREVIEW].clone(), labels[:PREVIEW].clone())
                metrics = _global_means(learner.train_step(images, labels, model, gather), world)
                step = learner.step
                if not math.isfinite(metrics["loss"]):
                    # every rank sees the same global loss, so all stop here together; no checkpoint of this state
                    if rank == 0:
                        _write_marker(job.nonfinite_marker, {"step": step, "loss": str(metrics["loss"])})
                    return
                if rank == 0:
                    _log_step(tracker, job, learner, metrics, progress, log=step > logged, preview=preview)
                score = _evaluate(tracker, job, learner, held_out, step > logged) \
                    if held_out and eval_due(cfg, step) else None
                if step % cfg.save_interval == 0 or step == cfg.steps or (cfg.keep_best and eval_due(cfg, step)):
                    _report_checkpoint(learner, metrics, rank, score)
                if rank == 0 and step in cfg.snapshot_steps and step > logged:
                    _snapshot(tracker, job, learner)
                if step >= cfg.steps:
                    break


def _speed_choice(job: WorkerConfig, device, rank: int, world: int, tracker: Tracker | None) -> Choice:
    """Precision, memory format and compile of this trainer (train_<kind>.precision / channels_last / compile; auto:
    measured): rank 0 takes those recorded on the training run by an earlier part of it (a restarted worker group, a
    resumed run: the checkpoint's optimizer state and numerics go on in the settings they began in), else from the
    speed cache or by timing trial steps (pipelines/infra/speed.py), and hands it to every other rank, so that all
    ranks of a DDP group run the same arithmetic."""
    choice = None
    if rank == 0:
        kind = network_kind(job.kind)
        cfg = kind.train_config(job.preset)
        cands = trainer_candidates(cfg, device, world)
        choice = speed.recorded(tracker, job.run_id, cands[0].cuda_graphs)
    if rank == 0 and choice is None:
        asked = {"precision": cfg.precision, "channels_last": cfg.channels_last, "compile": cfg.compile,
                 "cuda_graphs": cands[0].cuda_graphs}
        networks = {"network": dataclasses.asdict(kind.network_config(job.preset)), "microbatch": cfg.microbatch}
        choice = speed.cached_choice(
            device, f"train-{job.kind}", networks, cfg.batch_size, asked,
            measure=lambda: training_choice(job.kind, job.preset, device, cands, cfg.compile, job.seed),
            compile_again=lambda hit: training_choice(job.kind, job.preset, device, cands, cfg.compile, job.seed,
                                                      cached=hit),
            run_steps=cfg.steps)
    if world > 1:
        box = [choice]
        dist.broadcast_object_list(box, src=0)
        choice = box[0]
    return choice


def _start(job: WorkerConfig, learner: Learner) -> bool:
    """The learner's starting state: the latest checkpoint of this trainer when the worker group restarts (True),
    else the warm start of init_from, else the random init."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            learner.load(folder)
        return True
    if job.init_from:
        ref = locate_for(job.init_from, job.kind, job.preset, job.tracking_uri)
        learner.warm_start(load_state_dict(ref.weights), source=job.init_from)
    return False


def _epoch(shard, cfg, seed: int, rank: int, step: int):
    """One pass over this worker's shard in batches, shuffled through cfg.shuffle_rows rows with a seed that differs
    per epoch and per rank and repeats from run to run (the epoch is named by the step it starts at)."""
    shuffle = {"local_shuffle_buffer_size": cfg.shuffle_rows,
               "local_shuffle_seed": (seed * 1009 + rank) * 1_000_003 + step} if cfg.shuffle_rows else {}
    return shard.iter_torch_batches(batch_size=cfg.batch_size, drop_last=True, **shuffle)


def _global_means(metrics: dict, world: int) -> dict:
    """The step's metrics over the global batch: each rank's batch means averaged over the ranks (equal batches), as
    the released code's logger averages over MPI ranks; grad_norm and lr are the same on every rank already. Per
    quartile means stay this rank's (a quartile may be missing from a rank's batch)."""
    if world == 1:
        return metrics

    keys = sorted(k for k in metrics if "_q" not in k and k not in ("grad_norm", "lr"))
    values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(values)
    return {**metrics, **{k: float(v) / world for k, v in zip(keys, values)}}


def _write_marker(url: str, values: dict) -> None:
    with fsspec.open(url, "w") as f:
        f.write(json.dumps(values))


def _log_step(tracker, job: WorkerConfig, learner: Learner, metrics: dict, progress: Progress, log: bool = True,
              preview=None) -> None:
    """Progress, and with `log` this step's metrics and sample grid to the run (not for steps a lost worker group
    logged before a resume). An upsampler's grid has three rows for the `preview` images: their low-resolution
    version brought back bilinearly, its upsampling, the originals."""
    step, cfg, run_id = learner.step, learner.cfg, job.run_id
    if step % cfg.log_interval == 0 or step == cfg.steps:
        if log:
            tracker.log_metrics(run_id, {**metrics, "images_per_s": progress.window_rate(step),
                                         "images_per_s_overall": progress.rate(step)}, step)
        if job.board is not None:
            job.board.update.remote(f"[{job.kind}] training", step, cfg.steps, progress.detail(step, metrics["loss"]))
        sys.stdout.write(progress.line(step, metrics["loss"]) + "\n")
        sys.stdout.flush()
    every = cfg.sample_interval
    if log and network_kind(learner.kind).is_unet and ((every and step % every == 0) or step == cfg.steps):
        if learner.network.upsamples:
            grid, rows = learner.upsample_grid(*preview), 3
        else:
            grid, rows = learner.sample_grid(), learner.preset.unet.num_classes or 1
        image = image_grid(to_uint8(grid), rows=rows)
        tracker.log_image(run_id, image, f"samples/step_{step:07d}.png")


def _evaluate(tracker, job: WorkerConfig, learner: Learner, held_out, log: bool = True) -> float:
    """Evaluation while training (stages/train_monitor.py): its metrics to the run at this step (with `log`);
    returns the score, which ranks the checkpoint either way."""
    scores = held_out.scores(learner)
    if log:
        tracker.log_metrics(job.run_id, scores, learner.step)
    return scores[SCORE]


def _snapshot(tracker, job: WorkerConfig, learner: Learner) -> None:
    """This step's checkpoint as the run's artifacts snapshots/step_NNNNNNN, out of the checkpoints' rotation: an
    earlier version of the network, readable as runs:/RUN_ID/snapshots/step_NNNNNNN (autoguidance's guide)."""
    with tempfile.TemporaryDirectory() as folder:
        learner.save(folder, config={"kind": learner.kind, "preset": to_dict(learner.preset), "step": learner.step})
        tracker.log_artifacts(job.run_id, folder, snapshot_path(learner.step))


def _report_checkpoint(learner: Learner, metrics: dict, rank: int, score: float | None = None) -> None:
    report = {"step": learner.step, "loss": metrics["loss"]}
    if learner.cfg.keep_best:  # Ray ranks checkpoints by it; one without an evaluation ranks last (nan)
        report[SCORE] = float("nan") if score is None else score
    if rank != 0:
        ray.train.report(report)  # every rank reports the same number of times; rank 0 writes the files
        return
    with tempfile.TemporaryDirectory() as folder:
        config = {"kind": learner.kind, "preset": to_dict(learner.preset), "step": learner.step}
        learner.save(folder, config=config)
        ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(folder))
