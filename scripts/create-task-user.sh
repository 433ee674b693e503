#!/usr/bin/env bash
# Creates the unprivileged system user host tasks (launchers `process` and `flower`) run as, if it is missing.
# Idempotent. Usage: scripts/create-task-user.sh [name]   (default fem-task; see launchers.process.user)
set -euo pipefail
name=${1:-fem-task}
if id -u "$name" >/dev/null 2>&1; then
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "create-task-user: run as root to create the system user $name (host tasks run as it)" >&2
  exit 1
fi
useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$name"
echo "create-task-user: created the system user $name for host tasks"
