"""`adm data ingest` and `adm data describe`."""

import argparse


def cmd_ingest(args) -> int:
    from pipelines.stages.ingest import ingest
    from pipelines.stages.sources import IngestOptions

    opts = IngestOptions(resolution=args.resolution, splits=tuple(s for s in args.split.split(",") if s),
                         skip_bad=args.skip_bad, resize=args.resize, num_images=args.num_images,
                         num_classes=args.num_classes, seed=args.seed, rows_per_shard=args.rows_per_shard,
                         validation_fraction=args.validation_fraction, limit=args.limit,
                         downsample_to=tuple(args.downsample_to or ()))
    manifest = ingest(args.source, args.dest, opts)
    if manifest["skipped"]["count"]:
        print(f"skipped {manifest['skipped']['count']} unreadable files (listed in the manifest)")
    return 0


def cmd_describe(args) -> int:
    from pipelines.infra.dataset import describe

    info = describe(args.url)
    print(f"dataset      {args.url}")
    print(f"source       {info['source']}")
    print(f"resolution   {info['resolution']}x{info['resolution']}, {info['channels']} channel(s)")
    print(f"fingerprint  {info['fingerprint']}")
    for split, count in info["counts"].items():
        print(f"split {split:7s} {count} images in {len(info['shards'][split])} shards")
        for name, n in info["counts_per_class"][split].items():
            print(f"    {n:8d}  {name}")
    if info["skipped"]["count"]:
        print(f"skipped      {info['skipped']['count']} files")
    print(f"grid         {info['grid']}")
    return 0


class _DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in the help, except None: such an option's own help says what leaving it out means."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def add_parsers(sub) -> None:
    data = sub.add_parser("data", help="ingest and inspect datasets")
    dsub = data.add_subparsers(dest="data_command", required=True)
    p = dsub.add_parser("ingest", help="write a dataset as Parquet shards + manifest to any fsspec URL",
                        formatter_class=_DefaultsHelp)
    p.add_argument("source", help="fashion-mnist[:DIR_OR_URL] | shapes | an image folder (one sub-folder per class)")
    p.add_argument("dest", help="output folder or fsspec URL (file://, memory://, s3://, gs://, ...)")
    p.add_argument("--resolution", type=int, default=None,
                   help="target size in pixels (default: native for Fashion-MNIST (28) and shapes (32))")
    p.add_argument("--split", default="train", help="comma-separated splits to write, e.g. train,test")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images and list them in the manifest")
    p.add_argument("--resize", choices=("pad", "resize"), default="pad",
                   help="how small sources (Fashion-MNIST) reach --resolution")
    p.add_argument("--num-images", type=int, default=1024, help="shapes: images per split")
    p.add_argument("--num-classes", type=int, default=4, help="shapes: number of classes")
    p.add_argument("--seed", type=int, default=0, help="shapes: generator seed")
    p.add_argument("--rows-per-shard", type=int, default=None, help="images per Parquet shard (default: automatic)")
    p.add_argument("--validation-fraction", type=float, default=0.0,
                   help="share of train held out as a `validation` split, chosen by content hash (adm run: "
                        "data.validation_fraction)")
    p.add_argument("--limit", type=int, default=0, help="at most this many images of each split, the first in the "
                   "source's order (0: all; adm run: data.limit)")
    p.add_argument("--downsample-to", type=int, action="append", default=None, metavar="SIZE",
                   help="also write the dataset area-downsampled to SIZE px as DEST/area-SIZE (a cascade's base "
                        "data, e.g. 16 for fashion-mnist-cascade); repeatable")
    p.set_defaults(func=cmd_ingest)
    p = dsub.add_parser("describe", help="print counts, classes and fingerprint; write grid.png beside the manifest")
    p.add_argument("url", help="an ingested dataset's folder or URL")
    p.set_defaults(func=cmd_describe)
