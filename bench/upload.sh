#!/usr/bin/env bash
# Upload benchmark: a 1 GB output delivered by fem-client's stage-out (collect, sha256, HTTP PUT streamed from disk,
# manifest) and by `curl -T` of the same file to the same nginx WebDAV server (basic auth), alternating, side by side
# in one run. Prints both throughputs and the ratio, and the benchmark's peak memory. Starts nginx (scripts/dev-web.sh)
# in .build-bench/web and stops it after.
#
#   bash bench/upload.sh [ROUNDS] [MB]      (default 3 rounds of 1024 MB)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
mb=${2:-1024}
work=$(pwd)/.build-bench/upload
web=$(pwd)/.build-bench/web
mkdir -p "$work"
trap 'bash scripts/dev-web.sh stop --dir "$web" >/dev/null || true; rm -rf "$web/dav"/*' EXIT
bash scripts/dev-web.sh start --dir "$web" >/dev/null
[[ -f "$work/output-$mb.bin" ]] || head -c "$((mb * 1024 * 1024))" /dev/urandom > "$work/output-$mb.bin"
swift build -c release --product fem-bench 2>&1 | tail -1
FEM_BENCH_USER=fem-upload FEM_BENCH_PASSWORD_FILE="$web/password-fem-upload" \
  "$(swift build -c release --show-bin-path)/fem-bench" upload "http://127.0.0.1:18080/dav/bench" "$work/output-$mb.bin" "$rounds"
