"""Arguments several `adm` sub-commands share."""

import argparse

from components.config import apply_overrides
from components.presets import DEFAULT_PRESET, PRESET_BUILDERS, get_preset


def preset_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESET_BUILDERS),
                        help=f"named configuration (default: {DEFAULT_PRESET})")
    parser.add_argument("--override", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="change one preset field, e.g. unet.model_channels=64 (repeatable)")


def resolved_preset(args):
    return apply_overrides(get_preset(args.preset), args.override)
