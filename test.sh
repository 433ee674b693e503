#!/usr/bin/env bash
# The test command (README, CI): installs what the tests need, starts the real services on loopback
# (RabbitMQ with TLS and client certificates, dockerd without a bridge network, podman's Docker API, two image registries, nginx with
# TLS serving git, task files and WebDAV uploads, a git daemon), runs
# `swift test`, and stops what it started.
set -euo pipefail
cd "$(dirname "$0")"

bash scripts/install-packages.sh busybox-static podman uidmap catatonit docker-registry apache2-utils nginx fcgiwrap git munge slurmctld slurmd slurm-client man-db groff-base prometheus debootstrap dpkg-dev chromium chromium-driver
python3 -c "import jsonschema" 2>/dev/null || python3 -m pip install -q jsonschema
# Host-process tests run tasks as the unprivileged fem-task user (CI starts from a fresh machine).
bash scripts/create-task-user.sh --subids

services=$(pwd)/.build-test/services
mkdir -p "$services"
# State of earlier runs: the shared broker's queues (one durable queue per test operator; thousands slow its start)
# and the tests' scratch folders. Service folders holding a running service's PID file are kept.
rm -rf "$services/broker/mnesia"
find "$services" -mindepth 1 -maxdepth 1 -type d ! -name broker ! -name docker ! -name registry ! -name web ! -name slurm ! -name podman ! -name prometheus -exec rm -rf {} +
# Every broker here, the shared one and those tests start for themselves, records its PID under $services;
# on exit each is stopped by that PID.
cleanup() {
  bash scripts/dev-prometheus.sh stop --dir "$services/prometheus" || true
  bash scripts/dev-slurm.sh stop --dir "$services/slurm" || true
  bash scripts/dev-web.sh stop --dir "$services/web" || true
  bash scripts/dev-registry.sh stop --dir "$services/registry" || true
  bash scripts/dev-podman.sh stop --dir "$services/podman" || true
  bash scripts/dev-docker.sh stop --dir "$services/docker" || true
  for pidfile in "$services"/*/broker.pid; do
    [[ -f "$pidfile" ]] && { bash scripts/dev-broker.sh stop --dir "$(dirname "$pidfile")" || true; }
  done
}
trap cleanup EXIT

# The shared test broker. Tests that restart a broker start their own (scripts/dev-broker.sh) and stop it.
bash scripts/dev-broker.sh start --dir "$services/broker" --port 5699 --name fem-test
# dockerd (reused if one already answers; stopped at exit only if started here) and the image fem-test/busybox:2.
bash scripts/dev-docker.sh start --dir "$services/docker"
# podman's Docker-compatible service on its own socket (private storage; the image loaded from dockerd): the docker
# launcher's tests run against both engines.
bash scripts/dev-podman.sh start --dir "$services/podman"
# Registries on 127.0.0.1:5000 (open) and :5001 (htpasswd), with the test images pushed.
bash scripts/dev-registry.sh start --dir "$services/registry"
# nginx (https://localhost:18443 with a private CA, http://127.0.0.1:18080) and git daemon (127.0.0.1:19418).
bash scripts/dev-web.sh start --dir "$services/web"
# A single-node Slurm (munged, slurmctld, slurmd on free loopback ports; memory enforced with cgroups).
bash scripts/dev-slurm.sh start --dir "$services/slurm"
# Prometheus on 127.0.0.1:19090, scraping every second the nodes tests list in its targets/ folder (file_sd).
bash scripts/dev-prometheus.sh start --dir "$services/prometheus" --port 19090

export FEM_TEST_BROKER_DIR="$services/broker"
export FEM_TEST_BROKER_PORT=5699
export FEM_TEST_SCRATCH="$services"
export FEM_TEST_REGISTRY_DIR="$services/registry"
export FEM_TEST_WEB_DIR="$services/web"
export FEM_TEST_SLURM_DIR="$services/slurm"
export FEM_TEST_PODMAN_SOCKET="$services/podman/podman.sock"
export FEM_TEST_PROMETHEUS_DIR="$services/prometheus" FEM_TEST_PROMETHEUS_URL=http://127.0.0.1:19090

# Flower 1.41 for the federation tests: the orchestrator's side (SuperLink, `flwr run`, a legacy server) runs from
# this environment; nodes make their own under FEM_TEST_VENV_DIR. Both are kept between runs (about 45 s to make).
cache=$(pwd)/.build-test/cache
if [[ ! -f "$cache/flwr/.ready" ]]; then
  echo "test.sh: installing flwr 1.41.0 into $cache/flwr (once)"
  rm -rf "$cache/flwr"; mkdir -p "$cache"
  /usr/bin/python3 -m venv "$cache/flwr"
  "$cache/flwr/bin/pip" install -q --disable-pip-version-check flwr==1.41.0 numpy
  touch "$cache/flwr/.ready"
fi
export FEM_TEST_FLWR_VENV="$cache/flwr"
# Selenium for the console's browser tests (ConsoleTests): it drives Debian's chromium through chromium-driver.
if [[ ! -f "$cache/selenium/.ready" ]]; then
  echo "test.sh: installing selenium into $cache/selenium (once)"
  rm -rf "$cache/selenium"; mkdir -p "$cache"
  /usr/bin/python3 -m venv "$cache/selenium"
  "$cache/selenium/bin/pip" install -q --disable-pip-version-check selenium
  touch "$cache/selenium/.ready"
fi
export FEM_TEST_SELENIUM_PYTHON="$cache/selenium/bin/python"
export FEM_TEST_VENV_DIR="$cache/venvs"

swift build --build-tests
# The release build PackageTests packages (scripts/package-deb.sh; .build-release), made here so the test only packages.
bash scripts/package-deb.sh --build-only
export FEM_TEST_BIN_DIR="$(swift build --show-bin-path)"
# The unit suites run on their own first: the integration suites wait synchronously for daemons, brokers and
# containers, and in one process those waits hold the few threads of Swift's cooperative pool that the runner's
# unit tests (with their time bounds) need.
swift test --skip-build --skip IntegrationTests "$@"
swift test --skip-build --filter IntegrationTests "$@"
