#!/usr/bin/env python
"""Compare two sample folders written by `adm sample` (or a pipeline's sample stage) cell by cell, bytewise.

    python scripts/compare_samples.py BEFORE AFTER

For every cell of BEFORE (<sampler>/[<method>_]scale_<s>[...]/samples_*.npz) the images (arr_0) and labels (arr_1) of
the same cell in AFTER must be the same bytes. Prints one line per cell and exits 1 if any cell differs or is
missing: how a refactoring shows that it left the samples of a grid unchanged for the same checkpoints and seeds.
"""

import argparse
import sys
from pathlib import Path

import numpy as np


def cells(root: Path) -> dict:
    """{cell key: its samples NPZ} of a sample folder."""
    return {str(p.parent.relative_to(root)): p for p in sorted(root.glob("*/*scale_*/samples_*.npz"))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args()
    before, after = cells(args.before), cells(args.after)
    if not before:
        print(f"{args.before} holds no <sampler>/scale_<s>/samples_*.npz", file=sys.stderr)
        return 2
    differ = 0
    for key, path in before.items():
        if key not in after:
            print(f"{key}: missing in {args.after}")
            differ += 1
            continue
        a, b = np.load(path), np.load(after[key])
        same = all(a[n].dtype == b[n].dtype and a[n].shape == b[n].shape and a[n].tobytes() == b[n].tobytes()
                   for n in ("arr_0", "arr_1"))
        pixels = int((a["arr_0"] != b["arr_0"]).sum()) if a["arr_0"].shape == b["arr_0"].shape else -1
        print(f"{key}: {'identical' if same else f'DIFFERENT ({pixels} pixel values differ)'} "
              f"({a['arr_0'].shape[0]} samples)")
        differ += not same
    print(f"{len(before) - differ} of {len(before)} cells identical")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
