"""Ingest's sources: Fashion-MNIST (the IDX files), an image folder (one sub-folder per class, any fsspec URL) and
synthetic shapes, read as batches of uint8 images at the target resolution; the `--data` syntax that names them; the
held-out split carved from train by content; and the fingerprint a source's content has.
"""

import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import fsspec
import numpy as np

from components.images import (
    FASHION_MNIST_CLASSES,
    DataError,
    Fingerprint,
    decode_fashion_mnist,
    fit_to,
    load_image_file,
    make_shapes,
    validation_mask,
)

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
    # sizes to also write the dataset at, area-downsampled from it (<dest>/area-<size>/: a cascade's base data)
    downsample_to: tuple[int, ...] = ()


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


# --- the --data syntax: one place ---------------------------------------------------------------------------------
def parse_spec(spec: str) -> tuple[str, str]:
    """(kind, location) of a source spec (`--data`, data.source): "fashion-mnist[:DIR_OR_URL]" -> ("fashion-mnist",
    the IDX files' folder), "shapes" -> ("shapes", ""), anything else -> ("folder", the image folder's path or URL)."""
    if spec == "fashion-mnist" or spec.startswith("fashion-mnist:"):
        return "fashion-mnist", spec.partition(":")[2] or FASHION_MNIST_DIR
    if spec == "shapes":
        return "shapes", ""
    return "folder", spec


def local_folder(spec: str) -> str | None:
    """The folder on this machine a spec reads (an image folder, fashion-mnist:DIR), or None for the built-in
    sources and remote URLs (those are probed by URL)."""
    kind, location = parse_spec(spec)
    if kind == "shapes" or spec == "fashion-mnist" or ("://" in location and not location.startswith("file://")):
        return None
    return location.removeprefix("file://")


def open_source(spec: str, opts: IngestOptions) -> Source:
    """The source a spec names (parse_spec), read with `opts`."""
    kind, location = parse_spec(spec)
    if kind == "fashion-mnist":
        return fashion_mnist_source(location, opts)
    if kind == "shapes":
        return shapes_source(opts)
    return image_folder_source(location, opts)


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
