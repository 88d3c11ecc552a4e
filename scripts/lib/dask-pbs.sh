# shellcheck shell=bash
# dask-pbs-kit: the logic the templates share. Sourced by scripts/*.pbs, never executed.
#
# Sourcing only defines functions and constants; `dpk::main interactive|production`
# runs a cluster. Knobs are the upper-case variables documented in README.md; the
# templates set them (NAME="${NAME:-default}") so that `qsub -v NAME=value` wins.
# Functions share the dpk:: prefix and are grouped by phase, in the order a job runs them.

DPK_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DPK_KIT_DIR=$(dirname "$(dirname "$DPK_LIB_DIR")")
readonly DPK_LIB_DIR DPK_KIT_DIR

# ------------------------------------------------------------------ logging and errors

# Print a line to the job's output. Arguments: words of the message.
dpk::log() {
  printf 'dask-pbs: %s\n' "$*"
}

# Print a warning to the job's stderr.
dpk::warn() {
  printf 'dask-pbs: warning: %s\n' "$*" >&2
}

# Print "dask-pbs: <what is wrong> (<what to do>)" to stderr and exit 1 (the EXIT trap,
# once set, stops whatever was started).
dpk::die() {
  printf 'dask-pbs: %s\n' "$*" >&2
  exit 1
}

# Set variable $1 to the whole of file $2 (empty if unreadable), without a fork: the
# teardown path runs on a node whose cores are busy with the workers' exits.
dpk::read_file() {
  IFS= read -r -d '' "$1" 2>/dev/null <"$2" || true
}

# Set variable $1 to the seconds since the epoch, with a fraction: for the readiness and
# teardown figures.
dpk::now() {
  if [[ -n ${EPOCHREALTIME:-} ]]; then
    printf -v "$1" '%s' "${EPOCHREALTIME/,/.}"  # bash 5: no fork (the job's locale may say 1,5)
  else
    printf -v "$1" '%s' "$(date +%s.%N)"
  fi
}

# ------------------------------------------------------------------ knobs

# Give every knob its default (templates set the ones users edit most) and check them
# all before anything starts. Globals: the knobs; DPK_PYTHON.
dpk::check_knobs() {
  : "${PBS_JOBID:?dask-pbs: PBS_JOBID is not set: submit this script with qsub}"
  : "${PBS_O_WORKDIR:?dask-pbs: PBS_O_WORKDIR is not set: submit this script with qsub}"
  SCHEDULER_FILE=${SCHEDULER_FILE:-$PBS_O_WORKDIR/scheduler.json}
  LOG_DIR=${LOG_DIR:-$PBS_O_WORKDIR/dask-logs/$PBS_JOBID}
  INTERFACE=${INTERFACE-ib0}
  NWORKERS=${NWORKERS:-1}
  NTHREADS=${NTHREADS:-0}
  MEMORY_RESERVE=${MEMORY_RESERVE:-10%}
  WORKER_OMP_THREADS=${WORKER_OMP_THREADS:-1}
  WORKER_ON_SCHEDULER_CHUNK=${WORKER_ON_SCHEDULER_CHUNK:-no}
  READY_TIMEOUT=${READY_TIMEOUT:-120}
  WALLTIME_MARGIN=${WALLTIME_MARGIN:-60}
  STOP_TIMEOUT=${STOP_TIMEOUT:-8}
  SCHEDULER_PORT=${SCHEDULER_PORT:-0}
  DASHBOARD_PORT=${DASHBOARD_PORT:-8787}
  DASHBOARD=${DASHBOARD:-network}
  TLS=${TLS:-yes}
  EXTRA_SCHEDULER_ARGS=${EXTRA_SCHEDULER_ARGS:-}
  EXTRA_WORKER_ARGS=${EXTRA_WORKER_ARGS:-}
  DPK_PYTHON=${DPK_PYTHON:-python3}

  local name
  for name in NWORKERS WORKER_OMP_THREADS READY_TIMEOUT WALLTIME_MARGIN STOP_TIMEOUT; do
    [[ ${!name} =~ ^[1-9][0-9]*$ || ( $name == WALLTIME_MARGIN && ${!name} == 0 ) ]] ||
      dpk::die "$name=${!name} is not a positive whole number (set it in the template or with qsub -v $name=...)"
  done
  for name in NTHREADS SCHEDULER_PORT DASHBOARD_PORT; do
    [[ ${!name} =~ ^[0-9]+$ ]] ||
      dpk::die "$name=${!name} is not a whole number (0 means automatic)"
  done
  [[ $WORKER_ON_SCHEDULER_CHUNK == yes || $WORKER_ON_SCHEDULER_CHUNK == no ]] ||
    dpk::die "WORKER_ON_SCHEDULER_CHUNK=$WORKER_ON_SCHEDULER_CHUNK must be yes or no"
  [[ $TLS == yes || $TLS == no ]] ||
    dpk::die "TLS=$TLS must be yes (the default: only your certificates reach the cluster) or no (plain tcp)"
  [[ $DASHBOARD == network || $DASHBOARD == loopback || $DASHBOARD == off ]] ||
    dpk::die "DASHBOARD=$DASHBOARD must be network (any host that reaches the node), loopback (the node only: use the printed ssh tunnel) or off"
  [[ -z $INTERFACE || $INTERFACE =~ ^[A-Za-z0-9_.:-]+$ ]] ||
    dpk::die "INTERFACE='$INTERFACE' is not an interface name (e.g. ib0, eth0; empty for Dask's default)"
  command -v "$DPK_PYTHON" >/dev/null ||
    dpk::die "no $DPK_PYTHON on PATH after the environment set-up ($PATH): fix the environment part of the template"
  command -v pbsdsh >/dev/null ||
    dpk::die "no pbsdsh on PATH ($PATH): run inside a PBS Pro job (or put tests/fakepbs/bin first on PATH)"
}

# ------------------------------------------------------------------ preparation

# Make the job's private log folder and drop a scheduler file left by an earlier job.
# Globals: LOG_DIR, SCHEDULER_FILE; sets DPK_JOB_SCHEDULER_FILE, DPK_ENV_FILE, DPK_ROLL (the
# scheduler's list of registered workers) and DPK_TLS_CONFIG (the client's TLS file).
dpk::prepare() {
  umask 077
  mkdir -p "$LOG_DIR" || dpk::die "cannot create the log folder $LOG_DIR (set LOG_DIR to a writable folder on shared storage)"
  chmod 700 "$LOG_DIR"
  # Workers and the readiness check use this per-job copy only: never a stale file.
  DPK_JOB_SCHEDULER_FILE=$LOG_DIR/scheduler.json
  DPK_ENV_FILE=$LOG_DIR/env.sh
  DPK_ROLL=$LOG_DIR/workers.txt
  DPK_SCHED_CLOSED=$LOG_DIR/scheduler.closed
  DPK_SCHED_DIED=$LOG_DIR/scheduler.died
  # For the scheduler's plugin, through env.sh (see scheduler_preload.py).
  export DASK_PBS_KIT_ROLL=$DPK_ROLL DASK_PBS_KIT_CLOSED=$DPK_SCHED_CLOSED DASK_PBS_KIT_STOP_WAIT=0.5
  DPK_TLS_CONFIG=${SCHEDULER_FILE%.json}.tls.json
  rm -f "$SCHEDULER_FILE" "$DPK_TLS_CONFIG" "$DPK_JOB_SCHEDULER_FILE" "$DPK_ROLL" "$DPK_SCHED_CLOSED" \
    "$DPK_SCHED_DIED"
  dpk::log "job $PBS_JOBID: logs in $LOG_DIR/"
}

# Write the job script's environment (after the template's activation) for the tasks.
dpk::write_env() {
  "$DPK_PYTHON" "$DPK_KIT_DIR/helpers/kit.py" env-file "$DPK_ENV_FILE" ||
    dpk::die "cannot write the task environment $DPK_ENV_FILE"
}

# Start computing the launch plan (select statement, node file, walltime) in the
# background, into LOG_DIR/plan.tsv. Sets DPK_PLAN_PID.
dpk::start_plan() {
  "$DPK_PYTHON" "$DPK_KIT_DIR/helpers/kit.py" plan --nworkers "$NWORKERS" \
    --nthreads "$NTHREADS" --reserve "$MEMORY_RESERVE" \
    --worker-on-scheduler-chunk "$WORKER_ON_SCHEDULER_CHUNK" --started "$DPK_STARTED" \
    >"$LOG_DIR/plan.tsv" &
  DPK_PLAN_PID=$!
}

# Wait for the plan and read it (the helper has said what is wrong if it failed).
# Sets DPK_WALLTIME_*, DPK_SCHED_* and the DPK_W_* arrays (one entry per worker chunk).
dpk::read_plan() {
  local plan kind a b c d e f
  wait "$DPK_PLAN_PID" || exit 1
  plan=$(<"$LOG_DIR/plan.tsv")
  DPK_W_CHUNK=() DPK_W_LINE=() DPK_W_NODE=() DPK_W_NPROC=() DPK_W_THREADS=() DPK_W_MEMORY=()
  DPK_EXPECTED=0
  while IFS=$'\t' read -r kind a b c d e f; do
    case $kind in
      walltime) DPK_WALLTIME_LEFT=$b ;;
      scheduler) DPK_SCHED_CHUNK=$a DPK_SCHED_LINE=$b DPK_SCHED_NODE=$c ;;
      worker)
        DPK_W_CHUNK+=("$a") DPK_W_LINE+=("$b") DPK_W_NODE+=("$c")
        DPK_W_NPROC+=("$d") DPK_W_THREADS+=("$e") DPK_W_MEMORY+=("$f")
        DPK_EXPECTED=$((DPK_EXPECTED + d))
        ;;
    esac
  done <<<"$plan"
}

# With TLS=yes, start making the job's own CA and certificates in LOG_DIR/tls (0700; the
# CA key is gone once they are signed), in the background while the plan is read.
# Sets DPK_TLS_DIR (empty: tcp) and DPK_TLS_PID.
dpk::start_tls() {
  DPK_TLS_DIR="" DPK_TLS_PID=""
  [[ $TLS == yes ]] || return 0
  DPK_TLS_DIR=$LOG_DIR/tls
  "$DPK_PYTHON" "$DPK_KIT_DIR/helpers/kit.py" tls "$DPK_TLS_DIR" --name "$PBS_JOBID" &
  DPK_TLS_PID=$!
}

# Wait for the certificates, and give this script's later Dask clients (PROGRAM) the
# client certificate through Dask's configuration (after write_env: not for the tasks).
dpk::finish_tls() {
  [[ -n $DPK_TLS_PID ]] || return 0
  wait "$DPK_TLS_PID" || exit 1
  DPK_TLS_PID=""
  # No require-encryption here: a PROGRAM may also start a LocalCluster of its own.
  export DASK_DISTRIBUTED__COMM__TLS__CA_FILE=$DPK_TLS_DIR/ca.pem
  export DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT=$DPK_TLS_DIR/client.pem
  export DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY=$DPK_TLS_DIR/client.key
}

# ------------------------------------------------------------------ starting Dask

# Start one Dask process on a node through pbsdsh, in the background.
# Arguments: role chunk nodefile-line node [dask args...]. Appends to DPK_PIDS/DPK_WATCH.
dpk::start_task() {
  local role=$1 chunk=$2 line=$3 node=$4
  shift 4
  local log=$LOG_DIR/$role-$chunk.log
  local pid_file=$LOG_DIR/$role-$chunk.pid
  : >"$log"
  # pbsdsh's own output says when a task fails; keep it beside the log.
  pbsdsh -n "$line" -- /bin/bash "$DPK_LIB_DIR/task.sh" "$DPK_ENV_FILE" "$log" "$pid_file" \
    "$node" "$INTERFACE" "$WORKER_OMP_THREADS" "$DPK_TLS_DIR" "$role" "$@" >"$log.pbsdsh" 2>&1 &
  DPK_PIDS+=("$!") DPK_LINES+=("$line") DPK_PIDFILES+=("$pid_file")
  DPK_WATCH+=(--watch "$role:$chunk:$node:$!:$log")
}

# Start the scheduler on the first chunk. Sets DPK_SCHED_PID.
dpk::start_scheduler() {
  # The preload keeps the registered workers' names in DPK_ROLL (see dpk::wait_ready) and
  # stops the workers when the scheduler closes (see dpk::stop_cluster).
  local -a args=(--scheduler-file "$DPK_JOB_SCHEDULER_FILE" --port "$SCHEDULER_PORT"
    --preload "$DPK_LIB_DIR/scheduler_preload.py")
  case $DASHBOARD in
    network) args+=(--dashboard-address ":$DASHBOARD_PORT") ;;
    loopback) args+=(--dashboard-address "127.0.0.1:$DASHBOARD_PORT") ;;
    off) args+=(--no-dashboard) ;;
  esac
  [[ -n $INTERFACE ]] && args+=(--interface "$INTERFACE")
  local -a extra
  read -r -a extra <<<"$EXTRA_SCHEDULER_ARGS"
  args+=("${extra[@]}")
  dpk::log "starting the scheduler on chunk $DPK_SCHED_CHUNK (node $DPK_SCHED_NODE)"
  dpk::start_task scheduler "$DPK_SCHED_CHUNK" "$DPK_SCHED_LINE" "$DPK_SCHED_NODE" "${args[@]}"
  DPK_SCHED_PID=${DPK_PIDS[-1]} DPK_SCHED_INDEX=$((${#DPK_PIDS[@]} - 1))
}

# Start the worker processes of every worker chunk (one pbsdsh task per chunk).
dpk::start_workers() {
  local i threads="${DPK_W_THREADS[0]} threads"
  local -a extra args
  read -r -a extra <<<"$EXTRA_WORKER_ARGS"
  for i in "${!DPK_W_CHUNK[@]}"; do
    args=(--scheduler-file "$DPK_JOB_SCHEDULER_FILE" --name "chunk-${DPK_W_CHUNK[i]}"
      --nworkers "${DPK_W_NPROC[i]}" --nthreads "${DPK_W_THREADS[i]}"
      --memory-limit "${DPK_W_MEMORY[i]}")
    [[ -n $INTERFACE ]] && args+=(--interface "$INTERFACE")
    args+=("${extra[@]}")
    dpk::start_task worker "${DPK_W_CHUNK[i]}" "${DPK_W_LINE[i]}" "${DPK_W_NODE[i]}" "${args[@]}"
  done
  [[ ${DPK_W_THREADS[0]} == 1 ]] && threads="1 thread"
  dpk::log "starting $DPK_EXPECTED worker processes on ${#DPK_W_CHUNK[@]} chunks" \
    "($NWORKERS per chunk, $threads and ${DPK_W_MEMORY[0]} bytes each on chunk ${DPK_W_CHUNK[0]})"
}

# Wait for the scheduler file and every worker, or fail naming what is missing.
dpk::wait_ready() {
  local status=0
  "$DPK_PYTHON" "$DPK_LIB_DIR/wait_ready.py" --scheduler-file "$DPK_JOB_SCHEDULER_FILE" \
    --roll "$DPK_ROLL" --workers "$DPK_EXPECTED" --timeout "$READY_TIMEOUT" "${DPK_WATCH[@]}" &
  wait "$!" || status=$?
  [[ $status -eq 0 ]] || dpk::die "the cluster did not start (logs in $LOG_DIR/)"
  dpk::now DPK_READY_AT
}

# Copy the per-job scheduler file to SCHEDULER_FILE in one rename: readers see it whole.
# With TLS the client's configuration goes first, beside it, so that a client that sees
# the scheduler file finds its certificate. Sets DPK_PUBLISHED and DPK_PUBLISHED_TLS
# (their contents), so that teardown removes the files only if still ours.
dpk::publish() {
  if [[ -n $DPK_TLS_DIR ]]; then
    dpk::read_file DPK_PUBLISHED_TLS "$DPK_TLS_DIR/client-config.json"
    dpk::copy_atomic "$DPK_TLS_DIR/client-config.json" "$DPK_TLS_CONFIG"
  fi
  dpk::read_file DPK_PUBLISHED "$DPK_JOB_SCHEDULER_FILE"
  dpk::copy_atomic "$DPK_JOB_SCHEDULER_FILE" "$SCHEDULER_FILE"
}

# Copy a file in one rename (mode 0600 under the job's umask). Arguments: from to.
dpk::copy_atomic() {
  if ! cp "$1" "$2.$PBS_JOBID.tmp" || ! mv -f "$2.$PBS_JOBID.tmp" "$2"; then
    rm -f "$2.$PBS_JOBID.tmp"
    dpk::die "cannot write $2 (set SCHEDULER_FILE to a path in a writable folder)"
  fi
}

# Print where the cluster is and how to reach it (read from the per-job scheduler file:
# the banner is written before SCHEDULER_FILE is published).
dpk::banner() {
  local address took
  address=$(sed -n 's/.*"address": *"\([^"]*\)".*/\1/p' "$DPK_JOB_SCHEDULER_FILE")
  dpk::elapsed took "$DPK_STARTED" "$DPK_READY_AT"
  dpk::log "cluster ready in $took s: $DPK_EXPECTED workers"
  printf '  scheduler: %s\n' "$address"
  dpk::banner_dashboard
  dpk::banner_connect
  printf '  logs:      %s/\n' "$LOG_DIR"
}

# The dashboard lines of the banner: where it is and the ssh tunnel a laptop runs.
dpk::banner_dashboard() {
  local url
  local -a where=() tunnel
  if [[ $DASHBOARD == off ]]; then
    printf '  dashboard: off (DASHBOARD=off)\n'
    return
  fi
  [[ $DASHBOARD == loopback ]] && where=(--loopback --node "$DPK_SCHED_NODE")
  url=$("$DPK_PYTHON" "$DPK_KIT_DIR/helpers/dashboard_url.py" "$DPK_JOB_SCHEDULER_FILE" "${where[@]}" 2>&1) || true
  mapfile -t tunnel < <("$DPK_PYTHON" "$DPK_KIT_DIR/helpers/dashboard_url.py" "$DPK_JOB_SCHEDULER_FILE" \
    --tunnel "${PBS_O_HOST:-LOGIN_NODE}" "${where[@]}" 2>/dev/null)
  if [[ $DASHBOARD == loopback ]]; then
    printf '  dashboard: %s on node %s only (DASHBOARD=loopback)\n' "$url" "$DPK_SCHED_NODE"
  else
    printf '  dashboard: %s   (plain HTTP, open to anyone who reaches the node; DASHBOARD=loopback keeps it on the node)\n' "$url"
  fi
  [[ ${#tunnel[@]} -eq 2 ]] && printf '  tunnel:    %s   (on your laptop, %s)\n' "${tunnel[0]}" "${tunnel[1]#\# }"
  return 0
}

# The Python line that connects a client, and what protects the cluster.
dpk::banner_connect() {
  if [[ -z $DPK_TLS_DIR ]]; then
    printf '  connect:   from dask.distributed import Client; client = Client(scheduler_file="%s")\n' "$SCHEDULER_FILE"
    printf '  security:  none (TLS=no): anyone who can reach node %s can run code on this cluster as you\n' "$DPK_SCHED_NODE"
    return
  fi
  printf '  connect:   from dask.distributed import Client, Security; client = Client(scheduler_file="%s", security=Security(tls_ca_file="%s", tls_client_cert="%s", tls_client_key="%s", require_encryption=True))\n' \
    "$SCHEDULER_FILE" "$DPK_TLS_DIR/ca.pem" "$DPK_TLS_DIR/client.pem" "$DPK_TLS_DIR/client.key"
  printf '  security:  TLS with certificates made for this job only (%s/, deleted when the job ends); %s names them for examples/job_client.py\n' \
    "$DPK_TLS_DIR" "$DPK_TLS_CONFIG"
}

# Set variable $1 to the seconds between two dpk::now stamps, two decimals, without a
# fork (bash has no floating point). Arguments: name from to.
dpk::elapsed() {
  local from=${2#*.}00 to=${3#*.}00
  local -i cs=$(((${3%%.*} - ${2%%.*}) * 100 + 10#${to:0:2} - 10#${from:0:2}))
  printf -v "$1" '%d.%02d' $((cs / 100)) $((cs % 100))
}

# ------------------------------------------------------------------ holding or running

# True while the scheduler runs: its pbsdsh has not returned, and it has not said that
# it closed (its Python may take a while longer to exit).
dpk::scheduler_alive() {
  kill -0 "$DPK_SCHED_PID" 2>/dev/null && [[ ! -e $DPK_SCHED_CLOSED ]]
}

# Sleep a little in a way a trapped signal interrupts at once, without a fork: a read
# with a timeout on a pipe that nobody writes to (the job's own end of it). The waits
# of the teardown run while the node's cores are busy with the workers' exits.
dpk::nap() {
  [[ -n ${DPK_NAP_FD:-} ]] || exec {DPK_NAP_FD}<> <(:)
  read -r -t "${1:-0.2}" -u "$DPK_NAP_FD" || true
}

# Interactive mode: keep the cluster until the walltime less WALLTIME_MARGIN, or until
# the scheduler ends (a client called shutdown()). Sets DPK_STATUS.
dpk::hold() {
  local end=""
  if [[ ${DPK_WALLTIME_LEFT:--1} -ge 0 ]]; then
    end=$((SECONDS + DPK_WALLTIME_LEFT - WALLTIME_MARGIN))
    dpk::log "holding the cluster for $((DPK_WALLTIME_LEFT - WALLTIME_MARGIN)) s (walltime less WALLTIME_MARGIN=$WALLTIME_MARGIN s); qdel $PBS_JOBID ends it sooner"
  else
    dpk::log "holding the cluster until the job is deleted (no walltime found)"
  fi
  while dpk::scheduler_alive; do
    if [[ -n $end && $SECONDS -ge $end ]]; then
      dpk::log "walltime nearly over: shutting the cluster down"
      DPK_STATUS=0
      return
    fi
    dpk::nap 1
  done
  dpk::log "the scheduler has ended (a client shut it down, or it failed: see $LOG_DIR/scheduler-$DPK_SCHED_CHUNK.log)"
  DPK_STATUS=0
  grep -q 'exit status' "$LOG_DIR/scheduler-$DPK_SCHED_CHUNK.log.pbsdsh" 2>/dev/null && DPK_STATUS=1
  return 0
}

# Production mode: run PROGRAM from the submit folder; its status is the job's. The job
# waits for the program itself (and so sees it end at once); a watcher beside it stops
# the program and fails the job if the scheduler dies meanwhile. A scheduler closed
# cleanly (the program called client.shutdown()) stops nothing: the program may have
# work left that needs no cluster. Sets DPK_STATUS.
dpk::run_program() {
  dpk::log "running: ${DPK_PROGRAM[*]} (in $PBS_O_WORKDIR)"
  export DASK_SCHEDULER_FILE=$SCHEDULER_FILE
  (cd "$PBS_O_WORKDIR" && exec "${DPK_PROGRAM[@]}") &
  DPK_PROGRAM_PID=$!
  dpk::watch_scheduler "$DPK_PROGRAM_PID" &
  DPK_WATCHER_PID=$!
  DPK_STATUS=0
  wait "$DPK_PROGRAM_PID" || DPK_STATUS=$?
  dpk::now DPK_PROGRAM_END
  DPK_PROGRAM_PID=""
  dpk::stop_watcher
  if [[ -e $DPK_SCHED_DIED ]]; then
    DPK_STATUS=1
  else
    dpk::log "the program exited with status $DPK_STATUS"
  fi
}

# Stop the scheduler watcher of dpk::run_program, if any.
dpk::stop_watcher() {
  [[ -n ${DPK_WATCHER_PID:-} ]] || return 0
  kill "$DPK_WATCHER_PID" 2>/dev/null || true
  wait "$DPK_WATCHER_PID" 2>/dev/null || true
  DPK_WATCHER_PID=""
}

# In the background, beside the program (argument: its PID): if the scheduler's task
# ends without the scheduler having closed (a crash, the OOM killer), say so, mark
# DPK_SCHED_DIED and stop the program, which would otherwise wait on a cluster that is
# gone. Checks twice a second.
dpk::watch_scheduler() {
  while dpk::scheduler_alive; do
    dpk::nap 0.5
  done
  [[ -e $DPK_SCHED_CLOSED ]] && return 0
  : >"$DPK_SCHED_DIED"
  dpk::warn "the scheduler died while the program ran (see $LOG_DIR/scheduler-$DPK_SCHED_CHUNK.log): stopping the program"
  kill -TERM "$1" 2>/dev/null
}

# ------------------------------------------------------------------ shutting down

# Stop the cluster, in two calls: dpk::stop_scheduler sends the scheduler its SIGTERM, and
# dpk::stop_cluster waits for it to close and stops what is left. One SIGTERM to the
# scheduler does it all: its plugin tells every worker to close, gives them up to half a
# second to unregister, closes the scheduler and writes DPK_SCHED_CLOSED. What is left
# then is Dask processes finishing their exit, which PBS ends with the job on every node.
# Otherwise (the scheduler had died, or did not close) every task still running gets its
# own SIGTERM through pbsdsh, and SIGKILL past STOP_TIMEOUT.
# Both set and read DPK_KILLERS (the second pbsdsh runs) and DPK_STOP_BY (the deadline).
dpk::stop_scheduler() {
  DPK_KILLERS=() DPK_STOP_BY=$((SECONDS + STOP_TIMEOUT))
  [[ ${#DPK_PIDS[@]} -gt 0 && -n ${DPK_SCHED_INDEX:-} ]] || return 0
  dpk::scheduler_alive && dpk::signal_tasks "$DPK_SCHED_INDEX"
  return 0
}

dpk::stop_cluster() {
  [[ ${#DPK_PIDS[@]} -gt 0 ]] || return 0
  local i end=$DPK_STOP_BY
  local -a left=()
  while dpk::scheduler_alive && [[ $SECONDS -lt $end ]]; do
    dpk::nap 0.02
  done
  if [[ -e $DPK_SCHED_CLOSED ]]; then
    left=()
  else
    for i in "${!DPK_PIDS[@]}"; do
      kill -0 "${DPK_PIDS[i]}" 2>/dev/null && left+=("$i")
    done
  fi
  if [[ ${#left[@]} -gt 0 ]]; then
    dpk::signal_tasks "${left[@]}"
    dpk::wait_tasks "$end" "${left[@]}"
    dpk::kill_tasks "${left[@]}"
  fi
  [[ ${#DPK_KILLERS[@]} -eq 0 ]] || wait "${DPK_KILLERS[@]}" 2>/dev/null || true
  DPK_PIDS=()
}

# SIGTERM (a clean exit) to the Dask process of each task at these indices of DPK_PIDS,
# through a second pbsdsh on its node (PIDs recorded by task.sh), or directly on this
# node. Appends to DPK_KILLERS.
dpk::signal_tasks() {
  local i pid
  for i in "$@"; do
    kill -0 "${DPK_PIDS[i]}" 2>/dev/null || continue
    read -r pid 2>/dev/null <"${DPK_PIDFILES[i]}" || continue
    [[ $pid =~ ^[0-9]+$ ]] || continue
    if [[ ${DPK_LINES[i]} == 0 ]]; then
      kill -TERM "$pid" 2>/dev/null  # node-file line 0 is this node, the mother superior
      continue
    fi
    # shellcheck disable=SC2016 # $1 expands in the task's shell
    pbsdsh -n "${DPK_LINES[i]}" -- /bin/sh -c 'kill -TERM "$1" 2>/dev/null' sh "$pid" >/dev/null 2>&1 &
    DPK_KILLERS+=("$!")
  done
}

# Wait until the tasks at these indices have ended (the first pbsdsh of a task returns
# when its task has exited), or until SECONDS reaches the deadline. Arguments: deadline
# indices...
dpk::wait_tasks() {
  local deadline=$1 i
  shift
  for i in "$@"; do
    while kill -0 "${DPK_PIDS[i]}" 2>/dev/null && [[ $SECONDS -lt $deadline ]]; do
      dpk::nap 0.05
    done
  done
}

# SIGKILL the first pbsdsh of the tasks still running (PBS kills the task itself when the
# job ends, on every node).
dpk::kill_tasks() {
  local i
  for i in "$@"; do
    if kill -0 "${DPK_PIDS[i]}" 2>/dev/null; then
      dpk::warn "a Dask process did not stop within STOP_TIMEOUT=$STOP_TIMEOUT s: killing it (see $LOG_DIR/)"
      kill -KILL "${DPK_PIDS[i]}" 2>/dev/null
    fi
  done
}

# Remove what must not outlive the job: the published files (if still ours).
dpk::unpublish() {
  dpk::remove_if_ours "$SCHEDULER_FILE" "${DPK_PUBLISHED:-}"
  dpk::remove_if_ours "${DPK_TLS_CONFIG:-}" "${DPK_PUBLISHED_TLS:-}"
}

# Remove a published file unless another job has replaced it. Arguments: path content.
dpk::remove_if_ours() {
  [[ -n $1 ]] || return 0
  local now=""
  if [[ -n $2 && -f $1 ]]; then
    dpk::read_file now "$1"
    [[ $now == "$2" ]] && rm -f "$1"
  fi
  rm -f "$1.$PBS_JOBID.tmp"
}

# Delete the job's key material once no Dask process uses it.
dpk::remove_tls() {
  [[ -n ${DPK_TLS_DIR:-} ]] && rm -rf "$DPK_TLS_DIR"
  return 0
}

# EXIT trap: stop the program and the cluster, whatever ended the script.
dpk::on_exit() {
  local status=$? now took
  trap - EXIT TERM INT HUP
  set +e
  if [[ -n ${DPK_PROGRAM_PID:-} ]]; then
    kill -TERM "$DPK_PROGRAM_PID" 2>/dev/null
  fi
  dpk::stop_watcher
  dpk::stop_scheduler  # first: the files below go while it closes
  dpk::unpublish
  dpk::stop_cluster
  [[ -n ${DPK_TLS_PID:-} ]] && wait "$DPK_TLS_PID" 2>/dev/null
  dpk::remove_tls
  if [[ -n ${DPK_PROGRAM_END:-} ]]; then
    dpk::now now
    dpk::elapsed took "$DPK_PROGRAM_END" "$now"
    dpk::log "cluster stopped $took s after the program ended; exit status $status"
  else
    dpk::log "cluster stopped; exit status $status"
  fi
  exit "$status"
}

# TERM/INT/HUP trap (qdel, walltime): a clean stop within PBS's kill delay.
# Interactive jobs end with 0 (the normal way to end them); production jobs with 128+signal.
dpk::on_signal() {
  local sig=$1 code
  dpk::log "received SIG$sig: shutting the cluster down"
  code=$((128 + $(kill -l "$sig")))
  [[ $DPK_MODE == interactive ]] && code=0
  exit "$code"
}

# ------------------------------------------------------------------ entry point

# Run the cluster. Argument: interactive (hold until walltime) or production (PROGRAM).
dpk::main() {
  DPK_MODE=${1:?dpk::main needs interactive or production}
  dpk::now DPK_STARTED
  DPK_PIDS=() DPK_LINES=() DPK_PIDFILES=() DPK_WATCH=() DPK_STATUS=0
  dpk::check_knobs
  # Split PROGRAM once, before anything starts: a blank one is refused here.
  read -r -a DPK_PROGRAM <<<"${PROGRAM:-}"
  [[ $DPK_MODE != production || ${#DPK_PROGRAM[@]} -gt 0 ]] ||
    dpk::die "PROGRAM is empty: set the command to run in the template or with qsub -v PROGRAM=..."
  dpk::prepare
  trap dpk::on_exit EXIT
  # The three helpers run at once: together they take as long as the slowest.
  dpk::start_tls
  dpk::start_plan
  dpk::write_env
  dpk::read_plan
  dpk::finish_tls
  trap 'dpk::on_signal TERM' TERM
  trap 'dpk::on_signal INT' INT
  trap 'dpk::on_signal HUP' HUP
  dpk::start_scheduler
  dpk::start_workers
  dpk::wait_ready
  # Also in a file, whole before scheduler.json appears: PBS shows the job's output
  # only when the job has ended.
  dpk::banner >"$LOG_DIR/cluster-info.txt"
  dpk::publish
  cat "$LOG_DIR/cluster-info.txt"
  if [[ $DPK_MODE == production ]]; then
    dpk::run_program
  else
    dpk::hold
  fi
  exit "$DPK_STATUS"
}
