#!/usr/bin/env bats
# What the user sees when a cluster cannot start: a clear message, a failed job, no hang.

load test_helper

@test "a missing interface fails the job within seconds, naming the node and its interfaces" {
  SECONDS=0
  submit launch-dask-cluster-path.pbs -l select=3:ncpus=1:mem=1gb -l walltime=00:02:00 -v INTERFACE=nosuch0
  [ "$status" -eq 1 ]
  [ "$SECONDS" -lt 30 ]
  run job_output dask-cluster-path
  # Every task fails at once: the first seen gone is told, on whichever node it ran.
  [[ $output == *"interface 'nosuch0' does not exist on node node0"[012]" (it has: "*"lo"* ]]
  [[ $output == *"the cluster did not start"* ]]
  assert_no_job_processes
}

@test "a worker that cannot start names its chunk and its log, and stops the rest" {
  SECONDS=0
  submit launch-dask-cluster-path.pbs -l select=3:ncpus=1:mem=1gb -l walltime=00:02:00 -v EXTRA_WORKER_ARGS="--memory-limit 18XB"
  [ "$status" -eq 1 ]
  [ "$SECONDS" -lt 40 ]
  run job_output dask-cluster-path
  [[ $output =~ the\ worker\ of\ chunk\ [12]\ \(node\ node0[12]\)\ exited\ before\ the\ cluster\ was\ ready ]]
  [[ $output == *"worker-"[12]".log ends with:"* ]]
  [[ $output == *"Could not interpret 'XB' as a byte unit"* ]]
  assert_no_job_processes
}

@test "workers that never connect time out, naming the missing chunks" {
  # A worker told to wait for a scheduler file that never appears: it starts but never joins.
  submit launch-dask-cluster-path.pbs -l select=2:ncpus=1:mem=1gb -l walltime=00:02:00 \
    -v READY_TIMEOUT=8 -v "EXTRA_WORKER_ARGS=--scheduler-file /nonexistent/scheduler.json"
  [ "$status" -eq 1 ]
  run job_output dask-cluster-path
  [[ $output == *"only 0 of 1 worker connected after 8 s"* ]]
  [[ $output == *"missing: 1 of 1 worker process of chunk 1 (node node01), log "*"worker-1.log"* ]]
  assert_no_job_processes
}

@test "a job with one chunk and no worker chunk is refused with advice" {
  submit launch-dask-cluster-path.pbs -l select=1:ncpus=1:mem=1gb
  [ "$status" -eq 1 ]
  run job_output dask-cluster-path
  [[ $output == *"no chunk for workers (ask for select=2 or more, or set WORKER_ON_SCHEDULER_CHUNK=yes or auto)"* ]]
}

@test "a knob with a bad value is refused before anything starts" {
  submit launch-dask-cluster-path.pbs -l select=2:ncpus=1:mem=1gb -v NWORKERS=two
  [ "$status" -eq 1 ]
  run job_output dask-cluster-path
  [[ $output == *"NWORKERS=two is not a positive whole number"* ]]
  [[ $output != *"starting the scheduler"* ]]
}

@test "a chunk too small for its worker processes is refused with the numbers" {
  submit launch-dask-cluster-process-with-path.pbs -l select=2:ncpus=4:mem=512mb
  [ "$status" -eq 1 ]
  run job_output dask-cluster-procs
  # Chunk 0: 4 workers and the scheduler (WORKER_ON_SCHEDULER_CHUNK=auto).
  [[ $output == *"512mb per chunk less a reserve of 10% leaves"*"for each of 5 Dask processes (the scheduler counts as one on its chunk)"* ]]
  # The scheduler's task started as soon as env.sh existed, before the plan said no: stopped.
  [[ $output == *"starting the scheduler on chunk 0 (node node00)"*"512mb per chunk"* ]]
  compgen -G "dask-logs/*/scheduler-0.log"
  assert_no_job_processes
}

@test "a TLS or DASHBOARD value the kit does not know is refused before anything starts" {
  submit launch-dask-cluster-path.pbs -l select=2:ncpus=1:mem=1gb -v TLS=maybe
  [ "$status" -eq 1 ]
  run job_output dask-cluster-path
  [[ $output == *"TLS=maybe must be yes (the default: only your certificates reach the cluster) or no (plain tcp)"* ]]
  rm -f dask-cluster-path.o*
  submit launch-dask-cluster-path.pbs -l select=2:ncpus=1:mem=1gb -v DASHBOARD=public
  [ "$status" -eq 1 ]
  run job_output dask-cluster-path
  [[ $output == *"DASHBOARD=public must be network"* ]]
  [ ! -e dask-logs ]
  assert_no_job_processes
}

@test "certificates that cannot be made fail the job, and the scheduler that started before them is stopped" {
  prefix_with openssl 'echo "openssl: no randomness on this node" >&2; exit 1'
  submit launch-dask-cluster-path.pbs -l select=2:ncpus=1:mem=1gb -v "PYTHON_PREFIX=$BATS_TEST_TMPDIR/prefix"
  [ "$status" -eq 1 ]
  run job_output dask-cluster-path
  [[ $output == *"starting the scheduler on chunk 0 (node node00)"*"openssl failed making the job's TLS certificates:"*"openssl: no randomness on this node"*"(set TLS=no to run without encryption)"* ]]
  [[ $output == *"the job could not be prepared"* ]]
  [[ $output != *"cluster ready"* ]]
  assert_no_job_processes
}
