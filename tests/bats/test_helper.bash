# Shared set-up for the kit's bats tests: a private fake PBS per test, the fake first on a
# minimal PATH, scratch files in $BATS_TEST_TMPDIR, and no process left behind.

KIT=$(cd "$BATS_TEST_DIRNAME/../.." && pwd)
PY=$KIT/.venv/bin/python
export KIT PY

setup() {
  export FAKEPBS_HOME=$BATS_TEST_TMPDIR/pbs
  export FAKEPBS_KILL_DELAY=${FAKEPBS_KILL_DELAY:-10}
  export PATH=$KIT/tests/fakepbs/bin:/usr/local/bin:/usr/bin:/bin
  # Submit from a scratch folder: the templates find the kit through DASK_PBS_KIT.
  cd "$BATS_TEST_TMPDIR" || return 1
}

teardown() {
  local left
  left=$(job_processes)
  if [[ -n $left ]]; then
    kill -KILL $left 2>/dev/null || true
  fi
  # Namespaces of FAKEPBS_NETNS=1 jobs that a failed test left (none when all went well).
  if [[ -n ${FAKEPBS_NETNS:-} ]]; then
    "$PY" "$KIT/tests/fakepbs/fakepbs.py" _netns_clean >&2 || true
  fi
}

# PIDs of every live process started by this test's fake PBS (the fake's own list).
job_processes() {
  "$PY" "$KIT/tests/fakepbs/fakepbs.py" _processes
}

# Fail if any process of this test's jobs still runs.
assert_no_job_processes() {
  local left
  left=$(job_processes)
  if [[ -n $left ]]; then
    echo "processes left behind:" >&2
    for pid in $left; do tr '\0' ' ' <"/proc/$pid/cmdline" >&2; echo >&2; done
    return 1
  fi
}

# The -v list every test passes: where the kit and its Python are (INTERFACE keeps its
# default, auto: every fake node is this machine, whose name resolves to loopback).
kit_vars() {
  echo "DASK_PBS_KIT=$KIT,PYTHON_PREFIX=$KIT/.venv,READY_TIMEOUT=60"
}

# Submit a template and wait for it: submit TEMPLATE [qsub options...]; sets $output, $status.
submit() {
  local template=$1
  shift
  run qsub -W block=true -v "$(kit_vars)" "$@" "$KIT/scripts/$template"
}

# The production template with this PROGRAM on two chunks of 1 cpu and 1 GB, waited for:
# production_job PROGRAM [VAR=VALUE,...]; sets $status to the job's exit status, $output
# and $lines to its merged output file.
production_job() {
  submit launch-dask-wordcount.pbs -l select=2:ncpus=1:mem=1gb -v "${2:+$2,}PROGRAM=$1"
  local job_status=$status
  run job_output dask-wordcount
  status=$job_status
}

# Start a template in the background (qsub -W block=true &); sets JOB_QSUB_PID,
# which the tests wait on.
submit_background() {
  local template=$1
  shift
  qsub -W block=true -v "$(kit_vars)" "$@" "$KIT/scripts/$template" >"$BATS_TEST_TMPDIR/qsub.out" &
  # shellcheck disable=SC2034 # read by the .bats files that load this helper
  JOB_QSUB_PID=$!
}

# The job id printed by submit_background's qsub.
background_job_id() {
  local _
  for _ in $(seq 50); do
    [[ -s $BATS_TEST_TMPDIR/qsub.out ]] && { head -n 1 "$BATS_TEST_TMPDIR/qsub.out"; return; }
    sleep 0.1
  done
  return 1
}

# Run Python code against the job's cluster with a real Client (code gets `client`),
# connected as a user would: examples/job_client.py, with the job's TLS certificate.
with_client() {
  "$PY" - "$1" <<'PYEOF'
import os, sys
sys.path.insert(0, os.path.join(os.environ["KIT"], "examples"))
from job_client import connect
client = connect("scheduler.json", timeout="20s")
exec(sys.argv[1])
client.close()
PYEOF
}

# The job's merged output file (templates use -j oe): job_output NAME.
job_output() {
  cat "$BATS_TEST_TMPDIR/$1".o*
}

# What the running job has logged so far (PBS copies the output file only at the end):
# dask-logs/<job>/job.log, for the job started by submit_background.
job_output_so_far() {
  cat "$BATS_TEST_TMPDIR/dask-logs/$(background_job_id)/job.log"
}

# Wait for the job's published scheduler file (the cluster is ready once it exists).
wait_ready() {
  "$PY" "$KIT/helpers/dashboard_url.py" --wait 90 scheduler.json
}

# ------------------------------------------------------------------ JUPYTER=yes jobs

# Wait until the job's JupyterLab answers (the kit then describes it beside scheduler.json);
# sets URL (with its token), BASE (without), TOKEN, PORT and DPORT (the dashboard's port).
wait_jupyter() {
  local _
  for _ in $(seq 600); do
    [[ -s scheduler.jupyter.json ]] && break
    sleep 0.1
  done
  [[ -s scheduler.jupyter.json ]]
  URL=$(sed -n 's/^  jupyter:   \([^ ]*\) .*/\1/p' dask-logs/*/cluster-info.txt)
  BASE=${URL%%/lab?token=*}
  TOKEN=${URL##*token=}
  # shellcheck disable=SC2034 # PORT and DPORT are read by the .bats files
  PORT=${BASE##*:}
  # shellcheck disable=SC2034
  DPORT=$("$PY" -c 'import json; print(json.load(open("scheduler.json"))["services"]["dashboard"])')
}

# HTTP status of a GET: http_status URL [TOKEN]
http_status() {
  "$PY" - "$@" <<'PY'
import sys, urllib.error, urllib.request
request = urllib.request.Request(sys.argv[1])
if len(sys.argv) > 2:
    request.add_header("Authorization", f"token {sys.argv[2]}")
try:
    with urllib.request.urlopen(request, timeout=10) as reply:
        body = reply.read().decode(errors="replace")
        print(reply.status, "Dask" in body)
except urllib.error.HTTPError as exc:
    print(exc.code)
PY
}

# A cell in a new kernel of the job's JupyterLab: cell CODE
cell() {
  "$PY" "$KIT/tests/tools/jupyter_cell.py" "$BASE" "$TOKEN" "$1"
}

# ------------------------------------------------------------------ common job shapes

# Submit an interactive job in the background and wait until its cluster is ready; sets
# JOBID (and JOB_QSUB_PID, as submit_background). Arguments: qsub options.
start_cluster() {
  submit_background launch-dask-cluster-path.pbs "$@"
  JOBID=$(background_job_id)
  run wait_ready
  [ "$status" -eq 0 ]
}

# qdel the job start_cluster started and wait for its qsub -W block=true; sets QSUB_STATUS.
# shellcheck disable=SC2034 # QSUB_STATUS is read by the .bats files
qdel_and_wait() {
  qdel "$JOBID"
  QSUB_STATUS=0
  wait "$JOB_QSUB_PID" || QSUB_STATUS=$?
}

# A Python prefix for PYTHON_PREFIX=$BATS_TEST_TMPDIR/prefix: the kit's python3 and dask,
# and a stand-in COMMAND with the shell BODY (a site's broken or missing tool).
# Arguments: COMMAND BODY.
prefix_with() {
  mkdir -p prefix/bin
  ln -sf "$KIT/.venv/bin/python3" "$KIT/.venv/bin/dask" prefix/bin/
  printf '#!/bin/sh\n%s\n' "$2" >"prefix/bin/$1"
  chmod +x "prefix/bin/$1"
}

# An interactive job whose walltime (25 s) ends it: it must stop itself first, and exit 0.
# Arguments: extra -v settings.
# shellcheck disable=SC2154 # $output and $status are set by bats' run (submit runs it)
ends_before_its_walltime() {
  SECONDS=0
  submit launch-dask-cluster-path.pbs -l select=2:ncpus=1:mem=1gb -l walltime=00:00:25 -v "$1"
  [ "$status" -eq 0 ]
  [ "$SECONDS" -lt 25 ]
  run job_output dask-cluster-path
  [[ $output == *"holding the cluster for "* ]]
  [[ $output == *"walltime nearly over: shutting the cluster down"* ]]
  [[ $output != *"job killed: walltime"* ]]
  [[ $output != *warning* ]]
  assert_no_job_processes
}
