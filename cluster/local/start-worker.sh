#!/usr/bin/env bash
# Add a worker node on this machine to the head started by start-head.sh. Each node on one machine needs its own
# temp dir (the runtime_env working_dir of a job is unpacked under it; sharing one folder breaks jobs).
#   NUM_CPUS=2 RAY_PORT=26379 RAY_TEMP_DIR=/tmp/adm-ray-worker-1 cluster/local/start-worker.sh
# Another Ray instance on the machine (e.g. a local ray.init()) holds 52365: set DASHBOARD_AGENT_PORT to a free port.
set -euo pipefail
export RAY_AUTH_MODE=token RAY_USAGE_STATS_ENABLED=0
ray start --address="127.0.0.1:${RAY_PORT:-26379}" --num-cpus="${NUM_CPUS:-2}" --dashboard-agent-listen-port="${DASHBOARD_AGENT_PORT:-52365}" \
  --temp-dir="${RAY_TEMP_DIR:-/tmp/adm-ray-worker-1}" ${RAY_START_ARGS:-}
echo "Ray worker node up (temp dir ${RAY_TEMP_DIR:-/tmp/adm-ray-worker-1})"
