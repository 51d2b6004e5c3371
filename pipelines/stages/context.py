"""The one contract of every stage of `adm run`.

A stage is a module of this package that ends with ``STAGE = Stage(name, run, cache_inputs, ...)``:

* ``run(ctx, inputs) -> outputs``: the stage's work. ``inputs`` are the outputs of the stages before it, by name
  (``inputs["train"]["diffusion"]["run_id"]``); ``outputs`` is a JSON-able dict of URLs and MLflow run ids, recorded on
  the stage's run (the only thing stages exchange).
* ``cache_inputs(ctx, inputs) -> dict``: everything the outputs depend on (config sections, upstream outputs, data
  fingerprints); its hash is the stage's cache key, so a finished run with the same key is reused instead of rerun.
* ``still_valid(outputs)`` (optional): whether a reused run's outputs still exist (e.g. files not deleted since).
* ``publish(ctx, outputs)`` (optional): what the stage shows on the pipeline run (plots, the report's table, tags),
  called whether the stage ran now or was reused.
* ``applies(preset)`` (optional): whether the stage is part of a run of that config at all (the upsample stage: only
  for a cascade preset); a stage that does not apply is left out, and the stages after it see no outputs of it.

workflow/pipeline.py's CHAIN lists the stages in order; workflow/stage_cache.py decides run, reuse or resume.
"""

import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field

from components.config import Preset
from pipelines.infra.tracking import Tracker


@dataclass(frozen=True)
class StageContext:
    """What every stage is given besides its inputs: the run's config and request, tracking, where files go, the
    console. ``run_id`` and ``key`` are the stage's own MLflow run and cache key (set when it runs); ``reused`` names
    the stages whose outputs came from another pipeline run (their child runs are not this run's)."""

    preset: Preset
    source: str  # the ingest source: --data, or the preset's data.source
    workdir: str  # data/, checkpoints/, cache/ and runs/<pipeline run id>/ go under it (any fsspec URL)
    prefix: str  # registered model names: <prefix>-<network>
    tracker: Tracker
    experiment: str
    pipeline_run_id: str
    source_fingerprint: str | None = None  # the source's content (retraining): new content, new ingest key
    log: Callable = print
    run_id: str = ""
    key: str = ""
    reused: frozenset = field(default_factory=frozenset)

    def path(self, *parts: str) -> str:
        """A path under the work dir."""
        return posixpath.join(self.workdir.rstrip("/"), *parts)

    def run_path(self, *parts: str) -> str:
        """A path under this pipeline run's own folder, runs/<pipeline run id>/."""
        return self.path("runs", self.pipeline_run_id, *parts)


def _always(outputs: dict) -> bool:
    return True


def _every_preset(preset) -> bool:
    return True


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[StageContext, dict], dict]
    cache_inputs: Callable[[StageContext, dict], dict]
    still_valid: Callable[[dict], bool] = _always
    publish: Callable[[StageContext, dict], None] | None = None
    applies: Callable[[Preset], bool] = _every_preset
