"""Stage runs as a cache, and resume.

Each stage of a pipeline run is an MLflow child run tagged with its stage name and a key: a hash of the stage's
config section and its inputs' fingerprints (each stage's ``cache_inputs``, stages/context.py). Before a stage runs:

1. a finished run of that stage under this pipeline run with the same key (a resumed pipeline): its outputs;
2. else a finished run with the same key anywhere in the experiment (unless ``force``): a new child run tagged
   ``adm.reused_from`` records the link, and its outputs are used, if they still exist;
3. else an unfinished run of that stage under this pipeline run with the same key: reopened and run again (training
   continues from its checkpoint, sampling skips the shards it wrote);
4. else a new run.

Outputs are what the stage returns (URLs and run ids), recorded on its run when it finishes.
"""

import dataclasses
import json
import tempfile
import time
from pathlib import Path

from pipelines.infra import tags
from pipelines.infra.storage import digest
from pipelines.infra.tracking import Tracker
from pipelines.stages.context import Stage, StageContext


def stage_key(name: str, inputs: dict) -> str:
    return digest({"stage": name, **inputs})[:32]


def produced(outputs: dict, shown: int = 3) -> str:
    """What a stage produced, in a few words: the URLs and model URIs among its outputs (run ids are in MLflow; a
    trainer's lineage names what it started from, which it did not produce)."""
    found = []

    def walk(value):
        if isinstance(value, dict):
            for k, v in value.items():
                if k != "lineage":
                    walk(v)
        elif isinstance(value, str) and "/" in value and value not in found:
            found.append(value)

    walk(outputs)
    more = f" (+{len(found) - shown} more)" if len(found) > shown else ""
    return (", ".join(found[:shown]) + more) if found else "outputs recorded on its run"


class StageCache:
    def __init__(self, tracker: Tracker, experiment: str, pipeline_run_id: str, force: bool, log=print):
        self.tracker, self.experiment, self.pipeline_run_id = tracker, experiment, pipeline_run_id
        self.force, self.log = force, log
        self.times: dict = {}  # stage -> (wall seconds in this invocation, "ran" | "reused" | "done earlier")

    def run(self, stage: Stage, ctx: StageContext, upstream: dict) -> dict:
        """The outputs of `stage` given the outputs of the stages before it: from an earlier run where one fits, else
        stage.run in a new or reopened run. `ctx` is the pipeline's context; the stage gets it with its own run id,
        key and the upstream stages that were reused from other pipeline runs."""
        started = time.perf_counter()
        ctx = dataclasses.replace(ctx, reused=frozenset(n for n, (_, how) in self.times.items() if how == "reused"))
        outputs, how = self._outputs(stage, ctx, upstream)
        self.times[stage.name] = (time.perf_counter() - started, how)
        return outputs

    def _outputs(self, stage: Stage, ctx: StageContext, upstream: dict) -> tuple[dict, str]:
        name, started = stage.name, time.perf_counter()
        key = stage_key(name, stage.cache_inputs(ctx, upstream))
        mine = [r for r in self.tracker.children(self.experiment, self.pipeline_run_id) if tags.stage_of(r) == name]
        for run in mine:
            if run.info.status == "FINISHED" and run.data.tags.get(tags.STAGE_KEY) == key:
                outputs = self.outputs_of(run)
                if outputs is not None:
                    self.log(f"[{name}] finished earlier in this run ({run.info.run_id})")
                    return outputs, "done earlier"
        cached, outputs = self._reusable(key)
        if cached is not None and stage.still_valid(outputs):
            return self._reuse(name, key, cached, outputs), "reused"
        unfinished = [r for r in mine if r.info.status != "FINISHED" and r.data.tags.get(tags.STAGE_KEY) == key]
        run_id, opened = self._open(name, key, unfinished)
        try:  # from here on the run ends FINISHED or FAILED, whatever raises (the log line included)
            self.log(f"[{name}] started {time.strftime('%H:%M:%S')}: {opened} {run_id}")
            outputs = stage.run(dataclasses.replace(ctx, run_id=run_id, key=key), upstream)
            self.tracker.set_tags(run_id, {**self.record_outputs(run_id, outputs), tags.DESCRIPTION: f"The {name} "
                                           f"stage of pipeline run {self.pipeline_run_id}; it produced "
                                           f"{produced(outputs, 8)}"})
            self.log(f"[{name}] finished in {time.perf_counter() - started:.0f} s: {produced(outputs)}")
        except BaseException as e:
            self.tracker.end_failed(run_id, e)
            raise
        self.tracker.end_run(run_id)
        return outputs, "ran"

    def record_outputs(self, run_id: str, outputs: dict) -> dict:
        """The tag that records a stage run's outputs (in an artifact of the run when too long for a tag)."""
        text = json.dumps(outputs, sort_keys=True)
        if len(text) > tags.TAG_LIMIT:
            self.tracker.log_text(run_id, text, tags.OUTPUTS_FILE)
            text = tags.IN_FILE
        return {tags.OUTPUTS: text}

    def outputs_of(self, run) -> dict | None:
        """The outputs a finished stage run recorded, or None where it recorded none (or a tag MLflow cut short,
        before long outputs went to an artifact)."""
        text = run.data.tags.get(tags.OUTPUTS)
        if text == tags.IN_FILE:
            with tempfile.TemporaryDirectory() as tmp:
                text = Path(self.tracker.download_artifacts(run.info.run_id, tags.OUTPUTS_FILE, tmp)).read_text()
        try:
            return None if text is None else json.loads(text)
        except json.JSONDecodeError:
            return None

    def _reusable(self, key: str) -> tuple:
        """(a finished run of this key anywhere in the experiment, its outputs), or (None, None)."""
        if self.force:
            return None, None
        for run in self.tracker.search(self.experiment, f"tags.`{tags.STAGE_KEY}` = '{key}'", 20):
            outputs = self.outputs_of(run) if run.info.status == "FINISHED" else None
            if outputs is not None:
                return run, outputs
        return None, None

    def _reuse(self, name: str, key: str, cached, outputs: dict) -> dict:
        origin = cached.data.tags.get(tags.REUSED_FROM, cached.info.run_id)
        run_id = self.tracker.start_run(self.experiment, name, self.pipeline_run_id, tags={
            tags.STAGE: name, tags.STAGE_KEY: key, tags.REUSED_FROM: origin})
        self.tracker.set_tags(run_id, self.record_outputs(run_id, outputs))
        self.tracker.end_run(run_id)
        self.log(f"[{name}] reused: same config and inputs as run {origin}")
        return outputs

    def _open(self, name: str, key: str, unfinished: list) -> tuple[str, str]:
        if unfinished:
            run_id = unfinished[0].info.run_id
            self.tracker.reopen(run_id)
            return run_id, "resuming run"
        run_id = self.tracker.start_run(self.experiment, name, self.pipeline_run_id,
                                        tags={tags.STAGE: name, tags.STAGE_KEY: key})
        return run_id, "MLflow run"
