#!/bin/bash
# The GPU checks and benchmarks of one device lease, in priority order (each step time-boxed; logs go to $OUT).
# Needs .whl/ carried: ray.tar.xz (the Ray 2.60 cp312 wheel's contents without jars/rllib/serve/llm, xz-compressed to
# fit the 64 MiB a call may carry) and the jsonschema wheels Ray needs, since the lent machine has no Ray and no
# network. See bench/RESULTS.md for what each step measured.
set -u
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"
step() { local name=$1 limit=$2; shift 2; echo "== $name: $*"; timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"; }
# 1. training step at batch 256: baseline vs compile vs + fused AdamW vs + CUDA graphs (each compile takes 1-2 min)
step train256 300 python3 bench/bench_components.py --device cuda --only train --batch 256 --iters 20 --warmup 5 \
  --variants 3,4,5
# 2. Ray Data sampling on the GPU: 1 vs 2 actors byte-identical, scale 0 == unguided; overhead vs one process
mkdir -p /tmp/site && tar xJf .whl/ray.tar.xz -C /tmp/site \
  && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=$PWD:/tmp/site
step ray_check 150 python3 bench/gpu_ray_check.py
step sample 150 python3 bench/bench_sample.py --num-samples 16384 --batch-size 512 --sampler ddim10 --threads 1 \
  --compile off
# 3. guided DDIM step at batch 256 on this card (the H200 gave 2.10x)
step guided256 200 python3 bench/bench_components.py --device cuda --only guided --batch 256 --iters 20 --warmup 5 \
  --variants 3
# 4. training step at batch 32 (launch-bound): what CUDA graphs give there
step train32 200 python3 bench/bench_components.py --device cuda --only train --batch 32 --iters 30 --warmup 5 \
  --variants 4,5
grep -h "images/s\|ok  \|FAIL\|x[0-9]" "$OUT"/*.log | tail -40
