"""The logs `adm` keeps off the console, kept with the run: Ray's and MLflow's driver-side log records (and, from the
command line, what Ray's C++ core worker in the driver prints), and the Ray worker logs of this driver's job (the
stdout/stderr of every trainer, sampling and featurizing actor, Ray Data's logs) from every node of the cluster.

Worker logs are read through Ray's state API (the dashboard of the cluster), so the same code collects them from a
local instance and from a remote cluster. They are written into the run folder (runs/<run id>/logs/) and logged as the
pipeline run's `logs` artifacts; a cluster without a dashboard leaves a note saying so instead.
"""

import logging
import os
import posixpath
import sys
import tempfile
from pathlib import Path

import fsspec
import ray
from ray.util.state import get_log, list_logs, list_nodes

LOGGERS = ("ray", "mlflow", "py.warnings")  # the libraries' own records on the driver
MAX_BYTES = 5 << 20  # the tail of a longer worker log is kept


class NativeStderr:
    """While active, what native code writes straight to file descriptor 2 (the C++ core worker inside this driver:
    Ray's warnings about its own actors) goes to `path`; Python's sys.stderr, where adm's messages go, keeps the
    console. Only for a command line run: it changes the whole process."""

    def __init__(self, path: Path):
        self.path = path
        self.saved = self.file = self.python = None

    def start(self) -> None:
        sys.stderr.flush()
        self.saved, self.python = os.dup(2), sys.stderr
        self.file = open(self.path, "ab")
        os.dup2(self.file.fileno(), 2)
        sys.stderr = os.fdopen(os.dup(self.saved), "w", buffering=1, encoding=self.python.encoding,
                               errors="backslashreplace")

    def stop(self) -> None:
        if self.saved is None:
            return
        sys.stderr.flush()
        os.dup2(self.saved, 2)
        # the console stream stays open: a logging handler made during the run may hold it, and it still writes to
        # the console
        sys.stderr = self.python
        os.close(self.saved)
        self.file.close()
        self.saved = None


class RunLogs:
    """Collects a pipeline run's logs in a local folder from start() until collect()."""

    def __init__(self):
        self.folder = Path(tempfile.mkdtemp(prefix="adm-logs-"))
        self.handler = logging.FileHandler(self.folder / "driver.log", encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.native = NativeStderr(self.folder / "driver-native.log")

    def start(self, native: bool = False) -> None:
        """Record the libraries' log records; with `native`, also the driver's native stderr (see NativeStderr)."""
        for name in LOGGERS:
            logging.getLogger(name).addHandler(self.handler)
        if native:
            self.native.start()

    def collect(self, run_folder: str, workers: bool = True) -> Path:
        """Stop recording, add the job's Ray worker logs (`workers`), copy everything to RUN_FOLDER/logs; returns the
        local folder."""
        self.native.stop()
        for name in LOGGERS:
            logging.getLogger(name).removeHandler(self.handler)
        self.handler.close()
        if workers:
            worker_logs(self.folder / "ray")
        fs, root = fsspec.core.url_to_fs(posixpath.join(run_folder.rstrip("/"), "logs"))
        fs.makedirs(root, exist_ok=True)
        for path in sorted(p for p in self.folder.rglob("*") if p.is_file()):
            target = posixpath.join(root, *path.relative_to(self.folder).parts)
            fs.makedirs(posixpath.dirname(target), exist_ok=True)
            fs.put_file(str(path), target)
        return self.folder


def worker_logs(dest: Path) -> None:
    """The logs of this job's workers on every node, dest/<node ip>/<file>; a note when they cannot be read."""

    dest.mkdir(parents=True, exist_ok=True)
    if not ray.is_initialized():
        return
    try:
        context = ray.get_runtime_context()
        job, address = context.get_job_id(), context.gcs_address  # this driver's cluster, not another on the host
        for node in list_nodes(address, filters=[("state", "=", "ALIVE")], timeout=10):
            found = list_logs(address, node_id=node.node_id, glob_filter=f"*{job}*", timeout=10)
            for name in sorted({f for files in found.values() for f in files}):
                text = "".join(get_log(address, node_id=node.node_id, filename=name, timeout=10, errors="replace"))
                if text.strip():
                    (dest / node.node_ip).mkdir(exist_ok=True)
                    (dest / node.node_ip / os.path.basename(name)).write_text(text[-MAX_BYTES:], encoding="utf-8")
    except Exception as e:  # no dashboard (include_dashboard=False) or an old cluster: the run itself is fine
        (dest / "NOT_COLLECTED.txt").write_text(
            f"Ray's worker logs could not be read through the state API ({type(e).__name__}: {e}); they remain in "
            "each node's Ray session folder (/tmp/ray/session_latest/logs).\n", encoding="utf-8")
