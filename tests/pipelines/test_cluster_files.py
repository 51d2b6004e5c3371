"""cluster/ definitions (schema-level), `adm schedule` output and `adm submit` input checks; no cluster needed."""

import shlex
from pathlib import Path

import pytest
import ray
import yaml

from pipelines.cli.main import build_parser, main
from pipelines.ops.jobs import JobError, connect, job_command
from pipelines.ops.schedule import (
    ScheduleError,
    crontab_line,
    kubernetes_manifest,
    on_calendar,
    parse_cron,
    systemd_units,
)

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
RAY = ray.__version__


def load(rel: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / rel).read_text()) if d]


def images(node) -> list[str]:
    """Every container image named anywhere in a manifest."""
    if isinstance(node, dict):
        found = [node["image"]] if isinstance(node.get("image"), str) else []
        return found + [i for v in node.values() for i in images(v)]
    if isinstance(node, list):
        return [i for v in node for i in images(v)]
    return []


def assert_adm_command(entrypoint: str) -> None:
    argv = shlex.split(entrypoint)
    assert argv[0] == "adm", entrypoint
    build_parser().parse_args(argv[1:])  # a real subcommand with valid options (SystemExit otherwise)


def assert_ray_pinned(image: str) -> None:
    if image.startswith("rayproject/ray:"):
        assert image.split(":")[1].startswith(RAY + "-"), image
    elif "adm-pipeline" in image:
        assert f"-ray{RAY}" in image.split(":")[1], image


def test_raycluster_has_cpu_head_and_gpu_workers():
    (cluster,) = load("kuberay/raycluster.yaml")
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    spec = cluster["spec"]
    assert spec["rayVersion"] == RAY
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    gpu = [g for g in spec["workerGroupSpecs"] if "nvidia.com/gpu" in
           g["template"]["spec"]["containers"][0]["resources"]["limits"]]
    assert gpu and all({"groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams"} <= set(g) for g in gpu)
    for container in [head] + [g["template"]["spec"]["containers"][0] for g in spec["workerGroupSpecs"]]:
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token" and "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]
        assert env["MLFLOW_TRACKING_URI"]["value"].startswith("http")
    assert images(cluster) and all(assert_ray_pinned(i) is None for i in images(cluster))


def test_rayjob_and_raycronjob_run_real_adm_commands():
    (job,) = load("kuberay/rayjob.yaml")
    (cron,) = load("kuberay/raycronjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert (cron["apiVersion"], cron["kind"]) == ("ray.io/v1", "RayCronJob")
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == "adm-ray"
    assert shlex.split(job["spec"]["entrypoint"])[1] == "run"
    assert_adm_command(job["spec"]["entrypoint"])
    parse_cron(cron["spec"]["schedule"])
    template = cron["spec"]["jobTemplate"]
    assert shlex.split(template["entrypoint"])[1] == "retrain"
    assert_adm_command(template["entrypoint"])
    assert template["clusterSelector"] == job["spec"]["clusterSelector"]


def test_launcher_mlflow_and_dockerfile():
    (launcher,) = load("launcher/cluster.yaml")
    assert {"cluster_name", "provider", "auth", "head_start_ray_commands", "worker_start_ray_commands"} <= set(launcher)
    assert launcher["provider"]["type"] == "local" and launcher["provider"]["head_ip"]
    assert_ray_pinned(launcher["docker"]["image"])
    assert any("RAY_AUTH_MODE=token" in o for o in launcher["docker"]["run_options"])
    docs = {d["kind"]: d for d in load("mlflow/mlflow.yaml")}
    assert {"Deployment", "Service", "StatefulSet"} <= set(docs)
    args = " ".join(docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"])
    # the server's flags are server.sh's, which the stack tier runs (tests/stack); the manifest gives it the places
    assert "exec sh /home/ray/adm-pipeline/cluster/mlflow/server.sh" in args
    assert "MLFLOW_BACKEND_STORE_URI=\"postgresql+psycopg2://" in args and "MLFLOW_ARTIFACTS_DESTINATION=s3://" in args
    server = (CLUSTER / "mlflow" / "server.sh").read_text()
    assert all(f in server for f in ("--backend-store-uri", "--serve-artifacts", "--artifacts-destination"))
    for image in images(docs["Deployment"]):
        assert_ray_pinned(image)
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert f"ARG RAY_IMAGE=rayproject/ray:{RAY}-" in dockerfile and f'"ray[default,train,data]=={RAY}"' in dockerfile
    import torch

    assert f'"torch=={torch.__version__.split("+")[0]}"' in dockerfile


def test_local_scripts_exist_and_use_token_auth():
    for name in ("start-head.sh", "start-worker.sh", "stop.sh"):
        path = CLUSTER / "local" / name
        assert path.stat().st_mode & 0o111, f"{name} is not executable"
    assert "RAY_AUTH_MODE=token" in (CLUSTER / "local" / "start-head.sh").read_text()
    assert "--dashboard-host=127.0.0.1" in (CLUSTER / "local" / "start-head.sh").read_text()


# --- adm schedule ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cron,calendar", [
    ("0 3 * * 0", "Sun *-*-* 03:00:00"),
    ("*/15 2-4 * * 1-5", "Mon..Fri *-*-* 2..4:0/15:00"),
    ("30 1 1,15 * *", "*-*-01,15 01:30:00"),
    ("0 0 * 6 *", "*-06-* 00:00:00"),
])
def test_cron_to_systemd_calendar(cron, calendar):
    assert on_calendar(cron) == calendar


@pytest.mark.parametrize("bad", ["0 3 * *", "60 3 * * *", "0 24 * * *", "0 3 * * mon", "0 3 5-1 * *", "*/0 * * * *"])
def test_bad_cron_is_rejected(bad):
    with pytest.raises(ScheduleError, match="cron"):
        parse_cron(bad)


def test_schedule_outputs(tmp_path, monkeypatch):
    # the units carry $MLFLOW_TRACKING_URI when set (mlflow.set_tracking_uri in an earlier test sets it)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = ["--preset", "smoke", "--workdir", "/shared/adm"]
    manifest = yaml.safe_load(kubernetes_manifest("0 4 * * 1", args, CLUSTER / "kuberay" / "raycronjob.yaml"))
    assert manifest["kind"] == "RayCronJob" and manifest["spec"]["schedule"] == "0 4 * * 1"
    assert manifest["spec"]["jobTemplate"]["entrypoint"] == "adm retrain --preset smoke --workdir /shared/adm"
    line = crontab_line("0 4 * * 1", args, "http://head:8265", tmp_path / "log", "nightly")
    cron, command = line[:9], line[10:].split(" >> ")[0]
    assert cron == "0 4 * * 1"
    argv = shlex.split(command)
    assert argv[1:5] == ["submit", "--wait", "--address", "http://head:8265"] and argv[-5:] == ["retrain", *args]
    assert line.endswith("# adm-pipeline schedule nightly")
    units = systemd_units("0 4 * * 1", args, None, "nightly")
    assert "OnCalendar=Mon *-*-* 04:00:00" in units["adm-retrain-nightly.timer"]
    assert "submit --wait retrain --preset smoke" in units["adm-retrain-nightly.service"]


def test_schedule_cli_checks_the_command_first(capsys):
    assert main(["schedule", "--cron", "0 3 * * 0", "--target", "kubernetes", "--preset", "smoke",
                 "--override", "unet.model_channels=33"]) == 2
    assert "num_head_channels" in capsys.readouterr().err
    assert main(["schedule", "--cron", "0 3 * * 0", "--preset", "smoke", "--workdir", "relative"]) == 2
    assert "shared" in capsys.readouterr().err


# --- adm submit input checks ------------------------------------------------------------------------------------------
def test_submit_needs_shared_workdir_and_tracking(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(JobError, match="--workdir"):
        job_command(["--preset", "smoke"], "http://mlflow:5000")
    with pytest.raises(JobError, match="tracking URI"):
        job_command(["run", "--workdir", "/shared/adm"], None)
    with pytest.raises(JobError, match="relative path"):
        job_command(["run", "--workdir", "/shared/adm"], "sqlite:///mlflow.db")
    command, env = job_command(["--preset", "smoke", "--workdir", "s3://b/adm"], "http://mlflow:5000")
    assert command[0] == "run" and env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    # a resumed run keeps the work dir it recorded, and `adm run --resume` refuses --workdir: none is asked for
    command, _ = job_command(["run", "--resume", "0123abcd"], "http://mlflow:5000")
    assert command == ["run", "--resume", "0123abcd"]


def test_unreachable_cluster_names_address_and_fix(tmp_path):
    with pytest.raises(JobError, match=r"cannot reach the Ray cluster at http://127.0.0.1:9 .*--address"):
        connect("http://127.0.0.1:9")
    with pytest.raises(JobError, match="--token-file"):
        connect("http://127.0.0.1:9", token_file=str(tmp_path / "missing"))


def test_submitted_jobs_keep_every_package_whatever_its_name():
    """Ray applies the excludes as gitignore patterns: the top-level cluster/, tests/ and bench/ folders stay home,
    a package folder of the same name inside pipelines/ travels."""
    from ray._private.runtime_env.packaging import _get_excludes

    from pipelines import PROJECT_ROOT
    from pipelines.ops.jobs import EXCLUDES

    root = PROJECT_ROOT
    excluded = _get_excludes(root, EXCLUDES)
    for kept in ("pipelines/cluster/x.py", "pipelines/tests/x.py", "components/unet.py", "pipelines/cli/main.py"):
        assert not excluded(root / kept), kept
    for dropped in ("cluster/kuberay/raycluster.yaml", "tests/conftest.py", "bench/RESULTS.md", ".git/HEAD",
                    "adm-work/runs/x", "pipelines/__pycache__/x.pyc"):
        assert excluded(root / dropped), dropped
