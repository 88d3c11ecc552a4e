# shellcheck shell=bash
# dask-pbs-kit: the logic the templates share. Sourced by scripts/*.pbs, never executed.
#
# Sourcing only defines functions and constants. `dpk::main interactive|production` runs
# a cluster in phases, one function each, in this order:
#
#   1 dpk::check_knobs    the knobs: defaults given, every value checked
#   2 dpk::prepare        the job's log folder and the names of its files (DPK_F_*)
#   3 dpk::read_job       certificates, launch plan and task environment, made at once;
#                         the scheduler's pbsdsh task as soon as it may (dpk::start_scheduler)
#   4 dpk::start_workers  each worker chunk, one pbsdsh task each (DPK_T_*)
#   5 dpk::wait_ready     until every worker has registered, or fail naming what is missing
#   6 dpk::announce       the banner, then the scheduler file published
#     dpk::start_jupyter  JUPYTER=yes: JupyterLab beside the scheduler, its lines added
#   7 dpk::hold | dpk::run_program   the job's work; returns the job's status
#   8 dpk::teardown       (EXIT trap) the program, the scheduler, the tasks: each SIGTERM,
#                         a grace period, then SIGKILL
#
# A worker-only job (`dpk::main workers`, scripts/launch-dask-workers.pbs) joins another
# job's cluster instead of starting one: its own phases are in grow.sh.
#
# Each phase's header says what it reads and what it sets. A global is set by one phase
# only (its name says which: DPK_F_ files, DPK_P_ plan, DPK_T_ tasks, DPK_PUB_ published
# files); later phases read it. Knobs are the upper-case variables of README.md; the
# templates set them as NAME="${NAME:-default}", so that `qsub -v NAME=value` wins.

DPK_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DPK_KIT_DIR=$(dirname "$(dirname "$DPK_LIB_DIR")")
readonly DPK_LIB_DIR DPK_KIT_DIR
# The phases of a worker-only job (mode workers): they use the ones below.
# shellcheck source=grow.sh
source "$DPK_LIB_DIR/grow.sh"

# ------------------------------------------------------------------ small tools

# Every message goes to the job's output and, once dpk::prepare has named it, to
# LOG_DIR/job.log too: PBS shows the job's output only when the job has ended.

# Print a line to the job's output. Arguments: words of the message.
dpk::log() {
  printf 'dask-pbs: %s\n' "$*"
  [[ -z ${DPK_F_LOG:-} ]] || printf 'dask-pbs: %s\n' "$*" >>"$DPK_F_LOG"
}

# Print a warning to the job's stderr.
dpk::warn() {
  printf 'dask-pbs: warning: %s\n' "$*" >&2
  [[ -z ${DPK_F_LOG:-} ]] || printf 'dask-pbs: warning: %s\n' "$*" >>"$DPK_F_LOG"
}

# Print "dask-pbs: <what is wrong> (<what to do>)" to stderr and exit 1 (the EXIT trap,
# once set, stops whatever was started).
dpk::die() {
  printf 'dask-pbs: %s\n' "$*" >&2
  [[ -z ${DPK_F_LOG:-} ]] || printf 'dask-pbs: %s\n' "$*" >>"$DPK_F_LOG"
  exit 1
}

# Pass on what a helper wrote to file $1 (its stderr: warnings, errors) to the job's stderr
# and job.log, then remove the file.
dpk::relay() {
  local text
  dpk::read_file text "$1"
  rm -f "$1"
  [[ -n $text ]] || return 0
  printf '%s' "$text" >&2
  [[ -z ${DPK_F_LOG:-} ]] || printf '%s' "$text" >>"$DPK_F_LOG"
}

# Set variable $1 to the whole of file $2 (empty if unreadable), without a fork.
dpk::read_file() {
  printf -v "$1" '%s' ""
  IFS= read -r -d '' "$1" 2>/dev/null <"$2" || true
}

# Set variable $1 to the microseconds since the epoch (bash 5's EPOCHREALTIME, without a
# fork; `date` on bash 4.4, as on RHEL 8).
dpk::now_us() {
  local _dpk_now=${EPOCHREALTIME:-}  # a name no caller passes as $1
  [[ -n $_dpk_now ]] || _dpk_now=$(date +%s.%6N)
  _dpk_now=${_dpk_now/,/.}  # the job's locale may write 1,5
  printf -v "$1" '%d' "$((10#${_dpk_now%.*} * 1000000 + 10#${_dpk_now#*.}))"
}

# Print a duration given in microseconds as seconds with two decimals.
dpk::seconds() {
  printf '%d.%02d' "$(($1 / 1000000))" "$(($1 % 1000000 / 10000))"
}

# True while process $1 runs. A process that has exited but that bash has not reaped yet
# (a zombie: `kill -0` still succeeds on it) counts as gone.
dpk::alive() {
  local stat
  [[ -n $1 ]] && read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
  stat=${stat##*) }
  [[ ${stat:0:1} != Z ]]
}

# Sleep $1 seconds (default 0.2) in a way that a trapped signal cuts short (qdel during a
# wait). A read with a timeout on a FIFO that nobody writes, opened for the read only (no
# child inherits it): no sleep process on a node whose cores the Dask processes need. A trap
# that runs during it must read no pipe ($(...)) while the read's timer is armed: see
# dpk::on_signal.
dpk::nap() {
  if [[ -n ${DPK_F_NAP:-} ]]; then
    read -r -t "${1:-0.2}" <>"$DPK_F_NAP" || true
  else
    sleep "${1:-0.2}"
  fi
}

# ------------------------------------------------------------------ 1 knobs

# Give every knob its default and check them all before anything starts.
# Reads: the knobs, PBS_JOBID, PBS_O_WORKDIR. Sets: every knob's default; DPK_PYTHON;
# DPK_PROGRAM (PROGRAM split into words) in production mode.
dpk::check_knobs() {
  [[ -n ${PBS_JOBID:-} && -n ${PBS_O_WORKDIR:-} ]] ||
    dpk::die "PBS_JOBID or PBS_O_WORKDIR is not set: submit this script with qsub"
  SCHEDULER_FILE=${SCHEDULER_FILE:-$PBS_O_WORKDIR/scheduler.json}
  LOG_DIR=${LOG_DIR:-$PBS_O_WORKDIR/dask-logs/$PBS_JOBID}
  INTERFACE=${INTERFACE-auto}
  NWORKERS=${NWORKERS:-1}
  NTHREADS=${NTHREADS:-0}
  MEMORY_RESERVE=${MEMORY_RESERVE:-10%}
  WORKER_OMP_THREADS=${WORKER_OMP_THREADS:-1}
  WORKER_ON_SCHEDULER_CHUNK=${WORKER_ON_SCHEDULER_CHUNK:-auto}
  READY_TIMEOUT=${READY_TIMEOUT:-120}
  WALLTIME=${WALLTIME:-}
  WALLTIME_MARGIN=${WALLTIME_MARGIN:-60}
  STOP_TIMEOUT=${STOP_TIMEOUT:-8}
  SCHEDULER_PORT=${SCHEDULER_PORT:-0}
  DASHBOARD_PORT=${DASHBOARD_PORT:-8787}
  DASHBOARD=${DASHBOARD:-network}
  TLS=${TLS:-yes}
  EXTRA_SCHEDULER_ARGS=${EXTRA_SCHEDULER_ARGS:-}
  EXTRA_WORKER_ARGS=${EXTRA_WORKER_ARGS:-}
  WORKER_COMMAND=${WORKER_COMMAND:-auto}
  EXTRA_CUDA_WORKER_ARGS=${EXTRA_CUDA_WORKER_ARGS:-}
  JUPYTER=${JUPYTER:-no}
  JUPYTER_DIR=${JUPYTER_DIR:-$PBS_O_WORKDIR}
  DPK_PYTHON=${DPK_PYTHON:-python3}

  local name
  for name in NWORKERS WORKER_OMP_THREADS READY_TIMEOUT STOP_TIMEOUT; do
    [[ ${!name} =~ ^[1-9][0-9]*$ ]] ||
      dpk::die "$name=${!name} is not a positive whole number (set it in the template or with qsub -v $name=...)"
  done
  for name in NTHREADS SCHEDULER_PORT DASHBOARD_PORT WALLTIME_MARGIN; do
    [[ ${!name} =~ ^[0-9]+$ ]] ||
      dpk::die "$name=${!name} is not a whole number (set it in the template or with qsub -v $name=...)"
  done
  [[ -z $WALLTIME || $WALLTIME =~ ^[0-9]+(:[0-9]+){0,2}$ ]] ||
    dpk::die "WALLTIME=$WALLTIME is not a walltime: write it as PBS does, [[HH:]MM:]SS (e.g. 01:30:00)"
  [[ $WORKER_ON_SCHEDULER_CHUNK =~ ^(yes|no|auto)$ ]] ||
    dpk::die "WORKER_ON_SCHEDULER_CHUNK=$WORKER_ON_SCHEDULER_CHUNK must be yes, no or auto"
  [[ $WORKER_COMMAND =~ ^(auto|dask-worker|dask-cuda-worker)$ ]] ||
    dpk::die "WORKER_COMMAND=$WORKER_COMMAND must be auto (dask cuda worker on GPU chunks when dask-cuda is installed), dask-worker or dask-cuda-worker"
  [[ $TLS == yes || $TLS == no ]] ||
    dpk::die "TLS=$TLS must be yes (the default: only your certificates reach the cluster) or no (plain tcp)"
  [[ $DASHBOARD =~ ^(network|loopback|off)$ ]] ||
    dpk::die "DASHBOARD=$DASHBOARD must be network (any host that reaches the node), loopback (the node only: use the printed ssh tunnel) or off"
  [[ -z $INTERFACE || $INTERFACE =~ ^[A-Za-z0-9_.:-]+$ ]] ||
    dpk::die "INTERFACE='$INTERFACE' is not an interface name (auto, a name such as ib0 or eth0, or empty for Dask's default)"
  [[ $JUPYTER == yes || $JUPYTER == no ]] ||
    dpk::die "JUPYTER=$JUPYTER must be yes (JupyterLab beside the cluster) or no"
  if [[ $JUPYTER == yes ]]; then
    [[ $DPK_MODE == interactive ]] ||
      dpk::die "JUPYTER=yes is for the interactive templates (a $DPK_MODE job starts no notebook)"
    [[ -d $JUPYTER_DIR ]] || dpk::die "JUPYTER_DIR=$JUPYTER_DIR is not a folder (JupyterLab's root: set JUPYTER_DIR)"
    command -v jupyter-lab >/dev/null ||
      dpk::die "JUPYTER=yes but there is no jupyter-lab in the job's environment ($PATH): install it there with pip install -r requirements/jupyter.txt"
  fi
  command -v "$DPK_PYTHON" >/dev/null ||
    dpk::die "no $DPK_PYTHON on PATH after the environment set-up ($PATH): fix the environment part of the template"
  command -v pbsdsh >/dev/null ||
    dpk::die "no pbsdsh on PATH ($PATH): run inside a PBS Pro job (or put tests/fakepbs/bin first on PATH)"
  DPK_PROGRAM=()
  if [[ $DPK_MODE == production ]]; then
    read -r -a DPK_PROGRAM <<<"${PROGRAM:-}"
    [[ ${#DPK_PROGRAM[@]} -gt 0 ]] ||
      dpk::die "PROGRAM is empty: set the command to run in the template or with qsub -v PROGRAM=..."
  fi
  return 0
}

# ------------------------------------------------------------------ 2 prepare

# Make the job's private log folder and name its files; drop files an earlier job left.
# Reads: LOG_DIR, SCHEDULER_FILE, PBS_JOBID, TMPDIR. Sets: DPK_F_* (the job's files; from
# here on every message also goes to DPK_F_LOG, LOG_DIR/job.log), the
# DASK_PBS_KIT_* variables the scheduler's plugin reads (through env.sh).
dpk::prepare() {
  umask 077
  mkdir -p "$LOG_DIR" || dpk::die "cannot create the log folder $LOG_DIR (set LOG_DIR to a writable folder on shared storage)"
  chmod 700 "$LOG_DIR"
  # Workers and the readiness check use this per-job copy only: never a stale file.
  DPK_F_JOB_SCHEDULER=$LOG_DIR/scheduler.json
  DPK_F_ENV=$LOG_DIR/env.sh
  DPK_F_PLAN=$LOG_DIR/plan.tsv
  DPK_F_ROLL=$LOG_DIR/workers.txt
  DPK_F_CLOSED=$LOG_DIR/scheduler.closed
  DPK_F_DIED=$LOG_DIR/scheduler.died
  DPK_F_INFO=$LOG_DIR/cluster-info.txt
  DPK_F_ERR=$LOG_DIR/helper  # + .setup.err, .ready.err ...: what a helper said, until relayed
  DPK_F_TLS_CONFIG=${SCHEDULER_FILE%.json}.tls.json
  DPK_F_JUPYTER=${SCHEDULER_FILE%.json}.jupyter.json  # how to reach JupyterLab (JUPYTER=yes)
  # The FIFO of dpk::nap: on this node's own disk (PBS's TMPDIR), not on shared storage.
  DPK_F_NAP=${TMPDIR:-/tmp}/dask-pbs-nap.$PBS_JOBID
  # A worker job's SCHEDULER_FILE is the cluster's it joins: not its to remove.
  [[ $DPK_MODE == workers ]] || rm -f "$SCHEDULER_FILE" "$DPK_F_TLS_CONFIG" "$DPK_F_JUPYTER"
  rm -f "$DPK_F_JOB_SCHEDULER" "$DPK_F_ROLL" "$DPK_F_CLOSED" "$DPK_F_DIED" "$LOG_DIR"/*.iface \
    "$DPK_F_NAP" "$LOG_DIR/job.log" "$DPK_F_PLAN"
  DPK_F_LOG=$LOG_DIR/job.log
  mkfifo "$DPK_F_NAP" 2>/dev/null || DPK_F_NAP=""
  export DASK_PBS_KIT_ROLL=$DPK_F_ROLL DASK_PBS_KIT_CLOSED=$DPK_F_CLOSED DASK_PBS_KIT_STOP_WAIT=0.5
  # The plugin tells the workers to add their dashboards once this file exists (announce).
  export DASK_PBS_KIT_READY_FILE=$DPK_F_INFO
  dpk::log "job $PBS_JOBID: logs in $LOG_DIR/"
}

# ------------------------------------------------------------------ 3 read the job

# Make the job's certificates (TLS=yes), compute the launch plan (what PBS booked: see
# kit.py plan) and write the task environment: one helper (kit.py job-setup) does the
# three at once, in one Python start. The scheduler's task needs only the environment
# file: the helper says when it exists, and the task starts then (dpk::start_scheduler),
# while the certificates and the plan are made; it waits for them where it needs them.
# Then give this script's own later clients (PROGRAM) the client certificate, after
# env.sh is written: the tasks must not get it.
# Reads: knobs, DPK_F_*, DPK_J_* (workers mode). Sets: DPK_TLS_DIR (this job's own
# certificates; empty: none), DPK_TASK_TLS (the certificates the tasks use; empty: plain
# tcp), the plan (dpk::parse_plan) and, once the scheduler runs, its task (DPK_T_*).
dpk::read_job() {
  local fd line status="" early_line early_node
  local -a plan_mode=() tls=() early=(--say-scheduler-may-start --say-workers-may-start)
  DPK_TLS_DIR="" DPK_TASK_TLS="" DPK_EARLY=()
  dpk::worker_args
  if [[ $DPK_MODE == workers ]]; then
    # The cluster's own certificates (never this job's to delete), its TLS or not; the
    # nannies' preload (dask_pbs_kit.grow) from the kit's helpers.
    DPK_TASK_TLS=$DPK_J_TLS_DIR plan_mode=(--no-scheduler) early=()
    export PYTHONPATH=$DPK_KIT_DIR/helpers${PYTHONPATH:+:$PYTHONPATH}
  elif [[ $TLS == yes ]]; then
    DPK_TLS_DIR=$LOG_DIR/tls
    DPK_TASK_TLS=$DPK_TLS_DIR
    tls=(--tls "$DPK_TLS_DIR" --name "$PBS_JOBID")
  fi
  # The helper reads this script's initial environment (/proc/$$/environ), to tell what
  # the template changed from what PBS gave. Its lines come as it works, its status last.
  exec {fd}< <(
    "$DPK_PYTHON" "$DPK_KIT_DIR/helpers/kit.py" job-setup --env-file "$DPK_F_ENV" --plan-file "$DPK_F_PLAN" \
      --initial-from "$$" "${tls[@]}" "${early[@]}" -- --nworkers "$NWORKERS" --nthreads "$NTHREADS" \
      --reserve "$MEMORY_RESERVE" --worker-on-scheduler-chunk "$WORKER_ON_SCHEDULER_CHUNK" \
      --walltime "$WALLTIME" --started "$((DPK_STARTED_US / 1000000))" "${plan_mode[@]}" \
      2>"$DPK_F_ERR.setup.err"
    printf 'status %s\n' "$?"
  )
  while IFS= read -r -u "$fd" line; do
    case $line in
      scheduler-may-start$'\t'*)
        IFS=$'\t' read -r _ DPK_P_SCHED_LINE DPK_P_SCHED_NODE <<<"$line"
        DPK_P_SCHED_CHUNK=0
        dpk::start_scheduler
        ;;
      worker-may-start$'\t'*)
        IFS=$'\t' read -r _ early_line early_node <<<"$line"
        dpk::start_early_worker "$early_line" "$early_node"
        ;;
      "status "*) status=${line#status } ;;
    esac
  done
  exec {fd}<&-
  case ${#DPK_EARLY[@]} in
    0) ;;
    1) dpk::log "started 1 worker task before the plan, on line 1 of \$PBS_NODEFILE (it takes its chunk's row of the plan)" ;;
    *) dpk::log "started ${#DPK_EARLY[@]} worker tasks before the plan, one per line of \$PBS_NODEFILE from line 1 (each takes its chunk's row of the plan)" ;;
  esac
  dpk::relay "$DPK_F_ERR.setup.err"
  # The helper has said what is wrong (the EXIT trap stops a scheduler it let start).
  [[ $status == 0 ]] || dpk::die "the job could not be prepared (see the message above; logs in $LOG_DIR/)"
  dpk::place_scheduler
  dpk::log "read the job's chunks from $DPK_P_JOB_SOURCE"
  dpk::check_size
  if [[ -n $DPK_TLS_DIR ]]; then
    # No require-encryption here: a PROGRAM may also start a LocalCluster of its own.
    export DASK_DISTRIBUTED__COMM__TLS__CA_FILE=$DPK_TLS_DIR/ca.pem
    export DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT=$DPK_TLS_DIR/client.pem
    export DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY=$DPK_TLS_DIR/client.key
  fi
}

# Read the plan, and check that the scheduler started where the plan puts it (chunk 0's
# first node-file line: PBS runs the job script on chunk 0's host, and job-setup names
# that line as soon as env.sh exists; a plan it could make had a node file to read).
# Reads: DPK_F_PLAN, DPK_P_SCHED_{LINE,NODE} as started. Sets: the plan.
dpk::place_scheduler() {
  local started="${DPK_P_SCHED_LINE:-none} (node ${DPK_P_SCHED_NODE:-none})"
  dpk::parse_plan <"$DPK_F_PLAN"
  [[ $DPK_MODE == workers || $started == "$DPK_P_SCHED_LINE (node $DPK_P_SCHED_NODE)" ]] ||
    dpk::die "the plan puts the scheduler on line $DPK_P_SCHED_LINE of \$PBS_NODEFILE (node $DPK_P_SCHED_NODE), but it started on line $started: please report it to dask-pbs-kit with $DPK_F_PLAN and \$PBS_NODEFILE"
}

# A job of many worker processes: warn when READY_TIMEOUT looks short for its size. The
# scheduler registers one worker process in 6-7 ms of CPU on a slow core (bench/README.md,
# Scale: 25 s for 4,000), and every node imports Python from shared storage at once; allow
# 50 ms per process beyond the default 120 s. (Each task also fits Dask's connect timeout
# and the scheduler's listen backlog to the size it is given: task.sh's workers=.)
# Reads: DPK_P_EXPECTED, READY_TIMEOUT.
dpk::check_size() {
  local wanted=$((120 + DPK_P_EXPECTED / 20))
  [[ $DPK_P_EXPECTED -ge 500 && $READY_TIMEOUT -lt $wanted ]] || return 0
  dpk::warn "READY_TIMEOUT=$READY_TIMEOUT s for $DPK_P_EXPECTED worker processes may be short: the scheduler registers them one at a time and every node imports Python from shared storage at once; $wanted s or more is safer (qsub -v READY_TIMEOUT=$wanted)"
}

# Read the launch plan (kit.py plan's tab-separated lines) from stdin.
# Sets: DPK_P_JOB_SOURCE, DPK_P_WALLTIME_LEFT (-1: unknown), DPK_P_WALLTIME_SOURCE,
# DPK_P_SCHED_{CHUNK,LINE,NODE}, DPK_P_EXPECTED (worker processes), and one entry per CPU
# worker chunk, and per GPU of a GPU chunk, in DPK_P_W_{CHUNK,LINE,NODE,NPROC,THREADS,
# MEMORY,HOST_PROCS,PPM,BYTES,GPU,CHUNK_GPUS,HOST_GPU,HOST_GPUS}.
dpk::parse_plan() {
  local kind a b c d e f g h i j k l m
  DPK_P_W_CHUNK=() DPK_P_W_LINE=() DPK_P_W_NODE=() DPK_P_W_NPROC=() DPK_P_W_THREADS=()
  DPK_P_W_MEMORY=() DPK_P_W_HOST_PROCS=() DPK_P_W_PPM=() DPK_P_W_BYTES=()
  DPK_P_W_GPU=() DPK_P_W_CHUNK_GPUS=() DPK_P_W_HOST_GPU=() DPK_P_W_HOST_GPUS=()
  DPK_P_EXPECTED=0 DPK_P_WALLTIME_LEFT=-1 DPK_P_WALLTIME_SOURCE=none DPK_P_JOB_SOURCE=""
  while IFS=$'\t' read -r kind a b c d e f g h i j k l m; do
    case $kind in
      job) DPK_P_JOB_SOURCE=$a ;;
      walltime) DPK_P_WALLTIME_LEFT=$b DPK_P_WALLTIME_SOURCE=$c ;;
      scheduler) DPK_P_SCHED_CHUNK=$a DPK_P_SCHED_LINE=$b DPK_P_SCHED_NODE=$c ;;
      worker | gpu-worker)
        DPK_P_W_CHUNK+=("$a") DPK_P_W_LINE+=("$b") DPK_P_W_NODE+=("$c") DPK_P_W_NPROC+=("$d")
        DPK_P_W_THREADS+=("$e") DPK_P_W_MEMORY+=("$f") DPK_P_W_HOST_PROCS+=("$g")
        DPK_P_W_PPM+=("$h") DPK_P_W_BYTES+=("$i")
        # A GPU chunk has one line per GPU: its GPU in the chunk, the chunk's GPUs, its
        # entry in its host's device list and that list's length (empty on a CPU line).
        DPK_P_W_GPU+=("${j:-}") DPK_P_W_CHUNK_GPUS+=("${k:-}") DPK_P_W_HOST_GPU+=("${l:-}")
        DPK_P_W_HOST_GPUS+=("${m:-}")
        DPK_P_EXPECTED=$((DPK_P_EXPECTED + d))
        ;;
    esac
  done
}

# ------------------------------------------------------------------ 4 start

# Start the scheduler's task (its dashboard as DASHBOARD says), at the line and on the
# node job-setup gave, before the plan is read (dpk::read_job): it learns the job's size
# from the plan file itself (task.sh's workers=plan:FILE) and waits for the certificates
# once Dask is imported (tls_pending=yes).
# Reads: knobs, DPK_F_*, DPK_P_SCHED_{CHUNK,LINE,NODE}. Sets: DPK_T_* (task 0).
dpk::start_scheduler() {
  DPK_T_PID=() DPK_T_LINE=() DPK_T_NODE=() DPK_T_PIDFILE=() DPK_T_LOG=() DPK_T_WATCH=()
  local -a args extra
  args=(--scheduler-file "$DPK_F_JOB_SCHEDULER" --port "$SCHEDULER_PORT"
    --preload "$DPK_LIB_DIR/scheduler_preload.py")
  case $DASHBOARD in
    network) args+=(--dashboard-address ":$DASHBOARD_PORT") ;;
    loopback) args+=(--dashboard-address "127.0.0.1:$DASHBOARD_PORT") ;;
    off) args+=(--no-dashboard) ;;
  esac
  read -r -a extra <<<"$EXTRA_SCHEDULER_ARGS"
  dpk::log "starting the scheduler on chunk $DPK_P_SCHED_CHUNK (node $DPK_P_SCHED_NODE)"
  dpk::start_task scheduler "$DPK_P_SCHED_CHUNK" "$DPK_P_SCHED_LINE" "$DPK_P_SCHED_NODE" 1 \
    workers="plan:$DPK_F_PLAN" tls_pending=yes -- "${args[@]}" "${extra[@]}"
}

# Start the worker processes of every worker chunk.
# Reads: the plan, knobs, DPK_F_*, DPK_W_* and DPK_EARLY (dpk::read_job). Appends to
# DPK_T_* (one entry per task: DPK_T_PID its pbsdsh, DPK_T_LINE, DPK_T_NODE,
# DPK_T_PIDFILE, DPK_T_LOG, DPK_T_WATCH for the readiness check).
dpk::start_workers() {
  local i label early now
  local -a args gpu
  for i in "${!DPK_P_W_CHUNK[@]}"; do
    label=${DPK_P_W_CHUNK[i]} gpu=() early=${DPK_EARLY[${DPK_P_W_CHUNK[i]}]:-}
    if [[ -z ${DPK_P_W_GPU[i]} && -n $early ]]; then
      if [[ ${DPK_P_W_LINE[i]} == "${DPK_P_W_CHUNK[i]}" ]]; then
        # Started before the plan on this chunk's line: it takes this row itself.
        DPK_T_WATCH+=(--watch "worker:$label:${DPK_P_W_NODE[i]}:${DPK_T_PID[early]}:${DPK_T_LOG[early]}:${DPK_P_W_NPROC[i]}")
        continue
      fi
      # The guess was wrong (a chunk of no node-file line before it): that task ends on
      # its own once it reads the plan; this chunk's task takes its log's name after it.
      dpk::now_us now
      dpk::wait_gone "${DPK_T_PID[early]}" "$((now + READY_TIMEOUT * 1000000))" ||
        dpk::die "the worker task started before the plan on line ${DPK_T_LINE[early]} did not end (see ${DPK_T_LOG[early]})"
    fi
    args=(--scheduler-file "$DPK_F_JOB_SCHEDULER" --nthreads "${DPK_P_W_THREADS[i]}" "${DPK_W_BOARD[@]}")
    if [[ -n ${DPK_P_W_GPU[i]} ]]; then
      # One task per GPU: it sees only its own device (task.sh asks kit.py gpu which).
      label=${DPK_P_W_CHUNK[i]}-gpu${DPK_P_W_GPU[i]}
      args+=(--name "chunk-$label" --resources GPU=1)
      gpu=(gpu="${DPK_P_W_HOST_GPU[i]}" gpus="${DPK_P_W_HOST_GPUS[i]}"
        chunk_gpus="${DPK_P_W_CHUNK_GPUS[i]}" worker_command="$WORKER_COMMAND"
        cuda_args="$EXTRA_CUDA_WORKER_ARGS")
    else
      args+=(--name "chunk-$label" --nworkers "${DPK_P_W_NPROC[i]}")
    fi
    dpk::start_task worker "$label" "${DPK_P_W_LINE[i]}" "${DPK_P_W_NODE[i]}" \
      "${DPK_P_W_NPROC[i]}" memory="${DPK_P_W_MEMORY[i]}" host_procs="${DPK_P_W_HOST_PROCS[i]}" \
      reserve_ppm="${DPK_P_W_PPM[i]}" reserve_bytes="${DPK_P_W_BYTES[i]}" workers="$DPK_P_EXPECTED" \
      "${gpu[@]}" -- "${args[@]}" "${DPK_W_EXTRA[@]}"
  done
  dpk::log_workers
}

# Start one Dask process on a node through pbsdsh, in the background.
# Arguments: role chunk nodefile-line node processes [task.sh settings...] -- [dask args...].
# Appends to DPK_T_*.
dpk::start_task() {
  local role=$1 chunk=$2 line=$3 node=$4 nproc=$5
  shift 5
  local log=$LOG_DIR/$role-$chunk.log
  local pid_file=$LOG_DIR/$role-$chunk.pid
  local -a shell=(/bin/bash)
  # A worker job's tasks ignore SIGTERM from their first instruction, every process they
  # start too (an ignored signal stays ignored across fork and exec): on qdel PBS signals
  # every process of the job at once, and the job must retire its workers first.
  # shellcheck disable=SC2016 # $0 and $@ expand in the task's shell
  [[ $DPK_MODE == workers ]] && shell=(/bin/bash -c 'trap "" TERM; exec /bin/bash "$0" "$@"')
  : >"$log"
  # pbsdsh's own output (a spawn failure, a task's exit status) goes beside the log.
  pbsdsh -n "$line" -- "${shell[@]}" "$DPK_LIB_DIR/task.sh" role="$role" env="$DPK_F_ENV" \
    log="$log" pid="$pid_file" node="$node" kit="$DPK_KIT_DIR" python="$DPK_PYTHON" \
    interface="$INTERFACE" iface="$LOG_DIR/$role-$chunk.iface" first="${DPK_J_FIRST:-$DPK_P_SCHED_NODE}" \
    scheduler_file="${DPK_J_COPY:-$DPK_F_JOB_SCHEDULER}" timeout="$READY_TIMEOUT" tls="$DPK_TASK_TLS" \
    omp="$WORKER_OMP_THREADS" "$@" >"$log.pbsdsh" 2>&1 &
  DPK_T_PID+=("$!") DPK_T_LINE+=("$line") DPK_T_NODE+=("$node") DPK_T_PIDFILE+=("$pid_file")
  DPK_T_LOG+=("$log")
  # No NPROC: a worker started before the plan, watched once the plan tells its size.
  [[ -z $nproc ]] || DPK_T_WATCH+=(--watch "$role:$chunk:$node:$!:$log:$nproc")
}

# The workers' arguments every chunk shares. Sets DPK_W_BOARD (their dashboards: pages
# linked from the scheduler's, following DASHBOARD) and DPK_W_EXTRA (EXTRA_WORKER_ARGS).
dpk::worker_args() {
  DPK_W_BOARD=()
  case $DASHBOARD in
    loopback) DPK_W_BOARD=(--dashboard-address 127.0.0.1:0) ;;
    off) DPK_W_BOARD=(--no-dashboard) ;;
  esac
  read -r -a DPK_W_EXTRA <<<"$EXTRA_WORKER_ARGS"
}

# A worker task on node-file line $1 (node $2), started while job-setup still waits for
# qstat, guessed to be chunk $1's (kit.py job-setup --say-workers-may-start): task.sh's
# plan, chunk and line; dask_start gives it the row's --nthreads, --name, --nworkers and
# memory, once Dask is imported. Reads DPK_W_* (dpk::worker_args, once per job). Sets
# DPK_EARLY[$1] to its index in DPK_T_*; its readiness watch comes with the plan
# (dpk::start_workers).
dpk::start_early_worker() {
  DPK_EARLY[$1]=${#DPK_T_PID[@]}
  dpk::start_task worker "$1" "$1" "$2" "" plan="$DPK_F_PLAN" chunk="$1" line="$1" \
    tls_pending=yes -- --scheduler-file "$DPK_F_JOB_SCHEDULER" "${DPK_W_BOARD[@]}" "${DPK_W_EXTRA[@]}"
}

# Say what runs where, in one line of the job's log (and the banner's `workers:` line):
# consecutive chunks that run the same are told once. Sets DPK_LAYOUT.
dpk::log_workers() {
  local i chunk what last="" from="" to="" out="" processes threads memory
  local -a parts=()
  for i in "${!DPK_P_W_CHUNK[@]}"; do
    chunk=${DPK_P_W_CHUNK[i]}
    [[ -n ${DPK_P_W_GPU[i]} && ${DPK_P_W_GPU[i]} != 0 ]] && continue  # told with GPU 0
    threads="${DPK_P_W_THREADS[i]} threads"
    [[ ${DPK_P_W_THREADS[i]} == 1 ]] && threads="1 thread"
    memory="${DPK_P_W_MEMORY[i]} bytes"
    [[ ${DPK_P_W_MEMORY[i]} == auto ]] && memory="a share of its host's"
    if [[ -n ${DPK_P_W_GPU[i]} ]]; then
      what="${DPK_P_W_CHUNK_GPUS[i]} GPU workers (one per GPU, GPU=1) of $threads, memory $memory"
    else
      processes="${DPK_P_W_NPROC[i]} worker processes"
      [[ ${DPK_P_W_NPROC[i]} == 1 ]] && processes="1 worker process"
      what="$processes of $threads, memory $memory"
    fi
    [[ $chunk == "$DPK_P_SCHED_CHUNK" && $DPK_MODE != workers ]] && what+=" (beside the scheduler)"
    if [[ $what == "$last" && $chunk == $((to + 1)) ]]; then
      to=$chunk
      continue
    fi
    [[ -n $last ]] && parts+=("$(dpk::chunks_text "$from" "$to"): $last")
    from=$chunk to=$chunk last=$what
  done
  [[ -n $last ]] && parts+=("$(dpk::chunks_text "$from" "$to"): $last")
  out=$(IFS=';'; printf '%s' "${parts[*]}")
  DPK_LAYOUT=${out//;/; }
  processes="$DPK_P_EXPECTED worker processes"
  [[ $DPK_P_EXPECTED == 1 ]] && processes="1 worker process"
  dpk::log "starting $processes: $DPK_LAYOUT"
}

# "chunk 3" or "chunks 1-31". Arguments: from to.
dpk::chunks_text() {
  if [[ $1 == "$2" ]]; then printf 'chunk %s' "$1"; else printf 'chunks %s-%s' "$1" "$2"; fi
}

# ------------------------------------------------------------------ 5 wait

# Wait for the scheduler file and every worker, or fail naming what is missing.
# Reads: DPK_T_WATCH, DPK_F_*, DPK_J_* (workers mode). Sets: DPK_READY_US.
dpk::wait_ready() {
  local status=0
  local -a where=(--scheduler-file "$DPK_F_JOB_SCHEDULER" --roll "$DPK_F_ROLL")
  # A worker job's workers register on the cluster's own roll.
  [[ $DPK_MODE == workers ]] && where=(--scheduler-file "$DPK_J_COPY" --roll "$DPK_J_LOG_DIR/workers.txt"
    --name-prefix "$DPK_J_PREFIX")
  "$DPK_PYTHON" "$DPK_KIT_DIR/helpers/kit.py" wait-ready "${where[@]}" --timeout "$READY_TIMEOUT" \
    "${DPK_T_WATCH[@]}" 2>"$DPK_F_ERR.ready.err" || status=$?
  dpk::relay "$DPK_F_ERR.ready.err"
  [[ $status -eq 0 ]] || dpk::die "the cluster did not start (logs in $LOG_DIR/)"
  dpk::now_us DPK_READY_US
}

# ------------------------------------------------------------------ 6 announce

# Write the banner (where the cluster is, how to reach it) to LOG_DIR/cluster-info.txt,
# then publish SCHEDULER_FILE (and, with TLS, the client's configuration first, beside it)
# in one rename each, then print the banner: PBS shows the job's output only at its end.
# Reads: the plan, DPK_F_*, DPK_TLS_DIR, DPK_READY_US. Sets: DPK_PUB_SCHEDULER and
# DPK_PUB_TLS (the published contents: teardown removes the files only if still ours).
dpk::announce() {
  local -a tls=()
  [[ -n $DPK_TLS_DIR ]] && tls=(--tls-dir "$DPK_TLS_DIR" --tls-config "$DPK_F_TLS_CONFIG")
  local -A chunks=()
  local chunk
  for chunk in "${DPK_P_W_CHUNK[@]}"; do chunks[$chunk]=1; done
  "$DPK_PYTHON" "$DPK_KIT_DIR/helpers/kit.py" banner --scheduler-file "$DPK_F_JOB_SCHEDULER" \
    --published "$SCHEDULER_FILE" --workers "$DPK_P_EXPECTED" --chunks "${#chunks[@]}" \
    --layout "$DPK_LAYOUT" \
    --took "$(dpk::seconds "$((DPK_READY_US - DPK_STARTED_US))")" --dashboard "$DASHBOARD" \
    --node "$DPK_P_SCHED_NODE" --login-host "${PBS_O_HOST:-LOGIN_NODE}" --log-dir "$LOG_DIR" \
    --interface "$INTERFACE" "${tls[@]}" >"$DPK_F_INFO" 2>"$DPK_F_ERR.banner.err" ||
    dpk::warn "the banner could not be written (the cluster runs: see $DPK_F_JOB_SCHEDULER)"
  dpk::relay "$DPK_F_ERR.banner.err"
  DPK_PUB_SCHEDULER="" DPK_PUB_TLS=""
  if [[ -n $DPK_TLS_DIR ]]; then
    dpk::read_file DPK_PUB_TLS "$DPK_TLS_DIR/client-config.json"
    dpk::copy_atomic "$DPK_TLS_DIR/client-config.json" "$DPK_F_TLS_CONFIG"
  fi
  dpk::read_file DPK_PUB_SCHEDULER "$DPK_F_JOB_SCHEDULER"
  dpk::copy_atomic "$DPK_F_JOB_SCHEDULER" "$SCHEDULER_FILE"
  local banner
  dpk::read_file banner "$DPK_F_INFO"
  printf '%s' "$banner"
  printf '%s' "$banner" >>"$DPK_F_LOG"
}

# Copy a file in one rename (mode 0600 under the job's umask). Arguments: from to.
dpk::copy_atomic() {
  if ! cp "$1" "$2.$PBS_JOBID.tmp" || ! mv -f "$2.$PBS_JOBID.tmp" "$2"; then
    rm -f "$2.$PBS_JOBID.tmp"
    dpk::die "cannot write $2 (set SCHEDULER_FILE to a path in a writable folder)"
  fi
}

# JUPYTER=yes (interactive): start JupyterLab on this node, the scheduler's, once the
# cluster is ready: with the job's environment (its kernels get the client certificate and
# DASK_SCHEDULER_FILE, so a plain Client(scheduler_file=...) connects), from JUPYTER_DIR,
# on a free port, bound as the dashboard is, with a token read from a private file (never
# without one); the Client's dashboard link goes through Jupyter's proxy, so one tunnel
# reaches both. Wait until it answers, or fail the job with its log's last lines; then add
# its lines to the banner. Reads: knobs, DPK_F_*, DPK_P_SCHED_NODE. Sets: DPK_JUPYTER_PID,
# DPK_PUB_JUPYTER (the published description, removed at the end if still ours).
dpk::start_jupyter() {
  DPK_JUPYTER_PID=""
  [[ $JUPYTER == yes ]] || return 0
  local dir=$LOG_DIR/jupyter log=$LOG_DIR/jupyter.log address port status=0 lines
  local -a as_root=() loopback=()
  "$DPK_PYTHON" "$DPK_KIT_DIR/helpers/kit.py" jupyter-prepare "$dir" \
    --scheduler-file "$DPK_F_JOB_SCHEDULER" --dashboard "$DASHBOARD" >"$dir.where" \
    2>"$DPK_F_ERR.jupyter.err" || status=$?
  dpk::relay "$DPK_F_ERR.jupyter.err"
  [[ $status -eq 0 ]] || dpk::die "cannot prepare JupyterLab's folder $dir"
  read -r address port <"$dir.where"
  rm -f "$dir.where"
  [[ $DASHBOARD == network ]] || loopback=(--loopback)  # then bound to the node's loopback
  [[ $(id -u) -eq 0 ]] && as_root=(--allow-root)  # the fake PBS's tests; no site runs jobs as root
  dpk::log "starting JupyterLab on node $DPK_P_SCHED_NODE (JUPYTER=yes, in $JUPYTER_DIR; log $log)"
  (
    cd "$JUPYTER_DIR" || exit 1
    unset JUPYTER_TOKEN  # the token comes from the file: a kernel can read the environment
    export JUPYTER_TOKEN_FILE=$dir/token JUPYTER_RUNTIME_DIR=$dir/runtime IPYTHONDIR=$dir/ipython
    export JUPYTERLAB_WORKSPACES_DIR=$dir/workspaces DASK_SCHEDULER_FILE=$SCHEDULER_FILE
    # Filled in by distributed with the dashboard's port: a link relative to Jupyter's page.
    [[ $port == none ]] || export DASK_DISTRIBUTED__DASHBOARD__LINK="/proxy/{port}/status"
    exec jupyter-lab --no-browser --ip="$address" --port=0 --ServerApp.root_dir="$JUPYTER_DIR" \
      --LabApp.app_settings_dir="$dir/settings" --NotebookNotary.data_dir="$dir/notary" \
      --LanguageServerManager.autodetect=False --LabApp.news_url=None "${as_root[@]}"
  ) >"$log" 2>&1 &
  DPK_JUPYTER_PID=$!
  "$DPK_PYTHON" "$DPK_KIT_DIR/helpers/kit.py" jupyter-wait --runtime "$dir/runtime" \
    --pid "$DPK_JUPYTER_PID" --log "$log" --timeout "$READY_TIMEOUT" --node "$DPK_P_SCHED_NODE" \
    --login-host "${PBS_O_HOST:-LOGIN_NODE}" --publish "$DPK_F_JUPYTER" --info "$DPK_F_INFO" "${loopback[@]}" \
    --dashboard-port "$port" >"$dir/banner" 2>"$DPK_F_ERR.jupyter.err" || status=$?
  dpk::relay "$DPK_F_ERR.jupyter.err"
  [[ $status -eq 0 ]] || dpk::die "JupyterLab did not start (JUPYTER=yes): the job ends (see $log)"
  dpk::read_file DPK_PUB_JUPYTER "$DPK_F_JUPYTER"
  dpk::read_file lines "$dir/banner"
  rm -f "$dir/banner"
  printf '%s' "$lines" >>"$DPK_F_LOG"
  printf '%s' "$lines"
}

# ------------------------------------------------------------------ 7 the job's work

# True while the scheduler runs: its process on this node (the mother superior) is alive
# and it has not said that it closed (its Python may take a while longer to exit).
# Reads: DPK_T_PID[0], DPK_T_PIDFILE[0], DPK_F_CLOSED.
dpk::scheduler_alive() {
  local pid=""
  [[ ! -e $DPK_F_CLOSED ]] || return 1
  read -r pid 2>/dev/null <"${DPK_T_PIDFILE[0]}" || true
  if [[ $pid =~ ^[0-9]+$ ]]; then
    dpk::alive "$pid"
  else
    dpk::alive "${DPK_T_PID[0]}"  # the task has not started yet: its pbsdsh
  fi
}

# Interactive mode: hold the cluster until the walltime less WALLTIME_MARGIN, until the
# scheduler ends (a client called shutdown()) or until JupyterLab does (its File > Shut
# Down). Reads: DPK_P_WALLTIME_*, DPK_F_CLOSED, DPK_JUPYTER_PID.
# Returns: 0, or 1 if the scheduler died.
dpk::hold() {
  local hold=-1 end
  if [[ $DPK_P_WALLTIME_LEFT -ge 0 ]]; then
    hold=$((DPK_P_WALLTIME_LEFT - WALLTIME_MARGIN))
    if [[ $hold -le 0 ]]; then
      dpk::log "only $DPK_P_WALLTIME_LEFT s of walltime left, not more than WALLTIME_MARGIN=$WALLTIME_MARGIN s: stopping the cluster now (ask for more walltime, or lower WALLTIME_MARGIN)"
      return 0
    fi
    end=$((SECONDS + hold))
    local from=$DPK_P_WALLTIME_SOURCE
    [[ $from == pbs ]] && from=PBS
    dpk::log "holding the cluster for $hold s (the walltime left, known from $from, less WALLTIME_MARGIN=$WALLTIME_MARGIN s); qdel $PBS_JOBID ends it sooner"
  else
    dpk::log "holding the cluster until qdel $PBS_JOBID or the walltime (unknown: set WALLTIME to stop cleanly before it)"
  fi
  while dpk::scheduler_alive; do
    if [[ $hold -ge 0 && $SECONDS -ge $end ]]; then
      dpk::log "walltime nearly over: shutting the cluster down"
      return 0
    fi
    if [[ -n ${DPK_JUPYTER_PID:-} ]] && ! dpk::alive "$DPK_JUPYTER_PID"; then
      dpk::log "JupyterLab has ended (File > Shut Down): ending the job"
      return 0
    fi
    dpk::count_workers
    dpk::nap 1
  done
  dpk::await_own_signal
  if [[ -e $DPK_F_CLOSED ]]; then
    dpk::log "the scheduler has been shut down (by a client): ending the job"
    return 0
  fi
  # Signalled and gone without closing, with no signal here within that second (a kill of
  # the scheduler alone, or a trap lost as dpk::on_signal tells, before it was fixed): it
  # is the job's end, not a crash: end as a qdel would.
  if dpk::scheduler_signalled; then
    dpk::log "the scheduler was stopped by a signal (its log says so: qdel, the walltime or a kill) and did not close: ending the job"
    return 0
  fi
  dpk::warn "the scheduler died (see $LOG_DIR/scheduler-$DPK_P_SCHED_CHUNK.log)"
  return 1
}

# The scheduler has ended. If a signal stopped it (its log says "Received signal"), it may
# be the job's own end: qdel and the walltime send SIGTERM to every process of the job at
# once, and on a busy node the scheduler can close (or die of a second SIGTERM, from its
# pbsdsh) before this script's trap has run. Wait up to 1 s for that signal: the trap then
# ends the job as a qdel, without a false "died" or "shut down by a client". A client's
# shutdown() or a crash logs no signal, and is told at once.
dpk::await_own_signal() {
  local i
  dpk::scheduler_signalled || return 0
  for ((i = 0; i < 10; i++)); do
    dpk::nap 0.1
  done
}

# True if the scheduler's log says a signal stopped it. Reads: DPK_T_LOG[0].
dpk::scheduler_signalled() {
  grep -q "Received signal SIG" "${DPK_T_LOG[0]}" 2>/dev/null
}

# Say so when the cluster's roll changes (workers of worker jobs joining or leaving, or a
# worker lost): "the cluster has 5 workers (3 from worker jobs: 3 of job 1235)", in the job's
# output and job.log. Reads the roll without a fork; asks the helper only on a change.
# Reads and sets DPK_ROLL_SEEN (the roll as last seen).
dpk::count_workers() {
  local roll count
  [[ -n ${DPK_F_ROLL:-} ]] || return 0
  dpk::read_file roll "$DPK_F_ROLL"
  [[ $roll != "${DPK_ROLL_SEEN-$roll}" ]] || { DPK_ROLL_SEEN=$roll; return 0; }
  DPK_ROLL_SEEN=$roll
  count=$("$DPK_PYTHON" "$DPK_KIT_DIR/helpers/dashboard_url.py" "$DPK_F_JOB_SCHEDULER" --workers 2>/dev/null) ||
    return 0
  dpk::log "the cluster has $count"
}

# Production mode: run PROGRAM from the submit folder; the job waits for the program itself
# (and so sees it end at once); a watcher beside it stops the program if the scheduler dies
# meanwhile. A scheduler closed cleanly (the program called client.shutdown()) stops
# nothing: the program may have work left that needs no cluster.
# Reads: DPK_PROGRAM, SCHEDULER_FILE. Sets: DPK_PROGRAM_PID while it runs, DPK_WATCHER_PID,
# DPK_PROGRAM_END_US. Returns: the program's status, 1 if the scheduler died.
dpk::run_program() {
  local status=0
  dpk::log "running: ${DPK_PROGRAM[*]} (in $PBS_O_WORKDIR)"
  export DASK_SCHEDULER_FILE=$SCHEDULER_FILE
  (cd "$PBS_O_WORKDIR" && exec "${DPK_PROGRAM[@]}") &
  DPK_PROGRAM_PID=$!
  dpk::watch_scheduler "$DPK_PROGRAM_PID" &
  DPK_WATCHER_PID=$!
  wait "$DPK_PROGRAM_PID" || status=$?
  dpk::now_us DPK_PROGRAM_END_US
  DPK_PROGRAM_PID=""
  dpk::stop_watcher
  if [[ -e $DPK_F_DIED ]]; then
    return 1
  fi
  dpk::log "the program exited with status $status"
  return "$status"
}

# In the background, beside the program (argument: its PID): if the scheduler ends without
# having closed (a crash, the OOM killer), mark DPK_F_DIED and stop the program, which
# would otherwise wait on a cluster that is gone. Checks twice a second.
dpk::watch_scheduler() {
  while dpk::scheduler_alive; do
    dpk::nap 0.5
  done
  dpk::await_own_signal  # a qdel's SIGTERM ends this watcher (default action) in the meantime
  [[ -e $DPK_F_CLOSED ]] && return 0
  : >"$DPK_F_DIED"
  dpk::warn "the scheduler died while the program ran (see $LOG_DIR/scheduler-$DPK_P_SCHED_CHUNK.log): stopping the program"
  kill -TERM "$1" 2>/dev/null
}

# Stop the scheduler watcher of dpk::run_program, if any.
dpk::stop_watcher() {
  [[ -n ${DPK_WATCHER_PID:-} ]] || return 0
  kill "$DPK_WATCHER_PID" 2>/dev/null || true
  wait "$DPK_WATCHER_PID" 2>/dev/null || true
  DPK_WATCHER_PID=""
}

# ------------------------------------------------------------------ 8 teardown

# EXIT trap: stop what runs, whatever ended the script, within STOP_TIMEOUT in all (PBS's
# kill delay, 10 s by default, is all a qdel leaves). Stages, each SIGTERM, then a grace
# period, then SIGKILL to what is left:
#   the program (production): until half of STOP_TIMEOUT;
#   the scheduler: its plugin tells every worker to close, gives them half a second to
#     unregister, closes and writes DPK_F_CLOSED; the published files go meanwhile;
#   only if the scheduler did not close (it had died): each task still running, signalled
#     through a second pbsdsh on its node, until STOP_TIMEOUT.
# What is left after a clean close is Dask processes finishing their exit, which PBS ends
# with the job on every node (MoM kills every task of a job when its script exits).
# A worker job instead retires its workers (dpk::retire_added): their data moves to the
# cluster's other workers.
# Reads: everything the phases set. Sets nothing; exits with the status it was called with.
dpk::teardown() {
  local status=$? start now
  trap - EXIT TERM INT HUP
  set +e
  dpk::now_us start
  local half=$((start + STOP_TIMEOUT * 500000)) end=$((start + STOP_TIMEOUT * 1000000))
  dpk::stop_program "$half"
  dpk::stop_jupyter "$half"
  dpk::stop_watcher
  if [[ $DPK_MODE == workers ]]; then
    [[ ${#DPK_T_PID[@]} -eq 0 ]] || dpk::retire_added "$end"
    [[ -z ${DPK_J_RETIRE_FAILED:-} || $status -ne 0 ]] || status=1
  elif [[ ${#DPK_T_PID[@]} -gt 0 ]]; then
    dpk::stop_scheduler "$end"
    dpk::unpublish
    [[ -e $DPK_F_CLOSED ]] || dpk::stop_tasks "$end"
  fi
  [[ -n ${DPK_TLS_DIR:-} ]] && rm -rf "$DPK_TLS_DIR"
  [[ ${JUPYTER:-no} == yes ]] && rm -rf "$LOG_DIR/jupyter"  # its token and runtime files
  [[ -n ${DPK_F_NAP:-} ]] && rm -f "$DPK_F_NAP"
  dpk::now_us now
  if [[ $DPK_MODE == workers ]]; then
    dpk::log "this job's workers left the cluster in $(dpk::seconds "$((now - start))") s; exit status $status"
  elif [[ -n ${DPK_PROGRAM_END_US:-} ]]; then
    dpk::log "cluster stopped $(dpk::seconds "$((now - DPK_PROGRAM_END_US))") s after the program ended; exit status $status"
  elif [[ ${#DPK_T_PID[@]} -gt 0 ]]; then
    dpk::log "cluster stopped in $(dpk::seconds "$((now - start))") s; exit status $status"
  fi
  exit "$status"
}

# Wait until process $1 has gone (see dpk::alive) or the clock passes $2 (microseconds).
# Returns 0 if it has gone.
dpk::wait_gone() {
  local now
  while dpk::alive "$1"; do
    dpk::now_us now
    [[ $now -lt $2 ]] || return 1
    dpk::nap 0.02
  done
}

# The program (production mode), if it still runs: SIGTERM, until $1, then SIGKILL.
dpk::stop_program() {
  [[ -n ${DPK_PROGRAM_PID:-} ]] || return 0
  kill -TERM "$DPK_PROGRAM_PID" 2>/dev/null
  dpk::wait_gone "$DPK_PROGRAM_PID" "$1" && return 0
  dpk::warn "the program did not stop within STOP_TIMEOUT/2 after SIGTERM: killing it"
  kill -KILL "$DPK_PROGRAM_PID" 2>/dev/null
}

# JupyterLab (JUPYTER=yes), if it still runs: SIGTERM (it stops its kernels and exits
# within a second or two), until $1, then SIGKILL.
dpk::stop_jupyter() {
  [[ -n ${DPK_JUPYTER_PID:-} ]] && dpk::alive "$DPK_JUPYTER_PID" || return 0
  kill -TERM "$DPK_JUPYTER_PID" 2>/dev/null
  dpk::wait_gone "$DPK_JUPYTER_PID" "$1" && return 0
  dpk::warn "JupyterLab did not stop within STOP_TIMEOUT/2 after SIGTERM: killing it"
  kill -KILL "$DPK_JUPYTER_PID" 2>/dev/null
}

# The scheduler (task 0, on this node): SIGTERM, then wait until it says it closed or its
# process is gone, until $1; then SIGKILL.
dpk::stop_scheduler() {
  local pid="" now
  read -r pid 2>/dev/null <"${DPK_T_PIDFILE[0]}" || true
  [[ $pid =~ ^[0-9]+$ ]] && dpk::alive "$pid" || return 0
  [[ -e $DPK_F_CLOSED ]] || kill -TERM "$pid" 2>/dev/null
  dpk::unpublish  # no client may find a cluster that is going
  while [[ ! -e $DPK_F_CLOSED ]] && dpk::alive "$pid"; do
    dpk::now_us now
    if [[ $now -ge $1 ]]; then
      dpk::warn "the scheduler did not close within STOP_TIMEOUT=$STOP_TIMEOUT s of its SIGTERM: killing it"
      kill -KILL "$pid" 2>/dev/null
      return 0
    fi
    dpk::nap 0.02
  done
}

# Every task whose pbsdsh still runs (the scheduler died without closing the workers):
# SIGTERM to its Dask process, a grace period until $1, then SIGKILL.
dpk::stop_tasks() {
  local i
  local -a left=()
  DPK_SIGNALLERS=()
  for i in "${!DPK_T_PID[@]}"; do
    dpk::alive "${DPK_T_PID[i]}" && left+=("$i")
  done
  [[ ${#left[@]} -gt 0 ]] || return 0
  for i in "${left[@]}"; do
    dpk::signal_task TERM "$i"
  done
  for i in "${left[@]}"; do
    dpk::wait_gone "${DPK_T_PID[i]}" "$1" && continue
    dpk::warn "the Dask process on node ${DPK_T_NODE[i]} did not stop within STOP_TIMEOUT=$STOP_TIMEOUT s of its SIGTERM: killing it (see ${DPK_T_LOG[i]})"
    dpk::signal_task KILL "$i"
    kill -KILL "${DPK_T_PID[i]}" 2>/dev/null
  done
  # The signalling pbsdsh runs end with their kill; one that hangs (a node going down)
  # must not hold the job.
  for i in "${DPK_SIGNALLERS[@]}"; do
    dpk::wait_gone "$i" "$(($1 + 1000000))" || kill -KILL "$i" 2>/dev/null
  done
}

# Send signal $1 to the Dask process of task $2 (its PID recorded by task.sh): directly on
# this node, else through a second pbsdsh on its node-file line, in the background (its PID
# appended to DPK_SIGNALLERS). A task that has not recorded its PID yet (it is still
# starting) gets it from its own pbsdsh, which passes it on to the task (tm_kill).
dpk::signal_task() {
  local sig=$1 i=$2 pid=""
  read -r pid 2>/dev/null <"${DPK_T_PIDFILE[i]}" || true
  if [[ ! $pid =~ ^[0-9]+$ ]]; then
    kill -"$sig" "${DPK_T_PID[i]}" 2>/dev/null
    return 0
  fi
  if [[ ${DPK_T_NODE[i]} == "$DPK_P_SCHED_NODE" ]]; then
    kill -"$sig" "$pid" 2>/dev/null
  else
    # shellcheck disable=SC2016 # $1 and $2 expand in the task's shell
    pbsdsh -n "${DPK_T_LINE[i]}" -- /bin/sh -c 'kill -"$1" "$2" 2>/dev/null' sh "$sig" "$pid" \
      >/dev/null 2>&1 &
    DPK_SIGNALLERS+=("$!")
  fi
}

# Remove the published files, if still ours (another job may have replaced them).
dpk::unpublish() {
  dpk::remove_if_ours "$SCHEDULER_FILE" "${DPK_PUB_SCHEDULER:-}"
  dpk::remove_if_ours "${DPK_F_TLS_CONFIG:-}" "${DPK_PUB_TLS:-}"
  dpk::remove_if_ours "${DPK_F_JUPYTER:-}" "${DPK_PUB_JUPYTER:-}"
}

# Remove file $1 if its content is still $2 (and our temporary copy in any case).
dpk::remove_if_ours() {
  [[ -n $1 ]] || return 0
  local now=""
  if [[ -n $2 && -f $1 ]]; then
    dpk::read_file now "$1"
    [[ $now == "$2" ]] && rm -f "$1"
  fi
  rm -f "$1.$PBS_JOBID.tmp"
}

# TERM/INT/HUP trap (qdel, walltime): exit, and the EXIT trap stops the cluster within
# PBS's kill delay. The script's status: 0 in interactive and workers mode (the normal way
# to end them), 128+signal in production mode. (Where PBS starts the script through the user's login
# shell, as real MoMs do, that shell dies of the same SIGTERM and PBS records 271.) HUP is
# for a run outside PBS: a MoM starts the script with SIGHUP ignored (start_exec.c fork_me),
# and bash cannot trap what it inherits ignored.
#
# The trap mostly runs inside dpk::nap's `read -t`, whose timer bash 5.2 (and 5.3, by its
# source) leaves armed while a trap runs: once that timer has expired, the first pipe bash
# reads (the output of a $(...)) jumps back into the read (status 142) and the rest of the
# trap is dropped, the signal with it. On a node busy with Dask processes shutting down, a
# fork in the trap could outlast what the nap had left (1 in 4 to 1 in 15 qdels of 32
# chunks on the fake PBS). So: a `read -t 0` first, which disarms that timer (any read
# builtin clears bash's current read timeout: safe here because this function never
# returns into the interrupted read, it exits), and no $(...) here.
dpk::on_signal() {
  read -r -t 0 _ </dev/null || true
  local code
  case $1 in
    TERM) code=143 ;;
    INT) code=130 ;;
    HUP) code=129 ;;
    *) code=1 ;;
  esac
  dpk::log "received SIG$1: shutting the cluster down"
  [[ $DPK_MODE == production ]] || code=0
  exit "$code"
}

# ------------------------------------------------------------------ entry point

# Run the cluster. Argument: interactive (hold until walltime), production (PROGRAM), or
# workers (add this job's workers to another job's cluster: grow.sh).
dpk::main() {
  DPK_MODE=${1:-}
  [[ $DPK_MODE =~ ^(interactive|production|workers)$ ]] ||
    dpk::die "dpk::main needs interactive, production or workers, not '$DPK_MODE'"
  dpk::now_us DPK_STARTED_US
  DPK_T_PID=() DPK_JUPYTER_PID=""
  trap 'dpk::on_signal TERM' TERM
  trap 'dpk::on_signal INT' INT
  trap 'dpk::on_signal HUP' HUP
  dpk::check_knobs
  dpk::prepare
  trap dpk::teardown EXIT
  local status=0
  if [[ $DPK_MODE == workers ]]; then
    dpk::join
    dpk::read_job
    dpk::start_added_workers
    dpk::wait_ready
    dpk::announce_added
    dpk::hold_added || status=$?
    exit "$status"
  fi
  dpk::read_job
  dpk::start_workers
  dpk::wait_ready
  dpk::announce
  dpk::start_jupyter
  if [[ $DPK_MODE == production ]]; then
    dpk::run_program || status=$?
  else
    dpk::hold || status=$?
  fi
  exit "$status"
}
