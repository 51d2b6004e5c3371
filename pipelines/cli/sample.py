"""`adm sample`: guided sampling over a grid of guidance scales with Ray Data."""


def _scales(text: str) -> tuple:
    from components.config import UserError

    try:
        return tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise UserError(f"--scales {text!r} must be comma-separated numbers, e.g. 0,1,2,4") from None


def cmd_sample(args) -> int:
    from pipelines.stages.sample import SampleJob, log_to_mlflow, run_sampling

    job = SampleJob(diffusion=args.diffusion, classifier=args.classifier, out=args.out, scales=_scales(args.scales),
                    num_samples=args.num_samples, sampler=args.sampler, eta=args.eta, batch_size=args.batch_size,
                    seed=args.seed, label=args.label, preset=args.preset, actors=args.actors,
                    actors_per_gpu=args.actors_per_gpu,
                    actor_cpus=args.actor_cpus, compile=args.compile, channels_last=args.channels_last,
                    tracking_uri=args.tracking_uri, experiment=args.experiment)
    result = run_sampling(job)
    if not args.no_track:
        log_to_mlflow(job, result)
    for scale, url in result.npz.items():
        print(f"scale {scale:g}: {url}  grid {result.grids[scale]}")
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("sample", help="classifier-guided sampling over a grid of scales (Ray Data)")
    p.add_argument("--diffusion", required=True, help="checkpoint folder, runs:/RUN_ID, models:/NAME@ALIAS, "
                   "models:/NAME/VERSION, or weights file (+ --preset)")
    p.add_argument("--classifier", default=None, help="noisy classifier: same forms; needed for scales above 0")
    p.add_argument("--scales", default="0,1,2,4", help="comma-separated guidance scales (0 = unguided)")
    p.add_argument("--num-samples", type=int, default=64, help="samples per scale")
    p.add_argument("--sampler", default="ddim25", help="ddimN (DDIM, e.g. ddim25) or DDPM step counts (e.g. 250)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0: deterministic)")
    p.add_argument("--batch-size", type=int, default=16, help="samples per shard / actor call")
    p.add_argument("--seed", type=int, default=0, help="base seed; sample i uses a seed derived from (seed, i)")
    p.add_argument("--label", type=int, default=None, help="one class for all samples (default: uniform at random)")
    p.add_argument("--preset", default=None, help="preset of bare weights files (e.g. imagenet256 for released .pt)")
    p.add_argument("--actors", type=int, default=None,
                   help="sampler actors (default: --actors-per-gpu per GPU, or one per 2 CPUs)")
    p.add_argument("--actors-per-gpu", type=int, default=1,
                   help="actors sharing each GPU when --actors is not given: 2 overlap the kernel launches of "
                        "small networks (the fashion-mnist preset's sampling job: x1.3 on an H200), 1 for large ones")
    p.add_argument("--actor-cpus", type=float, default=None,
                   help="CPUs (and torch threads) per CPU actor (default: the cluster's CPUs shared out)")
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                   help="torch.compile the diffusion model and classifier in each actor (auto: on GPUs only)")
    p.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                   help="channels_last memory format for both networks (auto: on GPUs only)")
    p.add_argument("--out", default="adm-samples", help="output folder or fsspec URL")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite)")
    p.add_argument("--experiment", default="adm", help="MLflow experiment name")
    p.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    p.set_defaults(func=cmd_sample)
