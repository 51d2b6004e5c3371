#!/bin/bash
# The GPU checks and benchmarks of one device lease, each step time-boxed; logs go to $OUT. Steps to run are named
# on the command line (default: all, in this order); see bench/RESULTS.md for what each measured.
#   [ACTORS="1 2"] bash bench/gpu_session.sh [train256 ray_check sample sample_preset sample_large guided256 train32]
# ACTORS: the actor counts of the sample_preset / sample_large steps.
# Steps that use Ray need .whl/ carried: ray.tar.xz (the Ray 2.60 cp312 wheel's contents without jars/rllib/serve/llm,
# xz-compressed to fit the 64 MiB a call may carry) and the jsonschema wheels Ray needs, since the lent machine has
# no Ray and no network.
set -u
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"
step() { local name=$1 limit=$2; shift 2; echo "== $name: $*"; timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"; }
with_ray() {
  [ -d /tmp/site/ray ] || { mkdir -p /tmp/site && tar xJf .whl/ray.tar.xz -C /tmp/site \
    && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl; }
  export PYTHONPATH=$PWD:/tmp/site
}
sample() {  # sample NAME LIMIT ARGS...: bench_sample.py, torch.compile off on both sides (compile time is not Ray's)
  local name=$1 limit=$2; shift 2
  with_ray && step "$name" "$limit" python3 bench/bench_sample.py --threads 1 --compile off "$@"
}
steps=${*:-train256 ray_check sample sample_preset sample_large guided256 train32}
for s in $steps; do
  case $s in
    # training step at batch 256: baseline vs compile vs + fused AdamW vs + CUDA graphs (each compile 1-2 min)
    train256) step train256 300 python3 bench/bench_components.py --device cuda --only train --batch 256 --iters 20 \
                --warmup 5 --variants 3,4,5 ;;
    # Ray Data on the GPU: 1 vs 2 actors byte-identical, scale 0 == unguided
    ray_check) with_ray && step ray_check 150 python3 bench/gpu_ray_check.py ;;
    # Ray Data vs one process, 16k images at one scale, one actor
    sample) sample sample 150 --num-samples 16384 --batch-size 512 --sampler ddim10 ;;
    # the default preset's own sampling job (8 scales x 100, batch 50, ddim25), one and two actors on the GPU
    sample_preset) for a in ${ACTORS:-1 2}; do sample "sample_preset_a$a" 120 --preset-job --actors "$a"; done ;;
    # a larger job (8 scales x 1024, batch 512, ddim10), one, two and four actors sharing the GPU
    sample_large) for a in ${ACTORS:-1 2 4}; do sample "sample_large_a$a" 150 --scales 0,1,2,4,8,16,32,64 --num-samples 1024 \
                    --batch-size 512 --sampler ddim10 --actors "$a"; done ;;
    # guided DDIM step at batch 256 (the H200 gave 2.10x)
    guided256) step guided256 200 python3 bench/bench_components.py --device cuda --only guided --batch 256 --iters 20 \
                 --warmup 5 --variants 3 ;;
    # training step at batch 32 (launch-bound): what CUDA graphs give there
    train32) step train32 200 python3 bench/bench_components.py --device cuda --only train --batch 32 --iters 30 \
               --warmup 5 --variants 4,5 ;;
    *) echo "unknown step $s" >&2; exit 2 ;;
  esac
done
grep -h "images/s\|ok  \|FAIL\|x[0-9]" "$OUT"/*.log | tail -60
