"""`adm submit` (an adm command as a Ray job) and `adm jobs status|logs|stop|list`."""

import shlex
import sys


def _cluster_args(p) -> None:
    p.add_argument("--address", default=None, help="Ray dashboard URL (default: $RAY_API_SERVER_ADDRESS, an http "
                   "$RAY_ADDRESS, else http://127.0.0.1:8265)")
    p.add_argument("--token-file", default=None, help="file holding the cluster's auth token (default: "
                   "$RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token if present)")


def check_locally(parser, command: list[str]) -> None:
    """Parse a job's command with `adm`'s parser and check a pipeline's config: errors show before submitting."""
    from pipelines.cli.run import request_from_args
    from pipelines.ops.jobs import PIPELINE_COMMANDS, JobError
    from pipelines.workflow.request import check_config

    try:
        args = parser.parse_args(command)
    except SystemExit:
        raise JobError(f"the job's command is not valid: adm {shlex.join(command)} (see adm {command[0]} --help)") \
            from None
    if command[0] in PIPELINE_COMMANDS and not getattr(args, "resume", None):
        check_config(request_from_args(args))


def local_problems(parser, command: list[str]) -> list[str]:
    """check_locally's findings as a list: each of the configuration's problems, not one message holding them."""
    from components.config import UserError

    try:
        check_locally(parser, command)
    except UserError as e:
        head, *items = str(e).split("\n  - ")  # raise_problems: "the configuration has N problems:" + items
        return items if items and head.endswith("problems:") else [str(e)]
    return []


def cmd_submit(args) -> int:
    from pipelines.ops.jobs import failure_message, follow, job_command, submit

    command, env_vars = job_command(args.command, args.tracking_uri)
    check_locally(args.parser, command)
    client, job_id = submit(command, env_vars, address=args.address, token_file=args.token_file, pip=args.pip,
                            job_id=args.job_id, num_cpus=args.num_cpus)
    print(f"submitted job {job_id}")
    if not args.wait:
        print(f"follow it with: adm jobs logs {job_id} --follow" + (f" --address {args.address}" if args.address
                                                                    else ""))
        return 0
    status = follow(client, job_id)
    if status != "SUCCEEDED":
        print(f"adm: error: {failure_message(client, job_id, args.address, status)}", file=sys.stderr)
        return 1
    print(f"job {job_id} succeeded")
    return 0


def cmd_jobs(args) -> int:
    from pipelines.ops.jobs import connect, failure_message, follow, job_status

    client = connect(args.address, args.token_file)
    if args.action == "list":
        for job in sorted(client.list_jobs(), key=lambda j: j.start_time or 0):
            print(f"{job.submission_id or job.job_id}\t{getattr(job.status, 'value', job.status)}\t{job.entrypoint}")
        return 0
    if not args.job_id:
        raise SystemExit(f"adm jobs {args.action}: give a JOB_ID (adm jobs list shows them)")
    status = job_status(client, args.job_id)
    if args.action == "status":
        print(status)
        if status in ("FAILED", "STOPPED"):
            print(failure_message(client, args.job_id, args.address, status), file=sys.stderr)
        return 0
    if args.action == "stop":
        print(f"stop requested for job {args.job_id}" if client.stop_job(args.job_id)
              else f"job {args.job_id} had already ended ({status})")
        return 0
    if args.follow:
        status = follow(client, args.job_id)
        return 0 if status == "SUCCEEDED" else 1
    sys.stdout.write(client.get_job_logs(args.job_id))
    return 0


def add_parsers(sub) -> None:
    add_job_parsers(sub)
    add_schedule_parser(sub)


def add_job_parsers(sub) -> None:
    p = sub.add_parser("submit", usage="adm submit [submit options] [run|retrain|train|sample|evaluate] [options]",
                       help="run an adm command (default: run) as a Ray job on a cluster",
                       description="Submit `adm run ...` (or retrain/train/sample/evaluate) as a Ray job. Submit "
                       "options come first; the rest is the adm command, e.g. `adm submit --address http://HEAD:8265 "
                       "--wait --preset smoke --workdir /shared/adm --tracking-uri http://MLFLOW:5000` or "
                       "`adm submit --wait retrain --preset fashion-mnist --workdir s3://bucket/adm`.")
    _cluster_args(p)
    p.add_argument("--wait", action="store_true", help="follow the job's logs until it ends; exit 1 if it failed")
    p.add_argument("--pip", action="append", default=None, metavar="REQUIREMENT",
                   help="pip requirement installed into the job's environment (repeatable); not needed when the "
                   "cluster image holds adm-pipeline's dependencies (cluster/Dockerfile)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI forwarded to the job (default: the "
                   "command's --tracking-uri, else $MLFLOW_TRACKING_URI)")
    p.add_argument("--job-id", default=None, help="submission id (default: adm-COMMAND-TIME-RANDOM)")
    p.add_argument("--num-cpus", type=float, default=0.0, help="CPUs reserved for the job's driver (default 0)")
    p.set_defaults(func=cmd_submit, command=[], takes_extra=True)

    p = sub.add_parser("jobs", help="status, logs, stop or list of Ray jobs submitted with adm submit")
    p.add_argument("action", choices=("status", "logs", "stop", "list"))
    p.add_argument("job_id", nargs="?", default=None, metavar="JOB_ID")
    p.add_argument("--follow", action="store_true", help="logs: stream until the job ends")
    _cluster_args(p)
    p.set_defaults(func=cmd_jobs)


def _run_tool(command: list[str], stdin: str | None = None) -> None:
    """An external tool that installs a schedule (kubectl, systemctl): its failure is the user's to fix, so it is
    reported with the command, after the tool's own output, without a traceback."""
    import subprocess

    from components.config import UserError

    try:
        subprocess.run(command, input=stdin, text=True, check=True)
    except FileNotFoundError:
        raise UserError(f"{command[0]} is not installed here; install it, or leave out --apply to print the "
                        "definition and install it elsewhere") from None
    except subprocess.CalledProcessError as e:
        raise UserError(f"`{shlex.join(command)}` failed with exit status {e.returncode} (its output is above); fix "
                        "what it reports, or leave out --apply to print the definition") from None


def cmd_schedule(args) -> int:
    from pathlib import Path

    from pipelines import PROJECT_ROOT
    from pipelines.ops import all_problems
    from pipelines.ops import schedule as sch
    from pipelines.ops.jobs import job_problems

    retrain, name = args.command, args.name or "default"
    template = Path(args.template or PROJECT_ROOT / "cluster" / "kuberay" / "raycronjob.yaml")
    # every problem at once, now rather than at 3 am: the command's options and config, the cron expression, and
    # what the target needs (a plain host's cycles call adm submit: a shared work dir and a tracking URI)
    problems = local_problems(args.parser, sch.retrain_command(retrain)) + sch.cron_problems(args.cron)
    if args.target == "kubernetes":
        problems += sch.template_problems(template)
    else:
        problems += job_problems(sch.retrain_command(retrain), None)
    if args.target == "systemd":
        problems += sch.systemd_problems(args.cron, name)
    if problems:
        raise sch.ScheduleError(all_problems(problems))
    if args.target == "kubernetes":
        text = sch.kubernetes_manifest(args.cron, retrain, template, args.name)
        if not args.apply:
            print(text, end="")
            return 0
        _run_tool(["kubectl", "apply", "-f", "-"], text)
        return 0
    if args.target == "crontab":
        line = sch.crontab_line(args.cron, retrain, args.address, Path(args.log).resolve(), name)
        if args.apply:
            file = Path(args.crontab_file).expanduser() if args.crontab_file else None
            sch.install_crontab(line, name, file)
            print(f"installed in {file or 'your crontab'}: {line}")
        else:
            print(line)
        return 0
    units = sch.systemd_units(args.cron, retrain, args.address, name)
    folder = Path(args.unit_dir).expanduser()
    if not args.apply:
        for filename, text in units.items():
            print(f"# {folder / filename}\n{text}")
        return 0
    for path in sch.write_units(units, folder):
        print(f"wrote {path}")
    if args.no_enable:
        return 0
    timer = next(f for f in units if f.endswith(".timer"))
    _run_tool(["systemctl", "--user", "daemon-reload"])
    _run_tool(["systemctl", "--user", "enable", "--now", timer])
    return 0


def add_schedule_parser(sub) -> None:
    p = sub.add_parser("schedule", usage="adm schedule --cron EXPR [--target T] [--apply] [retrain options]",
                       help="install periodic `adm retrain` cycles: a RayCronJob, a crontab line or a systemd timer",
                       description="Schedule retraining where you run it. Options after the schedule options are "
                       "`adm retrain` options, e.g. adm schedule --cron '0 3 * * 0' --target crontab --address "
                       "http://HEAD:8265 --preset fashion-mnist --workdir /shared/adm")
    p.add_argument("--cron", required=True, help="standard 5-field cron expression, e.g. '0 3 * * 0'")
    p.add_argument("--target", choices=("kubernetes", "crontab", "systemd"), default="crontab",
                   help="kubernetes: a KubeRay RayCronJob; crontab / systemd: this host calls adm submit --wait "
                   "retrain (default: crontab)")
    p.add_argument("--apply", action="store_true", help="install it (kubectl apply / crontab / systemctl --user); "
                   "without it the definition is printed")
    p.add_argument("--name", default=None, help="schedule name (RayCronJob name, crontab marker, unit suffix)")
    p.add_argument("--address", default=None, help="crontab/systemd: the Ray dashboard URL adm submit uses")
    p.add_argument("--template", default=None, help="kubernetes: RayCronJob template (default: "
                   "cluster/kuberay/raycronjob.yaml)")
    p.add_argument("--log", default="adm-retrain.log", help="crontab: file the cycles' output is appended to")
    p.add_argument("--crontab-file", default=None, metavar="FILE", help="crontab --apply: keep the line in FILE "
                   "(a crontab to load with `crontab FILE`, or to copy to another host) instead of your crontab")
    p.add_argument("--unit-dir", default="~/.config/systemd/user", help="systemd: where the units are written")
    p.add_argument("--no-enable", action="store_true", help="systemd --apply: write the units only, without "
                   "`systemctl --user daemon-reload` and `enable --now` (e.g. for a system folder or another host)")
    p.set_defaults(func=cmd_schedule, command=[], takes_extra=True)
