"""Stage runs as a cache, on a real MLflow store (sqlite): outputs longer than an MLflow tag still come back whole."""

import json

import pytest

from components.config.presets import get_preset
from pipelines.infra import tags
from pipelines.infra.tracking import Tracker
from pipelines.stages.context import Stage, StageContext
from pipelines.workflow.stage_cache import StageCache, produced, stage_key


def _run(cache: StageCache, name: str, inputs: dict, body) -> dict:
    """A stage called `name` whose cache inputs are `inputs` and whose work is body(run_id), run through `cache`."""
    stage = Stage(name, lambda ctx, upstream: body(ctx.run_id), lambda ctx, upstream: inputs)
    ctx = StageContext(get_preset("smoke"), "shapes", "work", "p", cache.tracker, cache.experiment,
                       cache.pipeline_run_id, log=lambda *_: None)
    return cache.run(stage, ctx, {})


def test_outputs_longer_than_a_tag_come_back_whole_when_reused_and_when_done_earlier(tmp_path):
    """A grid of 20 cells gives the evaluate stage ~12,000 characters of outputs; MLflow cuts a tag at 8,000, and the
    cut JSON used to break every later reuse. Long outputs go to an artifact of the stage run instead."""
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    rows = [{"cell": f"ddim25/cfg_scale_{i}", "fid": 100.0 + i, "note": "x" * 500} for i in range(20)]
    outputs = {"rows": rows}
    assert len(json.dumps(outputs)) > 8000
    calls = []

    def body(run_id):
        calls.append(run_id)
        return outputs

    first_run = tracker.start_run("e", "pipeline")
    first = StageCache(tracker, "e", first_run, force=False, log=lambda *_: None)
    assert _run(first, "evaluate", {"k": 1}, body) == outputs
    (stage,) = tracker.children("e", first_run)
    assert stage.data.tags[tags.OUTPUTS] == tags.IN_FILE
    # the same key in another pipeline run: reused, from the artifact
    second = StageCache(tracker, "e", tracker.start_run("e", "pipeline"), force=False, log=lambda *_: None)
    assert _run(second, "evaluate", {"k": 1}, body) == outputs and second.times["evaluate"][1] == "reused"
    # the first pipeline run resumed: its own finished stage
    again = StageCache(tracker, "e", first_run, force=False, log=lambda *_: None)
    assert _run(again, "evaluate", {"k": 1}, body) == outputs and again.times["evaluate"][1] == "done earlier"
    assert len(calls) == 1
    # short outputs stay in the tag
    assert _run(first, "sample", {"k": 2}, lambda run_id: {"out": "a/b"}) == {"out": "a/b"}
    (sample,) = [r for r in tracker.children("e", first_run) if tags.stage_of(r) == "sample"]
    assert json.loads(sample.data.tags[tags.OUTPUTS]) == {"out": "a/b"}


def test_a_tag_cut_short_by_an_older_version_is_not_reused(tmp_path):
    """A stage run whose outputs tag MLflow cut (written before long outputs went to an artifact) is run again."""
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    stage = tracker.start_run("e", "evaluate", tracker.start_run("e", "pipeline"), tags={
        tags.STAGE: "evaluate", tags.STAGE_KEY: stage_key("evaluate", {"k": 1}),
        tags.OUTPUTS: '{"rows": [{"cell": "ddim25/sc'})
    tracker.end_run(stage)
    fresh = StageCache(tracker, "e", tracker.start_run("e", "pipeline"), force=False, log=lambda *_: None)
    assert _run(fresh, "evaluate", {"k": 1}, lambda run_id: {"rows": []}) == {"rows": []}
    assert fresh.times["evaluate"][1] == "ran"


def test_the_finished_line_names_what_the_stage_made_not_what_a_trainer_started_from():
    outputs = {"diffusion": {"run_id": "r1", "model_uri": "models:/m-new",
                             "lineage": {"adm.init_from": "models:/adm-smoke-diffusion/1"}},
               "classifier": {"run_id": "r2", "model_uri": "models:/m-other"}}
    assert produced(outputs) == "models:/m-new, models:/m-other"


def test_a_stage_is_told_which_upstream_stages_came_from_another_pipeline_run(tmp_path):
    """The evaluate stage logs each cell's metrics into the sample stage's cell runs when those runs are this pipeline
    run's: sampled now, or before a resume ("done earlier"); only a sample stage reused from another pipeline run
    makes it open runs of its own (after a resume in evaluate they went to new runs: the layout changed)."""
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    told, fail = [], [True]
    sample = Stage("sample", lambda ctx, up: {"cell_runs": {"c": ctx.run_id}}, lambda ctx, up: {"k": 1})

    def evaluate(ctx, upstream):
        told.append(ctx.reused)
        if fail[0]:
            fail[0] = False
            raise RuntimeError("the driver died in evaluate")
        return {"rows": []}

    scored = Stage("evaluate", evaluate, lambda ctx, up: {"pipeline": ctx.pipeline_run_id})

    def run_both(pipeline_run_id):
        cache = StageCache(tracker, "e", pipeline_run_id, force=False, log=lambda *_: None)
        ctx = StageContext(get_preset("smoke"), "shapes", "work", "p", tracker, "e", pipeline_run_id,
                           log=lambda *_: None)
        done = {}
        for stage in (sample, scored):
            done[stage.name] = cache.run(stage, ctx, done)
        return cache.times

    first = tracker.start_run("e", "pipeline")
    with pytest.raises(RuntimeError):
        run_both(first)
    times = run_both(first)  # resumed: sample done earlier in this run, evaluate again
    assert times["sample"][1] == "done earlier" and told == [frozenset(), frozenset()]
    times = run_both(tracker.start_run("e", "pipeline"))  # another pipeline run: its sample stage reused
    assert times["sample"][1] == "reused" and told[-1] == frozenset({"sample"})
