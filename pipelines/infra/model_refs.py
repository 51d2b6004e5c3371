"""Find and load a trained network from a URI.

Accepted forms:
* a checkpoint folder on any fsspec filesystem (what the training stage writes: model.safetensors, ema_*.safetensors,
  model.json with the resolved preset) — EMA weights are used when present;
* ``runs:/RUN_ID`` — the "checkpoint" artifacts of a training run in the MLflow tracking server;
  ``runs:/RUN_ID/snapshots/step_NNNNNNN`` one of its snapshots (train_<kind>.snapshot_steps);
* ``models:/NAME/VERSION``, ``models:/NAME@ALIAS`` (e.g. ``models:/adm-fashion-mnist-diffusion@champion``),
  ``models:/NAME/latest`` or ``models:/m-ID`` — a registered or logged model; the checkpoint of the training run
  that logged it is used (it carries the resolved preset beside the weights);
* a weights file (.safetensors, or a released ADM .pt read with weights_only=True) together with a preset name.

Remote files are downloaded once into ``$ADM_CACHE_DIR/networks/<digest of the URI>`` (default
``~/.cache/adm-pipeline``), under a temporary name renamed into place, so concurrent actors share one copy and an
interrupted download never looks complete.
"""

import hashlib
import json
import os
import posixpath
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import fsspec
import torch
from torch import nn

from components.checkpoint import check_fits, load_into, read_shapes
from components.config import Preset, UserError, preset_from_dict
from components.config.kinds import kind as network_kind
from components.config.kinds import kind_of
from components.config.presets import get_preset
from components.networks import build_network
from pipelines.infra.storage import cache_home
from pipelines.infra.tracking import Tracker
from pipelines.infra.tracking_checks import raise_if_gone


@dataclass
class NetworkRef:
    kind: str  # the name of its NetworkKind (config/kinds.py)
    preset: Preset
    weights: str  # local path of the weights file

    @property
    def config(self):
        return network_kind(self.kind).network_config(self.preset)

    @property
    def process(self):
        """The diffusion process the network was trained under (the upsampler's own, else the preset's)."""
        return network_kind(self.kind).process_config(self.preset)

    def build(self) -> nn.Module:
        return load_into(build_network(self.kind, self.preset), self.weights, source=self.weights).eval()

    def checked(self) -> "NetworkRef":
        """Self, once the weights file has been opened safely and its names and shapes compared with the network the
        config describes (on the meta device: no weights read into memory), so that the driver refuses a bad file
        before any Ray actor or worker starts."""
        with torch.device("meta"):
            network = build_network(self.kind, self.preset)
        check_fits(network, read_shapes(self.weights), source=f"weights file {self.weights}")
        return self


def snapshot_path(step: int) -> str:
    """The artifact path of a training run's snapshot at `step` (train_<kind>.snapshot_steps): an earlier version of
    its network, as runs:/RUN_ID/snapshots/step_NNNNNNN."""
    return f"snapshots/step_{step:07d}"


def cache_folder(key: str) -> Path:
    return cache_home() / "networks" / hashlib.sha256(key.encode()).hexdigest()[:20]


def _fetch_once(target: Path, download) -> Path:
    """`download(folder)` into a temporary sibling of `target`, renamed into place; skipped when `target` exists."""
    if target.exists():
        return target
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        download(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process put it there first
            if not target.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _local_folder(uri: str, tracking_uri: str | None, workdir: Path | None) -> Path:
    if uri.startswith(("runs:/", "models:/")):
        tracker = Tracker(tracking_uri)
        run_id, _, path = uri[len("runs:/"):].strip("/").partition("/")
        if uri.startswith("models:/"):
            run_id, path = tracker.model_source_run(uri), ""
        path = path or "checkpoint"  # runs:/RUN_ID/snapshots/step_N: another checkpoint folder of the run
        try:
            tracker.run(run_id)  # a run that is not there fails here, before a download folder is made
            if workdir is not None:
                return Path(tracker.download_artifacts(run_id, path, workdir))
            fetch = _fetch_once(cache_folder(f"{tracker.uri} {run_id} {path}"),
                                lambda d: tracker.download_artifacts(run_id, path, d))
            return fetch / posixpath.basename(path)  # MLflow downloads an artifact folder under its last name
        except Exception as e:
            raise_if_gone(e)
            raise UserError(f"cannot fetch the checkpoint of MLflow run {run_id} ({type(e).__name__}: {e}); "
                            "check the run id and MLFLOW_TRACKING_URI") from None
    fs, path = fsspec.core.url_to_fs(uri)
    if not fs.exists(path):
        raise UserError(f"checkpoint {uri} does not exist; pass a checkpoint folder, runs:/RUN_ID, "
                        "models:/NAME@ALIAS or a weights file")
    if "file" in fs.protocol or "local" in fs.protocol:
        return Path(path)
    if workdir is not None:
        fs.get(path.rstrip("/") + "/", str(workdir), recursive=True)
        return workdir
    return _fetch_once(cache_folder(uri), lambda d: fs.get(path.rstrip("/") + "/", str(d), recursive=True))


def resolve(uri: str, kind: str | tuple[str, ...], preset_name: str | None = None, tracking_uri: str | None = None,
            workdir: str | Path | None = None) -> NetworkRef:
    """A NetworkRef for `uri`, its weights file checked against its config; UserError naming the URI when it cannot
    be used. `kind`: the network needed, or the kinds that may stand in for each other (a checkpoint says which it
    is; a bare weights file is taken as the first)."""
    return _locate(uri, kind, preset_name, tracking_uri, workdir).checked()


def _locate(uri: str, kind: str | tuple[str, ...], preset_name: str | None, tracking_uri: str | None,
            workdir: str | Path | None) -> NetworkRef:
    workdir = Path(workdir) if workdir else None
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    kind = kinds[0]
    if is_weights_file(uri):
        if not preset_name:
            raise UserError(f"{uri} is a bare weights file; also pass the preset it belongs to (e.g. --preset "
                            "imagenet256)")
        preset = get_preset(preset_name)
        kind_of(preset, kind)  # e.g. an upsampler's .pt needs a cascade preset
        return NetworkRef(kind, preset, _local_weights(uri, workdir))
    return _from_checkpoint(uri, kinds, tracking_uri, workdir)


def is_weights_file(uri: str) -> bool:
    return uri.endswith((".pt", ".pth", ".safetensors"))


def locate_for(uri: str, kind: str, preset: Preset, tracking_uri: str | None = None) -> NetworkRef:
    """A NetworkRef for `uri` as the starting point of `preset`'s `kind` network (train_<kind>.init_from): a bare
    weights file is taken as that network's weights; anything else brings the config it was trained with. Not
    checked: the caller compares it with the network it starts."""
    if is_weights_file(uri):
        return NetworkRef(kind, preset, _local_weights(uri, None))
    return _from_checkpoint(uri, kind, tracking_uri, None)


def _local_weights(uri: str, workdir: Path | None) -> str:
    """A local path of the weights file `uri` (downloaded once when it is remote)."""
    fs, path = fsspec.core.url_to_fs(uri)
    if not fs.exists(path):
        raise UserError(f"weights file {uri} does not exist")
    if "file" in fs.protocol or "local" in fs.protocol:
        return path
    name = posixpath.basename(path)
    if workdir is not None:
        fs.get(path, str(workdir / name))
        return str(workdir / name)
    folder = _fetch_once(cache_folder(uri), lambda d: fs.get(path, str(d / name)))
    return str(folder / name)


def latest_checkpoint(folder: str) -> str | None:
    """The newest complete checkpoint_* folder in a trainer's Ray Train folder (any fsspec URL), or None. Ray names
    checkpoints by their time, so the last in order is the newest; one still being written (no state.json yet) is
    passed over."""
    fs, root = fsspec.core.url_to_fs(folder)
    found = sorted(fs.glob(posixpath.join(root, "checkpoint_*"))) if fs.isdir(root) else []
    for path in reversed(found):
        if fs.exists(posixpath.join(path, "state.json")):
            return path if "://" not in folder else fs.unstrip_protocol(path)
    return None


def _from_checkpoint(uri: str, kind: str | tuple[str, ...], tracking_uri: str | None,
                     workdir: Path | None) -> NetworkRef:
    folder = _local_folder(uri, tracking_uri, workdir)
    meta_path = folder / "model.json"
    if not meta_path.exists() and latest_checkpoint(str(folder)):  # a trainer's folder: its newest checkpoint
        folder = Path(latest_checkpoint(str(folder)))
        meta_path = folder / "model.json"
    if not meta_path.exists():
        raise UserError(f"{uri} holds no model.json: not a checkpoint written by `adm train` (nor a trainer's folder "
                        "of checkpoint_* folders)")
    meta = json.loads(meta_path.read_text())
    kinds = (kind,) if isinstance(kind, str) else kind
    if meta.get("kind") not in kinds:
        raise UserError(f"{uri} is a {meta.get('kind')} checkpoint, but a {' or '.join(kinds)} network is needed "
                        "here")
    kind = meta["kind"]
    preset = preset_from_dict(meta["preset"])
    rates = network_kind(kind).train_config(preset).ema_rate
    ema = folder / f"ema_{rates[0]}.safetensors" if rates else None
    weights = ema if ema is not None and ema.exists() else folder / "model.safetensors"
    return NetworkRef(kind, preset, str(weights))
