#!/usr/bin/env bash
# Installs what fem-client needs on Debian 12 (with Swift), builds it in release mode, and creates
# config/fem-client.toml from the commented template if it does not exist.
#   bash install.sh             # packages, task user, release build, config
#   bash install.sh --service   # the same, then the systemd unit (config/fem-client.service) for this checkout
#   bash install.sh --prefix DIR  # where completions and man pages go (default /usr/local as root, else ~/.local)
set -euo pipefail
cd "$(dirname "$0")"
service=false
prefix=""
while (( $# )); do
  case $1 in
    --service) service=true; shift ;;
    --prefix) prefix=${2:?install.sh: --prefix needs a folder}; shift 2 ;;
    --prefix=*) prefix=${1#--prefix=}; shift ;;
    *) echo "install.sh: unknown argument $1 (--service, --prefix DIR)" >&2; exit 64 ;;
  esac
done

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
# Shell completions (bash, zsh, fish) and the manual pages fem-client(1), femctl(1), made from the binaries.
bash scripts/install-shell-docs.sh --bin "$(swift build -c release --show-bin-path)" ${prefix:+--prefix "$prefix"}
echo "install.sh: done; binaries in $(swift build -c release --show-bin-path)"

if $service; then
  unit=${FEM_SYSTEMD_DIR:-/etc/systemd/system}/fem-client.service
  if [[ ! -w $(dirname "$unit") ]]; then
    echo "install.sh: cannot write $(dirname "$unit"): run install.sh --service as root" >&2; exit 1
  fi
  bash scripts/service-unit.sh --bin "$(swift build -c release --show-bin-path)/fem-client" \
    --config "$(pwd)/config/fem-client.toml" --dir "$(pwd)" > "$unit.part"
  mv "$unit.part" "$unit"
  echo "install.sh: wrote the systemd unit $unit (daemon from this checkout, config $(pwd)/config/fem-client.toml)"
  if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
    systemctl daemon-reload
    echo "install.sh: ran systemctl daemon-reload"
  else
    echo "install.sh: systemd is not running here (a container?): run 'systemctl daemon-reload' where it runs"
  fi
  echo "install.sh: start it now and at every boot with: systemctl enable --now fem-client"
  echo "            (stop start.sh's daemon first: bash stop.sh --keep-broker; the two must not run at once)"
  echo "            reload the config: systemctl reload fem-client; see it: fem-client status; docs/operations.md"
fi
