"""`adm run` (the whole pipeline, data to registered models, as one MLflow run tree) and `adm retrain`.

Handlers import the workflow when they run: `adm --help` must not pay for torch, Ray and MLflow."""

import dataclasses
import json
import os
import sys
import tempfile

from components.config import UserError, preset_from_dict, to_dict
from components.config.presets import DEFAULT_PRESET
from pipelines.cli.common import check_assume_cpus, preset_args, resolved_preset, verbose_arg


def request_from_args(args):
    from pipelines.infra.tracking import Tracker
    from pipelines.infra.tracking_checks import raise_if_gone
    from pipelines.workflow.request import RunRequest

    common = dict(tracking_uri=args.tracking_uri, experiment=args.experiment, force=args.force,
                  register=not args.no_register, model_prefix=args.model_prefix)
    if not args.resume:
        return RunRequest(preset=resolved_preset(args), data=args.data, workdir=args.workdir, **common)
    _check_resume_args(args)
    tracker = Tracker(args.tracking_uri)
    _check_pipeline_run(tracker, args.resume)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = tracker.download_artifacts(args.resume, "config/resolved.json", tmp)
        except UserError:  # our own message (store missing, server down) already names the input and the fix
            raise
        except Exception as e:
            raise_if_gone(e)
            raise UserError(f"cannot read the config of run {args.resume} ({type(e).__name__}: {str(e)[:300]}); "
                            "check the run id and MLFLOW_TRACKING_URI") from None
        saved = json.loads(open(path).read())
    return RunRequest(preset=preset_from_dict(saved["preset"]), data=saved["data"], workdir=saved["workdir"],
                      resume=args.resume, **common)


def _check_resume_args(args) -> None:
    """--resume continues a run with the config, data and work dir it recorded: flags that would change them are
    refused rather than ignored."""
    given = [flag for flag, value in (("--override", args.override), ("--data", args.data),
                                      ("--workdir", args.workdir != "adm-work"),
                                      ("--preset", args.preset != DEFAULT_PRESET)) if value]
    if given:
        raise UserError(f"--resume {args.resume} continues that run with the config, data and work dir it recorded; "
                        f"leave out {', '.join(given)} (start a new run to change them)")


def _check_pipeline_run(tracker, run_id: str) -> None:
    """A stage's, trainer's or cell's run id: refused, naming the pipeline run above it to pass instead."""
    from pipelines.infra import tags

    child, found = run_id, None
    for _ in range(4):  # pipeline run > stage run > trainer or cell run
        try:
            run_tags = tracker.run(child).data.tags
        except UserError:
            raise
        except Exception:  # an unknown id: the config download says so, naming it
            return
        if tags.PIPELINE in run_tags:
            found = child
            break
        child = run_tags.get("mlflow.parentRunId")
        if not child:
            return
    if found and found != run_id:
        raise UserError(f"run {run_id} is a run inside pipeline run {found}, not a pipeline run; pass --resume {found}")


def _where(uri: str, experiment_id: str, run_id: str) -> str:
    """The pipeline run's page in the MLflow UI, and for a local store the command that serves it."""
    # MLflow 3's UI shows an experiment as GenAI (traces overview) unless told it is model training: by this URL
    # parameter or the toggle it remembers in the browser (the experiment's mlflow.experimentKind tag is not enough)
    page = f"#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"
    if uri.startswith("sqlite:///"):
        return (f"its page: http://127.0.0.1:5000/{page}\n  once the UI serves this store: adm ui "
                f"--tracking-uri {uri} (runs mlflow ui on 127.0.0.1:5000)")
    return f"its page: {uri.rstrip('/')}/{page}"


def _finished(req) -> bool:
    """A pipeline run that finished has nothing to resume: say so, before Ray starts."""
    from pipelines.infra.tracking import Tracker

    run = Tracker(req.tracking_uri).run(req.resume)
    if run.info.status != "FINISHED":
        return False
    print(f"pipeline run {req.resume} finished: every stage is done, nothing to resume (start a new run with "
          "adm run, which reuses its finished stages)")
    return True


def cmd_run(args) -> int:
    import ray

    from pipelines.infra.console import Console, quiet_ray_data, quiet_ray_init_kwargs, verbose_requested
    from pipelines.infra.resources import stage_resources
    from pipelines.stages.comparisons import format_comparisons
    from pipelines.stages.report import format_stage_times, format_table
    from pipelines.workflow.pipeline import Pipeline
    from pipelines.workflow.request import check_request
    from pipelines.workflow.sentinel import start

    check_assume_cpus(args.assume_cpus)
    req = request_from_args(args)
    check_request(req, writes=not args.dry_run)
    if args.dry_run:
        print(json.dumps({"preset": to_dict(req.preset),
                          "data": req.source, "workdir": req.workdir,
                          "resources": stage_resources(req.preset, args.assume_cpus)}, indent=2, default=str))
        return 0
    if req.resume and _finished(req):
        return 0
    verbose = verbose_requested(args.verbose)
    if not ray.is_initialized():
        ray.init(**quiet_ray_init_kwargs(verbose))
    if not verbose:
        quiet_ray_data()
    cluster = os.environ.get("RAY_ADDRESS") or "a local Ray instance"
    print(f"Ray: {cluster} with {ray.cluster_resources().get('CPU', 0):g} CPUs, "
          f"{ray.cluster_resources().get('GPU', 0):g} GPUs")
    pipeline = Pipeline(req, log=Console(), on_start=lambda p: start(p.run_id, p.req.experiment, p.tracker.uri))
    print(f"MLflow tracking: {pipeline.tracker.uri}")
    try:
        result = pipeline.execute()
    except KeyboardInterrupt:
        if pipeline.run_id is None:
            raise
        store = f" --tracking-uri {args.tracking_uri}" if args.tracking_uri else ""
        print(f"adm: interrupted; pipeline run {pipeline.run_id} and its stage runs are marked KILLED; continue it "
              f"with: adm run --resume {pipeline.run_id}{store}", file=sys.stderr)
        return 130
    print(format_table(result["evaluate"]["rows"]))
    if result["evaluate"].get("cascade_rows"):
        from pipelines.stages.upsample_outputs import cascade_section

        print(cascade_section(result["evaluate"]["rows"], result["evaluate"]["cascade_rows"],
                              result["evaluate"].get("cascade_pairs")))
    if result["evaluate"].get("comparisons"):
        print("\n" + format_comparisons(result["evaluate"]["comparisons"], result["evaluate"]["rows"]) + "\n")
    print(format_stage_times(result["stage_times"]))
    experiment_id = pipeline.tracker.run(result["run_id"]).info.experiment_id
    print(f"pipeline run {result['run_id']} finished; {_where(pipeline.tracker.uri, experiment_id, result['run_id'])}")
    return 0


def cmd_retrain(args) -> int:
    import ray

    from pipelines.infra.console import Console, quiet_ray_data, quiet_ray_init_kwargs, verbose_requested
    from pipelines.workflow.request import check_request
    from pipelines.workflow.retrain import retrain

    req = dataclasses.replace(request_from_args(args), from_scratch=args.from_scratch)
    verbose = verbose_requested(args.verbose)
    if not verbose and not ray.is_initialized():  # else the stages' connect_ray() starts Ray with its own logs on
        check_request(req)  # config errors and unreachable services are reported before Ray starts
        ray.init(**quiet_ray_init_kwargs(verbose))
        quiet_ray_data()
    retrain(req, log=Console())  # its last line says the cycle's decision and why
    return 0


def cmd_ui(args) -> int:
    """`mlflow ui` on the store `adm run` used (the same default), bound to 127.0.0.1; runs until Ctrl-C, SIGTERM or
    SIGHUP, which stop the UI's whole process tree."""
    import sys

    from pipelines.infra.tracking_checks import TrackingError, resolve_tracking_uri, sqlite_path

    uri = resolve_tracking_uri(args.tracking_uri)
    if uri.startswith(("http://", "https://")):
        print(f"{uri} is an MLflow server: its UI is at {uri}")
        return 0
    db = sqlite_path(uri)
    if db is not None and not db.exists():
        raise TrackingError(f"no MLflow store at {db}: run adm run here first, or pass the --tracking-uri it used")
    _check_port_free(args.port)
    print(f"MLflow UI of {uri}: http://127.0.0.1:{args.port}/#/experiments?workflowType=machine_learning (Ctrl-C "
          "stops it)", flush=True)
    # one worker: a UI for one user starts faster, and with several uvicorn supervises (and restarts) slow workers
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
               "--port", str(args.port), "--workers", "1"]
    code = serve_until_stopped(command)
    print("MLflow UI stopped", flush=True)
    return code


STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP")
STOP_GRACE_S = 10  # what the UI's processes get to end after SIGTERM, before SIGKILL


def serve_until_stopped(command: list[str]) -> int:
    """Run `command` in a process group of its own (a session, so a terminal's Ctrl-C reaches only adm) until it ends
    or adm gets SIGTERM, SIGINT or SIGHUP; then, and whatever else ends adm here, the whole group is stopped: the
    server and the processes it started (mlflow ui's uvicorn). A stop asked for is a normal end (0); a server that
    ended by itself gives its exit status."""
    import signal
    import subprocess

    started, stopped = [], []

    def stop(signum, frame):
        stopped.append(signum)
        for child in started:
            _signal_group(child.pid, signal.SIGTERM)

    previous = {name: signal.signal(getattr(signal, name), stop) for name in STOP_SIGNALS}
    try:
        if stopped:  # a stop before the server started: nothing to serve
            return 0
        started.append(subprocess.Popen(command, start_new_session=True))
        code = started[0].wait()
    finally:
        for child in started:
            _stop_group(child)
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)
    return 0 if stopped else code


def _signal_group(pgid: int, signum: int) -> bool:
    """Send `signum` to process group `pgid` (0: only check it); False when no process of it is left."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    return True


def _stop_group(child) -> None:
    """End the process group that `child` leads, members that outlive it included: SIGTERM, then SIGKILL to what is
    left after STOP_GRACE_S; returns once the group is gone or killed."""
    import signal
    import time

    deadline = time.monotonic() + STOP_GRACE_S
    _signal_group(child.pid, signal.SIGTERM)
    while True:
        child.poll()  # reaps the leader once it has ended: then only live members keep the group
        if not _signal_group(child.pid, 0):
            break
        if time.monotonic() > deadline:
            _signal_group(child.pid, signal.SIGKILL)
            break
        time.sleep(0.1)
    child.wait()


def _check_port_free(port: int) -> None:
    """The UI's port on 127.0.0.1 is a port and nothing listens there: mlflow ui itself only logs the failure and
    exits 0, after the UI's address was printed."""
    import socket

    if not 1 <= port <= 65535:
        raise UserError(f"--port {port} is not a port (1 to 65535); e.g. --port 5001")
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            raise UserError(f"--port {port}: 127.0.0.1:{port} is in use ({e.strerror}); stop what serves there "
                            "(another adm ui or mlflow ui?) or pass another --port") from None


def _pipeline_args(p) -> None:
    preset_args(p)
    p.add_argument("--data", default=None, help="ingest source (default: the preset's): fashion-mnist, shapes, "
                   "fashion-mnist:/dir, or an image folder URL with one sub-folder per class")
    p.add_argument("--workdir", default="adm-work", help="folder or URL for data, checkpoints, samples and caches")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)")
    p.add_argument("--experiment", default="adm", help="MLflow experiment name")
    p.add_argument("--model-prefix", default=None,
                   help="registered model names are PREFIX-diffusion and PREFIX-classifier (default: adm-PRESET)")


def add_parsers(sub) -> None:
    p = sub.add_parser("run", help="the whole pipeline: ingest, train, sample over the scale grid, evaluate, register")
    _pipeline_args(p)
    p.add_argument("--force", action="store_true", help="recompute every stage even when a finished one matches")
    p.add_argument("--resume", default=None, metavar="RUN_ID",
                   help="continue a pipeline run that died, from its last finished stage (its config is reused)")
    p.add_argument("--no-register", action="store_true", help="skip model registration")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved config and the Ray resources of each stage, then exit")
    p.add_argument("--assume-cpus", type=float, default=2.0, help="cluster CPUs assumed by --dry-run")
    verbose_arg(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("ui", help="serve the MLflow UI of the store adm run used on http://127.0.0.1:PORT/")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)")
    p.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default 5000)")
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser("retrain", help="one idempotent retraining cycle: skip if data, code and config match the "
                       "champion's, else run the pipeline and promote only if the chosen metric improved")
    _pipeline_args(p)
    p.add_argument("--force", action="store_true", help="run the pipeline (all stages) even if nothing changed")
    p.add_argument("--from-scratch", action="store_true", help="train from random weights, not from the champion "
                   "(the default when one exists and fits the preset's networks)")
    verbose_arg(p)
    p.set_defaults(func=cmd_retrain, no_register=False, resume=None)
