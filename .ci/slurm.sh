#!/usr/bin/env bash
# A real single-node Slurm cluster on localhost, for CI and the `slurm`-marked tests.
#
#   bash .ci/slurm.sh install             # Debian/Ubuntu: slurm-wlm, slurmdbd, munge, mariadb-server
#   bash .ci/slurm.sh start  STATE_DIR    # prints `export SLURM_CONF=STATE_DIR/slurm.conf` on stdout
#   bash .ci/slurm.sh status STATE_DIR    # exit 0 when every daemon is up
#   bash .ci/slurm.sh stop   STATE_DIR    # stops what `start` started, by pid
#
# What `start` runs (all bound to 127.0.0.1, everything but munged private to STATE_DIR):
#   mariadbd   private datadir STATE_DIR/mysql, TCP 127.0.0.1:$VLAC_SLURM_MYSQL_PORT (3307), run as root.
#              A private database per STATE_DIR matters: slurmctld's job ids restart at 1 with a
#              fresh StateSaveLocation, and a shared slurm_acct_db would then hold several jobs with
#              the same id, which confuses `sacct -j ID` (and so submitit's job states).
#   munged     as user munge with Debian's key (/etc/munge/munge.key, created when missing) and
#              socket (/run/munge); an already working munged is reused and left alone by `stop`.
#   slurmdbd   accounting; without it submitit never sees a job's final state (it polls sacct).
#   slurmctld, slurmd   SlurmUser=root, node `hostname -s` at 127.0.0.1, partition `debug`.
#
# Config location: every Slurm client command (sbatch, srun, squeue, sinfo, sacct, scontrol,
# scancel, sacctmgr) honours SLURM_CONF, and slurmdbd finds slurmdbd.conf next to it; the daemons
# get it through -f and the environment; jobs inherit SLURM_CONF from sbatch (--export=ALL is the
# default, and submitit does not change it), so srun and `scontrol requeue` inside a job (submitit's
# preemption path) work too. Tested here with Slurm 22.05 (Debian 12), so nothing is written to
# /etc/slurm: the caller exports SLURM_CONF. Without it, clients fall back to a DNS SRV lookup and
# fail with "Could not establish a configuration source".
#
# Every daemon is started with VLAC_SLURM_STATE=<STATE_DIR> in its environment. `stop` kills the
# pids from STATE_DIR/*.pid and then any process whose environment carries that exact marker (e.g.
# slurmstepd of a job still running), never anything matched by name.
#
# Ports (override through the environment when they clash with something else on the machine):
#   VLAC_SLURM_CTLD_PORT (6817), VLAC_SLURM_SLURMD_PORT (6818), VLAC_SLURM_DBD_PORT (6819),
#   VLAC_SLURM_MYSQL_PORT (3307).
# Other knobs: VLAC_SLURM_CPUS (advertised CPUs; default max(nproc, 4): the node is oversubscribed
# on purpose so a 2-task job fits on a 1- or 2-core CI runner), VLAC_SLURM_START_TIMEOUT (60 s).
set -euo pipefail

export PATH="$PATH:/usr/sbin:/sbin"

CTLD_PORT="${VLAC_SLURM_CTLD_PORT:-6817}"
SLURMD_PORT="${VLAC_SLURM_SLURMD_PORT:-6818}"
DBD_PORT="${VLAC_SLURM_DBD_PORT:-6819}"
MYSQL_PORT="${VLAC_SLURM_MYSQL_PORT:-3307}"
START_TIMEOUT="${VLAC_SLURM_START_TIMEOUT:-60}"
CLUSTER="vlac"
PARTITION="debug"
DB_NAME="slurm_acct_db"
DB_USER="slurm"
DB_PASS="vlac-slurm-ci"   # localhost-only throwaway database
PACKAGES=(slurm-wlm slurmdbd munge mariadb-server)
MUNGE_KEY=/etc/munge/munge.key
MUNGE_RUN=/run/munge
MUNGE_PIDFILE=$MUNGE_RUN/munged.pid

log() { echo "[slurm.sh] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

usage() {
    sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi
}

# ---------------------------------------------------------------------------------------- install
cmd_install() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" != "install ok installed" ]; then
            missing+=("$p")
        fi
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        log "already installed: ${PACKAGES[*]}"
        return 0
    fi
    log "installing: ${missing[*]}"
    as_root apt-get update -qq
    # policy-rc.d in containers (or no systemd) keeps the packages' own services from starting;
    # on a full VM they do start (mariadb on 3306, munge): harmless, we use other ports/paths and
    # reuse a working munged.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
    log "installed: $(sbatch --version)"
}

# ---------------------------------------------------------------------------------------- helpers
# pid_alive PID: running and not a zombie (in some sandboxes nobody reaps orphaned zombies, and
# `kill -0` succeeds on a zombie).
pid_alive() {
    [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null || return 1
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }"
    [ "${stat%% *}" != "Z" ]
}

# pidfile_pid FILE: the pid in FILE when that process is alive, else nothing.
pidfile_pid() {
    local pid
    [ -s "$1" ] || return 0
    pid="$(tr -dc '0-9' <"$1")"
    if pid_alive "$pid"; then echo "$pid"; fi
}

# env_has PID VAR=VALUE: the process environment has exactly that entry.
env_has() {
    { tr '\0' '\n' <"/proc/$1/environ"; } 2>/dev/null | grep -qxF "$2"
}

# has_marker PID: the process environment carries VLAC_SLURM_STATE=$STATE.
has_marker() { env_has "$1" "VLAC_SLURM_STATE=$STATE"; }

# is_our_job_process PID: a process of a job of this cluster (the job environment holds
# SLURM_JOB_ID and our SLURM_CONF).
is_our_job_process() {
    env_has "$1" "SLURM_CONF=$CONF" \
        && { tr '\0' '\n' <"/proc/$1/environ"; } 2>/dev/null | grep -q '^SLURM_JOB_ID='
}

# has_fd_under PID DIR/: the process has a file under DIR open.
has_fd_under() {
    local fd target
    for fd in "/proc/$1/fd/"*; do
        target="$(readlink "$fd" 2>/dev/null)" || continue
        case "$target" in "$2"*) return 0 ;; esac
    done
    return 1
}

port_busy() {
    # bash's /dev/tcp: connection succeeds only when something listens.
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

wait_until() {  # wait_until SECONDS DESCRIPTION CMD...
    local secs=$1 what=$2 deadline
    shift 2
    deadline=$(( $(date +%s) + secs ))
    until "$@" >/dev/null 2>&1; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            log "timed out after ${secs}s waiting for: $what"
            return 1
        fi
        sleep 0.5
    done
}

set_state() {
    [ -n "${1:-}" ] || usage
    mkdir -p "$1"
    STATE="$(cd "$1" && pwd -P)"
    CONF="$STATE/slurm.conf"
    MYSQL_SOCK="$STATE/mysql/mysqld.sock"
    if [ "${#MYSQL_SOCK}" -ge 100 ]; then
        die "STATE_DIR path too long for a unix socket: $MYSQL_SOCK"
    fi
}

daemon_env() {  # run "$@" with the marker and our config in the environment, stdio to a log file
    local logf=$1
    shift
    env VLAC_SLURM_STATE="$STATE" SLURM_CONF="$CONF" "$@" </dev/null >>"$logf" 2>&1
}

# daemon_bg LOG CMD...: like daemon_env, in the background. The redirections apply to the
# backgrounded subshell itself, which then execs CMD: no bash lingers holding the caller's stdout
# (a pipe when Python captures our output: it would never see EOF).
daemon_bg() {
    local logf=$1
    shift
    (exec env VLAC_SLURM_STATE="$STATE" SLURM_CONF="$CONF" "$@") </dev/null >>"$logf" 2>&1 &
}

# shellcheck disable=SC2120  # called with arguments through wait_until
mysql_cli() { mariadb --no-defaults --protocol=socket --socket="$MYSQL_SOCK" -uroot "$@"; }

# ---------------------------------------------------------------------------------------- configs
write_configs() {
    local host ncpu cpus
    host="$(hostname -s)"
    ncpu="$(nproc)"
    cpus="${VLAC_SLURM_CPUS:-$(( ncpu > 4 ? ncpu : 4 ))}"
    mkdir -p "$STATE/ctld" "$STATE/spool" "$STATE/log"
    cat >"$CONF" <<EOF
# Generated by .ci/slurm.sh for a localhost test cluster; do not edit (rewritten on start).
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
# No cgroups in containers/CI runners: plain process tracking, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# Schedule every 1-2 s instead of 30/60 s: a job whose BeginTime passes (a requeued job) would
# otherwise wait for the next pass.
SchedulerParameters=sched_interval=2,bf_interval=1
# The node advertises $cpus CPUs whatever the hardware ($ncpu): config_overrides makes slurmd
# accept the mismatch, so multi-task jobs fit on small runners (oversubscription).
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
KillWait=5
InactiveLimit=0
MinJobAge=300
SlurmdTimeout=300
SlurmctldTimeout=120
Waittime=0
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=1024 State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
    cat >"$STATE/slurmdbd.conf" <<EOF
# Generated by .ci/slurm.sh.
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$STATE/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$MYSQL_PORT
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
EOF
    # slurmdbd refuses a slurmdbd.conf readable by others (it holds the password).
    chmod 600 "$STATE/slurmdbd.conf"
}

# ---------------------------------------------------------------------------------------- daemons
start_mariadb() {
    if [ -n "$(pidfile_pid "$STATE/mariadb.pid")" ]; then
        log "mariadb already running (pid $(pidfile_pid "$STATE/mariadb.pid"))"
        return 0
    fi
    if [ ! -d "$STATE/mysql/mysql" ]; then
        log "initialising MariaDB datadir $STATE/mysql"
        mkdir -p "$STATE/mysql"
        mariadb-install-db --no-defaults --user=root --datadir="$STATE/mysql" \
            --skip-test-db --innodb-log-file-size=16M >"$STATE/log/mariadb-install.log" 2>&1 \
            || { cat "$STATE/log/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
    fi
    log "starting mariadbd on 127.0.0.1:$MYSQL_PORT"
    # mariadbd does not fork: background it (in its own session, so a Ctrl-C on the caller's
    # terminal does not reach it); its pid file is what `stop` uses.
    daemon_bg "$STATE/log/mariadb.out" setsid mariadbd --no-defaults --user=root \
        --datadir="$STATE/mysql" --socket="$MYSQL_SOCK" --pid-file="$STATE/mariadb.pid" \
        --bind-address=127.0.0.1 --port="$MYSQL_PORT" --log-error="$STATE/log/mariadb.log" \
        --innodb-log-file-size=16M --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900 \
        --skip-name-resolve
    wait_until "$START_TIMEOUT" "mariadb to answer" mysql_cli -e "SELECT 1" \
        || { tail -20 "$STATE/log/mariadb.log" >&2 || true; die "mariadb did not start"; }
    # shellcheck disable=SC2119
    mysql_cli <<EOF
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'127.0.0.1';
GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost';
FLUSH PRIVILEGES;
EOF
}

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if munge_works; then
        if [ -n "$(pidfile_pid "$STATE/munged.pid")" ]; then
            log "munged already running (pid $(pidfile_pid "$STATE/munged.pid"))"
        else
            log "reusing the munged already running on this machine (stop will leave it alone)"
        fi
        return 0
    fi
    if [ ! -s "$MUNGE_KEY" ]; then
        log "creating $MUNGE_KEY"
        install -d -o munge -g munge -m 0700 "$(dirname "$MUNGE_KEY")"
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile="$MUNGE_KEY"
        else
            dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none
        fi
        chown munge:munge "$MUNGE_KEY"
        chmod 0400 "$MUNGE_KEY"
    fi
    install -d -o munge -g munge -m 0755 "$MUNGE_RUN"
    rm -f "$MUNGE_PIDFILE"
    log "starting munged (user munge)"
    # munged forks; it writes its pid file into /run/munge (it cannot write into STATE_DIR, which
    # may be a 0700 directory of another user), so copy the pid over once it is there.
    daemon_env "$STATE/log/munged.out" runuser -u munge -- munged --pid-file="$MUNGE_PIDFILE" \
        || { tail -20 /var/log/munge/munged.log >&2 || true; die "munged failed to start"; }
    wait_until 15 "munged pid file" test -s "$MUNGE_PIDFILE" || die "munged wrote no pid file"
    cp "$MUNGE_PIDFILE" "$STATE/munged.pid"
    wait_until 15 "munge to work" munge_works || die "munge -n | unmunge fails"
}

sacctmgr_works() { SLURM_CONF="$CONF" sacctmgr -n -P show cluster format=cluster; }

start_slurmdbd() {
    if [ -z "$(pidfile_pid "$STATE/slurmdbd.pid")" ]; then
        log "starting slurmdbd on 127.0.0.1:$DBD_PORT"
        daemon_env "$STATE/log/slurmdbd.out" slurmdbd \
            || { tail -20 "$STATE/log/slurmdbd.log" >&2 || true; die "slurmdbd failed to start"; }
    else
        log "slurmdbd already running"
    fi
    wait_until "$START_TIMEOUT" "slurmdbd to answer sacctmgr" sacctmgr_works \
        || { tail -20 "$STATE/log/slurmdbd.log" >&2 || true; die "slurmdbd does not answer"; }
    # slurmctld would register the cluster itself, but do it first so that accounting is ready
    # the moment slurmctld comes up. No AccountingStorageEnforce, so no account is required; add
    # one anyway (and root in it) so `sacctmgr`/`--account` based tests have something to use.
    if ! sacctmgr_works | grep -qx "$CLUSTER"; then
        SLURM_CONF="$CONF" sacctmgr -i add cluster "$CLUSTER" >>"$STATE/log/sacctmgr.out"
    fi
    if [ -z "$(SLURM_CONF="$CONF" sacctmgr -n -P show account vlac format=account 2>/dev/null)" ]; then
        SLURM_CONF="$CONF" sacctmgr -i add account vlac cluster="$CLUSTER" \
            description="vlac CI" organization=vlac >>"$STATE/log/sacctmgr.out"
    fi
    if [ -z "$(SLURM_CONF="$CONF" sacctmgr -n -P show assoc user=root account=vlac format=user 2>/dev/null)" ]; then
        SLURM_CONF="$CONF" sacctmgr -i add user root account=vlac cluster="$CLUSTER" >>"$STATE/log/sacctmgr.out"
    fi
}

node_idle() {
    local st
    st="$(SLURM_CONF="$CONF" sinfo -h -N -n "$(hostname -s)" -o '%t' 2>/dev/null | head -1)"
    [ "$st" = "idle" ] || [ "$st" = "mix" ] || [ "$st" = "alloc" ]
}

start_slurm() {
    if [ -z "$(pidfile_pid "$STATE/slurmctld.pid")" ]; then
        log "starting slurmctld on 127.0.0.1:$CTLD_PORT"
        daemon_env "$STATE/log/slurmctld.out" slurmctld -f "$CONF" \
            || { tail -20 "$STATE/log/slurmctld.log" >&2 || true; die "slurmctld failed to start"; }
    else
        log "slurmctld already running"
    fi
    wait_until "$START_TIMEOUT" "slurmctld to answer" env SLURM_CONF="$CONF" scontrol ping \
        || { tail -20 "$STATE/log/slurmctld.log" >&2 || true; die "slurmctld does not answer"; }
    if [ -z "$(pidfile_pid "$STATE/slurmd.pid")" ]; then
        log "starting slurmd on 127.0.0.1:$SLURMD_PORT"
        daemon_env "$STATE/log/slurmd.out" slurmd -f "$CONF" -N "$(hostname -s)" \
            || { tail -20 "$STATE/log/slurmd.log" >&2 || true; die "slurmd failed to start"; }
    else
        log "slurmd already running"
    fi
    if ! wait_until "$START_TIMEOUT" "node $(hostname -s) to be idle" node_idle; then
        SLURM_CONF="$CONF" sinfo -N -l >&2 || true
        tail -20 "$STATE/log/slurmd.log" >&2 || true
        die "node never became idle"
    fi
}

# Fail before starting anything when a port we need is taken by something else.
check_ports() {
    local spec name port var
    for spec in mariadb:$MYSQL_PORT:MYSQL slurmdbd:$DBD_PORT:DBD slurmctld:$CTLD_PORT:CTLD \
            slurmd:$SLURMD_PORT:SLURMD; do
        IFS=: read -r name port var <<<"$spec"
        if [ -z "$(pidfile_pid "$STATE/$name.pid")" ] && port_busy "$port"; then
            die "port $port ($name) is in use by another process; set VLAC_SLURM_${var}_PORT"
        fi
    done
}

cmd_start() {
    set_state "$1"
    [ "$(id -u)" -eq 0 ] || die "start must run as root (SlurmUser=root, munged as user munge)"
    for b in sbatch slurmctld slurmd slurmdbd munged mariadbd mariadb-install-db; do
        command -v "$b" >/dev/null || die "$b not found: run 'bash $0 install' first"
    done
    local t0
    t0=$(date +%s)
    check_ports
    START_OK=0
    # On failure, stop the cluster of STATE_DIR, so that no daemon outlives a failed start.
    trap 'if [ "$START_OK" -eq 0 ]; then log "start failed; logs in $STATE/log; stopping"; cmd_stop "$STATE" || true; fi' EXIT
    write_configs
    start_mariadb
    start_munge
    start_slurmdbd
    start_slurm
    START_OK=1
    trap - EXIT
    log "cluster '$CLUSTER' up in $(( $(date +%s) - t0 ))s: partition $PARTITION, node $(hostname -s)"
    echo "export SLURM_CONF=$CONF"
}

# ---------------------------------------------------------------------------------------- stop
# kill_pids "NAME PID"...: SIGTERM to all at once, wait up to $KILL_GRACE_S (20) s for all, then
# SIGKILL.
kill_pids() {
    local item name pid left grace=${KILL_GRACE_S:-20}
    for item in "$@"; do
        name=${item% *}; pid=${item##* }
        if pid_alive "$pid"; then
            log "stopping $name (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    for _ in $(seq 1 $(( grace * 5 ))); do
        left=0
        for item in "$@"; do pid_alive "${item##* }" && left=1; done
        [ "$left" -eq 0 ] && return 0
        sleep 0.2
    done
    for item in "$@"; do
        name=${item% *}; pid=${item##* }
        if pid_alive "$pid"; then
            log "$name (pid $pid) ignored SIGTERM for ${grace}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
}

# ours NAME FILE COMM: "NAME PID" for the pid in FILE if it is alive and still the process we
# started (its name is COMM and it carries the marker) -- a stale pid file must not lead to
# killing an unrelated process that reused the pid. Removes FILE.
ours() {
    local name=$1 file=$2 comm=$3 pid
    pid="$(pidfile_pid "$file")"
    rm -f "$file"
    [ -n "$pid" ] || return 0
    if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ] && has_marker "$pid"; then
        echo "$name $pid"
    else
        log "pid $pid in $file is not our $name; leaving it alone"
    fi
}

# stop_group NAME:FILE:COMM...: stop these daemons together.
stop_group() {
    local spec name file comm entry entries=()
    for spec in "$@"; do
        IFS=: read -r name file comm <<<"$spec"
        entry="$(ours "$name" "$file" "$comm")"
        [ -z "$entry" ] || entries+=("$entry")
    done
    [ "${#entries[@]}" -eq 0 ] || kill_pids "${entries[@]}"
}

no_jobs_left() { [ -z "$(SLURM_CONF="$CONF" squeue -h -o %i 2>/dev/null)" ]; }

cmd_stop() {
    set_state "$1"
    # Cancel whatever still runs, so that slurmstepd and job processes go away with the daemons.
    if [ -n "$(pidfile_pid "$STATE/slurmctld.pid")" ] && [ -f "$CONF" ]; then
        if [ -n "$(SLURM_CONF="$CONF" squeue -h -o %i 2>/dev/null)" ]; then
            log "cancelling remaining jobs"
            SLURM_CONF="$CONF" squeue -h -o %i | xargs -r env SLURM_CONF="$CONF" scancel || true
            wait_until 20 "jobs to finish" no_jobs_left || true
        fi
    fi
    # In dependency order, each group at once: slurmctld still talks to slurmdbd (through munge)
    # while it shuts down, slurmdbd to mariadb.
    stop_group "slurmd:$STATE/slurmd.pid:slurmd" "slurmctld:$STATE/slurmctld.pid:slurmctld"
    stop_group "slurmdbd:$STATE/slurmdbd.pid:slurmdbd"
    stop_group "mariadbd:$STATE/mariadb.pid:mariadbd" "munged:$STATE/munged.pid:munged"
    # Stragglers, when jobs could not be cancelled (slurmctld gone) or a pid file went missing:
    # first the processes of this cluster's jobs, then our slurmstepd (slurmd scrubs its
    # environment, but it keeps this cluster's slurmd.log open) and anything carrying our marker.
    # Never the callers of this script (they may have SLURM_CONF=$CONF too).
    local p ancestors=" " jobs=() daemons=()
    p=$$
    while [ -n "$p" ] && [ "$p" -gt 1 ]; do
        ancestors+="$p "
        p="$(awk '{print $4}' "/proc/$p/stat" 2>/dev/null || true)"
    done
    for p in /proc/[0-9]*; do
        p="${p#/proc/}"
        case "$ancestors" in *" $p "*) continue ;; esac
        if is_our_job_process "$p"; then
            jobs+=("$(cat "/proc/$p/comm" 2>/dev/null || echo '?') $p")
        elif has_marker "$p" || { [ "$(cat "/proc/$p/comm" 2>/dev/null)" = slurmstepd ] \
                && has_fd_under "$p" "$STATE/"; }; then
            daemons+=("$(cat "/proc/$p/comm" 2>/dev/null || echo '?') $p")
        fi
    done
    # Short grace: submitit's job processes ignore SIGTERM, slurmstepd does too.
    [ "${#jobs[@]}" -eq 0 ] || KILL_GRACE_S=3 kill_pids "${jobs[@]}"
    [ "${#daemons[@]}" -eq 0 ] || KILL_GRACE_S=3 kill_pids "${daemons[@]}"
    log "stopped (state kept in $STATE)"
}

# ---------------------------------------------------------------------------------------- status
cmd_status() {
    set_state "$1"
    local rc=0 name pid
    for name in mariadb munged slurmdbd slurmctld slurmd; do
        pid="$(pidfile_pid "$STATE/$name.pid")"
        if [ -n "$pid" ]; then
            echo "$name: running (pid $pid)"
        elif [ "$name" = munged ] && munge_works; then
            echo "munged: not ours, but a working munged is running"
        else
            echo "$name: not running"
            rc=1
        fi
    done
    if [ -f "$CONF" ] && [ -n "$(pidfile_pid "$STATE/slurmctld.pid")" ]; then
        SLURM_CONF="$CONF" sinfo -N -l || rc=1
        SLURM_CONF="$CONF" squeue || rc=1
    fi
    return "$rc"
}

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start "${2:-}" ;;
    stop) cmd_stop "${2:-}" ;;
    status) cmd_status "${2:-}" ;;
    *) usage ;;
esac
