"""`adm run` end to end (the smoke presets: smoke-cascade for the tree, cache and registry, with the upsampler's
trainer and the upsample stage) on a local Ray instance against a real MLflow tracking server."""

import dataclasses
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image
from safetensors.torch import load_file

from components.config import ConfigError, UserError, apply_overrides
from components.config.kinds import preset_kinds
from components.config.presets import get_preset
from components.training import Learner
from pipelines.cli.main import main as adm_main
from pipelines.infra.model_refs import resolve
from pipelines.infra.tracking import Tracker
from pipelines.stages.register import register
from pipelines.stages.upsample import UpsampleJob, run_upsampling
from pipelines.workflow.pipeline import Pipeline, stage_names
from pipelines.workflow.request import RunRequest, check_request
from tests.pipelines.test_train import assert_each_step_once

ROOT = Path(__file__).resolve().parents[2]


def children(client, experiment_id, run_id):
    return client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'")


def stage_runs(client, run_id):
    run = client.get_run(run_id)
    return {r.data.tags["adm.stage"]: r for r in children(client, run.info.experiment_id, run_id)}


def test_config_errors_before_any_stage(tmp_path):
    bad = apply_overrides(get_preset("smoke"), ["evaluate.champion_scale=3"])
    with pytest.raises(ConfigError, match="champion_scale"):
        check_request(RunRequest(bad, workdir=str(tmp_path)))
    # `adm run` itself refuses before any stage: no Ray, no tracking store (the default ./mlflow.db), no workdir
    done = subprocess.run(_adm("run", "--preset", "smoke", "--override", "evaluate.champion_scale=3", "--workdir",
                               "work"), env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "champion_scale" in done.stderr, done.stderr[-3000:]
    assert "Ray:" not in done.stdout and "MLflow tracking" not in done.stdout
    assert list(tmp_path.iterdir()) == [], "a refused run must not create files"


def test_dry_run_prints_config_and_resources_and_writes_nothing(tmp_path):
    overrides = ["--override", "train_diffusion.steps=450", "--override", "train_diffusion.ema_rate=0.995",
                 "--override", "train_diffusion.ema_warmup=off",
                 "--override", "sample.actor_cpus=1.5"]
    done = subprocess.run(_adm("run", "--preset", "smoke", "--dry-run", "--assume-cpus", "8", *overrides),
                          env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    plan = json.loads(done.stdout)
    assert plan["preset"]["name"] == "smoke" and plan["preset"]["train_diffusion"]["steps"] == 450
    train = plan["resources"]["train"]
    assert set(train) == {"diffusion", "classifier", "evaluator"}
    assert all(t["resources_per_worker"]["CPU"] == 2.5 for t in train.values())  # (8 - 0.5) shared by 3 trainers
    assert all(t["starts"] == "at once" for t in train.values())  # 3 workers, 8 CPUs: no trainer waits
    assert train["diffusion"]["ema_init_share"] == {"0.995": round(0.995 ** 450, 4)}
    assert "ema_init_share" not in train["classifier"]
    # smoke samples 2 shards: two actors of 1.5 CPUs (as overridden), 2 per GPU on GPU clusters
    assert plan["resources"]["sample"] == {"actors_per_gpu": 2, "on_cpu": {"actors": 2, "CPU_each": 1.5}}
    assert plan["resources"]["evaluate"]["on_cpu"] == {"actors_at_most": 4, "CPU_each": 1.875}  # (8 - 0.5) / 4
    assert set(plan["resources"]) == set(stage_names(get_preset("smoke")))
    assert list(tmp_path.iterdir()) == [], "a dry run must not create files"
    # a cascade: four trainers, all at once on 8 CPUs ((8 - 0.5) / 4 each), and the upsample stage's actors
    done = subprocess.run(_adm("run", "--preset", "smoke-cascade", "--dry-run", "--assume-cpus", "8"), env=_env(),
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    plan = json.loads(done.stdout)
    assert set(plan["resources"]) == set(stage_names(get_preset("smoke-cascade"))) and "upsample" in plan["resources"]
    train = plan["resources"]["train"]
    assert set(train) == {"diffusion", "classifier", "evaluator", "upsampler"}
    assert all(t["resources_per_worker"]["CPU"] == 1.88 and t["starts"] == "at once" for t in train.values())
    assert plan["resources"]["upsample"]["on_cpu"] == {"actors": 2, "CPU_each": 1.0}  # 2 shards, 1 CPU each


def test_smoke_pipeline_tree_cache_and_registry(tmp_path, ray_cluster, mlflow_server, monkeypatch):
    # the cascade preset with autoguidance's guide network: every stage of CHAIN and five trainers; every step logged,
    # so that the trainers' own records show when each trained; autoguidance beside classifier guidance, its guide
    # the guide network trained beside the diffusion model (sample.guide_from=trained; the step:N guide, the
    # diffusion model's own snapshot kept by its trainer, is test_sample's and test_mlflow_model's)
    cascade = get_preset("smoke-cascade")
    cascade = dataclasses.replace(cascade, guide=dataclasses.replace(cascade.unet, channel_mult=(1, 1)),
                                  train_guide=cascade.train_diffusion)
    preset = apply_overrides(cascade, ["train_diffusion.sample_interval=10",
                                       *[f"train_{k}.log_interval=1" for k in preset_kinds(cascade)],
                                       "train_diffusion.snapshot_steps=10", "sample.guide_from=trained",
                                       "sample.guidance_methods=classifier,auto"])
    name = preset.name
    req = RunRequest(preset, workdir=str(tmp_path / "work"), tracking_uri=mlflow_server, experiment="e2e")
    first = Pipeline(req, log=lambda *_: None).execute()
    client = MlflowClient(mlflow_server)
    check_trainers(client, tmp_path, preset, first["train"])
    parent = client.get_run(first["run_id"])
    assert parent.info.status == "FINISHED"
    stages = stage_runs(client, first["run_id"])
    assert set(stages) == set(stage_names(preset)) and all(r.info.status == "FINISHED" for r in stages.values())
    trainers = children(client, parent.info.experiment_id, stages["train"].info.run_id)
    assert sorted(r.data.tags["adm.network"] for r in trainers) == ["classifier", "diffusion", "evaluator", "guide",
                                                                    "upsampler"]
    scale_runs = children(client, parent.info.experiment_id, stages["sample"].info.run_id)
    assert sorted(float(r.data.params["guidance_scale"]) for r in scale_runs) == [0.0, 2.0, 2.0]
    auto = next(r for r in scale_runs if r.data.params["guidance_method"] == "auto")
    assert auto.data.metrics["guide_evals"] == auto.data.metrics["network_evals"] == 10
    plan = json.loads((Path(first["sample"]["out"]) / "plan.json").read_text())
    assert plan["guide"] == f"runs:/{first['train']['guide']['run_id']}"  # the guide network guided it
    for run in [parent, *stages.values(), *trainers, *scale_runs]:  # the evaluate stage logged cells' steps again
        assert_each_step_once(client, run.info.run_id)
    # MLflow's System metrics tab: each trainer's rank-0 machine, and each sampler actor's on the sampling run
    for run in trainers:
        assert "system/cpu_utilization_percentage" in run.data.metrics, run.data.tags["adm.network"]
    sampled = client.get_run(stages["sample"].info.run_id).data.metrics
    assert any(re.fullmatch(r"system/sampler-.+/cpu_utilization_percentage", k) for k in sampled), sorted(sampled)
    # the cell's coordinates as numbers too, so that the UI sorts and plots by them
    assert sorted(r.data.metrics["guidance_scale"] for r in scale_runs) == [0.0, 2.0, 2.0]
    assert all(r.data.metrics["num_samples"] == preset.sample.num_samples for r in scale_runs)
    for run in scale_runs:
        for key in ("fid", "sfid", "precision", "recall", "evaluator_fid", "score", "accuracy"):
            assert key in run.data.metrics, key
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["grid.png"]
    check_metric_ranges(first["evaluate"]["rows"], classes=4)
    # the grid is upscaled for the UI (16 px samples, 8 a row, plus the label margin), not a thumbnail
    grid = client.download_artifacts(scale_runs[0].info.run_id, "grid.png", str(tmp_path))
    assert Image.open(grid).width >= 512
    check_pipeline_run_ui(client, first, stages, trainers)
    # Ray's worker logs of the run (off the console) kept in the run folder and as artifacts: the trainers' worker
    # output is among them (Ray Train's "Started training worker group" line of its controller)
    logs = tmp_path / "work" / "runs" / first["run_id"] / "logs"
    worker_text = "".join(p.read_text() for p in logs.glob("ray/*/worker-*"))
    assert "training worker group" in worker_text, sorted(p.name for p in logs.rglob("*"))
    assert (logs / "driver.log").exists()
    assert {a.path for a in client.list_artifacts(first["run_id"], "logs")} >= {"logs/driver.log", "logs/ray"}
    # all cells' grids side by side on the pipeline run: a row per method (classifier, auto), a column per scale
    sheet = Image.open(client.download_artifacts(first["run_id"], "samples/all_cells.png", str(tmp_path)))
    assert sheet.size == (2 * Image.open(grid).width, 2 * Image.open(grid).height)  # a row per method
    plots = {a.path for a in client.list_artifacts(first["run_id"], "plots")}
    assert "plots/precision_vs_recall.png" in plots
    assert parent.inputs.dataset_inputs[0].dataset.digest == first["ingest"]["large_fingerprint"][:36]
    for kind in ("diffusion", "classifier", "upsampler", "guide"):  # the set, champion together
        champion = client.get_model_version_by_alias(f"adm-{name}-{kind}", "champion")
        assert champion.version == first["register"][kind]["version"]
    check_model_uris(tmp_path, mlflow_server, first["train"], name)
    check_cascade(client, tmp_path, preset, first, mlflow_server)
    monkeypatch.setenv("ADM_CACHE_DIR", str(tmp_path / "cache"))  # without a workdir: downloaded once, then reused
    refs = [resolve(f"models:/adm-{name}-diffusion@champion", "diffusion", tracking_uri=mlflow_server) for _ in "ab"]
    assert refs[0].weights == refs[1].weights and refs[0].weights.startswith(str(tmp_path / "cache"))
    assert [p.name.startswith(".") for p in (tmp_path / "cache" / "networks").iterdir()] == [False]

    lines = []
    second = Pipeline(req, log=lines.append).execute()
    assert sum("reused" in line for line in lines) == len(stage_names(preset))
    again = stage_runs(client, second["run_id"])
    assert again["train"].data.tags["adm.reused_from"] == stages["train"].info.run_id
    assert again["upsample"].data.tags["adm.reused_from"] == stages["upsample"].info.run_id
    assert second["evaluate"] == first["evaluate"]  # the grid's rows and the cascade's
    assert len(client.search_model_versions(f"name = 'adm-{name}-diffusion'")) == 1

    # the champion alias moves only when the paired difference from the champion is better, resolved: here the
    # challenge's answer is given (the retraining test runs the real one)
    scratch = client.create_run(parent.info.experiment_id).info.run_id
    tracker, trained = Tracker(mlflow_server), first["train"]

    def register_as_champ(networks, delta, lo, hi):
        paired = {"delta": delta, "lo": lo, "hi": hi, "resolved": not lo <= 0 <= hi, "level": 0.9}
        return register(tracker, scratch, preset, "champ", networks, [{**cell, "fid": 50.0 + delta}],
                        {"adm.pipeline_run": first["run_id"]}, lambda champion: paired, log=lambda *_: None)

    swapped = {"diffusion": trained["classifier"], "classifier": trained["evaluator"]}
    cell = {"cell": "ddim10/scale_2", "sampler": "ddim10", "guidance_scale": 2.0, "guidance_interval": "all"}
    pair = {k: trained[k] for k in ("diffusion", "classifier")}  # the set is what a run trained
    first_reg = register_as_champ(pair, 0.0, 0.0, 0.0)["diffusion"]
    assert first_reg["champion"] and "no champion yet" in first_reg["reason"]
    noise = register_as_champ(swapped, -4.0, -9.0, 1.0)["diffusion"]  # lower FID, but not resolved: kept
    assert not noise["champion"] and noise["reason"].startswith("not distinguishable: fid delta -4")
    worse = register_as_champ(swapped, 6.0, 2.0, 10.0)["diffusion"]  # resolved, in the wrong direction: kept
    assert not worse["champion"] and worse["reason"].startswith("not better")
    assert client.get_model_version_by_alias("champ-diffusion", "champion").version == "1"
    improved = {"diffusion": trained["evaluator"], "classifier": trained["diffusion"]}
    # (the same networks registered again are the same version, v2: its tags say the last decision and why)
    version = client.get_model_version("champ-diffusion", "2")
    assert version.tags["adm.decision"] == "kept" and "[+2, +10]" in version.tags["adm.reason"]
    assert register_as_champ(improved, -8.0, -12.0, -3.0)["diffusion"]["champion"]
    assert client.get_model_version_by_alias("champ-diffusion", "champion").version == "3"


def check_metric_ranges(rows: list, classes: int) -> None:
    """Every metric of every cell is a number in its range, inside its interval: a NaN FID or an accuracy of 7 is a
    broken evaluation, not a result."""
    for row in rows:
        for key in ("fid", "sfid", "evaluator_fid"):
            assert math.isfinite(row[key]) and row[key] >= 0, (row["cell"], key, row[key])
        for key in ("precision", "recall", "evaluator_precision", "evaluator_recall", "accuracy"):
            assert 0 <= row[key] <= 1, (row["cell"], key, row[key])
        assert 1 <= row["score"] <= classes and math.isfinite(row["kid"]) and row["kid_std"] >= 0, row["cell"]
        for key in ("fid", "precision", "recall", "accuracy", "kid", "score"):
            assert row[f"{key}_lo"] <= row[key] <= row[f"{key}_hi"], (row["cell"], key)


def check_pipeline_run_ui(client, first, stages, trainers):
    """What the MLflow UI shows of a pipeline run: metrics along the scale grid as curves, descriptions, the registered
    versions on the pipeline run and linked from the logged models, training runs with their own params only."""
    run_id = first["run_id"]
    parent = client.get_run(run_id)
    assert parent.data.params["scales_by_step"] == "0,2"  # which scale each step of the curves is
    rows = sorted((r for r in first["evaluate"]["rows"] if r["guidance_method"] == "classifier"),
                  key=lambda r: r["guidance_scale"])  # the champion's line: scale 0, then classifier guidance at 2
    for key in ("fid", "fid_lo", "fid_hi", "accuracy", "accuracy_lo", "recall_hi"):
        curve = sorted((m.step, m.value) for m in client.get_metric_history(run_id, f"{key}_by_scale"))
        assert curve == [(i, row[key]) for i, row in enumerate(rows)], key
    flat = [name for name in parent.data.metrics if re.search(r"_scale_\d", name)]
    assert flat == [], flat  # no flat one-value-per-scale metrics (one single-bar chart each)
    # the metrics users compare lead, not the grid's coordinates echoed as metrics
    assert not [n for n in parent.data.metrics if n.split("_by_scale")[0] in ("guidance_scale", "interval_hi",
                                                                             "cfg_scale", "network_evals")]
    assert {"evaluation/comparisons.json", "evaluation/metrics_by_cell.json"} <= {
        a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert parent.data.tags["mlflow.note.content"].startswith(f"# adm run {run_id}")
    assert parent.data.tags["mlflow.source.name"] == "adm" and parent.data.tags["mlflow.user"]
    # the grid's sections, not every network's (those are on the training runs; the whole config is an artifact)
    assert {name.split(".")[0] for name in parent.data.params} == {"preset", "source", "config_hash", "data",
                                                                   "diffusion", "sample", "evaluate",
                                                                   "scales_by_step"}
    name = parent.data.params["preset"]
    assert parent.data.params["sample.guidance_scales"] == "0.0,2.0" and name == "smoke-cascade"
    resolved = json.loads(Path(client.download_artifacts(run_id, "config/resolved.json")).read_text())
    assert resolved["preset"]["train_diffusion"]["steps"] == 20
    experiment = client.get_experiment(parent.info.experiment_id)  # the UI opens it on its runs, not GenAI overview
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert all(r.data.tags["mlflow.note.content"].startswith(f"The {name} stage") for name, r in stages.items())
    for kind in ("diffusion", "classifier", "upsampler", "guide"):
        version = first["register"][kind]["version"]
        assert parent.data.tags[f"adm.registered.{kind}"] == f"adm-{name}-{kind} v{version} (champion)"
        logged = client.get_logged_model(first["train"][kind]["model_uri"][len("models:/"):])
        listed = [(e["name"], str(e["version"])) for e in json.loads(logged.tags["mlflow.modelVersions"])]
        assert listed == [(f"adm-{name}-{kind}", version)]
    sections = {"diffusion": ("unet", "train_diffusion", "diffusion"),
                "classifier": ("classifier", "train_classifier", "diffusion"),
                "evaluator": ("evaluator", "train_evaluator", "diffusion"),
                "upsampler": ("upsampler", "train_upsampler", "upsampler_diffusion"),
                "guide": ("guide", "train_guide", "diffusion")}
    for run in trainers:
        kind = run.data.tags["adm.network"]
        prefixes = {name.split(".")[0] for name in run.data.params if "." in name}
        # the sections the trainer reads, and the speed settings it took (chosen by measurement or read back)
        assert prefixes == {*sections[kind], "speed"}, (kind, prefixes)
        assert run.data.params["speed.precision"] in ("fp32", "bf16"), run.data.params
        assert run.data.params["speed.source"] in ("measured", "cached", "set"), run.data.params
        # the base networks read the area downsample, the upsampler the large images
        fingerprint = first["ingest"]["large_fingerprint" if kind == "upsampler" else "fingerprint"]
        assert run.inputs.dataset_inputs[0].dataset.digest == fingerprint[:36]


def check_trainers(client, tmp_path, preset, trained):
    """The train stage's five Ray Train runs: tracked, concurrent as far as the 2 CPUs allow, checkpointed; the
    logged model predicts."""
    runs = {kind: client.get_run(trained[kind]["run_id"]) for kind in preset_kinds(preset)}
    history = {kind: client.get_metric_history(run.info.run_id, "loss") for kind, run in runs.items()}
    for kind, run in runs.items():
        assert run.info.status == "FINISHED" and run.data.params[f"train_{kind}.steps"] == "20"
        assert [m.step for m in history[kind]] == list(range(1, 21))
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")}
        assert "checkpoint/model.safetensors" in artifacts and "checkpoint/optimizer.pt" in artifacts
    # on 2 CPUs two one-thread trainers run at once (CpuSlots): the diffusion and classifier trainers start first; the
    # evaluator, third in order, only when one of them has finished, the upsampler, fourth, when a second one has
    # finished, and the guide, fifth, when a third has. Each run names the trainer whose slot it took (the gate's own
    # record, not wall-clock times): a finished trainer frees one slot, taken once. Their runs say how long they
    # waited (made at the stage's start).
    after = {kind: runs[kind].data.tags.get("adm.started_after") for kind in runs}
    assert after["evaluator"] in ("diffusion", "classifier"), after
    assert after["upsampler"] in ("diffusion", "classifier", "evaluator") and after["upsampler"] != after["evaluator"]
    assert after["guide"] in ("diffusion", "classifier", "evaluator", "upsampler"), after
    assert after["guide"] not in (after["evaluator"], after["upsampler"]), after
    for kind in ("evaluator", "upsampler", "guide"):
        assert "cpu_wait_s" in runs[kind].data.metrics, kind
    for kind in ("diffusion", "classifier"):
        assert after[kind] is None and "cpu_wait_s" not in runs[kind].data.metrics
    assert {a.path for a in client.list_artifacts(runs["upsampler"].info.run_id, "samples")} == {
        "samples/step_0000020.png"}  # its grid: low-resolution inputs, their upsampling, the originals
    losses = [m.value for m in history["diffusion"]]  # hybrid loss on shapes, 20 steps at lr 1e-3
    assert losses[-1] < losses[0]
    assert {a.path for a in client.list_artifacts(runs["diffusion"].info.run_id, "samples")} == {
        "samples/step_0000010.png", "samples/step_0000020.png"}
    assert any(k.startswith("top1_q") for k in runs["classifier"].data.metrics)  # per timestep quartile

    # the final checkpoint round-trips bit-exactly: storage -> Learner -> files equal to the MLflow artifact
    checkpoint = runs["diffusion"].data.tags["adm.checkpoint"]
    learner = Learner("diffusion", preset, torch.device("cpu"))
    learner.load(checkpoint)
    assert learner.step == 20
    logged = Path(client.download_artifacts(runs["diffusion"].info.run_id, "checkpoint", str(tmp_path / "dl")))
    for name in ("model.safetensors", "ema_0.99.safetensors"):
        a, b = load_file(str(logged / name)), load_file(str(Path(checkpoint) / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    learner.save(tmp_path / "again", config={})
    again = load_file(str(tmp_path / "again" / "model.safetensors"))
    assert all(torch.equal(again[k], v) for k, v in load_file(str(logged / "model.safetensors")).items())

    # the logged MLflow model (from code, safetensors inside) predicts with the EMA weights
    mlflow.set_tracking_uri(client.tracking_uri)
    model = mlflow.pyfunc.load_model(trained["diffusion"]["model_uri"])
    size = preset.unet.image_size
    x = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    t, y = np.array([3, 700]), np.array([0, 1])
    got = model.predict({"x_t": x, "t": t, "y": y})
    net = learner.net.eval()
    for p, e in zip(net.parameters(), learner.ema[0.99]):
        p.data.copy_(e)
    with torch.no_grad():
        want = net(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(y)).numpy()
    assert np.allclose(got, want, atol=1e-5)


def check_model_uris(tmp_path, tracking_uri, trained, name="smoke"):
    """models:/ URIs (alias, version, latest, logged model id) resolve to the weights of the training run."""
    def weights(uri, kind):
        ref = resolve(uri, kind, tracking_uri=tracking_uri, workdir=tmp_path / f"net-{len(list(tmp_path.iterdir()))}")
        return Path(ref.weights).read_bytes()

    for kind in [k for k in ("diffusion", "classifier", "upsampler", "guide") if k in trained]:
        expected = weights(f"runs:/{trained[kind]['run_id']}", kind)
        for uri in (f"models:/adm-{name}-{kind}@champion", f"models:/adm-{name}-{kind}/1",
                    f"models:/adm-{name}-{kind}/latest", trained[kind]["model_uri"]):
            assert weights(uri, kind) == expected, uri
    for bad in (f"models:/adm-{name}-diffusion@nobody", "models:/no-such-model/1", f"models:/adm-{name}-diffusion"):
        with pytest.raises(UserError, match="models:/"):
            resolve(bad, "diffusion", tracking_uri=tracking_uri, workdir=tmp_path / "bad")
    with pytest.raises(UserError, match="is a classifier checkpoint"):
        resolve(f"models:/adm-{name}-classifier@champion", "diffusion", tracking_uri=tracking_uri,
                workdir=tmp_path / "wrong-kind")
    if "guide" in trained:  # autoguidance's guide: a diffusion model or a guide network, the checkpoint says which
        assert resolve(f"models:/adm-{name}-guide@champion", ("diffusion", "guide"), tracking_uri=tracking_uri,
                       workdir=tmp_path / "guide").kind == "guide"


def check_cascade(client, tmp_path, preset, first, tracking_uri):
    """The cascade: the upsample stage's cells (the unguided and the champion cell, each upsampled and brought to the
    large size bilinearly) with their runs and metrics at the large size, the Table 6 section of the report, the
    upsampler listed by `adm models`; the same upsampling byte for byte with one actor (the stage ran two), and an
    interrupted upsampling resumed shard by shard."""
    up, name = first["upsample"], preset.name
    assert up["cells"] == ["ddim10/scale_0", "ddim10/scale_2"]
    assert sorted(up["npz"]) == sorted(f"{c}+{how}" for c in up["cells"] for how in ("U", "bilinear"))
    rows = {r["cell"]: r for r in first["evaluate"]["cascade_rows"]}
    assert set(rows) == set(up["npz"])
    assert all(r["resolution"] == 16 and {"fid", "sfid", "precision", "recall"} <= set(r) for r in rows.values())
    assert rows["ddim10/scale_2+U"]["network_evals"] == 20 and rows["ddim10/scale_2+bilinear"]["network_evals"] == 10
    for key, run_id in up["cell_runs"].items():  # the evaluate stage's metrics in the upsample stage's cell runs
        run = client.get_run(run_id)
        assert run.data.tags["adm.cell"] == key and run.data.metrics["fid"] == rows[key]["fid"]
    base = np.load(first["sample"]["npz"]["ddim10/scale_2"])
    made = np.load(up["npz"]["ddim10/scale_2+U"])
    assert made["arr_0"].shape == (16, 16, 16, 3) and np.array_equal(made["arr_1"], base["arr_1"])
    report = (tmp_path / "work" / "runs" / first["run_id"] / "report.md").read_text()
    assert "## The cascade at 16x16" in report
    assert "| guided base (classifier s=2) + U | ddim10/scale_2 | 10/10 |" in report
    out = io.StringIO()
    with redirect_stdout(out):
        assert adm_main(["models", "list", "--preset", name, "--tracking-uri", tracking_uri]) == 0
    assert f"adm-{name}-upsampler: 1 version(s)" in out.getvalue()
    assert f"adm-{name}-guide: 1 version(s)" in out.getvalue()

    config = dataclasses.replace(preset.upsample, cells=tuple(up["cells"]))
    job = UpsampleJob(samples=first["sample"]["out"], upsampler=f"runs:/{first['train']['upsampler']['run_id']}",
                      out=str(tmp_path / "one-actor"), config=config, actors=1, tracking_uri=tracking_uri)

    def same_bytes(result):
        return all(np.array_equal(np.load(result.npz[k])["arr_0"], np.load(up["npz"][k])["arr_0"]) for k in up["npz"])

    alone = run_upsampling(job, log=lambda *_: None)
    assert alone.computed_shards == 2 and same_bytes(alone)
    (tmp_path / "one-actor" / "shards" / "part-00001.npz").unlink()  # an interrupted job: one shard never written
    resumed = run_upsampling(job, log=lambda *_: None)
    assert (resumed.computed_shards, resumed.skipped_shards) == (1, 1) and same_bytes(resumed)


def _as_from_a_terminal() -> None:
    """In the child before exec: Ctrl-C's default disposition, as a command started from a terminal has. A test
    session started in the background of a non-interactive shell (`cmd &`) ignores SIGINT, its children inherit
    that, and Python then installs no KeyboardInterrupt handler: the interrupt below would do nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(2)
    pytest.fail(f"timed out waiting for {what}")


def _adm(*args) -> list:
    return [sys.executable, "-m", "pipelines.cli", *args]


def _env() -> dict:
    """The driver's environment: this checkout importable, no cluster or tracking server from the outside."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    return {**env, "PYTHONPATH": str(ROOT)}


def _started(log: Path) -> bool:
    """The driver has opened the tracking store (so its schema exists) and created its pipeline run."""
    return log.exists() and "pipeline run " in log.read_text()


OPEN_AT_ONCE = """
import os, sys, time
import mlflow  # imported before the barrier, so that the processes open the store together
open(sys.argv[2] + "." + str(os.getpid()), "w").close()
while not os.path.exists(sys.argv[2]):
    time.sleep(0.01)
from pipelines.infra.tracking import Tracker
print(Tracker(sys.argv[1]).start_run("adm", "at-once"))
"""


def test_new_sqlite_store_opened_by_three_drivers_at_once(tmp_path):
    """`adm run`s started together in one folder all create and migrate the same new ./mlflow.db: none may fail
    (without the store's file lock, the migrations raced and one driver died)."""
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_AT_ONCE, f"sqlite:///{tmp_path / 'mlflow.db'}", str(go)],
                              env=_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    _wait(lambda: len(list(tmp_path.glob("go.*"))) == 3, 120, "the three processes to import mlflow")
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-2000:] for _, err in outs]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("adm").experiment_id])
    assert sorted(r.info.run_id for r in runs) == sorted(out.strip() for out, _ in outs)


@pytest.mark.services  # starts its own services
def test_sigterm_ends_a_run_as_ctrl_c_does(tmp_path, request):
    """`timeout`, systemd and Kubernetes stop `adm run` with SIGTERM: it ends as Ctrl-C does, its runs KILLED and the
    resume hint naming the run, exit status 143 (it died by SIGABRT, 134, with no hint once Ray had started)."""
    log = tmp_path / "run.log"
    run = subprocess.Popen(_adm("run", "--preset", "smoke", "--override", "train_diffusion.steps=400",
                                "--override", "evaluate.features=evaluator"),
                           env=_env(), cwd=tmp_path, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    request.addfinalizer(run.kill)
    _wait(lambda: _started(log), 300, "the driver to create its run")
    run_id = log.read_text().split("pipeline run ", 1)[1].split()[0]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")

    def training():
        train = stage_runs(client, run_id).get("train")
        return train and children(client, train.info.experiment_id, train.info.run_id)

    _wait(training, 300, "the train stage to start its trainers")
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=120) == 143, log.read_text()[-3000:]
    text = log.read_text()
    assert "adm: terminated (SIGTERM)" in text and f"adm run --resume {run_id}" in text, text[-3000:]
    assert client.get_run(run_id).info.status == "KILLED"
    assert stage_runs(client, run_id)["train"].info.status == "KILLED"


@pytest.mark.services  # starts its own services
def test_interrupt_kill_and_resume_next_to_a_second_run(tmp_path, request):
    """`adm run` with the embedded defaults (its own local Ray, ./mlflow.db, ./adm-work) gets Ctrl-C during training
    (after the classifier and evaluator finished): its runs end KILLED, nothing half-written is left; `--resume`
    continues the diffusion trainer from its last checkpoint and retrains neither finished one; a SIGKILL after
    training leaves the run KILLED. Then a second `--resume` and a second `adm run` go at once in the same folder:
    the resume finishes without redoing finished stages, the second run (other sampling seed) reuses the first's
    training (and so its registered versions) and writes its own samples, metrics and report."""
    # the evaluator network's features only (Inception on CPU would double the time and adds nothing here); 60
    # diffusion steps with a checkpoint every 10 give the run time to be interrupted between checkpoints; half a CPU
    # per trainer, so that all three start at once (else on 2 CPUs the evaluator waits for a free CPU slot and the
    # diffusion trainer is done before it)
    steps = 60
    fast = ["--override", "evaluate.features=evaluator", "--override", "evaluate.champion_metric=evaluator_fid",
            "--override", f"train_diffusion.steps={steps}",
            *(x for k in ("diffusion", "classifier", "evaluator")
              for x in ("--override", f"train_{k}.cpus_per_worker=0.5"))]
    args = {1: ["--override", "sample.seed=1", *fast], 2: ["--override", "sample.seed=2", *fast]}
    logs = {n: tmp_path / f"run{n}.log" for n in args}
    runs = {1: subprocess.Popen(_adm("run", "--preset", "smoke", *args[1]), env=_env(), cwd=tmp_path,
                                stdout=open(logs[1], "w"), stderr=subprocess.STDOUT, preexec_fn=_as_from_a_terminal)}
    request.addfinalizer(lambda: [run.kill() for run in runs.values()])
    try:
        _wait(lambda: _started(logs[1]), 300, "the driver to create its run")
        client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        first_id = logs[1].read_text().split("pipeline run ", 1)[1].split()[0]

        def others_done_diffusion_past_first_checkpoint():
            train = stage_runs(client, first_id).get("train")
            found = {r.data.tags["adm.network"]: r for r in (children(client, train.info.experiment_id,
                                                                           train.info.run_id) if train else [])}
            if len(found) < 3 or any(found[k].info.status != "FINISHED" for k in ("classifier", "evaluator")):
                return None
            history = client.get_metric_history(found["diffusion"].info.run_id, "loss")
            return found if history and history[-1].step >= 15 else None

        first_trainers = _wait(others_done_diffusion_past_first_checkpoint, 600,
                               "the classifier and evaluator to finish and the diffusion trainer to pass its first "
                               "checkpoint")
        diffusion = first_trainers["diffusion"]
        runs[1].send_signal(signal.SIGINT)
        assert runs[1].wait(timeout=120) != 0
    finally:
        runs[1].kill()
    assert "interrupted: stopping the trainers" in logs[1].read_text()
    assert client.get_run(first_id).info.status == "KILLED"
    train = stage_runs(client, first_id)["train"]
    assert train.info.status == "KILLED"
    assert client.get_run(diffusion.info.run_id).info.status == "KILLED"
    first_ids = [first_id] + [r.info.run_id for r in children(client, train.info.experiment_id, train.info.run_id)]
    left = [p for p in (tmp_path / "adm-work").rglob("*.tmp*") if any(i in str(p) for i in first_ids)]
    assert not left, f"half-written files left behind: {left}"

    resume = _adm("run", "--resume", first_id)
    second = subprocess.Popen(resume, env=_env(), stdout=open(tmp_path / "resume1.log", "w"),
                              stderr=subprocess.STDOUT, cwd=tmp_path)

    def train_finished():
        train = stage_runs(client, first_id).get("train")
        return train if train and train.info.status == "FINISHED" else None

    try:
        train = _wait(train_finished, 600, "the resumed train stage to finish")
    finally:
        second.send_signal(signal.SIGKILL)
        second.wait()
    resumed = client.get_run(diffusion.info.run_id)  # the same MLflow run, continued
    assert resumed.info.status == "FINISHED"
    assert 10 <= int(resumed.data.tags["adm.resumed_from_step"]) < steps
    assert client.get_metric_history(diffusion.info.run_id, "loss")[-1].step == steps
    assert_each_step_once(client, diffusion.info.run_id)
    # one run per network: the diffusion run continued, the two trainers that had finished reused, not retrained
    after = {r.data.tags["adm.network"]: r.info.run_id for r in children(client, train.info.experiment_id,
                                                                         train.info.run_id)}
    assert after == {k: r.info.run_id for k, r in first_trainers.items()}
    assert "[classifier]" not in (tmp_path / "resume1.log").read_text()
    _wait(lambda: client.get_run(first_id).info.status == "KILLED", 60, "the sentinel to mark the run KILLED")

    # the second resume and a second run, at once in this folder (each starts its own local Ray)
    third = subprocess.Popen(resume, env=_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    runs[2] = subprocess.Popen(_adm("run", "--preset", "smoke", *args[2]), env=_env(), cwd=tmp_path,
                               stdout=open(logs[2], "w"), stderr=subprocess.STDOUT)
    out = third.communicate(timeout=900)[0]
    assert third.returncode == 0, out[-4000:]
    assert "[train] finished earlier in this run" in out
    assert stage_runs(client, first_id)["train"].info.run_id == train.info.run_id
    assert client.get_run(first_id).info.status == "FINISHED"
    stages = children(client, train.info.experiment_id, first_id)
    assert sorted(r.data.tags["adm.stage"] for r in stages) == ["evaluate", "ingest", "register", "sample", "train"]
    assert all(r.info.status == "FINISHED" for r in stages)

    assert runs[2].wait(timeout=900) == 0, logs[2].read_text()[-4000:]
    assert "[train] reused: same config and inputs as run " + train.info.run_id in logs[2].read_text()
    parents = client.search_runs([client.get_experiment_by_name("adm").experiment_id], "tags.`adm.pipeline` = 'smoke'")
    assert len(parents) == 2 and all(p.info.status == "FINISHED" for p in parents)
    samples, reports = [], []
    for parent in parents:
        stages = stage_runs(client, parent.info.run_id)
        scale_runs = children(client, parent.info.experiment_id, stages["sample"].info.run_id)
        npz = sorted(r.data.tags["adm.samples_npz"] for r in scale_runs)
        assert all(f"/runs/{parent.info.run_id}/" in url for url in npz)
        samples.append([np.load(tmp_path / url)["arr_0"] for url in npz])
        report = (tmp_path / "adm-work" / "runs" / parent.info.run_id / "report.md").read_text()
        timed = re.search(r"stage wall times: (.*)", report).group(1)
        assert [part.split()[0] for part in timed.split(", ")] == ["ingest", "train", "sample", "evaluate", "register"]
        reports.append(timed)
    assert any("train" in t and re.search(r"train \d+ s \(reused\)", t) for t in reports), reports
    assert any(not np.array_equal(a, b) for a, b in zip(*samples)), "the two runs' samples are the same files"
    # one trained network, one version: both runs' register stages name it
    (version,) = client.search_model_versions("name = 'adm-smoke-diffusion'")
    assert version.run_id == diffusion.info.run_id
    registered = [json.loads(stage_runs(client, p.info.run_id)["register"].data.tags["adm.outputs"]) for p in parents]
    # (as a str, the type MLflow declares and its server sends: this client on the sqlite file hands out an int)
    assert [r["diffusion"]["version"] for r in registered] == [str(version.version)] * 2


def test_mlflow_project_entry_point(tmp_path, mlflow_server):
    dest = tmp_path / "shapes"
    done = subprocess.run([sys.executable, "-m", "mlflow", "run", str(ROOT / "mlflow_projects"), "-e", "ingest",
                           "-P", "source=shapes", "-P", f"dest={dest}", "-P", "resolution=16", "-P", "num_images=32",
                           "--env-manager", "local", "--experiment-name", "projects"],
                          env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (dest / "manifest.json").exists()
    client = MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("projects").experiment_id])
    assert runs[0].info.status == "FINISHED" and runs[0].data.tags["mlflow.project.entryPoint"] == "ingest"



RAY_INTERNALS = ("logging_progress", "Running Dataset", "PreemptionWatcher", "worker processes have been started",
                 "RayDeprecationWarning", "exclude_resources", "tqdm is not installed", "Add type hints",
                 "Token authentication", "(TrainController", "(RayTrainWorker", "mlflow.store.db.utils",
                 "core_worker.cc")


@pytest.mark.services  # starts its own services
def test_console_of_a_run_in_a_log_file(tmp_path):
    """`adm run` writing to a file (as in CI): our lines only, each trainer's progress line once, a start and an end
    line per stage; none of Ray's or MLflow's internal logs (they stay in Ray's session folder)."""
    fast = ["--override", "evaluate.features=evaluator", "--override", "evaluate.champion_metric=evaluator_fid"]
    done = subprocess.run(_adm("run", "--preset", "smoke", *fast), env=_env(), cwd=tmp_path, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    lines = (done.stdout + done.stderr).splitlines()
    internal = [line for line in lines if any(mark in line for mark in RAY_INTERNALS)]
    assert internal == [], internal
    # the driver's C++ core worker warns about Ray Data's actor pools (constructor arguments in the object store): not
    # on the console, in the run's log folder
    (native,) = (tmp_path / "adm-work" / "runs").glob("*/logs/driver-native.log")
    assert "constructor arguments" in native.read_text()
    progress = [line for line in lines if re.match(r"\[(diffusion|classifier|evaluator)\] training: \d+/20", line)]
    assert {line.split("]")[0] for line in progress} == {"[diffusion", "[classifier", "[evaluator"}, lines
    assert len(progress) == len(set(progress)), progress
    assert all(any(line == f"[{k}] training: 20/20" or line.startswith(f"[{k}] training: 20/20 ") for line in progress)
               for k in ("diffusion", "classifier", "evaluator")), progress
    assert re.search(r"its page: http://127\.0\.0\.1:5000/#/experiments/\d+/runs/[0-9a-f]{32}"
                     r"\?workflowType=machine_learning\n.*adm ui --tracking-uri sqlite:///", done.stdout), \
        done.stdout[-1000:]
    for stage in stage_names(get_preset("smoke")):
        assert sum(line.startswith(f"[{stage}] started ") for line in lines) == 1, stage
        assert sum(line.startswith(f"[{stage}] finished in ") for line in lines) == 1, stage
