#!/usr/bin/env bash
# Start a Ray head node on this machine, with token authentication, for trying `adm submit` without a real cluster.
#   NUM_CPUS=2 RAY_PORT=26379 DASHBOARD_PORT=28265 RAY_TEMP_DIR=/tmp/adm-ray-head cluster/local/start-head.sh
# The dashboard (the Jobs API that `adm submit` talks to) listens on 127.0.0.1 only.
# Another Ray instance on the machine (e.g. a local ray.init()) holds 52365: set DASHBOARD_AGENT_PORT to a free port.
set -euo pipefail
export RAY_AUTH_MODE=token RAY_USAGE_STATS_ENABLED=0
if [ -z "${RAY_AUTH_TOKEN:-}" ] && [ ! -s "${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}" ]; then
  ray get-auth-token --generate >/dev/null  # writes ~/.ray/auth_token, read by adm submit and by the nodes
fi
ray start --head --port="${RAY_PORT:-26379}" --dashboard-host=127.0.0.1 --dashboard-port="${DASHBOARD_PORT:-28265}" \
  --num-cpus="${NUM_CPUS:-2}" --dashboard-agent-listen-port="${DASHBOARD_AGENT_PORT:-52365}" --temp-dir="${RAY_TEMP_DIR:-/tmp/adm-ray-head}" ${RAY_START_ARGS:-}
echo "Ray head up: adm submit --address http://127.0.0.1:${DASHBOARD_PORT:-28265} ..."
