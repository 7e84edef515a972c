#!/bin/sh
# Health check of the hdfs and yarn services of docker-compose.yml:  hadoop-health.sh <state dir> hdfs|yarn
# Their launcher (python -m local_platform.hadoop hdfs|yarn) asks the daemons every few seconds whether they are
# ready (the NameNode out of safe mode with every DataNode live and the folders made; a NodeManager registered
# with the ResourceManager) and writes the answer to <state dir>/run/<service>.health: "ready" or what is
# missing.  Healthy: it says ready and was written within the last 30 s.  A shell check, not a Python one: a
# check every 2 s must cost next to nothing on a busy machine.
set -eu
f="$1/run/$2.health"
[ -f "$f" ] || { echo "$2: the launcher has not reported yet"; exit 1; }
age=$(( $(date +%s) - $(stat -c %Y "$f") ))
[ "$age" -lt 30 ] || { echo "$2: readiness last written ${age}s ago"; exit 1; }
read -r state < "$f" || true
[ "$state" = ready ] || { cat "$f"; exit 1; }
