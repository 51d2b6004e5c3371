"""The model registry's `champion` alias: moves that leave a record, and the partner network of a version.

Every move of an alias (the register stage, `adm models promote`, `adm models rollback`) writes one record, as the
tag ``adm.move.<UTC time>`` on both versions it concerns (the one that gets the alias and the one that loses it):
JSON of the action, the alias, who (the OS user), when (UTC), why, and the versions from and to. Tags are only ever
added, so the history of a version can be read back from the version itself and nothing is deleted.

Both networks of a pipeline run move together; a version's partner is the other network's version registered by the
same pipeline run (tag ``adm.pipeline_run``).
"""

import json
from datetime import datetime, timezone

from components.config import UserError
from components.config.kinds import REGISTERED
from pipelines.infra import tags
from pipelines.infra.tracking import Tracker, current_user

CHAMPION = "champion"


def model_names(prefix: str, kinds=None) -> dict:
    """{network: registered model name} of the registered networks (of `kinds` when given: a preset's, the
    upsampler only in a cascade)."""
    return {kind.name: f"{prefix}-{kind.name}" for kind in REGISTERED if kinds is None or kind.name in kinds}


def move_alias(tracker: Tracker, name: str, alias: str, version: str, action: str, why: str) -> dict | None:
    """Point `alias` of `name` at `version` and record the move on it and on the version that had the alias; None,
    with nothing moved or recorded, when `version` already has the alias."""
    before = tracker.alias_version(name, alias)
    if before is not None and str(before.version) == str(version):
        return None
    now = datetime.now(timezone.utc)
    record = {"action": action, "alias": alias, "from": str(before.version) if before else None, "to": str(version),
              "by": current_user(), "at": now.isoformat(timespec="microseconds"), "why": why}
    tracker.set_alias(name, alias, version)
    key = tags.MOVE + now.strftime("%Y%m%dT%H%M%S.%fZ")  # sorts by time; MLflow tag keys allow no colons
    for concerned in {str(version), *([before.version] if before else [])}:
        tracker.set_version_tags(name, concerned, {key: json.dumps(record, sort_keys=True)})
    return record


def moves(version) -> list[dict]:
    """The alias moves recorded on a model version, oldest first."""
    return [json.loads(value) for key, value in sorted(version.tags.items()) if key.startswith(tags.MOVE)]


def best_scale(uri: str, tracking_uri: str | None) -> float | None:
    """The guidance scale the register stage chose for a registered version (adm.best_scale, set with
    evaluate.champion_scale=auto), for models:/NAME@ALIAS and models:/NAME/VERSION; None for other references or
    versions without one."""
    ref = uri[len("models:/"):].strip("/") if uri.startswith("models:/") else ""
    if "@" in ref:
        name, alias = ref.split("@", 1)
        version = Tracker(tracking_uri).alias_version(name, alias)
    elif "/" in ref:
        name, number = ref.rsplit("/", 1)
        version = next((v for v in Tracker(tracking_uri).model_versions(name) if v.version == number), None)
    else:
        return None
    scale = None if version is None else version.tags.get(tags.BEST_SCALE)
    return None if scale is None else float(scale)


def find_version(tracker: Tracker, name: str, version: str):
    """The model version `version` of `name`; UserError naming what exists when there is none."""
    found = {v.version: v for v in tracker.model_versions(name)}
    if not found:
        raise UserError(f"the MLflow registry at {tracker.uri} has no registered model {name!r}; check --model-prefix "
                        "(models are PREFIX-diffusion and PREFIX-classifier) and --tracking-uri")
    if str(version) not in found:
        raise UserError(f"{name} has no version {version}; its versions are {', '.join(sorted(found, key=int))}")
    return found[str(version)]


def partner(tracker: Tracker, name: str, version, partner_name: str):
    """The version of `partner_name` registered by the pipeline run that registered `version` of `name`; UserError
    when the lineage tag or the partner is missing (a pair is never split)."""
    run = version.tags.get(tags.PIPELINE_RUN)
    if not run:
        raise UserError(f"{name} v{version.version} has no {tags.PIPELINE_RUN} tag, so its {partner_name} partner "
                        "cannot be found; both networks of a pipeline run move together, so it is not moved")
    found = [v for v in tracker.model_versions(partner_name) if v.tags.get(tags.PIPELINE_RUN) == run]
    if not found:
        raise UserError(f"{name} v{version.version} was registered by pipeline run {run}, which registered no "
                        f"{partner_name} version (deleted, or never registered); the pair cannot move together, so "
                        "nothing was moved")
    return max(found, key=lambda v: int(v.version))


def champion_history(tracker: Tracker, name: str) -> list[str]:
    """The versions of `name` that held `champion`, oldest first, as the recorded moves leave them: a promotion (or
    the register stage's move) puts its version on top, a rollback takes the top off. Every move is recorded on both
    versions it concerns, so the records of all versions, in time order, are the whole log."""
    log = {}
    for version in tracker.model_versions(name):
        log.update((key, value) for key, value in version.tags.items() if key.startswith(tags.MOVE))
    history: list[str] = []
    for key in sorted(log):
        move = json.loads(log[key])
        before, after = (None if move["from"] is None else str(move["from"])), str(move["to"])
        if move["alias"] != CHAMPION or before == after:
            continue
        if move["action"] == "rollback":
            if history and history[-1] == before:
                history.pop()
            if not history or history[-1] != after:
                history.append(after)
            continue
        if before is not None and (not history or history[-1] != before):
            history.append(before)  # it held the alias before a move that was not recorded
        history.append(after)
    return history


def previous_champion(tracker: Tracker, name: str, current) -> str:
    """The version that held `champion` before `current` got it, in the recorded history (champion_history), so
    repeated rollbacks walk back through it: promote 1, 2, 3, rollback, rollback leaves 1."""
    history = champion_history(tracker, name)
    if history and history[-1] != str(current.version):
        raise UserError(f"{name}'s champion is v{current.version}, but the last recorded move gave it to "
                        f"v{history[-1]} (was the alias moved outside adm?); promote a version by number instead "
                        "(adm models promote VERSION --reason ...)")
    if len(history) < 2:
        raise UserError(f"{name} v{current.version} has no recorded earlier champion to roll back to; promote a "
                        "version by number instead (adm models promote VERSION --reason ...)")
    return history[-2]
