"""Marks a pipeline's MLflow runs KILLED when its driver disappears without ending them (SIGKILL, OOM kill).

`adm run` starts this as a small detached process: it polls the driver's pid and, once the driver is gone, ends every
run of the pipeline tree (the pipeline run, its stage runs and their children) still RUNNING as KILLED. A driver that
ends normally has already terminated its runs, so the sentinel then finds nothing to do.

    python -m pipelines.workflow.sentinel PID RUN_ID EXPERIMENT TRACKING_URI
"""

import os
import subprocess
import sys
import time

from pipelines.infra import tags
from pipelines.infra.tracking import Tracker


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def mark_killed(run_id: str, experiment: str, tracking_uri: str) -> list:
    tracker = Tracker(tracking_uri)
    killed, pending = [], [run_id]
    while pending:
        current = pending.pop()
        run = tracker.run(current)
        if run.info.status == "RUNNING":
            tracker.set_tags(current, {tags.ENDED_BY: "sentinel: the driver process disappeared"})
            tracker.end_run(current, "KILLED")
            killed.append(current)
        pending += [child.info.run_id for child in tracker.children(experiment, current)]
    return killed


def start(run_id: str, experiment: str, tracking_uri: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipelines.workflow.sentinel", str(os.getpid()), run_id, experiment,
                             tracking_uri], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def main(argv) -> int:
    pid, run_id, experiment, tracking_uri = int(argv[0]), argv[1], argv[2], argv[3]
    while alive(pid):
        time.sleep(1.0)
    mark_killed(run_id, experiment, tracking_uri)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
