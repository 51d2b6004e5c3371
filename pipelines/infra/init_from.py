"""`train_<kind>.init_from`: the weights a trainer starts from, pinned and checked on the driver before any worker
starts.

A registry reference (``champion``, ``models:/NAME@ALIAS``, ``models:/NAME/latest``) is pinned to the version it
names now (``models:/NAME/VERSION``), so every worker, a restarted worker group and the run's lineage tags all mean
the same weights even if the alias moves meanwhile. The network behind it must be the one the preset describes: the
same architecture fields (image size and class count included; dropout may differ) and exactly the same tensor names
and shapes (components.checkpoint's mismatch report). Every failure is a ConfigError naming the field and the fix.
"""

import dataclasses
from dataclasses import dataclass

import torch

from components.checkpoint import check_fits, read_shapes
from components.config import ConfigError, Preset, UserError
from components.config.kinds import kind as network_kind
from components.networks import build_network
from pipelines.infra import tags
from pipelines.infra.model_refs import NetworkRef, locate_for
from pipelines.infra.registry import CHAMPION
from pipelines.infra.tracking import Tracker

NOT_ARCHITECTURE = ("dropout",)  # network config fields a fine-tune may change


@dataclass(frozen=True)
class InitSource:
    uri: str  # pinned: models:/NAME/VERSION for a registry reference, else as configured
    parent_version: str | None = None  # NAME/VERSION when it is a registered model version

    @property
    def tags(self) -> dict:
        """The lineage tags of the training run and, through the register stage, of the version it becomes."""
        out = {tags.INIT_FROM: self.uri}
        return {**out, tags.PARENT_VERSION: self.parent_version} if self.parent_version else out

    @classmethod
    def recorded(cls, run_tags: dict) -> "InitSource | None":
        """What a training run recorded it started from (a resumed run keeps it), or None for a random init."""
        uri = run_tags.get(tags.INIT_FROM)
        return cls(uri, run_tags.get(tags.PARENT_VERSION)) if uri else None


def resolve_init(kind: str, preset: Preset, tracking_uri: str | None, prefix: str) -> InitSource | None:
    """The pinned, checked starting point of `kind`'s trainer, or None when it starts from random weights."""
    spec = network_kind(kind)
    value = spec.train_config(preset).init_from.strip()
    if not value:
        return None
    field = f"{spec.train_section}.init_from={value!r}"
    if value == CHAMPION and not spec.registered:
        raise ConfigError(f"{field}: the {kind} network is never registered, so it has no champion; pass a runs:/ "
                          "URI or a checkpoint folder")
    try:
        source = _pin(value, f"{prefix}-{kind}", tracking_uri)
        check_architecture(locate_for(source.uri, kind, preset, tracking_uri), kind, preset)
    except (UserError, OSError) as e:  # OSError: a missing or unreadable file
        raise ConfigError(f"{field}: {e}. Fix it, or start from random weights ({spec.train_section}.init_from=)"
                          ) from None
    return source


def resolve_inits(preset: Preset, kinds, tracking_uri: str | None, prefix: str) -> dict:
    """{kind: InitSource} for the trainers of `kinds` that start from existing weights (kinds the preset lacks, the
    upsampler outside a cascade, have none)."""
    found = {kind: resolve_init(kind, preset, tracking_uri, prefix) for kind in kinds
             if network_kind(kind).present(preset)}
    return {kind: source for kind, source in found.items() if source is not None}


def _pin(value: str, model_name: str, tracking_uri: str | None) -> InitSource:
    if value == CHAMPION:
        value = f"models:/{model_name}@{CHAMPION}"
    ref = value[len("models:/"):].strip("/") if value.startswith("models:/") else None
    if ref is None or (ref.startswith("m-") and "/" not in ref and "@" not in ref):
        return InitSource(value)  # a run, folder or file; a logged model (models:/m-ID) is one fixed model already
    tracker = Tracker(tracking_uri)  # an unreachable server fails here, in seconds
    if "@" in ref:
        name, alias = ref.split("@", 1)
        found = tracker.alias_version(name, alias)
        if found is None and tracker.registered_model(name) is None:
            raise UserError(f"the MLflow registry at {tracker.uri} has no registered model {name!r} (an `adm run` "
                            "registers PREFIX-diffusion and PREFIX-classifier); run the pipeline once, or check "
                            "--model-prefix and the tracking URI")
        if found is None:
            raise UserError(f"registered model {name!r} has no alias {alias!r} in the MLflow registry at "
                            f"{tracker.uri} (no version was promoted to it yet); promote one (adm models promote), "
                            f"name a version (models:/{name}/VERSION) or check --model-prefix and the tracking URI")
        return InitSource(f"models:/{name}/{found.version}", f"{name}/{found.version}")
    name, _, version = ref.rpartition("/")
    versions = [v.version for v in tracker.model_versions(name)]
    if version == "latest" and versions:
        version = max(versions, key=int)
    if not name or version not in versions:
        raise UserError(f"the MLflow registry at {tracker.uri} has no version {version!r} of {name!r} (versions: "
                        f"{', '.join(sorted(versions, key=int)) or 'none'}); expected models:/NAME/VERSION or "
                        "models:/NAME@ALIAS")
    return InitSource(f"models:/{name}/{version}", f"{name}/{version}")


def check_architecture(ref: NetworkRef, kind: str, preset: Preset) -> None:
    """UserError unless the network at `ref` is `preset`'s `kind` network: its recorded config (a checkpoint folder or
    a registered model carries one) and then its tensor names and shapes (the only check a bare weights file allows)."""
    spec = network_kind(kind)
    here, there = spec.network_config(preset), ref.config
    differ = [f"{f.name}={getattr(there, f.name)!r} there, {getattr(here, f.name)!r} here"
              for f in dataclasses.fields(here)
              if f.name not in NOT_ARCHITECTURE and getattr(there, f.name) != getattr(here, f.name)]
    if differ:
        raise UserError(f"it holds a {kind} network of another architecture ({'; '.join(differ)}); start from a "
                        f"network trained with this {spec.network_section} section, or set {spec.network_section} "
                        "as that network was trained")
    with torch.device("meta"):
        network = build_network(spec, preset)
    check_fits(network, read_shapes(ref.weights), source=f"weights file {ref.weights}")
