#!/usr/bin/env bash
# Creates the unprivileged system user host tasks (launchers `process`, `flower` and `slurm`) run as, if it is
# missing. Idempotent.
#   scripts/create-task-user.sh [--subids] [name]   (default fem-task; see launchers.process.user)
# --subids: also gives the user 65536 subordinate uids and gids (/etc/subuid, /etc/subgid), which rootless podman
# needs to run containers as it (launchers.slurm.container_runtime = "podman"). The range starts after every range
# already in those files (at 100000 at the least), so it overlaps no other user's; a user that has one keeps it.
set -euo pipefail
subids=no
if [[ ${1:-} == --subids ]]; then subids=yes; shift; fi
name=${1:-fem-task}
if ! id -u "$name" >/dev/null 2>&1; then
  if [[ $(id -u) -ne 0 ]]; then
    echo "create-task-user: run as root to create the system user $name (host tasks run as it)" >&2
    exit 1
  fi
  useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$name"
  echo "create-task-user: created the system user $name for host tasks"
fi
[[ $subids == yes ]] || exit 0
has_range() { [[ -f $1 ]] && grep -q "^$name:" "$1"; }
if has_range /etc/subuid && has_range /etc/subgid; then exit 0; fi
if [[ $(id -u) -ne 0 ]]; then
  echo "create-task-user: run as root to give $name subordinate ids in /etc/subuid and /etc/subgid" >&2
  exit 1
fi
command -v newuidmap >/dev/null || { echo "create-task-user: newuidmap is missing (apt-get install uidmap)" >&2; exit 1; }
start=100000
for f in /etc/subuid /etc/subgid; do
  [[ -f $f ]] || continue
  end=$(awk -F: 'NF>=3 && $2 ~ /^[0-9]+$/ && $3 ~ /^[0-9]+$/ { e = $2 + $3; if (e > m) m = e } END { print m + 0 }' "$f")
  (( end > start )) && start=$end
done
last=$((start + 65535))
has_range /etc/subuid || usermod --add-subuids "$start-$last" "$name"
has_range /etc/subgid || usermod --add-subgids "$start-$last" "$name"
echo "create-task-user: gave $name the subordinate uids and gids $start-$last (rootless podman)"
