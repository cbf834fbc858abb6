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
#   sudo scripts/local_slurm.sh start --nodes 2 # a multi-host cluster on this machine (see below)
#   export SLURM_CONF=/run/mpitrain-slurm-nodes/slurm.conf   # printed by start
#   sbatch --nodes=2 --ntasks-per-node=2 slurm/train.sbatch
#   sudo scripts/local_slurm.sh stop --nodes    # removes every namespace, link and daemon it made
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
# --nodes N: N nodes, each its own network namespace (mpitrain-node1 ...)
# with its own hostname (a UTS namespace, as its slurmd sees it) and
# address: veth pairs on one bridge (mpitrain-br0, 10.77.0.0/24 unless
# MPITRAIN_SLURM_SUBNET=a.b.c says otherwise; the controller is a.b.c.1 on
# the bridge, node k is a.b.c.(k+1)).  One slurmctld (on the host side, port
# 6917, so it runs beside the single-node cluster on 6817) and one slurmd per
# node (slurmd -N mpitrain-nodeK, inside `ip netns exec` + `unshare --uts`),
# with their own pid, log and spool files.  Jobs on node k run in its
# namespace, so ranks on different nodes talk over real TCP and ranks on
# one node over shared memory.  /etc/netns/mpitrain-nodeK/hosts (which `ip
# netns exec` and slurmd's node mount on /etc/hosts) names every node by its
# bridge address, never loopback.  Its folder is /run/mpitrain-slurm-nodes
# (or $MPITRAIN_SLURM_DIR); /etc/slurm/slurm.conf is never linked to it:
# export SLURM_CONF as `start` says.  Each node offers max(4, cores) CPUs
# (--cpus C to change): the nodes share this machine's cores, so here a
# node's CPUs are a scheduling count.  `stop --nodes` and `status --nodes`
# act on this cluster; `stop --nodes` removes exactly the namespaces,
# interfaces, /etc/netns folders and daemons it recorded.
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

# Arguments: COMMAND [--nodes [N]] [--cpus C].
COMMAND=${1:-}
(($#)) && shift
NODES=        # empty: the single-node cluster; a number: the multi-host one
NODE_CPUS=
while (($#)); do
    case $1 in
        --nodes)
            NODES=0
            if [[ ${2:-} =~ ^[0-9]+$ ]]; then
                NODES=$2
                shift
            fi ;;
        --nodes=*) NODES=${1#--nodes=} ;;
        --cpus) NODE_CPUS=${2:-}; shift ;;
        --cpus=*) NODE_CPUS=${1#--cpus=} ;;
        *) printf 'local_slurm: unknown argument %s\n' "$1" >&2; exit 2 ;;
    esac
    shift
done
[[ -z $NODES || $NODES =~ ^[0-9]+$ ]] || { echo "local_slurm: --nodes takes a number" >&2; exit 2; }
[[ -z $NODE_CPUS || $NODE_CPUS =~ ^[1-9][0-9]*$ ]] || { echo "local_slurm: --cpus takes a number" >&2; exit 2; }

if [[ -n ${MPITRAIN_SLURM_DIR:-} ]]; then
    STATE=$MPITRAIN_SLURM_DIR
elif [[ -n $NODES ]]; then
    STATE=/run/mpitrain-slurm-nodes
elif ! STATE=$(linked_state); then
    STATE=/run/mpitrain-slurm
fi
CONF=$STATE/slurm.conf
if [[ -n $NODES && $NODES == 0 ]]; then
    # stop/status --nodes: the count the cluster was started with.
    NODES=$(cat "$STATE/nodes" 2>/dev/null || echo 0)
    [[ $NODES =~ ^[0-9]+$ ]] || NODES=0
fi
# Multi-host names and addresses (see the top of this file).
SUBNET=${MPITRAIN_SLURM_SUBNET:-10.77.0}
BRIDGE=mpitrain-br0
NS_PREFIX=mpitrain-node
CTLD_PORT=6917

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
# Start a job (and the next task of an array) as soon as it can run, not
# up to 3 s later: the default delay batches submissions on big clusters.
SchedulerParameters=batch_sched_delay=0

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
        if pidof slurmctld slurmd >/dev/null 2>&1; then
            log "munged left running: another Slurm uses it (start --nodes?)"
        else
            log "stopping munged"
            munged --stop >/dev/null 2>&1 || true
        fi
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

# ---------------------------------------------------------------------------
# The multi-host cluster (--nodes N)

node_name() { echo "$NS_PREFIX$1"; }

# CPUs per node: --cpus, else what the running cluster was started with, else max(4, cores).
multi_cpus() {
    local cores
    if [[ -n $NODE_CPUS ]]; then
        echo "$NODE_CPUS"
    elif [[ -s $STATE/cpus ]]; then
        cat "$STATE/cpus"
    else
        # sched_getaffinity, as mpitrain.utils.threads counts (nproc alone honours OMP_NUM_THREADS).
        cores=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
        echo $((cores > 4 ? cores : 4))
    fi
}

render_multi_conf() {
    local cpus memory_mb first_job_id k names=() name
    cpus=$(multi_cpus)
    first_job_id=$(cat "$STATE/first_job_id" 2>/dev/null || echo 1)
    # The machine's memory shared by the nodes, 5% left to the system.
    memory_mb=$(awk -v n="$NODES" '/^MemTotal:/ { printf "%d", $2 / 1024 * 0.95 / n }' /proc/meminfo)
    cat <<CONF
$MARKER -- regenerated on every start; edit the script, not this file.
# $NODES nodes, each a network namespace on this machine (start --nodes $NODES).
ClusterName=mpitrain-nodes
SlurmctldHost=$(hostname -s)($SUBNET.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=6818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge

StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool/%n
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# The nodes share this machine: take their CPUs and memory from this file.
SlurmdParameters=config_overrides
# MPICH between nodes: libfabric's tcp provider on the node's link (see
# task_prolog.sh and docs/cluster.md for why not UCX here).
TaskProlog=$STATE/task_prolog.sh

ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=pmi2
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0

# A lost node is noticed within seconds and comes back by itself once its
# slurmd runs again.  The controller pings every SlurmdTimeout/3 and marks a
# silent node down after about SlurmdTimeout + 2 x MessageTimeout (measured
# here: 25-30 s at Slurm's 10/10, 14-15 s at 5/5); MessageTimeout is also how
# long srun waits for an unreachable node.  Five seconds are still many for
# a daemon on this machine to answer, even on a busy 2-core one.
ReturnToService=2
SlurmdTimeout=5
MessageTimeout=5
SlurmctldTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=300
MaxArraySize=1001
FirstJobId=$first_job_id

CONF
    for k in $(seq "$NODES"); do
        name=$(node_name "$k")
        names+=("$name")
        echo "NodeName=$name NodeAddr=$SUBNET.$((k + 1)) CPUs=$cpus RealMemory=$memory_mb State=UNKNOWN"
    done
    local IFS=,
    echo "PartitionName=debug Nodes=${names[*]} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO"
}

# Run by slurmstepd before every task (batch scripts too); "export NAME=VALUE"
# lines on its output set the task's environment.  Values a user set win.
write_task_prolog() {
    cat >"$STATE/task_prolog.sh" <<'PROLOG'
#!/bin/sh
# written by mpitrain scripts/local_slurm.sh: ranks on different nodes talk over TCP on eth0.
# MPICH's OFI netmod with libfabric's tcp provider.  Its default, UCX, sees
# one machine under the namespaces and passes messages between "nodes"
# through shared memory (sysv, cma); kept to TCP (UCX_TLS=tcp,self) its
# MPI_Init failed when scipy was imported first.
[ -n "${MPIR_CVAR_CH4_NETMOD:-}" ] || echo "export MPIR_CVAR_CH4_NETMOD=ofi"
[ -n "${FI_PROVIDER:-}" ] || echo "export FI_PROVIDER=tcp"
[ -n "${FI_TCP_IFACE:-}" ] || echo "export FI_TCP_IFACE=eth0"
# If UCX is chosen anyway: TCP on the node's link, never shared memory.
[ -n "${UCX_TLS:-}" ] || echo "export UCX_TLS=tcp,self"
[ -n "${UCX_NET_DEVICES:-}" ] || echo "export UCX_NET_DEVICES=eth0"
PROLOG
    chmod 755 "$STATE/task_prolog.sh"
}

multi_conf_outdated() {
    [[ ! -f $CONF ]] || ! cmp -s <(render_multi_conf) "$CONF"
}

# Remember what we made, so that stop removes exactly that.
made() { echo "$*" >>"$STATE/made"; }

# The hosts file a node sees: every node and the controller by bridge address.
node_hosts() {
    local k
    printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n'
    printf '%s.1\t%s\n' "$SUBNET" "$(hostname -s)"
    for k in $(seq "$NODES"); do
        printf '%s.%d\t%s\n' "$SUBNET" $((k + 1)) "$(node_name "$k")"
    done
}

make_network() {
    local k name veth
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        if ip -o addr show | grep -q " inet $SUBNET\."; then
            die "$SUBNET.0/24 is in use on this machine: set MPITRAIN_SLURM_SUBNET to a free a.b.c"
        fi
        ip link add "$BRIDGE" type bridge
        made bridge "$BRIDGE"
        ip addr add "$SUBNET.1/24" dev "$BRIDGE"
        ip link set "$BRIDGE" up
    fi
    for k in $(seq "$NODES"); do
        name=$(node_name "$k")
        veth=mpitrain-v$k
        if ! ip netns list | grep -q "^$name\b"; then
            ip netns add "$name"
            made netns "$name"
        fi
        if [[ ! -d /etc/netns ]]; then
            mkdir /etc/netns
            made etcnetns /etc/netns
        fi
        if [[ ! -d /etc/netns/$name ]]; then
            mkdir "/etc/netns/$name"
            made netnsdir "/etc/netns/$name"
        fi
        node_hosts >"/etc/netns/$name/hosts"
        if ! ip link show "$veth" >/dev/null 2>&1; then
            ip link add "$veth" type veth peer name "$veth-n"
            made link "$veth"
            ip link set "$veth-n" netns "$name"
            ip -n "$name" link set "$veth-n" name eth0
            ip -n "$name" addr add "$SUBNET.$((k + 1))/24" dev eth0
        fi
        ip link set "$veth" master "$BRIDGE" up
        ip -n "$name" link set lo up
        ip -n "$name" link set eth0 up
    done
}

multi_node_states() {
    SLURM_CONF=$CONF sinfo -h -N -o '%N %T' 2>/dev/null
}

multi_healthy() {
    local k state
    [[ -f $CONF ]] && ((NODES > 0)) && munge_works || return 1
    alive_pid "$STATE/run/slurmctld.pid" >/dev/null || return 1
    for k in $(seq "$NODES"); do
        alive_pid "$STATE/run/slurmd-$(node_name "$k").pid" >/dev/null || return 1
    done
    SLURM_CONF=$CONF scontrol ping 2>/dev/null | grep -q 'is UP' || return 1
    while read -r _ state; do
        case $state in
            idle | mixed | allocated | completing) ;;
            *) return 1 ;;
        esac
    done < <(multi_node_states)
    [[ $(multi_node_states | wc -l) -eq $NODES ]]
}

start_node_slurmd() { # start_node_slurmd NAME
    # Into the node's network namespace, then new UTS and mount namespaces:
    # slurmd and every job it starts see the node's hostname
    # (MPI_Get_processor_name) and its hosts file.  Not `ip netns exec`: it
    # mounts a fresh /sys, without the cgroup mounts slurmd looks for.
    nsenter --net="/run/netns/$1" unshare --uts --mount --propagation private sh -c \
        'mount --bind "/etc/netns/$1/hosts" /etc/hosts && hostname "$1" && exec slurmd -f "$2" -N "$1"' \
        sh "$1" "$CONF"
}

multi_start() {
    local k name state deadline tmp
    need_tools
    for tool in ip unshare nsenter; do
        command -v "$tool" >/dev/null 2>&1 || die "missing $tool (iproute2, util-linux)"
    done
    ((NODES >= 1)) || die "--nodes needs a count, e.g. start --nodes 2"
    if multi_healthy && ! multi_conf_outdated; then
        # Jobs read the prolog when they start: keep it as this script writes it.
        [[ $(id -u) -ne 0 ]] || write_task_prolog
        log "already running: $NODES node(s)"
        multi_ready_message
        return 0
    fi
    need_root
    if [[ -s $STATE/nodes && $(cat "$STATE/nodes") != "$NODES" ]] || { multi_healthy && multi_conf_outdated; }; then
        log "the cluster changed (nodes, CPUs or memory): stopping the old one first"
        local wanted=$NODES cpus=$NODE_CPUS
        NODES=$(cat "$STATE/nodes")
        NODE_CPUS=
        multi_stop
        NODES=$wanted NODE_CPUS=$cpus
    fi
    prepare_state
    if [[ ! -s $STATE/first_job_id ]]; then
        echo $((1000 + (RANDOM << 15 | RANDOM) % 50000000)) >"$STATE/first_job_id"
    fi
    multi_cpus >"$STATE/cpus.new"
    mv -f "$STATE/cpus.new" "$STATE/cpus"
    echo "$NODES" >"$STATE/nodes"
    write_task_prolog
    tmp=$(mktemp "$STATE/slurm.conf.XXXXXX")
    render_multi_conf >"$tmp"
    chmod 644 "$tmp"
    mv -f "$tmp" "$CONF"
    make_network
    start_munge
    if ! alive_pid "$STATE/run/slurmctld.pid" >/dev/null; then
        log "starting slurmctld on $SUBNET.1:$CTLD_PORT"
        slurmctld -f "$CONF" -i
    fi
    for k in $(seq "$NODES"); do
        name=$(node_name "$k")
        install -d -m 700 "$STATE/spool/$name"
        if ! alive_pid "$STATE/run/slurmd-$name.pid" >/dev/null; then
            log "starting slurmd on $name ($SUBNET.$((k + 1)))"
            start_node_slurmd "$name"
        fi
    done
    deadline=$((SECONDS + START_TIMEOUT))
    until multi_healthy; do
        if ((SECONDS >= deadline)); then
            log "not ready after ${START_TIMEOUT}s:"
            multi_node_states >&2 || true
            tail -n 5 "$STATE"/log/*.log >&2 2>/dev/null || true
            die "Slurm did not start; logs in $STATE/log"
        fi
        while read -r name state; do
            case $state in
                drain* | down*)
                    SLURM_CONF=$CONF scontrol update NodeName="$name" State=RESUME >/dev/null 2>&1 || true ;;
            esac
        done < <(multi_node_states)
        sleep 0.3
    done
    log "ready: $NODES node(s)"
    multi_ready_message
}

multi_ready_message() {
    SLURM_CONF=$CONF sinfo -N -o '%N %c %T' >&2 || true
    log "point Slurm's commands at it:"
    echo "export SLURM_CONF=$CONF"
}

multi_stop() {
    local kind what pid k i
    need_root
    if alive_pid "$STATE/run/slurmctld.pid" >/dev/null; then
        SLURM_CONF=$CONF squeue -h -o %i 2>/dev/null | xargs -r env SLURM_CONF="$CONF" scancel >/dev/null 2>&1 || true
        for i in $(seq 50); do
            [[ -z $(SLURM_CONF=$CONF squeue -h -o %i 2>/dev/null) ]] && break
            sleep 0.1
        done
    fi
    for pid in "$STATE"/run/slurmd-*.pid; do
        [[ -e $pid ]] && stop_pid_file "$pid" "$(basename "$pid" .pid)"
    done
    # Whatever still runs in our nodes (job steps, ranks) was started there by us.
    if [[ -s $STATE/made ]]; then
        while read -r kind what; do
            if [[ $kind == netns ]]; then
                for pid in $(ip netns pids "$what" 2>/dev/null); do
                    kill -9 "$pid" 2>/dev/null || true
                done
            fi
        done <"$STATE/made"
    fi
    stop_pid_file "$STATE/run/slurmctld.pid" slurmctld
    if [[ -e $STATE/run/munged.ours ]]; then
        if pidof slurmctld slurmd >/dev/null 2>&1; then
            log "munged left running: another Slurm uses it"
        else
            log "stopping munged"
            munged --stop >/dev/null 2>&1 || true
        fi
    fi
    # Links first (deleting one end of a pair deletes both), then namespaces,
    # their /etc/netns folders (and /etc/netns if we made it), and the bridge.
    if [[ -s $STATE/made ]]; then
        for kind in link netns netnsdir etcnetns bridge; do
            while read -r k what; do
                [[ $k == "$kind" ]] || continue
                case $kind in
                    link | bridge) ip link del "$what" 2>/dev/null || true ;;
                    netns) ip netns del "$what" 2>/dev/null || true ;;
                    netnsdir) rm -f "$what/hosts" && rmdir "$what" 2>/dev/null || true ;;
                    etcnetns) rmdir "$what" 2>/dev/null || true ;;
                esac
            done <"$STATE/made"
        done
    fi
    rm -rf "$STATE"
    log "stopped"
}

multi_status() {
    if multi_healthy; then
        echo "running: config $CONF"
        SLURM_CONF=$CONF sinfo -N
        return 0
    fi
    echo "not running (or not ready): 'scripts/local_slurm.sh start --nodes N' starts it"
    return 1
}

if [[ -n $NODES ]]; then
    case $COMMAND in
        start) multi_start ;;
        stop) multi_stop ;;
        status) multi_status ;;
        restart) multi_stop; multi_start ;;
        *) usage ;;
    esac
    exit
fi
case $COMMAND in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    restart) cmd_stop; cmd_start ;;
    *) usage ;;
esac
