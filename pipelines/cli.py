"""The `adm` command."""

import argparse
import json
import os
import sys
import traceback

from components.config import UserError, apply_overrides, to_dict
from components.presets import DEFAULT_PRESET, PRESET_BUILDERS, get_preset


def _preset_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESET_BUILDERS),
                        help=f"named configuration (default: {DEFAULT_PRESET})")
    parser.add_argument("--override", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="change one preset field, e.g. unet.model_channels=64 (repeatable)")


def resolved_preset(args):
    return apply_overrides(get_preset(args.preset), args.override)


def cmd_presets(args) -> int:
    for name in sorted(PRESET_BUILDERS):
        print(f"{name:20s} {get_preset(name).description}")
    return 0


def cmd_config(args) -> int:
    print(json.dumps(to_dict(resolved_preset(args)), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adm", description="Classifier-guided diffusion (ADM-G) on Ray + MLflow")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("presets", help="list the named configurations")
    p.set_defaults(func=cmd_presets)
    p = sub.add_parser("config", help="print a preset's resolved configuration as JSON")
    _preset_args(p)
    p.set_defaults(func=cmd_config)
    from . import data_cli, evaluate_cli, jobs_cli, run_cli, sample_cli, train_cli

    data_cli.add_parser(sub)
    train_cli.add_parser(sub, _preset_args)
    sample_cli.add_parser(sub)
    evaluate_cli.add_parser(sub)
    run_cli.add_parser(sub, _preset_args)
    jobs_cli.add_parser(sub)
    jobs_cli.add_schedule_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "takes_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "takes_extra", False):
        args.command = extra  # adm submit: everything after the submit options is the adm command to run
    try:
        return args.func(args)
    except (UserError, FileNotFoundError) as e:
        if os.environ.get("ADM_TRACEBACK"):
            traceback.print_exc()
        print(f"adm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("adm: interrupted; the MLflow runs are marked KILLED (adm run --resume RUN_ID continues a pipeline)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
