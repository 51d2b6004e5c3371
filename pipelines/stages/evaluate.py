"""Evaluation stage: features of samples and references with Ray Data, metrics per grid cell on the driver.

Inputs: the output folder of ``adm sample`` (``<sampler>/scale_<s>[...]/samples_*.npz``, arr_0 uint8 NHWC, arr_1
labels, beside the cell's cell.json) or one NPZ,
and a reference: an ingested dataset URL (its first ``num_reference`` images of a split) or a reference-batch NPZ of
the released evaluator (``arr_0`` images, or precomputed ``mu``/``sigma``/``mu_s``/``sigma_s``).

Work items are slices of those files; ``FeatureWorker`` actors load the extractors once and return features row by
row. The driver reduces them to statistics and computes FID, sFID, precision/recall (Inception features), the same
on the evaluator network's features, the evaluator's Inception-style score and the accuracy of samples against their
target labels. Reference features are cached under ``cache_dir`` keyed by the dataset fingerprint (or the NPZ's URL
and size), the split and count, and the extractor's weights.
"""

import dataclasses
import hashlib
import json
import math
import posixpath
from dataclasses import dataclass, field

import fsspec
import numpy as np
import pyarrow.parquet as pq
import ray
import torch

from components import metrics
from components.config import EvaluateConfig, to_dict
from components.config.validation import check_evaluate
from components.features import (
    INCEPTION_ARITHMETIC,
    INCEPTION_RESIZE,
    INCEPTION_SHA1,
    EvaluatorFeatures,
    InceptionFeatures,
    file_digest,
)
from components.uncertainty import subsample
from pipelines.infra.console import progress
from pipelines.infra.dataset import decode_images
from pipelines.infra.model_refs import resolve
from pipelines.infra.resources import actor_plan
from pipelines.infra.services import connect_ray
from pipelines.infra.storage import cache_home, npz_bytes, read_npz, write_bytes_atomic
from pipelines.stages import comparisons
from pipelines.stages.champion import champion_cell
from pipelines.stages.context import Stage, StageContext
from pipelines.stages.evaluate_inputs import EvaluationError, Source, discover_samples, reference_source
from pipelines.stages.report import log_evaluation, log_summary
from pipelines.stages.upsample_outputs import cascade_pairs, log_cascade_evaluation, log_cascade_summary

SCORE_SPLIT = 5000  # the reference evaluator scores in splits of 5000 samples


@dataclass
class EvaluateJob:
    """An evaluation: the evaluate section of the config (features, reference size, FID method, ...) plus its inputs,
    outputs and tracking."""

    samples: str  # folder written by `adm sample`, or one samples NPZ
    reference: str  # ingested dataset URL, or a reference-batch NPZ
    config: EvaluateConfig = field(default_factory=EvaluateConfig)
    evaluator: str | None = None  # evaluator network: checkpoint folder, runs:/RUN_ID or models:/...
    actors: int | None = None
    cache_dir: str | None = None  # default: $ADM_CACHE_DIR or ~/.cache/adm-pipeline
    tracking_uri: str | None = None
    experiment: str = "adm"
    parent_run_id: str | None = None
    cell_run_ids: dict = field(default_factory=dict)  # cell key -> an existing run to log that cell's metrics into


@dataclass
class EvaluationResult:
    rows: list  # one dict per cell: its coordinates and compute (cell.json), then its metrics; by sampler and scale
    run_ids: dict = field(default_factory=dict)  # cell key -> run id
    parent_run_id: str | None = None
    cells: dict = field(default_factory=dict)  # cell key -> its ResampledCell (the replicates of its metrics)
    comparisons: dict | None = None  # what the grid resolves (comparisons.compare); None without intervals


def extractor_names(features: str) -> tuple:
    return ("inception", "evaluator") if features == "both" else (features,)


def check_inputs(job: EvaluateJob, samples: dict, reference) -> None:
    check_evaluate(job.config)
    if "evaluator" in extractor_names(job.config.features) and not job.evaluator:
        raise EvaluationError(f"--features {job.config.features} needs --evaluator CHECKPOINT (an evaluator network "
                              "from `adm train evaluator`), or use --features inception")
    for key, source in samples.items():
        if source.total < metrics.K_NEAREST + 1:
            raise EvaluationError(f"samples {key}: {source.total} images, but precision/recall need at "
                                  f"least {metrics.K_NEAREST + 1}")
        if isinstance(reference, Source) and source.shape != reference.shape:
            raise EvaluationError(f"the samples of {key} are {source.shape} (HWC) but the reference "
                                  f"{job.reference} is {reference.shape}; evaluate against a reference at the same "
                                  "resolution and channels")
    if isinstance(reference, Source) and reference.total < metrics.K_NEAREST + 1:
        raise EvaluationError(f"reference {job.reference}: {reference.total} images; need at least "
                              f"{metrics.K_NEAREST + 1}")
    if isinstance(reference, dict) and job.config.features != "inception":
        raise EvaluationError(f"reference {job.reference} holds only Inception statistics (no arr_0 images); use "
                              "--features inception with it")


def resolve_evaluator(job: EvaluateJob, workdir=None):
    return resolve(job.evaluator, "evaluator", tracking_uri=job.tracking_uri, workdir=workdir)


# --- the Ray Data actors ------------------------------------------------------------------------------------------
def work_items(sources, batch_size: int) -> list[dict]:
    items = []
    for source in sources:
        offset = 0
        for url, count in zip(source.urls, source.counts):
            for start in range(0, count, batch_size):
                items.append({"key": source.key, "kind": source.kind, "url": url, "offset": offset,
                              "start": start, "stop": min(start + batch_size, count), "channels": source.shape[-1]})
            offset += count
    return items


class FeatureWorker:
    """Ray Data actor: loads the extractors once, then featurizes slice after slice."""

    def __init__(self, names: tuple, job: EvaluateJob, threads: int = 1):
        torch.set_num_threads(max(1, threads))
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.extractors = {}
        if "inception" in names:
            self.extractors["inception"] = InceptionFeatures(device=device,
                                                             precision=job.config.inception_precision)
        if "evaluator" in names:
            ref = resolve_evaluator(job)
            cfg = ref.config
            self.extractors["evaluator"] = EvaluatorFeatures(ref.build(), cfg.image_size, cfg.in_channels, device)
        self._file = (None, None)

    def images(self, item: dict) -> np.ndarray:
        if item["kind"] == "npz":
            if self._file[0] != item["url"]:
                self._file = (item["url"], read_npz(item["url"])["arr_0"])
            return self._file[1][item["start"]:item["stop"]]

        with fsspec.open(item["url"], "rb") as f:
            table = pq.read_table(f, columns=["image"]).slice(item["start"], item["stop"] - item["start"])
        return decode_images(table.column("image").to_pylist(), int(item["channels"]))

    def __call__(self, batch: dict) -> dict:
        item = {k: (v[0].item() if hasattr(v[0], "item") else v[0]) for k, v in batch.items()}
        images = self.images(item)
        out = {"key": np.array([item["key"]] * len(images)),
               "index": np.arange(item["start"], item["stop"]) + item["offset"]}
        for name, extractor in self.extractors.items():
            for part, values in extractor(images).items():
                out[f"{name}.{part}"] = values
        return out


def compute_features(job: EvaluateJob, names: tuple, sources: list, log=print) -> dict:
    """{source key: {"<extractor>.<part>": [N, D] array in source order}}."""

    items = work_items(sources, job.config.batch_size)
    if not items:
        return {}
    connect_ray()
    n, resources = actor_plan(job.actors, len(items))
    total = sum(s.total for s in sources)
    log(f"featurizing {total} images with {'+'.join(names)} on {n} actor(s)")
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(FeatureWorker, fn_constructor_args=(names, job, round(resources["num_cpus"])),
                        batch_size=1, compute=ray.data.ActorPoolStrategy(size=n), batch_format="numpy",
                        **resources)
    batches = []
    done = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        batches.append(batch)
        done += len(batch["key"])
        progress(log, "[evaluate] featurized images", done, total)
    merged = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    keys, index = merged.pop("key").astype(str), merged.pop("index")
    out = {}
    for key in np.unique(keys):
        rows = np.flatnonzero(keys == key)
        rows = rows[np.argsort(index[rows], kind="stable")]
        out[str(key)] = {k: v[rows] for k, v in merged.items()}
    return out


# --- reference statistics, cached ---------------------------------------------------------------------------------
def reference_stats(features: dict) -> dict:
    """{"<extractor>.<part>": features} -> what the metrics need of the reference, per extractor."""
    out = {}
    for name, values in features.items():
        extractor, part = name.split(".")
        if part == "pool":
            mu, sigma = metrics.feature_statistics(values)
            out[f"{extractor}.features"], out[f"{extractor}.mu"], out[f"{extractor}.sigma"] = values, mu, sigma
        elif part == "spatial":
            out[f"{extractor}.mu_s"], out[f"{extractor}.sigma_s"] = metrics.feature_statistics(values)
    return out


def cache_dir(job: EvaluateJob) -> str:
    return job.cache_dir or str(cache_home())


def cache_url(job: EvaluateJob, reference: Source, name: str, version: str) -> str:
    key = json.dumps({"reference": reference.identity, "extractor": name, "version": version}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    return posixpath.join(cache_dir(job), "reference", f"{name}-{digest}.npz")


def extractor_versions(job: EvaluateJob, names: tuple) -> dict:
    # weights, input convention and arithmetic: reference features made another way are never reused
    arithmetic = INCEPTION_ARITHMETIC[job.config.inception_precision]
    versions = {"inception": f"{INCEPTION_SHA1}:{INCEPTION_RESIZE}:{arithmetic}"}
    if "evaluator" in names:
        versions["evaluator"] = file_digest(resolve_evaluator(job).weights)
    return {n: versions[n] for n in names}


def load_cached(url: str) -> dict | None:
    fs, path = fsspec.core.url_to_fs(url)
    return read_npz(url) if fs.exists(path) else None


# --- metrics per cell -------------------------------------------------------------------------------------------------
def score(feats: dict, ref: dict, labels: np.ndarray | None, fid_method: str = "eigh", roots: dict | None = None
          ) -> dict:
    """Metrics of one cell's samples against the reference statistics. With "eigh", the reference covariances'
    roots are computed once into `roots` (pass the same dict for every cell) instead of once per cell."""
    row = {}
    roots = {} if roots is None else roots

    def fid(values, mu, sigma_key):
        sigma = ref[sigma_key]
        if fid_method != "eigh":
            return metrics.frechet_distance(*metrics.feature_statistics(values), mu, sigma, method=fid_method)
        if sigma_key not in roots:
            roots[sigma_key] = metrics.covariance_root(sigma)
        return metrics.frechet_distance_to_reference(values, mu, sigma, roots[sigma_key])

    if "inception.pool" in feats:
        row["fid"] = fid(feats["inception.pool"], ref["inception.mu"], "inception.sigma")
        row["sfid"] = fid(feats["inception.spatial"], ref["inception.mu_s"], "inception.sigma_s")
        if "inception.features" in ref:
            row["precision"], row["recall"] = metrics.precision_recall(ref["inception.features"],
                                                                       feats["inception.pool"])
            row.update(comparisons.kid_point("kid", feats["inception.pool"], ref["inception.features"]))
    if "evaluator.pool" in feats:
        pool, probs = feats["evaluator.pool"], feats["evaluator.probs"]
        row["evaluator_fid"] = fid(pool, ref["evaluator.mu"], "evaluator.sigma")
        row["evaluator_precision"], row["evaluator_recall"] = metrics.precision_recall(ref["evaluator.features"], pool)
        row.update(comparisons.kid_point("evaluator_kid", pool, ref["evaluator.features"]))
        row["score"] = metrics.inception_score(probs, splits=max(1, len(probs) // SCORE_SPLIT))
        if labels is not None:
            row["accuracy"] = metrics.accuracy(probs, labels)
    return row


def run_evaluation(job: EvaluateJob, log=print) -> EvaluationResult:
    """Check every input, featurize what the cache lacks, score each cell with its intervals, and compare cells."""
    samples = discover_samples(job.samples)
    ref_stats, features = featurize(job, samples, log)
    return score_cells(job, samples, ref_stats, features)


def featurize(job: EvaluateJob, samples: dict, log=print) -> tuple[dict, dict]:
    """(reference statistics, {source key: features}) of `samples` ({key: Source}) and the job's reference, the
    reference's from the cache where it has them."""
    reference = reference_source(job.reference, job.config.reference_split, job.config.num_reference)
    check_inputs(job, samples, reference)
    names = extractor_names(job.config.features)
    if "evaluator" in names:
        ref_net = resolve_evaluator(job).config
        first = next(iter(samples.values())).shape
        if first != (ref_net.image_size, ref_net.image_size, ref_net.in_channels):
            raise EvaluationError(f"samples are {first} (HWC) but the evaluator {job.evaluator} takes "
                                  f"{ref_net.image_size}x{ref_net.image_size}x{ref_net.in_channels}")
    if isinstance(reference, dict):
        ref_stats, cached, urls = {f"inception.{k}": v for k, v in reference.items()}, {"inception"}, {}
    else:
        versions = extractor_versions(job, names)
        urls = {n: cache_url(job, reference, n, versions[n]) for n in names}
        ref_stats, cached = {}, set()
        for n in names:
            found = load_cached(urls[n])
            if found is not None:
                ref_stats.update(found)
                cached.add(n)
                log(f"reference {n} statistics from cache {urls[n]}")
    sources = list(samples.values()) + ([reference] if set(names) - cached else [])
    features = compute_features(job, names, sources, log)
    if set(names) - cached:
        fresh = reference_stats(features["reference"])
        for n in set(names) - cached:
            part = {k: v for k, v in fresh.items() if k.startswith(f"{n}.")}
            write_bytes_atomic(urls[n], npz_bytes(**part))
            ref_stats.update(part)
    return ref_stats, features


def score_cells(job: EvaluateJob, samples: dict, ref_stats: dict, features: dict) -> EvaluationResult:
    """A row per cell: its coordinates, metrics and (evaluate.bootstrap > 0) their intervals at evaluate.ci_level;
    and what the grid resolves (comparisons.compare). All cells are resampled on the same subsets: paired."""
    cfg, rows, roots, cells = job.config, [], {}, {}
    refs, subs = None, {}
    for source in samples.values():
        row = {"guidance_scale": math.nan, **source.cell, "num_samples": source.total}
        row.update(score(features[source.key], ref_stats, source.labels, cfg.fid_method, roots))
        if cfg.bootstrap:
            refs = refs or comparisons.references(ref_stats, roots)
            sub = subs.setdefault(source.total, subsample(source.total, cfg.bootstrap, seed=0))
            cells[row["cell"]] = cell = comparisons.resample(features[source.key], refs, source.labels, sub)
            row.update(comparisons.interval_columns(cell, cfg.ci_level))
            row.update(comparisons.kid_std(row, cell, cfg.ci_level))
        rows.append(row)
    compared = comparisons.compare(rows, cells, cfg.champion_metric, cfg.ci_level) if cells else None
    return EvaluationResult(rows, cells=cells, comparisons=compared)


# --- as a stage of `adm run` -------------------------------------------------------------------------------------
def cache_inputs(ctx: StageContext, inputs: dict) -> dict:
    key = {"data": inputs["ingest"]["fingerprint"], "samples": inputs["sample"],
           "evaluate": to_dict(ctx.preset.evaluate)}
    if "upsample" in inputs:  # a cascade: its cells at the large size, against the large images
        key["cascade"] = {"upsample": inputs["upsample"], "large_data": inputs["ingest"]["large_fingerprint"]}
    return key


def run(ctx: StageContext, inputs: dict) -> dict:
    """Every cell of the sampling stage against the ingested dataset, with the trained evaluator. Each cell's metrics
    go to its sampling run when that run is this pipeline run's (sampled now or before a resume), else to a new run of
    this stage (a sample stage reused from another pipeline run)."""
    sampled = inputs["sample"]
    cell_runs = {} if "sample" in ctx.reused else sampled["cell_runs"]
    job = EvaluateJob(samples=sampled["out"], reference=inputs["ingest"]["data_url"], config=ctx.preset.evaluate,
                      evaluator=f"runs:/{inputs['train']['evaluator']['run_id']}", cache_dir=ctx.path("cache"),
                      tracking_uri=ctx.tracker.uri, experiment=ctx.experiment, parent_run_id=ctx.run_id,
                      cell_run_ids=cell_runs)
    result = log_evaluation(job, run_evaluation(job, log=ctx.log), log=ctx.log)
    if "upsample" in inputs:
        cascade_rows, cascade_pairs = evaluate_cascade(ctx, inputs)
        return {"rows": result.rows, "comparisons": result.comparisons, "cascade_rows": cascade_rows,
                "cascade_pairs": cascade_pairs}
    return {"rows": result.rows, "comparisons": result.comparisons}


def evaluate_cascade(ctx: StageContext, inputs: dict) -> tuple[list, list]:
    """A cascade's cells (base + U, and the base samples brought to the large size) against the dataset's large
    images, on Inception features (the evaluator network sees the base size only), and the paired differences the
    paper's claims rest on; the metrics go to the upsample stage's cell runs when those are this pipeline run's."""
    cascade = inputs["upsample"]
    job = EvaluateJob(samples=cascade["out"], reference=inputs["ingest"]["large_url"],
                      config=dataclasses.replace(ctx.preset.evaluate, features="inception"),
                      cache_dir=ctx.path("cache"), tracking_uri=ctx.tracker.uri, experiment=ctx.experiment,
                      parent_run_id=ctx.run_id, cell_run_ids={} if "upsample" in ctx.reused else cascade["cell_runs"])
    result = log_cascade_evaluation(job, run_evaluation(job, log=ctx.log), log=ctx.log)
    return result.rows, cascade_pairs(result.rows, result.cells, job.config.ci_level)


def publish(ctx: StageContext, outputs: dict) -> None:
    """The trade-off on the pipeline run: the table, the plots, what the grid resolves, and each metric as a curve
    along the scales."""
    log_summary(ctx.tracker, ctx.pipeline_run_id, outputs["rows"], champion_cell(ctx.preset, outputs["rows"]),
                outputs.get("comparisons"))
    if outputs.get("cascade_rows"):
        log_cascade_summary(ctx.tracker, ctx.pipeline_run_id, outputs["rows"], outputs["cascade_rows"],
                            outputs.get("cascade_pairs", []))


STAGE = Stage("evaluate", run, cache_inputs, publish=publish)
