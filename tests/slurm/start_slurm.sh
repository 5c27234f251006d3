#!/usr/bin/env bash
# Start a single-node SLURM on this machine (munged, slurmctld, slurmd) for tests/test_slurm.py and CI.
#
#   tests/slurm/start_slurm.sh      # idempotent; prints the state folder; PIDs in $A2DPIPE_SLURM_DIR/*.pid
#   tests/slurm/stop_slurm.sh       # stops exactly the daemons this script started
#
# Installs Debian's slurm-wlm when missing (needs root and the package registry). The node offers two job slots per
# CPU of the machine (A2DPIPE_SLURM_CPUS overrides), most of its memory and two fake GPUs (A2DPIPE_SLURM_GPUS
# overrides: a `gpu` GRES whose device files are links to /dev/null, enough for scheduling without cgroups), in two
# partitions, `cpu` (default) and `gpu`, the names the slurm profile uses. Accounting is off, so jobs stay visible
# to squeue for MinJobAge seconds after they end: the profile polls with squeue.
#
# Why more slots than cores: a SLURM job of the tiny test run spends most of its time starting Snakemake twice (the
# batch script's and the srun step's, single-threaded) and waiting for the next status poll (idle); with one slot
# per core and one GPU, a two-core machine ran the tiny DAG one job at a time with a core mostly idle. Jobs still
# ask SLURM for their threads and GPU, so a job asking for more than the node offers still stays PENDING.
set -euo pipefail

STATE=${A2DPIPE_SLURM_DIR:-/tmp/a2dpipe-slurm}
CONF_DIR=/etc/slurm
MARKER="# written by a2dpipe tests/slurm/start_slurm.sh"

if command -v sinfo >/dev/null && timeout 10 sinfo -h >/dev/null 2>&1; then
    echo "start_slurm: a SLURM controller already answers; nothing started"
    exit 0
fi

if [[ $EUID -ne 0 ]]; then
    echo "start_slurm: needs root (installs slurm-wlm, writes $CONF_DIR, runs the daemons)" >&2
    exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    echo "start_slurm: installing slurm-wlm"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

if [[ -e $CONF_DIR/slurm.conf ]] && ! grep -qF "$MARKER" "$CONF_DIR/slurm.conf"; then
    echo "start_slurm: $CONF_DIR/slurm.conf exists and is not ours; refusing to overwrite it" >&2
    exit 1
fi

mkdir -p "$STATE"/{ctld,spool,log} /run/munge "$CONF_DIR"
NODE=$(hostname -s)
CORES=$(getconf _NPROCESSORS_ONLN)  # not nproc: it honours OMP_NUM_THREADS, which test runs set to 1
CPUS=${A2DPIPE_SLURM_CPUS:-$((2 * CORES))}
GPUS=${A2DPIPE_SLURM_GPUS:-2}
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
REAL_MB=$((MEM_MB > 4096 ? MEM_MB - 2048 : MEM_MB / 2))   # leave room for the daemons and the OS

cat >"$CONF_DIR/slurm.conf" <<CONF
$MARKER
ClusterName=a2dpipe-test
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.slurm.pid
SlurmdPidFile=$STATE/slurmd.slurm.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
GresTypes=gpu
# keep finished jobs visible to squeue: without accounting, squeue is how Snakemake learns a job ended
MinJobAge=600
ReturnToService=2
SlurmdParameters=config_overrides
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$REAL_MB Gres=gpu:$GPUS State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE MaxTime=INFINITE State=UP
CONF
for ((i = 0; i < GPUS; i++)); do ln -sfn /dev/null "$STATE/fake-gpu$i"; done
cat >"$CONF_DIR/gres.conf" <<CONF
$MARKER
NodeName=$NODE Name=gpu File=$STATE/fake-gpu[0-$((GPUS - 1))]
CONF

# $! of a background `setsid prog` is prog itself (setsid execs when it is not a group leader), so the PID files hold
# the daemons' own PIDs; stop_slurm.sh signals exactly those.
start() {
    local name=$1
    shift
    if [[ -f $STATE/$name.pid ]] && kill -0 "$(cat "$STATE/$name.pid")" 2>/dev/null; then
        return
    fi
    setsid "$@" >"$STATE/log/$name.out" 2>&1 </dev/null &
    echo $! >"$STATE/$name.pid"
}

if [[ ! -S /run/munge/munge.socket.2 ]] || ! munge -n </dev/null >/dev/null 2>&1; then
    [[ -s /etc/munge/munge.key ]] || { mungekey --create --force 2>/dev/null || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; }
    chown -R munge:munge /etc/munge /run/munge
    chmod 700 /etc/munge
    chmod 600 /etc/munge/munge.key
    start munged setpriv --reuid=munge --regid=munge --init-groups munged --foreground
    for _ in $(seq 50); do munge -n </dev/null >/dev/null 2>&1 && break; sleep 0.2; done
fi
start slurmctld slurmctld -D -i
for _ in $(seq 50); do scontrol ping >/dev/null 2>&1 && break; sleep 0.2; done
start slurmd slurmd -D

for _ in $(seq 100); do
    if sinfo -h -N -o "%t" 2>/dev/null | grep -qE "^(idle|mix|alloc)"; then
        echo "start_slurm: node $NODE up ($CPUS CPUs on $CORES cores, ${REAL_MB} MB, $GPUS gpu); state in $STATE"
        sinfo
        exit 0
    fi
    sleep 0.2
done
echo "start_slurm: the node did not come up; logs in $STATE/log" >&2
sinfo -N -l >&2 || true
tail -n 20 "$STATE"/log/*.log >&2 || true
exit 1
