"""The dataset format and its readers: with Ray Data for training, or directly (NumPy) for tests and small jobs.

A dataset is a folder (any fsspec URL) of ``manifest.json`` and ``<split>/part-NNNNN.parquet`` shards with columns
``image`` (PNG bytes), ``label`` and ``class_name``; stages/ingest.py writes it. Both readers decode the PNG column
to uint8 HWC; ``decode_batch`` also scales to float32 NCHW in [-1, 1] for the networks.
"""

import json
import posixpath

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import ray.data
from ray.data.extensions import ArrowTensorArray

from components.images import DataError, class_grid, decode_png, encode_png, to_model_input

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def read_manifest(url: str) -> dict | None:
    """The manifest of the dataset at `url`, or None where there is none (yet)."""
    fs, root = fsspec.core.url_to_fs(url)
    path = posixpath.join(root, MANIFEST)
    if not fs.exists(path):
        return None
    try:
        return json.loads(fs.cat_file(path))
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{posixpath.join(url, MANIFEST)} is damaged ({e}); ingest the dataset again into a new "
                        "folder (adm data ingest SOURCE URL)") from None


def load_manifest(url: str) -> dict:
    manifest = read_manifest(url)
    if manifest is None:
        raise DataError(f"{url} holds no {MANIFEST}: not an ingested dataset (or its ingest did not finish); "
                        "run `adm data ingest SOURCE URL` first")
    return manifest


def derived_url(url: str, size: int) -> str:
    """Where ingest writes a dataset's area downsample to `size` px (a cascade's base data): a dataset of its own,
    nested in the large one's folder, its manifest naming what it was made from."""
    return posixpath.join(url.rstrip("/"), f"area-{int(size)}")


def dataset_at(url: str, size: int) -> str:
    """The dataset at `url`, or the one of its family (the large one and its area downsamples) at `size` px: a
    cascade's base networks read the downsample, its upsampler the large images. DataError naming the fix when there
    is none."""
    manifest = load_manifest(url)
    if manifest["resolution"] == size:
        return url
    if read_manifest(derived_url(url, size)) is not None:
        return derived_url(url, size)
    parent = manifest.get("derived_from")
    if parent and parent["resolution"] == size:
        return posixpath.dirname(url.rstrip("/"))
    if parent:
        return dataset_at(posixpath.dirname(url.rstrip("/")), size)
    raise DataError(f"{url} holds {manifest['resolution']}px images and no {size}px area downsample of them; "
                    f"ingest it with --downsample-to {size} (adm run does so for a cascade preset)")


def shard_urls(url: str, split: str, manifest: dict | None = None) -> list[str]:
    manifest = manifest or load_manifest(url)
    if split not in manifest["shards"]:
        raise DataError(f"{url} has no split {split!r}; it has {sorted(manifest['shards'])}")
    return [posixpath.join(url.rstrip("/"), rel) for rel in manifest["shards"][split]]


def decode_images(column, channels: int) -> np.ndarray:
    """PNG bytes column -> uint8 [N, H, W, C]."""
    return np.stack([decode_png(bytes(b), channels) for b in column])


def read_split(url: str, split: str = "train", limit: int | None = None):
    """(uint8 images [N, H, W, C], int64 labels [N]) without Ray."""
    manifest = load_manifest(url)
    images, labels, n = [], [], 0
    for shard in shard_urls(url, split, manifest):
        with fsspec.open(shard, "rb") as f:
            table = pq.read_table(f, columns=["image", "label"])
        images.append(decode_images(table.column("image").to_pylist(), manifest["channels"]))
        labels.append(table.column("label").to_numpy())
        n += len(labels[-1])
        if limit is not None and n >= limit:
            break
    images, labels = np.concatenate(images), np.concatenate(labels)
    return (images[:limit], labels[:limit]) if limit is not None else (images, labels)


class DecodeBatch:
    """Ray Data batch function: {"image": PNG bytes, "label"} -> {"image": float32 NCHW in [-1, 1], "label"}."""

    def __init__(self, channels: int):
        self.channels = channels

    def __call__(self, batch: dict) -> dict:
        images = decode_images(batch["image"], self.channels)
        return {"image": to_model_input(images).numpy(), "label": np.asarray(batch["label"], dtype=np.int64)}


class ReadShards:
    """Ray Data batch function: {"path": shard URLs} -> decoded rows {"image": float32 NCHW in [-1, 1], "label"},
    yielded in blocks of `rows` so that consumers stream small blocks instead of one block per shard."""

    def __init__(self, channels: int, rows: int = 256):
        self.decode = DecodeBatch(channels)
        self.rows = rows

    def __call__(self, batch: dict):
        for url in batch["path"]:
            with fsspec.open(str(url), "rb") as f:
                table = pq.read_table(f, columns=["image", "label"])
            for start in range(0, table.num_rows, self.rows):
                part = table.slice(start, self.rows)
                yield self.decode({"image": part.column("image").to_pylist(), "label": part.column("label").to_numpy()})


def ray_dataset(url: str, split: str = "train", num_cpus: float | None = None):
    """A Ray Data dataset of decoded, scaled (image, label) rows for training: one read task per Parquet shard.

    Shards are read with fsspec inside the tasks (any filesystem the workers can reach). num_cpus: CPUs each
    read/decode task asks for; below 1 lets data tasks run beside CPU trainers on a small machine.
    """

    manifest = load_manifest(url)
    urls = shard_urls(url, split, manifest)
    ds = ray.data.from_items([{"path": u} for u in urls], override_num_blocks=len(urls))
    remote = {"num_cpus": num_cpus} if num_cpus is not None else {}
    return ds.map_batches(ReadShards(manifest["channels"]), batch_size=1, batch_format="numpy", **remote)


def driver_dataset(url: str, split: str = "train"):
    """The same decoded rows as `ray_dataset`, read and decoded by this process and put in the object store as blocks
    of 2048 rows, in shard order. Blocks put by the driver have no lineage: losing a worker node cannot lose them (a
    lost task output would be recomputed by a read task that may not fit beside the trainers holding the CPUs), and
    every run sees the same block order."""

    manifest = load_manifest(url)
    blocks = ReadShards(manifest["channels"], rows=2048)({"path": shard_urls(url, split, manifest)})
    # each block goes to the object store as soon as it is decoded: the driver never holds the whole split twice
    return ray.data.from_arrow_refs([ray.put(pa.table({"image": ArrowTensorArray.from_numpy(b["image"]),
                                                       "label": b["label"]})) for b in blocks])


def describe(url: str, per_class: int = 8) -> dict:
    """Counts, classes and fingerprint of a dataset; writes grid.png (rows = classes) next to the manifest."""

    manifest = load_manifest(url)
    split = sorted(manifest["shards"])[0]
    images, labels = read_split(url, split, limit=min(5000, manifest["counts"][split]))
    grid = class_grid(images, labels, max_classes=manifest["num_classes"], per_class=per_class)
    fs, root = fsspec.core.url_to_fs(url)
    tmp = posixpath.join(root, ".grid.png.tmp")
    with fs.open(tmp, "wb") as f:
        f.write(encode_png(grid))
    fs.mv(tmp, posixpath.join(root, "grid.png"))
    return {**manifest, "grid": posixpath.join(url.rstrip("/"), "grid.png")}
