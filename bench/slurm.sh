#!/usr/bin/env bash
# Slurm benchmark: submit → completed of a trivial task (/bin/true as fem-task) through fem-client's slurm launcher,
# next to `sbatch --wait` of the same job script with the same options, and to sbatch + `scontrol show job` polled
# every 100 ms, alternating, in one run. Prints the medians and the ratios (goal: launcher ≤ 1.2 × sbatch --wait).
# Uses the Slurm in DIR (scripts/dev-slurm.sh; started here, and stopped after, if it is not running). Needs root.
#
#   bash bench/slurm.sh [ROUNDS] [--dir DIR]      (default 10 rounds, DIR .build-bench/slurm)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=10; dir=$(pwd)/.build-bench/slurm
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir) dir=$2; shift 2 ;;
    *) rounds=$1; shift ;;
  esac
done
bash scripts/create-task-user.sh >/dev/null
started=
if ! bash scripts/dev-slurm.sh status --dir "$dir" >/dev/null 2>&1; then
  bash scripts/dev-slurm.sh start --dir "$dir" >/dev/null
  started=1
fi
trap '[[ -n $started ]] && bash scripts/dev-slurm.sh stop --dir "$dir" >/dev/null || true' EXIT
dir=$(cd "$dir" && pwd)
swift build -c release --product fem-bench 2>&1 | tail -1
"$(swift build -c release --show-bin-path)/fem-bench" slurm "$dir" "$rounds"
