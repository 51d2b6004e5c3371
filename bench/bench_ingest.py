"""Wall time of ingesting the full Fashion-MNIST (70k images) to Parquet shards, and of reading it back.

    python bench/bench_ingest.py [--source fashion-mnist] [--resolution 32]
"""

import argparse
import os
import platform
import tempfile
import time

from pipelines.infra.dataset import read_split
from pipelines.stages.ingest import ingest
from pipelines.stages.sources import IngestOptions


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="fashion-mnist")
    parser.add_argument("--resolution", type=int, default=32)
    args = parser.parse_args()
    print(f"cpu={platform.machine()} cores={os.cpu_count()}")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        manifest = ingest(args.source, f"{tmp}/ds", IngestOptions(resolution=args.resolution,
                                                                  splits=("train", "test")), log=lambda *_: None)
        ingest_s = time.perf_counter() - start
        n = sum(manifest["counts"].values())
        start = time.perf_counter()
        images, _ = read_split(f"{tmp}/ds", "train")
        read_s = time.perf_counter() - start
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(f"{tmp}/ds") for f in fs)
    print(f"ingest {n} images at {args.resolution}px: {ingest_s:.1f}s ({n / ingest_s:.0f} images/s), "
          f"{size / 1e6:.1f} MB on disk")
    print(f"read back train split without Ray: {read_s:.1f}s ({len(images) / read_s:.0f} images/s)")


if __name__ == "__main__":
    main()
