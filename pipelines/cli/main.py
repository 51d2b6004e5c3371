"""The `adm` command: the top-level parser, `adm presets` / `adm config`, and error reporting."""

import argparse
import json
import os
import select
import signal
import sys
import traceback

from components.config import UserError, to_dict
from components.config.presets import PRESET_BUILDERS, get_preset
from pipelines.cli import data, evaluate, jobs, models, run, sample, train, upsample
from pipelines.cli.common import preset_args, resolved_preset
from pipelines.infra.services import store_failed
from pipelines.infra.tracking_checks import bound_http_retries, server_gone


def cmd_presets(args) -> int:
    for name in sorted(PRESET_BUILDERS):
        print(f"{name:20s} {get_preset(name).description}")
    return 0


def cmd_config(args) -> int:
    from components.config.validation import validate_preset

    preset = resolved_preset(args)
    validate_preset(preset)
    print(json.dumps(to_dict(preset), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adm", description="Classifier-guided diffusion (ADM-G) on Ray + MLflow")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error (also: ADM_TRACEBACK=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("presets", help="list the named configurations")
    p.set_defaults(func=cmd_presets)
    p = sub.add_parser("config", help="print a preset's resolved configuration as JSON")
    preset_args(p)
    p.set_defaults(func=cmd_config)
    for command in (data, train, sample, upsample, evaluate, run, jobs, models):  # each adds its sub-commands
        command.add_parsers(sub)
    return parser


STDOUT_GONE = 128 + signal.SIGPIPE  # what a shell shows for a tool that SIGPIPE ended (`adm models list | head`)


def main(argv=None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()  # now, not at exit: a reader that has gone is seen here
        return code
    except BrokenPipeError:
        if _stdout_gone():
            return STDOUT_GONE
        raise


def _stdout_gone() -> bool:
    """Whether standard output is a pipe whose reader has gone (closed by `head`: poll reports an error on its write
    end); then it is pointed at /dev/null, so that the exit's own flush does not print "Exception ignored ...
    BrokenPipeError" on stderr."""
    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        gone = any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no real file behind stdout, or no poll on this system
        return False
    if gone:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    return gone


def _main(argv=None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "takes_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.parser = parser  # adm submit / schedule check the command they wrap with this same parser
    if getattr(args, "takes_extra", False):
        args.command = extra  # adm submit: everything after the submit options is the adm command to run
    bound_http_retries()
    try:
        return args.func(args)
    except BrokenPipeError as e:  # the reader of our output has gone, quietly; else a connection's end, an error
        return STDOUT_GONE if _stdout_gone() else _error(args, str(e))
    except (UserError, OSError) as e:  # OSError: files, permissions, disks, the network: the user's to fix
        return _error(args, str(e))
    except Exception as e:  # a service that answered the probes and then failed: named, with the fix
        gone = server_gone(e) or store_failed(e)
        if gone is None:
            raise
        return _error(args, gone)
    except KeyboardInterrupt:
        print("adm: interrupted; the MLflow runs are marked KILLED (adm run --resume RUN_ID continues a pipeline)",
              file=sys.stderr)
        return 130


def _error(args, message: str) -> int:
    if args.debug or os.environ.get("ADM_TRACEBACK"):
        traceback.print_exc()
    print(f"adm: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
