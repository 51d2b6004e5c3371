"""The cascade's pipeline parts that need no services: the data family (large images and their area downsample),
the upsample stage's plan, cells and checks before any actor, the chain with and without the stage, and the
Table 6 section with the paper's claims. The stage itself on Ray and MLflow is in test_run.py's pipeline test."""

import json

import numpy as np
import pytest
import torch

from components.config import UserError, apply_overrides, to_dict
from components.config.presets import get_preset
from components.images import DataError, downsample_area_uint8
from components.training import Learner
from components.uncertainty import MeanStatistic, ResampledCell, subsample
from pipelines.infra.dataset import dataset_at, derived_url, load_manifest, read_split
from pipelines.stages.ingest import derive_downsample, ingest
from pipelines.stages.sources import IngestOptions
from pipelines.stages.train import kind_data
from pipelines.stages.upsample import UpsampleJob, default_cells, plan_shards, validate
from pipelines.stages.upsample_outputs import cascade_pairs, cascade_section, claims
from pipelines.workflow.pipeline import chain
from pipelines.workflow.request import RunRequest


# --- the data family -------------------------------------------------------------------------------------------------
def test_ingest_writes_the_base_size_beside_the_large_images(tmp_path):
    url = str(tmp_path / "shapes")
    opts = IngestOptions(resolution=16, num_images=40, validation_fraction=0.2, downsample_to=(8,))
    large = ingest("shapes", url, opts, log=lambda *_: None)
    small = load_manifest(derived_url(url, 8))
    assert (small["resolution"], small["derived_from"]["fingerprint"]) == (8, large["fingerprint"])
    assert small["counts"] == large["counts"] and small["fingerprint"] != large["fingerprint"]
    for split in ("train", "validation"):
        images, labels = read_split(url, split)
        down, down_labels = read_split(derived_url(url, 8), split)
        assert np.array_equal(down, downsample_area_uint8(images, 8)) and np.array_equal(down_labels, labels)
    # either member finds the other; a size there is none of says how to make it
    assert dataset_at(url, 8) == derived_url(url, 8) and dataset_at(derived_url(url, 8), 16) == url
    assert dataset_at(url, 16) == url
    with pytest.raises(DataError, match="--downsample-to 4"):
        dataset_at(url, 4)
    with pytest.raises(DataError, match="the size must be below theirs and divide it"):
        derive_downsample(url, 5)
    assert derive_downsample(url, 8) == small  # kept, not rewritten
    preset = get_preset("smoke-cascade")
    assert kind_data(preset, ("diffusion", "upsampler"), derived_url(url, 8)) == {
        "diffusion": derived_url(url, 8), "upsampler": url}


# --- the stage's plan, cells, seeds ----------------------------------------------------------------------------------
def test_shards_cover_every_cell_and_sample_in_order():
    shards = plan_shards([3, 2], 2)
    assert shards == [[(0, 0), (0, 1)], [(0, 2), (1, 0)], [(1, 1)]]


def test_the_default_cells_are_the_unguided_and_the_champion_cell():
    smoke = get_preset("smoke-cascade")
    assert default_cells(smoke) == ("ddim10/scale_0", "ddim10/scale_2")
    assert default_cells(apply_overrides(smoke, ["evaluate.champion_scale=0"])) == ("ddim10/scale_0",)
    named = apply_overrides(smoke, ["upsample.cells=ddim10/scale_2"])
    assert default_cells(named) == ("ddim10/scale_2",)
    cfg = apply_overrides(smoke, ["train_diffusion.label_dropout=0.1", "sample.guidance_methods=cfg"])
    assert default_cells(cfg) == ("ddim10/scale_0", "ddim10/cfg_scale_2")


def test_the_chain_has_the_upsample_stage_only_for_a_cascade(tmp_path):
    plain = [s.name for s in chain(RunRequest(get_preset("smoke"), workdir=str(tmp_path)))]
    cascade = [s.name for s in chain(RunRequest(get_preset("smoke-cascade"), workdir=str(tmp_path)))]
    assert plain == ["ingest", "train", "sample", "evaluate", "register"]
    assert cascade == ["ingest", "train", "sample", "upsample", "evaluate", "register"]


# --- checks before any actor -----------------------------------------------------------------------------------------
def _checkpoint(folder, preset):
    learner = Learner("upsampler", preset, torch.device("cpu"))
    learner.save(folder, config={"kind": "upsampler", "preset": to_dict(preset), "step": 0})
    return str(folder)


def _samples(folder, shape=(4, 8, 8, 3), labels=True, key="ddim10/scale_0"):
    cell = folder / key
    cell.mkdir(parents=True)
    arrays = {"arr_0": np.zeros(shape, np.uint8), **({"arr_1": np.arange(shape[0]) % 4} if labels else {})}
    np.savez(cell / f"samples_{'x'.join(map(str, shape))}.npz", **arrays)
    (cell / "cell.json").write_text(json.dumps({"cell": key, "sampler": "ddim10", "guidance_scale": 0.0}))
    return str(folder)


def test_upsample_jobs_are_checked_before_any_actor(tmp_path):
    preset = get_preset("smoke-cascade")
    plain = _checkpoint(tmp_path / "plain", preset)
    ok = UpsampleJob(samples=_samples(tmp_path / "ok"), upsampler=plain, out=str(tmp_path / "out"))
    ref, base = validate(ok)
    assert list(base) == ["ddim10/scale_0"] and ref.config.image_size == 16
    cases = [
        (UpsampleJob(samples=_samples(tmp_path / "big", (4, 16, 16, 3)), upsampler=plain, out=str(tmp_path / "o1")),
         r"are \(16, 16, 3\) \(HWC\) but the upsampler .* takes 8x8x3"),
        (UpsampleJob(samples=_samples(tmp_path / "bare", labels=False), upsampler=plain, out=str(tmp_path / "o2")),
         "carry no labels"),
        (UpsampleJob(samples=ok.samples, upsampler=plain, out=str(tmp_path / "o3"),
                     config=apply_overrides(preset, ["upsample.cells=ddim10/scale_2"]).upsample),
         "ddim10/scale_2 not in"),
        (UpsampleJob(samples=ok.samples, upsampler=plain, out=str(tmp_path / "o4"),
                     config=apply_overrides(preset, ["train_upsampler.low_res_noise=0.3",
                                                     "upsample.low_res_noise=0.1"]).upsample),
         "trained without conditioning augmentation"),
        (UpsampleJob(samples=ok.samples, upsampler=plain, out=str(tmp_path / "o5"),
                     config=apply_overrides(preset, ["upsample.sampler=ddim2000"]).upsample),
         "does not fit"),
    ]
    for job, match in cases:
        with pytest.raises(UserError, match=match):
            validate(job)
    # a bare .pt of the upsampler's layout (what the released 64_256_upsampler.pt is for imagenet256-cascade), read
    # with weights_only=True, with its preset
    pt = tmp_path / "upsampler.pt"
    torch.save(Learner("upsampler", preset, torch.device("cpu")).net.state_dict(), pt)
    ref, _ = validate(UpsampleJob(samples=ok.samples, upsampler=str(pt), preset="smoke-cascade",
                                  out=str(tmp_path / "o7")))
    assert ref.weights == str(pt) and ref.build().input_blocks[0][0].in_channels == 6
    with pytest.raises(UserError, match="has no upsampler network"):  # a bare .pt needs a cascade preset
        validate(UpsampleJob(samples=ok.samples, upsampler=str(tmp_path / "plain" / "model.safetensors"),
                             preset="smoke", out=str(tmp_path / "o6")))


# --- the table and the claims ----------------------------------------------------------------------------------------
def _row(cell, stage, scale, fid, precision, recall):
    return {"cell": f"{cell}+{'U' if stage == 'base+U' else 'bilinear'}", "base_cell": cell, "stage": stage,
            "guidance_scale": scale, "guidance_method": "classifier", "base_steps": 25,
            "upsampler_steps": 25 if stage == "base+U" else 0, "resolution": 32, "num_samples": 200, "fid": fid,
            "sfid": fid * 2, "precision": precision, "recall": recall, "network_evals": 50.0}


PAPER_LIKE = [_row("ddim25/scale_0", "base", 0.0, 60, 0.40, 0.60), _row("ddim25/scale_0", "base+U", 0.0, 40, 0.55,
                                                                         0.61),
              _row("ddim25/scale_4", "base", 4.0, 50, 0.55, 0.40), _row("ddim25/scale_4", "base+U", 4.0, 30, 0.70,
                                                                         0.41)]


def _cells(rows, n=200, seed=0):
    """A ResampledCell per row whose per-sample values average about to the row's metrics (0/1 for precision and
    recall, the FID plus noise of unit spread), on one set of subsamples. The cells share their random numbers per
    sample, as the evaluation's cells share seeds and labels: they pair like them."""
    rng, sub = np.random.default_rng(seed), subsample(n, 200, seed=0)
    shared = {m: rng.random(n) for m in ("precision", "recall")}
    noise = rng.standard_normal(n)
    cells = {}
    for r in rows:
        values = {m: (u < r[m]).astype(float) for m, u in shared.items()}
        values["fid"] = r["fid"] + noise + 0.1 * rng.standard_normal(n)
        cells[r["cell"]] = ResampledCell({m: MeanStatistic(v) for m, v in values.items()}, sub)
    return cells


def _verdicts(lines):
    return [line.split(":")[1].split("(")[0].strip() for line in lines]


def test_the_paper_claims_are_judged_on_paired_differences():
    cells = _cells(PAPER_LIKE)
    pairs = cascade_pairs(PAPER_LIKE, cells, 0.9)
    # each difference is A minus B of the cells' own estimates (a direct computation), with the claim's direction
    for p in pairs:
        assert p["delta"] == pytest.approx(cells[p["a"]].statistics[p["metric"]].estimate
                                           - cells[p["b"]].statistics[p["metric"]].estimate)
    guidance = {p["metric"]: p for p in pairs if p["claim"] == "guidance"}
    assert guidance["precision"]["a"] == "ddim25/scale_4+bilinear" and guidance["precision"]["b"] == \
        "ddim25/scale_0+bilinear" and guidance["recall"]["expects"] == "down"
    assert {p["b"] for p in pairs if p["claim"] == "complement"} == {"ddim25/scale_0+bilinear", "ddim25/scale_0+U",
                                                                     "ddim25/scale_4+bilinear"}
    assert _verdicts(claims(PAPER_LIKE, pairs)) == ["held"] * 4
    # upsampling that costs recall: resolved the other way
    worse = [dict(r, recall=r["recall"] - 0.2) if r["stage"] == "base+U" else r for r in PAPER_LIKE]
    lines = claims(worse, cascade_pairs(worse, _cells(worse), 0.9))
    assert lines[1].startswith("upsampling raises precision and keeps recall (unguided): did not hold")
    assert "base + U - base: recall -0.2" in lines[1] and "resolved" in lines[1]
    # differences far inside the noise of 200 samples are not resolved: neither held nor refuted
    close = [dict(r, precision=0.5, recall=0.5, fid=50.0) for r in PAPER_LIKE]
    assert _verdicts(claims(close, cascade_pairs(close, _cells(close, seed=1), 0.9)))[0] == "not resolved"
    assert claims(PAPER_LIKE[:2], []) == ["(the claims need the unguided and a guided cell, each with and without "
                                          "the upsampler)"]
    assert claims(PAPER_LIKE, []) == ["(the claims need the cells' intervals: evaluate.bootstrap > 0)"]
    assert cascade_pairs(PAPER_LIKE, {}, 0.9) == []  # no resampled cells (bootstrap 0)


def test_the_cascade_section_is_the_table_6_shape():
    rows = [dict(r, fid_lo=r["fid"] - 5, fid_hi=r["fid"] + 5) for r in reversed(PAPER_LIKE)]
    text = cascade_section([{"cell": "ddim25/scale_0", "fid": 70.0}], rows, cascade_pairs(rows, _cells(rows), 0.9))
    table = [line for line in text.splitlines() if line.startswith("| ") and "system" not in line]
    assert [line.split(" | ")[0] for line in table] == ["| base", "| base + U", "| guided base (classifier s=4)",
                                                       "| guided base (classifier s=4) + U"]
    assert table[1].split(" | ")[2] == "25/25" and table[0].split(" | ")[2] == "25/-"
    assert table[0].endswith("| 70 |") and table[2].endswith("| - |")  # the base cell's FID at its own size
    assert "## The cascade at 32x32" in text and text.count("- ") >= 4
    assert table[0].split(" | ")[6] == "60 [55, 65]"  # each metric with its interval
    assert "on paired differences at 90%" in text and text.count(": held (") == 4
