"""Screenshots of what a user sees in the MLflow UI after `adm run`: a manual check, not part of CI.

    python scripts/ui_screenshots.py --tracking-uri sqlite:///$PWD/mlflow.db --out ui-shots

Starts `mlflow ui` on the store (127.0.0.1, a free port), finds the newest pipeline run (tag adm.pipeline) or the one
given with --run, and saves PNGs taken by headless Chromium (Debian package `chromium`) of: the experiment's landing
page, the pipeline run, its model metrics charts, one grid cell's run with its sample grid, the compare view of the
cells, the registered diffusion model, the logged model of the diffusion trainer and its training run's System
metrics tab.
"""

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(uri: str, port: int) -> subprocess.Popen:
    ui = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
                           "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return ui
        except OSError:
            time.sleep(1)
    ui.kill()
    raise SystemExit("mlflow ui did not start")


def pages(uri: str, run_id: str | None) -> dict:
    """{file name: UI route} for the newest pipeline run of the store (or `run_id`)."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiments = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in experiments], "tags.`adm.pipeline` != ''",
                              order_by=["attributes.start_time DESC"], max_results=1)
    parent = client.get_run(run_id) if run_id else runs[0]
    exp, pid = parent.info.experiment_id, parent.info.run_id

    def children(of):
        return client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{of}'")

    stages = {r.data.tags.get("adm.stage"): r for r in children(pid)}
    cells = children(stages["sample"].info.run_id)
    trainers = {r.data.tags.get("adm.network"): r for r in children(stages["train"].info.run_id)}
    diffusion = trainers["diffusion"].data.tags["adm.model_uri"][len("models:/"):]
    ids = json.dumps([r.info.run_id for r in cells]).replace(" ", "")
    name = json.loads(stages["register"].data.tags["adm.outputs"])["diffusion"]["name"] if "register" in stages \
        else None
    ml = "workflowType=machine_learning"  # the UI's model-training view (as adm run's printed link asks for)
    found = {"0_experiment_as_opened.png": f"#/experiments/{exp}",
             "1_experiment.png": f"#/experiments/{exp}?{ml}",
             "2_pipeline_run.png": f"#/experiments/{exp}/runs/{pid}?{ml}",
             "3_pipeline_metrics.png": f"#/experiments/{exp}/runs/{pid}/model-metrics?{ml}",
             "4_cell_grid.png": f"#/experiments/{exp}/runs/{cells[0].info.run_id}/artifacts/grid.png?{ml}",
             "5_compare_cells.png": f"#/compare-runs?runs={ids}&experiments=[\"{exp}\"]&{ml}",
             "7_logged_model.png": f"#/experiments/{exp}/models/{diffusion}?{ml}",
             "8_system_metrics.png":
                 f"#/experiments/{exp}/runs/{trainers['diffusion'].info.run_id}/system-metrics?{ml}"}
    if name:
        found["6_registered_model.png"] = f"#/models/{name}?{ml}"
    return found


def shoot(browser: str, url: str, path: Path) -> None:
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1600,1000", "--virtual-time-budget=20000", f"--screenshot={path}", url],
                   check=True, capture_output=True, timeout=180)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracking-uri", required=True, help="the store adm run used, e.g. sqlite:///$PWD/mlflow.db")
    parser.add_argument("--run", default=None, help="pipeline run id (default: the newest)")
    parser.add_argument("--out", default="ui-shots", help="folder for the PNGs")
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("needs headless Chromium: apt-get install chromium")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    ui = serve(args.tracking_uri, port)
    try:
        for name, route in pages(args.tracking_uri, args.run).items():
            shoot(browser, f"http://127.0.0.1:{port}/{route}", out / name)
            print(out / name)
    finally:
        ui.terminate()
        ui.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
