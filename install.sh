#!/usr/bin/env bash
# Installs what fem-client needs on Debian 12 (with Swift), builds it in release mode, and creates
# config/fem-client.toml from the commented template if it does not exist.
set -euo pipefail
cd "$(dirname "$0")"

packages=(pkg-config openssl librabbitmq-dev libcurl4-openssl-dev libgit2-dev libsqlite3-dev rabbitmq-server amqp-tools)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install.sh: installing ${missing[*]}"
  if [[ $(id -u) -ne 0 ]]; then sudo=sudo; else sudo=; fi
  $sudo apt-get update -qq
  # rabbitmq-server's package would start a system broker through systemd/init; we run our own.
  DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v swift >/dev/null || { echo "install.sh: swift is not on PATH (Swift 6 toolchain required)" >&2; exit 1; }

echo "install.sh: building (release)"
swift build -c release --product fem-client
swift build -c release --product femctl

if [[ ! -f config/fem-client.toml ]]; then
  cp config/fem-client.example.toml config/fem-client.toml
  echo "install.sh: created config/fem-client.toml from config/fem-client.example.toml"
fi
echo "install.sh: done; binaries in $(swift build -c release --show-bin-path)"
