"""Ray Train drivers: the diffusion model, the noisy classifier, the evaluator network and, in a cascade preset, the
upsampler (ADM-U), trained concurrently. A cascade's base networks read the dataset's area downsample at their size,
its upsampler the large images (infra/dataset.py dataset_at).

Each network is one ``TorchTrainer`` with its own ScalingConfig; the ``fit()`` calls run side by side in driver
threads and finish independently (with fewer whole CPUs than CPU workers, later ones wait: resources.CpuSlots).
Before any worker starts, the configuration is checked against the dataset's manifest, the storage path is written to
once and the tracking server is asked for /health. The MLflow run of each trainer is created here, so a worker-group
restart never creates a second run; rank 0 logs into it by id.
"""

import concurrent.futures
import dataclasses
import json
import math
import posixpath
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import fsspec
import ray
import ray.train
import torch
from ray.train.torch import TorchTrainer

from components.config import ConfigError, Preset, UserError, to_dict
from components.config.kinds import KINDS, has_noise_level, has_null_class, preset_kinds
from components.config.kinds import kind as network_kind
from components.config.validation import raise_problems, train_problems
from components.networks import build_network
from components.training import ema_initial_share
from pipelines.infra import tags
from pipelines.infra.console import Board
from pipelines.infra.dataset import dataset_at, driver_dataset, load_manifest, ray_dataset
from pipelines.infra.init_from import InitSource, resolve_inits
from pipelines.infra.resources import cluster_cpus, largest_node_cpus, trainer_slots, worker_resources
from pipelines.infra.services import connect_ray
from pipelines.infra.storage import absolute, check_writable
from pipelines.infra.tracking import Tracker
from pipelines.stages.context import Stage, StageContext
from pipelines.stages.train_monitor import SCORE, eval_scale
from pipelines.stages.train_worker import WorkerConfig, train_loop_per_worker


class TrainingError(UserError):
    """A trainer failed; the message names the network, the step or the cause, and the run to inspect."""


@dataclass
class TrainOptions:
    storage: str  # folder or URI for checkpoints (any pyarrow/fsspec filesystem)
    tracking_uri: str | None = None
    experiment: str = "adm"
    parent_run_id: str | None = None
    seed: int = 0
    data_cpus: float = 0.25  # CPUs per Ray Data read/decode task when the training split is streamed
    materialize_bytes: int = 1 << 30  # decoded training sets up to this size are held in the object store
    run_ids: dict = field(default_factory=dict)  # kind -> an earlier MLflow run to continue (resume from checkpoint)
    board: object = None  # the driver's ProgressBoard actor the workers report progress to (set by train())
    model_prefix: str | None = None  # registered names <prefix>-<network> (init_from=champion); None: adm-<preset>
    inits: dict = field(default_factory=dict)  # kind -> InitSource of a warm start (set by train())
    data_url: str = ""  # the dataset, whose validation split evaluation while training reads (set by train())
    kind_urls: dict = field(default_factory=dict)  # kind -> its dataset where it differs (a cascade's; set by train())
    guide_dir: str = ""  # the classifier trainer's checkpoint folder, guiding the diffusion's eval (set by train())


@dataclass
class TrainOutcome:
    kind: str
    run_id: str
    checkpoint: str  # storage path of the final checkpoint
    steps: int
    model_uri: str | None = None
    metrics: dict = field(default_factory=dict)
    started: float = 0.0  # wall-clock time.time() around fit()
    finished: float = 0.0


# --- checks before any worker starts -----------------------------------------------------------------------------
def kind_data(preset: Preset, kinds, data_url: str) -> dict:
    """{kind: the dataset it trains on}: `data_url` for all; in a cascade, each network's size from the family of
    `data_url` (the large images and their area downsample: either URL finds the other)."""
    if preset.upsampler is None:
        return {kind: data_url for kind in kinds}
    return {kind: dataset_at(data_url, network_kind(kind).network_config(preset).image_size) for kind in kinds}


def validate(preset: Preset, kinds, manifests: dict) -> None:
    """The training sections, the networks (built on the meta device) and each network against the manifest of its
    dataset ({kind: manifest}, kind_data's datasets)."""
    raise_problems([p for name in kinds for kind in [network_kind(name)]
                    for p in train_problems(kind.train_section, kind.train_config(preset))])
    for name in kinds:
        kind, manifest = network_kind(name), manifests[name]
        with torch.device("meta"):
            build_network(kind, preset)
        cfg, where = kind.network_config(preset), kind.network_section
        if cfg.image_size != manifest["resolution"]:
            raise ConfigError(f"{where}.image_size={cfg.image_size} but the dataset is {manifest['resolution']}px; "
                              f"re-ingest with --resolution {cfg.image_size} or override {where}.image_size")
        if cfg.in_channels != manifest["channels"]:
            raise ConfigError(f"{where}.in_channels={cfg.in_channels} but the dataset has {manifest['channels']} "
                              f"channel(s); override {where}.in_channels={manifest['channels']}")
        classes = cfg.num_classes
        if classes is not None and classes != manifest["num_classes"]:
            raise ConfigError(f"{where}.num_classes={classes} but the dataset has {manifest['num_classes']} classes; "
                              f"override {where}.num_classes={manifest['num_classes']}")
        _check_held_out(kind, preset, manifest)


def _check_held_out(kind, preset: Preset, manifest: dict) -> None:
    """Evaluation while training reads the dataset's validation split: it must be there, with two images at least
    (the FID reference statistics need a covariance)."""
    held = manifest["counts"].get("validation", 0)
    if kind.train_config(preset).eval_interval and held < 2:
        raise ConfigError(f"{kind.train_section}.eval_interval={kind.train_config(preset).eval_interval} needs a "
                          f"validation split of 2 images or more, and this dataset has {held}: ingest it with a "
                          "validation fraction (data.validation_fraction, adm data ingest --validation-fraction 0.05) "
                          f"or set {kind.train_section}.eval_interval=0")


# --- trainers ---------------------------------------------------------------------------------------------------------
def make_trainer(kind: str, preset: Preset, dataset, run_id: str, opts: TrainOptions, cpus: float):
    """The TorchTrainer of one network; `dataset` is the training split (training_dataset), shared by the trainers."""

    spec = network_kind(kind)
    cfg = spec.train_config(preset)
    guided = spec.is_unet and not spec.upsamples  # the base diffusion model's evaluation is guided
    worker = WorkerConfig(kind=kind, preset=preset, run_id=run_id, tracking_uri=opts.tracking_uri, seed=opts.seed,
                          threads=max(1, round(cpus)), nonfinite_marker=nonfinite_marker(opts, kind, run_id),
                          board=opts.board, init_from=opts.inits[kind].uri if kind in opts.inits else "",
                          data_url=opts.kind_urls.get(kind, opts.data_url),
                          guide_dir=opts.guide_dir if guided else "")
    resources = {"CPU": cpus, **({"GPU": 1} if cfg.use_gpu else {})}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"worker": worker},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=f"{kind}-{run_id}",
            storage_path=opts.storage,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=_checkpoint_config(cfg),
        ),
        datasets={"train": dataset},
    )


def _checkpoint_config(cfg):
    """keep_checkpoints' rotation; with keep_best it drops the checkpoints of the worst eval scores instead of the
    oldest (Ray always keeps the latest as well, which a restarted worker group resumes from)."""

    if not cfg.keep_best:
        return ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints)
    return ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints, checkpoint_score_attribute=SCORE,
                                      checkpoint_score_order="min")


def best_checkpoint(result):
    """(checkpoint, step) of the kept checkpoint with the lowest finite eval score; among equal scores the later
    step. None when no kept checkpoint was evaluated."""
    scored = [(m[SCORE], -m["step"], c) for c, m in result.best_checkpoints or []
              if isinstance(m.get(SCORE), (int, float)) and math.isfinite(m[SCORE])]
    if not scored:
        return None
    _, minus_step, checkpoint = min(scored, key=lambda r: r[:2])
    return checkpoint, -minus_step


def _run_folder(opts: TrainOptions, kind: str, run_id: str) -> str:
    """Ray Train's folder of one trainer (RunConfig name under storage_path): its checkpoint_* folders."""
    return f"{opts.storage.rstrip('/')}/{kind}-{run_id}"


def nonfinite_marker(opts: TrainOptions, kind: str, run_id: str) -> str:
    """Where a trainer that met a NaN/inf loss records the step (beside its checkpoints)."""
    return f"{_run_folder(opts, kind, run_id)}/nonfinite_loss.json"


def _nonfinite_step(opts: TrainOptions, kind: str, run_id: str) -> int | None:
    url = nonfinite_marker(opts, kind, run_id)
    fs, path = fsspec.core.url_to_fs(url)
    return json.loads(fs.cat_file(path))["step"] if fs.exists(path) else None


def training_dataset(data_url: str, opts: TrainOptions):
    """The decoded training split, shared by the trainers. Small splits (decoded size under opts.materialize_bytes) are
    decoded by the driver and held in the object store before any trainer starts (driver_dataset: they survive the loss
    of a worker node, and every run sees the same order; 60k Fashion-MNIST images at 16 px: 5.2 s on the 2-core Intel
    VM, 6.1 s with read tasks); larger ones are streamed from the shards by read tasks asking opts.data_cpus each, to
    run beside the trainers."""
    manifest = load_manifest(data_url)
    decoded = manifest["counts"]["train"] * manifest["channels"] * manifest["resolution"] ** 2 * 4
    if decoded <= opts.materialize_bytes:
        return driver_dataset(data_url, "train")
    return ray_dataset(data_url, "train", num_cpus=opts.data_cpus)


def _fit(kind: str, preset: Preset, dataset, run_id: str, opts: TrainOptions, cpus: float,
         tracker: Tracker, queued: float, slots=None) -> TrainOutcome:
    started = time.time()
    try:
        after = slots.started_after.get(kind) if slots is not None else None
        if after is not None:  # waited for a CPU slot: its MLflow run (made at stage start) counts the wait too
            tracker.log_metrics(run_id, {"cpu_wait_s": round(started - queued, 1)}, step=0)
            tracker.set_tags(run_id, {tags.STARTED_AFTER: after})
        result = make_trainer(kind, preset, dataset, run_id, opts, cpus).fit()
        metrics = dict(result.metrics or {})
        bad_step = _nonfinite_step(opts, kind, run_id)
        if bad_step is not None:
            kept = result.checkpoint.path if result.checkpoint else "none was saved yet"
            raise TrainingError(f"{kind}: the loss became NaN/inf at step {bad_step}; training stopped there. "
                                f"Last good checkpoint: {kept} (MLflow run {run_id})")
        if result.checkpoint is None:
            raise TrainingError(f"{kind}: training ended without a checkpoint (MLflow run {run_id})")
        final = _final_checkpoint(kind, preset, result, run_id, tracker)
        outcome = TrainOutcome(kind, run_id, final.path, int(metrics.get("step", 0)), metrics=metrics,
                               started=started, finished=time.time())
        outcome.model_uri = _log_final(tracker, outcome, final, preset)
        tracker.set_tags(run_id, {tags.MODEL_URI: outcome.model_uri, tags.CHECKPOINT: outcome.checkpoint})
        tracker.end_run(run_id, "FINISHED")
        return outcome
    except BaseException as e:
        tracker.end_failed(run_id, e)
        if isinstance(e, (TrainingError, KeyboardInterrupt)):
            raise
        raise TrainingError(f"{kind} training failed (MLflow run {run_id}): {type(e).__name__}: {e}\n"
                            f"{traceback.format_exc(limit=3)}") from e


def _final_checkpoint(kind: str, preset: Preset, result, run_id: str, tracker: Tracker):
    """The checkpoint the trainer reports as its model: the latest, or with keep_best the best evaluated one, whose
    step goes on the run as adm.best_step."""
    if not network_kind(kind).train_config(preset).keep_best:
        return result.checkpoint
    best = best_checkpoint(result)
    if best is None:
        raise TrainingError(f"{kind}: keep_best found no evaluated checkpoint (MLflow run {run_id})")
    tracker.set_tags(run_id, {tags.BEST_STEP: str(best[1])})
    return best[0]


def network_description(kind: str, preset: Preset) -> dict:
    """The network.json of a logged model (infra/mlflow_model.py builds the network from it): its kind, its config
    section and whether it has the null class of classifier-free guidance (one more label row, not a config field)
    or, an upsampler, the noise-level embedding of conditioning augmentation."""
    spec = network_kind(kind)
    return {"kind": kind, "network": dataclasses.asdict(spec.network_config(preset)),
            "null_class": has_null_class(preset, spec), "noise_level": has_noise_level(preset, spec)}


def _log_final(tracker: Tracker, outcome: TrainOutcome, checkpoint, preset: Preset) -> str:
    """The final checkpoint as artifacts, and the (EMA if any) network as a logged MLflow model."""
    with checkpoint.as_directory() as folder:
        folder = Path(folder)
        tracker.log_artifacts(outcome.run_id, folder, "checkpoint")
        rates = network_kind(outcome.kind).train_config(preset).ema_rate
        weights = folder / (f"ema_{rates[0]}.safetensors" if rates else "model.safetensors")
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "network.json"
            config.write_text(json.dumps(network_description(outcome.kind, preset)))
            return tracker.log_network(outcome.run_id, f"{outcome.kind}_model", weights, config)


def _shared_dataset(data_url: str, opts: TrainOptions, run_ids: dict, tracker: Tracker):
    """The training split, read and decoded once for all trainers (each streams its own pass over it); a failure
    here fails every training run."""
    try:
        return training_dataset(data_url, opts)
    except Exception as e:
        for run_id in run_ids.values():
            tracker.end_failed(run_id, e)
        raise TrainingError(f"reading the training split of {data_url} failed: {type(e).__name__}: {e}") from e


def _interrupt(futures: dict, run_ids: dict, tracker: Tracker, log, slots) -> None:
    """Ctrl-C: stop the trainers (disconnecting from Ray ends the Train controllers this driver owns; one still
    waiting for a CPU slot never starts), give their threads a moment to return, and mark every unfinished training run
    KILLED. Checkpoints already reported stay."""


    log("interrupted: stopping the trainers")
    slots.close()
    ray.shutdown()
    concurrent.futures.wait(list(futures.values()), timeout=10)
    for kind, run_id in run_ids.items():
        future = futures.get(kind)
        if not (future and future.done() and future.exception() is None):
            tracker.end_run(run_id, "KILLED")


def train(preset: Preset, data_url: str, opts: TrainOptions, kinds=None, log=print) -> dict[str, TrainOutcome]:
    """Train `kinds` (default: every network of the preset) concurrently on the connected Ray cluster; returns one
    TrainOutcome per network. Local paths are made absolute first: Ray Train wants an absolute storage path, and the
    workers that read the validation split do not share the driver's working directory."""
    kinds = preset_kinds(preset) if kinds is None else tuple(kinds)
    data_url = absolute(data_url)
    urls = kind_data(preset, kinds, data_url)
    manifests = {kind: load_manifest(url) for kind, url in urls.items()}
    validate(preset, kinds, manifests)
    check_writable(opts.storage, "storage path", "--storage")
    tracker = Tracker(opts.tracking_uri)
    opts = dataclasses.replace(opts, tracking_uri=tracker.uri, storage=absolute(opts.storage))
    inits = resolve_inits(preset, kinds, tracker.uri, opts.model_prefix or f"adm-{preset.name}")
    connect_ray()
    cpus = worker_resources(preset, kinds, cluster_cpus(), largest_node_cpus())
    for kind in kinds:
        if cpus[kind] > largest_node_cpus():
            raise ConfigError(f"train_{kind}.cpus_per_worker={cpus[kind]:g} fits no node of this Ray cluster (the "
                              f"largest has {largest_node_cpus():g} CPUs); lower it or 0 to share the CPUs out")
    slots, at_once = trainer_slots(preset, kinds, cluster_cpus())
    run_ids = {}
    for kind in kinds:
        if kind in opts.run_ids:  # same run => same Ray Train run name => fit() restores its latest checkpoint
            run_ids[kind] = opts.run_ids[kind]
            _keep_recorded_init(inits, kind, tracker.run(run_ids[kind]).data.tags)
            tracker.reopen(run_ids[kind])
            log(f"[{kind}] continuing MLflow run {run_ids[kind]} from its last checkpoint")
            continue
        run_ids[kind] = _open_run(tracker, preset, kind, opts, urls[kind], manifests[kind], inits.get(kind))
        log(f"[{kind}] MLflow run {run_ids[kind]}; {_plan_line(preset, kind, cpus[kind], inits.get(kind))}"
            + ("" if kind in at_once else "; starts when a trainer before it finishes (one worker per whole CPU)"))
    futures, outcomes, errors = {}, {}, []
    board = Board(log)
    guide = _run_folder(opts, "classifier", run_ids["classifier"]) if "classifier" in run_ids else ""
    opts = dataclasses.replace(opts, board=board.actor, inits=inits, data_url=data_url, guide_dir=guide,
                               kind_urls=urls)
    try:
        datasets = {url: _shared_dataset(url, opts, run_ids, tracker) for url in dict.fromkeys(urls.values())}
        for k in kinds:
            futures[k] = slots.start(k, _fit, k, preset, datasets[urls[k]], run_ids[k], opts, cpus[k], tracker,
                                     time.time(), slots)
        for kind, future in futures.items():
            try:
                outcomes[kind] = future.result()
            except TrainingError as e:
                errors.append(str(e))
    except KeyboardInterrupt:
        _interrupt(futures, run_ids, tracker, log, slots)
        raise
    finally:
        board.close()
    if errors:
        raise TrainingError("; ".join(errors))
    return outcomes


def _open_run(tracker: Tracker, preset: Preset, kind: str, opts: TrainOptions, data_url: str, manifest: dict,
              init: InitSource | None) -> str:
    """A trainer's MLflow run, made by the driver: its tags, its own config sections as params, its dataset."""
    run_id = tracker.start_run(opts.experiment, f"train-{kind}", opts.parent_run_id,
                               tags={tags.STAGE: "train", tags.NETWORK: kind, **unconditional_tag(preset, kind),
                                     tags.DATA_FINGERPRINT: manifest["fingerprint"], **(init.tags if init else {})})
    tracker.log_params(run_id, run_params(preset, kind, data_url))
    tracker.log_dataset(run_id, data_url, posixpath.basename(data_url.rstrip("/")), manifest["fingerprint"])
    return run_id


def _keep_recorded_init(inits: dict, kind: str, run_tags: dict) -> None:
    """A continued run starts from what it recorded, even if the champion moved since it began."""
    recorded = InitSource.recorded(run_tags)
    if recorded is not None:
        inits[kind] = recorded


def unconditional_tag(preset, kind: str) -> dict:
    """adm.unconditional on a UNet's run: whether it learns the null class (classifier-free guidance)."""
    return {tags.UNCONDITIONAL: str(has_null_class(preset, kind)).lower()} if network_kind(kind).is_unet else {}


def _plan_line(preset: Preset, kind: str, cpus: float, init: InitSource | None) -> str:
    cfg = network_kind(kind).train_config(preset)
    start = f"starts from {init.uri}" if init else "starts from random weights"
    ema = "".join(f"; EMA {rate:g} ends with {ema_initial_share(cfg, rate):.1%} of the initial weights"
                  for rate in cfg.ema_rate)
    return f"{cfg.num_workers} worker(s) x {cpus} CPU; {start}{ema}"


def run_params(preset: Preset, kind: str, data_url: str) -> dict:
    """A training run's params: its network's and training's config sections and the shared diffusion process, not
    the other networks' (the whole resolved config is an artifact of the pipeline run)."""
    spec, values = network_kind(kind), to_dict(preset)
    own = {name: values[name] for name in (spec.network_section, spec.train_section, spec.process_section)}
    return {"preset": preset.name, "network": kind, "data_url": data_url, **own}


# --- as a stage of `adm run` -------------------------------------------------------------------------------------
def cache_inputs(ctx: StageContext, inputs: dict) -> dict:
    """The dataset, the diffusion process, every network's architecture and training section, the pinned weights of
    warm starts (init_from=champion names another version once the champion moves) and, when the diffusion model is
    evaluated while training, the guidance scale of that evaluation (evaluate.champion_scale, or with auto the grid's
    middle scale): keep_best ranks its checkpoints by it."""
    preset = ctx.preset
    inits = resolve_inits(preset, KINDS, ctx.tracker.uri, ctx.prefix)
    kinds = [KINDS[k] for k in preset_kinds(preset)]
    sections = {n for k in kinds for n in (k.network_section, k.train_section, k.process_section)}
    key = {"data": inputs["ingest"]["fingerprint"], **{n: to_dict(getattr(preset, n)) for n in sorted(sections)}}
    if "large_fingerprint" in inputs["ingest"]:  # a cascade: the upsampler trains on the large images
        key["large_data"] = inputs["ingest"]["large_fingerprint"]
    if inits:
        key["init_from"] = {k: s.uri for k, s in sorted(inits.items())}
    if preset.train_diffusion.eval_interval:
        key["eval_scale"] = eval_scale(preset)
    return key


def _lineage(run_tags: dict) -> dict:
    """A trainer's lineage tags that its registered version carries too (what it started from)."""
    source = InitSource.recorded(run_tags)
    return {"lineage": source.tags} if source else {}


def run(ctx: StageContext, inputs: dict) -> dict:
    """The preset's networks (three, and the upsampler in a cascade) under the stage run. Rerun in the same stage run
    (a resumed pipeline), a trainer that finished is kept and one that did not continues its MLflow run from its last
    checkpoint."""
    tracker, data_url = ctx.tracker, inputs["ingest"]["data_url"]
    earlier = {r.data.tags.get(tags.NETWORK): r for r in tracker.children(ctx.experiment, ctx.run_id)}
    done = {k: r for k, r in earlier.items() if r.info.status == "FINISHED" and tags.MODEL_URI in r.data.tags}
    outputs = {k: {"run_id": r.info.run_id, "model_uri": r.data.tags[tags.MODEL_URI], **_lineage(r.data.tags)}
               for k, r in done.items()}
    kinds = tuple(k for k in preset_kinds(ctx.preset) if k not in done)
    if kinds:
        resume = {k: r.info.run_id for k, r in earlier.items() if k in kinds}
        opts = TrainOptions(storage=ctx.path("checkpoints"), tracking_uri=tracker.uri, experiment=ctx.experiment,
                            parent_run_id=ctx.run_id, run_ids=resume, model_prefix=ctx.prefix)
        for kind, outcome in train(ctx.preset, data_url, opts, kinds, log=ctx.log).items():
            outputs[kind] = {"run_id": outcome.run_id, "model_uri": outcome.model_uri,
                             **_lineage(tracker.run(outcome.run_id).data.tags)}
    return outputs


STAGE = Stage("train", run, cache_inputs)
