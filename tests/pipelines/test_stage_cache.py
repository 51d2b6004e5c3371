"""Stage runs as a cache, on a real MLflow store (sqlite): outputs longer than an MLflow tag still come back whole."""

import json

from pipelines.infra import tags
from pipelines.infra.tracking import Tracker
from pipelines.workflow.stage_cache import StageCache, produced, stage_key


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
    assert first.run("evaluate", {"k": 1}, body) == outputs
    (stage,) = tracker.children("e", first_run)
    assert stage.data.tags[tags.OUTPUTS] == tags.IN_FILE
    # the same key in another pipeline run: reused, from the artifact
    second = StageCache(tracker, "e", tracker.start_run("e", "pipeline"), force=False, log=lambda *_: None)
    assert second.run("evaluate", {"k": 1}, body) == outputs and second.times["evaluate"][1] == "reused"
    # the first pipeline run resumed: its own finished stage
    again = StageCache(tracker, "e", first_run, force=False, log=lambda *_: None)
    assert again.run("evaluate", {"k": 1}, body) == outputs and again.times["evaluate"][1] == "done earlier"
    assert len(calls) == 1
    # short outputs stay in the tag
    assert first.run("sample", {"k": 2}, lambda run_id: {"out": "a/b"}) == {"out": "a/b"}
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
    assert fresh.run("evaluate", {"k": 1}, lambda run_id: {"rows": []}) == {"rows": []}
    assert fresh.times["evaluate"][1] == "ran"


def test_the_finished_line_names_what_the_stage_made_not_what_a_trainer_started_from():
    outputs = {"diffusion": {"run_id": "r1", "model_uri": "models:/m-new",
                             "lineage": {"adm.init_from": "models:/adm-smoke-diffusion/1"}},
               "classifier": {"run_id": "r2", "model_uri": "models:/m-other"}}
    assert produced(outputs) == "models:/m-new, models:/m-other"
