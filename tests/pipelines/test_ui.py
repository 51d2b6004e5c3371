"""`adm ui` stops the whole `mlflow ui` process tree (the server and its uvicorn workers) when it is told to stop by
SIGTERM, SIGINT or SIGHUP: the port is free again and no process it started is left. Every wait polls with a deadline;
no sleep stands in for synchronisation."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
START_S, STOP_S = 180, 60  # deadlines: starting mlflow ui on a loaded machine, and everything gone after the signal


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def marked(token: str) -> dict[int, str]:
    """{pid: command line} of the live processes whose environment holds `token` (all that the adm process started,
    whoever their parent now is); zombies do not count."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if f"ADM_UI_TEST={token}".encode() not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # ended meanwhile, or not ours to read
            continue
        if state != "Z":
            found[int(entry.name)] = command
    return found


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.mark.services  # starts adm ui: an MLflow server and its workers
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_stops_the_whole_ui_process_tree(tmp_path, signum):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    MlflowClient(uri).search_experiments()  # makes the store adm ui serves
    port, token = _free_port(), uuid.uuid4().hex
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ADM_UI_TEST": token}
    log = open(tmp_path / "ui.log", "w")
    # its own session, as a service manager starts it: the signal reaches adm alone, never the test's group
    adm = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "ui", "--tracking-uri", uri, "--port", str(port)],
                           env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + START_S
        while not answers(f"http://127.0.0.1:{port}/health"):
            assert adm.poll() is None, f"adm ui ended ({adm.returncode}): {(tmp_path / 'ui.log').read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"adm ui did not answer in {START_S} s"
            time.sleep(0.2)
        started = marked(token)
        assert set(started) - {adm.pid}, f"adm ui started no process: {started}"

        adm.send_signal(signum)
        assert adm.wait(timeout=STOP_S) == 0, (tmp_path / "ui.log").read_text()[-3000:]
        deadline = time.monotonic() + STOP_S
        while marked(token) or not port_free(port):
            assert time.monotonic() < deadline, f"after {signum.name} to adm ui: left running {marked(token)}, " \
                                                f"port {port} free: {port_free(port)}"
            time.sleep(0.2)
        assert "stopped" in (tmp_path / "ui.log").read_text()
    finally:
        for pid in marked(token):  # a failed test leaves nothing behind either
            os.kill(pid, signal.SIGKILL)
        log.close()
