"""kit.py gpu (gpus.py): a GPU worker's device on its host, and the dask-cuda stand-in."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import DASK, KIT, sleeper, stop_session
from dask_pbs_kit import gpus, kit_cli
from dask_pbs_kit.errors import BAD_VALUE, USAGE
from launch_hook import gpu_uuid

STANDIN = KIT / "tests" / "fixtures" / "dask_cuda_standin"
UUIDS = ["GPU-6f1e4c1a-0b51-7c2d-9a8e-1d2c3b4a5f60", "GPU-0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9",
         "GPU-11111111-2222-3333-4444-555555555555", "GPU-99999999-8888-7777-6666-555555555555"]
SMI_L = "".join(f"GPU {i}: NVIDIA A100-SXM4-40GB (UUID: {u})\n" for i, u in enumerate(UUIDS))


def gpu(argv, capsys):
    """kit.py gpu ARGV: (status, stdout, stderr)."""
    code = kit_cli.main(["gpu", *argv])
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.out, out.err


@pytest.fixture
def smi(tmp_path, monkeypatch):
    """A stub nvidia-smi first on PATH that prints $SMI_OUT and exits $SMI_STATUS."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "nvidia-smi"
    stub.write_text('#!/bin/sh\n[ "$1" = -L ] || exit 2\nprintf "%s" "$SMI_OUT"\nexit "${SMI_STATUS:-0}"\n')
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return monkeypatch


# ------------------------------------------------------------------ parsing


def test_cuda_visible_devices_uuids_indices_blanks_and_none():
    assert gpus.parse_visible(",".join(UUIDS)) == UUIDS
    assert gpus.parse_visible(" 0, 1 ,,3 ") == ["0", "1", "3"]
    assert gpus.parse_visible("") == [] and gpus.parse_visible(None) == []
    assert gpus.parse_visible("NoDevFiles") == [] and gpus.parse_visible(" , ") == []


def test_nvidia_smi_lines_and_mig_instances():
    assert gpus.parse_nvidia_smi(SMI_L) == UUIDS
    mig = ("GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-aaaaaaaa-0000-0000-0000-000000000000)\n"
           "  MIG 3g.40gb     Device  0: (UUID: MIG-bbbbbbbb-0000-0000-0000-000000000000)\n"
           "  MIG 3g.40gb     Device  1: (UUID: MIG-cccccccc-0000-0000-0000-000000000000)\n"
           "GPU 1: NVIDIA A100-SXM4-80GB (UUID: GPU-dddddddd-0000-0000-0000-000000000000)\n")
    assert gpus.parse_nvidia_smi(mig) == ["MIG-bbbbbbbb-0000-0000-0000-000000000000",
                                          "MIG-cccccccc-0000-0000-0000-000000000000",
                                          "GPU-dddddddd-0000-0000-0000-000000000000"]
    assert gpus.parse_nvidia_smi("No devices found.\n") == []


# ------------------------------------------------------------------ kit.py gpu


def test_the_ith_entry_of_cuda_visible_devices_uuids(capsys, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", ",".join(UUIDS))
    code, out, err = gpu(["--index", "2", "--gpus", "4", "--node", "g1"], capsys)
    assert (code, err) == (0, "")
    device, command, how = out.rstrip("\n").split("\t")
    assert device == UUIDS[2] and command == "dask-worker"
    assert how == ("GPU 2 of 4 on this host, from CUDA_VISIBLE_DEVICES; dask worker (no dask-cuda "
                   "in the job's environment, WORKER_COMMAND=auto)")


def test_indices_as_pbs_19_1_writes_them(capsys, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    for index in range(4):
        assert gpu(["--index", str(index), "--gpus", "4"], capsys)[1].split("\t")[0] == str(index)


def test_nvidia_smi_when_cuda_visible_devices_is_unset_or_empty(capsys, smi):
    smi.setenv("SMI_OUT", SMI_L)
    code, out, _ = gpu(["--index", "3", "--gpus", "4"], capsys)
    assert code == 0 and out.split("\t")[0] == UUIDS[3]
    assert out.split("\t")[2].startswith("GPU 3 of 4 on this host, from nvidia-smi -L "
                                         "(CUDA_VISIBLE_DEVICES is unset)")
    smi.setenv("CUDA_VISIBLE_DEVICES", "")
    code, out, _ = gpu(["--index", "1", "--gpus", "4"], capsys)
    assert out.split("\t")[0] == UUIDS[1] and "(CUDA_VISIBLE_DEVICES='' lists no device)" in out


def test_more_gpus_than_the_job_holds_are_taken_by_order_and_the_log_says_so(capsys, smi):
    smi.setenv("SMI_OUT", SMI_L)
    code, out, _ = gpu(["--index", "1", "--gpus", "2"], capsys)
    assert code == 0 and out.split("\t")[0] == UUIDS[1]
    assert "it lists 4 GPUs and the job holds 2: nothing fences them (no PBS cgroup hook)" in out


@pytest.mark.parametrize("smi_out, status, seen", [
    ("No devices found.\n", "6", "nvidia-smi -L printed 'No devices found.' (exit status 6)"),
    ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure "
     "that the latest NVIDIA driver is installed and running.\n", "9",
     "nvidia-smi -L printed \"NVIDIA-SMI has failed because it couldn't communicate with the "
     "NVIDIA driver. Make sure that the latest NVIDIA driver is installed and running.\" "
     "(exit status 9)"),
    ("", "0", "nvidia-smi -L printed nothing"),
])
def test_a_host_without_gpus_fails_at_once_naming_it_and_what_it_saw(capsys, smi, smi_out, status, seen):
    smi.setenv("SMI_OUT", smi_out)
    smi.setenv("SMI_STATUS", status)
    code, out, err = gpu(["--index", "0", "--gpus", "4", "--node", "g7"], capsys)
    assert (code, out) == (gpus.NO_GPU, "")
    assert err == (f"dask-pbs: node g7: the chunk asks for 4 GPUs but this host shows none "
                   f"(CUDA_VISIBLE_DEVICES is unset and {seen})\n")


def test_no_nvidia_smi_at_all(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    code, _, err = gpu(["--index", "0", "--gpus", "1", "--node", "g7"], capsys)
    assert code == gpus.NO_GPU
    assert err == ("dask-pbs: node g7: the chunk asks for 1 GPU but this host shows none "
                   "(CUDA_VISIBLE_DEVICES is unset and nvidia-smi is not on PATH)\n")


def test_fewer_devices_than_the_chunks_ask_for(capsys, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-a,GPU-b")
    code, _, err = gpu(["--index", "0", "--gpus", "4", "--node", "g1"], capsys)
    assert code == gpus.NO_GPU
    assert err == ("dask-pbs: node g1: the chunk asks for 4 GPUs but this host shows 2 "
                   "(CUDA_VISIBLE_DEVICES lists GPU-a, GPU-b)\n")
    # Chunks sharing the host: the message says so.
    code, _, err = gpu(["--index", "3", "--gpus", "4", "--chunk-gpus", "2", "--node", "g1"], capsys)
    assert "the job's chunks on this host ask for 4 GPUs (this one 2) but this host shows 2" in err


def test_initial_from_reads_the_tasks_own_variable_not_env_sh_s(capsys, monkeypatch, smi):
    # A task's start (what PBS gave it) against what env.sh carried from the first node.
    smi.setenv("SMI_OUT", SMI_L)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="GPU-own-0,GPU-own-1")
    with_own = sleeper(env)
    env.pop("CUDA_VISIBLE_DEVICES")
    without = sleeper(env)
    try:
        carried = {"CUDA_VISIBLE_DEVICES": "GPU-first-node", "PATH": os.environ["PATH"], "SMI_OUT": SMI_L}
        gpus.cli(["--index", "1", "--gpus", "2", "--initial-from", str(with_own.pid)], carried)
        assert capsys.readouterr().out.split("\t")[0] == "GPU-own-1"
        gpus.cli(["--index", "1", "--gpus", "2", "--initial-from", str(without.pid)], carried)
        assert capsys.readouterr().out.split("\t")[0] == UUIDS[1]  # nvidia-smi, not GPU-first-node
    finally:
        for proc in (with_own, without):
            proc.kill()
            proc.wait()
    # A PID whose start cannot be read: this environment.
    gpus.cli(["--index", "0", "--gpus", "1", "--initial-from", "999999999"], carried)
    assert capsys.readouterr().out.split("\t")[0] == "GPU-first-node"


@pytest.mark.parametrize("argv, code, message", [
    ([], USAGE, "missing --index"),
    (["--index", "0"], USAGE, "missing --gpus"),
    (["--index", "x", "--gpus", "2"], BAD_VALUE, "--index must be a whole number, not 'x'"),
    (["--index", "2", "--gpus", "2"], BAD_VALUE, "--index 2 --gpus 2 --chunk-gpus 2: the index must be below"),
    (["--index", "0", "--gpus", "0"], BAD_VALUE, "--index 0 --gpus 0"),
    (["--index", "0", "--gpus", "2", "--chunk-gpus", "3"], BAD_VALUE, "--index 0 --gpus 2 --chunk-gpus 3"),
    (["--index", "0", "--gpus", "2", "--worker-command", "dask-gpu"], BAD_VALUE,
     "WORKER_COMMAND=dask-gpu must be auto, dask-worker or dask-cuda-worker"),
    (["--index", "0", "--gpus", "2", "--initial-from", "me"], BAD_VALUE, "--initial-from must be"),
    (["--dask-cuda", "--index", "0"], USAGE, "--dask-cuda takes no other option"),
    (["--bogus"], USAGE, "unknown option --bogus"),
    (["extra"], USAGE, "unexpected 'extra'"),
])
def test_bad_arguments(capsys, monkeypatch, argv, code, message):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    status, _, err = gpu(argv, capsys)
    assert status == code and err.startswith(f"dask-pbs: {message}")


def test_help(capsys):
    assert kit_cli.main(["gpu", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: kit.py gpu --index I --gpus G")


# ------------------------------------------------------------------ dask-cuda or not


def kit_gpu(*argv, standin=False, **env_more):
    """A real `kit.py gpu` process (with the dask-cuda stand-in importable, or not)."""
    env = dict(os.environ, **env_more)
    env.pop("PYTHONPATH", None)
    if standin:
        env["PYTHONPATH"] = str(STANDIN)
    return subprocess.run([sys.executable, str(KIT / "helpers" / "kit.py"), "gpu", *argv],
                          capture_output=True, text=True, env=env, timeout=60)


def test_dask_cuda_is_found_without_importing_it():
    assert kit_gpu("--dask-cuda").stdout == "no\n"
    assert kit_gpu("--dask-cuda", standin=True).stdout == "yes\n"


@pytest.mark.parametrize("standin, choice, command", [
    (False, "auto", "dask-worker"), (True, "auto", "dask-cuda-worker"),
    (True, "dask-worker", "dask-worker"), (True, "dask-cuda-worker", "dask-cuda-worker"),
])
def test_worker_command(standin, choice, command):
    done = kit_gpu("--index", "0", "--gpus", "1", "--worker-command", choice, standin=standin,
                   CUDA_VISIBLE_DEVICES="GPU-x")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\t")[:2] == ["GPU-x", command]


def test_dask_cuda_worker_without_dask_cuda_is_refused():
    done = kit_gpu("--index", "0", "--gpus", "1", "--node", "g1", "--worker-command", "dask-cuda-worker",
                   CUDA_VISIBLE_DEVICES="GPU-x")
    assert done.returncode == BAD_VALUE
    assert done.stderr.startswith(f"dask-pbs: node g1: WORKER_COMMAND=dask-cuda-worker but dask_cuda "
                                  f"cannot be imported by {sys.executable}: install dask-cuda")


def test_the_helper_loads_neither_subprocess_nor_dask_cuda_when_cuda_visible_devices_tells():
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from dask_pbs_kit import kit_cli; "
            "kit_cli.main(['gpu', '--index', '1', '--gpus', '2']); "
            "print(sorted(m for m in ('subprocess', 'dask_cuda', 'typing', 'dask') if m in sys.modules))")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="0,1", PYTHONPATH=str(STANDIN))
    done = subprocess.run([sys.executable, "-c", code, str(KIT / "helpers")], capture_output=True,
                          text=True, env=env, timeout=60)
    assert done.stdout.splitlines() == ["1\tdask-cuda-worker\tGPU 1 of 2 on this host, from "
                                        "CUDA_VISIBLE_DEVICES; dask cuda worker (dask-cuda is installed, "
                                        "WORKER_COMMAND=auto)", "[]"], done.stderr


# ------------------------------------------------------------------ on the fake PBS

TASKS = """for line in 0 1; do
  pbsdsh -n $line -- /bin/bash -c 'for i in 0 1 2 3; do
    CUDA_VISIBLE_DEVICES=carried-from-node00 {python} {kit} gpu --index $i --gpus 4 --node node0$PBS_NODENUM \\
      --initial-from $$ > "$PBS_O_WORKDIR/gpu-$PBS_NODENUM-$i" 2>&1
    echo $? >> "$PBS_O_WORKDIR/gpu-$PBS_NODENUM-$i"
  done'
done
"""


def run_tasks(tmp_path, select):
    (tmp_path / "gpu.pbs").write_text(
        f"#PBS -l select={select}\n#PBS -l walltime=00:05:00\n"
        + TASKS.format(python=sys.executable, kit=KIT / "helpers" / "kit.py"))
    done = subprocess.run(["qsub", "-W", "block=true", "gpu.pbs"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return {(host, i): (tmp_path / f"gpu-{host}-{i}").read_text().splitlines()
            for host in (0, 1) for i in range(4)}


@pytest.mark.parametrize("hook, ids", [("1", "uuid"), ("1", "index"), ("", "uuid")])
def test_each_task_gets_a_distinct_device_of_its_own_host(fakepbs, tmp_path, monkeypatch, hook, ids):
    # The cgroup hook's CUDA_VISIBLE_DEVICES (UUIDs, or indices as in 19.1), or without the
    # hook the fake's nvidia-smi -L of each host.
    monkeypatch.setenv("FAKEPBS_LAUNCH_HOOK", hook)
    monkeypatch.setenv("FAKEPBS_GPU_IDS", ids)
    got = run_tasks(tmp_path, "2:ncpus=8:ngpus=4")
    for (host, i), lines in got.items():
        assert lines[-1] == "0", lines
        device, command, how = lines[0].split("\t")
        if ids == "index" and hook:
            assert device == str(i)
        else:
            assert device == gpu_uuid("1.fakepbs", host, i)
        assert how.startswith(f"GPU {i} of 4 on this host, from "
                              + ("CUDA_VISIBLE_DEVICES" if hook else "nvidia-smi -L"))
    if ids == "uuid":
        assert len({lines[0].split("\t")[0] for lines in got.values()}) == 8


def test_a_mixed_select_whose_cpu_host_is_asked_for_a_gpu_fails_with_the_message(fakepbs, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKEPBS_LAUNCH_HOOK", "1")
    got = run_tasks(tmp_path, "1:ncpus=2+1:ncpus=8:ngpus=4")
    assert got[0, 0] == ["dask-pbs: node node00: the chunk asks for 4 GPUs but this host shows none "
                         "(CUDA_VISIBLE_DEVICES is unset and nvidia-smi -L printed 'No devices found.' "
                         "(exit status 6))", str(gpus.NO_GPU)]
    assert got[1, 3][0].split("\t")[0] == gpu_uuid("1.fakepbs", 1, 3)


# ------------------------------------------------------------------ the dask-cuda stand-in


def test_the_standin_refuses_what_dask_cuda_refuses():
    env = dict(os.environ, PYTHONPATH=str(STANDIN))
    done = subprocess.run([DASK, "cuda", "worker", "tcp://127.0.0.1:9", "--nworkers", "2"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and "No such option '--nworkers'" in done.stderr


def test_the_standin_records_its_arguments_and_a_cluster_forms(real_scheduler_file, tmp_path):
    from distributed import Client

    record = tmp_path / "standin.jsonl"
    env = dict(os.environ, PYTHONPATH=str(STANDIN), DASK_CUDA_STANDIN_LOG=str(record),
               CUDA_VISIBLE_DEVICES="GPU-6f1e4c1a-0b51-7c2d-9a8e-1d2c3b4a5f60", PBS_NODENUM="1")
    argv = ["--scheduler-file", str(real_scheduler_file), "--name", "chunk-1-0", "--nthreads", "2",
            "--memory-limit", str(2 * 1024**3), "--resources", "GPU=1", "--device-memory-limit", "0.8",
            "--enable-cudf-spill", "--rmm-pool-size", "1GB", "--local-directory", str(tmp_path),
            "--interface", "lo", "--no-dashboard"]
    log = open(tmp_path / "worker.log", "wb")
    proc = subprocess.Popen([DASK, "cuda", "worker", *argv], env=env, start_new_session=True,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        with Client(scheduler_file=str(real_scheduler_file), timeout=60) as client:
            client.wait_for_workers(1, timeout=60)
            (info,) = client.scheduler_info()["workers"].values()
            assert info["name"] == "chunk-1-0" and info["resources"] == {"GPU": 1}
            assert info["nthreads"] == 2 and info["memory_limit"] == 2 * 1024**3
            future = client.submit(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"), resources={"GPU": 1})
            assert future.result(timeout=60) == "GPU-6f1e4c1a-0b51-7c2d-9a8e-1d2c3b4a5f60"
        (entry,) = [json.loads(line) for line in record.read_text().splitlines()]
        assert entry["argv"] == argv
        assert entry["CUDA_VISIBLE_DEVICES"] == "GPU-6f1e4c1a-0b51-7c2d-9a8e-1d2c3b4a5f60"
        assert entry["host"] == "1" and entry["pid"] == proc.pid
        options = entry["options"]
        assert (options["device_memory_limit"], options["enable_cudf_spill"], options["rmm_pool_size"]) == (
            "0.8", True, "1GB")
        assert entry["worker_argv"] == [
            "--nthreads", "2", "--name", "chunk-1-0", "--memory-limit", str(2 * 1024**3),
            "--resources", "GPU=1", "--dashboard-address", ":0", "--local-directory", str(tmp_path),
            "--scheduler-file", str(real_scheduler_file), "--interface", "lo", "--no-dashboard"]
    finally:
        stop_session(proc, timeout=30)
        log.close()
    deadline = time.monotonic() + 10  # the nanny's worker process goes with it
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
