#!/usr/bin/env bash
# Stop the daemons tests/slurm/start_slurm.sh started, by the PIDs it recorded (nothing else is touched).
set -uo pipefail

STATE=${A2DPIPE_SLURM_DIR:-/tmp/a2dpipe-slurm}
for name in slurmd slurmctld munged; do
    pidfile=$STATE/$name.pid
    [[ -f $pidfile ]] || continue
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        echo "stop_slurm: stopped $name (pid $pid)"
    fi
    rm -f "$pidfile"
done
