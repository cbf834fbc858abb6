#!/usr/bin/env bash
# A single-node Slurm "cluster" on this machine, for trying and testing the
# batch scripts in slurm/ with a real sbatch: munged, slurmctld and slurmd,
# all on localhost, from Debian's packages.
#
#   sudo apt-get install -y slurm-wlm munge     # once
#   sudo scripts/local_slurm.sh start           # idempotent: healthy -> does nothing
#   sbatch --wait slurm/train.sbatch            # ... use it ...
#   sudo scripts/local_slurm.sh status          # exit 0 when ready for jobs
#   sudo scripts/local_slurm.sh stop            # stops the daemons it started, removes its files
#
# Needs root (the daemons switch users and slurmd launches jobs).  Works
# without systemd or cgroups (containers, CI): daemons are started directly,
# processes are tracked through /proc.  The node gets the CPUs this process
# may run on (its affinity mask, whatever OMP_NUM_THREADS says) and the
# machine's memory, so a job asking for more CPUs than there are cores
# stays pending, as on a real cluster.
#
# Everything Slurm writes lives in one folder: slurm.conf, logs (log/),
# state and spool.  It is $MPITRAIN_SLURM_DIR if set, else the folder of
# the cluster that /etc/slurm/slurm.conf links to (one started earlier),
# else /run/mpitrain-slurm.  Root runs the daemons from it, so it must be a
# real folder (not a link) owned by root that no one else may write: a
# predictable name in a world-writable place such as /tmp could be created
# first by another user, who would then write root's slurm.conf.  A folder
# that fails the test is refused, never used; a new one is created with
# mkdir (which fails if it appeared meanwhile), mode 755 so that users can
# read slurm.conf and `status` works for them; state, spool and logs are
# 700.  The client commands (sbatch, srun, sinfo) read
# /etc/slurm/slurm.conf, so that path becomes a symbolic link to our
# slurm.conf -- unless a slurm.conf of someone else is already there, which
# is never touched: then run `export SLURM_CONF=<folder>/slurm.conf` before
# using Slurm (`status` prints the path).
#
# munge: an already working munged (`munge -n | unmunge` succeeds) is used as
# it is; otherwise a key is created if /etc/munge/munge.key is missing and
# munged is started as the munge user, and `stop` stops it again.

set -euo pipefail
# The daemons live in sbin, which a user's PATH often lacks.
PATH=$PATH:/usr/sbin:/sbin

SYSTEM_CONF=/etc/slurm/slurm.conf
# Seconds to wait for the node to accept jobs before giving up.
START_TIMEOUT=${MPITRAIN_SLURM_START_TIMEOUT:-30}
# First line of every slurm.conf we write: how we recognise our own file.
MARKER="# written by mpitrain scripts/local_slurm.sh"
NODE=$(hostname -s)

log() { printf 'local_slurm: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Whether $1 is a real folder owned by root that only root may write.
root_only_dir() {
    local mode
    [[ -d $1 && ! -L $1 ]] || return 1
    [[ $(stat -c %u "$1") == 0 ]] || return 1
    mode=$(stat -c %a "$1")
    (((8#$mode & 8#022) == 0))
}

# The folder of the cluster that /etc/slurm/slurm.conf links to, if we wrote
# it there and that folder is root's alone.
linked_state() {
    local target dir
    [[ -L $SYSTEM_CONF ]] || return 1
    target=$(readlink "$SYSTEM_CONF")
    dir=$(dirname "$target")
    [[ $target == /* && $(basename "$target") == slurm.conf ]] || return 1
    root_only_dir "$dir" || return 1
    [[ $(head -c ${#MARKER} "$target" 2>/dev/null) == "$MARKER" ]] || return 1
    echo "$dir"
}

if [[ -n ${MPITRAIN_SLURM_DIR:-} ]]; then
    STATE=$MPITRAIN_SLURM_DIR
elif ! STATE=$(linked_state); then
    STATE=/run/mpitrain-slurm
fi
CONF=$STATE/slurm.conf

# Create the folder, or check that an existing one is root's alone (see above).
prepare_state() {
    if [[ -e $STATE || -L $STATE ]]; then
        root_only_dir "$STATE" ||
            die "$STATE must be a folder owned by root that no one else may write" \
                "(it is: $(stat -c '%F, owner %U, mode %a' "$STATE")); remove it or set MPITRAIN_SLURM_DIR"
    else
        mkdir -p "$(dirname "$STATE")"
        mkdir -m 755 "$STATE"
    fi
    install -d -m 700 "$STATE"/state "$STATE"/spool "$STATE"/log
    install -d -m 755 "$STATE"/run
}

usage() {
    sed -n '2,/^$/s/^# \{0,1\}//p' "$0" >&2
    exit 2
}

# ---------------------------------------------------------------------------
# Checks

need_tools() {
    local missing=()
    for tool in munged munge unmunge slurmctld slurmd sinfo scontrol sbatch srun; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    if ((${#missing[@]})); then
        die "missing ${missing[*]}: install them with 'apt-get install -y slurm-wlm munge'"
    fi
}

need_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (munged, slurmctld and slurmd are system daemons)"
}

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

# Whether a process runs (through /proc, not kill -0: status also works for
# users who may not signal root's daemons; a zombie does not count).
running() {
    local state
    state=$(awk '/^State:/ { print $2 }' "/proc/$1/status" 2>/dev/null) || return 1
    [[ -n $state && $state != Z && $state != X ]]
}

# The pid in a pid file, if that process runs.
alive_pid() {
    local pid
    [[ -s $1 ]] || return 1
    pid=$(<"$1")
    [[ $pid =~ ^[0-9]+$ ]] && running "$pid" && echo "$pid"
}

node_state() {
    SLURM_CONF=$CONF sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n 1
}

# Ready: the controller answers and our node can take jobs.
healthy() {
    [[ -f $CONF ]] && munge_works || return 1
    alive_pid "$STATE/run/slurmctld.pid" >/dev/null && alive_pid "$STATE/run/slurmd.pid" >/dev/null || return 1
    SLURM_CONF=$CONF scontrol ping 2>/dev/null | grep -q 'is UP' || return 1
    case $(node_state) in
        idle | mixed | allocated | completing) return 0 ;;
        *) return 1 ;;
    esac
}

# ---------------------------------------------------------------------------
# Configuration

render_conf() {
    local cpus memory_mb first_job_id
    # The CPUs this process may use (sched_getaffinity); plain nproc would
    # answer 1 under OMP_NUM_THREADS=1, as CI and test runners often set.
    cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
    first_job_id=$(cat "$STATE/first_job_id" 2>/dev/null || echo 1)
    # MemTotal in kB; leave 5% to the system so slurmd never finds "too little memory".
    memory_mb=$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 * 0.95 }' /proc/meminfo)
    cat <<EOF
$MARKER -- regenerated on every start; edit the script, not this file.
ClusterName=mpitrain-local
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge

StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info

# No systemd or cgroups here: track processes through /proc, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# srun --mpi=pmi2 is what the MPICH wheels from PyPI speak.
MpiDefault=pmi2
SwitchType=switch/none

# Hand out single CPUs, so 2 tasks x 1 CPU share a 2-core node.
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill

# A small, fast test cluster: a node that was down comes back by itself;
# dead daemons and killed tasks are noticed within seconds, not minutes.
ReturnToService=2
SlurmdTimeout=30
SlurmctldTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=300
MaxArraySize=1001
# Job ids never repeat across restarts: MPICH names the shared memory of a
# job step after its id, and a rank that was killed leaves that segment in
# /dev/shm, where a new step with the same id would find it and fail in MPI_Init.
FirstJobId=$first_job_id

NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory_mb State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

# Whether slurm.conf would change (the machine's CPUs or memory changed).
conf_outdated() {
    [[ ! -f $CONF ]] || ! cmp -s <(render_conf) "$CONF"
}

write_conf() {
    local tmp
    tmp=$(mktemp "$STATE/slurm.conf.XXXXXX")
    render_conf >"$tmp"
    chmod 644 "$tmp"
    mv -f "$tmp" "$CONF"
}

link_system_conf() {
    if [[ -L $SYSTEM_CONF && $(readlink "$SYSTEM_CONF") == "$CONF" ]]; then
        return
    fi
    if [[ -e $SYSTEM_CONF || -L $SYSTEM_CONF ]]; then
        log "$SYSTEM_CONF belongs to another Slurm set-up and is left alone:"
        log "  export SLURM_CONF=$CONF   # before sbatch, srun, sinfo"
        return
    fi
    mkdir -p "$(dirname "$SYSTEM_CONF")"
    ln -s "$CONF" "$SYSTEM_CONF"
}

# ---------------------------------------------------------------------------
# Daemons

start_munge() {
    if munge_works; then
        return
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating /etc/munge/munge.key"
        mkdir -p /etc/munge
        if command -v mungekey >/dev/null 2>&1; then
            mungekey --create --keyfile=/etc/munge/munge.key
        else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
        fi
    fi
    chown munge:munge /etc/munge /etc/munge/munge.key
    chmod 700 /etc/munge
    chmod 400 /etc/munge/munge.key
    install -d -o munge -g munge -m 755 /run/munge
    install -d -o munge -g munge -m 700 /var/lib/munge /var/log/munge
    # munged refuses to run as root; it forks and returns once it listens.
    runuser -u munge -- munged
    touch "$STATE/run/munged.ours"
    local i
    for i in $(seq 50); do
        munge_works && return
        sleep 0.1
    done
    die "munged does not answer; see /var/log/munge/munged.log"
}

stop_pid_file() { # stop_pid_file FILE NAME
    local pid i
    pid=$(alive_pid "$1") || { rm -f "$1"; return 0; }
    log "stopping $2 (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for i in $(seq 50); do
        running "$pid" || break
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$1"
}

start_daemons() {
    if ! alive_pid "$STATE/run/slurmctld.pid" >/dev/null; then
        log "starting slurmctld"
        # Keeps the state of an earlier run of this cluster (not stopped with
        # `stop`), so job ids go on where they were; -i: unreadable state is no error.
        slurmctld -f "$CONF" -i
    fi
    if ! alive_pid "$STATE/run/slurmd.pid" >/dev/null; then
        log "starting slurmd on $NODE"
        slurmd -f "$CONF"
    fi
}

wait_until_ready() {
    local deadline=$((SECONDS + START_TIMEOUT)) state
    while ((SECONDS < deadline)); do
        state=$(node_state)
        case $state in
            idle | mixed | allocated | completing)
                healthy && return 0 ;;
            drain* | down*)
                # Left over from an earlier run (e.g. the daemons were killed).
                SLURM_CONF=$CONF scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
        esac
        sleep 0.3
    done
    log "the node is not ready after ${START_TIMEOUT}s (state: ${state:-unknown}); last log lines:"
    tail -n 5 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 2>/dev/null || true
    return 1
}

# ---------------------------------------------------------------------------
# Commands

cmd_start() {
    need_tools
    if healthy && ! conf_outdated; then
        log "already running: $(SLURM_CONF=$CONF sinfo -h -o '%P %D node(s) %c CPUs %T' | head -n 1)"
        return 0
    fi
    need_root
    if healthy; then
        log "the machine changed (CPUs or memory): restarting with a new slurm.conf"
        stop_slurm
    fi
    prepare_state
    if [[ ! -s $STATE/first_job_id ]]; then
        # A fresh cluster: start numbering somewhere no earlier one did (likely).
        echo $((1000 + (RANDOM << 15 | RANDOM) % 50000000)) >"$STATE/first_job_id"
    fi
    write_conf
    link_system_conf
    start_munge
    start_daemons
    wait_until_ready || die "Slurm did not start; logs in $STATE/log"
    log "ready: $(SLURM_CONF=$CONF sinfo -h -o '%P %D node(s) %c CPUs %T' | head -n 1)"
}

# Cancel every job (this is a private test cluster), then stop both daemons.
stop_slurm() {
    local i
    if alive_pid "$STATE/run/slurmctld.pid" >/dev/null; then
        SLURM_CONF=$CONF squeue -h -o %i 2>/dev/null | xargs -r env SLURM_CONF="$CONF" scancel >/dev/null 2>&1 || true
        for i in $(seq 100); do
            [[ -z $(SLURM_CONF=$CONF squeue -h -o %i 2>/dev/null) ]] && break
            sleep 0.1
        done
    fi
    stop_pid_file "$STATE/run/slurmd.pid" slurmd
    stop_pid_file "$STATE/run/slurmctld.pid" slurmctld
}

cmd_stop() {
    need_root
    stop_slurm
    if [[ -e $STATE/run/munged.ours ]]; then
        log "stopping munged"
        munged --stop >/dev/null 2>&1 || true
    fi
    if [[ -L $SYSTEM_CONF && $(readlink "$SYSTEM_CONF") == "$CONF" ]]; then
        rm -f "$SYSTEM_CONF"
    fi
    rm -rf "$STATE"
    log "stopped"
}

cmd_status() {
    if healthy; then
        echo "running: config $CONF"
        SLURM_CONF=$CONF sinfo
        return 0
    fi
    echo "not running (or not ready): 'scripts/local_slurm.sh start' starts it"
    return 1
}

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    restart) cmd_stop; cmd_start ;;
    *) usage ;;
esac
