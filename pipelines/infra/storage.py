"""Storage on any fsspec filesystem: atomic writes and NPZ arrays."""

import hashlib
import io
import json
import os
import posixpath
import uuid
from pathlib import Path

import fsspec
import numpy as np

from components.config import UserError


def cache_home() -> Path:
    """This machine's cache of the pipeline (fetched networks, reference statistics, speed choices): $ADM_CACHE_DIR,
    default ~/.cache/adm-pipeline."""
    return Path(os.environ.get("ADM_CACHE_DIR") or Path.home() / ".cache" / "adm-pipeline")


def write_bytes_atomic(url: str, data: bytes) -> None:
    """Write to a temporary name beside `url`, then rename: readers never see a half-written file."""
    fs, path = fsspec.core.url_to_fs(url)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        fs.pipe_file(tmp, data)
        fs.mv(tmp, path)
    except OSError as e:  # named after the user's file: the temporary name means nothing to them
        if fs.exists(tmp):
            fs.rm(tmp)
        raise UserError(f"cannot write {url} ({e.strerror or type(e).__name__}); choose a folder you can write, with "
                        "free space") from None


def check_writable(url: str, what: str, option: str) -> None:
    """A probe file written and removed at `url` (created if missing): a folder that cannot be written fails here,
    naming it, before any Ray worker or actor starts instead of when the first one writes."""
    fs, root = fsspec.core.url_to_fs(url)
    probe = f"{root.rstrip('/')}/.adm-write-probe-{uuid.uuid4().hex[:8]}"
    try:
        fs.makedirs(root, exist_ok=True)
        fs.pipe_file(probe, b"ok")
        fs.rm(probe)
    except Exception as e:  # OSError locally; each remote filesystem raises its own types
        reason = e.strerror if isinstance(e, OSError) and e.strerror else f"{type(e).__name__}: {e}"
        raise UserError(f"{what} {url} is not writable ({reason}); choose another {option}") from None


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def read_bytes(url: str) -> bytes:
    with fsspec.open(url, "rb") as f:
        return f.read()


def read_npz(url: str) -> dict:
    data = np.load(io.BytesIO(read_bytes(url)), allow_pickle=False)
    return {name: data[name] for name in data.files}


def absolute(url: str) -> str:
    """A local path made absolute (processes on Ray workers do not share the driver's working directory); URLs with a
    scheme are returned as they are."""
    return url if "://" in url else os.path.abspath(url)


def exists(url: str) -> bool:
    fs, path = fsspec.core.url_to_fs(url)
    return fs.exists(path)


def digest(value) -> str:
    """sha256 of a JSON-able value (sorted keys): the stable content hash behind cache keys and cached file names."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()

