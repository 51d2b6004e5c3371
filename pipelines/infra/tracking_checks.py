"""The tracking store's checks, before and during work: its URI (scheme, a sqlite file's folder), a server's first
probe, the bounded retry policy of every later call, and the words for a server that stopped answering."""

import os
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from components.config import UserError


class TrackingError(UserError):
    """The tracking server or store cannot be used; the message says how to fix it."""


def resolve_tracking_uri(uri: str | None = None) -> str:
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


# what MLflow can track to: a server, a database (SQLAlchemy URL) or a local folder (a path without a scheme)
SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks", "file")
_REACHABLE: set[str] = set()  # servers probed once in this process


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


# MLflow's client retries a request to a server that does not answer 7 times with doubling waits: about 4 minutes of
# silence. 4 retries from 1 s give up after about 15 s, long enough for a server restart to pass unnoticed
HTTP_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def bound_http_retries() -> None:
    """Bounded retries for every later call to the tracking server, in this process and in the local Ray instance's
    workers it starts (call before ray.init()); a user's own setting of these variables wins."""
    for name, value in HTTP_RETRIES.items():
        os.environ.setdefault(name, value)


# Large artifacts through a server that proxies an object store (cluster/mlflow/server.sh): checkpoints of 0.2-2.2 GB
# sent as one proxied PUT time out or fail (mlflow#7564, #8963), and on the stack tier a proxied GET of 1 GB had not
# finished after 9 minutes. In parts, straight to and from the store through URLs the server signs, they go through
# (bench/RESULTS.md): from 100 MB on (MLflow's 500 MB left the smaller released checkpoints on the single request), in
# MLflow's 10 MB upload parts. A server that cannot sign (a local artifact folder) says so, and MLflow falls back to
# the proxied request. MLflow reads these variables at each transfer: set before a process's first one is enough.
ARTIFACT_TRANSFER = {
    "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "true",
    "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "true",
    "MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE": str(100 << 20),
    "MLFLOW_MULTIPART_DOWNLOAD_MINIMUM_FILE_SIZE": str(100 << 20),
}


def use_artifact_transfer_settings() -> None:
    """ARTIFACT_TRANSFER in this process: the driver, and every Ray worker or actor that opens a Tracker (on any node:
    a cluster's workers do not inherit the driver's environment); a user's own setting of these variables wins."""
    for name, value in ARTIFACT_TRANSFER.items():
        os.environ.setdefault(name, value)


def server_gone(error: BaseException) -> str | None:
    """What to tell the user when an MLflow call failed because the tracking server stopped answering after the
    first probe (MLflow reports it as an MlflowException naming the request), else None."""
    exceptions = sys.modules.get("mlflow.exceptions")
    text = str(error)
    if exceptions is None or not isinstance(error, exceptions.MlflowException):
        return None
    if not any(cause in text for cause in ("Max retries exceeded", "Connection refused", "timed out")):
        return None
    found = re.search(r"API request to (https?://[^/\s]+)", text)
    server = found.group(1) if found else "the MLflow tracking server"
    return (f"the MLflow tracking server {server} stopped answering ({text.split(' failed with exception ')[-1][:200]}"
            "); start it again and rerun the command (a pipeline run continues with adm run --resume RUN_ID, its "
            "finished stages reused)")


def raise_if_gone(error: BaseException) -> None:
    """Re-raise `error` as our TrackingError when it is the server going away, so that a lookup that treats any
    failure as "not found" does not report a dead server as a missing model."""
    gone = server_gone(error)
    if gone is not None:
        raise TrackingError(gone) from None


def check_tracking(uri: str, timeout: float = 5.0) -> None:
    """Fail in seconds, naming the URI and the fix, when the tracking server is unreachable (MLflow's own client
    retries for minutes), the URI's scheme is unknown, or a sqlite store's folder is missing or unwritable. A server
    that takes the connection but is slow to answer is asked again, for up to SLOW_SERVER_S."""
    scheme = uri.split("://", 1)[0].split("+", 1)[0] if "://" in uri else ""
    if scheme and scheme not in SCHEMES:
        raise TrackingError(f"tracking URI {uri} has an unknown scheme {scheme!r}; use http://HOST:PORT (an MLflow "
                            "server), sqlite:///PATH.db (a local file) or a database URL (postgresql://, mysql://)")
    if uri.startswith(("http://", "https://")) and uri not in _REACHABLE:
        _probe_server(uri, timeout)
        _REACHABLE.add(uri)
    elif db := sqlite_path(uri):
        if not db.parent.is_dir():
            raise TrackingError(f"cannot use the MLflow store {uri}: its folder {db.parent} does not exist; create "
                                f"it (mkdir -p {db.parent}) or pass another --tracking-uri")
        if not os.access(db.parent, os.W_OK):
            raise TrackingError(f"cannot write the MLflow store {uri}: {db.parent} is not writable")


# a server that took the connection but has not answered /health yet is busy, not gone (its workers starting, a busy
# pod or node): it is asked again for this long, while nothing listening still fails at once
SLOW_SERVER_S = 60.0


def _timed_out(error: BaseException) -> bool:
    reason = getattr(error, "reason", error)
    return isinstance(reason, TimeoutError) or "timed out" in str(reason)


def _probe_server(uri: str, timeout: float, patience: float = SLOW_SERVER_S) -> None:
    deadline = time.monotonic() + patience
    while True:
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as response:
                if response.status != 200:
                    raise TrackingError(f"MLflow tracking server {uri} answered /health with {response.status}")
                return
        except (urllib.error.URLError, OSError) as e:
            if _timed_out(e) and time.monotonic() + timeout < deadline:
                continue
            raise TrackingError(
                f"MLflow tracking server {uri} is unreachable ({getattr(e, 'reason', e)}); start one (mlflow server "
                "--host 127.0.0.1 --port 5000) or unset MLFLOW_TRACKING_URI to track to a local sqlite file"
            ) from None
