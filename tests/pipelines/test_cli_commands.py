"""Every `adm` subcommand from the command line (subprocesses, exit status and output checked), the options of
`adm run` (--force, --no-register), a champion metric where higher is better, bare weights + --preset in `adm sample`,
and the MLflow Project's entry points. One tiny pipeline run (module fixture) supplies the dataset, the trained
networks, the samples and the registered champion that the commands work on; subprocesses that need Ray join the
session's local instance (RAY_ADDRESS) instead of starting their own."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow import MlflowClient

from components.checkpoint import CheckpointError
from components.config import UserError, apply_overrides
from components.config.presets import PRESET_BUILDERS, get_preset
from pipelines.cli.main import build_parser
from pipelines.infra.model_refs import resolve
from pipelines.infra.tracking import Tracker
from pipelines.stages.register import register
from pipelines.workflow.pipeline import Pipeline, stage_names
from pipelines.workflow.request import RunRequest
from tests.pipelines.test_run import RAY_INTERNALS

ROOT = Path(__file__).resolve().parents[2]
# Two steps per network, evaluator features only, one scale of four samples: the cheapest complete pipeline. Its
# champion metric is the samples' accuracy, where higher is better.
KINDS = ("diffusion", "classifier", "evaluator")
OVERRIDES = [*(f"train_{k}.{f}=2" for k in KINDS for f in ("steps", "save_interval")),
             "train_diffusion.sample_interval=0", "sample.guidance_scales=2", "sample.num_samples=4",
             "sample.batch_size=4", "sample.actor_cpus=1", "evaluate.features=evaluator", "evaluate.num_reference=16",
             "evaluate.champion_metric=accuracy"]
EXPERIMENT, PREFIX = "cli", "cli"


def _adm(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", *args]


def _run_args(workdir: Path, tracking_uri: str) -> list[str]:
    """`adm run` / `adm retrain` options that give the fixture pipeline's config, experiment and model names."""
    return ["--preset", "smoke", *(x for o in OVERRIDES for x in ("--override", o)), "--workdir", str(workdir),
            "--tracking-uri", tracking_uri, "--experiment", EXPERIMENT, "--model-prefix", PREFIX]


def run_all(commands: list[list[str]], env: dict, cwd: Path, timeout: float = 300) -> list:
    """Run commands at once (most of their time is imports, which overlap on two cores); CompletedProcess each."""
    procs = [subprocess.Popen(c, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in commands]
    done = []
    for command, proc in zip(commands, procs):
        out, err = proc.communicate(timeout=timeout)
        done.append(subprocess.CompletedProcess(command, proc.returncode, out, err))
    return done


def call(command: list[str], env: dict, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return run_all([command], env, cwd, timeout)[0]


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, f"{shlex.join(done.args)} exited {done.returncode}:\n{done.stdout[-3000:]}\n" \
                                 f"{done.stderr[-3000:]}"
    return done.stdout


def quiet(done: subprocess.CompletedProcess) -> str:
    """ok(), and none of Ray's or MLflow's internal logs on the console: a command that starts Ray keeps them off as
    `adm run` does (they stay in Ray's session folder; --verbose shows them)."""
    text = ok(done)
    leaked = [s for s in RAY_INTERNALS if s in text + done.stderr]
    assert not leaked, f"{shlex.join(done.args)} printed Ray's own logs {leaked}:\n{done.stdout[-2000:]}\n" \
                       f"{done.stderr[-2000:]}"
    return text


def stage_runs(client: MlflowClient, run_id: str) -> dict:
    run = client.get_run(run_id)
    found = client.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'")
    return {r.data.tags["adm.stage"]: r for r in found}


def pipeline_runs(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    return client.search_runs([experiment], "tags.`adm.pipeline` = 'smoke'")


@pytest.fixture(scope="module")
def env(ray_cluster, tmp_path_factory) -> dict:
    """The environment of the `adm` subprocesses: this checkout, the session's Ray instance, a private cache."""
    base = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    return {**base, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address,
            "ADM_CACHE_DIR": str(tmp_path_factory.mktemp("cache"))}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, ray_cluster, mlflow_server) -> dict:
    root = tmp_path_factory.mktemp("tiny")
    preset = apply_overrides(get_preset("smoke"), OVERRIDES)
    req = RunRequest(preset, workdir=str(root / "work"), tracking_uri=mlflow_server, experiment=EXPERIMENT,
                     model_prefix=PREFIX)
    result = Pipeline(req, log=lambda *_: None).execute()
    return {**result, "workdir": root / "work", "preset": preset}


# --- commands that only read ------------------------------------------------------------------------------------------
def test_presets_config_and_data_describe(tiny, env, tmp_path):
    adm = shutil.which("adm")
    assert adm, "the `adm` console script is not installed (pip install -e .)"
    data = tiny["ingest"]["data_url"]
    presets, config, describe = run_all([[adm, "presets"],
                                         _adm("config", "--preset", "smoke", "--override", "unet.model_channels=64"),
                                         _adm("data", "describe", data)], env, tmp_path)
    listed = [line.split()[0] for line in ok(presets).splitlines()]
    assert listed == sorted(PRESET_BUILDERS)
    assert get_preset("smoke").description in presets.stdout
    resolved = json.loads(ok(config))
    assert resolved["name"] == "smoke" and resolved["unet"]["model_channels"] == 64
    assert resolved["classifier"]["model_channels"] == get_preset("smoke").classifier.model_channels
    text = ok(describe)
    assert f"fingerprint  {tiny['ingest']['fingerprint']}" in text
    splits = {m.group(1): int(m.group(2)) for m in re.finditer(r"split (\w+) +(\d+) images", text)}
    assert sum(splits.values()) == 256 and 0 < splits["validation"] < splits["train"], splits  # some held out
    assert "resolution   16x16, 3 channel(s)" in text
    assert (Path(data) / "grid.png").is_file()
    assert list(tmp_path.iterdir()) == [], "reading commands wrote into their working folder"


def test_mlflow_project_entry_points_render_parse_and_dry_run(tiny, env, tmp_path):
    """Every MLproject entry point, rendered by MLflow itself with its defaults, is a valid `adm` command; the two that
    have --dry-run (main = adm run, train = adm train) run with it."""
    from mlflow.projects._project_spec import load_project

    project = load_project(str(ROOT / "mlflow_projects"))
    spec = yaml.safe_load((ROOT / "mlflow_projects" / "MLproject").read_text())
    assert set(spec["entry_points"]) == {"main", "ingest", "train", "sample", "evaluate"}
    required = {"sample": {"diffusion": "runs:/d", "classifier": "runs:/c"},
                "evaluate": {"reference": "ref-data", "evaluator": "runs:/e"},
                "train": {"preset": "smoke", "data": tiny["ingest"]["data_url"]}}
    handlers = {"main": "cmd_run", "ingest": "cmd_ingest", "train": "cmd_train", "sample": "cmd_sample",
                "evaluate": "cmd_evaluate"}
    commands = {}
    for name in spec["entry_points"]:
        entry = project.get_entry_point(name)
        argv = shlex.split(entry.compute_command(required.get(name, {}), str(tmp_path / "storage")))
        assert argv[0] == "adm", argv
        args = build_parser().parse_args(argv[1:])
        for param, declared in entry.parameters.items():
            value = required.get(name, {}).get(param, declared.default)
            assert str(value) in argv, f"entry point {name}: parameter {param} does not reach the command {argv}"
        assert args.func.__name__ == handlers[name]
        commands[name] = argv
    # with their defaults, ingest then train fit together: train's preset at the resolution ingest writes, where it
    # writes (the ingest entry once wrote 32 px for the 16 px default preset)
    defaults = {n: {k: v.default for k, v in project.get_entry_point(n).parameters.items()}
                for n in ("ingest", "train")}
    assert defaults["ingest"]["dest"] == defaults["train"]["data"]
    assert int(defaults["ingest"]["resolution"]) == get_preset(defaults["train"]["preset"]).data.resolution
    main, train = run_all([_adm(*commands["main"][1:], "--dry-run"), _adm(*commands["train"][1:], "--dry-run")],
                          env, tmp_path)
    plan = json.loads(ok(main))
    # the default work dir, made absolute where the command ran (Ray Train workers run in their own folders)
    assert plan["preset"]["name"] == "fashion-mnist" and plan["workdir"] == str(tmp_path.resolve() / "adm-work")
    assert set(plan["resources"]) == set(stage_names(get_preset("fashion-mnist")))
    plan = json.loads(ok(train))
    assert plan["data"] == tiny["ingest"]["data_url"] and set(plan["resources"]) == {"diffusion", "classifier",
                                                                                   "evaluator"}
    assert plan["resources"]["diffusion"]["steps"] == get_preset("smoke").train_diffusion.steps
    assert list(tmp_path.iterdir()) == [], "a dry run wrote files"


# --- adm run options --------------------------------------------------------------------------------------------------
def test_run_no_register_reuses_the_stages_and_registers_nothing(tiny, env, mlflow_server, tmp_path):
    client = MlflowClient(mlflow_server)
    versions = len(client.search_model_versions(f"name = '{PREFIX}-diffusion'"))
    out = ok(call(_adm("run", "--no-register", *_run_args(tmp_path / "work", mlflow_server)), env, tmp_path))
    run_id = out.split("pipeline run ")[-1].split()[0]
    assert client.get_run(run_id).info.status == "FINISHED"
    stages, before = stage_runs(client, run_id), stage_runs(client, tiny["run_id"])
    assert set(stages) == {"ingest", "train", "sample", "evaluate"}, "--no-register ran a register stage"
    assert {k: r.data.tags.get("adm.reused_from") for k, r in stages.items()} == {
        k: before[k].info.run_id for k in stages}
    assert len(client.search_model_versions(f"name = '{PREFIX}-diffusion'")) == versions
    assert client.get_model_version_by_alias(f"{PREFIX}-diffusion", "champion").version == \
        tiny["register"]["diffusion"]["version"]


def test_run_force_recomputes_a_stage_that_would_be_reused(tiny, env, mlflow_server, tmp_path):
    """`adm run --force` with the fixture's config: the ingest stage, finished earlier with the same key, runs again
    (no adm.reused_from; a new dataset in this run's work folder). The checkpoint folder of this work folder is a file,
    so the recomputed train stage stops before any worker starts and the test does not train three networks again
    (without --force, training is reused and never looks there: the run would finish)."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "checkpoints").write_text("not a folder")
    client = MlflowClient(mlflow_server)
    before = {r.info.run_id for r in pipeline_runs(client)}
    done = call(_adm("run", "--force", *_run_args(workdir, mlflow_server)), env, tmp_path)
    assert done.returncode == 2 and "is not writable" in done.stderr, done.stdout[-3000:] + done.stderr[-3000:]
    (forced,) = [r for r in pipeline_runs(client) if r.info.run_id not in before]
    assert forced.info.status == "FAILED"
    stages, earlier = stage_runs(client, forced.info.run_id), stage_runs(client, tiny["run_id"])
    assert set(stages) == {"ingest", "train"}
    assert not [k for k, r in stages.items() if "adm.reused_from" in r.data.tags]
    ingest = stages["ingest"]
    assert ingest.info.status == "FINISHED" and stages["train"].info.status == "FAILED"
    assert ingest.data.tags["adm.stage_key"] == earlier["ingest"].data.tags["adm.stage_key"]  # reusable, not reused
    outputs = json.loads(ingest.data.tags["adm.outputs"])
    assert outputs["data_url"].startswith(str(workdir / "data"))
    assert outputs["fingerprint"] == tiny["ingest"]["fingerprint"]
    assert (Path(outputs["data_url"]) / "manifest.json").is_file()


def test_champion_metric_where_higher_is_better(tiny, mlflow_server):
    """The fixture registered with champion_metric=accuracy; `champion` then moves only when accuracy increases."""
    client = MlflowClient(mlflow_server)
    registered = tiny["register"]["diffusion"]
    assert registered["metric"] == "accuracy" and registered["champion"]
    version = client.get_model_version(f"{PREFIX}-diffusion", registered["version"])
    assert float(version.tags["adm.accuracy_scale_2"]) == tiny["evaluate"]["rows"][0]["accuracy"] == registered["value"]

    tracker = Tracker(mlflow_server)
    scratch = client.create_run(client.get_experiment_by_name(EXPERIMENT).experiment_id).info.run_id
    # three candidates with model URIs of their own (one network registered twice would be one version)
    trained = tiny["train"]
    # (paired accuracy differences new - champion, resolved: the champion cell's challenge, given here)
    candidates = [(0.0, trained["diffusion"], trained["classifier"]),  # the first: champion
                  (-0.25, trained["classifier"], trained["evaluator"]),  # lower: kept out
                  (0.25, trained["evaluator"], trained["diffusion"])]  # higher: champion
    promoted, champions = [], []
    for delta, diffusion, classifier in candidates:
        paired = {"delta": delta, "lo": delta - 0.1, "hi": delta + 0.1, "resolved": True, "level": 0.9}
        out = register(tracker, scratch, tiny["preset"], "higher", {"diffusion": diffusion, "classifier": classifier},
                       [{"cell": "ddim10/scale_2", "sampler": "ddim10", "guidance_scale": 2.0,
                         "guidance_interval": "all", "accuracy": 0.5 + delta}], {"adm.pipeline_run": tiny["run_id"]},
                       lambda champion, paired=paired: paired, log=lambda *_: None)
        assert out["diffusion"]["champion"] == out["classifier"]["champion"]
        promoted.append(out["diffusion"]["champion"])
        champions.append([client.get_model_version_by_alias(f"higher-{k}", "champion").version
                          for k in ("diffusion", "classifier")])
    assert promoted == [True, False, True] and champions == [["1", "1"], ["1", "1"], ["3", "3"]]


# --- sample, evaluate, retrain ----------------------------------------------------------------------------------------
def test_sample_bare_weights_files_with_preset(tiny, env, mlflow_server, tmp_path):
    """`adm sample` with bare .safetensors files and --preset gives the very samples the pipeline drew from the same
    weights through runs:/ (same seeds, sampler, batch and one-thread actor)."""
    trained = {k: resolve(f"runs:/{tiny['train'][k]['run_id']}", k, tracking_uri=mlflow_server, workdir=tmp_path / k)
               for k in ("diffusion", "classifier")}
    bare = {}
    for kind, ref in trained.items():
        bare[kind] = tmp_path / f"{kind}.safetensors"
        shutil.copyfile(ref.weights, bare[kind])
    assert Path(trained["diffusion"].weights).name == "ema_0.99.safetensors"  # what the sample stage used
    with pytest.raises(UserError, match="bare weights file"):
        resolve(str(bare["diffusion"]), "diffusion")
    with pytest.raises(CheckpointError, match="does not fit the network"):
        resolve(str(bare["diffusion"]), "diffusion", "fashion-mnist").build()  # 3-channel weights, 1-channel preset
    out = tmp_path / "samples"
    text = quiet(call(_adm("sample", "--diffusion", str(bare["diffusion"]), "--classifier", str(bare["classifier"]),
                        "--preset", "smoke", "--scales", "2", "--num-samples", "4", "--batch-size", "4", "--sampler",
                        "ddim10", "--seed", "0", "--actor-cpus", "1", "--out", str(out), "--no-track"), env, tmp_path))
    (npz,) = out.glob("ddim10/scale_*/samples_4x16x16x3.npz")
    assert f"ddim10/scale_2: {npz}" in text
    ours, pipelines = np.load(npz), np.load(tiny["sample"]["npz"]["ddim10/scale_2"])
    assert ours["arr_0"].shape == (4, 16, 16, 3) and ours["arr_0"].std() > 0
    assert np.array_equal(ours["arr_0"], pipelines["arr_0"]) and np.array_equal(ours["arr_1"], pipelines["arr_1"])


def test_train_from_the_command_line(tiny, env, mlflow_server, tmp_path):
    """`adm train` on the pipeline's dataset: our progress and result lines only, a finished run on the server."""
    text = quiet(call(_adm("train", "evaluator", "--preset", "smoke", "--data", tiny["ingest"]["data_url"],
                           "--override", "train_evaluator.steps=5", "--override", "train_evaluator.log_interval=5",
                           "--storage", str(tmp_path / "storage"), "--tracking-uri", mlflow_server, "--experiment",
                           "cli-train"), env, tmp_path))
    assert "[evaluator] training: 5/5" in text and "evaluator: 5 steps, checkpoint" in text, text
    client = MlflowClient(mlflow_server)
    (run,) = client.search_runs([client.get_experiment_by_name("cli-train").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["adm.network"] == "evaluator"


def test_evaluate_from_the_command_line(tiny, env, mlflow_server, tmp_path):
    """`adm evaluate` on the pipeline's samples, reference and evaluator gives the pipeline's metrics, logged as one
    child run per scale of a new evaluate run."""
    evaluator = f"runs:/{tiny['train']['evaluator']['run_id']}"
    text = quiet(call(_adm("evaluate", "--samples", tiny["sample"]["out"], "--reference", tiny["ingest"]["data_url"],
                        "--evaluator", evaluator, "--features", "evaluator", "--num-reference", "16", "--batch-size",
                        "16", "--cache-dir", str(tmp_path / "cache"), "--tracking-uri", mlflow_server, "--experiment",
                        "cli-evaluate"), env, tmp_path))
    assert "| sampler | guidance_scale | network_evals | classifier_passes | seconds_per_sample | num_samples | " \
           "accuracy | evaluator_fid |" in text and "| ddim10 | 2 | 10 | 10 |" in text
    client = MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("cli-evaluate").experiment_id])
    (scale_run,) = [r for r in runs if "guidance_scale" in r.data.params]
    assert scale_run.data.params["guidance_scale"] == "2" and len(runs) == 2
    (row,) = tiny["evaluate"]["rows"]
    for key in ("evaluator_fid", "evaluator_precision", "evaluator_recall", "score", "accuracy"):
        assert scale_run.data.metrics[key] == pytest.approx(row[key], rel=1e-4, abs=1e-6), key


def test_retrain_from_the_command_line_skips_an_unchanged_champion(tiny, env, mlflow_server, tmp_path):
    client = MlflowClient(mlflow_server)
    before = len(pipeline_runs(client))
    out = ok(call(_adm("retrain", *_run_args(tiny["workdir"], mlflow_server)), env, tmp_path))
    version = tiny["register"]["diffusion"]["version"]
    assert f": skipped (data, code and config unchanged since champion {PREFIX}-diffusion v{version})" in out
    assert out.count(": skipped (") == 1, out  # said once (the command printed the decision a second time)
    (cycle,) = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id],
                                  "tags.`adm.retrain_cycle` = 'smoke'")
    assert cycle.data.tags["adm.decision"] == "skipped" and cycle.info.status == "FINISHED"
    assert len(pipeline_runs(client)) == before


# --- jobs and schedules -----------------------------------------------------------------------------------------------
def test_jobs_logs_list_stop_and_status(ray_cluster, env, tmp_path):
    """`adm jobs` against the session's Ray instance (its dashboard's Jobs API, with the token Ray wrote)."""
    from ray._private.worker import get_dashboard_url

    from pipelines.ops.jobs import connect

    address = f"http://{get_dashboard_url()}"
    client = connect(address)
    deadline = time.time() + 120
    while True:
        try:
            job = client.submit_job(entrypoint="echo adm-jobs-marker; sleep 300",
                                    submission_id=f"adm-test-{time.time_ns()}")
            break
        except RuntimeError as e:  # the dashboard's job agent of a fresh instance answers after a while
            if "No available agent" not in str(e):
                raise
            assert time.time() < deadline, "the job agent of the session's Ray instance never answered (does another " \
                                           "Ray instance on this machine hold its port, 52365?)"
            time.sleep(2)
    while "adm-jobs-marker" not in client.get_job_logs(job):
        assert time.time() < deadline, f"job {job} did not start: {client.get_job_status(job)}"
        time.sleep(0.5)
    logs, listed = run_all([_adm("jobs", "logs", job, "--address", address),
                            _adm("jobs", "list", "--address", address)], env, tmp_path)
    assert "adm-jobs-marker" in ok(logs)
    assert any(line.split("\t")[:2] == [job, "RUNNING"] for line in ok(listed).splitlines()), listed.stdout
    assert f"stop requested for job {job}" in ok(call(_adm("jobs", "stop", job, "--address", address), env, tmp_path))
    while str(client.get_job_status(job).value) != "STOPPED":
        assert time.time() < deadline, f"job {job} did not stop: {client.get_job_status(job)}"
        time.sleep(0.5)
    status = call(_adm("jobs", "status", job, "--address", address), env, tmp_path)
    assert ok(status).strip() == "STOPPED" and f"adm jobs logs {job} --address {address}" in status.stderr


def test_schedule_installs_into_a_crontab_file_and_a_unit_folder(env, tmp_path):
    retrain = ["--preset", "smoke", "--workdir", "/shared/adm", "--tracking-uri", "http://mlflow:5000"]
    crontab, units = tmp_path / "crontab", tmp_path / "units"
    crontab.write_text("MAILTO=ops\n0 1 * * * /usr/bin/backup\n")

    def cron(expr: str) -> list[str]:
        return _adm("schedule", "--cron", expr, "--apply", "--crontab-file", str(crontab), "--name", "nightly",
                    "--address", "http://head:8265", "--log", str(tmp_path / "retrain.log"), *retrain)

    first, systemd, kubernetes = run_all([
        cron("0 3 * * 0"),
        _adm("schedule", "--cron", "0 3 * * 0", "--target", "systemd", "--apply", "--no-enable", "--unit-dir",
             str(units), "--name", "nightly", "--address", "http://head:8265", *retrain),
        _adm("schedule", "--cron", "0 3 * * 0", "--target", "kubernetes", "--name", "adm-weekly", *retrain)],
        env, tmp_path)
    assert f"installed in {crontab}: 0 3 * * 0 " in ok(first)
    again = ok(call(cron("30 4 * * 1"), env, tmp_path))
    assert "installed in" in again
    lines = crontab.read_text().splitlines()
    assert lines[:2] == ["MAILTO=ops", "0 1 * * * /usr/bin/backup"] and len(lines) == 3  # replaced, others kept
    assert lines[2].startswith("30 4 * * 1 ") and lines[2].endswith("# adm-pipeline schedule nightly")
    command = shlex.split(lines[2][len("30 4 * * 1 "):].split(" >> ")[0])
    assert command[-len(retrain) - 1:] == ["retrain", *retrain]
    assert command[command.index("submit"):][:4] == ["submit", "--wait", "--address", "http://head:8265"]
    build_parser().parse_args(command[-len(retrain) - 1:])

    assert sorted(ok(systemd).split()) == sorted(["wrote", str(units / "adm-retrain-nightly.service"), "wrote",
                                                  str(units / "adm-retrain-nightly.timer")])
    assert "OnCalendar=Sun *-*-* 03:00:00" in (units / "adm-retrain-nightly.timer").read_text()
    service = (units / "adm-retrain-nightly.service").read_text()
    assert "submit --wait --address http://head:8265 retrain --preset smoke --workdir /shared/adm" in service
    manifest = yaml.safe_load(ok(kubernetes))
    assert (manifest["kind"], manifest["metadata"]["name"], manifest["spec"]["schedule"]) == (
        "RayCronJob", "adm-weekly", "0 3 * * 0")
    assert manifest["spec"]["jobTemplate"]["entrypoint"] == shlex.join(["adm", "retrain", *retrain])


def test_ingest_help_shows_defaults_but_not_none(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["data", "ingest", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: pad)" in text and "(default: automatic)" in text and "(default: None)" not in text
