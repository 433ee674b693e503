#!/usr/bin/env bash
# Dispatch benchmark, fem-client against Celery 5 (and rabbitmq-c's amqp-consume), side by side in one run, on a
# broker of the benchmark's own (scripts/dev-broker.sh: TLS on loopback, port 5697, folder .build-bench/dispatch).
#
#   throughput  N no-op `process` tasks (default 2000) published at once; fem-client with 2 slots against a Celery
#               worker (prefork, concurrency 1, each task `subprocess.run(["true"])`, results over AMQP, rpc://),
#               and against `amqp-consume` running /bin/cat per message (no journal, no events, no sandbox).
#   latency     200 tasks one at a time: publish -> fem-client's `completed` event arrives, against
#               publish -> the Celery result arrives (median, p95).
# Both sides are timed by one Python driver (bench/dispatch_driver.py) with the same clock. Also prints
# fem-client's idle and peak RSS and the Celery worker's RSS (all its processes). Celery is installed into a
# bench-only virtual environment (.build-bench/celery-venv). fem-client is the release build of this tree.
#
#   bash bench/dispatch.sh [all|throughput|latency] [N] [LATENCY_N]
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-all}
N=${2:-2000}
LN=${3:-200}
# FEM_BENCH_BIN: a folder with other fem-client and femctl binaries (an earlier build, to compare).
if [[ -n "${FEM_BENCH_BIN:-}" ]]; then
  bin=$FEM_BENCH_BIN
else
  swift build -c release --product fem-client 2>&1 | tail -1
  swift build -c release --product femctl 2>&1 | tail -1
  bin=$(swift build -c release --show-bin-path)
fi
venv=$(pwd)/.build-bench/celery-venv
if [[ ! -x "$venv/bin/celery" ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'celery>=5,<6'
fi
work=$(pwd)/.build-bench/dispatch
rm -rf "$work/var" "$work"/*.log "$work"/*.out; mkdir -p "$work"
broker="$work/broker"
port=5697
daemon_pid="" celery_pid="" peer_pid=""
cleanup() {
  for p in $daemon_pid $peer_pid; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
  if [[ -n "$celery_pid" ]]; then kill -TERM "$celery_pid" 2>/dev/null; wait "$celery_pid" 2>/dev/null || true; fi
  bash scripts/dev-broker.sh stop --dir "$broker" >/dev/null || true
}
trap cleanup EXIT
bash scripts/dev-broker.sh start --dir "$broker" --port "$port" --name fem-bench >/dev/null
bash scripts/dev-broker.sh add-node bench --dir "$broker" >/dev/null
export BENCH_BROKER_DIR="$broker" BENCH_PORT="$port" BENCH_TASK_FILE="$work/noop.task.json"

cat > "$work/node.toml" <<EOF
[node]
id = "bench"
work_dir = "$work/var"
log_file = "$work/receiver.log"
max_concurrent_tasks = 2
heartbeat_interval = 30
[broker]
url = "amqps://bench@localhost:$port/%2f"
password_file = "$broker/nodes/bench.password"
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
export FEMCTL_BROKER_URL="amqps://fem-orchestrator@localhost:$port/%2f" FEMCTL_CA_FILE="$broker/ca.pem" \
  FEMCTL_CERT_FILE="$broker/operator.pem" FEMCTL_KEY_FILE="$broker/operator.key" \
  FEMCTL_PASSWORD_FILE="$broker/orchestrator.password"
"$bin/femctl" setup >/dev/null

# CPU time in ms of a process and its descendants (own threads, and the children they waited for).
cpu_ms() {
  local total=0 p
  for p in $1 $(pgrep -P "$1" 2>/dev/null || true); do
    total=$((total + $(awk '{print $14 + $15 + $16 + $17}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo $((total * 1000 / $(getconf CLK_TCK)))
}
kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }
# The RSS of a process and all its descendants, in KiB (field: VmRSS or VmHWM).
tree_kib() {
  local total=0 p
  for p in $1 $(pgrep -P "$1" 2>/dev/null || true); do total=$((total + $(kib "$p" "$2" || echo 0))); done
  echo "$total"
}
drive() { "$venv/bin/python" bench/dispatch_driver.py "$@"; }
results="$work/results.jsonl"; : > "$results"

# --- fem-client
# FEM_BENCH_DAEMON_ENV: extra environment for the daemon only (e.g. MALLOC_ARENA_MAX=2).
env ${FEM_BENCH_DAEMON_ENV:-} "$bin/fem-client" daemon --config "$work/node.toml" > "$work/daemon.out" 2>&1 &
daemon_pid=$!
for _ in $(seq 1 100); do grep -q "connected to the broker" "$work/receiver.log" 2>/dev/null && break; sleep 0.1; done
sleep 2
fem_idle=$(kib "$daemon_pid" VmRSS)
cp "/proc/$daemon_pid/smaps" "$work/daemon-idle.smaps"
# FEM_BENCH_PERF=1: `perf record -g` of the daemon during each fem-client run ($work/perf-MODE.data).
profiled() {
  if [[ -n "${FEM_BENCH_PERF:-}" ]]; then
    perf record -q -g -p "$daemon_pid" -o "$work/perf-$2.data" 2>/dev/null & local perf_pid=$!
    sleep 1; drive "$@"; kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true
  else
    drive "$@"
  fi
}
c0=$(cpu_ms "$daemon_pid")
[[ $mode == latency ]] || profiled fem throughput "$N" | tee -a "$results"
c1=$(cpu_ms "$daemon_pid")
[[ $mode == throughput ]] || profiled fem latency "$LN" | tee -a "$results"
c2=$(cpu_ms "$daemon_pid")
echo "{\"side\": \"fem-client\", \"mode\": \"cpu\", \"throughput_ms\": $((c1 - c0)), \"latency_ms\": $((c2 - c1))}" >> "$results"
cp "/proc/$daemon_pid/smaps" "$work/daemon-after.smaps"
fem_peak=$(kib "$daemon_pid" VmHWM)
fem_after=$(kib "$daemon_pid" VmRSS)
kill "$daemon_pid"; wait "$daemon_pid" 2>/dev/null || true; daemon_pid=""

# --- Celery 5: prefork, concurrency 1
(cd bench && exec "$venv/bin/celery" -A celery_bench worker --pool=prefork --concurrency=1 --loglevel=WARNING \
   --without-gossip --without-mingle --without-heartbeat) > "$work/celery.log" 2>&1 &
celery_pid=$!
sleep 3
celery_idle=$(tree_kib "$celery_pid" VmRSS)
c0=$(cpu_ms "$celery_pid")
[[ $mode == latency ]] || drive celery throughput "$N" | tee -a "$results"
c1=$(cpu_ms "$celery_pid")
[[ $mode == throughput ]] || drive celery latency "$LN" | tee -a "$results"
c2=$(cpu_ms "$celery_pid")
echo "{\"side\": \"celery\", \"mode\": \"cpu\", \"throughput_ms\": $((c1 - c0)), \"latency_ms\": $((c2 - c1))}" >> "$results"
celery_peak=$(tree_kib "$celery_pid" VmHWM)
celery_procs=$(( $(pgrep -P "$celery_pid" | wc -l) + 1 ))
kill -TERM "$celery_pid"; wait "$celery_pid" 2>/dev/null || true; celery_pid=""

# --- amqp-consume running /bin/cat per message (it writes the body to the command), on its own queue
if [[ $mode != latency ]]; then
  password=$(cat "$broker/password")
  # (the benchmark broker's throwaway password; amqp-tools takes it only on the command line)
  peer_common=(--url "amqps://fem:$password@localhost:$port" --ssl --cacert "$broker/ca.pem"
               --cert "$broker/operator.pem" --key "$broker/operator.key")
  amqp-consume "${peer_common[@]}" -q bench.peer -e fem.tasks -r node.peer -c "$N" -p 32 /bin/cat > /dev/null 2> "$work/peer.err" &
  peer_pid=$!
  sleep 1
  peer_start=$(date +%s.%N)
  "$bin/femctl" submit "$work/noop.task.json" --node peer --count "$N" > /dev/null
  wait "$peer_pid" || { echo "amqp-consume exited with $?" >&2; exit 1; }
  peer_pid=""
  peer_end=$(date +%s.%N)
  echo "{\"side\": \"amqp-consume\", \"mode\": \"throughput\", \"n\": $N, \"rate\": $(python3 -c "print($N / ($peer_end - $peer_start))")}" | tee -a "$results"
fi

python3 - "$results" "$fem_idle" "$fem_peak" "$fem_after" "$celery_idle" "$celery_peak" "$celery_procs" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
fem_idle, fem_peak, fem_after, c_idle, c_peak, c_procs = (int(x) for x in sys.argv[2:])
r = {(x["side"], x["mode"]): x for x in rows}
print(f"load average (1, 5, 15 min): {open('/proc/loadavg').read().split()[:3]} on {__import__('os').cpu_count()} cores")
if ("fem-client", "throughput") in r:
    f, c, p = r["fem-client", "throughput"], r["celery", "throughput"], r.get(("amqp-consume", "throughput"))
    print(f"throughput, {f['n']} queued tasks")
    print(f"  fem-client (2 slots)       {f['rate']:8.1f} tasks/s")
    print(f"  Celery prefork c=1         {c['rate']:8.1f} tasks/s")
    print(f"  ratio fem-client / Celery  {f['rate'] / c['rate']:8.2f}x   (goal >= 2x)")
    if p:
        print(f"  amqp-consume /bin/cat      {p['rate']:8.1f} msg/s   (fem-client / amqp-consume {f['rate'] / p['rate']:.2f}x)")
if ("fem-client", "latency") in r:
    f, c = r["fem-client", "latency"], r["celery", "latency"]
    print(f"latency, {f['n']} tasks one at a time (publish -> completed event / publish -> result)")
    print(f"  fem-client                 median {f['median_ms']:6.1f} ms, p95 {f['p95_ms']:6.1f} ms")
    print(f"  Celery                     median {c['median_ms']:6.1f} ms, p95 {c['p95_ms']:6.1f} ms")
    print(f"  ratio fem-client / Celery  median {f['median_ms'] / c['median_ms']:6.2f}x, p95 {f['p95_ms'] / c['p95_ms']:.2f}x   (goal <= 0.5x)")
if ("fem-client", "cpu") in r:
    f, c = r["fem-client", "cpu"], r["celery", "cpu"]
    n = r.get(("fem-client", "throughput"), {}).get("n") or 0
    ln = r.get(("fem-client", "latency"), {}).get("n") or 0
    print("CPU time per task (user+sys of the daemon / the Celery worker, with the children they ran; less noisy than rates)")
    if n:
        print(f"  throughput run             fem-client {f['throughput_ms'] / n:5.2f} ms, Celery {c['throughput_ms'] / n:5.2f} ms, ratio {f['throughput_ms'] / max(c['throughput_ms'], 1):.2f}x")
    if ln:
        print(f"  latency run                fem-client {f['latency_ms'] / ln:5.2f} ms, Celery {c['latency_ms'] / ln:5.2f} ms, ratio {f['latency_ms'] / max(c['latency_ms'], 1):.2f}x")
print("memory")
print(f"  fem-client daemon          idle {fem_idle / 1024:.1f} MiB, peak {fem_peak / 1024:.1f} MiB, after the runs {fem_after / 1024:.1f} MiB   (goal <= 20 idle, <= 40 peak)")
print(f"  Celery worker ({c_procs} procs)    idle {c_idle / 1024:.1f} MiB, peak {c_peak / 1024:.1f} MiB (sum of the processes)")
EOF
