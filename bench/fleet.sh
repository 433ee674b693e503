#!/usr/bin/env bash
# Fleet benchmark: D fem-client daemons (default 200) on this machine against one broker of the benchmark's own
# (scripts/dev-broker.sh in .build-bench/fleet, TLS on loopback port 5696), each with its own work dir, config and
# least-privilege broker account (the accounts add-node makes, created in one definitions import). One task is
# sent to `all`; prints the time from its publish to the last `completed` event (goal: 10 s), each daemon's RSS
# (median and max; goal <= 20 MiB) and the broker's memory. Every process it started is stopped by its PID.
#
#   bash bench/fleet.sh [D]
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-200}
# FEM_BENCH_BIN: a folder with other fem-client and femctl binaries (an earlier build, to compare).
if [[ -n "${FEM_BENCH_BIN:-}" ]]; then
  bin=$FEM_BENCH_BIN
else
  swift build -c release --product fem-client 2>&1 | tail -1
  swift build -c release --product femctl 2>&1 | tail -1
  bin=$(swift build -c release --show-bin-path)
fi
venv=$(pwd)/.build-bench/celery-venv   # py-amqp for the driver (shared with dispatch.sh)
if [[ ! -x "$venv/bin/celery" ]]; then python3 -m venv "$venv"; "$venv/bin/pip" install -q 'celery>=5,<6'; fi
work=$(pwd)/.build-bench/fleet
broker="$work/broker"
port=5696
rm -rf "$work/nodes"; mkdir -p "$work/nodes"
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  bash scripts/dev-broker.sh stop --dir "$broker" >/dev/null || true
}
trap cleanup EXIT
bash scripts/dev-broker.sh start --dir "$broker" --port "$port" --name fem-fleet >/dev/null
node_name=$(cat "$broker/nodename")
ids=(); for i in $(seq 1 "$D"); do ids+=("fleet-$i"); done

# The accounts of scripts/dev-broker.sh add-node (same permissions), all in one import instead of D of them.
mkdir -p "$broker/nodes"; chmod 700 "$broker/nodes"
for id in "${ids[@]}"; do
  f="$broker/nodes/$id.password"
  [[ -f "$f" ]] || { head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$f"; chmod 600 "$f"; }
done
python3 - "$broker/nodes" "${ids[@]}" <<'PY' | rabbitmqctl -q -n "$node_name" import_definitions >/dev/null
import base64, hashlib, json, os, sys
folder, nodes = sys.argv[1], sys.argv[2:]
users, perms, topics = [], [], []
for node in nodes:
    password = open(f"{folder}/{node}.password").read().strip().encode()
    salt = os.urandom(4)
    queues = r"fem\.node\.%s(\.control)?" % node
    users.append({"name": node, "tags": [], "hashing_algorithm": "rabbit_password_hashing_sha256",
                  "password_hash": base64.b64encode(salt + hashlib.sha256(salt + password).digest()).decode()})
    perms.append({"user": node, "vhost": "/", "configure": "^%s$" % queues,
                  "write": r"^(%s|fem\.events)$" % queues, "read": r"^(%s|fem\.tasks|fem\.control)$" % queues})
    topics += [{"user": node, "vhost": "/", "exchange": "fem.events", "write": r"^node\.%s\." % node, "read": "^$"},
               {"user": node, "vhost": "/", "exchange": "fem.tasks", "write": "^$", "read": r"^(node\.%s|all)$" % node},
               {"user": node, "vhost": "/", "exchange": "fem.control", "write": "^$", "read": r"^node\.%s$" % node}]
print(json.dumps({"users": users, "permissions": perms, "topic_permissions": topics}))
PY

export FEMCTL_BROKER_URL="amqps://fem-orchestrator@localhost:$port/%2f" FEMCTL_CA_FILE="$broker/ca.pem" \
  FEMCTL_CERT_FILE="$broker/operator.pem" FEMCTL_KEY_FILE="$broker/operator.key" \
  FEMCTL_PASSWORD_FILE="$broker/orchestrator.password"
"$bin/femctl" setup >/dev/null
cat > "$work/noop.task.json" <<'EOF'
{"schema_version": 1, "execution_id": "fleet", "plan": {"schema_version": 1, "id": "noop", "version": "1",
 "launcher": "process", "command": {"base": ["/bin/true"]}}}
EOF

t_start=$(date +%s.%N)
for id in "${ids[@]}"; do
  d="$work/nodes/$id"; mkdir -p "$d"
  cat > "$d/node.toml" <<EOF
[node]
id = "$id"
work_dir = "$d/var"
log_file = "$d/receiver.log"
max_concurrent_tasks = 2
heartbeat_interval = 30
[broker]
url = "amqps://$id@localhost:$port/%2f"
password_file = "$broker/nodes/$id.password"
ca_file = "$broker/ca.pem"
cert_file = "$broker/node.pem"
key_file = "$broker/node.key"
[launchers]
enabled = ["process"]
[launchers.process]
allowed_executables = ["/bin/true"]
EOF
  "$bin/fem-client" daemon --config "$d/node.toml" > "$d/daemon.out" 2>&1 &
  pids+=("$!")
done
# Every daemon connected (its queue is declared and bound before it says so).
deadline=$((SECONDS + 300))
while :; do
  up=$(grep -l "connected to the broker" "$work"/nodes/*/receiver.log 2>/dev/null | wc -l)
  (( up >= D )) && break
  (( SECONDS < deadline )) || { echo "only $up of $D daemons connected within 300 s" >&2; exit 1; }
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null || { echo "daemon $p exited; see $work/nodes/*/daemon.out" >&2; exit 1; }; done
  sleep 1
done
t_up=$(date +%s.%N)
sleep 3
kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }
idle=(); for p in "${pids[@]}"; do idle+=("$(kib "$p" VmRSS)"); done
broker_pid=$(cat "$broker/broker.pid")
broker_idle=$(kib "$broker_pid" VmRSS)

BENCH_BROKER_DIR="$broker" BENCH_PORT="$port" BENCH_TASK_FILE="$work/noop.task.json" \
  "$venv/bin/python" bench/dispatch_driver.py fleet - "$D" > "$work/result.json"
after=(); peak=(); pss=(); private=()
for p in "${pids[@]}"; do
  after+=("$(kib "$p" VmRSS)"); peak+=("$(kib "$p" VmHWM)")
  # RSS counts the shared libraries' pages in every daemon; PSS shares them out, Private is the daemon's own.
  pss+=("$(awk '$1 == "Pss:" {print $2}' "/proc/$p/smaps_rollup")")
  private+=("$(awk '$1 ~ /^Private_(Clean|Dirty):$/ {s += $2} END {print s}' "/proc/$p/smaps_rollup")")
done
used_mib=$(free -m | awk '/^Mem:/ {print $3}')
broker_after=$(kib "$broker_pid" VmRSS)
broker_reported=$(rabbitmqctl -q -n "$node_name" eval 'erlang:memory(total).' 2>/dev/null || echo 0)

python3 - "$work/result.json" "$D" "$t_start" "$t_up" "$broker_idle" "$broker_after" "$broker_reported" \
  "${idle[*]}" "${after[*]}" "${peak[*]}" "${pss[*]}" "${private[*]}" "$used_mib" <<'EOF'
import json, statistics, sys
r = json.load(open(sys.argv[1]))
d, t0, tup = int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
b_idle, b_after, b_rep = int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
idle, after, peak, pss, private = ([int(x) / 1024 for x in s.split()] for s in sys.argv[8:13])
used = int(sys.argv[13])
print(f"load average (1, 5, 15 min): {open('/proc/loadavg').read().split()[:3]} on {__import__('os').cpu_count()} cores")
print(f"daemons                       {d} started, all connected in {tup - t0:.1f} s")
print(f"task to `all`                 {r['completed']} completed, {r['not_completed']} failed/rejected")
if r["last_s"] is not None:
    print(f"publish -> completed          first {r['first_s']:.2f} s, median {r['median_s']:.2f} s, last {r['last_s']:.2f} s   (goal: last <= 10 s)")
print(f"daemon RSS idle               median {statistics.median(idle):.1f} MiB, max {max(idle):.1f} MiB   (goal <= 20 MiB)")
print(f"daemon RSS after the task     median {statistics.median(after):.1f} MiB, max {max(after):.1f} MiB; peak (VmHWM) max {max(peak):.1f} MiB")
print(f"daemon PSS after the task     median {statistics.median(pss):.1f} MiB, max {max(pss):.1f} MiB (shared library pages shared out)")
print(f"daemon private after the task median {statistics.median(private):.1f} MiB, max {max(private):.1f} MiB (its own pages only)")
print(f"daemons together              PSS {sum(pss):.0f} MiB (RSS summed: {sum(after):.0f} MiB); machine memory in use {used} MiB")
print(f"broker                        RSS idle {b_idle / 1024:.0f} MiB, after {b_after / 1024:.0f} MiB; Erlang memory {b_rep / 1048576:.0f} MiB")
EOF
