#!/usr/bin/env bats
# How a task starts its Dask process (scripts/lib/task.sh, helpers/dask_pbs_kit/dask_start.py):
# in the Python of the `dask` command, with a forkserver for a worker's processes and the
# dashboards off the start's path; through one helper call and `dask` itself where that
# Python cannot be told.

load test_helper

# A Python "installation" for PYTHON_PREFIX whose bin/dask is $1: wrapper (a bash script
# that runs the kit's dask) or trampoline (pip's /bin/sh first lines for a long path).
fake_prefix() {
  mkdir -p prefix/bin
  printf '#!/bin/bash\nexec %q "$@"\n' "$KIT/.venv/bin/python3" >prefix/bin/python3
  case $1 in
    wrapper) printf '#!/bin/bash\nexec %q "$@"\n' "$KIT/.venv/bin/dask" >prefix/bin/dask ;;
    trampoline)
      {
        printf '#!/bin/sh\n'"'''"'exec'"'"' "%s" "$0" "$@"\n'"' '''"'\n' "$KIT/.venv/bin/python"
        tail -n +2 "$KIT/.venv/bin/dask"
      } >prefix/bin/dask
      ;;
  esac
  chmod +x prefix/bin/python3 prefix/bin/dask
}

# The forkservers among the job's processes: forked from their nanny (named dask-forkserver
# in ps; the worker processes it forks get their name back), or spawned by multiprocessing
# (that command line, whose parent's is not: its worker processes keep its command line).
forkservers() {
  local pid parent
  for pid in $(job_processes); do
    if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dask-forkserver ]; then
      echo "$pid"
      continue
    fi
    grep -q 'multiprocessing.forkserver import main' "/proc/$pid/cmdline" 2>/dev/null || continue
    parent=$(awk '{print $4}' "/proc/$pid/stat" 2>/dev/null) || continue
    grep -q 'multiprocessing.forkserver import main' "/proc/$parent/cmdline" 2>/dev/null || echo "$pid"
  done
}

stop_cluster() {
  qdel "$JOBID"
  wait "$JOB_QSUB_PID" || true
  assert_no_job_processes
}

@test "default: one forkserver per worker task; the scheduler's dashboard answers when scheduler.json appears, the workers' soon after" {
  start_cluster -l select=3:ncpus=2:mem=2gb -l walltime=00:03:00 -v WORKER_ON_SCHEDULER_CHUNK=no,NWORKERS=2
  run "$PY" -c 'import json, sys, urllib.request
port = json.load(open("scheduler.json"))["services"]["dashboard"]
print(urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=10).status)'
  [ "$output" = 200 ]
  run forkservers
  [ "${#lines[@]}" -eq 2 ]
  # forked from their nannies (one import of distributed per chunk), not spawned
  [ "$(cat "/proc/${lines[0]}/comm")" = dask-forkserver ]
  [ "$(cat "/proc/${lines[1]}/comm")" = dask-forkserver ]
  run with_client '
import time, urllib.error, urllib.request
def status(port):
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=10).status
    except urllib.error.HTTPError as exc:
        return exc.code
ports = [w["services"]["dashboard"] for w in client.scheduler_info(n_workers=-1)["workers"].values()]
deadline = time.monotonic() + 30
while any(status(p) != 200 for p in ports) and time.monotonic() < deadline:
    time.sleep(0.2)
print(len(ports), sorted({status(p) for p in ports}))
'
  echo "$output"
  [ "$output" = "4 [200]" ]
  run cat "dask-logs/$JOBID/worker-1.log"
  [[ ${lines[0]} =~ ^dask-pbs:\ worker\ on\ node\ node01\ \(pid\ [0-9]+,\ TMPDIR\ .*,\ interface\ lo\ 127\.0\.0\.1\ \(host-name,\ INTERFACE=auto\),\ memory\ limit\ 966367642\ bytes\ per\ process\ .*\)\ at\ [-0-9]+\ [:0-9]+\.[0-9]{3}\ \([0-9.]+\ s\ after\ task\.sh\ began\)$ ]]
  stop_cluster
}

@test "a dask command that is a wrapper: one helper call for interface and memory, then dask itself (spawn)" {
  fake_prefix wrapper
  start_cluster -l select=3:ncpus=1:mem=1gb -l walltime=00:03:00 \
    -v "PYTHON_PREFIX=$BATS_TEST_TMPDIR/prefix,WORKER_ON_SCHEDULER_CHUNK=no"
  run with_client 'print(sorted((w["name"], w["memory_limit"]) for w in client.scheduler_info(n_workers=-1)["workers"].values()))'
  [ "$output" = "[('chunk-1', 966367642), ('chunk-2', 966367642)]" ]
  run forkservers
  [ -z "$output" ]
  run cat "dask-logs/$JOBID/worker-2.log"
  [[ ${lines[0]} == "dask-pbs: worker on node node02 (pid "*", interface lo 127.0.0.1 (host-name, INTERFACE=auto), memory limit 966367642 bytes per process (the chunk's share of its mem=)) at "*" s after task.sh began)" ]]
  [ "$(cat "dask-logs/$JOBID/worker-2.iface")" = "node02 lo 127.0.0.1 host-name" ]
  # They started before the plan: one helper call took their rows too.
  grep -q "started 2 worker tasks before the plan" "dask-logs/$JOBID/job.log"
  stop_cluster
}

# One line per chunk in the node file: a worker task starts on each line before the plan,
# guessed to be chunk LINE's. Chunk 1 has no line (mpiprocs=0, on a host the node file
# does not name): line 1 is chunk 2's, line 2 chunk 3's.
@test "worker tasks started before the plan where it puts other chunks end, and every chunk starts where it says" {
  start_cluster -l select=1:ncpus=1:mem=1gb+1:ncpus=1:mpiprocs=0:mem=1gb+2:ncpus=1:mem=1gb -l walltime=00:03:00 \
    -v WORKER_ON_SCHEDULER_CHUNK=no
  run with_client 'print(sorted((w["name"], w["nthreads"]) for w in client.scheduler_info(n_workers=-1)["workers"].values()))'
  [ "$output" = "[('chunk-2', 1), ('chunk-3', 1)]" ]
  grep -q "started 2 worker tasks before the plan" "dask-logs/$JOBID/job.log"
  [ "$(cat "dask-logs/$JOBID/worker-1.log")" = "dask-pbs: node node02: the plan has no worker of chunk 1 on line 1 of \$PBS_NODEFILE: this task ends (the job starts that chunk's tasks where the plan puts them)" ]
  # Chunk 2's own task started on line 1 once the guessed one (line 2) had ended: its log is
  # the real worker's alone.
  run cat "dask-logs/$JOBID/worker-2.log"
  [[ ${lines[0]} == "dask-pbs: worker on node node02 (pid "* ]]
  [[ $output != *"the plan has no worker"* ]]
  [[ "$(cat "dask-logs/$JOBID/worker-3.log")" == "dask-pbs: worker on node node03 (pid "* ]]
  stop_cluster
}

@test "on task.sh's other path (a dask wrapper), a worker task the plan has no row for ends the same way" {
  fake_prefix wrapper
  start_cluster -l select=1:ncpus=1:mem=1gb+1:ncpus=1:mpiprocs=0:mem=1gb+2:ncpus=1:mem=1gb -l walltime=00:03:00 \
    -v "PYTHON_PREFIX=$BATS_TEST_TMPDIR/prefix,WORKER_ON_SCHEDULER_CHUNK=no"
  run with_client 'print(sorted((w["name"], w["nthreads"]) for w in client.scheduler_info(n_workers=-1)["workers"].values()))'
  [ "$output" = "[('chunk-2', 1), ('chunk-3', 1)]" ]
  [ "$(cat "dask-logs/$JOBID/worker-1.log")" = "dask-pbs: node node02: the plan has no worker of chunk 1 on line 1 of \$PBS_NODEFILE: this task ends (the job starts that chunk's tasks where the plan puts them)" ]
  stop_cluster
}

@test "pip's /bin/sh first lines for a long path: the Dask process runs in the Python they name" {
  fake_prefix trampoline
  start_cluster -l select=2:ncpus=1:mem=1gb -l walltime=00:03:00 \
    -v "PYTHON_PREFIX=$BATS_TEST_TMPDIR/prefix,WORKER_ON_SCHEDULER_CHUNK=no"
  run forkservers
  [ "${#lines[@]}" -eq 1 ]
  stop_cluster
}

@test "the job's own DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD=spawn is kept" {
  start_cluster -l select=2:ncpus=2:mem=2gb -l walltime=00:03:00 \
    -v "DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD=spawn,WORKER_ON_SCHEDULER_CHUNK=no,NWORKERS=2"
  run with_client 'print(len(client.scheduler_info(n_workers=-1)["workers"]))'
  [ "$output" = 2 ]
  run forkservers
  [ -z "$output" ]
  stop_cluster
}

# task.sh's other path (a `dask` whose Python cannot be told: runs as a command) for a
# scheduler started while job-setup makes the certificates (tls_pending=yes). The `dask`
# here only tells what it found.
pending_scheduler() {
  mkdir -p bin tls
  printf '#!/bin/bash\nls "%s" >dask.saw\n' "$BATS_TEST_TMPDIR/tls" >bin/dask
  chmod +x bin/dask
  printf 'export PATH=%q\n' "$BATS_TEST_TMPDIR/bin:/usr/bin:/bin" >env.sh
  PBS_O_WORKDIR=$BATS_TEST_TMPDIR /bin/bash "$KIT/scripts/lib/task.sh" role=scheduler env=env.sh log=task.log \
    pid=task.pid node=node00 kit="$KIT" interface= tls="$BATS_TEST_TMPDIR/tls" tls_pending=yes timeout="$1" -- --port 0
}

@test "a scheduler started before its certificates exist waits for them, on task.sh's other path too" {
  (sleep 0.5 && touch tls/ca.pem tls/cluster.pem tls/cluster.key tls/client-config.json) &
  mkdir -p tls
  run pending_scheduler 60
  wait
  [ "$status" -eq 0 ]
  [ "$(cat dask.saw)" = "$(printf 'ca.pem\nclient-config.json\ncluster.key\ncluster.pem')" ]
  run pending_scheduler 1
  [ "$status" -eq 0 ]  # all there: no wait
  rm tls/client-config.json
  run pending_scheduler 1
  [ "$status" -eq 4 ]
  [ "$output" = "dask-pbs: cannot read the job's TLS certificates in $BATS_TEST_TMPDIR/tls on node node00 (is the submit folder shared with the compute nodes?)" ]
}
