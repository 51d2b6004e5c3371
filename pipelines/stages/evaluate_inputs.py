"""What the evaluation stage reads: sample NPZs (one per guidance scale) and a reference (an ingested dataset's first
images of a split, or a reference-batch NPZ of the released evaluator), as slices to featurize."""

import posixpath
import re
import zipfile
from dataclasses import dataclass

import fsspec
import numpy as np
import pyarrow.parquet as pq

from components.config import UserError
from pipelines.infra.dataset import load_manifest, shard_urls
from pipelines.infra.storage import read_npz

STATS_KEYS = ("mu", "sigma", "mu_s", "sigma_s")


class EvaluationError(UserError):
    """Samples or references that cannot be evaluated; the message names the input and the fix."""


@dataclass
class Source:
    """Images to featurize: slices of NPZ files or Parquet shards."""
    key: str
    kind: str  # "npz" | "parquet"
    urls: list
    counts: list
    shape: tuple  # H, W, C
    labels: np.ndarray | None = None
    identity: str = ""  # what the reference cache key hashes

    @property
    def total(self) -> int:
        return int(sum(self.counts))



def npz_header(url: str) -> dict:
    """{array name: (shape, dtype)} without reading the arrays."""
    out = {}
    try:
        with fsspec.open(url, "rb") as f, zipfile.ZipFile(f) as z:
            for name in z.namelist():
                with z.open(name) as member:
                    version = np.lib.format.read_magic(member)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                        np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(member)
                    out[name.removesuffix(".npy")] = (tuple(shape), np.dtype(dtype))
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise EvaluationError(f"{url} is not a readable NPZ file ({e})") from None
    return out


def npz_source(url: str, key: str, what: str) -> Source:
    header = npz_header(url)
    if "arr_0" not in header:
        raise EvaluationError(f"{what} {url} has no arr_0 (uint8 images [N, H, W, C]); it has {sorted(header)}")
    shape, dtype = header["arr_0"]
    if dtype != np.uint8 or len(shape) != 4 or shape[-1] not in (1, 3):
        raise EvaluationError(f"{what} {url}: arr_0 is {dtype} {shape}; expected uint8 [N, H, W, C] with C = 1 or 3 "
                              "(the reference layout written by `adm sample`)")
    labels = read_npz(url).get("arr_1") if "arr_1" in header else None
    fs, path = fsspec.core.url_to_fs(url)
    size = fs.size(path)
    return Source(key, "npz", [url], [shape[0]], tuple(shape[1:]), labels, identity=f"npz:{url}:{size}")


def discover_samples(url: str) -> dict:
    """{guidance scale (None when unknown): Source} for a sample folder or one NPZ."""
    if url.endswith(".npz"):
        found = re.search(r"scale_([^/]+)/[^/]+$", url)
        scale = float(found.group(1)) if found else None
        return {scale: npz_source(url, f"scale_{scale}", "samples")}
    fs, path = fsspec.core.url_to_fs(url)
    files = sorted(fs.glob(posixpath.join(path.rstrip("/"), "scale_*", "samples_*.npz")))
    if not files:
        raise EvaluationError(f"{url} holds no scale_<s>/samples_*.npz: pass the output folder of `adm sample` or one "
                              "samples NPZ")
    out = {}
    for file in files:
        scale = float(posixpath.basename(posixpath.dirname(file))[len("scale_"):])
        full = fs.unstrip_protocol(file) if "file" not in fs.protocol else file
        out[scale] = npz_source(full, f"scale_{scale:g}", "samples")
    return dict(sorted(out.items()))


def reference_source(reference: str, split: str, num_reference: int) -> Source | dict:
    """A Source of reference images, or the precomputed statistics dict of a stats-only reference NPZ."""
    if reference.endswith(".npz"):
        header = npz_header(reference)
        if "arr_0" not in header and all(k in header for k in STATS_KEYS):
            return {k: v for k, v in read_npz(reference).items() if k in STATS_KEYS}
        return npz_source(reference, "reference", "reference")
    manifest = load_manifest(reference)
    urls, counts = [], []
    for url in shard_urls(reference, split, manifest):
        if sum(counts) >= num_reference:
            break
        with fsspec.open(url, "rb") as f:
            rows = pq.ParquetFile(f).metadata.num_rows
        urls.append(url)
        counts.append(min(rows, num_reference - sum(counts)))
    shape = (manifest["resolution"], manifest["resolution"], manifest["channels"])
    identity = f"dataset:{manifest['fingerprint']}:{split}:{sum(counts)}"
    return Source("reference", "parquet", urls, counts, shape, identity=identity)
