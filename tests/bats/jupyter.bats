#!/usr/bin/env bats
# JUPYTER=yes: JupyterLab beside the cluster, on the scheduler's node, with its token, its
# kernels' plain Client, the dashboard through its proxy, and its end as the job's end.

load test_helper

@test "JupyterLab: the printed URL with its token works, without it is refused; a kernel's plain Client computes; the dashboard through the proxy; Shut Down ends the job with 0" {
  submit_background launch-dask-cluster-path.pbs -l select=3:ncpus=1:mem=1gb -l walltime=00:05:00 \
    -v JUPYTER=yes
  jobid=$(background_job_id)
  wait_jupyter
  run cat "dask-logs/$jobid/cluster-info.txt"
  echo "$output"
  [[ $output == *"  jupyter:   http://"*"/lab?token=$TOKEN   (JupyterLab on node node00, in $BATS_TEST_TMPDIR; File > Shut Down ends the job)"* ]]
  [[ $output == *"  tunnel:    ssh -N -L $PORT:"*":$PORT "*"   (on your laptop, then open http://localhost:$PORT/lab?token=$TOKEN; the dashboard: http://localhost:$PORT/proxy/$DPORT/status)"* ]]
  [ "${#TOKEN}" -ge 32 ]

  run http_status "$URL"
  [ "$output" = "200 False" ]
  run http_status "$BASE/api/status"
  [ "$output" = 403 ]
  run http_status "$BASE/api/status" wrong-token
  [ "$output" = 403 ]
  run http_status "$BASE/api/status" "$TOKEN"
  [ "$output" = "200 False" ]
  run http_status "$BASE/proxy/$DPORT/status" "$TOKEN"
  [ "$output" = "200 True" ]

  run cell '
import os
from dask.distributed import Client
client = Client(scheduler_file=os.environ["DASK_SCHEDULER_FILE"])
print("sum", client.submit(sum, [1, 2]).result(), "workers", len(client.scheduler_info()["workers"]))
print("link", client.dashboard_link)
print("token in env", "JUPYTER_TOKEN" in os.environ, "cwd", os.getcwd())
'
  echo "$output"
  [ "$status" -eq 0 ]
  [ "${lines[0]}" = "sum 3 workers 2" ]
  [ "${lines[1]}" = "link /proxy/$DPORT/status" ]
  [ "${lines[2]}" = "token in env False cwd $BATS_TEST_TMPDIR" ]

  # Only the owner reads the token, its folder, and what describes the server.
  [ "$(stat -c %a "dask-logs/$jobid/jupyter" "dask-logs/$jobid/jupyter/token" scheduler.jupyter.json | tr '\n' ' ')" = "700 600 600 " ]

  # File > Shut Down is this call.
  run "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(urllib.request.Request(sys.argv[1] + "/api/shutdown", method="POST", headers={"Authorization": "token " + sys.argv[2]}), timeout=10)' "$BASE" "$TOKEN"
  [ "$status" -eq 0 ]
  status=0
  wait "$JOB_QSUB_PID" || status=$?
  [ "$status" -eq 0 ]
  run job_output dask-cluster-path
  [[ $output == *"JupyterLab has ended (File > Shut Down): ending the job"* ]]
  [[ $output != *warning* ]]
  [ ! -e scheduler.jupyter.json ]
  [ ! -e scheduler.json ]
  [ ! -e "dask-logs/$jobid/jupyter" ]
  assert_no_job_processes
}

@test "JupyterLab with DASHBOARD=loopback: bound to the node's loopback, a tunnel that ends on the node; qdel stops both" {
  submit_background launch-dask-cluster-path.pbs -l select=2:ncpus=1:mem=1gb -l walltime=00:05:00 \
    -v JUPYTER=yes,DASHBOARD=loopback
  jobid=$(background_job_id)
  wait_jupyter
  [[ $BASE == "http://localhost:$PORT" ]]
  run cat "dask-logs/$jobid/cluster-info.txt"
  [[ $output == *"  tunnel:    ssh -N -L $PORT:localhost:$PORT -J "*" node00   (on your laptop"* ]]
  run http_status "$BASE/proxy/$DPORT/status" "$TOKEN"
  [ "$output" = "200 True" ]
  qdel "$jobid"
  wait "$JOB_QSUB_PID" || true
  run job_output dask-cluster-path
  [[ $output == *"received SIGTERM"* ]]
  [[ $output != *warning* ]]
  [ ! -e scheduler.jupyter.json ]
  assert_no_job_processes
}

@test "a broken JupyterLab install fails the job with its log's last lines; none at all is refused before anything starts" {
  prefix_with jupyter-lab 'echo "Traceback (most recent call last):" >&2
echo "ModuleNotFoundError: No module named jupyterlab_server" >&2
exit 1'
  SECONDS=0
  submit launch-dask-cluster-path.pbs -l select=2:ncpus=1:mem=1gb -l walltime=00:05:00 \
    -v "JUPYTER=yes,PYTHON_PREFIX=$BATS_TEST_TMPDIR/prefix"
  [ "$status" -eq 1 ]
  [ "$SECONDS" -lt 40 ]
  run job_output dask-cluster-path
  echo "$output"
  [[ $output == *"JupyterLab exited before it was ready (JUPYTER=yes); its log "*"jupyter.log ends with:"* ]]
  [[ $output == *"ModuleNotFoundError: No module named jupyterlab_server"* ]]
  [[ $output == *"JupyterLab did not start (JUPYTER=yes): the job ends"* ]]
  [ ! -e scheduler.json ]
  assert_no_job_processes
  rm -f dask-cluster-path.o* prefix/bin/jupyter-lab
  submit launch-dask-cluster-path.pbs -l select=2:ncpus=1:mem=1gb -v "JUPYTER=yes,PYTHON_PREFIX=$BATS_TEST_TMPDIR/prefix"
  [ "$status" -eq 1 ]
  run job_output dask-cluster-path
  [[ $output == *"JUPYTER=yes but there is no jupyter-lab in the job's environment"*"pip install -r requirements/jupyter.txt"* ]]
  [[ $output != *"starting the scheduler"* ]]
}

@test "JUPYTER=yes is refused in production mode, and a value the kit does not know anywhere" {
  submit launch-dask-wordcount.pbs -l select=2:ncpus=1:mem=1gb -v JUPYTER=yes
  [ "$status" -eq 1 ]
  run job_output dask-wordcount
  [ "$output" = "dask-pbs: JUPYTER=yes is for the interactive templates (a production job starts no notebook)" ]
  submit launch-dask-cluster-path.pbs -l select=2:ncpus=1:mem=1gb -v JUPYTER=maybe
  [ "$status" -eq 1 ]
}
