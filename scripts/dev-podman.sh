#!/usr/bin/env bash
# Podman's Docker-compatible API for development and tests: a rootful `podman system service` on DIR/podman.sock
# with its own --root under DIR and --runroot in /run (the host's /var/lib/containers is untouched) and a containers.conf of its
# own whose default_ulimits let containers start where root lacks CAP_SYS_RESOURCE (podman's default nofile/nproc
# of 1048576 exceed the inherited hard limit) and cgroups = "no-conmon" (see start). Loads the test image fem-test/busybox:2 from dockerd (`docker save`,
# so it is the same image; needs scripts/dev-docker.sh first), or imports it from busybox-static without dockerd.
#
#   scripts/dev-podman.sh start  [--dir DIR]   (default var/dev-podman; socket DIR/podman.sock; runroot /run/fem-podman-<hash of DIR>)
#   scripts/dev-podman.sh stop   [--dir DIR]   (removes the containers, stops the service by PID, removes the
#                                               empty libpod_parent cgroup folders it leaves)
#   scripts/dev-podman.sh status [--dir DIR]
set -euo pipefail
cmd=${1:-}; shift || true
source "$(dirname "$0")/lib.sh"
parse_dir dev-podman.sh var/dev-podman "$@"
sock=$dir/podman.sock
export CONTAINERS_CONF=$dir/containers.conf
# Podman refuses a runroot longer than 50 characters (a clone at /check/work/main already passes that under DIR), so
# the runroot is a short folder in /run named by a hash of DIR: two DIRs never share one, the same DIR always finds its own.
runroot=/run/fem-podman-$(printf '%s' "$dir" | sha256sum | cut -c1-12)
podman_cli() { podman --root "$dir/root" --runroot "$runroot" "$@"; }
ping() { curl -sf --max-time 2 --unix-socket "$sock" http://localhost/_ping >/dev/null 2>&1; }
image=fem-test/busybox:2

load_image() {
  # The compat API finds a short name's local image (podman load and import name it localhost/…).
  have() { curl -sf --max-time 5 --unix-socket "$sock" "http://localhost/v1.41/images/$image/json" >/dev/null 2>&1; }
  have && return 0
  if curl -sf --max-time 2 --unix-socket /var/run/docker.sock "http://localhost/v1.41/images/$image/json" >/dev/null 2>&1; then
    curl -sf --unix-socket /var/run/docker.sock "http://localhost/v1.41/images/get?names=$image" | podman_cli load -q >/dev/null
  else
    local root; root=$(mktemp -d)
    mkdir -p "$root/bin" "$root/tmp"
    chmod 1777 "$root/tmp"  # podman's /tmp tmpfs takes the image's /tmp mode (mode= in Tmpfs is ignored)
    cp /bin/busybox "$root/bin/busybox"
    for tool in sh echo cat ls id sleep wc head tail true false env mount grep awk ip ifconfig touch mkdir rm dd; do
      ln -s busybox "$root/bin/$tool"
    done
    tar -C "$root" -c . | podman_cli import -q --change 'CMD ["/bin/sh"]' - "localhost/$image" >/dev/null
    rm -rf "$root"
  fi
  have || { echo "dev-podman.sh: could not load $image" >&2; exit 1; }
  echo "image $image loaded into podman's store"
}

start() {
  command -v podman >/dev/null || bash "$(dirname "$0")/install-packages.sh" podman
  # A store made with another runroot (an older layout of this script) refuses to open ("database configuration
  # mismatch"): it holds only the test image, so it is made again, unless something is still mounted from it.
  if [[ -d "$dir/root" && "$(cat "$dir/runroot.path" 2>/dev/null)" != "$runroot" ]] && ! grep -q " $dir/root/" /proc/mounts; then
    rm -rf "$dir/root"
  fi
  mkdir -p "$dir/root" "$runroot"
  printf '%s\n' "$runroot" > "$dir/runroot.path"
  # Keep soft == hard: podman 4.3's compat create swaps unequal ones and runc then refuses them.
  # no-conmon: conmon (and the `podman container cleanup` it starts at the end) stay out of the container's cgroup
  # parent; otherwise they start in <CgroupParent>/conmon, under the task's memory limit (the docker launcher moves
  # them out right after the start, but a task that hits its limit at once can take them with it, and the
  # container's end is then never reported).
  cat > "$CONTAINERS_CONF" <<'CONF'
[containers]
cgroups = "no-conmon"
default_ulimits = ["nofile=4096:4096", "nproc=1024:1024"]
CONF
  if [[ -f "$dir/podman.pid" ]] && kill -0 "$(cat "$dir/podman.pid")" 2>/dev/null && ping; then
    echo "podman already answers on $sock (pid $(cat "$dir/podman.pid"))"
  else
    rm -f "$sock"
    # Not through podman_cli: $! must be podman's own PID (the service does not fork), not a subshell's.
    # Started from DIR: conmon leaves files (an `oom` marker) in its working directory, which is the service's.
    pushd "$dir" >/dev/null
    podman --root "$dir/root" --runroot "$runroot" system service --time=0 "unix://$sock" > "$dir/podman.log" 2>&1 &
    echo $! > "$dir/podman.pid"
    popd >/dev/null
    for _ in $(seq 1 100); do ping && break; sleep 0.1; done
    ping || { echo "dev-podman.sh: podman did not answer on $sock; see $dir/podman.log" >&2; tail -20 "$dir/podman.log" >&2; exit 1; }
    echo "podman running (pid $(cat "$dir/podman.pid")) on $sock"
  fi
  load_image
}

stop() {
  if [[ -f "$dir/podman.pid" ]] && kill -0 "$(cat "$dir/podman.pid")" 2>/dev/null; then
    podman_cli rm -af -t 1 >/dev/null 2>&1 || true
  fi
  stop_pid podman "$dir/podman.pid" 40
  rm -f "$sock"
  # The runroot holds only run-time state; it goes unless something is still mounted under it.
  if [[ -d "$runroot" ]] && ! grep -q " $runroot/" /proc/mounts; then rm -rf "$runroot"; fi
  # Podman's cgroupfs manager leaves empty libpod_parent folders in every v1 hierarchy; rmdir removes only empty ones.
  find /sys/fs/cgroup/*/libpod_parent -depth -type d -exec rmdir {} + 2>/dev/null || true
}

status() {
  if ping; then echo "podman answers on $sock (pid $(cat "$dir/podman.pid" 2>/dev/null || echo '?'))"
  else echo "podman is not running on $sock"; exit 1; fi
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) sed -n '2,12p' "$0"; exit 2 ;;
esac
