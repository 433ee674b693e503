#!/usr/bin/env bash
# A Docker Engine for development and tests: reuses a dockerd that already answers on /var/run/docker.sock,
# otherwise starts one with no bridge network (containers get `none` or `host` only) and records its PID.
# Also makes the test image fem-test/busybox:2 from busybox-static (no registry is reachable here).
#
#   scripts/dev-docker.sh start [--dir DIR]     (DIR holds dockerd.pid and dockerd.log; default var/dev-docker)
#   scripts/dev-docker.sh stop  [--dir DIR]     (stops dockerd only if this script started it)
set -euo pipefail
cmd=${1:-}; shift || true
source "$(dirname "$0")/lib.sh"
parse_dir dev-docker.sh var/dev-docker "$@"
sock=/var/run/docker.sock
ping() { curl -sf --max-time 2 --unix-socket "$sock" http://localhost/_ping >/dev/null 2>&1; }

start() {
  command -v dockerd >/dev/null || { echo "dev-docker.sh: dockerd is missing (apt-get install docker.io)" >&2; exit 1; }
  if ping; then
    echo "dockerd already answers on $sock (not started by this script)"
  else
    dockerd --bridge=none --iptables=false --ip-masq=false --ip6tables=false > "$dir/dockerd.log" 2>&1 &
    echo $! > "$dir/dockerd.pid"
    for _ in $(seq 1 120); do ping && break; sleep 0.25; done
    ping || { echo "dev-docker.sh: dockerd did not answer; see $dir/dockerd.log" >&2; tail -20 "$dir/dockerd.log" >&2; exit 1; }
    echo "dockerd running (pid $(cat "$dir/dockerd.pid")), no bridge network"
  fi
  if ! curl -sf --unix-socket "$sock" http://localhost/v1.41/images/fem-test/busybox:2/json >/dev/null; then
    local root; root=$(mktemp -d)
    mkdir -p "$root/bin" "$root/tmp"
    chmod 1777 "$root/tmp"  # as in real images: dockerd copies the image's /tmp mode onto the tmpfs
    cp /bin/busybox "$root/bin/busybox"
    for tool in sh echo cat ls id sleep wc head tail true false env mount grep awk ip ifconfig touch mkdir rm dd; do
      ln -s busybox "$root/bin/$tool"
    done
    tar -C "$root" -c . | curl -sf --unix-socket "$sock" -X POST -H "Content-Type: application/x-tar" \
      --data-binary @- "http://localhost/v1.41/images/create?fromSrc=-&repo=fem-test/busybox&tag=2" >/dev/null
    rm -rf "$root"
    echo "image fem-test/busybox:2 imported"
  fi
}

stop() {
  stop_pid dockerd "$dir/dockerd.pid" 60
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  *) sed -n '2,8p' "$0"; exit 2 ;;
esac
