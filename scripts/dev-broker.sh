#!/usr/bin/env bash
# A local RabbitMQ for development and tests: TLS only on 127.0.0.1, client certificates required, a CA and
# certificates made here. Started as our own process (no systemd); stopped by the PID it recorded.
#
#   scripts/dev-broker.sh start  [--dir DIR] [--port PORT] [--name NAME]
#   scripts/dev-broker.sh stop   [--dir DIR]
#   scripts/dev-broker.sh status [--dir DIR]
#   scripts/dev-broker.sh certs  [--dir DIR]      (only make the certificates)
#   scripts/dev-broker.sh accounts [--dir DIR]    (the orchestrator account, on a running broker; idempotent)
#   scripts/dev-broker.sh add-node ID [--dir DIR] (a least-privilege account for node ID; idempotent)
#   scripts/dev-broker.sh remove-node ID [--dir DIR]  (deletes that account and its password file)
#
# DIR (default var/dev-broker) holds: ca.pem, server.{pem,key}, node.{pem,key}, operator.{pem,key},
# rogue-ca.pem and rogue-client.{pem,key} (signed by another CA, for tests), password (the administrator "fem",
# for broker administration only), orchestrator.password (the account "fem-orchestrator" femctl uses),
# nodes/ID.password (the account "ID" of node ID), nodename, broker.pid, and the broker's mnesia/log folders.
#
# Accounts (the production set is in docs/protocol.md, "Broker accounts"):
#   fem-orchestrator  declares the shared exchanges (femctl setup), node task queues and its own event queues;
#                     publishes tasks and control messages with user_id = fem-orchestrator, which nodes require.
#   <node id>         configure: only its queues fem.node.<id> and fem.node.<id>.control (the exchanges it only
#                     looks up); read: those queues and fem.tasks/fem.control, binding only with the keys
#                     node.<id> and all (topic permissions); write: its queues (bindings) and fem.events, with
#                     routing keys node.<id>.* only (topic permissions). Work pools: configure/read/write on the
#                     quorum queues fem.pool.<name> and fem.pool.<name>.dead, binding them with pool.<name>(.dead),
#                     and write on fem.tasks with those keys only (returning a pool task it cannot take).
set -euo pipefail

cmd=${1:-}; shift || true
dir=var/dev-broker
port=5671
name=""
node_id=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir) dir=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --name) name=$2; shift 2 ;;
    -*) echo "dev-broker.sh: unknown option $1" >&2; exit 2 ;;
    *) [[ ( "$cmd" == add-node || "$cmd" == remove-node ) && -z "$node_id" ]] || { echo "dev-broker.sh: unexpected argument $1" >&2; exit 2; }
       node_id=$1; shift ;;
  esac
done
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
if [[ -z "$name" ]]; then
  # A running broker's own name: recorded at start, or its mnesia folder (brokers started before it was recorded).
  if [[ -s "$dir/nodename" ]]; then
    name=$(cut -d@ -f1 "$dir/nodename")
  elif found=$(ls -d "$dir"/mnesia/*@localhost 2>/dev/null | head -1) && [[ -n "$found" ]]; then
    name=$(basename "$found" | cut -d@ -f1)
  else
    name="fem-dev-$port"
  fi
fi
node="$name@localhost"
orchestrator=fem-orchestrator
pidfile="$dir/broker.pid"

need() {
  command -v "$1" >/dev/null 2>&1 || { echo "dev-broker.sh: $1 is missing (install $2)" >&2; exit 1; }
}

make_cert() { # name cn usage signer_ca signer_key
  local n=$1 cn=$2 usage=$3 ca=$4 cakey=$5
  openssl req -newkey rsa:2048 -nodes -keyout "$dir/$n.key" -out "$dir/$n.csr" -subj "/CN=$cn" 2>/dev/null
  printf 'subjectAltName=DNS:localhost\nextendedKeyUsage=%s\nbasicConstraints=CA:FALSE\n' "$usage" > "$dir/$n.ext"
  openssl x509 -req -in "$dir/$n.csr" -CA "$ca" -CAkey "$cakey" -CAcreateserial -out "$dir/$n.pem" -days 825 \
    -sha256 -extfile "$dir/$n.ext" 2>/dev/null
  rm -f "$dir/$n.csr" "$dir/$n.ext"
  chmod 600 "$dir/$n.key"
}

certs() {
  need openssl openssl
  [[ -f "$dir/ca.pem" && -f "$dir/operator.pem" && -f "$dir/rogue-client.pem" ]] && return 0
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$dir/ca.key" -out "$dir/ca.pem" -days 3650 \
    -subj "/CN=fem development CA" 2>/dev/null
  make_cert server localhost serverAuth "$dir/ca.pem" "$dir/ca.key"
  make_cert node fem-node clientAuth "$dir/ca.pem" "$dir/ca.key"
  make_cert operator fem-operator clientAuth "$dir/ca.pem" "$dir/ca.key"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$dir/rogue-ca.key" -out "$dir/rogue-ca.pem" -days 3650 \
    -subj "/CN=some other CA" 2>/dev/null
  make_cert rogue-client fem-node clientAuth "$dir/rogue-ca.pem" "$dir/rogue-ca.key"
  chmod 600 "$dir"/*.key
}

running() {
  [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

start() {
  need /usr/sbin/rabbitmq-server "apt-get install rabbitmq-server"
  certs
  if running; then accounts >/dev/null; echo "broker $node already running (pid $(cat "$pidfile")) on localhost:$port"; return 0; fi
  [[ -f "$dir/password" ]] || { head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$dir/password"; chmod 600 "$dir/password"; }
  mkdir -p "$dir/mnesia" "$dir/log" "$dir/etc"
  cat > "$dir/etc/rabbitmq.conf" <<EOF
listeners.tcp = none
listeners.ssl.default = 127.0.0.1:$port
ssl_options.cacertfile = $dir/etc/ca.pem
ssl_options.certfile = $dir/etc/server.pem
ssl_options.keyfile = $dir/etc/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = true
default_user = fem
default_pass = $(cat "$dir/password")
loopback_users = none
log.file.level = info
EOF
  echo "[]." > "$dir/etc/enabled_plugins"
  cp "$dir/ca.pem" "$dir/server.pem" "$dir/server.key" "$dir/etc/"
  chown -R rabbitmq:rabbitmq "$dir/mnesia" "$dir/log" "$dir/etc"
  chmod 700 "$dir/etc"
  local dist=$((port + 20000))
  env RABBITMQ_NODENAME="$node" RABBITMQ_NODE_PORT="$((port + 1000))" RABBITMQ_DIST_PORT="$dist" \
      RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log" RABBITMQ_CONFIG_FILE="$dir/etc/rabbitmq.conf" \
      RABBITMQ_ENABLED_PLUGINS_FILE="$dir/etc/enabled_plugins" RABBITMQ_PID_FILE="$dir/mnesia/broker.pid" \
      setsid /usr/sbin/rabbitmq-server > "$dir/log/stdout.log" 2>&1 < /dev/null &
  local launcher=$!
  # The broker writes its own (Erlang VM) PID; that is the process we stop later.
  for _ in $(seq 1 120); do
    if [[ -s "$dir/mnesia/broker.pid" ]]; then break; fi
    if ! kill -0 "$launcher" 2>/dev/null; then
      echo "dev-broker.sh: rabbitmq-server exited; see $dir/log" >&2; tail -20 "$dir/log/stdout.log" >&2; exit 1
    fi
    sleep 0.5
  done
  cp "$dir/mnesia/broker.pid" "$pidfile"
  if ! timeout 90 rabbitmqctl -n "$node" await_startup >/dev/null 2>&1; then
    echo "dev-broker.sh: broker $node did not start; see $dir/log" >&2; tail -20 "$dir/log/stdout.log" >&2; exit 1
  fi
  echo "$node" > "$dir/nodename"
  accounts >/dev/null
  echo "broker $node running (pid $(cat "$pidfile")) on localhost:$port, TLS only, client certificates required"
}

rmq() { rabbitmqctl -q -n "$node" "$@"; }

# The broker answers (asked directly: a broker started by other means may have no broker.pid here).
answering() {
  rmq -t 10 ping >/dev/null 2>&1 || { echo "dev-broker.sh: the broker $node (in $dir) is not answering" >&2; exit 1; }
}

new_password() { # file
  [[ -f "$1" ]] || { head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$1"; chmod 600 "$1"; }
}

# Creates the user (password from FILE, through stdin: never in argv) or resets its password to FILE's.
ensure_user() { # user file
  # awk reads the whole list (grep -q would stop early, and pipefail would count the writer's SIGPIPE as "absent").
  if rmq list_users | awk -v u="$1" '$1 == u { found = 1 } END { exit !found }'; then
    rmq change_password "$1" < "$2" >/dev/null
  else
    rmq add_user "$1" < "$2" >/dev/null
  fi
}

accounts() {
  answering
  new_password "$dir/orchestrator.password"
  ensure_user "$orchestrator" "$dir/orchestrator.password"
  local mine='fem\.(tasks|control|events)|fem\.node\.[a-z0-9-]+(\.control)?|femctl\..*|test\..*|amq\.gen-.*'
  rmq set_permissions -p / "$orchestrator" "^($mine)\$" \
    '^(fem\.(tasks|control)|fem\.node\.[a-z0-9-]+(\.control)?|femctl\..*|test\..*|amq\.gen-.*)$' \
    '^(fem\.(tasks|events)|femctl\..*|test\..*|amq\.gen-.*)$' >/dev/null
  echo "broker account $orchestrator ready (password in $dir/orchestrator.password)"
}

add_node() {
  [[ "$node_id" =~ ^[a-z0-9][a-z0-9-]{0,62}$ ]] || {
    echo "dev-broker.sh add-node: \"$node_id\" is not a node id (lowercase letters, digits and '-')" >&2; exit 2; }
  answering
  need python3 python3
  mkdir -p "$dir/nodes"; chmod 700 "$dir/nodes"
  local file="$dir/nodes/$node_id.password"
  new_password "$file"
  # One import (about 0.5 s) instead of five rabbitmqctl calls; the password goes in as a salted hash on stdin.
  python3 - "$node_id" "$file" <<'PY' | rmq import_definitions >/dev/null
import base64, hashlib, json, os, sys
node, file = sys.argv[1], sys.argv[2]
password = open(file).read().strip().encode()
salt = os.urandom(4)
queues = r"fem\.node\.%s(\.control)?" % node
pools = r"fem\.pool\.[a-z0-9-]+(\.dead)?"
print(json.dumps({
    "users": [{"name": node, "tags": [], "hashing_algorithm": "rabbit_password_hashing_sha256",
               "password_hash": base64.b64encode(salt + hashlib.sha256(salt + password).digest()).decode()}],
    "permissions": [{"user": node, "vhost": "/", "configure": "^(%s|%s)$" % (queues, pools),
                     "write": r"^(%s|%s|fem\.events|fem\.tasks)$" % (queues, pools),
                     "read": r"^(%s|%s|fem\.tasks|fem\.control)$" % (queues, pools)}],
    "topic_permissions": [
        {"user": node, "vhost": "/", "exchange": "fem.events", "write": r"^node\.%s\." % node, "read": "^$"},
        {"user": node, "vhost": "/", "exchange": "fem.tasks", "write": r"^pool\.[a-z0-9-]+(\.dead)?$",
         "read": r"^(node\.%s|all|pool\.[a-z0-9-]+(\.dead)?)$" % node},
        {"user": node, "vhost": "/", "exchange": "fem.control", "write": "^$", "read": r"^node\.%s$" % node}]}))
PY
  echo "broker account $node_id ready (password in $file)"
}

remove_node() {
  [[ "$node_id" =~ ^[a-z0-9][a-z0-9-]{0,62}$ ]] || {
    echo "dev-broker.sh remove-node: \"$node_id\" is not a node id" >&2; exit 2; }
  answering
  rmq delete_user "$node_id" >/dev/null 2>&1 || true
  rm -f "$dir/nodes/$node_id.password"
}

stop() {
  if ! running; then echo "broker in $dir is not running"; rm -f "$pidfile"; return 0; fi
  local pid; pid=$(cat "$pidfile")
  kill -TERM "$pid"
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  rm -f "$pidfile" "$dir/mnesia/broker.pid"
  echo "broker in $dir stopped (pid $pid)"
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  certs) certs ;;
  accounts) accounts ;;
  add-node) [[ -n "$node_id" ]] || { echo "dev-broker.sh add-node: which node id?" >&2; exit 2; }; add_node ;;
  remove-node) [[ -n "$node_id" ]] || { echo "dev-broker.sh remove-node: which node id?" >&2; exit 2; }; remove_node ;;
  status) if running; then echo "running (pid $(cat "$pidfile"))"; else echo "not running"; exit 1; fi ;;
  *) sed -n '2,24p' "$0"; exit 2 ;;
esac
