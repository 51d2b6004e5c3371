"""What the evaluation stage reads: sample NPZs (one per grid cell, or per guidance scale in the older layout) and a
reference (an ingested dataset's first images of a split, or a reference-batch NPZ of the released evaluator), as
slices to featurize."""

import json
import math
import posixpath
import re
import zipfile
from dataclasses import dataclass

import fsspec
import numpy as np
import pyarrow.parquet as pq

from components.config import UserError
from components.config.grid import METHODS
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
    cell: dict | None = None  # samples: the grid cell's cell.json (coordinates, compute), or what the path tells

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


def _cell_of(file: str, fs) -> dict:
    """The cell.json beside a samples NPZ (written by `adm sample`); an older `scale_<s>/` folder gives the scale
    only; a file anywhere else gives nothing (its scale is unknown)."""
    folder = posixpath.dirname(file)
    meta = posixpath.join(folder, "cell.json")
    if fs.exists(meta):
        with fs.open(meta, "r") as f:
            return json.load(f)
    found = re.fullmatch(r"scale_([^/_]+)", posixpath.basename(folder))
    return {"cell": f"scale_{found.group(1)}", "guidance_scale": float(found.group(1))} if found else {}


def _cell_order(cell: dict) -> tuple:
    scale = cell.get("guidance_scale", math.nan)
    method = METHODS.index(cell.get("guidance_method", "classifier")) if "guidance_method" in cell else 0
    return (cell.get("sampler", ""), method, math.isnan(scale), scale, cell.get("interval_lo", 0.0),
            cell.get("cell", ""))


def discover_samples(url: str) -> dict:
    """{cell key: Source} for a sample folder (one cell per `<sampler>/[<method>_]scale_<s>[...]/` folder, or per
    `scale_<s>/` of the older layout) or one NPZ; ordered by sampler, method, scale, interval."""
    fs, path = fsspec.core.url_to_fs(url)
    if not fs.exists(path):
        raise EvaluationError(f"--samples {url} does not exist: pass the output folder of `adm sample` or one samples "
                              "NPZ")
    if url.endswith(".npz"):
        files = [path]
    else:
        root = path.rstrip("/")
        files = sorted(fs.glob(posixpath.join(root, "*", "*scale_*", "samples_*.npz"))
                       + fs.glob(posixpath.join(root, "scale_*", "samples_*.npz")))
        if not files:
            raise EvaluationError(f"{url} holds no <sampler>/scale_<s>/samples_*.npz: pass the output folder of "
                                  "`adm sample` or one samples NPZ")
    out = {}
    for file in files:
        cell = _cell_of(file, fs)
        full = url if url.endswith(".npz") else fs.unstrip_protocol(file) if "file" not in fs.protocol else file
        key = cell.setdefault("cell", "samples")
        out[key] = npz_source(full, key, "samples")
        out[key].cell = cell
    return dict(sorted(out.items(), key=lambda kv: _cell_order(kv[1].cell)))


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
