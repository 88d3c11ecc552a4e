#!/usr/bin/env bats
# GPU chunks on the fake PBS (ngpus: each fake host's GPUs, set per host as PBS's cgroup
# hook does, FAKEPBS_LAUNCH_HOOK=1; the fake nvidia-smi lists them): one worker per GPU,
# each seeing only its own device of its own host, with a GPU=1 resource.

load test_helper

# Each worker: name, CUDA_VISIBLE_DEVICES, its GPU resource, and the UUIDs nvidia-smi -L
# lists on its host (the fake answers for the host the process runs on).
gpu_table() {
  with_client '
import os, re, subprocess
def seen(dask_worker):
    listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
    return (str(dask_worker.name), os.environ.get("CUDA_VISIBLE_DEVICES", "UNSET"),
            int(dask_worker.state.total_resources.get("GPU", 0)), os.environ["PBS_NODENUM"],
            ",".join(re.findall(r"UUID: (GPU-[^)]+)", listed)))
for row in sorted(client.run(seen).values()):
    print(*row)
print("ran", sorted(client.gather([client.submit(lambda i: os.environ["CUDA_VISIBLE_DEVICES"], i, resources={"GPU": 1}, pure=False) for i in range(8)]))[0][:4])
'
}

@test "select=2:ncpus=8:ngpus=4: 8 GPU workers (4 beside the scheduler), each with one device of its own host and GPU=1" {
  export FAKEPBS_LAUNCH_HOOK=1
  submit_background launch-dask-cluster-path.pbs -l select=2:ncpus=8:ngpus=4:mem=8gb -l walltime=00:05:00
  jobid=$(background_job_id)
  run wait_ready
  [ "$status" -eq 0 ]
  run gpu_table
  echo "$output"
  [ "$status" -eq 0 ]
  [ "${#lines[@]}" -eq 9 ]
  local row name device gpu host listed devices=()
  for row in "${lines[@]:0:8}"; do
    read -r name device gpu host listed <<<"$row"
    [[ $name == chunk-[01]-gpu[0-3] ]]
    [ "$gpu" = 1 ]
    [[ $device == GPU-* && $device != *,* ]]      # one device
    [[ ,$listed, == *,$device,* ]]                # of its own host
    [ "$host" = "${name:6:1}" ]                    # chunk I runs on host I here
    devices+=("$device")
  done
  [ "$(printf '%s\n' "${devices[@]}" | sort -u | wc -l)" -eq 8 ]  # all distinct
  [ "${lines[8]}" = "ran GPU-" ]
  run cat "dask-logs/$jobid/cluster-info.txt"
  [[ $output == *"  workers:   chunk 0: 4 GPU workers (one per GPU, GPU=1) of 1 thread, memory "*" (beside the scheduler); chunk 1: 4 GPU workers (one per GPU, GPU=1) of 2 threads, memory "* ]]
  qdel "$jobid"
  wait "$JOB_QSUB_PID" || true
  assert_no_job_processes
}

@test "a mixed select: CPU chunks stay CPU workers, without the GPU chunks' devices" {
  export FAKEPBS_LAUNCH_HOOK=1 FAKEPBS_GPU_IDS=index
  submit_background launch-dask-cluster-path.pbs -l select=1:ncpus=1:mem=1gb+1:ncpus=2:ngpus=2:mem=2gb+1:ncpus=2:mem=2gb \
    -l walltime=00:05:00
  run wait_ready
  [ "$status" -eq 0 ]
  run with_client '
import os
def seen(dask_worker):
    return (str(dask_worker.name), os.environ.get("CUDA_VISIBLE_DEVICES", "UNSET"), os.environ.get("CUDA_DEVICE_ORDER", "UNSET"),
            int(dask_worker.state.total_resources.get("GPU", 0)), dask_worker.state.nthreads)
for row in sorted(client.run(seen).values()):
    print(*row)
'
  echo "$output"
  [ "$output" = "chunk-1-gpu0 0 PCI_BUS_ID 1 1
chunk-1-gpu1 1 PCI_BUS_ID 1 1
chunk-2 UNSET UNSET 0 2" ]
  # One node-file line per chunk: the worker task started on line 1 before the plan found a
  # GPU chunk there, and ended. NASA NAS builds write ncpus lines per chunk: no task starts
  # before the plan, and chunk 1 has only its GPU workers' logs.
  if [[ ${FAKEPBS_NODEFILE:-standard} == nas ]]; then
    [ ! -e "dask-logs/$(background_job_id)/worker-1.log" ]
  else
    grep -qx "dask-pbs: node node01: the plan has no worker of chunk 1 on line 1 of \$PBS_NODEFILE: this task ends (the job starts that chunk's tasks where the plan puts them)" \
      "dask-logs/$(background_job_id)/worker-1.log"
  fi
  qdel "$(background_job_id)"
  wait "$JOB_QSUB_PID" || true
  assert_no_job_processes
}

@test "WORKER_COMMAND=auto runs dask cuda worker where dask-cuda is installed, with EXTRA_CUDA_WORKER_ARGS" {
  export FAKEPBS_LAUNCH_HOOK=1
  submit_background launch-dask-cluster-path.pbs -l select=1:ncpus=1:mem=1gb+1:ncpus=2:ngpus=2:mem=2gb -l walltime=00:05:00 \
    -v "PYTHONPATH=$KIT/tests/fixtures/dask_cuda_standin,DASK_CUDA_STANDIN_LOG=$BATS_TEST_TMPDIR/cuda.jsonl" \
    -v "EXTRA_CUDA_WORKER_ARGS=--device-memory-limit 0.8 --enable-cudf-spill"
  run wait_ready
  [ "$status" -eq 0 ]
  run "$PY" - <<'PY'
import json
runs = [json.loads(line) for line in open("cuda.jsonl")]
for run in sorted(runs, key=lambda r: r["argv"][r["argv"].index("--name") + 1]):
    argv = run["argv"]
    print(argv[argv.index("--name") + 1], argv[argv.index("--resources") + 1], "--device-memory-limit" in argv,
          "--enable-cudf-spill" in argv, "--nworkers" in argv, "," in run["CUDA_VISIBLE_DEVICES"])
PY
  echo "$output"
  [ "$output" = "chunk-1-gpu0 GPU=1 True True False False
chunk-1-gpu1 GPU=1 True True False False" ]
  run with_client 'print(sorted(w["name"] for w in client.scheduler_info(n_workers=-1)["workers"].values()))'
  [ "$output" = "['chunk-1-gpu0', 'chunk-1-gpu1']" ]
  qdel "$(background_job_id)"
  wait "$JOB_QSUB_PID" || true
  assert_no_job_processes
}

@test "a GPU chunk whose host shows no GPU fails at once, naming the host and what it saw" {
  # No launch hook, and an nvidia-smi that finds no device first on the job's PATH.
  prefix_with nvidia-smi 'echo "No devices were found"; exit 6'
  SECONDS=0
  submit launch-dask-cluster-path.pbs -l select=1:ncpus=1:mem=1gb+1:ncpus=2:ngpus=2:mem=2gb -l walltime=00:05:00 \
    -v "PYTHON_PREFIX=$BATS_TEST_TMPDIR/prefix"
  [ "$status" -eq 1 ]
  [ "$SECONDS" -lt 40 ]
  run job_output dask-cluster-path
  echo "$output"
  [[ $output == *"node node01: the chunk asks for 2 GPUs but this host shows none (CUDA_VISIBLE_DEVICES is unset and nvidia-smi -L printed 'No devices were found'"* ]]
  [[ $output == *"the cluster did not start"* ]]
  assert_no_job_processes
}
