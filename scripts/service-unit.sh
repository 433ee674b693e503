#!/usr/bin/env bash
# Prints config/fem-client.service with the paths of this checkout: the release binary, the config file, the checkout
# as working and writable directory, and TimeoutStopSec from the config's node.drain_seconds + node.stop_grace + 20.
#   scripts/service-unit.sh [--bin PATH] [--config FILE] [--dir DIR]
# install.sh --service writes its output to /etc/systemd/system/fem-client.service.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/.build/release/fem-client config=$root/config/fem-client.toml dir=$root
while (($#)); do
  case $1 in
    --bin) bin=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    *) echo "service-unit.sh: unknown argument $1" >&2; exit 64 ;;
  esac
done
[[ $config == /* ]] || config=$(pwd)/$config
key() { [[ -f $config ]] && sed -n "s/^$1 *= *\([0-9][0-9]*\).*/\1/p" "$config" | head -1 || true; }
drain=$(key drain_seconds); grace=$(key stop_grace)
stop=$(( ${drain:-30} + ${grace:-10} + 20 ))
sed -e "s|^ExecStart=.*|ExecStart=$bin daemon --config $config|" \
    -e "s|^WorkingDirectory=.*|WorkingDirectory=$dir|" \
    -e "s|^ReadWritePaths=.*|ReadWritePaths=$dir|" \
    -e "/^StateDirectory/d" -e "/^LogsDirectory=/d" \
    -e "s|^TimeoutStopSec=.*|TimeoutStopSec=$stop|" \
    -e "s|^Documentation=.*|Documentation=file://$root/docs/operations.md|" \
    "$root/config/fem-client.service"
