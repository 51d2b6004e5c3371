"""Bad input is refused up front (issue 20): each case runs `adm` on one mistake a user can make and asserts exit
status 2, a message naming the offending input, no traceback, nothing written (no tracking store, folder, temporary
or cache file anywhere under the test's folder) and no Ray instance started (ray.is_initialized() stays false and
Ray's session folder, pointed into the test's folder by RAY_TMPDIR, never appears).

Most cases call `pipelines.cli.main.main` in this process (fast); a few run the `adm` command in a subprocess, where
exit status and traceback printing are the process's own. Dead services are local ports with nothing listening; the
per-test timeout catches a command that waits out network retries (the old code took minutes or never returned).
"""

import importlib.util
import json
import os
import pickle
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import fsspec
import pytest
import torch

from components.config.presets import get_preset
from components.networks import build_classifier, build_unet
from pipelines.cli.main import main
from pipelines.ops.jobs import connect_error

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[2]


_HELD = []  # sockets bound and never listening: their ports refuse connections, and no other process can take them


def dead_port() -> int:
    """A local port with nothing listening, held until the tests end (a released one could be taken by another
    process before the refusal is checked)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    _HELD.append(s)
    return s.getsockname()[1]


def free_port() -> int:
    """A local port free for a server of this test to listen on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sandbox:
    """A test's folder: the working directory `cwd`, Ray's temp dir and adm's network cache all inside `root`."""

    def __init__(self, root: Path):
        self.root, self.cwd = root, root / "cwd"
        self.cwd.mkdir()

    def files(self) -> set:
        return {str(p.relative_to(self.root)) for p in self.root.rglob("*")}

    def env(self) -> dict:
        return {**os.environ, "RAY_TMPDIR": str(self.root / "ray"), "ADM_CACHE_DIR": str(self.root / "cache"),
                "PYTHONPATH": str(ROOT)}


@pytest.fixture
def box(tmp_path, monkeypatch):
    box = Sandbox(tmp_path)
    monkeypatch.chdir(box.cwd)
    for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "ADM_TRACEBACK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "ray"))
    monkeypatch.setenv("ADM_CACHE_DIR", str(tmp_path / "cache"))
    return box


def ray_running() -> bool:
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


def refused(box: Sandbox, capsys, argv: list[str], *names: str) -> str:
    """Run `adm ARGV` in this process; assert the refusal (see the module docstring); return what it printed."""
    before = box.files()
    try:
        status = main(argv)
    except SystemExit as e:  # argparse's own errors
        status = e.code
    printed = capsys.readouterr()
    text = printed.out + printed.err
    assert status == 2, f"exit status {status}: {text[-3000:]}"
    for name in names:
        assert name in text, f"{name!r} is not named in: {text[-3000:]}"
    assert "Traceback" not in text, text[-3000:]
    assert box.files() == before, f"written: {sorted(box.files() - before)}"
    assert not ray_running() and not (box.root / "ray").exists(), "a Ray instance was started"
    return text


def refused_in_subprocess(box: Sandbox, argv: list[str], *names: str, env: dict | None = None) -> str:
    before = box.files()
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", *argv], cwd=box.cwd, env=env or box.env(),
                          capture_output=True, text=True, timeout=120)
    text = done.stdout + done.stderr
    assert done.returncode == 2, f"exit status {done.returncode}: {text[-3000:]}"
    for name in names:
        assert name in text, f"{name!r} is not named in: {text[-3000:]}"
    assert "Traceback" not in text, text[-3000:]
    assert box.files() == before and not (box.root / "ray").exists(), f"written: {sorted(box.files() - before)}"
    return text


SMOKE = ["--preset", "smoke"]


# --- the resolved config: every section, every range, checked before any stage ----------------------------------------
@pytest.mark.parametrize("command, override, names", [
    (["run", "--dry-run"], "sample.guidance_scales=-1,1", ["sample.guidance_scales", "-1"]),
    (["config"], "sample.guidance_scales=1,,2", ["'1,,2'", "empty item"]),
    (["run", "--dry-run"], "sample.sampler=ddim0", ["ddim0"]),
    (["config"], "sample.sampler=abc", ["'abc'"]),
    (["run"], "sample.sampler=0", ["sample.sampler", "'0'"]),
    (["run", "--dry-run"], "train_diffusion.ema_rate=1.5", ["train_diffusion.ema_rate", "1.5"]),
    (["run", "--dry-run"], "train_diffusion.lr=-1", ["train_diffusion.lr=-1"]),
    (["run"], "train_classifier.steps=0", ["train_classifier.steps=0"]),
    (["config"], "train_evaluator.batch_size=-1", ["train_evaluator.batch_size=-1"]),
    (["config"], "train_diffusion.lr=nan", ["train_diffusion.lr", "'nan' is not a finite number"]),
    (["run", "--dry-run"], "train_diffusion.steps=nan", ["train_diffusion.steps", "'nan' is not a whole number"]),
    (["config"], "train_diffusion.lr=1e999", ["'1e999' is not a finite number"]),
    (["config"], "sample.actor_cpus=-1", ["sample.actor_cpus=-1"]),
    (["run", "--dry-run"], "train_diffusion.num_workers=0", ["train_diffusion.num_workers=0"]),
    (["retrain"], "evaluate.champion_scale=3", ["evaluate.champion_scale=3"]),
    (["run", "--dry-run"], "train_classifier.eval_interval=-1", ["train_classifier.eval_interval=-1", "0: off"]),
    (["run"], "train_diffusion.keep_best=true", ["train_diffusion.keep_best needs", "train_diffusion.eval_interval"]),
    (["config"], "data.validation_fraction=1", ["data.validation_fraction=1.0 must be in [0, 1)"]),
    (["run", "--dry-run"], "data.limit=-1", ["data.limit=-1 must be a whole number >= 0", "0: every image"]),
    (["config"], "train_diffusion.ema_warmup=maybe", ["train_diffusion.ema_warmup='maybe'", "auto, on, off"]),
    (["run", "--dry-run"], "train_classifier.ema_warmup_power=0", ["train_classifier.ema_warmup_power=0.0"]),
    (["run"], "train_diffusion.init_from=no/such/checkpoint", ["train_diffusion.init_from='no/such/checkpoint'",
                                                              "does not exist"]),
    (["retrain"], "train_classifier.init_from=champion", ["train_classifier.init_from='champion'",
                                                         "no registered model 'adm-smoke-classifier'"]),
])
def test_config_value_out_of_range(box, capsys, command, override, names):
    refused(box, capsys, [*command, *SMOKE, "--override", override], *names)


def test_every_config_problem_is_reported_at_once(box, capsys):
    overrides = ["train_diffusion.lr=-1", "train_classifier.steps=0", "sample.guidance_scales=0,-2",
                 "sample.sampler=abc", "unet.dropout=1.5"]
    text = refused(box, capsys, ["run", "--dry-run", *SMOKE, *(f"--override={o}" for o in overrides)],
                   "5 problems", "train_diffusion.lr", "train_classifier.steps", "guidance_scales", "'abc'",
                   "unet.dropout")
    assert "champion_scale" not in text  # follows from the bad scales; not a problem of its own


def test_network_that_cannot_run(box, capsys):
    """17 px halves to 8 by rounding down, and the UNet's way back up cannot undo that: the size is refused, and only
    the resolutions really reached are offered for attention."""
    text = refused(box, capsys, ["config", *SMOKE, "--override", "unet.image_size=17", "--override",
                                 "unet.attention_resolutions=17,8"], "unet.image_size=17", "not a multiple of 2")
    assert "reachable resolutions are [17]" in text


def test_empty_scale_list_is_a_scale_problem(box, capsys):
    text = refused(box, capsys, ["config", *SMOKE, "--override", "sample.guidance_scales="], "sample.guidance_scales")
    assert "champion_scale" not in text


def test_submit_checks_the_config_before_reaching_the_cluster(box, capsys):
    refused(box, capsys, ["submit", "--address", f"http://127.0.0.1:{dead_port()}", *SMOKE, "--workdir",
                          "/shared/adm", "--tracking-uri", "http://mlflow:5000", "--override", "train_diffusion.lr=0"],
            "train_diffusion.lr=0")


def test_schedule_checks_the_retrain_config(box, capsys):
    refused(box, capsys, ["schedule", "--cron", "0 3 * * 0", *SMOKE, "--workdir", "/shared/adm", "--tracking-uri",
                          "http://mlflow:5000", "--override", "sample.sampler=abc"], "'abc'")


def test_config_error_in_a_subprocess(box):
    """The `adm` process itself: status 2, the message, no traceback, no Ray session folder."""
    refused_in_subprocess(box, ["run", *SMOKE, "--override", "sample.sampler=ddim0"], "ddim0")


def test_debug_shows_the_traceback(box):
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "--debug", "config", *SMOKE, "--override",
                           "train_diffusion.lr=-1"], cwd=box.cwd, env=box.env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "Traceback" in done.stderr and "train_diffusion.lr=-1" in done.stderr


# --- weights files: opened and checked on the driver, before any actor ------------------------------------------------
class RunsCode:
    def __reduce__(self):
        return (print, ("code from the weights file ran",))


def _random_bytes(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 8)


def _pickled_code(path: Path) -> None:
    with open(path, "wb") as f:
        pickle.dump({"x": RunsCode()}, f)


def _other_architecture(path: Path) -> None:
    torch.save(build_classifier(get_preset("smoke").classifier).state_dict(), path)


@pytest.mark.parametrize("name, write, says", [
    ("random.pt", _random_bytes, "is not a plain state dict of tensors"),
    ("code.pt", _pickled_code, "is not a plain state dict of tensors"),
    ("random.safetensors", _random_bytes, "is not a readable safetensors file"),
    ("classifier.pt", _other_architecture, "does not fit the network"),
])
def test_bad_weights_file(box, capsys, name, write, says):
    write(box.cwd / name)
    text = refused(box, capsys, ["sample", "--diffusion", name, *SMOKE, "--scales", "0", "--num-samples", "4",
                                 "--out", "samples", "--no-track"], name, says)
    assert "weights_only" not in text and "code from the weights file ran" not in text


# --- tracking stores and services ----------------------------------------------------------------------------------
def test_resume_never_creates_a_store(box, capsys):
    refused(box, capsys, ["run", "--resume", "0123abcd"], "0123abcd", str(box.cwd / "mlflow.db"))


def test_runs_uri_lookup_never_creates_a_store(box, capsys):
    refused(box, capsys, ["sample", "--diffusion", "runs:/0123abcd", "--scales", "0", "--num-samples", "4", "--out",
                          "samples", "--no-track"], "0123abcd", "mlflow.db")


def test_sqlite_store_in_a_missing_folder(box, capsys):
    refused(box, capsys, ["run", "--dry-run", *SMOKE, "--tracking-uri", f"sqlite:///{box.root}/missing/mlflow.db"],
            f"{box.root}/missing", "does not exist")


def test_unknown_tracking_scheme(box, capsys):
    refused(box, capsys, ["run", *SMOKE, "--tracking-uri", "mlfow://127.0.0.1:5000"], "mlfow://127.0.0.1:5000",
            "unknown scheme")


@pytest.mark.parametrize("command", [["run", *SMOKE], ["run", "--resume", "0123abcd"], ["retrain", *SMOKE],
                                     ["sample", "--diffusion", "runs:/0123abcd", "--scales", "0", "--out", "s"]])
def test_mlflow_server_down(box, capsys, monkeypatch, command):
    server = f"http://127.0.0.1:{dead_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    refused(box, capsys, command, server, "unreachable", "mlflow server")


@pytest.mark.services  # a fault of the MLflow server: each command waits out adm's bounded retries (15-30 s)
@pytest.mark.timeout(150)  # MLflow's own retry policy would wait about 4 minutes before giving up
@pytest.mark.parametrize("command", [["run", "--resume", "0123abcd"], ["models", "list"],
                                     ["sample", "--diffusion", "runs:/0123abcd", "--scales", "0", "--out", "s"]])
def test_mlflow_server_gone_after_the_probe(box, capsys, monkeypatch, command):
    """A server that answered the first probe and then went away (here: recorded as probed, nothing listening):
    every later MLflow call gives up after bounded retries, and adm says which server and what to do."""
    from pipelines.infra import tracking_checks

    server = f"http://127.0.0.1:{dead_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    monkeypatch.setattr(tracking_checks, "_REACHABLE", {server})
    for name in tracking_checks.HTTP_RETRIES:
        monkeypatch.delenv(name, raising=False)  # restored after the test: adm sets them in this process
    text = refused(box, capsys, command, server, "stopped answering", "start it again", "--resume")
    assert "unreachable" not in text  # not the probe's refusal: the later call's


def test_ray_address_with_nothing_listening(box, capsys, monkeypatch):
    address = f"127.0.0.1:{dead_port()}"
    monkeypatch.setenv("RAY_ADDRESS", address)
    refused(box, capsys, ["run", *SMOKE], f"RAY_ADDRESS={address}", "ray start --head")


def test_ray_address_in_a_subprocess(box):
    """Ray's own client waits without limit for a GCS that is not there; the probe answers in seconds."""
    address = f"127.0.0.1:{dead_port()}"
    refused_in_subprocess(box, ["run", *SMOKE], f"RAY_ADDRESS={address}", env={**box.env(), "RAY_ADDRESS": address})


def test_work_dir_and_source_folder_on_this_machine(box, capsys):
    """A work dir that cannot be made and a --data folder that is not there: refused before Ray or any stage starts
    (they used to fail inside the ingest stage, after Ray had started and two MLflow runs were made)."""
    refused(box, capsys, ["run", *SMOKE, "--workdir", "/proc/adm-no-such"], "/proc/adm-no-such", "not writable",
            "--workdir")
    missing = str(box.root / "no-such-folder")
    refused(box, capsys, ["run", *SMOKE, "--data", missing], missing, "does not exist")
    refused(box, capsys, ["run", "--dry-run", *SMOKE, "--data", f"fashion-mnist:{missing}"], missing, "does not exist")


def test_resume_with_flags_it_would_ignore_or_a_run_inside_the_pipeline_run(box, capsys):
    """--resume continues with the recorded config: flags that would change it are refused, not ignored; a stage's
    or trainer's run id names the pipeline run to pass."""
    refused(box, capsys, ["run", "--resume", "abc", "--override", "sample.guidance_scales=0,1", "--workdir", "w"],
            "--resume abc", "--override, --workdir")
    refused(box, capsys, ["run", "--dry-run", *SMOKE, "--assume-cpus", "-2"], "--assume-cpus -2")
    from pipelines.infra.tracking import Tracker

    uri = f"sqlite:///{box.root / 'mlflow.db'}"
    tracker = Tracker(uri)
    pipeline = tracker.start_run("e", "adm-run-smoke", tags={"adm.pipeline": "smoke"})
    stage = tracker.start_run("e", "train", pipeline, tags={"adm.stage": "train"})
    trainer = tracker.start_run("e", "train-diffusion", stage, tags={"adm.network": "diffusion"})
    for child in (stage, trainer):
        refused(box, capsys, ["run", "--resume", child, "--tracking-uri", uri], f"run {child} is a run inside "
                f"pipeline run {pipeline}", f"--resume {pipeline}")


def test_train_dry_run_checks_what_train_checks_before_workers(box, capsys):
    """adm train --dry-run refuses what adm train refuses before any worker starts (it printed a plan for both)."""
    from pipelines.stages.ingest import ingest
    from pipelines.stages.sources import IngestOptions

    data = str(box.root / "shapes")
    ingest("shapes", data, IngestOptions(resolution=16, num_images=16), log=lambda *_: None)
    dry = ["train", "diffusion", "--data", data, *SMOKE, "--dry-run"]
    missing = str(box.root / "none.safetensors")
    refused(box, capsys, [*dry, "--override", f"train_diffusion.init_from={missing}"], "train_diffusion.init_from",
            missing)
    refused(box, capsys, [*dry, "--assume-cpus", "0"], "--assume-cpus 0")


def test_work_dir_on_a_filesystem_without_its_driver(box, capsys):
    if importlib.util.find_spec("s3fs") is None:
        url = "s3://adm-bucket/work"
    else:  # the same path through fsspec: a protocol whose driver package is not installed
        fsspec.register_implementation("admtest", "adm_no_such_package.FileSystem", errtxt="Install the driver")
        url = "admtest://bucket/work"
    refused(box, capsys, ["run", "--dry-run", *SMOKE, "--workdir", url], url, "not installed")


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """A real S3-compatible server (moto's, on 127.0.0.1) with one bucket, `adm-bucket`; yields its endpoint URL."""
    pytest.importorskip("s3fs", reason="s3fs (the dev extra) is the driver of s3:// URLs")
    port = free_port()
    log = open(tmp_path_factory.mktemp("s3") / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                            stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(urllib.request.Request(f"{endpoint}/adm-bucket", method="PUT"), timeout=2).close()
            break
        except OSError:
            assert proc.poll() is None and time.time() < deadline, "moto's S3 server did not start"
            time.sleep(0.5)
    yield endpoint
    proc.terminate()
    proc.wait(timeout=20)
    log.close()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """No credentials from this machine's files or metadata service; s3:// goes to the test's server."""
    import s3fs

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {"AWS_ENDPOINT_URL": s3_server, "AWS_EC2_METADATA_DISABLED": "true",
                        "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()  # an instance keeps the credentials it was made with
    yield monkeypatch
    s3fs.S3FileSystem.clear_instance_cache()


def _with_credentials(env) -> None:
    env.setenv("AWS_ACCESS_KEY_ID", "test")
    env.setenv("AWS_SECRET_ACCESS_KEY", "test")


def test_work_dir_in_an_object_store_without_credentials(box, capsys, s3_env):
    url = "s3://adm-bucket/work"
    refused(box, capsys, ["run", "--dry-run", *SMOKE, "--workdir", url], url, "no credentials", "AWS_ACCESS_KEY_ID")


def test_work_dir_in_a_bucket_that_does_not_exist(box, capsys, s3_env):
    _with_credentials(s3_env)
    url = "s3://no-such-bucket/work"
    refused(box, capsys, ["run", "--dry-run", *SMOKE, "--workdir", url], url, "'no-such-bucket' does not exist")


def test_object_store_endpoint_with_nothing_listening(box, capsys, s3_env):
    _with_credentials(s3_env)
    s3_env.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{dead_port()}")
    url = "s3://adm-bucket/data"
    refused(box, capsys, ["data", "ingest", "shapes", url, "--num-images", "8"], url, "the endpoint", "network")


def test_object_store_gone_after_the_probe(box, capsys, s3_env):
    """A store that answered the probe and then went away (here: the probe recorded as passed, nothing listening at
    the endpoint): the driver's own error (botocore's, not an OSError) is named, with the fix, without a traceback."""
    from pipelines.infra import services

    _with_credentials(s3_env)
    s3_env.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{dead_port()}")
    s3_env.setattr(services, "probe_object_store", lambda url, what: None)
    refused(box, capsys, ["data", "ingest", "shapes", "s3://adm-bucket/data", "--num-images", "8"],
            "the object store failed", "EndpointConnectionError", "--resume")


def test_work_dir_in_an_object_store_with_credentials_passes_the_probe(box, capsys, s3_env):
    _with_credentials(s3_env)
    assert main(["run", "--dry-run", *SMOKE, "--workdir", "s3://adm-bucket/work"]) == 0
    assert json.loads(capsys.readouterr().out)["workdir"] == "s3://adm-bucket/work"


# --- files: the user's path, never a temporary name ------------------------------------------------------------------
def test_unwritable_destination_is_named(box, capsys):
    (box.cwd / "a-file").write_text("not a folder")
    text = refused(box, capsys, ["data", "ingest", "shapes", "a-file/dataset", "--num-images", "8"], "a-file/dataset")
    assert ".tmp-" not in text


def test_unwritable_sample_output_is_named_before_any_actor(box, capsys):
    (box.cwd / "a-file").write_text("not a folder")
    torch.save(build_unet(get_preset("smoke").unet).state_dict(), box.cwd / "unet.pt")
    text = refused(box, capsys, ["sample", "--diffusion", "unet.pt", *SMOKE, "--scales", "0", "--out",
                                 "a-file/samples", "--no-track"], "a-file/samples", "not writable")
    assert "probe" not in text


def test_class_folder_name_that_is_not_utf8(box, capsys):
    from PIL import Image

    for name in (b"cats", b"d\xe9gats"):  # Latin-1 bytes: no UTF-8 text
        folder = os.path.join(bytes(box.cwd), b"images", name)
        os.makedirs(folder)
        Image.new("RGB", (8, 8)).save(os.path.join(folder, b"a.png"))
    refused(box, capsys, ["data", "ingest", "images", "dataset", "--resolution", "8"], "class folder", "gats",
            "rename the folder")


def test_ray_dashboard_with_nothing_listening(box, capsys):
    address = f"http://127.0.0.1:{dead_port()}"
    refused(box, capsys, ["jobs", "list", "--address", address], address, "ray start --head")


def test_dashboard_errors_read_status_codes_not_port_numbers():
    """A refused connection to a dashboard whose port holds the digits 403 or 401 is not a token problem (CI drew
    ports 40363 and 56403 and was told the token was rejected); a real 403 / 401 still is."""
    url = "http://127.0.0.1:56403"
    refused_text = ConnectionError(f"Failed to connect to Ray at address: {url}. (HTTPConnectionPool(host='127.0.0.1', "
                                   "port=56403): Max retries exceeded; [Errno 111] Connection refused)")
    assert "ray start --head" in str(connect_error(url, refused_text))
    assert "ray start --head" in str(connect_error("http://10.0.4.1:40163", ConnectionError("http://10.0.4.1:40163")))
    assert "rejected the token" in str(connect_error(url, RuntimeError("Request failed with status code 403")))
    assert "requires a token" in str(connect_error(url, RuntimeError("status 401: Unauthorized")))


def test_damaged_manifest(box, capsys):
    (box.cwd / "dataset").mkdir()
    (box.cwd / "dataset" / "manifest.json").write_text('{"counts": ')
    refused(box, capsys, ["data", "describe", "dataset"], "dataset/manifest.json", "damaged")


@pytest.mark.parametrize("option, value", [("--resolution", "-5"), ("--rows-per-shard", "0"), ("--num-images", "0")])
def test_ingest_sizes_out_of_range(box, capsys, option, value):
    refused(box, capsys, ["data", "ingest", "shapes", "dataset", option, value], f"{option} {value}")


def test_failed_kubectl_apply_names_the_command(box, capsys, monkeypatch):
    tools = box.root / "bin"
    tools.mkdir()
    (tools / "kubectl").write_text("#!/bin/sh\necho 'error: no cluster' >&2\nexit 1\n")
    (tools / "kubectl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")
    refused(box, capsys, ["schedule", "--cron", "0 3 * * 0", "--target", "kubernetes", "--apply", *SMOKE,
                          "--workdir", "/shared/adm", "--tracking-uri", "http://mlflow:5000"], "kubectl apply")


def test_sqlite_store_keeps_its_artifacts_beside_its_file(box):
    """The companion of the store cases: a store that is written to keeps its artifacts next to its file, so two
    stores started from one folder never share ./mlruns."""
    from pipelines.infra.tracking import Tracker

    (box.root / "stores").mkdir()
    tracker = Tracker(f"sqlite:///{box.root}/stores/a.db")
    run_id = tracker.start_run("adm", "artifacts")
    tracker.log_text(run_id, "hello", "note.txt")
    assert (box.root / "stores" / "a-artifacts" / "adm" / run_id / "artifacts" / "note.txt").read_text() == "hello"
    assert not (box.cwd / "mlruns").exists()
