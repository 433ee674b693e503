#!/usr/bin/env bash
# A Prometheus server on loopback for tests and local trials (Debian's `prometheus` package), scraping every second
# the targets listed in DIR/targets/*.json (file_sd: a test writes a file there for its node and Prometheus picks it
# up by itself, no reload needed; new targets are scraped about 5 s later). Its API:
#   http://127.0.0.1:PORT/api/v1/query?query=up
#
#   scripts/dev-prometheus.sh start  [--dir DIR] [--port PORT]   (PORT: 19090)
#   scripts/dev-prometheus.sh stop   [--dir DIR]
#   scripts/dev-prometheus.sh status [--dir DIR]
# A target file: [{"targets": ["127.0.0.1:9464"], "labels": {"node": "node-1"}}]
set -euo pipefail
cmd=${1:-}; shift || true
source "$(dirname "$0")/lib.sh"
port=19090
args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --port) port=$2; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
parse_dir dev-prometheus.sh var/dev-prometheus "${args[@]}"
pidfile=$dir/prometheus.pid

running() { [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

case "$cmd" in
  start)
    for tool in prometheus promtool; do
      command -v $tool >/dev/null || { echo "dev-prometheus.sh: $tool is missing (apt-get install prometheus)" >&2; exit 1; }
    done
    if running; then echo "prometheus already running (pid $(cat "$pidfile"), $dir)"; exit 0; fi
    mkdir -p "$dir/targets" "$dir/data"
    rm -f "$dir"/targets/*.json  # targets of an earlier run's nodes, long gone
    cat > "$dir/prometheus.yml" <<CONF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: fem-client
    file_sd_configs:
      - files: ["$dir/targets/*.json"]
        refresh_interval: 1s
CONF
    promtool check config "$dir/prometheus.yml" >"$dir/check.log" 2>&1 \
      || { echo "dev-prometheus.sh: promtool refused $dir/prometheus.yml:" >&2; cat "$dir/check.log" >&2; exit 1; }
    # setsid: its own session, so a test run's signals to the shell do not reach it; stopped by its PID.
    setsid prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/data" \
      --storage.tsdb.retention.time=1d --web.listen-address="127.0.0.1:$port" >"$dir/prometheus.log" 2>&1 < /dev/null &
    echo $! > "$pidfile"
    echo "$port" > "$dir/port"
    for _ in $(seq 1 300); do
      curl -sf "http://127.0.0.1:$port/-/ready" >/dev/null 2>&1 && { echo "prometheus on http://127.0.0.1:$port (pid $(cat "$pidfile"), targets in $dir/targets)"; exit 0; }
      running || break
      sleep 0.1
    done
    echo "dev-prometheus.sh: prometheus did not become ready on 127.0.0.1:$port; its log:" >&2
    tail -20 "$dir/prometheus.log" >&2
    stop_pid prometheus "$pidfile" >/dev/null
    exit 1
    ;;
  stop)
    stop_pid prometheus "$pidfile" 80
    ;;
  status)
    if running; then echo "prometheus running (pid $(cat "$pidfile"), http://127.0.0.1:$(cat "$dir/port"))"
    else echo "prometheus not running ($dir)"; exit 1; fi
    ;;
  *)
    echo "usage: $0 start|stop|status [--dir DIR] [--port PORT]" >&2; exit 2 ;;
esac
