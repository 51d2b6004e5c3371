"""`adm evaluate`: FID, sFID, precision/recall, score and accuracy per guidance scale."""


def cmd_evaluate(args) -> int:
    from pipelines.stages.evaluate import EvaluateJob, run_evaluation
    from pipelines.stages.report import format_table, log_evaluation

    features = args.features or ("both" if args.evaluator else "inception")
    job = EvaluateJob(samples=args.samples, reference=args.reference, features=features, evaluator=args.evaluator,
                      num_reference=args.num_reference, reference_split=args.split, batch_size=args.batch_size,
                      fid_method=args.fid_method,
                      actors=args.actors, cache_dir=args.cache_dir, tracking_uri=args.tracking_uri,
                      experiment=args.experiment)
    result = run_evaluation(job)
    if not args.no_track:
        log_evaluation(job, result)
    print(format_table(result.rows))
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("evaluate", help="score samples per guidance scale against a reference (Ray Data features)")
    p.add_argument("--samples", required=True,
                   help="output folder of `adm sample` (scale_<s>/samples_*.npz) or one NPZ")
    p.add_argument("--reference", required=True,
                   help="ingested dataset URL, or a reference-batch NPZ (arr_0 images, or mu/sigma/mu_s/sigma_s)")
    p.add_argument("--features", choices=("inception", "evaluator", "both"), default=None,
                   help="feature extractors (default: both with --evaluator, else inception)")
    p.add_argument("--evaluator", default=None,
                   help="evaluator network: checkpoint folder, runs:/RUN_ID or models:/NAME@ALIAS")
    p.add_argument("--num-reference", type=int, default=10_000, help="reference images taken from the dataset split")
    p.add_argument("--split", default="train", help="dataset split the reference images come from")
    p.add_argument("--batch-size", type=int, default=64, help="images per feature batch")
    p.add_argument("--fid-method", choices=("eigh", "sqrtm"), default="eigh",
                   help="trace of the covariance square root: eigh (symmetric, fast) or sqrtm (as the released "
                        "evaluator: general matrix square root, ~10x slower at 2048-d); equal within 1e-6")
    p.add_argument("--actors", type=int, default=None, help="feature actors (default: per GPU, or per 2 CPUs)")
    p.add_argument("--cache-dir", default=None,
                   help="reference-statistics cache (default: $ADM_CACHE_DIR or ~/.cache/adm-pipeline)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite)")
    p.add_argument("--experiment", default="adm", help="MLflow experiment name")
    p.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    p.set_defaults(func=cmd_evaluate)
