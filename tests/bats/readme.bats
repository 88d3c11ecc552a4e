#!/usr/bin/env bats
# The README's commands, run as written.

load test_helper

@test "make demo runs the wordcount job on the fake PBS and exits 0" {
  cd "$KIT"
  rm -rf "$BATS_TEST_TMPDIR/before" && ls dask-logs >"$BATS_TEST_TMPDIR/before" 2>/dev/null || true
  run make demo
  echo "$output"
  [ "$status" -eq 0 ]
  [[ $output == *"cluster ready in"* ]]
  [[ $output == *"dashboard: http://127.0.0.1:"*"/status"* ]]
  [[ $output == *"top 10 words:"* ]]
  [[ $output == *"cluster stopped"* ]]
  [[ $output == *"make demo: job exit status 0"* ]]
  assert_no_job_processes
  jobid=$(sed -n 's/^dask-pbs: job \([^:]*\):.*/\1/p' <<<"$output")
  rm -rf "dask-logs/$jobid" dask-wordcount.o*
  rmdir dask-logs 2>/dev/null || true
}

@test "the fake PBS section's commands and the lookup-table example work as written" {
  cp -r "$KIT/scripts" "$KIT/helpers" "$KIT/examples" .
  ln -s "$KIT/.venv" .venv
  export PATH="$PWD/tests/fakepbs/bin:$PATH"
  mkdir -p tests && ln -s "$KIT/tests/fakepbs" tests/fakepbs
  run qsub -W block=true -l select=3:ncpus=2:mem=4gb -v INTERFACE=lo scripts/launch-dask-wordcount.pbs
  [ "$status" -eq 0 ]
  run qsub -l select=3:ncpus=2:mem=4gb -l walltime=00:30:00 -v INTERFACE=lo scripts/launch-dask-cluster-path.pbs
  [ "$status" -eq 0 ]
  jobid=$output
  run python3 helpers/dashboard_url.py --wait 120
  [ "$status" -eq 0 ]
  run .venv/bin/python examples/lookup-table.py
  echo "$output"
  [ "$status" -eq 0 ]
  [[ $output == *"<Client: 'tls://127.0.0.1:"*"processes=2"* ]]
  [[ $output == *"940.0"* ]]
  [[ $output == *"200 rows, 12 columns"* ]]
  run python3 helpers/dashboard_url.py scheduler.json --tunnel me@login1.cluster
  [[ ${lines[0]} =~ ^ssh\ -N\ -L\ [0-9]+:127\.0\.0\.1:[0-9]+\ me@login1\.cluster$ ]]
  run qstat -f "$jobid"
  [[ $output == *"job_state = R"* ]]
  qdel "$jobid"
  for _ in $(seq 300); do
    qstat -x -f "$jobid" | grep -q "job_state = F" && break
    sleep 0.1
  done
  run qstat -x -f "$jobid"
  [[ $output == *"Exit_status = 0"* ]]
  assert_no_job_processes
}
