#!/usr/bin/env bash
# Drill: a full disk, as an operator would meet it. A broker and a daemon of the drill's own; the node's work dir
# (journal, sandboxes) — and, in the second round, its log's folder — on a small tmpfs that the drill fills to the
# last byte while short and long tasks run and more arrive, then frees. Passes when the node resumes without a
# restart, every task ends with exactly one terminal event, nothing runs twice, and the node flagged pressure.
# Needs root (mount).
#
#   bash bench/drills/disk-full.sh [TASKS]        (FEM_BIN=.build/debug to use a debug build)
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-40}
PORT=${FEM_DRILL_PORT:-5694}
bin=${FEM_BIN:-.build/release}
[[ -x $bin/fem-client && -x $bin/femctl ]] || { echo "FAIL: $bin/fem-client and femctl are missing (swift build -c release)"; exit 1; }
work=$(pwd)/.build-bench/drill-disk-full
broker="$work/broker"
daemon_pid=""; watch_pid=""; mounted=()
cleanup() {
  [[ -n "$watch_pid" ]] && kill "$watch_pid" 2>/dev/null || true
  [[ -n "$daemon_pid" ]] && kill -KILL "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null || true
  for m in "${mounted[@]}"; do umount -l "$m" 2>/dev/null || true; done
  bash scripts/dev-broker.sh stop --dir "$broker" >/dev/null 2>&1 || true
}
trap cleanup EXIT
for m in "$work"/round-*/disk; do mountpoint -q "$m" 2>/dev/null && umount -l "$m"; done
rm -rf "$work"; mkdir -p "$work"
bash scripts/dev-broker.sh start --dir "$broker" --port "$PORT" --name fem-drill-disk >/dev/null
# The orchestrator's account for femctl; each round's node gets its own (least-privilege) account.
export FEMCTL_BROKER_URL="amqps://fem-orchestrator@localhost:$PORT/%2f" FEMCTL_CA_FILE="$broker/ca.pem" \
  FEMCTL_CERT_FILE="$broker/operator.pem" FEMCTL_KEY_FILE="$broker/operator.key" \
  FEMCTL_PASSWORD_FILE="$broker/orchestrator.password"
$bin/femctl setup >/dev/null

failures=0
round() { # name: which of work dir / log folder is on the small disk
  local name=$1 dir="$work/round-$1" node="drill-$1"
  mkdir -p "$dir/disk"
  bash scripts/dev-broker.sh add-node "$node" --dir "$broker" >/dev/null
  mount -t tmpfs -o size=24m tmpfs "$dir/disk"; mounted+=("$dir/disk")
  local workdir="$dir/var" logfile="$dir/receiver.log"
  [[ $name == workdir ]] && workdir="$dir/disk/var"
  [[ $name == log ]] && logfile="$dir/disk/receiver.log"
  cat > "$dir/node.toml" <<TOML
[node]
id = "$node"
work_dir = "$workdir"
log_file = "$logfile"
max_concurrent_tasks = 4
heartbeat_interval = 2
min_free_mb = 8
drain_seconds = 0
[broker]
url = "amqps://$node@localhost:$PORT/%2f"
password_file = "$broker/nodes/$node.password"
ca_file = "$broker/ca.pem"
cert_file = "$broker/node.pem"
key_file = "$broker/node.key"
prefetch = 16
[launchers]
enabled = ["process"]
[launchers.process]
allowed_executables = ["/bin/sh"]
TOML
  cat > "$dir/short.task.json" <<'JSON'
{"schema_version": 1, "execution_id": "drill", "plan": {"schema_version": 1, "id": "short", "version": "1",
 "launcher": "process", "command": {"base": ["/bin/sh", "-c", "sleep 0.2; echo short"]}}}
JSON
  cat > "$dir/long.task.json" <<'JSON'
{"schema_version": 1, "execution_id": "drill", "plan": {"schema_version": 1, "id": "long", "version": "1",
 "launcher": "process", "command": {"base": ["/bin/sh", "-c", "sleep 6; echo long"]}}}
JSON
  local half=$((N / 2)) total=$((N + 2))
  $bin/femctl watch --node "$node" --json --heartbeats --timeout 240 > "$dir/events.jsonl" 2>/dev/null &
  watch_pid=$!
  sleep 1
  $bin/fem-client daemon --config "$dir/node.toml" > "$dir/daemon.out" 2>&1 &
  daemon_pid=$!
  $bin/femctl submit "$dir/long.task.json" --node "$node" --count 2 > "$dir/ids.txt"
  $bin/femctl submit "$dir/short.task.json" --node "$node" --count "$half" >> "$dir/ids.txt"
  sleep 2
  dd if=/dev/zero of="$dir/disk/fill" bs=1M 2>/dev/null || true
  [[ $name == log ]] && { yes '' | head -c 65536 >> "$logfile" 2>/dev/null || true; }
  $bin/femctl submit "$dir/short.task.json" --node "$node" --count "$((N - half))" >> "$dir/ids.txt"
  sleep 10
  rm -f "$dir/disk/fill"
  local deadline=$((SECONDS + 180))
  while (( SECONDS < deadline )); do
    local ended
    ended=$(python3 - "$dir" <<'PY'
import json, sys
d = sys.argv[1]
ids = set(open(f"{d}/ids.txt").read().split())
ended = set()
for line in open(f"{d}/events.jsonl"):
    try: e = json.loads(line)
    except ValueError: continue
    if e.get("kind") == "state" and e.get("state") in ("completed", "failed", "cancelled", "rejected", "declined"):
        ended.add(e.get("task_id"))
print(len(ids & ended))
PY
)
    (( ended >= total )) && break
    sleep 1
  done
  sleep 2
  local alive=no; kill -0 "$daemon_pid" 2>/dev/null && alive=yes
  kill "$watch_pid" 2>/dev/null || true; watch_pid=""
  kill -KILL "$daemon_pid" 2>/dev/null; wait "$daemon_pid" 2>/dev/null || true; daemon_pid=""
  umount -l "$dir/disk"
  python3 - "$dir" "$name" "$alive" "$total" <<'PY' || failures=$((failures + 1))
import collections, json, sys
d, name, alive, total = sys.argv[1], sys.argv[2], sys.argv[3] == "yes", int(sys.argv[4])
ids = set(open(f"{d}/ids.txt").read().split())
terminal = collections.defaultdict(list); running = collections.Counter(); classes = collections.Counter()
pressure = False; notices = collections.Counter()
for line in open(f"{d}/events.jsonl"):
    try: e = json.loads(line)
    except ValueError: continue
    if e.get("kind") == "heartbeat":
        pressure |= bool(e.get("pressure")); continue
    if e.get("kind") == "node_notice":
        notices[e["reason"]] += 1; continue
    tid = e.get("task_id")
    if tid not in ids: continue
    if e.get("kind") == "state" and e["state"] == "running": running[(tid, e["seq"])] += 0; running[tid] += 1
    if e.get("kind") == "state" and e["state"] in ("completed", "failed", "cancelled", "rejected", "declined"):
        if e["seq"] not in [s for s, _ in terminal[tid]]:
            terminal[tid].append((e["seq"], e["state"]))
            classes[e["state"] + ("/" + e["detail"]["failure_class"] if e.get("detail", {}).get("failure_class") else "")] += 1
ended = sum(1 for t in ids if len(terminal[t]) == 1)
twice = sum(1 for t in ids if running[t] > 1)
multi = sum(1 for t in ids if len(terminal[t]) > 1)
ok = alive and ended == total and twice == 0 and multi == 0 and pressure and notices["disk_pressure_ended"] >= 1
print(f"{'PASS' if ok else 'FAIL'} disk-full ({name} on the full disk): tasks {total}, ended once {ended}, "
      f"ran twice {twice}, more than one end {multi}, outcomes {dict(classes)}, pressure flagged {pressure}, "
      f"notices {dict(notices)}, same daemon throughout {alive}")
sys.exit(0 if ok else 1)
PY
}
round workdir
round log
if (( failures == 0 )); then echo "PASS disk-full drill: both rounds"; else echo "FAIL disk-full drill: $failures round(s) failed"; exit 1; fi
