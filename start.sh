#!/usr/bin/env bash
# Starts the fem-client receiver daemon in the background (log: receiver.log, pid: var/fem-client.pid).
# Installs and builds first if needed (install.sh); otherwise brings the release build up to date with the checkout. If the configured broker is the local development broker and it is not
# running, sets it up: RabbitMQ on localhost:5671, TLS only, client certificates required (var/dev-broker).
set -euo pipefail
cd "$(dirname "$0")"

bin=.build/release/fem-client
if [[ ! -x $bin || ! -x .build/release/femctl || ! -f config/fem-client.toml ]]; then
  bash install.sh
else
  # After a `git pull`: new system packages, and an incremental release build (seconds when nothing changed).
  bash scripts/install-packages.sh
  swift build -c release --product fem-client 2>&1 | tail -1
  swift build -c release --product femctl 2>&1 | tail -1
fi
config=${FEM_CONFIG:-config/fem-client.toml}

# The local development broker is the one whose certificates live in var/dev-broker.
if [[ -z "${FEM_BROKER_URL:-}" ]] && grep -Eq '^url *= *"amqps://[^@]*@localhost:5671/' "$config" \
   && grep -Eq '^ca_file *= *"var/dev-broker/' "$config"; then
  bash scripts/dev-broker.sh start --dir var/dev-broker --port 5671
  # The node's own least-privilege account (named like the node id), and the shared exchanges.
  node_id=$(sed -n 's/^id *= *"\([a-z0-9-]*\)".*/\1/p' "$config" | head -1)
  bash scripts/dev-broker.sh add-node "${node_id:-dev-node}" --dir var/dev-broker
  .build/release/femctl setup >/dev/null
fi

mkdir -p var
# The docker launcher (the example configuration's only one) needs dockerd: with none on the default socket, start
# the development one (no bridge network, as in scripts/dev-docker.sh), the way the local broker is started above.
socket=$(sed -n 's/^socket *= *"\([^"]*\)".*/\1/p' "$config" | head -1)
if grep -Eq '^enabled *= *\[[^]]*"docker"' "$config" && [[ "${socket:-/var/run/docker.sock}" == /var/run/docker.sock ]] \
   && ! curl -sf --max-time 2 --unix-socket /var/run/docker.sock http://localhost/_ping >/dev/null 2>&1; then
  bash scripts/install-packages.sh busybox-static
  mkdir -p var/dev-docker
  bash scripts/dev-docker.sh start --dir var/dev-docker
fi
pidfile=var/fem-client.pid
if [[ -f $pidfile ]] && kill -0 "$(cat $pidfile)" 2>/dev/null; then
  echo "fem-client is already running (pid $(cat $pidfile)); bash stop.sh stops it"
  exit 0
fi
if ! $bin check --config "$config" > var/check.out 2>&1; then
  cat var/check.out
  echo "start.sh: fem-client check failed; fix the above and run bash start.sh again" >&2
  exit 1
fi
nohup $bin daemon --config "$config" >> var/daemon.out 2>&1 < /dev/null &
echo $! > $pidfile
sleep 1
if ! kill -0 "$(cat $pidfile)" 2>/dev/null; then
  echo "start.sh: the daemon exited at once:" >&2; tail -20 var/daemon.out >&2; exit 1
fi
echo "fem-client running (pid $(cat $pidfile)); follow it with: tail -f receiver.log"
if ! grep -Eq '^enabled *= *\[.*"process"' "$config"; then
  echo "note: the process launcher is not enabled in $config, so the host-process example below will be declined;"
  echo "      README.md (Quick start) shows the two lines that enable it for /bin/sh"
fi
echo "submit the example: .build/release/femctl submit docs/templates/examples/hello-process.task.json --node \$(grep -m1 '^id' $config | cut -d'\"' -f2)"
