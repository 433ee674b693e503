#!/usr/bin/env bash
# Installs the Debian packages fem-client needs (to build, and to run the local TLS broker), if any are missing.
# Used by install.sh and test.sh; extra package names on the command line are added (test.sh's test-only needs).
set -euo pipefail
packages=(pkg-config openssl curl librabbitmq-dev libcurl4-openssl-dev libgit2-dev libsqlite3-dev libssl-dev python3 python3-venv rabbitmq-server amqp-tools
          docker.io "$@")
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
((${#missing[@]})) || exit 0
echo "install-packages.sh: installing ${missing[*]}"
if [[ $(id -u) -ne 0 ]]; then sudo=sudo; else sudo=; fi
$sudo apt-get update -qq
# rabbitmq-server's package would start a system broker; RUNLEVEL=1 keeps it from doing so: we run our own.
DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
