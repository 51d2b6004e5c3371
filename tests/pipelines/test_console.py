"""What `adm` prints for progress: plain lines in a log file, bars with our labels on a terminal."""

import io
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipelines.infra.console import Console, progress

ROOT = Path(__file__).resolve().parents[2]


def test_plain_progress_is_the_first_and_the_last_line_of_a_task_between_intervals():
    out = io.StringIO()
    console = Console(stream=out, live=False, every_s=math.inf)  # no interval ends: only the first and the last
    for step in range(0, 21, 5):
        console.progress("[diffusion] training", step, 20, f"loss {1 / (step + 1):.3f}")
    console.progress("[sample] images", 16, 32)
    console("a status line")
    console.progress("[sample] images", 32, 32)
    assert out.getvalue().splitlines() == ["[diffusion] training: 0/20 loss 1.000",
                                           "[diffusion] training: 20/20 loss 0.048",
                                           "[sample] images: 16/32", "a status line", "[sample] images: 32/32"]


def test_bars_keep_our_labels_and_lines_print_between_them():
    out = io.StringIO()
    console = Console(stream=out, live=True)
    console("before")
    for step in (5, 20):
        console.progress("[classifier] training", step, 20, "loss 1.4 [batch 4]")
    console("after")
    text = out.getvalue()
    assert "[classifier] training" in text and "20/20" in text and "[batch 4]" in text  # not taken as rich markup
    assert text.index("before") < text.index("[classifier]") < text.index("after")


def test_sampling_progress_per_cell_as_shards_finish():
    """A bar per grid cell on a terminal, counted from the shards' (cell, sample) rows (shard 0 done before, by an
    earlier run); a log keeps the stage's one line, whose detail counts finished cells."""
    from components.config.grid import grid_cells
    from pipelines.stages.sample import CellProgress, plan_shards

    cells = grid_cells(("ddim10",), (0.0, 2.0, 4.0), ("all",), ("classifier",))
    shards = plan_shards(cells, num_samples=4, batch_size=3)  # 12 rows: shards cut across cells
    out = io.StringIO()
    made = CellProgress(cells, shards, pending=[1, 2, 3], log=Console(stream=out, live=True))
    assert list(made.done) == [3, 0, 0] and made.finished == 0
    made.shard_done(1)  # rows (cell 0, sample 3), (cell 1, 0..1)
    assert list(made.done) == [4, 2, 0] and made.finished == 1
    for k in (2, 3):
        made.shard_done(k)
    assert made.finished == 3
    text = out.getvalue()
    assert all(f"[sample] {c.key}" in text for c in cells) and "4/4" in text
    plain = []
    CellProgress(cells, shards, pending=[0, 1, 2, 3], log=plain.append).shard_done(0)
    assert plain == []


def test_native_stderr_goes_to_the_log_while_ours_stays_on_the_console(tmp_path, capfd):
    """What native code writes to file descriptor 2 (Ray's C++ core worker in the driver) goes to the run's log;
    Python's sys.stderr, where adm's messages go, still reaches the console; stop() puts everything back."""
    import sys

    from pipelines.infra.ray_logs import NativeStderr

    native = NativeStderr(tmp_path / "native.log")
    native.start()
    os.write(2, b"[core_worker.cc] a C++ warning\n")
    print("adm: our message", file=sys.stderr)
    native.stop()
    os.write(2, b"after\n")
    err = capfd.readouterr().err
    assert "adm: our message" in err and "after" in err and "core_worker" not in err
    assert (tmp_path / "native.log").read_text() == "[core_worker.cc] a C++ warning\n"


def test_progress_through_any_callable_is_a_plain_line():
    lines = []
    progress(lines.append, "[evaluate] featurized images", 64, 64)
    assert lines == ["[evaluate] featurized images: 64/64"]


@pytest.mark.services  # starts its own services
def test_adm_ui_serves_the_store_on_localhost(tmp_path):
    """`adm ui` runs `mlflow ui` on the store `adm run` used (here an explicit sqlite file), on 127.0.0.1:PORT."""
    from mlflow import MlflowClient

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(store).create_experiment("adm")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ui = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "ui", "--tracking-uri", store, "--port", str(port)],
                          env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True)
    try:
        assert ui.stdout.readline().strip() == (f"MLflow UI of {store}: http://127.0.0.1:{port}/#/experiments"
                                                "?workflowType=machine_learning (Ctrl-C stops it)")
        deadline = time.time() + 300  # a hang guard, not a timing assertion (a loaded 2-core machine took > 120 s)
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/"
                                            "get-by-name?experiment_name=adm", timeout=5) as r:
                    assert json.loads(r.read())["experiment"]["name"] == "adm"
                    break
            except OSError:
                assert ui.poll() is None and time.time() < deadline, "adm ui did not serve the store"
                time.sleep(1)
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)


@pytest.mark.services  # starts its own services
def test_adm_ui_without_a_store_says_so(tmp_path):
    # without MLFLOW_TRACKING_URI (another test's server may have set it in this process): the default, ./mlflow.db
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "ui"], env={**env, "PYTHONPATH": str(ROOT)},
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "no MLflow store at" in done.stderr and not (tmp_path / "mlflow.db").exists()


@pytest.mark.services  # starts its own services
def test_adm_ui_refuses_a_port_in_use_or_out_of_range(tmp_path):
    """mlflow ui on a busy port logs the error and exits 0; adm ui says so instead of printing an address that serves
    nothing."""
    from mlflow import MlflowClient

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(store).create_experiment("adm")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for value, message in ((str(port), f"127.0.0.1:{port} is in use"), ("99999", "--port 99999 is not a port")):
            done = subprocess.run([sys.executable, "-m", "pipelines.cli", "ui", "--tracking-uri", store, "--port",
                                   value], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
            assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]
            assert "Traceback" not in done.stderr and "MLflow UI of" not in done.stdout
