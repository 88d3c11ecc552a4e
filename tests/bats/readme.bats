#!/usr/bin/env bats
# The README's commands, run as written.

load test_helper

# A copy of the kit in this test's folder, as a user has it after `git clone` and `make
# venv` (the venv is the checkout's own): commands run there change nothing in the checkout.
kit_copy() {
  cp -rp "$KIT/scripts" "$KIT/helpers" "$KIT/examples" "$KIT/requirements" "$KIT/Makefile" .
  ln -s "$KIT/.venv" .venv
  mkdir -p tests && ln -s "$KIT/tests/fakepbs" tests/fakepbs
}

@test "make demo runs the wordcount job on the fake PBS and exits 0" {
  kit_copy
  run make demo
  echo "$output"
  [ "$status" -eq 0 ]
  [[ $output == *"cluster ready in"* ]]
  [[ $output == *"dashboard: http://127.0.0.1:"*"/status"* ]]
  [[ $output == *"top 10 words:"* ]]
  [[ $output == *"cluster stopped"* ]]
  [[ $output == *"make demo: job exit status 0"* ]]
  assert_no_job_processes
}

@test "the fake PBS section's commands and the lookup-table example work as written" {
  kit_copy
  export PATH="$PWD/tests/fakepbs/bin:$PATH"
  run qsub -W block=true -l select=3:ncpus=2:mem=4gb scripts/launch-dask-wordcount.pbs
  [ "$status" -eq 0 ]
  run qsub -l select=3:ncpus=2:mem=4gb -l walltime=00:30:00 scripts/launch-dask-cluster-path.pbs
  [ "$status" -eq 0 ]
  jobid=$output
  run python3 helpers/dashboard_url.py --wait 120
  [ "$status" -eq 0 ]
  run .venv/bin/python examples/lookup-table.py
  echo "$output"
  [ "$status" -eq 0 ]
  [[ $output == *"<Client: 'tls://127.0.0.1:"*"processes=3"* ]]
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

@test "every connect line the templates' headers and the README show works as written" {
  kit_copy
  submit_background launch-dask-cluster-path.pbs -l select=2:ncpus=1:mem=1gb -l walltime=00:05:00 \
    -v "DASK_PBS_KIT=$BATS_TEST_TMPDIR"
  jobid=$(background_job_id)
  run wait_ready
  [ "$status" -eq 0 ]
  local -a lines_seen=()
  local template line
  for template in scripts/*.pbs; do
    line=$(sed -n 's/^#   \(.*connect(.*\)$/\1/p' "$template")
    # Production (PROGRAM needs no line) and worker jobs (they join a cluster) show none.
    [[ $template == *wordcount* || $template == *workers* ]] && continue
    [ -n "$line" ]
    lines_seen+=("$line")
  done
  while IFS= read -r line; do
    lines_seen+=("$line")
  done < <(grep -E '^(import|from) .*connect\(' "$KIT/README.md")
  lines_seen+=("$(sed -n 's/^  connect:   //p' "dask-logs/$jobid/cluster-info.txt")")
  [ "${#lines_seen[@]}" -ge 5 ]
  for line in "${lines_seen[@]}"; do
    echo "line: $line"
    run .venv/bin/python -c "$line
print('ran', client.submit(sum, [1, 2]).result())"
    echo "$output"
    [ "$output" = "ran 3" ]
  done
  qdel "$jobid"
  wait "$JOB_QSUB_PID"
  assert_no_job_processes
}
