"""`adm train diffusion|classifier|evaluator|upsampler|all` (the upsampler: cascade presets)."""

import json

from components.config.kinds import KINDS, kind_of, preset_kinds
from pipelines.cli.common import check_assume_cpus, command_console, preset_args, resolved_preset, verbose_arg


def cmd_train(args) -> int:
    from pipelines.infra.dataset import load_manifest
    from pipelines.infra.resources import train_plan
    from pipelines.stages.train import TrainOptions, kind_data, train, validate

    preset = resolved_preset(args)
    kinds = preset_kinds(preset) if args.network == "all" else (kind_of(preset, args.network).name,)
    urls = kind_data(preset, kinds, args.data)
    validate(preset, kinds, {kind: load_manifest(url) for kind, url in urls.items()})
    if args.dry_run:  # what train() checks before any worker starts, short of writing to the storage path
        from pipelines.infra.init_from import resolve_inits
        from pipelines.infra.services import check_url
        from pipelines.infra.tracking_checks import resolve_tracking_uri

        check_assume_cpus(args.assume_cpus)
        check_url(args.storage, "--storage")
        resolve_inits(preset, kinds, resolve_tracking_uri(args.tracking_uri), args.model_prefix or f"adm-{preset.name}")
        print(json.dumps({"preset": preset.name, "data": args.data, "storage": args.storage,
                          "resources": train_plan(preset, kinds, cluster_cpus=args.assume_cpus)}, indent=2))
        return 0
    opts = TrainOptions(storage=args.storage, tracking_uri=args.tracking_uri, experiment=args.experiment,
                        model_prefix=args.model_prefix)
    with command_console(args, "train") as log:
        outcomes = train(preset, args.data, opts, kinds, log=log)
    for kind, outcome in outcomes.items():
        print(f"{kind}: {outcome.steps} steps, checkpoint {outcome.checkpoint}, MLflow run {outcome.run_id}, "
              f"model {outcome.model_uri}")
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("train", help="train networks with Ray Train (concurrently with 'all')")
    p.add_argument("network", choices=(*KINDS, "all"))
    p.add_argument("--data", required=True, help="an ingested dataset's folder or URL (adm data ingest)")
    preset_args(p)
    p.add_argument("--storage", default="adm-storage", help="checkpoint storage path or URI (default: ./adm-storage)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)")
    p.add_argument("--experiment", default="adm", help="MLflow experiment name")
    p.add_argument("--model-prefix", default=None, help="train_<network>.init_from=champion starts from the champion "
                   "of PREFIX-<network> (default: adm-PRESET)")
    p.add_argument("--dry-run", action="store_true", help="check the config against the data, print the plan, exit")
    p.add_argument("--assume-cpus", type=float, default=2.0, help="cluster CPUs assumed by --dry-run's plan")
    verbose_arg(p)
    p.set_defaults(func=cmd_train)
