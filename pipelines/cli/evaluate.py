"""`adm evaluate`: FID, sFID, precision/recall, score and accuracy per guidance scale.

The settings are the config's `evaluate` section (components/config/sections.py EvaluateConfig, or the --preset's):
each flag below sets one of its fields, as `--override evaluate.FIELD=VALUE` would, and has no default of its own.
"""

from components.config import EvaluateConfig, override_section
from components.config.presets import get_preset
from components.config.sections import FEATURE_SETS, FID_METHODS, INCEPTION_PRECISIONS
from pipelines.cli.common import command_console, tracking_args, verbose_arg

# flag -> field of the evaluate section it sets
EVALUATE_FLAGS = {"features": "features", "num_reference": "num_reference", "split": "reference_split",
                  "batch_size": "batch_size", "fid_method": "fid_method", "inception_precision": "inception_precision",
                  "bootstrap": "bootstrap", "ci_level": "ci_level"}


def evaluate_config(args) -> EvaluateConfig:
    base = get_preset(args.preset).evaluate if args.preset else EvaluateConfig()
    given = {field: getattr(args, flag) for flag, field in EVALUATE_FLAGS.items() if getattr(args, flag) is not None}
    if args.features is None and not args.evaluator and not args.preset:
        given["features"] = "inception"  # nothing to compute evaluator features with
    return override_section("evaluate", base, given)


def cmd_evaluate(args) -> int:
    from pipelines.stages.comparisons import format_comparisons
    from pipelines.stages.evaluate import EvaluateJob, run_evaluation
    from pipelines.stages.report import format_table, log_evaluation

    job = EvaluateJob(samples=args.samples, reference=args.reference, config=evaluate_config(args),
                      evaluator=args.evaluator, actors=args.actors, cache_dir=args.cache_dir,
                      tracking_uri=args.tracking_uri, experiment=args.experiment)
    with command_console(args, "evaluate") as log:
        result = run_evaluation(job, log=log)
        if not args.no_track:
            log_evaluation(job, result, log=log)
    print(format_table(result.rows))
    if result.comparisons:
        print("\n" + format_comparisons(result.comparisons, result.rows))
    return 0


def add_parsers(sub) -> None:
    d = EvaluateConfig()
    p = sub.add_parser("evaluate", help="score samples per guidance scale against a reference (Ray Data features)")
    p.add_argument("--samples", required=True,
                   help="output folder of `adm sample` (scale_<s>/samples_*.npz) or one NPZ")
    p.add_argument("--reference", required=True,
                   help="ingested dataset URL, or a reference-batch NPZ (arr_0 images, or mu/sigma/mu_s/sigma_s)")
    p.add_argument("--evaluator", default=None,
                   help="evaluator network: checkpoint folder, runs:/RUN_ID or models:/NAME@ALIAS")
    p.add_argument("--preset", default=None,
                   help="the settings' base: its evaluate section (default: EvaluateConfig's)")
    p.add_argument("--features", choices=FEATURE_SETS, help=f"feature extractors (evaluate.features; default "
                   f"{d.features}, or inception without --evaluator)")
    p.add_argument("--num-reference", help=f"reference images taken from the dataset split (evaluate.num_reference; "
                   f"default {d.num_reference})")
    p.add_argument("--split", help=f"dataset split of the reference images (evaluate.reference_split; default "
                   f"{d.reference_split})")
    p.add_argument("--batch-size", help=f"images per feature batch (evaluate.batch_size; default {d.batch_size})")
    p.add_argument("--fid-method", choices=FID_METHODS,
                   help="trace of the covariance square root: eigh (symmetric, fast) or sqrtm (as the released "
                        f"evaluator, ~10x slower at 2048-d); equal within 1e-6 (evaluate.fid_method; default "
                        f"{d.fid_method})")
    p.add_argument("--inception-precision", choices=INCEPTION_PRECISIONS,
                   help="Inception's arithmetic: fp32, or bf16 where the hardware runs it natively (faster; see "
                        f"bench/RESULTS.md for its effect on the metrics) (evaluate.inception_precision; default "
                        f"{d.inception_precision})")
    p.add_argument("--bootstrap", help="replicates of each cell's metric intervals, 0: point values only "
                   f"(evaluate.bootstrap; default {d.bootstrap})")
    p.add_argument("--ci-level", help=f"level of the intervals and comparisons (evaluate.ci_level; default "
                   f"{d.ci_level:g})")
    p.add_argument("--actors", type=int, default=None, help="feature actors (default: per GPU, or per 2 CPUs)")
    p.add_argument("--cache-dir", default=None,
                   help="reference-statistics cache (default: $ADM_CACHE_DIR or ~/.cache/adm-pipeline)")
    tracking_args(p)
    verbose_arg(p)
    p.set_defaults(func=cmd_evaluate)
