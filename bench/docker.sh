#!/usr/bin/env bash
# Docker benchmark: create → start → wait → remove of a trivial container through fem-client's docker launcher,
# and `docker run --rm --network none` of the same container, alternating, side by side in one run.
# Prints both medians and the ratio. Starts dockerd if none answers (and stops it after), and imports the
# busybox test image if missing.
#
#   bash bench/docker.sh [ROUNDS]      (default 30)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-30}
work=$(pwd)/.build-bench/docker
mkdir -p "$work"
trap 'bash scripts/dev-docker.sh stop --dir "$work" >/dev/null || true' EXIT
bash scripts/dev-docker.sh start --dir "$work" >/dev/null
swift build -c release --product fem-bench 2>&1 | tail -1
"$(swift build -c release --show-bin-path)/fem-bench" docker fem-test/busybox:2 "$rounds"
