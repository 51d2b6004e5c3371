"""`adm retrain`: one idempotent retraining cycle.

The cycle is an MLflow run tagged ``adm.retrain_cycle`` with its decision (``adm.decision``: skipped, promoted, kept
or failed) and reason. It compares what the pipeline would be built from now — the source's data fingerprint, the
code version and the config hash — with the tags of the ``champion`` diffusion model version:

* all equal (or equal to a version an earlier cycle already tried and kept out): skipped, exit 0, nothing trained;
* otherwise the pipeline runs as a child of the cycle (code changed: every stage recomputed; data or config changed:
  the stage keys differ anyway) and its register stage moves ``champion`` only if the chosen metric improved.

The registered networks start from the champion pair (``train_<kind>.init_from=champion``) when there is one and it
fits the preset's networks; ``--from-scratch`` (or a champion that does not fit) trains from random weights. The
choice is part of the cycle's reason.

A cycle that fails never touches the aliases: they move only at the end of the register stage.
"""

import dataclasses

from components.config import ConfigError, apply_overrides
from components.config.kinds import REGISTERED
from pipelines.infra import tags
from pipelines.infra.init_from import resolve_inits
from pipelines.infra.lineage import code_version, config_hash
from pipelines.infra.tracking import Tracker
from pipelines.infra.tracking_checks import check_tracking
from pipelines.stages.ingest import ingest_options
from pipelines.stages.register import CHAMPION
from pipelines.stages.sources import source_fingerprint
from pipelines.workflow.pipeline import Pipeline
from pipelines.workflow.request import RunRequest, check_request


def current_state(req: RunRequest) -> dict:
    """What the pipeline would be built from now, as the tags a model version records."""
    return {tags.DATA_FINGERPRINT: source_fingerprint(req.source, ingest_options(req.preset)),
            tags.CODE_VERSION: code_version(), tags.CONFIG_HASH: config_hash(req.preset)}


def _matches(version, state: dict) -> bool:
    return version is not None and all(version.tags.get(k) == v for k, v in state.items())


def decide_skip(tracker: Tracker, req: RunRequest, state: dict) -> tuple[str | None, list[str]]:
    """(reason to skip or None, what changed relative to the champion)."""
    name = f"{req.prefix}-diffusion"
    champion = tracker.alias_version(name, CHAMPION)
    if champion is None:
        return None, ["no champion yet"]
    changed = [tags.short(k) for k in tags.WATCHED if champion.tags.get(k) != state[k]]
    if not changed:
        return f"data, code and config unchanged since champion {name} v{champion.version}", []
    tried = [v for v in tracker.model_versions(name) if _matches(v, state)]
    if tried:
        return (f"this data, code and config were already tried as {name} v{tried[0].version}, which did not beat "
                f"champion v{champion.version}"), changed
    return None, changed


def warm_start(tracker: Tracker, req: RunRequest) -> tuple[RunRequest, str]:
    """The request this cycle runs (its registered networks starting from the champion pair where it can) and the
    choice in words. A network whose init_from the config sets already keeps it."""
    if req.from_scratch:
        return req, "from scratch (--from-scratch)"
    champion = tracker.alias_version(f"{req.prefix}-diffusion", CHAMPION)
    if champion is None:
        return req, "from scratch (no champion yet)"
    kinds = [k for k in REGISTERED if k.present(req.preset) and not k.train_config(req.preset).init_from]
    preset = apply_overrides(req.preset, [f"{k.train_section}.init_from={CHAMPION}" for k in kinds])
    try:
        resolve_inits(preset, [k.name for k in kinds], tracker.uri, req.prefix)
    except ConfigError as e:
        return req, f"from scratch (the champion cannot be the starting point: {e})"
    return dataclasses.replace(req, preset=preset), f"warm start from champion v{champion.version}"


def retrain(req: RunRequest, log=print) -> dict:
    """One cycle; returns {"cycle_run_id", "decision", "reason", and for a pipeline run "run_id", "registered"}."""
    check_request(req)
    tracker = Tracker(req.tracking_uri)
    check_tracking(tracker.uri)
    cycle = tracker.start_run(req.experiment, f"retrain-{req.preset.name}", tags={tags.RETRAIN_CYCLE: req.preset.name})
    try:
        return _cycle(tracker, cycle, req, log)
    except BaseException as e:
        tracker.set_tags(cycle, {tags.DECISION: "failed", tags.REASON: f"{type(e).__name__}: {e}"[:5000]})
        tracker.end_run(cycle, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        log(f"[retrain] cycle {cycle} failed; the champion is untouched")
        raise


def _cycle(tracker: Tracker, cycle: str, req: RunRequest, log) -> dict:
    state = current_state(req)
    tracker.set_tags(cycle, state)
    skip, changed = (None, ["--force"]) if req.force else decide_skip(tracker, req, state)
    if skip:
        return _finish(tracker, cycle, "skipped", skip, log)
    reason = "; ".join(changed) if changed == ["no champion yet"] else "changed: " + ", ".join(changed)
    req, start = warm_start(tracker, req)
    reason += f"; {start}"
    log(f"[retrain] cycle {cycle}: {reason}; running the pipeline")
    run_req = dataclasses.replace(req, parent_run_id=cycle, source_fingerprint=state[tags.DATA_FINGERPRINT],
                                  force=req.force or "code_version" in changed, resume=None, register=True)
    result = Pipeline(run_req, log=log).execute()
    reg = result["register"]["diffusion"]
    reason += f"; {reg['reason']}"
    out = _finish(tracker, cycle, "promoted" if reg["champion"] else "kept", reason, log,
                  {tags.PIPELINE_RUN: result["run_id"]})
    return {**out, "run_id": result["run_id"], "registered": result["register"]}


def _finish(tracker: Tracker, cycle: str, decision: str, reason: str, log, extra: dict | None = None) -> dict:
    tracker.set_tags(cycle, {tags.DECISION: decision, tags.REASON: reason[:5000], **(extra or {})})
    tracker.end_run(cycle)
    log(f"[retrain] cycle {cycle}: {decision} ({reason})")
    return {"cycle_run_id": cycle, "decision": decision, "reason": reason}
