#!/usr/bin/env bash
# Stops the daemon that start.sh started (by its recorded PID), and the development broker if start.sh made it.
set -euo pipefail
cd "$(dirname "$0")"
pidfile=var/fem-client.pid
if [[ -f $pidfile ]] && kill -0 "$(cat $pidfile)" 2>/dev/null; then
  pid=$(cat $pidfile)
  kill -TERM "$pid"
  # It drains first (node.drain_seconds, 30 by default), then stops what still runs (node.stop_grace).
  for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  echo "fem-client stopped (pid $pid)"
else
  echo "fem-client is not running"
fi
rm -f $pidfile
if [[ "${1:-}" != "--keep-broker" && -f var/dev-broker/broker.pid ]]; then
  bash scripts/dev-broker.sh stop --dir var/dev-broker
fi
# The development dockerd, only if start.sh started it (dev-docker.sh keeps its PID then).
if [[ "${1:-}" != "--keep-broker" && -f var/dev-docker/dockerd.pid ]]; then
  bash scripts/dev-docker.sh stop --dir var/dev-docker
fi
