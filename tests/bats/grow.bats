#!/usr/bin/env bats
# Growing a running cluster with a worker-only job (scripts/launch-dask-workers.pbs), and
# letting its workers go without losing the data they hold.

load test_helper

# Start a 2-chunk interactive cluster job (1 worker) and wait until it is ready.
start_cluster_job() {
  submit_background launch-dask-cluster-path.pbs -l select=2:ncpus=1:mem=1gb -l walltime=00:05:00 "$@"
  CLUSTER_QSUB_PID=$JOB_QSUB_PID
  CLUSTER_JOB=$(background_job_id)
  run wait_ready
  [ "$status" -eq 0 ]
}

# Submit the worker job in the background: start_workers [qsub options...]; sets WORKERS_QSUB_PID.
start_workers() {
  qsub -W block=true -v "$(kit_vars),SCHEDULER_FILE=$BATS_TEST_TMPDIR/scheduler.json" "$@" \
    "$KIT/scripts/launch-dask-workers.pbs" >workers.out 2>&1 &
  WORKERS_QSUB_PID=$!
}

# A worker job against SCHEDULER_FILE, waited for, which must fail (status 1):
# refused_workers SCHEDULER_FILE; its output file in $output and $lines, then removed.
refused_workers() {
  run qsub -W block=true -v "$(kit_vars),SCHEDULER_FILE=$1" \
    -l select=1:ncpus=1:mem=1gb "$KIT/scripts/launch-dask-workers.pbs"
  [ "$status" -eq 1 ]
  run cat dask-workers.o*
  echo "$output"
  rm -f dask-workers.o*
}

# Wait until the cluster has N workers: wait_workers N
wait_workers() {
  local _
  for _ in $(seq 600); do
    [[ $("$PY" "$KIT/helpers/dashboard_url.py" --workers 2>/dev/null) == "$1 workers"* ]] && return 0
    sleep 0.1
  done
  "$PY" "$KIT/helpers/dashboard_url.py" --workers
  return 1
}

# A client that computes results kept partly on the worker job's workers (each execution
# leaves a line in executions.txt), holds them while the worker job ends, then gathers
# them: prints "kept N of N, executions E". Runs in the background: hold_results; sets
# HOLDER_PID; it writes holding.txt once its results are in memory.
hold_results() {
  "$PY" - >holder.out 2>&1 <<'PY' &
import os, sys, time
sys.path.insert(0, os.path.join(os.environ["KIT"], "examples"))
from job_client import connect
client = connect("scheduler.json")

def make(i):
    with open("executions.txt", "a") as fh:  # every run of a task leaves a line
        fh.write(f"{i}\n")
    return bytes([i]) * 2_000_000

workers = client.scheduler_info(n_workers=-1)["workers"]
added = [a for a, w in workers.items() if str(w["name"]).startswith("job-")]
own = [a for a, w in workers.items() if not str(w["name"]).startswith("job-")]
futures = [client.submit(make, i, workers=[added[i % len(added)] if i % 3 else own[0]],
                         allow_other_workers=False, pure=False) for i in range(12)]
client.gather(futures)
where = client.who_has(futures)
print("on added workers", sum(any(a in added for a in where[f.key]) for f in futures), flush=True)
open("holding.txt", "w").write("yes")
while any(str(w["name"]).startswith("job-") for w in client.scheduler_info(n_workers=-1)["workers"].values()):
    time.sleep(0.2)
values = client.gather(futures)
kept = sum(v == bytes([i]) * 2_000_000 for i, v in enumerate(values))
print(f"kept {kept} of {len(futures)}, executions {len(open('executions.txt').read().split())}", flush=True)
client.close()
PY
  HOLDER_PID=$!
  local _
  for _ in $(seq 300); do [[ -e holding.txt ]] && return 0; sleep 0.1; done
  cat holder.out
  return 1
}

@test "a worker job grows the cluster; before its walltime it retires its workers, their results kept, nothing recomputed; it ends 0" {
  start_cluster_job
  SECONDS=0
  start_workers -l select=2:ncpus=1:mem=1gb -l walltime=00:00:50 -v WALLTIME_MARGIN=30
  wait_workers 3
  run "$PY" "$KIT/helpers/dashboard_url.py" --workers
  [[ $output == "3 workers (2 from worker jobs: 2 of job "* ]]
  hold_results
  status=0
  wait "$WORKERS_QSUB_PID" || status=$?
  [ "$status" -eq 0 ]
  [ "$SECONDS" -lt 50 ]
  wait "$HOLDER_PID" || { cat holder.out; cat dask-workers.o* 2>/dev/null; false; }
  run cat holder.out
  echo "$output"
  [[ ${lines[0]} =~ ^on\ added\ workers\ ([0-9]+)$ ]]
  [ "${BASH_REMATCH[1]}" -ge 6 ]
  [ "${lines[1]}" = "kept 12 of 12, executions 12" ]
  run cat dask-workers.o*
  echo "$output"
  [[ $output == *"joining the cluster of job $CLUSTER_JOB at tls://"* ]]
  [[ $output == *"walltime nearly over: retiring this job's workers"* ]]
  [[ $output =~ retired\ 2\ workers\ job-[0-9]+-\*\ in\ [0-9.]+\ s:\ [0-9]+\ of\ [0-9]+\ keys ]]
  [[ $output != *warning* ]]
  run "$PY" "$KIT/helpers/dashboard_url.py" --workers
  [ "$output" = "1 worker (none from worker jobs)" ]
  # The cluster job tells a change of its roll at its next look (once a second): let it
  # look before the qdel.
  for _ in $(seq 100); do
    grep -q "the cluster has 1 worker" "dask-logs/$CLUSTER_JOB/job.log" && break
    sleep 0.1
  done
  qdel "$CLUSTER_JOB"
  wait "$CLUSTER_QSUB_PID"
  # The cluster job said when the worker job's workers came and went.
  run job_output dask-cluster-path
  [[ $output =~ the\ cluster\ has\ 3\ workers\ \(2\ from\ worker\ jobs:\ 2\ of\ job\ [0-9]+\) ]]
  [[ $output == *"the cluster has 1 worker (none from worker jobs)"* ]]
  assert_no_job_processes
}

@test "qdel of a worker job (a real MoM's login shell) retires its workers the same way within the kill delay" {
  export FAKEPBS_START=login FAKEPBS_KILL_DELAY=10
  start_cluster_job
  start_workers -l select=2:ncpus=1:mem=1gb -l walltime=00:05:00
  wait_workers 3
  hold_results
  worker_job=$(head -n 1 workers.out)
  SECONDS=0
  qdel "$worker_job"
  wait "$WORKERS_QSUB_PID" || true
  [ "$SECONDS" -lt 12 ]
  wait "$HOLDER_PID" || { cat holder.out; cat dask-workers.o* 2>/dev/null; false; }
  run cat holder.out
  echo "$output"
  [ "${lines[1]}" = "kept 12 of 12, executions 12" ]
  run cat dask-workers.o*
  [[ $output == *"received SIGTERM"* ]]
  [[ $output == *"retired 2 workers"* ]]
  qdel "$CLUSTER_JOB"
  wait "$CLUSTER_QSUB_PID" || true
  assert_no_job_processes
}

@test "the cluster ending first ends the worker job at once, with 0" {
  start_cluster_job
  start_workers -l select=1:ncpus=1:mem=1gb -l walltime=00:05:00
  wait_workers 2
  qdel "$CLUSTER_JOB"
  wait "$CLUSTER_QSUB_PID"
  SECONDS=0
  status=0
  wait "$WORKERS_QSUB_PID" || status=$?
  [ "$status" -eq 0 ]
  [ "$SECONDS" -lt 10 ]
  run cat dask-workers.o*
  echo "$output"
  [[ $output == *"the cluster of job $CLUSTER_JOB has ended: so does this job"* ]]
  [[ $output != *warning* ]]
  assert_no_job_processes
}

@test "a worker job refuses, before anything starts, a missing scheduler file, a cluster that has ended, missing TLS files" {
  refused_workers "$BATS_TEST_TMPDIR/none.json"
  [[ $output == *"none.json: no such scheduler file"* ]]
  [[ $output == *"this job's workers cannot join the cluster of $BATS_TEST_TMPDIR/none.json"* ]]
  [[ $output != *"starting"* ]]

  # A cluster that has ended, whose files a killed job left behind.
  start_cluster_job
  cp scheduler.json scheduler.tls.json "dask-logs/$CLUSTER_JOB/"
  mkdir -p old && cp scheduler.json scheduler.tls.json old/
  cp -r "dask-logs/$CLUSTER_JOB/tls" old/tls-kept
  qdel "$CLUSTER_JOB"
  wait "$CLUSTER_QSUB_PID"
  sed -i "s|$BATS_TEST_TMPDIR/dask-logs/$CLUSTER_JOB/tls|$BATS_TEST_TMPDIR/old/tls-kept|g" old/scheduler.tls.json
  refused_workers "$BATS_TEST_TMPDIR/old/scheduler.json"
  [[ $output == *"gone"* || $output == *"has ended"* || $output == *"closed"* ]]

  # A TLS cluster whose client file is gone (its job ended, or another user's).
  start_cluster_job
  rm -f scheduler.tls.json
  refused_workers "$BATS_TEST_TMPDIR/scheduler.json"
  [[ $output == *"scheduler.tls.json"* ]]
  qdel "$CLUSTER_JOB"
  wait "$CLUSTER_QSUB_PID"
  assert_no_job_processes
}
