# shellcheck shell=bash
# shellcheck disable=SC2034 # its globals are read by dask-pbs.sh, which sources this file
# dask-pbs-kit: the phases of a worker-only job (scripts/launch-dask-workers.pbs, mode
# `workers` of dpk::main), whose workers join a cluster that another job of the same user
# runs, and leave it, their data handed over, before this job ends. Sourced by dask-pbs.sh;
# the phases it shares with the cluster job (knobs, prepare, read_job, wait_ready) are there.
#
# Order: dpk::check_knobs, dpk::prepare, dpk::join, dpk::read_job, dpk::start_added_workers,
# dpk::wait_ready, dpk::announce_added, dpk::hold_added; at the end dpk::teardown calls
# dpk::retire_added.

# Refuse before anything starts unless the cluster of SCHEDULER_FILE is alive and ours to
# join (kit.py join-check says what is wrong: no file, another user's, gone, TLS files
# missing); keep a copy of its scheduler file (and its TLS client file) in LOG_DIR, which
# outlives the cluster job's own. Reads: SCHEDULER_FILE, LOG_DIR, PBS_JOBID. Sets: DPK_J_*
# (ADDRESS, TLS_DIR: the cluster's certificates, LOG_DIR: the cluster job's, CLUSTER_JOB,
# PREFIX: of this job's worker names, COPY: the copied scheduler file, FIRST: the
# scheduler's host).
dpk::join() {
  local status=0 name value
  DPK_J_COPY=$LOG_DIR/cluster.json
  "$DPK_PYTHON" "$DPK_KIT_DIR/helpers/kit.py" join-check "$SCHEDULER_FILE" --job-id "$PBS_JOBID" \
    --copy-to "$DPK_J_COPY" >"$DPK_F_ERR.join.out" 2>"$DPK_F_ERR.join.err" || status=$?
  dpk::relay "$DPK_F_ERR.join.err"
  [[ $status -eq 0 ]] || { rm -f "$DPK_F_ERR.join.out"; dpk::die "this job's workers cannot join the cluster of $SCHEDULER_FILE (see the message above)"; }
  DPK_J_ADDRESS="" DPK_J_TLS_DIR="" DPK_J_LOG_DIR="" DPK_J_CLUSTER_JOB="?" DPK_J_PREFIX=""
  while read -r name value; do
    case $name in
      address) DPK_J_ADDRESS=$value ;;
      tls_dir) DPK_J_TLS_DIR=$value ;;
      log_dir) DPK_J_LOG_DIR=$value ;;
      cluster_job) DPK_J_CLUSTER_JOB=$value ;;
      prefix) DPK_J_PREFIX=$value ;;
    esac
  done <"$DPK_F_ERR.join.out"
  rm -f "$DPK_F_ERR.join.out"
  DPK_J_FIRST=${DPK_J_ADDRESS#*://}
  DPK_J_FIRST=${DPK_J_FIRST%:*}
  DPK_J_FIRST=${DPK_J_FIRST#[}
  DPK_J_FIRST=${DPK_J_FIRST%]}
  dpk::log "joining the cluster of job $DPK_J_CLUSTER_JOB at $DPK_J_ADDRESS; this job's workers are named ${DPK_J_PREFIX}chunk-..."
}

# Start the worker processes of every chunk of this job: named with the job's prefix, on
# the cluster's TLS (its own certificates), their nannies and worker processes deaf to
# SIGTERM (a qdel signals every process of the job: it must not kill them before their
# data is handed over; dpk::retire_added does it). The worker processes need the preload
# of their own: a forkserver may start them, which did not inherit the nanny's choice.
# Reads: the plan, DPK_J_*. Sets: DPK_T_* (as dpk::start_workers; every task a worker).
dpk::start_added_workers() {
  DPK_T_PID=() DPK_T_LINE=() DPK_T_NODE=() DPK_T_PIDFILE=() DPK_T_LOG=() DPK_T_WATCH=()
  local i
  local -a args extra
  read -r -a extra <<<"$EXTRA_WORKER_ARGS"
  for i in "${!DPK_P_W_CHUNK[@]}"; do
    args=(--scheduler-file "$DPK_J_COPY" --name "${DPK_J_PREFIX}chunk-${DPK_P_W_CHUNK[i]}"
      --nworkers "${DPK_P_W_NPROC[i]}" --nthreads "${DPK_P_W_THREADS[i]}"
      --preload-nanny dask_pbs_kit.grow --preload dask_pbs_kit.grow)
    dpk::start_task worker "${DPK_P_W_CHUNK[i]}" "${DPK_P_W_LINE[i]}" "${DPK_P_W_NODE[i]}" \
      "${DPK_P_W_NPROC[i]}" memory="${DPK_P_W_MEMORY[i]}" host_procs="${DPK_P_W_HOST_PROCS[i]}" \
      reserve_ppm="${DPK_P_W_PPM[i]}" reserve_bytes="${DPK_P_W_BYTES[i]}" workers="$DPK_P_EXPECTED" \
      -- "${args[@]}" "${extra[@]}"
  done
  dpk::log_workers
}

# Say that this job's workers have joined, and how many the cluster now has.
# Reads: DPK_J_*, DPK_READY_US.
dpk::announce_added() {
  local count
  count=$("$DPK_PYTHON" "$DPK_KIT_DIR/helpers/dashboard_url.py" "$DPK_J_LOG_DIR/scheduler.json" \
    --workers 2>/dev/null) || count="(cannot count them)"
  dpk::log "$DPK_P_EXPECTED worker processes joined the cluster of job $DPK_J_CLUSTER_JOB in" \
    "$(dpk::seconds "$((DPK_READY_US - DPK_STARTED_US))") s; it has $count"
}

# True while any of this job's tasks runs (its pbsdsh).
dpk::tasks_running() {
  local pid
  for pid in "${DPK_T_PID[@]}"; do
    dpk::alive "$pid" && return 0
  done
  return 1
}

# True once the cluster has ended: its scheduler closed, or died (the cluster job's
# markers), or it no longer answers (asked only when this job's tasks have all gone).
dpk::cluster_ended() {
  [[ -e $DPK_J_LOG_DIR/scheduler.closed || -e $DPK_J_LOG_DIR/scheduler.died ]] && return 0
  dpk::tasks_running && return 1
  local status=0
  "$DPK_PYTHON" "$DPK_KIT_DIR/helpers/kit.py" join-check "$DPK_J_COPY" >/dev/null 2>&1 || status=$?
  [[ $status -eq 13 ]]
}

# Hold this job's workers in the cluster until the walltime less WALLTIME_MARGIN, or until
# the cluster ends (then at once). Reads: DPK_P_WALLTIME_*, DPK_J_*. Returns 0, or 1 if
# this job's workers died while the cluster lives.
dpk::hold_added() {
  local hold=-1 end=""
  if [[ $DPK_P_WALLTIME_LEFT -ge 0 ]]; then
    hold=$((DPK_P_WALLTIME_LEFT - WALLTIME_MARGIN))
    [[ $hold -gt 0 ]] || hold=0
    end=$((SECONDS + hold))
    dpk::log "holding this job's workers in the cluster for $hold s (the walltime left less WALLTIME_MARGIN=$WALLTIME_MARGIN s), then retiring them; qdel $PBS_JOBID retires them sooner"
  else
    dpk::log "holding this job's workers in the cluster until qdel $PBS_JOBID or the cluster ends (walltime unknown: set WALLTIME to retire them cleanly before it)"
  fi
  while :; do
    if dpk::cluster_ended; then
      dpk::log "the cluster of job $DPK_J_CLUSTER_JOB has ended: so does this job"
      DPK_J_ENDED=1
      return 0
    fi
    if [[ $hold -ge 0 && $SECONDS -ge $end ]]; then
      dpk::log "walltime nearly over: retiring this job's workers"
      return 0
    fi
    if ! dpk::tasks_running; then
      dpk::warn "this job's workers have all ended while the cluster lives (see $LOG_DIR/)"
      return 1
    fi
    dpk::nap 1
  done
}

# Teardown of a worker job: retire its workers through the scheduler (their data moves to
# the remaining workers; kit.py retire), until $1 (microseconds), unless the cluster has
# ended (nothing to hand over). Sets DPK_J_RETIRE_FAILED when data could not be handed over.
dpk::retire_added() {
  local deadline=$1 now status=0 seconds
  if [[ -z ${DPK_J_ENDED:-} ]]; then
    dpk::now_us now
    seconds=$(((deadline - now) / 1000000))
    [[ $seconds -ge 1 ]] || seconds=1
    "$DPK_PYTHON" "$DPK_KIT_DIR/helpers/kit.py" retire --scheduler-file "$DPK_J_COPY" \
      --prefix "$DPK_J_PREFIX" --timeout "$seconds" >"$DPK_F_ERR.retire.out" \
      2>"$DPK_F_ERR.retire.err" || status=$?
    dpk::relay "$DPK_F_ERR.retire.err"
    if [[ -s $DPK_F_ERR.retire.out ]]; then
      local said
      dpk::read_file said "$DPK_F_ERR.retire.out"
      dpk::log "${said%$'\n'}"
    fi
    rm -f "$DPK_F_ERR.retire.out"
    case $status in
      0 | 13) ;;  # retired; or the cluster went meanwhile, and its workers with it
      *)
        dpk::warn "this job's workers could not all hand their data over (kit.py retire exit status $status): what only they held is lost"
        DPK_J_RETIRE_FAILED=1
        ;;
    esac
  fi
  # A retired worker's process is exiting; PBS ends what is left of this job's tasks when
  # its script exits (MoM kills every task of a job then), data handed over or not.
  return 0
}
