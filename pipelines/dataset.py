"""Reading ingested datasets: with Ray Data for training, or directly (NumPy) for tests and small jobs.

Both decode the PNG column to uint8 HWC; ``decode_batch`` also scales to float32 NCHW in [-1, 1] for the networks.
"""

import posixpath

import fsspec
import numpy as np
import pyarrow.parquet as pq

from components.data import DataError, decode_png, image_grid, to_model_input

from .ingest import MANIFEST, read_manifest


def load_manifest(url: str) -> dict:
    manifest = read_manifest(url)
    if manifest is None:
        raise DataError(f"{url} holds no {MANIFEST}: not an ingested dataset (or its ingest did not finish); "
                        "run `adm data ingest SOURCE URL` first")
    return manifest


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


def ray_dataset(url: str, split: str = "train"):
    """A Ray Data dataset of decoded, scaled (image, label) rows for training."""
    import ray.data

    manifest = load_manifest(url)
    fs, _ = fsspec.core.url_to_fs(url)
    paths = [fsspec.core.url_to_fs(u)[1] for u in shard_urls(url, split, manifest)]
    ds = ray.data.read_parquet(paths, filesystem=_arrow_filesystem(fs)).select_columns(["image", "label"])
    return ds.map_batches(DecodeBatch(manifest["channels"]), batch_format="numpy")


def _arrow_filesystem(fs):
    import pyarrow.fs as pafs

    if "file" in fs.protocol or "local" in fs.protocol:
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def describe(url: str, per_class: int = 8) -> dict:
    """Counts, classes and fingerprint of a dataset; writes grid.png (rows = classes) next to the manifest."""
    from components.data import encode_png

    manifest = load_manifest(url)
    split = sorted(manifest["shards"])[0]
    images, labels = read_split(url, split, limit=min(5000, manifest["counts"][split]))
    rows = []
    for c in range(manifest["num_classes"]):
        picked = images[labels == c][:per_class]
        pad = np.zeros((per_class - len(picked), *images.shape[1:]), dtype=np.uint8)
        rows.append(np.concatenate([picked, pad]))
    grid = image_grid(np.concatenate(rows), rows=manifest["num_classes"])
    fs, root = fsspec.core.url_to_fs(url)
    tmp = posixpath.join(root, ".grid.png.tmp")
    with fs.open(tmp, "wb") as f:
        f.write(encode_png(grid))
    fs.mv(tmp, posixpath.join(root, "grid.png"))
    return {**manifest, "grid": posixpath.join(url.rstrip("/"), "grid.png")}
