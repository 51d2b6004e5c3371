"""The evaluation stage on a real local Ray instance and a real MLflow server, with the real Inception weights."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from components.config import EvaluateConfig
from components.config.presets import get_preset
from components.training import Learner
from pipelines.infra.dataset import read_split
from pipelines.infra.storage import npz_bytes, write_bytes_atomic
from pipelines.stages.evaluate import EvaluateJob, EvaluationError, run_evaluation
from pipelines.stages.ingest import ingest
from pipelines.stages.report import format_table, log_evaluation
from pipelines.stages.sources import IngestOptions

QUIET = {"log": lambda *_: None}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    data = str(root / "shapes")
    ingest("shapes", data, IngestOptions(resolution=16, num_images=48, splits=("train", "test")), **QUIET)
    preset = get_preset("smoke")
    learner = Learner("evaluator", preset, torch.device("cpu"), seed=5)
    learner.save(root / "evaluator", config={"kind": "evaluator", "preset": dataclasses.asdict(preset)})
    images, labels = read_split(data, "test", limit=12)
    noise = np.random.default_rng(0).integers(0, 256, size=(12, 16, 16, 3), dtype=np.uint8)
    samples = root / "samples"
    write_bytes_atomic(str(samples / "scale_0" / "samples_12x16x16x3.npz"), npz_bytes(arr_0=images, arr_1=labels))
    write_bytes_atomic(str(samples / "scale_2" / "samples_12x16x16x3.npz"), npz_bytes(arr_0=noise, arr_1=labels))
    return {"root": root, "data": data, "evaluator": str(root / "evaluator"), "samples": str(samples)}


def _job(setup, cache, **kw):
    """A job whose reference cache is `cache` (each test its own, so that no test finds another's cache file)."""
    fields = {f.name for f in dataclasses.fields(EvaluateConfig)}
    settings = dict(num_reference=16, batch_size=8)
    settings.update({k: kw.pop(k) for k in list(kw) if k in fields})
    base = dict(samples=setup["samples"], reference=setup["data"], evaluator=setup["evaluator"], cache_dir=str(cache))
    return EvaluateJob(**{**base, **kw}, config=EvaluateConfig(**settings))


def test_metrics_per_scale_cache_and_mlflow(setup, tmp_path, ray_cluster, mlflow_server):
    cache = tmp_path / "cache"
    lines = []
    result = run_evaluation(_job(setup, cache), log=lines.append)
    real, noise = result.rows
    assert (real["guidance_scale"], noise["guidance_scale"]) == (0.0, 2.0) and real["num_samples"] == 12
    for key in ("fid", "sfid", "precision", "recall", "evaluator_fid", "evaluator_precision", "score", "accuracy"):
        assert np.isfinite(real[key]) and np.isfinite(noise[key]), key
    assert real["fid"] < noise["fid"] and real["precision"] > noise["precision"]
    assert any("featurizing 40 images" in line for line in lines)  # 2 x 12 samples + 16 references

    assert sorted(p.name.split("-")[0] for p in (cache / "reference").iterdir()) == ["evaluator", "inception"]

    lines.clear()
    again = run_evaluation(_job(setup, cache), log=lines.append)
    assert sum("from cache" in line for line in lines) == 2 and any("featurizing 24 images" in line for line in lines)
    assert again.rows[0]["fid"] == pytest.approx(real["fid"], rel=1e-6)

    lines.clear()  # bf16 Inception features are never scored against fp32 reference statistics, nor the reverse
    bf16 = run_evaluation(_job(setup, cache, inception_precision="bf16"), log=lines.append)
    assert sum("from cache" in line for line in lines) == 1 and any("featurizing 40 images" in line for line in lines)
    assert bf16.rows[0]["fid"] != real["fid"] and len(list((cache / "reference").iterdir())) == 3

    job = _job(setup, cache, tracking_uri=mlflow_server, experiment="evaluate-test")
    log_evaluation(job, again, log=lambda *_: None)
    client = MlflowClient(mlflow_server)
    assert sorted(again.run_ids) == ["scale_0", "scale_2"]  # the layout before the grid of cells still reads
    under = client.search_runs([client.get_experiment_by_name("evaluate-test").experiment_id],
                               f"tags.`mlflow.parentRunId` = '{again.parent_run_id}'")
    assert sorted(r.info.run_id for r in under) == sorted(again.run_ids.values())
    for key, run_id in again.run_ids.items():
        run = client.get_run(run_id)
        assert run.data.tags["mlflow.parentRunId"] == again.parent_run_id
        assert run.data.params["guidance_scale"] == key.removeprefix("scale_")
        assert run.data.metrics["fid"] == pytest.approx(again.rows[0 if key == "scale_0" else 1]["fid"])
    files = {f.path for f in client.list_artifacts(again.parent_run_id, "plots")}
    assert {"plots/fid_vs_scale.png", "plots/precision_vs_recall.png", "plots/score_vs_fid.png"} <= files
    logged = {f.path for f in client.list_artifacts(again.parent_run_id, "evaluation")}
    assert {"evaluation/metrics_by_cell.json", "evaluation/comparisons.json"} <= logged
    assert "| guidance_scale | num_samples | fid |" in format_table(again.rows)


def test_cells_are_discovered_with_their_coordinates_in_grid_order(tmp_path):
    """`adm sample`'s layout: <sampler>/scale_<s>[_sigma_<lo>-<hi>]/ with cell.json; ordered by sampler, then scale as a
    number (16 after 2), then interval."""
    from pipelines.stages.evaluate_inputs import discover_samples

    images = np.zeros((5, 16, 16, 3), np.uint8)
    cells = [("ddim25", 16.0, "all", 0.0), ("ddim25", 2.0, "0.3:5", 0.3), ("ddim25", 2.0, "all", 0.0),
             ("dpm++2m-10", 0.0, "all", 0.0)]
    for sampler, scale, interval, lo in cells:
        key = f"{sampler}/scale_{scale:g}" + ("" if interval == "all" else "_sigma_0.3-5")
        write_bytes_atomic(str(tmp_path / key / "samples_5x16x16x3.npz"), npz_bytes(arr_0=images))
        record = {"cell": key, "sampler": sampler, "guidance_scale": scale, "guidance_interval": interval,
                  "interval_lo": lo, "network_evals": 25.0}
        write_bytes_atomic(str(tmp_path / key / "cell.json"), json.dumps(record).encode())
    found = discover_samples(str(tmp_path))
    assert list(found) == ["ddim25/scale_2", "ddim25/scale_2_sigma_0.3-5", "ddim25/scale_16", "dpm++2m-10/scale_0"]
    assert found["ddim25/scale_2_sigma_0.3-5"].cell["interval_lo"] == 0.3
    assert found["dpm++2m-10/scale_0"].total == 5


def test_precomputed_reference_statistics(setup, tmp_path, ray_cluster):
    from pipelines.infra.storage import read_npz
    from pipelines.stages.evaluate import reference_stats

    cache = tmp_path / "cache"
    images, _ = read_split(setup["data"], "train", limit=16)
    ref = tmp_path / "ref_images.npz"
    write_bytes_atomic(str(ref), npz_bytes(arr_0=images))
    from_images = run_evaluation(_job(setup, cache, reference=str(ref), features="inception"), **QUIET)
    cached = list((cache / "reference").iterdir())
    assert len(cached) == 1 and cached[0].name.startswith("inception-"), "the NPZ reference was cached, only it"
    stats = read_npz(str(cached[0]))
    assert len(stats["inception.features"]) == 16
    assert set(reference_stats({"inception.pool": stats["inception.features"]})) >= {"inception.mu"}
    only = tmp_path / "ref_stats.npz"
    write_bytes_atomic(str(only), npz_bytes(mu=stats["inception.mu"], sigma=stats["inception.sigma"],
                                            mu_s=stats["inception.mu_s"], sigma_s=stats["inception.sigma_s"]))
    from_stats = run_evaluation(_job(setup, cache, reference=str(only), features="inception"), **QUIET)
    assert from_stats.rows[0]["fid"] == pytest.approx(from_images.rows[0]["fid"], rel=1e-6)
    assert "precision" not in from_stats.rows[0]  # needs reference images
    with pytest.raises(EvaluationError, match="only Inception statistics"):
        run_evaluation(_job(setup, cache, reference=str(only), features="both"), **QUIET)


def test_bad_inputs_fail_before_featurizing(setup, tmp_path, actor_count):
    def folder(name, **arrays):
        write_bytes_atomic(str(tmp_path / name / "scale_1" / "samples_x.npz"), npz_bytes(**arrays))
        return str(tmp_path / name)

    cases = [
        (folder("float", arr_0=np.zeros((8, 16, 16, 3), np.float32)), "uint8"),
        (folder("nchw", arr_0=np.zeros((8, 3, 16, 16), np.uint8)), "uint8"),
        (folder("few", arr_0=np.zeros((3, 16, 16, 3), np.uint8)), "at least 4"),
        (folder("res", arr_0=np.zeros((8, 32, 32, 3), np.uint8)), "same resolution"),
        (str(tmp_path / "empty"), "holds no <sampler>/scale_<s>"),
        (str(tmp_path / "missing"), "missing does not exist"),
    ]
    (tmp_path / "empty").mkdir()
    cache, actors = tmp_path / "cache", actor_count()
    for samples, message in cases:
        with pytest.raises(EvaluationError, match=message):
            run_evaluation(_job(setup, cache, samples=samples), **QUIET)
    with pytest.raises(EvaluationError, match="needs --evaluator"):
        run_evaluation(_job(setup, cache, evaluator=None), **QUIET)
    # nothing featurized: no Ray actor ever started, no reference statistics cached
    assert actor_count() == actors and not cache.exists()
