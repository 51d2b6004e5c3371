"""Ingest: a source (Fashion-MNIST, an image folder, synthetic shapes) -> Parquet shards + manifest on any fsspec URL.

Layout at DEST:  manifest.json, <split>/part-00000.parquet, ... with columns image (PNG bytes), label, class_name.
Shards are written under a temporary sibling folder and moved into place; manifest.json is written last, and every
reader requires it, so an interrupted ingest never leaves a dataset that later stages would accept.
"""

import json
import math
import posixpath
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from components.config import Preset, to_dict
from components.data import (
    FASHION_MNIST_CLASSES,
    DataError,
    Fingerprint,
    check_labels,
    decode_fashion_mnist,
    encode_png,
    fit_to,
    load_image_file,
    make_shapes,
    validation_mask,
)
from pipelines.infra.dataset import FORMAT_VERSION, MANIFEST, load_manifest, read_manifest
from pipelines.infra.services import check_url
from pipelines.infra.tracking import Tracker

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


@dataclass
class IngestOptions:
    resolution: int | None = None  # None: the source's native size (Fashion-MNIST 28, shapes 32)
    splits: tuple[str, ...] = ("train",)
    skip_bad: bool = False
    resize: str = "pad"  # small sources (Fashion-MNIST): "pad" or "resize"
    num_images: int = 1024  # shapes only, per split
    num_classes: int = 4  # shapes only
    seed: int = 0  # shapes only
    rows_per_shard: int | None = None  # None: enough shards for Ray Data parallelism
    workers: int = 2
    # share of the train split held out as `validation` (by content hash) when the source has no validation split
    validation_fraction: float = 0.0
    limit: int = 0  # at most this many images of each split of the source, the first in its order (0: all)


@dataclass
class Batch:
    """One chunk of one split, already at the target resolution."""

    split: str
    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int64 [N]


@dataclass
class Source:
    description: str
    class_names: list[str]
    channels: int
    resolution: int
    counts: dict[str, int]  # split -> images (before skipping bad files)
    batches: object  # callable () -> iterator of Batch
    skipped: list[str] = field(default_factory=list)  # image files that failed to decode (--skip-bad)
    ignored: list[str] = field(default_factory=list)  # files in class folders without an image extension


# --- sources ----------------------------------------------------------------------------------------------------------
def fashion_mnist_source(location: str, opts: IngestOptions) -> Source:
    fs, root = fsspec.core.url_to_fs(location)

    def read(name):
        path = posixpath.join(root, name)
        if not fs.exists(path):
            raise DataError(f"Fashion-MNIST file {path} is missing; install the Debian package dataset-fashion-mnist "
                            "or pass fashion-mnist:DIR with the four IDX .gz files")
        return fs.cat_file(path)

    unknown = set(opts.splits) - {"train", "test"}
    if unknown:
        raise DataError(f"Fashion-MNIST has splits train and test, not {sorted(unknown)}; use --split train,test")
    arrays = decode_fashion_mnist(read)
    resolution = opts.resolution or 28

    def batches():
        for split in opts.splits:
            images, labels = arrays[split]
            yield Batch(split, fit_to(images, resolution, opts.resize), labels)

    return Source(f"fashion-mnist:{location}", list(FASHION_MNIST_CLASSES), 1, resolution,
                  {s: len(arrays[s][1]) for s in opts.splits}, batches)


def shapes_source(opts: IngestOptions) -> Source:
    resolution = opts.resolution or 32
    names = make_shapes(0, resolution, opts.num_classes, opts.seed)[2]  # validates num_classes

    def batches():
        for i, split in enumerate(opts.splits):
            images, labels, _ = make_shapes(opts.num_images, resolution, opts.num_classes, opts.seed + 7919 * i)
            yield Batch(split, images, labels)

    return Source(f"shapes:n={opts.num_images},classes={opts.num_classes},seed={opts.seed}", names, 3, resolution,
                  {s: opts.num_images for s in opts.splits}, batches)


def _list_class_folders(fs, root: str, where: str) -> tuple[dict[str, list[str]], list[str]]:
    """Image files per class folder, and the other files found there (notes, metadata), which are not images."""
    if not fs.isdir(root):
        raise DataError(f"image folder {where} does not exist or is not a folder")
    entries = sorted(fs.ls(root, detail=True), key=lambda e: e["name"])
    classes = {posixpath.basename(e["name"].rstrip("/")): e["name"] for e in entries if e["type"] == "directory"}
    if len(classes) < 2:
        raise DataError(f"image folder {where} has {len(classes)} class folder(s); the ImageNet layout needs one "
                        "sub-folder per class and at least two classes")
    files, ignored = {}, []
    for name, path in classes.items():
        if not name.isprintable():  # e.g. bytes that are not UTF-8, which Python holds as unprintable surrogates
            raise DataError(f"class folder {name!r} in {where}: its name is not printable UTF-8, and class names go "
                            "into the dataset and the MLflow runs as text; rename the folder")
        found = sorted(p for p in fs.find(path) if not posixpath.basename(p).startswith("."))
        files[name] = [p for p in found if posixpath.splitext(p)[1].lower() in IMAGE_EXTENSIONS]
        ignored += [p for p in found if p not in files[name]]
        if not found:
            raise DataError(f"class folder {path} is empty; remove it or add images")
        if not files[name]:
            raise DataError(f"class folder {path} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
                            "remove it or add images")
    return files, ignored


def image_folder_source(location: str, opts: IngestOptions) -> Source:
    fs, root = fsspec.core.url_to_fs(location)
    if not opts.resolution:
        raise DataError("an image folder needs --resolution (e.g. --resolution 64)")
    if len(opts.splits) != 1:
        raise DataError(f"an image folder is ingested as one split; pass one --split name, not {list(opts.splits)}")
    files, ignored = _list_class_folders(fs, root, location)
    class_names = sorted(files)
    items = [(path, label) for label, name in enumerate(class_names) for path in files[name]]
    source = Source(f"folder:{location}", class_names, 3, opts.resolution, {opts.splits[0]: len(items)}, None,
                    ignored=ignored)

    def load(item):
        path, label = item
        try:
            return load_image_file(fs.cat_file(path), path, opts.resolution, 3), label
        except (DataError, OSError) as e:
            if not opts.skip_bad:
                raise DataError(f"{e}; fix or remove the file, or pass --skip-bad to skip it") from None
            source.skipped.append(path)
            return None

    def batches():
        chunk = 2048
        with ThreadPoolExecutor(max(1, opts.workers)) as pool:
            for start in range(0, len(items), chunk):
                loaded = [r for r in pool.map(load, items[start:start + chunk]) if r is not None]
                if loaded:
                    yield Batch(opts.splits[0], np.stack([im for im, _ in loaded]),
                                np.array([lab for _, lab in loaded], dtype=np.int64))

    source.batches = batches
    return source


def open_source(spec: str, opts: IngestOptions) -> Source:
    """"fashion-mnist[:DIR_OR_URL]", "shapes", or an image folder path / fsspec URL."""
    if spec == "fashion-mnist" or spec.startswith("fashion-mnist:"):
        return fashion_mnist_source(spec.partition(":")[2] or FASHION_MNIST_DIR, opts)
    if spec == "shapes":
        return shapes_source(opts)
    return image_folder_source(spec, opts)


VALIDATION = "validation"


def limited(batches, limit: int):
    """The first `limit` images of each split (0: all). Carving the held-out split after the limit keeps a smaller
    dataset's validation images a subset of a larger one's: validation_mask decides by each image alone."""
    seen = {}
    for batch in batches:
        room = limit - seen.get(batch.split, 0) if limit else len(batch.labels)
        if room > 0:
            seen[batch.split] = seen.get(batch.split, 0) + min(room, len(batch.labels))
            yield Batch(batch.split, batch.images[:room], batch.labels[:room])


def split_batches(source: Source, opts: IngestOptions):
    """The source's batches (up to opts.limit per split) with the held-out split carved out of train
    (validation_mask: by content, so the same images every time); a source that has its own validation split keeps
    it. The fingerprint covers both splits."""
    carve = opts.validation_fraction > 0 and VALIDATION not in opts.splits
    for batch in limited(source.batches(), opts.limit):
        if not (carve and batch.split == "train"):
            yield batch
            continue
        held = validation_mask(batch.images, batch.labels, opts.validation_fraction)
        for split, rows in (("train", ~held), (VALIDATION, held)):
            if rows.any():
                yield Batch(split, batch.images[rows], batch.labels[rows])


def source_fingerprint(spec: str, opts: IngestOptions | None = None) -> str:
    """The fingerprint `ingest` would record for this source and options, computed without writing anything."""
    opts = opts or IngestOptions()
    source = open_source(spec, opts)
    fingerprint = Fingerprint(source.class_names)
    for batch in split_batches(source, opts):
        fingerprint.update(batch.split, batch.images, batch.labels)
    return fingerprint.hexdigest()


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
                                  ("limit", opts.limit or None, True)):
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


def _validation_note(opts: IngestOptions) -> dict:
    if VALIDATION in opts.splits or opts.validation_fraction <= 0:
        return {"carved_from_train": False}
    return {"carved_from_train": True, "fraction": opts.validation_fraction,
            "how": "an image is held out when blake2b-64 of its pixels and label, as a fraction of 2**64, is below "
                   "the fraction (components.data.validation_mask)"}


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
    """The ingest settings of a preset's data section (resolution 0: the UNet's image size)."""
    data, classes = preset.data, preset.unet.num_classes or preset.classifier.num_classes
    return IngestOptions(resolution=data.resolution or preset.unet.image_size, resize=data.resize,
                         num_images=data.num_images, num_classes=classes, splits=tuple(data.splits),
                         validation_fraction=data.validation_fraction, limit=data.limit)


def cache_inputs(preset: Preset, source: str, content: str | None = None) -> dict:
    """The source, the ingest settings and, for retraining, the source's content fingerprint (new content, new key)."""
    inputs = {"source": source, "options": to_dict(ingest_options(preset))}
    return {**inputs, "content": content} if content else inputs


def dataset_exists(outputs: dict) -> bool:
    return read_manifest(outputs["data_url"]) is not None


def ingest_stage(tracker: Tracker, run_id: str, pipeline_run_id: str, preset: Preset, source: str, data_root: str,
                 key: str, log=print) -> dict:
    """Ingest `source` into DATA_ROOT/<source slug>-<key> unless a finished dataset is already there (an earlier or a
    concurrent run's); record the dataset as an input of the stage run and of the pipeline run."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", source).strip("-")[:40]
    url = posixpath.join(data_root, f"{slug}-{key[:10]}")
    if read_manifest(url) is None:
        try:
            ingest(source, url, ingest_options(preset), log=log)
        except Exception:
            if read_manifest(url) is None:  # not a concurrent run's ingest that finished first
                raise
    manifest = load_manifest(url)
    tracker.log_params(run_id, {"source": source, "data_url": url})
    for target in (run_id, pipeline_run_id):
        tracker.log_dataset(target, url, slug, manifest["fingerprint"])
    return {"data_url": url, "fingerprint": manifest["fingerprint"]}

