#!/usr/bin/env bats
# The interactive templates: a real Client checks the cluster the job holds.

load test_helper

@test "path template: workers, threads, memory, TMPDIR, job-script variables and logs" {
  submit_background launch-dask-cluster-path.pbs -l select=3:ncpus=2:mem=2gb -l walltime=00:03:00 \
    -v "ODD_VALUE=a b \$HOME é"
  jobid=$(background_job_id)
  run wait_ready
  [ "$status" -eq 0 ]
  [[ $output == http://127.0.0.1:*/status ]]
  run with_client '
import os
info = client.scheduler_info(n_workers=-1)["workers"].values()
print("workers", len(info))
print("threads", sorted(w["nthreads"] for w in info))
print("memory", sorted(w["memory_limit"] for w in info))
print("names", sorted(w["name"] for w in info))
for addr, tmp in sorted(client.run(os.getenv, "TMPDIR").items()):
    print("tmpdir", tmp)
print("localdirs", sorted(w["local_directory"].split("/dask-scratch-space")[0] for w in info))
print("odd", set(client.run(os.getenv, "ODD_VALUE").values()))
print("omp", set(client.run(os.getenv, "OMP_NUM_THREADS").values()))
print("cwd", set(client.run(os.getcwd).values()))
'
  echo "$output"
  [ "$status" -eq 0 ]
  # WORKER_ON_SCHEDULER_CHUNK=auto: chunk 0's 2 cores hold the scheduler and a worker of 1.
  [[ $output == *"workers 3"* ]]
  [[ $output == *"threads [1, 2, 2]"* ]]
  # 2gb less 10% (the reserve rounded down): 1932735284 bytes per worker, halved on chunk 0.
  [[ $output == *"memory [966367642, 1932735284, 1932735284]"* ]]
  [[ $output == *"names ['chunk-0', 'chunk-1', 'chunk-2']"* ]]
  [[ $output == *"tmpdir $FAKEPBS_HOME/tmp/pbs.$jobid.node00"* ]]
  [[ $output == *"tmpdir $FAKEPBS_HOME/tmp/pbs.$jobid.node01"* ]]
  [[ $output == *"tmpdir $FAKEPBS_HOME/tmp/pbs.$jobid.node02"* ]]
  [[ $output == *"localdirs ['$FAKEPBS_HOME/tmp/pbs.$jobid.node00', '$FAKEPBS_HOME/tmp/pbs.$jobid.node01', '$FAKEPBS_HOME/tmp/pbs.$jobid.node02']"* ]]
  [[ $output == *"odd {'a b \$HOME é'}"* ]]
  [[ $output == *"omp {'1'}"* ]]
  [[ $output == *"cwd {'$BATS_TEST_TMPDIR'}"* ]]
  [ -s "dask-logs/$jobid/scheduler-0.log" ]
  [ -s "dask-logs/$jobid/worker-1.log" ]
  [ -s "dask-logs/$jobid/worker-2.log" ]
  [ "$(stat -c %a "dask-logs/$jobid")" = 700 ]
  qdel "$jobid"
  wait "$JOB_QSUB_PID" || status=$?
  [ "${status:-0}" -eq 0 ]
  run job_output dask-cluster-path
  [[ $output == *"logs in $BATS_TEST_TMPDIR/dask-logs/$jobid/"* ]]
  [[ $output == *"received SIGTERM: shutting the cluster down"* ]]
  [ ! -e scheduler.json ]
  assert_no_job_processes
  [ -z "$(ls "$FAKEPBS_HOME/tmp")" ]
}

@test "a variable with newlines, quotes and unicode set in the job script reaches the workers" {
  sed 's|^# module load python/3.11$|export TRICKY=$'"'"'line one\\nline "two" $x `y` \\\\ ünï'"'"'|' \
    "$KIT/scripts/launch-dask-cluster-path.pbs" >tricky.pbs
  grep -q '^export TRICKY=' tricky.pbs
  qsub -W block=true -v "$(kit_vars)" -l select=2:ncpus=1:mem=1gb -l walltime=00:03:00 tricky.pbs >qsub.out &
  JOB_QSUB_PID=$!
  run wait_ready
  [ "$status" -eq 0 ]
  run with_client '
import os
print(repr(set(client.run(os.getenv, "TRICKY").values())))
'
  [ "$output" = "{'line one\\nline \"two\" \$x \`y\` \\\\ ünï'}" ]
  qdel "$(head -n 1 qsub.out)"
  wait "$JOB_QSUB_PID"
  assert_no_job_processes
}

@test "process template: NWORKERS processes per chunk share its memory, whatever mpiprocs" {
  submit_background launch-dask-cluster-process-with-path.pbs \
    -l select=2:ncpus=4:mem=4gb:mpiprocs=2 -l walltime=00:03:00 -v NWORKERS=2
  jobid=$(background_job_id)
  run wait_ready
  [ "$status" -eq 0 ]
  run with_client '
info = client.scheduler_info(n_workers=-1)["workers"].values()
print("workers", len(info), sorted(w["name"] for w in info))
print("threads", sorted(w["nthreads"] for w in info))
print("memory", sorted(w["memory_limit"] for w in info))
'
  echo "$output"
  [[ $output == *"workers 4 ['chunk-0-0', 'chunk-0-1', 'chunk-1-0', 'chunk-1-1']"* ]]
  [[ $output == *"threads [1, 1, 1, 1]"* ]]
  # 4gb less 10%, divided by 2 processes (by 3 on chunk 0, where the scheduler runs too).
  [[ $output == *"memory [1288490189, 1288490189, 1932735283, 1932735283]"* ]]
  qdel "$jobid"
  wait "$JOB_QSUB_PID"
  assert_no_job_processes
}

@test "conda template: the activated environment reaches the workers" {
  # A stand-in for conda's shell hook: `conda activate` as conda does it, by exports.
  mkdir -p fakeconda/etc/profile.d
  cat >fakeconda/etc/profile.d/conda.sh <<SH
conda() {
  [ "\$1" = activate ] || return 1
  export CONDA_PREFIX="$KIT/.venv" CONDA_DEFAULT_ENV="\$2" CONDA_SHLVL=1
  export PATH="$KIT/.venv/bin:\$PATH"
}
SH
  submit_background launch-dask-cluster-conda.pbs -l select=2:ncpus=1:mem=1gb -l walltime=00:03:00 \
    -v "CONDA_BASE=$BATS_TEST_TMPDIR/fakeconda,CONDA_ENV=analysis"
  jobid=$(background_job_id)
  run wait_ready
  [ "$status" -eq 0 ]
  run with_client '
import os
print(set(client.run(os.getenv, "CONDA_DEFAULT_ENV").values()))
'
  [ "$output" = "{'analysis'}" ]
  qdel "$jobid"
  wait "$JOB_QSUB_PID"
  assert_no_job_processes
}

@test "conda template: a wrong CONDA_BASE fails at once with the knob's name" {
  submit launch-dask-cluster-conda.pbs -l select=2:ncpus=1:mem=1gb -v CONDA_BASE=/nonexistent
  [ "$status" -eq 1 ]
  run job_output dask-cluster-conda
  [[ $output == *"no conda at CONDA_BASE=/nonexistent (set CONDA_BASE)"* ]]
}

@test "the cluster shuts down cleanly before the walltime and the job exits 0" {
  ends_before_its_walltime WALLTIME_MARGIN=12
}

@test "a client's shutdown() ends an interactive job with status 0" {
  submit_background launch-dask-cluster-path.pbs -l select=2:ncpus=1:mem=1gb -l walltime=00:03:00
  run wait_ready
  [ "$status" -eq 0 ]
  with_client 'client.shutdown()'
  wait "$JOB_QSUB_PID"
  run job_output dask-cluster-path
  [[ $output == *"the scheduler has been shut down (by a client): ending the job"* ]]
  assert_no_job_processes
}

@test "WORKER_ON_SCHEDULER_CHUNK=yes also runs workers beside the scheduler" {
  submit_background launch-dask-cluster-path.pbs -l select=2:ncpus=2:mem=2gb -l walltime=00:03:00 \
    -v WORKER_ON_SCHEDULER_CHUNK=yes
  jobid=$(background_job_id)
  run wait_ready
  [ "$status" -eq 0 ]
  run with_client '
info = client.scheduler_info(n_workers=-1)["workers"].values()
print(sorted((w["name"], w["memory_limit"]) for w in info))
'
  # On chunk 0 the scheduler counts as a second process: 2gb less 10%, halved.
  [ "$output" = "[('chunk-0', 966367642), ('chunk-1', 1932735284)]" ]
  qdel "$jobid"
  wait "$JOB_QSUB_PID"
  assert_no_job_processes
}
