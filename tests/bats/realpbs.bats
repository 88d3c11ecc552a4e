#!/usr/bin/env bats
# The kit on PBS as sites run it: the fake's harsher modes (tests/fakepbs/README.md), each
# with a template end to end: what the job read from PBS, the workers' threads and memory,
# the walltime, per-host variables, qdel and the exit statuses PBS records.

load test_helper

# The workers as the cluster sees them, one line each: name nthreads memory_limit.
worker_table() {
  with_client '
for w in sorted(client.scheduler_info(n_workers=-1)["workers"].values(), key=lambda w: w["name"]):
    print(w["name"], w["nthreads"], w["memory_limit"])
'
}

# A production job whose PROGRAM works until it is stopped, then qdel: sets QSUB_STATUS,
# and $output to the job's output.
qdel_a_working_program() {
  printf 'import time\nprint("working", flush=True)\ntime.sleep(120)\n' >slow.py
  submit_background launch-dask-wordcount.pbs -l select=2:ncpus=1:mem=1gb -v PROGRAM="python3 slow.py"
  JOBID=$(background_job_id)
  run wait_ready
  [ "$status" -eq 0 ]
  qdel_and_wait
  run job_output dask-wordcount
  [[ $output == *"working"* ]]
  [[ $output == *"received SIGTERM"* ]]
  [[ $output != *warning* ]]
}

GiB=1073741824

@test "OpenPBS <= 23.06 JSON (invalid, with qsub -V values): chunks, memory and walltime read leniently" {
  export FAKEPBS_QSTAT_JSON=released
  # What -V brings from a login shell: a prompt, an Lmod function, a number with zeros.
  export PS1='\u@\h:\w\$ ' ZEROS=000123 HALF=.5
  ml() { eval "$("$LMOD_DIR/ml_cmd" "$@")"; }
  export -f ml  # as Lmod's BASH_FUNC_ml%%
  start_cluster -V -l select=3:ncpus=2:mem=2gb -l walltime=00:05:00
  run worker_table
  echo "$output"
  [ "$output" = "chunk-0 1 966367642
chunk-1 2 1932735284
chunk-2 2 1932735284" ]
  run job_output_so_far
  [[ $output == *"read the job's chunks from qstat -f -F json (invalid JSON from an OpenPBS <= 23.06 qstat, read leniently)"* ]]
  [[ $output == *"holding the cluster for "*" s (the walltime left, known from PBS"* ]]
  [[ $output != *warning* ]]
  qdel_and_wait
  assert_no_job_processes
}

# Each qstat form has a test of its own, shaped alike on purpose: the chunks, memory and
# source each form must give are spelled out where a reader of that form looks for them.
@test "PBS Pro before 18 (no -F json): the folded qstat -f text gives chunks and walltime" {
  export FAKEPBS_QSTAT_JSON=none
  # A long variable makes qstat fold Variable_List over several lines.
  start_cluster -l select=3:ncpus=2:mem=4gb -l walltime=00:05:00 \
    -v "LONG_ONE=$(printf 'x%.0s' {1..200}),OTHER=$(printf 'y,%.0s' {1..5})"
  run worker_table
  echo "$output"
  [ "$output" = "chunk-0 1 1932735283
chunk-1 2 3865470567
chunk-2 2 3865470567" ]
  run job_output_so_far
  [[ $output == *"read the job's chunks from qstat -f"* ]]
  [[ $output != *"-F json"* ]]
  [[ $output == *"known from PBS"* ]]
  qdel_and_wait
  assert_no_job_processes
}

@test "select=3 with the queue's default_chunk: mem and ncpus come from schedselect" {
  export FAKEPBS_DEFAULT_CHUNK=ncpus=2:mem=2gb
  start_cluster -l select=3 -l walltime=00:05:00
  run worker_table
  [ "$output" = "chunk-0 1 966367642
chunk-1 2 1932735284
chunk-2 2 1932735284" ]
  qdel_and_wait
  assert_no_job_processes
}

@test "a launch hook's per-host variables (CUDA_VISIBLE_DEVICES ...) stay each host's own" {
  export FAKEPBS_LAUNCH_HOOK=1
  start_cluster -l select=3:ncpus=1:ngpus=2:mem=1gb -l walltime=00:05:00
  run with_client '
import os, re, subprocess
def seen(dask_worker):
    listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
    return (dask_worker.name, os.environ.get("CUDA_VISIBLE_DEVICES"), os.environ.get("CUDA_DEVICE_ORDER"),
            os.environ.get("PBS_NODENUM"), ",".join(re.findall(r"UUID: (GPU-[^)]+)", listed)))
for name, cuda, order, nodenum, host_gpus in sorted(client.run(seen).values()):
    print(name, cuda, order, nodenum, "own-host" if cuda in host_gpus.split(",") else host_gpus)
print("scheduler", *client.run_on_scheduler(lambda: (os.environ.get("CUDA_VISIBLE_DEVICES"), os.environ.get("PBS_NODENUM"))))
'
  echo "$output"
  [ "$status" -eq 0 ]
  [ "${#lines[@]}" -eq 5 ]
  # Each GPU worker: one device of the list the hook gave its own host, none shared.
  [[ ${lines[0]} == "chunk-1-gpu0 GPU-"*" PCI_BUS_ID 1 own-host" ]]
  [[ ${lines[1]} == "chunk-1-gpu1 GPU-"*" PCI_BUS_ID 1 own-host" ]]
  [[ ${lines[2]} == "chunk-2-gpu0 GPU-"*" PCI_BUS_ID 2 own-host" ]]
  [[ ${lines[3]} == "chunk-2-gpu1 GPU-"*" PCI_BUS_ID 2 own-host" ]]
  [ "$(printf '%s\n' "${lines[@]:0:4}" | awk '{print $2}' | sort -u | wc -l)" -eq 4 ]
  # The scheduler's host keeps its own list (chunk 0's 1 core holds the scheduler alone).
  [[ ${lines[4]} == "scheduler GPU-"*",GPU-"*" 0" ]]
  qdel_and_wait
  assert_no_job_processes
}

@test "login-shell start (as a real MoM): qdel stops 3 chunks in under 2 s with no warning; PBS records 271" {
  export FAKEPBS_START=login FAKEPBS_KILL_DELAY=10
  start_cluster -l select=3:ncpus=1:mem=1gb -l walltime=00:05:00
  qdel_and_wait
  # The login shell dies of the SIGTERM: Exit_status 271, which qsub -W block=true returns mod 256.
  [ "$QSUB_STATUS" -eq 15 ]
  run qstat -x -f "$JOBID"
  [[ $output == *"Exit_status = 271"* ]]
  run job_output dask-cluster-path
  echo "$output"
  [[ $output == *"received SIGTERM: shutting the cluster down"* ]]
  [[ $output =~ cluster\ stopped\ in\ ([0-9]+\.[0-9]+)\ s ]]
  [ "${BASH_REMATCH[1]%.*}" -lt 2 ]
  [[ $output != *warning* ]]
  [[ $output != *"did not stop"* ]]
  assert_no_job_processes
}

@test "direct start (the fake's default): qdel stops 3 chunks in under 2 s with no warning; the job exits 0" {
  start_cluster -l select=3:ncpus=1:mem=1gb -l walltime=00:05:00
  qdel_and_wait
  [ "$QSUB_STATUS" -eq 0 ]
  run job_output dask-cluster-path
  [[ $output =~ cluster\ stopped\ in\ ([0-9]+\.[0-9]+)\ s ]]
  [ "${BASH_REMATCH[1]%.*}" -lt 2 ]
  [[ $output != *warning* ]]
  assert_no_job_processes
}

@test "production, login-shell start: qdel gives 271, the program is stopped, nothing left" {
  export FAKEPBS_START=login
  qdel_a_working_program
  [ "$QSUB_STATUS" -eq 15 ]
  assert_no_job_processes
}

@test "production, direct start: qdel gives the script's 143 (128 + SIGTERM), nothing left" {
  qdel_a_working_program
  [ "$QSUB_STATUS" -eq 143 ]
  [[ $output == *"exit status 143"* ]]
  assert_no_job_processes
}

@test "walltime under a login shell: the interactive job ends itself before PBS would, exit 0" {
  export FAKEPBS_START=login
  ends_before_its_walltime WALLTIME_MARGIN=15
}

@test "a spawn that fails (real pbsdsh: a message on stderr, exit 0) fails the job naming the node" {
  export FAKEPBS_SPAWN_FAIL=2
  SECONDS=0
  submit launch-dask-cluster-path.pbs -l select=3:ncpus=1:mem=1gb -l walltime=00:02:00
  [ "$status" -eq 1 ]
  [ "$SECONDS" -lt 30 ]
  run job_output dask-cluster-path
  echo "$output"
  [[ $output == *"the worker of chunk 2 (node node02)"* ]]
  [[ $output == *"spawn failed"* || $output == *"on spawn"* ]]
  [[ $output == *"the cluster did not start"* ]]
  assert_no_job_processes
}

@test "NAS node files (ncpus lines per chunk): one worker per chunk, on the right nodes" {
  export FAKEPBS_NODEFILE=nas
  start_cluster -l select=3:ncpus=2:mem=2gb -l walltime=00:05:00
  run with_client '
import os
for name, node in sorted(client.run(lambda dask_worker: (dask_worker.name, os.environ["PBS_NODENUM"])).values()):
    print(name, node)
'
  echo "$output"
  [ "$output" = "chunk-0 0
chunk-1 1
chunk-2 2" ]
  qdel_and_wait
  assert_no_job_processes
}

@test "fully qualified node names: the plan and the banner use them" {
  export FAKEPBS_FQDN=cluster.example.org
  start_cluster -l select=2:ncpus=1:mem=1gb -l walltime=00:05:00
  run job_output_so_far
  [[ $output == *"starting the scheduler on chunk 0 (node node00.cluster.example.org)"* ]]
  run worker_table
  [ "$output" = "chunk-1 1 966367642" ]
  qdel_and_wait
  assert_no_job_processes
}

@test "place=pack: every chunk on one host, its memory shared by every process there" {
  start_cluster -l select=3:ncpus=1:mem=1gb -l place=pack -l walltime=00:05:00
  run worker_table
  # The plan's share of each chunk (1gb less 10%) stands: the host has no cgroup here.
  [ "$output" = "chunk-1 1 966367642
chunk-2 1 966367642" ]
  qdel_and_wait
  assert_no_job_processes
}

@test "a site's memory cgroup per host caps the workers, with or without mem=" {
  [[ $(id -u) -eq 0 ]] || skip "needs root (a memory cgroup per fake host)"
  export FAKEPBS_CGROUP=1 FAKEPBS_CGROUP_DEFAULT=1gb
  # No mem=: PBS's hook gives each host memory.default; each worker gets its share.
  start_cluster -l select=2:ncpus=2 -l walltime=00:05:00 -v NWORKERS=2
  run worker_table
  echo "$output"
  # 1gb less 10%, for the Dask processes of each host: node01's 2 workers, node00's 2
  # workers and the scheduler.
  [ "$output" = "chunk-0-0 1 322122547
chunk-0-1 1 322122547
chunk-1-0 1 483183821
chunk-1-1 1 483183821" ]
  qdel_and_wait
  rm -f dask-cluster-path.o*
  # place=pack: one host holds 3 chunks of 2gb: its cgroup 6gb, 1 scheduler + 4 workers.
  start_cluster -l select=3:ncpus=2:mem=2gb -l place=pack -l walltime=00:05:00 -v NWORKERS=2
  run worker_table
  echo "$output"
  # The host's cgroup is the sum of its chunks' mem: 6gb for 7 Dask processes (6 workers and
  # the scheduler). Chunk 0's own share (2gb less 10%, for 2 workers and the scheduler)
  # fits in it; chunks 1 and 2's (halved) does not: the host's share caps them.
  [ "$(awk '{print $3}' <<<"$output" | sort -u | tr '\n' ' ')" = "644245094 828315121 " ]
  qdel_and_wait
  assert_no_job_processes
}

@test "no walltime from PBS (qstat fails here): a warning, and the WALLTIME knob ends the job in time" {
  # A site whose compute nodes have no working qstat: one that fails, first on the job's PATH.
  prefix_with qstat 'echo "qstat: cannot connect to server" >&2; exit 1'
  start_cluster -l select=2:ncpus=1:mem=1gb -l walltime=00:05:00 -v "PYTHON_PREFIX=$BATS_TEST_TMPDIR/prefix"
  run job_output_so_far
  echo "$output"
  [[ $output == *"warning: "*"walltime"* ]]
  [[ $output == *"holding the cluster until qdel $JOBID or the walltime (unknown: set WALLTIME"* ]]
  run worker_table
  # No mem= known: the worker divides its host's memory (here this machine's RAM, less 10%).
  local ram
  ram=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) * 1024))
  [ "$output" = "chunk-1 1 $((ram - ram / 10))" ]
  qdel_and_wait
  rm -f dask-cluster-path.o*
  # Held until PBS's walltime kill: -29 (227 through block), and still nothing left.
  submit launch-dask-cluster-path.pbs -l select=2:ncpus=1:mem=1gb -l walltime=00:00:12 \
    -v "PYTHON_PREFIX=$BATS_TEST_TMPDIR/prefix"
  [ "$status" -eq 227 ]
  run job_output dask-cluster-path
  [[ $output == *"job killed: walltime"* ]]
  [[ $output == *"received SIGTERM"* ]]
  assert_no_job_processes
  rm -f dask-cluster-path.o*
  # Then the knob: the job submitted as a timed one, like jupyter.bats's broken install (its
  # shape, other knobs and other checks).
  SECONDS=0
  submit launch-dask-cluster-path.pbs -l select=2:ncpus=1:mem=1gb -l walltime=00:00:30 \
    -v "PYTHON_PREFIX=$BATS_TEST_TMPDIR/prefix,WALLTIME=00:00:30,WALLTIME_MARGIN=20"
  [ "$status" -eq 0 ]
  [ "$SECONDS" -lt 30 ]
  run job_output dask-cluster-path
  [[ $output == *"known from WALLTIME"* ]]
  [[ $output == *"walltime nearly over"* ]]
  assert_no_job_processes
}
