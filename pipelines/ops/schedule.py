"""`adm schedule`: install periodic retraining where the user runs it — no scheduler daemon of our own.

* kubernetes: the RayCronJob of cluster/kuberay/raycronjob.yaml with the given schedule and `adm retrain ...` command,
  printed, or applied with `kubectl apply -f -`;
* crontab: one crontab line that calls `adm submit --wait ... retrain ...` (printed, or installed with `crontab`);
* systemd: a user service + timer (OnCalendar from the cron expression) that run the same command.

Each target reads its text its own way, so each gets its own quoting (tests/pipelines/test_schedule.py reads them back):
cron ends a command at a `%` no backslash escapes (the rest becomes its stdin), then /bin/sh parses it; systemd
resolves `%` specifiers in every value, splits ExecStart= with quotes and C escapes, and expands `$` variables; the
RayCronJob is YAML (safe_dump quotes what it must) holding a shell line, where `%` is plain.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from components.config import UserError
from pipelines.ops import all_problems

FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7))
DAYS = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MARKER = "# adm-pipeline schedule"


class ScheduleError(UserError):
    pass


# --- cron expressions -------------------------------------------------------------------------------------------------
def _check_part(part: str, name: str, low: int, high: int) -> None:
    base, _, step = part.partition("/")
    if step and (not step.isdigit() or int(step) == 0):
        raise ScheduleError(f"cron {name} field {part!r}: the step after '/' must be a positive number")
    if base == "*":
        return
    ends = base.split("-")
    if len(ends) > 2 or not all(e.isdigit() for e in ends):
        raise ScheduleError(f"cron {name} field {part!r}: use *, N, N-M, */S or lists of those (numbers only)")
    values = [int(e) for e in ends]
    if not all(low <= v <= high for v in values) or values != sorted(values):
        raise ScheduleError(f"cron {name} field {part!r}: values must lie in {low}-{high}, ranges low-high")


def cron_problems(expr: str) -> list[str]:
    """What is wrong with a standard cron expression, every field's problem."""
    fields = expr.split()
    if len(fields) != 5:
        return [f"--cron {expr!r}: give five fields 'minute hour day-of-month month day-of-week', e.g. '0 3 * * 0' "
                "(Sundays at 03:00)"]
    problems = []
    for field, (name, low, high) in zip(fields, FIELDS):
        for part in field.split(","):
            try:
                _check_part(part, name, low, high)
            except ScheduleError as e:
                problems.append(str(e))
    return problems


def parse_cron(expr: str) -> list[str]:
    """The five fields of a standard cron expression, validated; a clear error naming every problem otherwise."""
    problems = cron_problems(expr)
    if problems:
        raise ScheduleError(all_problems(problems))
    return expr.split()


def _calendar_part(part: str, first: int, day_names: bool = False) -> str:
    base, _, step = part.partition("/")
    if day_names:
        if step:
            raise ScheduleError(f"day of week {part!r} with a step has no systemd form; use --target crontab")
        ends = [DAYS[int(e)] for e in base.split("-")]
        return "..".join(ends)
    if base == "*":
        return f"{first}/{step}" if step else "*"
    if "-" in base:
        if step:
            raise ScheduleError(f"{part!r}: a range with a step has no systemd form; use --target crontab")
        return base.replace("-", "..")
    return f"{int(base):02d}/{step}" if step else f"{int(base):02d}"


def on_calendar(expr: str) -> str:
    """systemd OnCalendar= for a cron expression, e.g. '0 3 * * 0' -> 'Sun *-*-* 03:00:00'."""
    minute, hour, dom, month, dow = parse_cron(expr)

    def conv(field, first, names=False):
        return ",".join(_calendar_part(p, first, names) for p in field.split(","))

    if dom != "*" and dow != "*":
        raise ScheduleError("cron with both day-of-month and day-of-week set (either matches) has no systemd form; "
                            "use --target crontab")
    days = "" if dow == "*" else conv(dow, 0, names=True) + " "
    return f"{days}*-{conv(month, 1)}-{conv(dom, 1)} {conv(hour, 0)}:{conv(minute, 0)}:00"


# --- the command each cycle runs --------------------------------------------------------------------------------------
def retrain_command(retrain_args: list[str]) -> list[str]:
    args = list(retrain_args)
    if args and args[0] == "retrain":
        args = args[1:]
    return ["retrain", *args]


def submit_command(retrain_args: list[str], address: str | None) -> list[str]:
    """What a plain host's timer runs: adm submit --wait [--address A] retrain ... (absolute path to adm)."""
    adm = shutil.which("adm")
    head = [adm] if adm else [sys.executable, "-m", "pipelines.cli"]

    options = ["--address", address] if address else []
    if os.environ.get("MLFLOW_TRACKING_URI") and "--tracking-uri" not in retrain_args:  # cron's env is bare
        options += ["--tracking-uri", os.environ["MLFLOW_TRACKING_URI"]]
    return [*head, "submit", "--wait", *options, *retrain_command(retrain_args)]


# --- targets ----------------------------------------------------------------------------------------------------------
def template_problems(template: Path) -> list[str]:
    if template.is_file():
        return []
    return [f"--template {template}: no such file (it ships in the repository as cluster/kuberay/raycronjob.yaml)"]


def kubernetes_manifest(cron: str, retrain_args: list[str], template: Path, name: str | None = None) -> str:
    problems = cron_problems(cron) + template_problems(template)
    if problems:
        raise ScheduleError(all_problems(problems))
    manifest = yaml.safe_load(template.read_text())
    manifest["spec"]["schedule"] = cron
    manifest["spec"]["jobTemplate"]["entrypoint"] = shlex.join(["adm", *retrain_command(retrain_args)])
    if name:
        manifest["metadata"]["name"] = name
    return yaml.safe_dump(manifest, sort_keys=False)


def cron_word(arg: str) -> str:
    """One shell word of a crontab command: shell-quoted, each % written \\% and kept out of the quotes, so that no
    backslash of the argument stands before it (cron would then read the escape as that backslash's, and cut)."""
    if "\n" in arg or "\r" in arg:
        raise ScheduleError(f"{arg!r}: a crontab line cannot hold a newline; use --target systemd")
    if not arg:
        return "''"
    return "\\%".join(shlex.quote(piece) if piece else "" for piece in arg.split("%"))


def cron_marker(name: str) -> str:
    """The comment that ends the line of schedule `name` (a shell comment, read by cron first: % escaped)."""
    return f"{MARKER} {name}".replace("%", "\\%")


def crontab_line(cron: str, retrain_args: list[str], address: str | None, log: Path, name: str) -> str:
    parse_cron(cron)
    command = " ".join(cron_word(a) for a in submit_command(retrain_args, address))
    return f"{cron} {command} >> {cron_word(str(log))} 2>&1 {cron_marker(name)}"


def install_crontab(line: str, name: str, file: Path | None = None) -> None:
    """Put `line` into the user's crontab (or into `file`, a crontab kept elsewhere), replacing the line of an earlier
    schedule of the same name and keeping every other line."""
    if file is None and shutil.which("crontab") is None:
        raise ScheduleError("no `crontab` on this machine; install cron, or use --target systemd")
    if file is None:
        current = subprocess.run(["crontab", "-l"], capture_output=True, text=True)
        lines = current.stdout.splitlines() if current.returncode == 0 else []
    else:
        lines = file.read_text().splitlines() if file.exists() else []
    text = "\n".join([*(x for x in lines if not x.endswith(cron_marker(name))), line]) + "\n"
    if file is None:
        subprocess.run(["crontab", "-"], input=text, text=True, check=True)
        return
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.tmp")
    tmp.write_text(text)
    tmp.replace(file)


def systemd_value(text: str) -> str:
    """A unit file value as systemd reads it back: % starts a specifier (%% is one %); one line."""
    if "\n" in text or "\r" in text:
        raise ScheduleError(f"{text!r}: a systemd unit setting cannot hold a newline")
    return text.replace("%", "%%")


def systemd_word(arg: str) -> str:
    """One argument of ExecStart=: as it is when made of plain characters, else double-quoted with C escapes
    (systemd decodes them inside quotes too, so a shell's quoting would not do), $ written $$ (else a variable),
    % written %% (else a specifier)."""
    if re.fullmatch(r"[\w@+=:,./-]+", arg):
        return arg
    quoted = arg.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return '"' + quoted.replace("$", "$$").replace("%", "%%") + '"'


def systemd_problems(cron: str, name: str) -> list[str]:
    """What keeps a schedule from being systemd units: a name no unit can have, a cron with no OnCalendar form."""
    problems = [] if re.fullmatch(r"[A-Za-z0-9:_.-]+", name) else [
        f"--name {name!r}: a systemd unit name holds only ASCII letters, digits and :_.-"]
    if not cron_problems(cron):  # else reported as such
        try:
            on_calendar(cron)
        except ScheduleError as e:
            problems.append(str(e))
    return problems


def systemd_units(cron: str, retrain_args: list[str], address: str | None, name: str) -> dict[str, str]:
    problems = cron_problems(cron) + systemd_problems(cron, name)
    if problems:
        raise ScheduleError(all_problems(problems))
    calendar = on_calendar(cron)
    command = " ".join(systemd_word(a) for a in submit_command(retrain_args, address))
    service = (f"[Unit]\nDescription={systemd_value(f'adm-pipeline retraining cycle ({name})')}\n\n[Service]\n"
               f"Type=oneshot\nWorkingDirectory={systemd_value(str(Path.cwd()))}\nExecStart={command}\n")
    timer = (f"[Unit]\nDescription={systemd_value(f'adm-pipeline retraining schedule ({name}: cron {cron})')}\n\n"
             f"[Timer]\nOnCalendar={calendar}\nPersistent=true\n\n[Install]\nWantedBy=timers.target\n")
    return {f"adm-retrain-{name}.service": service, f"adm-retrain-{name}.timer": timer}


def write_units(units: dict[str, str], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, text in units.items():
        tmp = folder / f".{filename}.tmp"
        tmp.write_text(text)
        tmp.replace(folder / filename)
        written.append(folder / filename)
    return written
