"""What `adm` prints: our status lines and progress, not Ray's or MLflow's internal logs.

Progress is one bar per task (a trainer, the sampling grid, featurizing) on a terminal (rich), and a plain line at most
every PLAIN_EVERY_S seconds per task (and at its end) when stdout is a file or a pipe (CI logs). Ray's worker logs
(worker stdout/stderr, raylet warnings, Ray Data's progress blocks) and Ray's and MLflow's INFO logs stay off unless
`--verbose` or ADM_VERBOSE=1: they remain in Ray's session folder (/tmp/ray/session_latest/logs).

Ray Train workers cannot print to the driver without log_to_driver (which also forwards everything else), so they
send their progress to a ProgressBoard actor that the driver polls (Board).
"""

import logging
import os
import sys
import threading
import time

import ray
from ray.data import DataContext
from rich.console import Console as RichConsole
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

PLAIN_EVERY_S = 10.0  # a CI log gets a line per task this often at most (and the last one always)


def verbose_requested(flag: bool = False) -> bool:
    """`--verbose` (`flag`) or ADM_VERBOSE=1. The flag is kept in ADM_VERBOSE, so that later checks in this process
    (the pipeline's log capture) see it too."""
    if flag:
        os.environ["ADM_VERBOSE"] = "1"
    return os.environ.get("ADM_VERBOSE", "") not in ("", "0")


def quiet_ray_init_kwargs(verbose: bool) -> dict:
    """ray.init() arguments and process settings that keep Ray's own logs off the console (unless verbose). Set before
    ray.init(): a local instance's workers inherit the environment."""
    if verbose:
        return {}
    # the raylet warns every driver when the workers it has started reach 4x this (default: the node's CPUs): a
    # pipeline's trainers, controllers and actor pools pass 8 on a 2-CPU laptop, which is expected, not a problem.
    # Read by a local instance's raylet (on a cluster, the cluster's own setting holds)
    os.environ.setdefault("RAY_worker_maximum_startup_concurrency", str(max(16, os.cpu_count() or 1)))
    # Ray Data's progress (tqdm or, off a terminal, the "logging progress" blocks) would duplicate ours
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported ("Creating tables...")
    for name in ("ray", "ray.data", "ray.train", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # a notice on every start of a local instance (token auth is on by default), not a problem to act on
    logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
    return {"log_to_driver": False, "logging_level": logging.WARNING}


def quiet_ray_data() -> None:
    """Ray Data's own progress off in this process (its DataContext travels with the datasets it builds)."""

    DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "Progress bars disabled": we did


class Console:
    """The `log` callable of the stages: log(line) prints a line; log.progress(...) updates a task's progress."""

    def __init__(self, stream=None, live: bool | None = None, every_s: float = PLAIN_EVERY_S):
        self.stream, self.every_s = stream or sys.stdout, every_s
        self.live = self.stream.isatty() if live is None else live
        self._bars, self._last, self._lock = None, {}, threading.Lock()

    def __call__(self, line: str) -> None:
        with self._lock:
            if self._bars is not None:
                self._bars.console.print(line, highlight=False, markup=False)
            else:
                print(line, file=self.stream, flush=True)

    def progress(self, task: str, done: float, total: float, detail: str = "") -> None:
        """Task `task` at done/total; `detail` e.g. "loss 0.41, 30 img/s". A finished task ends its bar."""
        if self.live:
            self._bar(task, done, total, detail)
            return
        now = time.monotonic()
        if task in self._last and done < total and now - self._last[task] < self.every_s:
            return
        self._last[task] = now
        self(f"{task}: {done:g}/{total:g}" + (f" {detail}" if detail else ""))

    def _bar(self, task: str, done: float, total: float, detail: str) -> None:
        with self._lock:
            if self._bars is None:
                # markup off: "[diffusion]" is our label, not a rich style
                self._bars = Progress(TextColumn("{task.description}", markup=False), BarColumn(),
                                      MofNCompleteColumn(), TextColumn("{task.fields[detail]}", markup=False),
                                      TimeRemainingColumn(),
                                      console=RichConsole(file=self.stream))
                self._bars.start()
                self._ids = {}
            if task not in self._ids:
                self._ids[task] = self._bars.add_task(task, total=total, detail=detail)
            self._bars.update(self._ids[task], completed=done, total=total, detail=detail)
            if all(t.finished for t in self._bars.tasks):  # nothing running: back to plain lines
                self._bars.stop()
                self._bars = None


def progress(log, task: str, done: float, total: float, detail: str = "") -> None:
    """Report progress through `log` (a Console), or as a plain line through any other callable (tests pass
    list.append)."""
    if isinstance(log, Console):
        log.progress(task, done, total, detail)
    else:
        log(f"{task}: {done:g}/{total:g}" + (f" {detail}" if detail else ""))


class Board:
    """The driver's side of the trainers' progress: a ProgressBoard actor that workers write to, polled into `log`."""

    def __init__(self, log, every_s: float = 0.5):
        @ray.remote(num_cpus=0)
        class ProgressBoard:
            def __init__(self):
                self.state, self.lines = {}, []

            def update(self, task, done, total, detail):
                self.state[task] = (done, total, detail)

            def say(self, line):
                self.lines.append(line)

            def read(self):
                lines, self.lines = self.lines, []
                return dict(self.state), lines

        self.actor = ProgressBoard.remote()
        self.log, self.every_s, self._stop = log, every_s, threading.Event()
        self._seen: dict = {}
        self._thread = threading.Thread(target=self._poll, name="progress-board", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.every_s):
            self.drain()

    def drain(self) -> None:
        if not ray.is_initialized():  # shut down under us (Ctrl-C): ray.get would start a new instance
            return
        try:
            state, lines = ray.get(self.actor.read.remote(), timeout=10)
        except Exception:  # Ray shut down under us (Ctrl-C): progress is not worth an error
            return
        for line in lines:
            self.log(line)
        for task, value in state.items():
            if self._seen.get(task) != value:
                self._seen[task] = value
                progress(self.log, task, *value)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.drain()
