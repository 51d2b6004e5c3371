"""`adm models`: the registered versions of a pipeline's networks (diffusion and classifier, and the upsampler of a
cascade), and moving `champion` by hand.

Promote and rollback move both networks' aliases together (the partner is found by the pipeline-run lineage tag,
and a pair with a missing partner is refused before anything moves); each move is recorded on the versions it
concerns (pipelines/infra/registry.py). Nothing is deleted: a version that loses the alias keeps its record.
"""

import re
from datetime import datetime, timezone

from components.config import UserError
from pipelines.infra import registry, tags
from pipelines.infra.registry import CHAMPION, model_names, moves
from pipelines.infra.tracking import Tracker

# tags.champion_metric's names: at a fixed scale, and at the grid's best (evaluate.champion_scale=auto)
METRIC_TAG = re.compile(r"^adm\.(?P<metric>.+)_scale_(?P<scale>[^_]+)$")
BEST_METRIC_TAG = re.compile(r"^adm\.(?P<metric>.+)_best_scale$")


def version_metrics(version_tags: dict) -> tuple[dict, str | None]:
    """({metric@scale: value}, the best scale or None) of a version: a metric at the best scale of the grid is named
    by the scale that was chosen (adm.best_scale), e.g. fid@4."""
    best = version_tags.get(tags.BEST_SCALE)
    metrics = {}
    for key, value in version_tags.items():
        if m := METRIC_TAG.match(key):
            metrics[f"{m['metric']}@{m['scale']}"] = float(value)
        elif m := BEST_METRIC_TAG.match(key):
            metrics[f"{m['metric']}@{best or 'best'}"] = float(value)
            best = best or "best"
    return metrics, best


def version_row(version, champion: str | None) -> dict:
    """What `adm models list` shows of one version: metrics, scale (best_scale: the one evaluate.champion_scale=auto
    chose), data, lineage, whether champion, last move, and the register stage's decision with its reason."""
    metrics, best = version_metrics(version.tags)
    history = moves(version)
    return {
        "version": version.version,
        "champion": version.version == champion,
        "metrics": metrics,
        "scale": ",".join(sorted({key.rsplit("@", 1)[1] for key in metrics})),
        "best_scale": best,
        "data_fingerprint": version.tags.get(tags.DATA_FINGERPRINT, ""),
        "pipeline_run": version.tags.get(tags.PIPELINE_RUN, ""),
        "parent": version.tags.get(tags.PARENT_VERSION, ""),
        "created": datetime.fromtimestamp(version.creation_timestamp / 1000, timezone.utc).isoformat(),
        "last_move": history[-1] if history else None,
        # the register stage's decision: promoted, or kept with why (the paired difference from the champion)
        "decision": version.tags.get(tags.DECISION, ""),
        "reason": version.tags.get(tags.REASON, ""),
    }


def set_names(tracker: Tracker, prefix: str) -> dict:
    """{network: registered model name} of the set under `prefix`: the diffusion model and the classifier, and the
    upsampler where the registry has one (a cascade's pipeline registers it with the others)."""
    return {kind: name for kind, name in model_names(prefix).items()
            if kind in ("diffusion", "classifier") or tracker.registered_model(name) is not None}


def list_versions(tracker: Tracker, prefix: str) -> dict:
    """{registered model name: rows of its versions, newest first}; UserError when the prefix has no models."""
    out = {}
    for name in set_names(tracker, prefix).values():
        champion = tracker.alias_version(name, CHAMPION)
        versions = sorted(tracker.model_versions(name), key=lambda v: -int(v.version))
        out[name] = [version_row(v, champion.version if champion else None) for v in versions]
    if not any(out.values()):
        raise UserError(f"the MLflow registry at {tracker.uri} has no versions of {' or '.join(out)}; check "
                        "--model-prefix (default adm-PRESET) and --tracking-uri")
    return out


def show_version(tracker: Tracker, prefix: str, network: str, version: str) -> dict:
    """One version in full: its row, every tag but the move records, the move records, its partner."""
    names = _names(tracker, prefix, network)
    found = registry.find_version(tracker, names[network], version)
    champion = tracker.alias_version(names[network], CHAMPION)
    partners = {}
    for other, name in names.items():
        if other != network:
            try:
                partners[name] = registry.partner(tracker, names[network], found, name).version
            except UserError:
                partners[name] = None
    return {"name": names[network], **version_row(found, champion.version if champion else None),
            "run_id": found.run_id, "source": found.source, "partners": partners,
            "tags": {k: v for k, v in sorted(found.tags.items()) if not k.startswith(tags.MOVE)},
            "moves": moves(found)}


def promote(tracker: Tracker, prefix: str, network: str, version: str, reason: str, action: str = "promote") -> dict:
    """`champion` to `version` of `network` and to its partner; {name: (its version, the recorded move, or None
    when that version already was champion: nothing moved, nothing recorded)}."""
    names = _names(tracker, prefix, network)
    chosen = registry.find_version(tracker, names[network], version)
    pair = {names[network]: chosen}
    for other, name in names.items():
        if other != network:  # every partner is found before the first alias moves
            pair[name] = registry.partner(tracker, names[network], chosen, name)
    return {name: (str(v.version), registry.move_alias(tracker, name, CHAMPION, v.version, action, reason))
            for name, v in pair.items()}


def rollback(tracker: Tracker, prefix: str, reason: str) -> dict:
    """`champion` back to the pair that held it before the current diffusion champion was promoted."""
    name = model_names(prefix)["diffusion"]
    current = tracker.alias_version(name, CHAMPION)
    if current is None:
        raise UserError(f"{name} has no champion in the MLflow registry at {tracker.uri}, so there is nothing to roll "
                        "back; check --model-prefix and --tracking-uri")
    return promote(tracker, prefix, "diffusion", registry.previous_champion(tracker, name, current), reason, "rollback")


def _names(tracker: Tracker, prefix: str, network: str) -> dict:
    names = set_names(tracker, prefix)
    if network not in names:
        raise UserError(f"network {network!r} is not registered; the registered networks are {', '.join(names)}")
    return names
