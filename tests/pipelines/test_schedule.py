"""`adm schedule`'s definitions read back the way their targets read them: a crontab line as cron and /bin/sh read it,
systemd units as systemd reads them (and `systemd-analyze verify` where it is installed), the RayCronJob as YAML and
the shell line of its entrypoint. Arguments carry `%`, `$`, quotes, backslashes and spaces, which each target treats
differently. No cluster, cron or systemd manager needed."""

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pipelines.ops import schedule as sch

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "cluster" / "kuberay" / "raycronjob.yaml"
# what a user passes: a URL-encoded password (%40 is '@'), names with % and $, a folder with spaces and quotes
NASTY = ["--preset", "smoke", "--workdir", "/shared/adm 100%/it's \"here\"", "--tracking-uri",
         "http://ops%40corp:pa$$w0rd@mlflow:5000", "--experiment", "nightly%run", "--model-prefix", "a\\%b$HOME\\"]


# --- cron: cron ends the command at an unescaped %, the rest becomes its stdin; /bin/sh runs the command -------------
def cron_reads(line: str) -> tuple[str, str, str]:
    """(schedule, command, stdin) as cron reads a crontab line: five fields, then the command up to the first % that
    no backslash escapes (a backslash before a % is dropped, any other backslash stays), the rest is the command's
    standard input (its other %s become newlines); what vixie cron's do_command.c and cronie do."""
    fields = line.split(None, 5)
    schedule, text = " ".join(fields[:5]), fields[5]
    command, escaped = [], False
    for i, ch in enumerate(text):
        if escaped:
            if ch == "%":
                command[-1] = "%"  # the backslash goes, the % stays
            else:
                command.append(ch)
            escaped = False
            continue
        if ch == "%":
            return schedule, "".join(command), text[i + 1:].replace("%", "\n")
        command.append(ch)
        escaped = ch == "\\"
    return schedule, "".join(command), ""


def sh_argv(command: str, cwd: Path) -> list[str]:
    """The argv /bin/sh makes of a crontab command (its redirection and trailing comment included): the words become
    the arguments of `set --`, printed back NUL-separated."""
    script = f"set -- {command}\nprintf '%s\\0' \"$@\""
    done = subprocess.run(["/bin/sh", "-c", script], cwd=cwd, capture_output=True, text=True, check=True)
    return done.stdout.split("\0")[:-1]


def test_cron_reads_the_line_back_to_the_same_command(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env%40user@mlflow:5000")
    log = tmp_path / "logs 5%" / "retrain.log"
    log.parent.mkdir()
    line = sch.crontab_line("0 3 * * 0", NASTY, "http://head:8265", log, "nightly")
    schedule, command, stdin = cron_reads(line)
    assert schedule == "0 3 * * 0" and stdin == "", f"cron cuts the command at a %: {command!r} | stdin {stdin!r}"
    argv = sh_argv(command, tmp_path)
    assert argv == sch.submit_command(NASTY, "http://head:8265")
    assert argv[-len(NASTY) - 1:] == ["retrain", *NASTY]
    assert log.exists()  # the shell's `>> LOG` went to the log file the user named
    assert line.endswith(f"{sch.MARKER} nightly")


def test_cron_line_of_a_name_with_a_percent_sign_is_replaced_on_reinstall(tmp_path):
    crontab = tmp_path / "crontab"
    for cron in ("0 3 * * 0", "30 4 * * 1"):
        sch.install_crontab(sch.crontab_line(cron, ["--preset", "smoke"], None, tmp_path / "log", "50%off"),
                            "50%off", crontab)
    (line,) = crontab.read_text().splitlines()
    schedule, command, stdin = cron_reads(line)
    assert (schedule, stdin) == ("30 4 * * 1", "")


def test_crontab_refuses_a_newline_it_cannot_hold(tmp_path):
    with pytest.raises(sch.ScheduleError, match="newline"):
        sch.crontab_line("0 3 * * 0", ["--experiment", "two\nlines"], None, tmp_path / "log", "nightly")


# --- systemd: % starts a specifier, $ a variable, quotes and C escapes in ExecStart= ----------------------------------
def systemd_specifiers(value: str) -> str:
    """A unit file value with its specifiers resolved: %% is a %, any other % a specifier (refused here)."""
    out, i = [], 0
    while i < len(value):
        if value[i] == "%":
            assert value[i + 1:i + 2] == "%", f"unescaped specifier %{value[i + 1:i + 2]} in {value!r}"
            out.append("%")
            i += 2
            continue
        out.append(value[i])
        i += 1
    return "".join(out)


ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t", "s": " ", "$": "$", ";": ";"}


def systemd_words(value: str) -> list[str]:
    """ExecStart='s words as systemd splits them (systemd.syntax(7)): whitespace between words, "..." and '...' quote,
    a backslash escape (C style) is decoded inside quotes and out; then $$ is a $ (a lone $ would name a variable)."""
    words, word, quote, i, started = [], [], None, 0, False
    while i < len(value):
        ch = value[i]
        if ch == "\\":
            assert value[i + 1] in ESCAPES, f"unknown escape \\{value[i + 1]} in {value!r}"
            word.append(ESCAPES[value[i + 1]])
            i, started = i + 2, True
            continue
        if quote:
            if ch == quote:
                quote = None
            else:
                word.append(ch)
        elif ch in "\"'":
            quote, started = ch, True
        elif ch in " \t":
            if started:
                words.append("".join(word))
            word, started = [], False
        else:
            word.append(ch)
            started = True
        i += 1
    assert quote is None, f"unclosed quote in {value!r}"
    if started:
        words.append("".join(word))
    decoded = []
    for w in words:
        assert not re.search(r"(?<!\$)\$(?!\$)", w.replace("$$", "")), f"a variable reference in {w!r}"
        decoded.append(w.replace("$$", "$"))
    return decoded


def unit_values(text: str) -> dict:
    return {k: v for k, _, v in (line.partition("=") for line in text.splitlines() if "=" in line)}


def test_systemd_reads_the_units_back_to_the_same_command(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env%40user@mlflow:5000")
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "work 100%"
    folder.mkdir()
    monkeypatch.chdir(folder)
    units = sch.systemd_units("0 3 * * 0", NASTY, "http://head:8265", "nightly")
    service = unit_values(units["adm-retrain-nightly.service"])
    assert systemd_words(systemd_specifiers(service["ExecStart"])) == sch.submit_command(NASTY, "http://head:8265")
    assert systemd_specifiers(service["WorkingDirectory"]) == str(folder)
    timer = unit_values(units["adm-retrain-nightly.timer"])
    assert systemd_specifiers(timer["Description"]) == "adm-pipeline retraining schedule (nightly: cron 0 3 * * 0)"


@pytest.mark.parametrize("name", ["n%1", "my job", "a/b", ""])
def test_systemd_refuses_a_name_no_unit_file_can_have(name):
    """systemd unit names hold ASCII letters, digits and :_.- (and @ of templates): no quoting makes others valid."""
    with pytest.raises(sch.ScheduleError, match="--name"):
        sch.systemd_units("0 3 * * 0", ["--preset", "smoke"], None, name)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_systemd_analyze_verifies_the_units(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env%40user@mlflow:5000")
    folder = tmp_path / "work 100%"
    folder.mkdir()
    monkeypatch.chdir(folder)
    paths = sch.write_units(sch.systemd_units("0 3 * * 0", NASTY, "http://head:8265", "nightly"), tmp_path / "u")
    done = subprocess.run(["systemd-analyze", "verify", *map(str, paths)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # the check can fail: the same unit with a bare % is a fatal error for systemd
    bad = tmp_path / "bad" / "adm-retrain-bad.service"
    bad.parent.mkdir()
    bad.write_text(paths[0].read_text().replace("%%40", "%40"))
    done = subprocess.run(["systemd-analyze", "verify", str(bad)], capture_output=True, text=True)
    assert done.returncode != 0 and "specifier" in done.stderr


# --- kubernetes: YAML quotes what it must; the entrypoint is a shell line, % and $ are plain there -------------------
def test_raycronjob_entrypoint_reads_back_to_the_same_command(tmp_path):
    manifest = yaml.safe_load(sch.kubernetes_manifest("0 3 * * 0", NASTY, TEMPLATE, "adm-weekly"))
    entrypoint = manifest["spec"]["jobTemplate"]["entrypoint"]
    assert shlex.split(entrypoint) == ["adm", "retrain", *NASTY]
    assert sh_argv(entrypoint, tmp_path) == ["adm", "retrain", *NASTY]
    assert manifest["spec"]["schedule"] == "0 3 * * 0"


# --- every problem at once, as adm run reports them -------------------------------------------------------------------
def test_schedule_reports_every_problem_at_once(capsys, monkeypatch):
    from pipelines.cli.main import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code = main(["schedule", "--cron", "0 25 * * 8", "--preset", "smoke", "--workdir", "relative",
                 "--override", "unet.model_channels=33"])
    err = capsys.readouterr().err
    assert code == 2
    for problem in ("--workdir relative", "no MLflow tracking URI", "cron hour field '25'",
                    "cron day of week field '8'", "num_head_channels"):
        assert problem in err, f"{problem!r} missing from:\n{err}"
    assert "7 problems" in err and "Traceback" not in err  # the configuration has three


def test_kubernetes_schedule_reports_every_problem_at_once(capsys, tmp_path):
    from pipelines.cli.main import main

    code = main(["schedule", "--cron", "61 3 * *", "--target", "kubernetes", "--template", str(tmp_path / "none.yaml"),
                 "--preset", "smoke", "--override", "unet.model_channels=33"])
    err = capsys.readouterr().err
    assert code == 2
    for problem in ("give five fields", "none.yaml: no such file", "num_head_channels"):
        assert problem in err, f"{problem!r} missing from:\n{err}"


# --- kubernetes --apply: what kubectl is given ------------------------------------------------------------------------
def test_kubernetes_apply_gives_kubectl_the_manifest_on_stdin(tmp_path, monkeypatch, capfd):
    """A stand-in kubectl, first on PATH, records its arguments and standard input and answers as kubectl does."""
    from pipelines.cli.main import main

    calls, stand_in = tmp_path / "calls", tmp_path / "bin" / "kubectl"
    calls.mkdir()
    stand_in.parent.mkdir()
    stand_in.write_text(f"#!/bin/sh\nprintf '%s\\0' \"$@\" > {shlex.quote(str(calls))}/args\n"
                        f"cat > {shlex.quote(str(calls))}/stdin\necho raycronjob.ray.io/adm-weekly created\n")
    stand_in.chmod(0o755)
    monkeypatch.setenv("PATH", f"{stand_in.parent}{os.pathsep}{os.environ['PATH']}")
    retrain = ["--preset", "smoke", "--workdir", "s3://bucket/adm", "--experiment", "nightly%run",
               "--tracking-uri", "http://ops%40corp@mlflow:5000"]
    code = main(["schedule", "--cron", "15 2 * * 1-5", "--target", "kubernetes", "--apply", "--name", "adm-weekly",
                 *retrain])
    out = capfd.readouterr()  # kubectl's own output, not the manifest, reaches the user
    assert code == 0 and out.out == "raycronjob.ray.io/adm-weekly created\n", out
    assert (calls / "args").read_text().split("\0")[:-1] == ["apply", "-f", "-"]
    manifest = yaml.safe_load((calls / "stdin").read_text())
    template = yaml.safe_load(TEMPLATE.read_text())
    assert (manifest["apiVersion"], manifest["kind"], manifest["metadata"]["name"]) == ("ray.io/v1", "RayCronJob",
                                                                                        "adm-weekly")
    assert manifest["spec"]["schedule"] == "15 2 * * 1-5"
    job = manifest["spec"]["jobTemplate"]
    assert shlex.split(job["entrypoint"]) == ["adm", "retrain", *retrain]
    assert {k: v for k, v in job.items() if k != "entrypoint"} == {
        k: v for k, v in template["spec"]["jobTemplate"].items() if k != "entrypoint"}  # the rest as shipped
