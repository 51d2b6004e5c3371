"""`adm submit` and `adm jobs`: an `adm` command as a Ray job on a cluster, through the Ray Jobs API.

The job's runtime_env carries this project as its working_dir (``components`` and ``pipelines`` only: tests,
benchmarks, local run outputs, virtual environments and caches stay here) plus optional pip requirements, and forwards
MLFLOW_TRACKING_URI. The cluster's image must already hold the dependencies (cluster/Dockerfile) unless ``--pip``
lists them.

Token authentication (Ray >= 2.52, on by default for local clusters since 2.59) is honoured: the token is read from
``--token-file``, ``$RAY_AUTH_TOKEN``, the file in ``$RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token`` (where
``ray start`` / ``ray get-auth-token --generate`` put it) and sent as ``Authorization: Bearer ...``.
"""

import asyncio
import os
import posixpath
import re
import shlex
import sys
import time
import uuid
from pathlib import Path

from ray.job_submission import JobSubmissionClient

from components.config import UserError
from pipelines import PROJECT_ROOT
from pipelines.infra import tags
from pipelines.ops import all_problems

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
COMMANDS = ("run", "retrain", "train", "sample", "upsample", "evaluate", "data")
PIPELINE_COMMANDS = ("run", "retrain")
# What a job carries of the checkout: the two packages, nothing else of the top level (local run outputs such as
# mlflow-artifacts/, mlruns/, adm-work/ and mlflow.db, virtual environments, caches, tests, docs), and no caches or
# compiled files inside them. Gitignore-style patterns, as Ray applies them to each path it walks (an excluded folder
# is not entered; the last matching pattern wins): "/*" is every top-level entry, "!/." keeps the root itself, the
# anchored negations keep the packages whatever their sub-packages are called (pipelines/**/cluster/ included).
PACKAGES = ("components", "pipelines")
EXCLUDES = ["/*", "!/.", *(f"!/{p}" for p in PACKAGES), "__pycache__", "*.py[cod]", ".*_cache", "*.egg-info",
            ".ipynb_checkpoints", "*.log"]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
AGENT_WAIT_S = 120  # a freshly started head answers "No available agent to submit job" for a while


class JobError(UserError):
    pass


def dashboard_address(address: str | None) -> str:
    """--address, else $RAY_API_SERVER_ADDRESS, else an http $RAY_ADDRESS, else the local dashboard."""
    found = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS", "")
    if not found.startswith(("http://", "https://")):
        found = address or DEFAULT_ADDRESS
    if not found.startswith(("http://", "https://")):
        raise JobError(f"--address {found!r}: give the Ray dashboard URL, e.g. http://HEAD:8265")
    return found.rstrip("/")


def auth_token(token_file: str | None = None) -> str | None:
    if token_file:
        path = Path(token_file).expanduser()
        if not path.is_file():
            raise JobError(f"--token-file {token_file}: no such file; `ray get-auth-token` on the head prints it")
        return path.read_text().strip() or None
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip()
    for candidate in (os.environ.get("RAY_AUTH_TOKEN_PATH"), str(Path.home() / ".ray" / "auth_token")):
        if candidate and Path(candidate).expanduser().is_file():
            return Path(candidate).expanduser().read_text().strip() or None
    return None


def connect(address: str | None = None, token_file: str | None = None):
    """A JobSubmissionClient, or a JobError naming the address and the fix."""

    url = dashboard_address(address)
    token = auth_token(token_file)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return JobSubmissionClient(url, headers=headers)
    except Exception as e:  # ConnectionError, or an authentication failure from the version check
        raise connect_error(url, e) from None


def _has_status(text: str, code: int) -> bool:
    """Whether HTTP status `code` stands in an error text as a number of its own, not inside a port or an address
    (a refused http://127.0.0.1:56403 once read as a 403)."""
    return re.search(rf"(?<![\d.:]){code}(?!\d)", text) is not None


def connect_error(url: str, e: Exception) -> JobError:
    """What failed when connecting to the cluster's dashboard at `url`, and the fix."""
    text = str(e)
    if _has_status(text, 403) or "invalid or incorrect" in text or "Invalid authentication" in text:
        return JobError(f"the Ray cluster at {url} rejected the token; check --token-file / RAY_AUTH_TOKEN")
    if _has_status(text, 401) or "no authentication token" in text or type(e).__name__ == "AuthenticationError":
        return JobError(f"the Ray cluster at {url} requires a token: pass --token-file FILE or set RAY_AUTH_TOKEN "
                        "(on the head, `ray get-auth-token` prints it)")
    return JobError(f"cannot reach the Ray cluster at {url} ({type(e).__name__}: {text[:300]}); start one "
                    "(cluster/local/start-head.sh, or `ray start --head`) or pass --address http://HEAD:8265")


# --- submitting -------------------------------------------------------------------------------------------------------
def _option(command: list[str], name: str) -> str | None:
    for i, token in enumerate(command):
        if token == name and i + 1 < len(command):
            return command[i + 1]
        if token.startswith(name + "="):
            return token.split("=", 1)[1]
    return None


def _is_shared(url: str) -> bool:
    return "://" in url or posixpath.isabs(url)


def job_command(command: list[str], tracking_uri: str | None) -> tuple[list[str], dict]:
    """The `adm` command the job will run (run by default) and the env vars it needs, checked here first (every
    problem in one JobError)."""
    command, env_vars, problems = _job_command(command, tracking_uri)
    if problems:
        raise JobError(all_problems(problems))
    return command, env_vars


def job_problems(command: list[str], tracking_uri: str | None) -> list[str]:
    """What keeps `command` from running as a job: a work dir that is not shared, no usable tracking URI."""
    return _job_command(command, tracking_uri)[2]


def _job_command(command: list[str], tracking_uri: str | None) -> tuple[list[str], dict, list[str]]:
    command = list(command) or ["run"]
    if command[0] not in COMMANDS:
        command = ["run", *command]
    problems = []
    # a resumed run goes on in the work dir it recorded (checked when it was submitted; --resume refuses another)
    if command[0] in PIPELINE_COMMANDS and _option(command, "--resume") is None:
        workdir = _option(command, "--workdir")
        if workdir is None or not _is_shared(workdir):
            problems.append(f"--workdir {workdir or '(default adm-work)'}: a job's files must go where every node and "
                            "later jobs see them; pass an absolute path on a shared file system or a URL "
                            "(e.g. --workdir s3://bucket/adm)")
    uri = _option(command, "--tracking-uri") or tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        problems.append("no MLflow tracking URI: pass --tracking-uri http://MLFLOW:5000 (or set MLFLOW_TRACKING_URI); "
                        "a job on the cluster cannot write to this machine's default sqlite store")
    elif uri.startswith(("sqlite:///", "file:")) and not uri.startswith(("sqlite:////", "file:///")):
        problems.append(f"tracking URI {uri}: a relative path would land in the job's temporary working folder; "
                        "use an MLflow server URL or an absolute path on a shared file system")
    passed = {k: os.environ[k] for k in ("ADM_TRACEBACK",) if os.environ.get(k)}
    return command, {"MLFLOW_TRACKING_URI": uri, **passed}, problems


def runtime_env(env_vars: dict, pip: list[str] | None = None, working_dir: str | None = None) -> dict:
    env = {"working_dir": working_dir or str(PROJECT_ROOT), "excludes": EXCLUDES,
           "env_vars": {**env_vars, "PYTHONUNBUFFERED": "1"}}
    if pip:
        env["pip"] = list(pip)
    return env


def submit(command: list[str], env_vars: dict, address: str | None = None, token_file: str | None = None, pip=None,
           job_id: str | None = None, num_cpus: float = 0.0) -> tuple[object, str]:
    """Submit `adm COMMAND` (as prepared by job_command, and checked by the caller) as a Ray job."""
    client = connect(address, token_file)
    job_id = job_id or f"adm-{command[0]}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    entrypoint = f"python -m pipelines.cli {shlex.join(command)}"
    deadline = time.time() + AGENT_WAIT_S
    while True:
        try:
            submitted = client.submit_job(entrypoint=entrypoint, submission_id=job_id, runtime_env=runtime_env(
                env_vars, pip), entrypoint_num_cpus=num_cpus, metadata={tags.JOB_COMMAND: command[0]})
            return client, submitted
        except Exception as e:
            if "No available agent" in str(e) and time.time() < deadline:  # a cluster that has just started
                time.sleep(2)
                continue
            raise JobError(f"the cluster refused the job ({type(e).__name__}: {str(e)[:500]})") from None


def follow(client, job_id: str, out=sys.stdout) -> str:
    """Stream the job's logs until it ends; returns its final status."""

    async def tail():
        async for lines in client.tail_job_logs(job_id):
            out.write(lines)
            out.flush()

    try:
        asyncio.run(tail())
    except Exception as e:  # the log stream can drop; the status below is what counts
        out.write(f"\n(log stream ended: {type(e).__name__}: {e})\n")
    while True:
        status = job_status(client, job_id)
        if status in TERMINAL:
            return status
        time.sleep(2)


def job_status(client, job_id: str) -> str:
    try:
        status = client.get_job_status(job_id)
    except RuntimeError as e:
        raise JobError(f"no job {job_id} on this cluster ({str(e)[:200]}); `adm jobs list` shows the jobs") from None
    return str(getattr(status, "value", status))


def failure_message(client, job_id: str, address: str | None, status: str) -> str:
    info = client.get_job_info(job_id)
    reason = (getattr(info, "message", None) or "").strip()
    where = f" --address {dashboard_address(address)}" if address else ""
    return (f"job {job_id} {status.lower()}" + (f": {reason[:1000]}" if reason else "")
            + f"\nread its logs with: adm jobs logs {job_id}{where}")
