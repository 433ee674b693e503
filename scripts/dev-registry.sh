#!/usr/bin/env bash
# Two image registries on loopback for tests: 127.0.0.1:5000 without auth, 127.0.0.1:5001 with htpasswd
# (user fem-pull, password in DIR/password). Pushes the test image as 127.0.0.1:5000/fem/busybox:1.36 and
# 127.0.0.1:5001/fem/private:1, and writes the pushed digest of the first to DIR/digest.
# Needs dockerd (scripts/dev-docker.sh) and the image fem-test/busybox:2.
#
#   scripts/dev-registry.sh start [--dir DIR]
#   scripts/dev-registry.sh stop  [--dir DIR]
set -euo pipefail
cmd=${1:-}; shift || true
source "$(dirname "$0")/lib.sh"
parse_dir dev-registry.sh var/dev-registry "$@"

up() { curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$1/v2/"; }

start_one() { # port auth(yes|no)
  local port=$1 auth=$2
  if [[ -f "$dir/registry-$port.pid" ]] && kill -0 "$(cat "$dir/registry-$port.pid")" 2>/dev/null; then return 0; fi
  mkdir -p "$dir/data-$port"
  {
    echo "version: 0.1"
    echo "log: {level: warn}"
    echo "storage: {filesystem: {rootdirectory: $dir/data-$port}, delete: {enabled: true}}"
    echo "http: {addr: 127.0.0.1:$port}"
    [[ $auth == yes ]] && echo "auth: {htpasswd: {realm: fem-test, path: $dir/htpasswd}}"
  } > "$dir/config-$port.yml"
  docker-registry serve "$dir/config-$port.yml" > "$dir/registry-$port.log" 2>&1 &
  echo $! > "$dir/registry-$port.pid"
  for _ in $(seq 1 80); do up "$port" && return 0; sleep 0.25; done
  echo "dev-registry.sh: registry on $port did not start; see $dir/registry-$port.log" >&2; exit 1
}

start() {
  command -v docker-registry >/dev/null || { echo "dev-registry.sh: docker-registry is missing (apt-get install docker-registry)" >&2; exit 1; }
  command -v htpasswd >/dev/null || { echo "dev-registry.sh: htpasswd is missing (apt-get install apache2-utils)" >&2; exit 1; }
  [[ -f "$dir/password" ]] || { head -c 12 /dev/urandom | base64 | tr -d '/+=' > "$dir/password"; chmod 600 "$dir/password"; }
  htpasswd -Bbn fem-pull "$(cat "$dir/password")" > "$dir/htpasswd"
  start_one 5000 no
  start_one 5001 yes
  # Push with a docker config of our own, so the login never touches the user's.
  export DOCKER_CONFIG="$dir/docker-config"
  docker tag fem-test/busybox:2 127.0.0.1:5000/fem/busybox:1.36
  docker push -q 127.0.0.1:5000/fem/busybox:1.36 >/dev/null
  docker tag fem-test/busybox:2 127.0.0.1:5001/fem/private:1
  docker login -u fem-pull --password-stdin 127.0.0.1:5001 < "$dir/password" >/dev/null 2>&1
  docker push -q 127.0.0.1:5001/fem/private:1 >/dev/null
  docker image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' 127.0.0.1:5000/fem/busybox:1.36 \
    | grep '^127.0.0.1:5000/fem/busybox@' | head -1 | cut -d@ -f2 > "$dir/digest"
  echo "registries on 127.0.0.1:5000 (open) and 127.0.0.1:5001 (htpasswd); test images pushed"
}

stop() {
  for port in 5000 5001; do stop_pid "registry on $port" "$dir/registry-$port.pid"; done
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  *) sed -n '2,9p' "$0"; exit 2 ;;
esac
