"""Each stage's cache key covers exactly what the stage reads: every field of every config section is changed in turn
and the keys that change are compared with the table below. A field a stage reads but leaves out of its key would
let a finished run be reused for another config (the train stage once left out the guidance scale that its
in-training evaluation ranks checkpoints by); a field in a key that the stage does not read recomputes for nothing."""

import dataclasses

import pytest

from components.config import AUTO, apply_overrides
from components.config.presets import get_preset
from pipelines.infra.tracking import Tracker
from pipelines.stages.context import StageContext
from pipelines.workflow.pipeline import CHAIN
from pipelines.workflow.stage_cache import stage_key

# the outputs the stages before each one would hand it (fixed: only the config changes here)
UPSTREAM = {"ingest": {"data_url": "/d", "fingerprint": "f", "large_url": "/d32", "large_fingerprint": "F"},
            "train": {k: {"run_id": k, "model_uri": f"models:/m-{k}"} for k in ("diffusion", "classifier",
                                                                                 "evaluator", "upsampler")},
            "sample": {"out": "/s", "npz": {}, "cell_runs": {}},
            "upsample": {"out": "/c", "npz": {}, "cell_runs": {}}, "evaluate": {"rows": []}}
NETWORKS = ("unet", "classifier", "evaluator", "diffusion", "train_diffusion", "train_classifier", "train_evaluator",
            "upsampler", "upsampler_diffusion", "train_upsampler")
INGEST_OPTIONS = ("resolution", "resize", "num_images", "splits", "validation_fraction", "limit")
# a cascade that names no cells upsamples the unguided and the champion cell: chosen by these
CHOOSE_CELLS = {("sample", "samplers"), ("sample", "guidance_methods"), ("sample", "guidance_intervals"),
                ("evaluate", "champion_sampler"), ("evaluate", "champion_method"), ("evaluate", "champion_scale")}


def expected(section: str, name: str, cascade: bool = False) -> set:
    """The stages whose own key a change of section.name changes (upstream outputs held fixed)."""
    chooses = {"upsample"} if cascade and (section, name) in CHOOSE_CELLS else set()
    if section == "data":
        return {"ingest"} if name in INGEST_OPTIONS else set()  # source: the request's; channels: only checked
    if section in NETWORKS:
        # the shapes source draws unet.num_classes classes (data.resolution is set, so unet.image_size is not read,
        # except in a cascade: ingest writes the base networks' size beside the large one)
        reads = {("unet", "num_classes")} | ({("unet", "image_size")} if cascade else set())
        return {"ingest", "train"} if (section, name) in reads else {"train"}
    if section == "sample":
        return {"sample"} | chooses
    if section == "evaluate":  # register challenges the champion with the policy and the intervals' replicates
        return ({"evaluate", "register"} if name.startswith("champion_") or name in ("promotion_level", "bootstrap")
                else {"evaluate"}) | chooses
    if section == "upsample":
        return {"upsample"}
    raise AssertionError(section)


def changed(value):
    """Another value of the same type (the keys hash values; validity is not the question here)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, tuple):
        return value + (value[-1] if value else 1,)
    if value is None:
        return 3
    raise AssertionError(type(value))


def keys(preset, tracker) -> dict:
    ctx = StageContext(preset, "shapes", "/work", "p", tracker, "e", "pipeline-run")
    upstream = UPSTREAM if preset.cascade else {k: v for k, v in UPSTREAM.items() if k != "upsample"}
    return {stage.name: stage_key(stage.name, stage.cache_inputs(ctx, upstream)) for stage in CHAIN
            if stage.applies(preset)}


@pytest.fixture(scope="module")
def tracker(tmp_path_factory):
    return Tracker(f"sqlite:///{tmp_path_factory.mktemp('keys') / 'mlflow.db'}")


def fields(preset):
    for section in (f.name for f in dataclasses.fields(preset)):
        values = getattr(preset, section)
        if dataclasses.is_dataclass(values):
            for f in dataclasses.fields(values):
                yield section, f.name, getattr(values, f.name)


@pytest.mark.parametrize("name", ["smoke", "smoke-cascade"])
def test_each_config_field_changes_exactly_the_keys_of_the_stages_that_read_it(tracker, name):
    preset = get_preset(name)
    base, wrong = keys(preset, tracker), []
    assert ("upsample" in base) == preset.cascade
    for section, field, value in fields(preset):
        if field == "init_from":  # a reference that must resolve: its pinned version in the key is test_warm_start's
            continue
        other = dataclasses.replace(preset, **{section: dataclasses.replace(getattr(preset, section),
                                                                            **{field: changed(value)})})
        moved = {stage for stage, key in keys(other, tracker).items() if key != base[stage]}
        want = expected(section, field, preset.cascade)
        if moved != want:
            wrong.append(f"{section}.{field}: changes {sorted(moved)}, expected {sorted(want)}")
    assert not wrong, "\n".join(wrong)


def test_a_cascade_keeps_the_other_presets_keys():
    """A preset without the cascade has the keys it had before the upsampler existed: its stages' inputs are the
    same (no empty cascade sections, no ingest option it does not use)."""
    from pipelines.stages import ingest

    ctx = StageContext(get_preset("smoke"), "shapes", "/work", "p", None, "e", "pipeline-run")
    assert "downsample_to" not in ingest.cache_inputs(ctx, {})["options"]


def test_the_train_key_covers_the_scale_in_training_evaluation_ranks_checkpoints_by(tracker):
    """With the diffusion model evaluated while training (keep_best ranks checkpoints by that FID), the guidance
    scale of the evaluation is part of the train stage's key: evaluate.champion_scale, or with auto the grid's
    middle scale; without evaluation while training neither is."""
    off = get_preset("smoke")
    on = apply_overrides(off, ["train_diffusion.eval_interval=10", "train_diffusion.keep_best=true"])
    for preset, reads in ((off, False), (on, True)):
        base = keys(preset, tracker)["train"]
        other = apply_overrides(preset, ["evaluate.champion_scale=0"])
        assert (keys(other, tracker)["train"] != base) == reads
    auto = apply_overrides(on, ["evaluate.champion_scale=auto", "sample.guidance_scales=0,1,2"])
    assert auto.evaluate.champion_scale == AUTO
    middle = keys(auto, tracker)["train"]
    assert keys(apply_overrides(auto, ["sample.guidance_scales=0,4,8"]), tracker)["train"] != middle  # middle: 1 -> 4
    assert keys(apply_overrides(auto, ["sample.guidance_scales=0,1,2,4"]), tracker)["train"] != middle  # 1 -> 2
    assert keys(apply_overrides(auto, ["sample.guidance_scales=0,1,16"]), tracker)["train"] == middle  # still 1


def test_a_cascades_keys_cover_the_large_data_and_what_the_stages_before_hand_on(tracker):
    """Upstream outputs in turn: the large images' fingerprint moves the train and evaluate keys (the upsampler trains
    on them, the cascade is evaluated against them), the upsampler's run the upsample key, the upsampled cells the
    evaluate key."""
    preset = get_preset("smoke-cascade")
    ctx = StageContext(preset, "shapes", "/work", "p", tracker, "e", "pipeline-run")

    def keys_with(**changed):
        upstream = {**UPSTREAM, **{stage: {**UPSTREAM[stage], **values} for stage, values in changed.items()}}
        return {s.name: stage_key(s.name, s.cache_inputs(ctx, upstream)) for s in CHAIN if s.applies(preset)}

    base = keys_with()
    for changed, moves in ((dict(ingest={"large_fingerprint": "G"}), {"train", "evaluate"}),
                           (dict(train={"upsampler": {"run_id": "other", "model_uri": "models:/m-x"}}), {"upsample"}),
                           (dict(upsample={"npz": {"ddim10/scale_0+U": "/c/x.npz"}}), {"evaluate"})):
        moved = {stage for stage, key in keys_with(**changed).items() if key != base[stage]}
        assert moved - {"register"} == moves, (changed, moved)  # register's key holds every train output
