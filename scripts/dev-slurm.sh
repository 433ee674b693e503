#!/usr/bin/env bash
# A private single-node Slurm 22.05 (Debian's munge, slurmctld, slurmd) for tests and local trials, all under DIR:
#   DIR/slurm.conf, DIR/cgroup.conf   the config (export SLURM_CONF=DIR/slurm.conf for the client commands)
#   DIR/munge/run/munge.sock          a munged of its own, with its own key (the host's /etc/munge is not used)
#   DIR/shared                        the folder jobs' work dirs live in (launchers.slurm.shared_dir)
#   DIR/env                           SLURM_CONF and the node name, for tests and bench/slurm.sh to source
# Ports: two free loopback ports chosen at first start and kept in the config. The node is named after DIR
# (fem<hash>), so its cgroups (/sys/fs/cgroup/<controller>/slurm_<node>) are its own beside other instances.
# Memory is enforced with cgroups (v1 on this host; task/cgroup + proctrack/cgroup, ConstrainRAMSpace): a job over
# its --mem ends OUT_OF_MEMORY. The scheduler runs jobs at once (batch_sched_delay=0), and finished jobs stay
# visible to squeue/scontrol for an hour (MinJobAge; sacct needs slurmdbd, which is not set up).
# Needs root (slurmd runs jobs as their users). Stopped by the PIDs the daemons recorded.
#
#   scripts/dev-slurm.sh start  [--dir DIR]
#   scripts/dev-slurm.sh stop   [--dir DIR]
#   scripts/dev-slurm.sh status [--dir DIR]
set -euo pipefail
cmd=${1:-}; shift || true
source "$(dirname "$0")/lib.sh"
parse_dir dev-slurm.sh var/dev-slurm "$@"
node="fem$(printf '%s' "$dir" | cksum | cut -c1-8)"
export SLURM_CONF="$dir/slurm.conf"
pidfiles=("$dir/run/slurmd.pid" "$dir/run/slurmctld.pid" "$dir/munge/run/munged.pid")

need() { command -v "$1" >/dev/null || { echo "dev-slurm.sh: $1 is missing (apt-get install $2)" >&2; exit 1; }; }

up() { sinfo -h -n "$node" -o %T 2>/dev/null | grep -Eq '^(idle|mixed|allocated)'; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

write_config() {
  local ctld_port slurmd_port mem
  if [[ -f "$dir/ports" ]]; then read -r ctld_port slurmd_port < "$dir/ports"; else
    ctld_port=$(free_port); slurmd_port=$(free_port)
    while [[ $slurmd_port == "$ctld_port" ]]; do slurmd_port=$(free_port); done
    echo "$ctld_port $slurmd_port" > "$dir/ports"
  fi
  mem=$(( $(free -m | awk '/^Mem:/{print $2}') * 80 / 100 ))
  cat > "$dir/slurm.conf" <<CONF
ClusterName=femtest
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
AuthType=auth/munge
AuthInfo=socket=$dir/munge/run/munge.sock
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=1
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=100
EnforcePartLimits=ALL
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
ReturnToService=2
MinJobAge=3600
NodeName=$node NodeHostname=localhost NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=short Nodes=ALL Default=NO MaxTime=10 State=UP
CONF
  cat > "$dir/cgroup.conf" <<CONF
CgroupPlugin=autodetect
ConstrainRAMSpace=yes
ConstrainCores=yes
CONF
  printf 'export SLURM_CONF=%s\nexport FEM_SLURM_NODE=%s\n' "$dir/slurm.conf" "$node" > "$dir/env"
}

start() {
  need munged munge; need slurmctld slurmctld; need slurmd slurmd; need sbatch slurm-client
  [[ $(id -u) -eq 0 ]] || { echo "dev-slurm.sh: needs root (slurmd runs jobs as their users)" >&2; exit 1; }
  if [[ -f "$dir/run/slurmctld.pid" ]] && kill -0 "$(cat "$dir/run/slurmctld.pid")" 2>/dev/null && up; then
    echo "slurm already running in $dir (node $node)"; return 0
  fi
  stop >/dev/null 2>&1 || true
  mkdir -p "$dir"/munge/{etc,run,log,lib} "$dir"/{state,spool,log,run,shared}
  chmod 700 "$dir/munge/etc" "$dir/munge/lib" "$dir/munge/log"
  # The socket's folder must be searchable by all; jobs of other users reach the shared folder.
  chmod 755 "$dir" "$dir/munge" "$dir/munge/run"; chmod 711 "$dir/shared"
  if [[ ! -f "$dir/munge/etc/munge.key" ]]; then
    dd if=/dev/urandom of="$dir/munge/etc/munge.key" bs=1024 count=1 status=none
    chmod 400 "$dir/munge/etc/munge.key"
  fi
  write_config
  munged -F --key-file="$dir/munge/etc/munge.key" --socket="$dir/munge/run/munge.sock" \
    --pid-file="$dir/munge/run/munged.pid" --log-file="$dir/munge/log/munged.log" \
    --seed-file="$dir/munge/lib/munged.seed" > "$dir/munge/log/munged.out" 2>&1 &
  for _ in $(seq 50); do [[ -S "$dir/munge/run/munge.sock" ]] && break; sleep 0.1; done
  [[ -S "$dir/munge/run/munge.sock" ]] || { echo "dev-slurm.sh: munged did not start" >&2; tail -5 "$dir/munge/log/munged.out" >&2; exit 1; }
  (cd "$dir" && exec slurmctld -D -f "$SLURM_CONF" > "$dir/log/slurmctld.out" 2>&1) &
  (cd "$dir" && exec slurmd -D -N "$node" -f "$SLURM_CONF" > "$dir/log/slurmd.out" 2>&1) &
  for _ in $(seq 150); do up && break; sleep 0.1; done
  up || { echo "dev-slurm.sh: slurm did not come up" >&2; tail -5 "$dir"/log/*.out "$dir"/log/*.log >&2; exit 1; }
  echo "slurm up in $dir: node $node, munged $(cat "$dir/munge/run/munged.pid"), slurmctld $(cat "$dir/run/slurmctld.pid"), slurmd $(cat "$dir/run/slurmd.pid"); export SLURM_CONF=$SLURM_CONF"
}

stop() {
  # Every job of this instance (its own slurmctld: pending, running or ending) is cancelled first, and its end
  # awaited (10 s at most), so that slurmd leaves no job processes behind. (scancel takes only one --state.)
  if [[ -f "$dir/run/slurmctld.pid" ]] && kill -0 "$(cat "$dir/run/slurmctld.pid")" 2>/dev/null; then
    local ids
    ids=$(squeue -h --states=PENDING,CONFIGURING,RUNNING,SUSPENDED,COMPLETING -o %i 2>/dev/null || true)
    if [[ -n $ids ]]; then
      # shellcheck disable=SC2086 # one job id per word
      scancel --full $ids 2>/dev/null || true
      for _ in $(seq 100); do
        [[ -z $(squeue -h --states=PENDING,CONFIGURING,RUNNING,SUSPENDED,COMPLETING -o %i 2>/dev/null) ]] && break
        sleep 0.1
      done
    fi
  fi
  stop_pid slurmd "$dir/run/slurmd.pid"
  stop_pid slurmctld "$dir/run/slurmctld.pid"
  stop_pid munged "$dir/munge/run/munged.pid"
  # The node's (empty) cgroup folders, only this node's.
  for d in $(find /sys/fs/cgroup/*/slurm_"$node" -depth -type d 2>/dev/null); do rmdir "$d" 2>/dev/null || true; done
}

status() {
  local all=0
  for f in "${pidfiles[@]}"; do
    if [[ -f "$f" ]] && kill -0 "$(cat "$f")" 2>/dev/null; then echo "$(basename "$f" .pid) running (pid $(cat "$f"))"
    else echo "$(basename "$f" .pid) not running"; all=1; fi
  done
  if [[ $all -eq 0 ]] && up; then echo "node $node: $(sinfo -h -n "$node" -o %T)"; else return 1; fi
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: dev-slurm.sh start|stop|status [--dir DIR]" >&2; exit 2 ;;
esac
