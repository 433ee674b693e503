#!/usr/bin/env bash
# Installs what fem-client needs on Debian 12 (with Swift), builds it in release mode, and creates
# config/fem-client.toml from the commented template if it does not exist.
set -euo pipefail
cd "$(dirname "$0")"

bash scripts/install-packages.sh
bash scripts/create-task-user.sh
command -v swift >/dev/null || { echo "install.sh: swift is not on PATH (Swift 6 toolchain required)" >&2; exit 1; }

echo "install.sh: building (release)"
swift build -c release --product fem-client
swift build -c release --product femctl

if [[ ! -f config/fem-client.toml ]]; then
  cp config/fem-client.example.toml config/fem-client.toml
  echo "install.sh: created config/fem-client.toml from config/fem-client.example.toml"
fi
echo "install.sh: done; binaries in $(swift build -c release --show-bin-path)"
