#!/usr/bin/env bats
# The production template (launch-dask-wordcount.pbs) on a 3-node fake PBS job.

load test_helper

@test "wordcount runs on a 3-chunk job, prints its counts and exits 0" {
  submit launch-dask-wordcount.pbs -l select=3:ncpus=2:mem=2gb
  [ "$status" -eq 0 ]
  run job_output dask-wordcount
  [[ $output == *"cluster ready in"* ]]
  [[ $output == *"counting words in "*" files on 3 workers"* ]]  # one beside the scheduler
  [[ $output == *"top 10 words:"* ]]
  [[ $output =~ total:\ [0-9]+\ words ]]
  [[ $output == *"the program exited with status 0"* ]]
  [[ $output == *"cluster stopped"* ]]
  [ ! -e scheduler.json ]
  assert_no_job_processes
}

@test "the job's exit status is the program's" {
  printf 'import sys\nprint("failing on purpose")\nsys.exit(3)\n' >fail.py
  production_job "python3 fail.py"
  [ "$status" -eq 3 ]
  [[ $output == *"failing on purpose"* ]]
  [[ $output == *"the program exited with status 3"* ]]
  assert_no_job_processes
}

@test "a program that crashes with a traceback fails the job" {
  printf 'raise RuntimeError("boom")\n' >crash.py
  production_job "python3 crash.py"
  [ "$status" -eq 1 ]
  [[ $output == *"RuntimeError: boom"* ]]
  assert_no_job_processes
}

@test "a scheduler that dies while the program runs ends the job promptly with a failure" {
  cat >kill_scheduler.py <<'PY'
import os, signal, time
from distributed import Client
client = Client(scheduler_file=os.environ["DASK_SCHEDULER_FILE"])
os.kill(client.run_on_scheduler(os.getpid), signal.SIGKILL)  # a crash: no clean close
time.sleep(120)
PY
  SECONDS=0
  production_job "python3 kill_scheduler.py"
  [ "$status" -eq 1 ]
  [ "$SECONDS" -lt 60 ]
  [[ $output == *"the scheduler died while the program ran"* ]]
  assert_no_job_processes
}

@test "a program that shuts the cluster down itself keeps its own status and its time" {
  cat >shutdown_first.py <<'PY'
import os, sys, time
from distributed import Client
Client(scheduler_file=os.environ["DASK_SCHEDULER_FILE"]).shutdown()
time.sleep(2)  # work that needs no cluster: the job must not cut it short
open("after-shutdown.txt", "w").write("done")
sys.exit(3)
PY
  production_job "python3 shutdown_first.py"
  [ "$status" -eq 3 ]
  [ "$(cat after-shutdown.txt)" = done ]
  [[ $output == *"the program exited with status 3"* ]]
  [[ $output != *"died"* ]]
  assert_no_job_processes
}

@test "a stale scheduler.json from an earlier job is removed, never used" {
  echo '{"type": "Scheduler", "address": "tcp://127.0.0.1:1", "services": {"dashboard": 1}}' >scheduler.json
  printf 'import json\nprint("address", json.load(open("scheduler.json"))["address"])\n' >show.py
  production_job "python3 show.py"
  [ "$status" -eq 0 ]
  [[ $output =~ address\ tls://127\.0\.0\.1:[0-9]{4,5} ]]
  [[ $output != *"tcp://127.0.0.1:1"$'\n'* ]]
  [ ! -e scheduler.json ]
}

@test "a blank PROGRAM is refused before anything starts" {
  production_job " "
  [ "$status" -eq 1 ]
  [ "$output" = "dask-pbs: PROGRAM is empty: set the command to run in the template or with qsub -v PROGRAM=..." ]
  [ ! -e dask-logs ]
  assert_no_job_processes
}

@test "teardown: one signal to the scheduler stops every worker, and nothing of the job is left" {
  submit launch-dask-wordcount.pbs -l select=4:ncpus=2:mem=2gb -v NWORKERS=2,NTHREADS=1,PROGRAM=/bin/true
  [ "$status" -eq 0 ]
  run job_output dask-wordcount
  [[ $output =~ cluster\ stopped\ [0-9.]+\ s\ after\ the\ program\ ended ]]
  logs=(dask-logs/*)
  # Every worker process stopped because the scheduler's plugin told it to.
  # 2 on each of the 4 chunks (chunk 0's 2 cores hold the scheduler and 2 workers of 1 thread).
  [ "$(cat "${logs[0]}"/worker-*.log | grep -c 'Stopping worker at .* Reason: dask-pbs-kit: job ending')" -eq 8 ]
  [ -e "${logs[0]}/scheduler.closed" ]
  [ ! -s "${logs[0]}/workers.txt" ]
  ! grep -q ERROR "${logs[0]}/scheduler-0.log"
  assert_no_job_processes
  [ -z "$(ls "$FAKEPBS_HOME/tmp")" ]
}

@test "a preload of the user's own (EXTRA_SCHEDULER_ARGS) runs beside the kit's" {
  printf 'def dask_setup(scheduler):\n    open("preloaded.txt", "w").write("yes")\n' >mine.py
  production_job /bin/true "EXTRA_SCHEDULER_ARGS=--preload $BATS_TEST_TMPDIR/mine.py"
  [ "$status" -eq 0 ]
  [ "$(cat preloaded.txt)" = yes ]
  [[ $output == *"cluster ready in"* ]]
  assert_no_job_processes
}
