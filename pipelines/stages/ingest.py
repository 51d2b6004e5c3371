"""Ingest: a source (Fashion-MNIST, an image folder, synthetic shapes) -> Parquet shards + manifest on any fsspec URL.

Layout at DEST:  manifest.json, <split>/part-00000.parquet, ... with columns image (PNG bytes), label, class_name.
Shards are written under a temporary sibling folder and moved into place; manifest.json is written last, and every
reader requires it, so an interrupted ingest never leaves a dataset that later stages would accept.

A cascade's base model trains on the same images at its own smaller size: ``downsample_to`` writes the dataset's area
downsample (components.images.downsample_area_uint8, the upsampler's training-pair filter) as a dataset of its own at
DEST/area-<size>/, with its own fingerprint and ``derived_from`` in its manifest (infra/dataset.py dataset_at finds
either from the other).
"""

import json
import math
import posixpath
import re
import time
import uuid

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from components.config import Preset, to_dict
from components.images import (
    DataError,
    Fingerprint,
    check_labels,
    downsample_area_uint8,
    encode_png,
)
from pipelines.infra.dataset import (
    FORMAT_VERSION,
    MANIFEST,
    decode_images,
    derived_url,
    load_manifest,
    read_manifest,
)
from pipelines.infra.services import check_url
from pipelines.stages.context import Stage, StageContext
from pipelines.stages.sources import (
    IMAGE_EXTENSIONS,
    VALIDATION,
    Batch,
    IngestOptions,
    Source,
    open_source,
    split_batches,
)


# --- writing ----------------------------------------------------------------------------------------------------------
def _rows_per_shard(total: int, opts: IngestOptions) -> int:
    if opts.rows_per_shard:
        return opts.rows_per_shard
    return max(64, min(10_000, math.ceil(total / 8)))  # ~8+ shards so Ray Data can read in parallel


def _write_shard(fs, path: str, batch: Batch, class_names: list[str]) -> None:
    table = pa.table({
        "image": pa.array([encode_png(im) for im in batch.images], type=pa.binary()),
        "label": pa.array(batch.labels, type=pa.int64()),
        "class_name": pa.array([class_names[i] for i in batch.labels], type=pa.string()),
    })
    with fs.open(path, "wb") as f:
        pq.write_table(table, f)


def _split_rows(batch: Batch, size: int):
    for start in range(0, len(batch.labels), size):
        yield Batch(batch.split, batch.images[start:start + size], batch.labels[start:start + size])


def check_options(opts: IngestOptions) -> None:
    """Sizes in range before anything is read or written; None keeps the source's own (resolution, shards)."""
    problems = []
    for name, value, optional in (("resolution", opts.resolution, True), ("rows_per_shard", opts.rows_per_shard, True),
                                  ("num_images", opts.num_images, False), ("workers", opts.workers, False),
                                  ("limit", opts.limit or None, True),
                                  *(("downsample_to", size, False) for size in opts.downsample_to)):
        if not (value is None and optional) and not (isinstance(value, int) and value >= 1):
            problems.append(f"--{name.replace('_', '-')} {value} must be a whole number >= 1"
                            + (" (or left out)" if optional else ""))
    if not (isinstance(opts.validation_fraction, (int, float)) and 0 <= opts.validation_fraction < 1):
        problems.append(f"--validation-fraction {opts.validation_fraction} must be in [0, 1) (e.g. 0.05; 0: none)")
    if problems:
        raise DataError("; ".join(problems))


def ingest(spec: str, dest: str, opts: IngestOptions | None = None, log=print) -> dict:
    """Write the dataset at `spec` to `dest`; returns its manifest. Idempotent for the same content."""
    opts = opts or IngestOptions()
    check_options(opts)
    check_url(dest, "destination")
    started = time.perf_counter()
    source = open_source(spec, opts)
    fs, root = fsspec.core.url_to_fs(dest)
    existing = read_manifest(dest)
    if existing is None and fs.exists(root) and fs.ls(root):
        raise DataError(f"destination {dest} exists and holds files but no {MANIFEST}; choose an empty or new URL")
    tmp = f"{root.rstrip('/')}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        fs.makedirs(tmp, exist_ok=True)
    except OSError as e:  # named after the user's destination: the temporary name means nothing to them
        raise DataError(f"cannot write to the destination {dest} ({e.strerror or type(e).__name__}); choose a "
                        "folder or URL you can write") from None
    try:
        manifest = _write_all(fs, tmp, source, opts)
        if existing is not None:
            if existing["fingerprint"] != manifest["fingerprint"]:
                raise DataError(f"destination {dest} already holds a different dataset (fingerprint "
                                f"{existing['fingerprint'][:12]}, this one {manifest['fingerprint'][:12]}); "
                                "choose another destination or delete the old one")
            log(f"{dest} already holds this dataset (fingerprint {manifest['fingerprint'][:12]}); nothing to do")
            _derive_all(dest, opts, log)
            return existing
        _move_into_place(fs, tmp, root, manifest)
    finally:
        if fs.exists(tmp):
            fs.rm(tmp, recursive=True)
    if source.ignored:
        log(f"note: {len(source.ignored)} file(s) in the class folders are not images and were left out, e.g. "
            f"{source.ignored[0]} (listed under 'ignored' in {MANIFEST})")
    log(f"ingested {sum(manifest['counts'].values())} images into {dest} in {time.perf_counter() - started:.1f}s "
        f"(fingerprint {manifest['fingerprint'][:12]})")
    _derive_all(dest, opts, log)
    return manifest


def _write_all(fs, tmp: str, source: Source, opts: IngestOptions) -> dict:
    counts = {s: min(n, opts.limit) if opts.limit else n for s, n in source.counts.items()}
    size = _rows_per_shard(sum(counts.values()), opts)
    fingerprint, shards = Fingerprint(source.class_names), {}
    per_class = {}
    for batch in split_batches(source, opts):
        check_labels(batch.labels, len(source.class_names), f"{source.description} {batch.split}")
        fingerprint.update(batch.split, batch.images, batch.labels)
        counts = per_class.setdefault(batch.split, np.zeros(len(source.class_names), dtype=np.int64))
        counts += np.bincount(batch.labels, minlength=len(source.class_names))
        for part in _split_rows(batch, size):
            rel = f"{part.split}/part-{len(shards.setdefault(part.split, [])):05d}.parquet"
            fs.makedirs(posixpath.join(tmp, part.split), exist_ok=True)
            _write_shard(fs, posixpath.join(tmp, rel), part, source.class_names)
            shards[part.split].append(rel)
    if not shards:
        raise DataError(f"{source.description}: no images to ingest")
    return {
        "format_version": FORMAT_VERSION,
        "source": source.description,
        "limit": opts.limit,  # 0: every image of the source
        "resolution": source.resolution,
        "channels": source.channels,
        "class_names": source.class_names,
        "num_classes": len(source.class_names),
        "counts": {s: int(c.sum()) for s, c in per_class.items()},
        "counts_per_class": {s: {n: int(k) for n, k in zip(source.class_names, c)} for s, c in per_class.items()},
        "shards": shards,
        "fingerprint": fingerprint.hexdigest(),
        "fingerprint_of": "sha256 over class names, then per split in order uint8 HWC pixels (with shape) and labels",
        "validation": _validation_note(opts),
        "skipped": {"count": len(source.skipped), "files": source.skipped},
        "ignored": {"count": len(source.ignored), "files": source.ignored,
                    "why": f"not an image file name ({', '.join(sorted(IMAGE_EXTENSIONS))})"},
        "preprocessing": "short side: BOX halvings while >= 2x, BICUBIC to size, centre crop; small sources: "
                         f"{opts.resize}",
    }


def _derive_all(dest: str, opts: IngestOptions, log) -> None:
    for size in opts.downsample_to:
        derived = derive_downsample(dest, size)
        log(f"{derived_url(dest, size)}: the {size}px area downsample (fingerprint {derived['fingerprint'][:12]})")


def derive_downsample(url: str, size: int) -> dict:
    """The dataset at `url` area-downsampled to `size` px into derived_url(url, size), shard by shard (the same split
    and shard layout, labels and class names), with its own fingerprint and `derived_from`; its manifest. Kept as it
    is when it is there already (it depends on the large dataset's content only)."""
    target = derived_url(url, size)
    found = read_manifest(target)
    if found is not None:
        return found
    manifest = load_manifest(url)
    if manifest["resolution"] % size or size >= manifest["resolution"]:
        raise DataError(f"cannot area-downsample {manifest['resolution']}px images to {size}px: the size must be "
                        f"below theirs and divide it (e.g. {manifest['resolution'] // 2})")
    fs, root = fsspec.core.url_to_fs(target)
    tmp = f"{root.rstrip('/')}.tmp-{uuid.uuid4().hex[:8]}"
    fingerprint = Fingerprint(manifest["class_names"])
    try:
        for split, files in manifest["shards"].items():
            fs.makedirs(posixpath.join(tmp, split), exist_ok=True)
            for rel in files:
                with fsspec.open(posixpath.join(url.rstrip("/"), rel), "rb") as f:
                    table = pq.read_table(f, columns=["image", "label"])
                images = downsample_area_uint8(decode_images(table.column("image").to_pylist(), manifest["channels"]),
                                               size)
                labels = table.column("label").to_numpy()
                fingerprint.update(split, images, labels)
                _write_shard(fs, posixpath.join(tmp, rel), Batch(split, images, labels), manifest["class_names"])
        derived = {**manifest, "resolution": size, "fingerprint": fingerprint.hexdigest(),
                   "fingerprint_of": "sha256 over class names, then per shard in order uint8 HWC pixels (with shape) "
                                     "and labels",
                   "derived_from": {"resolution": manifest["resolution"], "fingerprint": manifest["fingerprint"],
                                    "filter": "area (mean of each block), rounded to uint8"},
                   "preprocessing": f"{manifest['preprocessing']}; then area downsample to {size}px"}
        _move_into_place(fs, tmp, root, derived)
    finally:
        if fs.exists(tmp):
            fs.rm(tmp, recursive=True)
    return derived


def _validation_note(opts: IngestOptions) -> dict:
    if VALIDATION in opts.splits or opts.validation_fraction <= 0:
        return {"carved_from_train": False}
    return {"carved_from_train": True, "fraction": opts.validation_fraction,
            "how": "an image is held out when blake2b-64 of its pixels and label, as a fraction of 2**64, is below "
                   "the fraction (components.images.validation_mask)"}


def _move_into_place(fs, tmp: str, root: str, manifest: dict) -> None:
    text = json.dumps(manifest, indent=2)
    with fs.open(posixpath.join(tmp, MANIFEST), "w") as f:
        f.write(text)
    if not fs.exists(root):
        fs.mv(tmp, root, recursive=True)  # a rename on local disks: the dataset appears whole
        return
    for files in manifest["shards"].values():  # an existing empty folder: shards first, manifest last
        for rel in files:
            fs.makedirs(posixpath.dirname(posixpath.join(root, rel)), exist_ok=True)
            fs.mv(posixpath.join(tmp, rel), posixpath.join(root, rel))
    fs.mv(posixpath.join(tmp, MANIFEST), posixpath.join(root, MANIFEST))


# --- as a stage of `adm run` -------------------------------------------------------------------------------------
def ingest_options(preset: Preset) -> IngestOptions:
    """The ingest settings of a preset's data section (resolution 0: the UNet's image size). A cascade ingests at the
    upsampler's (large) size and writes the base networks' size beside it, area-downsampled."""
    data, classes = preset.data, preset.unet.num_classes or preset.classifier.num_classes
    large = preset.upsampler.image_size if preset.upsampler is not None else preset.unet.image_size
    return IngestOptions(resolution=data.resolution or large, resize=data.resize,
                         num_images=data.num_images, num_classes=classes, splits=tuple(data.splits),
                         validation_fraction=data.validation_fraction, limit=data.limit,
                         downsample_to=(preset.unet.image_size,) if preset.upsampler is not None else ())


def cache_inputs(ctx: StageContext, inputs: dict) -> dict:
    """The source, the ingest settings and, for retraining, the source's content fingerprint (new content, new key)."""
    options = to_dict(ingest_options(ctx.preset))
    if not options["downsample_to"]:  # as before the cascade: the same key (and data folder) for the same options
        del options["downsample_to"]
    key = {"source": ctx.source, "options": options}
    return {**key, "content": ctx.source_fingerprint} if ctx.source_fingerprint else key


def dataset_exists(outputs: dict) -> bool:
    return read_manifest(outputs["data_url"]) is not None


def run(ctx: StageContext, inputs: dict) -> dict:
    """Ingest the source into <work dir>/data/<source slug>-<key> unless a finished dataset is already there (an
    earlier or a concurrent run's); record the dataset as an input of the stage run and of the pipeline run."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", ctx.source).strip("-")[:40]
    url = ctx.path("data", f"{slug}-{ctx.key[:10]}")
    if read_manifest(url) is None:
        try:
            ingest(ctx.source, url, ingest_options(ctx.preset), log=ctx.log)
        except Exception:
            if read_manifest(url) is None:  # not a concurrent run's ingest that finished first
                raise
    manifest = load_manifest(url)
    ctx.tracker.log_params(ctx.run_id, {"source": ctx.source, "data_url": url})
    for target in (ctx.run_id, ctx.pipeline_run_id):
        ctx.tracker.log_dataset(target, url, slug, manifest["fingerprint"])
    if ctx.preset.upsampler is None:
        return {"data_url": url, "fingerprint": manifest["fingerprint"]}
    # a cascade: the base networks' data (data_url, what the stages after read as before) is the area downsample;
    # the upsampler's and the cascade's evaluation read the large images (large_url)
    base = derive_downsample(url, ctx.preset.unet.image_size)
    return {"data_url": derived_url(url, ctx.preset.unet.image_size), "fingerprint": base["fingerprint"],
            "large_url": url, "large_fingerprint": manifest["fingerprint"]}


STAGE = Stage("ingest", run, cache_inputs, still_valid=dataset_exists)
