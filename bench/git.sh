#!/usr/bin/env bash
# Git stage-in benchmark: makes a repository of about 50 MB (incompressible files over a few commits), then clones
# it through fem-client's git stage-in (libgit2: clone into a fresh cache, check out into a fresh sandbox) and with
# `git clone` of the same file:// URL, alternating, side by side in one run. Prints both medians and the ratio,
# and the time of a cached update (fetch with nothing new, checkout into a new sandbox).
#
#   bash bench/git.sh [ROUNDS]      (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
work=$(pwd)/.build-bench/git
repo=$work/repo-50mb
if [[ ! -d "$repo/.git" ]]; then
  rm -rf "$repo"; mkdir -p "$repo"
  git -C "$repo" init -q -b main
  for c in 1 2 3 4 5; do
    mkdir -p "$repo/data/$c"
    for f in $(seq 1 40); do head -c 256000 /dev/urandom > "$repo/data/$c/blob-$f.bin"; done
    git -C "$repo" add -A
    git -C "$repo" -c user.name=bench -c user.email=bench@example.org commit -qm "commit $c"
  done
fi
echo "repository: $(du -sh "$repo/.git" | cut -f1) in .git, $(git -C "$repo" rev-list --count HEAD) commits"
swift build -c release --product fem-bench 2>&1 | tail -1
"$(swift build -c release --show-bin-path)/fem-bench" git "file://$repo" "$rounds"
