#!/usr/bin/env bash
# A real Slurm cluster on this machine, for tests and for trying the SLURM path without a cluster.
#
#   slurm/local-cluster.sh start [NODES]   # idempotent; NODES > 1 simulates that many nodes (default 1)
#   slurm/local-cluster.sh status          # exit 0 when the controller answers and nodes are idle/allocated
#   slurm/local-cluster.sh stop            # stops every daemon it started and removes their state
#
# Debian's packages (Slurm 22.05) run as root without systemd. Installs them when missing
# (apt-get, needs root). Environment: DISTILL_SLURM_NODES (default NODES), DISTILL_SLURM_STATE
# (default /var/lib/distill-slurm), DISTILL_SLURM_LOGS (default /var/log/distill-slurm).
#
# Why each non-default setting (measured on Debian 12 / Slurm 22.05):
#   NodeAddr=127.0.0.1               the host name may not resolve inside containers
#   ProctrackType=proctrack/linuxproc, TaskPlugin=task/none
#                                    no cgroup v1/v2 delegation without systemd
#   SelectType=select/cons_tres + DefMemPerCPU
#                                    without a default memory per CPU a job takes the whole node's
#                                    memory and jobs never run side by side
#   AuthInfo=cred_expire=10          a requeued job otherwise waits about 2 minutes for its old
#                                    credential to expire before it may start again
#   MailProg=/bin/true               no mailer installed
#   accounting_storage/none          no slurmdbd/MariaDB: sacct cannot report job states; submitit
#                                    then judges completion by its result pickle (see slurm/README.md)
set -euo pipefail

STATE=${DISTILL_SLURM_STATE:-/var/lib/distill-slurm}
LOGS=${DISTILL_SLURM_LOGS:-/var/log/distill-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by distill slurm/local-cluster.sh"
PACKAGES=(slurmctld slurmd slurm-client munge)
HOST=$(hostname -s)
FIRST_PORT=17001 # slurmd ports when simulating several nodes

say() { echo "local-cluster: $*" >&2; }
die() { say "error: $*"; exit 1; }

install_packages() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    command -v munged >/dev/null || missing+=(munge)
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || die "Slurm is not installed and installing it needs root: apt-get install ${PACKAGES[*]}"
    say "installing ${PACKAGES[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
}

node_names() { # the NodeName list of a cluster of $1 nodes
    if [ "$1" -eq 1 ]; then echo "$HOST"; else seq -f "n%g" 1 "$1" | paste -sd, -; fi
}

write_conf() { # $1 = number of nodes; writes $CONF.new
    local nodes=$1 cpus mem_mb
    cpus=$(nproc)
    # leave the OS a quarter of the memory; each simulated node gets an equal share of the rest
    mem_mb=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) * 3 / 4 / nodes ))
    if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        die "$CONF exists and was not written by this script; refusing to overwrite it"
    fi
    mkdir -p /etc/slurm
    {
        echo "$MARK (nodes=$nodes)"
        cat <<EOF
ClusterName=distill-local
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$(( mem_mb / cpus ))
ReturnToService=2
JobRequeue=1
MailProg=/bin/true
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# finished jobs stay visible to squeue/scontrol for 10 minutes (there is no accounting database)
MinJobAge=600
KillWait=30
InactiveLimit=0
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd-%n
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd-%n.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd-%n.log
SlurmctldPort=6817
SlurmdPort=6818
EOF
        if [ "$nodes" -eq 1 ]; then
            echo "NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN"
        else
            # several slurmd on one host: each its own NodeName and port (slurmd -N <name>)
            for i in $(seq 1 "$nodes"); do
                echo "NodeName=n$i NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$((FIRST_PORT + i - 1)) CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN"
            done
        fi
        echo "PartitionName=debug Nodes=$(node_names "$nodes") Default=YES MaxTime=INFINITE State=UP"
    } >"$CONF.new"
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_munge() {
    alive /run/munge/munged.pid && return 0
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    if [ ! -s /etc/munge/munge.key ]; then
        mungekey --create --keyfile=/etc/munge/munge.key
        chown munge:munge /etc/munge/munge.key
        chmod 600 /etc/munge/munge.key
    fi
    runuser -u munge -- /usr/sbin/munged  # munged refuses to run as root
    mkdir -p "$STATE" && touch "$STATE/munged.ours"  # stop ends only a munged that start started
}

start_daemons() { # $1 = number of nodes
    mkdir -p "$STATE/ctld" "$LOGS"
    alive "$STATE/slurmctld.pid" || slurmctld
    local name
    for name in $(node_names "$1" | tr , ' '); do
        mkdir -p "$STATE/slurmd-$name"  # slurmd does not create its spool dir itself
        alive "$STATE/slurmd-$name.pid" && continue
        if [ "$1" -eq 1 ]; then slurmd; else slurmd -N "$name"; fi
    done
}

wait_idle() { # until every node is usable; slurmd registers a few seconds after it starts
    local i
    for i in $(seq 1 60); do
        if scontrol ping >/dev/null 2>&1 && [ -n "$(sinfo -h -o %T 2>/dev/null)" ] \
            && ! sinfo -h -o %T | grep -qvE '^(idle|mixed|allocated|completing)$'; then
            return 0
        fi
        sleep 1
    done
    sinfo >&2 || true
    die "the cluster did not come up; logs in $LOGS"
}

cmd_start() {
    local nodes=${1:-${DISTILL_SLURM_NODES:-1}}
    install_packages
    write_conf "$nodes"
    if cmp -s "$CONF.new" "$CONF"; then
        rm -f "$CONF.new"
    else
        cmd_stop quiet  # another configuration (or none) was running: start over with this one
        mv "$CONF.new" "$CONF"
    fi
    start_munge
    start_daemons "$nodes"
    wait_idle
    say "up: $(sinfo -h -o '%P %D nodes %T' | paste -sd' ' -)"
}

stop_pidfile() {
    local pidfile=$1 pid i
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    if kill "$pid" 2>/dev/null; then
        for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

cmd_stop() {
    local f
    if [ -f "$CONF" ] && command -v scancel >/dev/null && scontrol ping >/dev/null 2>&1; then
        scancel --user=root --full 2>/dev/null || true  # jobs die with the cluster
    fi
    for f in "$STATE"/slurmd-*.pid; do [ -e "$f" ] && stop_pidfile "$f"; done
    stop_pidfile "$STATE/slurmctld.pid"
    [ -f "$STATE/munged.ours" ] && stop_pidfile /run/munge/munged.pid
    rm -rf "$STATE"  # job state, spool dirs: the next start is a fresh cluster
    [ "${1:-}" = quiet ] || say "stopped"
}

cmd_status() {
    if ! command -v scontrol >/dev/null; then say "Slurm is not installed"; return 3; fi
    if ! scontrol ping >/dev/null 2>&1; then say "not running"; return 1; fi
    sinfo
    squeue
}

case "${1:-}" in
    start) shift; cmd_start "$@" ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 start [NODES] | stop | status" >&2; exit 2 ;;
esac
