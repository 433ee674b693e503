#!/usr/bin/env bash
# Dispatch benchmark: N no-op process tasks (default 2000) through fem-client, and the same N messages through
# `amqp-consume ... /bin/cat` (rabbitmq-c's tool running a command per message: no journal, no events, no
# sandbox) as the peer, one after the other in one run, on a broker of the benchmark's own (TLS, port 5697).
# Prints fem-client's median publish→completed latency, tasks per second, the daemon's idle and peak memory,
# the peer's messages per second, and the throughput ratio.
#
#   bash bench/dispatch.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-2000}
[[ -x .build/release/fem-client && -x .build/release/femctl ]] || bash install.sh >/dev/null
bin=.build/release
work=$(pwd)/.build-bench/dispatch
rm -rf "$work"; mkdir -p "$work"
broker="$work/broker"
daemon_pid=""
cleanup() {
  [[ -n "$daemon_pid" ]] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null || true
  bash scripts/dev-broker.sh stop --dir "$broker" >/dev/null || true
}
trap cleanup EXIT
bash scripts/dev-broker.sh start --dir "$broker" --port 5697 --name fem-bench >/dev/null

cat > "$work/node.toml" <<EOF
[node]
id = "bench"
work_dir = "$work/var"
log_file = "$work/receiver.log"
max_concurrent_tasks = 2
heartbeat_interval = 30
[broker]
url = "amqps://fem@localhost:5697/%2f"
password_file = "$broker/password"
ca_file = "$broker/ca.pem"
cert_file = "$broker/node.pem"
key_file = "$broker/node.key"
prefetch = 32
[launchers]
enabled = ["process"]
[launchers.process]
allowed_executables = ["/bin/true"]
EOF
cat > "$work/noop.task.json" <<'EOF'
{"schema_version": 1, "execution_id": "bench", "plan": {"schema_version": 1, "id": "noop", "version": "1",
 "launcher": "process", "command": {"base": ["/bin/true"]}}}
EOF
export FEMCTL_BROKER_URL="amqps://fem@localhost:5697/%2f" FEMCTL_CA_FILE="$broker/ca.pem" \
  FEMCTL_CERT_FILE="$broker/operator.pem" FEMCTL_KEY_FILE="$broker/operator.key" FEMCTL_PASSWORD_FILE="$broker/password"

rss() { awk "/^$2:/ {print \$2}" "/proc/$1/status"; }

# --- fem-client
$bin/fem-client daemon --config "$work/node.toml" > "$work/daemon.out" 2>&1 &
daemon_pid=$!
for _ in $(seq 1 100); do grep -q "connected to the broker" "$work/receiver.log" 2>/dev/null && break; sleep 0.1; done
sleep 2
idle_kb=$(rss "$daemon_pid" VmRSS)
$bin/femctl watch --node bench --json --until-done "$N" --timeout 900 > "$work/events.jsonl" 2>/dev/null &
watch_pid=$!
sleep 1
$bin/femctl submit "$work/noop.task.json" --node bench --count "$N" \
  | python3 -u -c 'import sys,time
for line in sys.stdin: print(line.strip(), time.time(), flush=True)' > "$work/submitted.txt"
wait "$watch_pid"
peak_kb=$(rss "$daemon_pid" VmHWM)
kill "$daemon_pid"; wait "$daemon_pid" 2>/dev/null || true; daemon_pid=""

# --- peer: amqp-consume running /bin/cat per message (it writes the body to the command, so the command must read it), on its own queue
password=$(cat "$broker/password")
# (the benchmark broker's throwaway password; amqp-tools takes it only on the command line)
peer_common=(--url "amqps://fem:$password@localhost:5697" --ssl --cacert "$broker/ca.pem"
             --cert "$broker/operator.pem" --key "$broker/operator.key")
amqp-consume "${peer_common[@]}" -q bench.peer -e fem.tasks -r node.peer -c "$N" -p 32 /bin/cat > /dev/null 2> "$work/peer.err" &
peer_pid=$!
sleep 1
peer_start=$(date +%s.%N)
$bin/femctl submit "$work/noop.task.json" --node peer --count "$N" > /dev/null
wait "$peer_pid" || { echo "amqp-consume exited with $?" >&2; exit 1; }
peer_end=$(date +%s.%N)

python3 - "$work" "$N" "$idle_kb" "$peak_kb" "$peer_start" "$peer_end" <<'EOF'
import json, statistics, sys
from datetime import datetime
work, n, idle_kb, peak_kb, peer_start, peer_end = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
sent = {}
for line in open(f"{work}/submitted.txt"):
    tid, ts = line.split()
    sent[tid] = float(ts)
done = {}
for line in open(f"{work}/events.jsonl"):
    e = json.loads(line)
    if e.get("kind") == "state" and e["state"] == "completed":
        done[e["task_id"]] = datetime.fromisoformat(e["time"].replace("Z", "+00:00")).timestamp()
lat = [done[t] - sent[t] for t in sent if t in done]
span = max(done.values()) - min(sent.values())
fem_rate = len(done) / span
peer_rate = n / (peer_end - peer_start)
print(f"tasks                      {n} submitted, {len(done)} completed")
print(f"fem-client latency         median {statistics.median(lat) * 1000:.1f} ms, p95 {sorted(lat)[int(len(lat) * 0.95)] * 1000:.1f} ms (publish -> completed event)")
print(f"fem-client throughput      {fem_rate:.1f} tasks/s (journaled, 5 confirmed events each, sandbox, manifest)")
print(f"peer amqp-consume          {peer_rate:.1f} messages/s (/bin/cat per message, no journal, no events)")
print(f"ratio fem-client / peer    {fem_rate / peer_rate:.2f}")
print(f"daemon memory              idle {idle_kb / 1024:.1f} MiB, peak {peak_kb / 1024:.1f} MiB")
EOF
