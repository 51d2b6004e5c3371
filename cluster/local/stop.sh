#!/usr/bin/env bash
# Stop the nodes started by start-head.sh / start-worker.sh: the processes whose command line names their temp dirs
# (raylet, gcs, dashboard, agents) and all their descendants (the Ray workers). Unlike `ray stop`, other Ray instances
# on the machine are left alone. SIGNAL=KILL makes it a node crash (what the fault-tolerance test does).
#   cluster/local/stop.sh [TEMP_DIR ...]   (default: /tmp/adm-ray-head /tmp/adm-ray-worker-1)
set -uo pipefail
dirs=("$@")
[ ${#dirs[@]} -eq 0 ] && dirs=(/tmp/adm-ray-head /tmp/adm-ray-worker-1)
descendants() { for child in $(pgrep -P "$1"); do echo "$child"; descendants "$child"; done; }
for dir in "${dirs[@]}"; do
  roots=$(pgrep -f -- "$dir" | grep -vx -e "$$" -e "$PPID" || true)  # not this script or its caller
  if [ -z "$roots" ]; then echo "no Ray processes of $dir"; continue; fi
  all=$(for pid in $roots; do echo "$pid"; descendants "$pid"; done | sort -u)
  kill "-${SIGNAL:-TERM}" $all 2>/dev/null
  echo "sent SIG${SIGNAL:-TERM} to $(echo $all | wc -w) Ray processes of $dir"
done
