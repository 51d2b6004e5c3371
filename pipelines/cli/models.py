"""`adm models list|show|promote|rollback`: the registered versions of PREFIX-diffusion and PREFIX-classifier (and
PREFIX-upsampler for a cascade, PREFIX-guide for a preset with autoguidance's guide network)."""

import json

from components.config import UserError
from components.config.kinds import REGISTERED
from components.config.presets import DEFAULT_PRESET, PRESET_BUILDERS

NETWORKS = tuple(kind.name for kind in REGISTERED)  # the registered ones (upsampler, guide: some presets only)


def _tracker_and_prefix(args):
    from pipelines.infra.tracking import Tracker

    return Tracker(args.tracking_uri), args.model_prefix or f"adm-{args.preset}"


def _reason(args) -> str:
    if not args.reason.strip():
        raise UserError("--reason is empty; say why the champion moves (it is recorded on the versions)")
    return args.reason.strip()


def _move_line(move: dict | None) -> str:
    return "" if move is None else f"{move['action']} by {move['by']} at {move['at']}: {move['why']}"


def cmd_list(args) -> int:
    from pipelines.ops.model_versions import list_versions

    tracker, prefix = _tracker_and_prefix(args)
    found = list_versions(tracker, prefix)
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    for name, rows in found.items():
        print(f"{name}: {len(rows)} version(s)")
        for r in rows:
            metrics = " ".join(f"{k}={v:.4g}" + (" (best scale)" if k.rsplit("@", 1)[1] == r["best_scale"] else "")
                               for k, v in sorted(r["metrics"].items())) or "-"
            data = r["data_fingerprint"][:12] or "-"
            print(f"  {'*' if r['champion'] else ' '} v{r['version']:<4} {metrics:<24} data {data:<12} run "
                  f"{r['pipeline_run'] or '-'}" + (f" from {r['parent']}" if r["parent"] else "")
                  + (f" | {_move_line(r['last_move'])}" if r["last_move"] else ""))
            if r["decision"]:  # why the register stage promoted it or kept the champion
                print(f"        {r['decision']}: {r['reason']}")
    print("(* champion)")
    return 0


def cmd_show(args) -> int:
    from pipelines.ops.model_versions import show_version

    tracker, prefix = _tracker_and_prefix(args)
    print(json.dumps(show_version(tracker, prefix, args.network, args.version), indent=2))
    return 0


def cmd_promote(args) -> int:
    from pipelines.ops.model_versions import promote

    tracker, prefix = _tracker_and_prefix(args)
    for name, (version, move) in promote(tracker, prefix, args.network, args.version, _reason(args)).items():
        print(f"{name}: v{version} is already champion; nothing changed" if move is None
              else f"{name}: champion v{move['from'] or '-'} -> v{move['to']}")
    return 0


def cmd_rollback(args) -> int:
    from pipelines.ops.model_versions import rollback

    tracker, prefix = _tracker_and_prefix(args)
    for name, (version, move) in rollback(tracker, prefix, _reason(args)).items():
        print(f"{name}: v{version} is already champion; nothing changed" if move is None
              else f"{name}: champion v{move['from'] or '-'} -> v{move['to']} (rolled back)")
    return 0


def _common(p) -> None:
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESET_BUILDERS),
                   help="the pipeline whose models these are: the prefix defaults to adm-PRESET")
    p.add_argument("--model-prefix", default=None,
                   help="registered model names are PREFIX-diffusion, PREFIX-classifier (and PREFIX-upsampler for a "
                        "cascade, PREFIX-guide with a guide network) (default: adm-PRESET)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)")


def add_parsers(sub) -> None:
    models = sub.add_parser("models", help="the registry: list versions, show one, promote or roll back champion")
    actions = models.add_subparsers(dest="action", required=True)
    p = actions.add_parser("list", help="versions of both networks with metrics, data, lineage and the champion")
    _common(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_list)
    p = actions.add_parser("show", help="one version: tags, moves, partner")
    _common(p)
    p.add_argument("version")
    p.add_argument("--network", default="diffusion", choices=NETWORKS)
    p.set_defaults(func=cmd_show)
    p = actions.add_parser("promote", help="move champion to a version and its partner of the same pipeline run")
    _common(p)
    p.add_argument("version")
    p.add_argument("--network", default="diffusion", choices=NETWORKS, help="whose version number VERSION is")
    p.add_argument("--reason", required=True, help="why (recorded on the versions with who and when)")
    p.set_defaults(func=cmd_promote)
    p = actions.add_parser("rollback", help="move champion back to the pair that held it before")
    _common(p)
    p.add_argument("--reason", required=True, help="why (recorded on the versions with who and when)")
    p.set_defaults(func=cmd_rollback)
