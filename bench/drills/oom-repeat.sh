#!/usr/bin/env bash
# Runs the two OOM tests (the engine-level one and the docker launcher's, through a real daemon) N times in a row
# while two busy loops load the CPUs, and prints PASS/FAIL with the counts. Expects the services test.sh starts
# (FEM_TEST_* variables), or starts them itself when FEM_TEST_BROKER_DIR is unset.
#   bash bench/drills/oom-repeat.sh [N=50]
set -uo pipefail
cd "$(dirname "$0")/../.."
n=${1:-50}
busy=(); own=""
cleanup() {
  ((${#busy[@]})) && kill "${busy[@]}" 2>/dev/null
  if [[ -n $own ]]; then
    bash scripts/dev-docker.sh stop --dir "$own/docker" >/dev/null
    bash scripts/dev-broker.sh stop --dir "$own/broker" >/dev/null
  fi
}
trap cleanup EXIT INT TERM
if [[ -z "${FEM_TEST_BROKER_DIR:-}" ]]; then
  services=$(pwd)/.build-test/drill-services
  mkdir -p "$services"
  own=$services
  bash scripts/dev-broker.sh start --dir "$services/broker" --port 5697 --name fem-drill >/dev/null || exit 1
  bash scripts/dev-docker.sh start --dir "$services/docker" >/dev/null || exit 1
  export FEM_TEST_BROKER_DIR="$services/broker" FEM_TEST_BROKER_PORT=5697 FEM_TEST_SCRATCH="$services"
fi
swift build --build-tests >/dev/null || { echo "FAIL: build"; exit 1; }
bin=$(swift build --show-bin-path)
for _ in 1 2; do ( while :; do :; done ) & busy+=($!); done
pass=0; fail=0
for i in $(seq "$n"); do
  if FEM_TEST_BIN_DIR="$bin" swift test --skip-build \
       --filter 'aMemoryLimitKillIsCountedByTheTaskCgroupThatOutlivesTheContainer|aMemoryLimitKillIsReportedAsOutOfMemory' \
       > "/tmp/oom-repeat-$i.log" 2>&1 && grep -q "Test run with 2 tests" "/tmp/oom-repeat-$i.log"; then
    pass=$((pass + 1)); rm -f "/tmp/oom-repeat-$i.log"
  else
    fail=$((fail + 1)); echo "run $i failed: /tmp/oom-repeat-$i.log"
  fi
done
echo "$pass passed, $fail failed"
[[ $fail -eq 0 ]] && echo "PASS: $pass/$n OOM runs under two busy loops" || echo "FAIL: $fail/$n OOM runs failed"
[[ $fail -eq 0 ]]
