"""The Ray Data sampling path on a GPU machine: prints, and exits non-zero if a check fails.

1. run_sampling with one actor and with two actors sharing the GPU (num_gpus=0.5 each) gives byte-identical arrays
   for a grid of scales that mixes scales inside batches;
2. scale 0 of that grid equals a job with no classifier (unguided).

Networks: the fashion-mnist preset's diffusion model and classifier with random weights.

    python bench/gpu_ray_check.py [--num-samples 96] [--batch-size 32]
"""

import argparse
import dataclasses
import os
import sys
import tempfile

import numpy as np
import torch

from pipelines.infra.storage import read_npz

sys.path.insert(0, os.path.dirname(__file__))
from bench_sample import save_random  # noqa: E402

from components.config import SampleConfig  # noqa: E402
from components.config.presets import get_preset
from pipelines.stages.sample import SampleJob, run_sampling  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-samples", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    import ray

    ray.init(num_cpus=os.cpu_count() or 1, log_to_driver=False)
    print(f"cluster: {ray.cluster_resources()}  torch {torch.__version__}  cuda {torch.cuda.is_available()}")
    preset = get_preset("fashion-mnist")
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        job = SampleJob(diffusion=save_random("diffusion", preset, f"{tmp}/d"),
                        classifier=save_random("classifier", preset, f"{tmp}/c"), out=f"{tmp}/one",
                        config=SampleConfig(guidance_scales=(0.0, 1.0, 4.0), num_samples=args.num_samples,
                                            samplers=("ddim10",), batch_size=args.batch_size), actors=1)
        one = run_sampling(job, log=lambda *_: None)
        two = run_sampling(dataclasses.replace(job, out=f"{tmp}/two", actors=2), log=lambda *_: None)
        unguided = dataclasses.replace(job.config, guidance_scales=(0.0,))
        plain = run_sampling(dataclasses.replace(job, out=f"{tmp}/plain", classifier=None, config=unguided),
                             log=lambda *_: None)
        for cell in job.cells:
            a, b = read_npz(one.npz[cell.key]), read_npz(two.npz[cell.key])
            same = all(np.array_equal(a[k], b[k]) for k in ("arr_0", "arr_1"))
            failures += not same
            print(f"{'ok  ' if same else 'FAIL'} {cell.key}: 1 actor vs 2 actors sharing the GPU "
                  f"{'byte-identical' if same else 'differ'} ({a['arr_0'].shape} {a['arr_0'].dtype})")
        a, b = read_npz(one.npz["ddim10/scale_0"]), read_npz(plain.npz["ddim10/scale_0"])
        same = np.array_equal(a["arr_0"], b["arr_0"])
        failures += not same
        print(f"{'ok  ' if same else 'FAIL'} scale 0 of the guided grid equals the unguided job: {same}")
        changed = float(np.mean(read_npz(one.npz["ddim10/scale_4"])["arr_0"] != a["arr_0"]))
        print(f"info: scale 4 changes {changed:.0%} of the pixels of scale 0")
    ray.shutdown()
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
