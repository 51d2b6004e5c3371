"""Arguments several `adm` sub-commands share."""

import argparse
import contextlib
import os
import tempfile
from pathlib import Path

from components.config import UserError, apply_overrides
from components.config.presets import DEFAULT_PRESET, PRESET_BUILDERS, get_preset


def preset_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESET_BUILDERS),
                        help=f"named configuration (default: {DEFAULT_PRESET})")
    parser.add_argument("--override", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="change one preset field, e.g. unet.model_channels=64 (repeatable)")


def resolved_preset(args):
    return apply_overrides(get_preset(args.preset), args.override)


def tracking_args(parser: argparse.ArgumentParser) -> None:
    """Where a stage command logs: the MLflow server and experiment, or nowhere (--no-track)."""
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite)")
    parser.add_argument("--experiment", default="adm", help="MLflow experiment name")
    parser.add_argument("--no-track", action="store_true", help="do not log to MLflow")


def verbose_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true", help="also show Ray's and MLflow's own logs (worker output, "
                        "Ray Data progress, warnings); same as ADM_VERBOSE=1")


@contextlib.contextmanager
def command_console(args, command: str):
    """The `log` of a command's stages: progress bars on a terminal, a line now and then in a file or pipe. Unless
    --verbose (kept in ADM_VERBOSE for the Ray start), what Ray's C++ core worker in this process prints (warnings
    about its own actors) goes to adm-<command>-<pid>-native.log in the temp folder, kept only if not empty, as
    `adm run` keeps it with the run; adm's own messages and errors stay on the console."""
    from pipelines.infra.console import Console, verbose_requested
    from pipelines.infra.ray_logs import NativeStderr

    if verbose_requested(args.verbose):
        yield Console()
        return
    path = Path(tempfile.gettempdir()) / f"adm-{command}-{os.getpid()}-native.log"
    native = NativeStderr(path)
    native.start()
    try:
        yield Console()
    finally:
        native.stop()
        if path.exists() and path.stat().st_size == 0:
            path.unlink()


def check_assume_cpus(cpus: float) -> None:
    """--assume-cpus of the --dry-run plans: a number of CPUs."""
    if not cpus > 0:
        raise UserError(f"--assume-cpus {cpus:g} must be a number of CPUs above 0, e.g. --assume-cpus 8")
