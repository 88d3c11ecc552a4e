"""On a machine with a GPU: a 1-chunk job on the fake PBS runs one worker per GPU beside
the scheduler, and the CUDA driver (ctypes and libcuda, no extra package) shows each
worker exactly one device, its own. Skipped where libcuda does not load or shows no
device; the driver query itself is tested everywhere (without a GPU it says "no driver"),
and against stub_libcuda.c where a C compiler is. DPK_GPU_STUB_JOB=1 also runs the job
test against that stub (4 made-up devices): the kit's GPU path without a GPU.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
KIT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(KIT / "tests" / "python"))
from conftest import fakepbs  # noqa: E402,F401  (the fixture: a private fake PBS, no job left)
from cuda_driver import cuda_devices  # noqa: E402

UUID = re.compile(r"GPU-[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}")


REAL = "libcuda.so.1"
COMPILER = shutil.which("cc") or shutil.which("gcc")


def machine_devices(library: str = REAL, **env_more):
    """(uuids, why) of this machine as a task of the job sees it: no CUDA_VISIBLE_DEVICES,
    no CUDA_DEVICE_ORDER (the fake's index mode sets neither). In a child process: CUDA
    reads them once, at cuInit."""
    uuids, why = cuda_devices(library)
    if uuids is None:
        return None, why  # no driver here: no child needed
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")}
    env.update(env_more)
    done = subprocess.run(
        [sys.executable, "-c", "import json, sys, cuda_driver; "
         "print(json.dumps(cuda_driver.cuda_devices(sys.argv[1])))", library],
        cwd=HERE, env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        return None, f"the driver query failed: {done.stderr.strip()[-300:]}"
    return tuple(json.loads(done.stdout))


DEVICES, WHY = machine_devices()
NO_GPU = f"no GPU to test on ({WHY})" if not DEVICES else ""


@pytest.fixture
def stub_libcuda(tmp_path):
    """stub_libcuda.c built into tmp_path: its path."""
    if not COMPILER:
        pytest.skip("no C compiler to build stub_libcuda.c")
    path = tmp_path / "libcuda-stub.so"
    subprocess.run([COMPILER, "-shared", "-fPIC", "-o", str(path), str(HERE / "stub_libcuda.c")],
                   check=True, capture_output=True, timeout=120)
    return str(path)


def stub_uuid(d: int) -> str:
    return f"GPU-{d:02x}{d:02x}{d:02x}{d:02x}-0000-4000-8000-0000000000{d:02x}"


# ------------------------------------------------------------------ the driver query, anywhere


def test_a_missing_driver_is_reported_never_raised():
    uuids, why = cuda_devices("libcuda-that-does-not-exist.so.1")
    assert uuids is None and why.startswith("no driver: libcuda-that-does-not-exist.so.1 does not load")


def test_a_library_without_the_driver_api_is_no_driver():
    uuids, why = cuda_devices("libc.so.6")
    assert uuids is None and why.startswith("no driver: libc.so.6 lacks the CUDA driver API")


def test_this_machine_gives_uuids_or_says_why_not():
    uuids, why = cuda_devices()
    if uuids is None:
        assert why.startswith(("no driver", "cuInit failed", "cuDeviceGetCount failed", "device "))
    else:
        assert all(UUID.fullmatch(u) or u.startswith("MIG-") for u in uuids), uuids


def test_the_query_against_the_stub_driver(stub_libcuda, monkeypatch):
    # The calls and their argument types, through a library that answers as the driver does.
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert machine_devices(stub_libcuda) == ([stub_uuid(d) for d in range(4)], "ok")
    assert machine_devices(stub_libcuda, CUDA_VISIBLE_DEVICES="2") == ([stub_uuid(2)], "ok")
    assert machine_devices(stub_libcuda, CUDA_VISIBLE_DEVICES=f"{stub_uuid(3)},0") == (
        [stub_uuid(3), stub_uuid(0)], "ok")
    assert machine_devices(stub_libcuda, CUDA_VISIBLE_DEVICES="9") == ([], "ok: the driver shows no device")
    assert machine_devices(stub_libcuda, STUB_LIBCUDA_DEVICES="8")[0][7] == stub_uuid(7)


# ------------------------------------------------------------------ a job, where a GPU is


@pytest.mark.skipif(not DEVICES, reason=NO_GPU)
def test_each_gpu_worker_of_a_one_chunk_job_sees_exactly_its_own_device(fakepbs, tmp_path, monkeypatch):
    check_gpu_job(tmp_path, monkeypatch, DEVICES)


@pytest.mark.skipif(os.environ.get("DPK_GPU_STUB_JOB") != "1",
                    reason="DPK_GPU_STUB_JOB=1 runs the GPU job against stub_libcuda.c")
def test_each_gpu_worker_sees_its_own_device_of_the_stub_driver(fakepbs, tmp_path, monkeypatch, stub_libcuda):
    check_gpu_job(tmp_path, monkeypatch, [stub_uuid(d) for d in range(4)],
                  [f"DPK_LIBCUDA={stub_libcuda}", "STUB_LIBCUDA_DEVICES=4"])


def check_gpu_job(tmp_path, monkeypatch, devices, more_variables=()):
    """qsub a 1-chunk job with one GPU per device, and check what each worker sees."""
    # The cgroup hook as in OpenPBS 19.1: CUDA_VISIBLE_DEVICES=0,1,... (the fake's UUIDs
    # are made up; device numbers are this machine's own).
    monkeypatch.setenv("FAKEPBS_LAUNCH_HOOK", "1")
    monkeypatch.setenv("FAKEPBS_GPU_IDS", "index")
    gpus = len(devices)
    out = tmp_path / "devices.json"
    variables = ",".join([
        f"DASK_PBS_KIT={KIT}", f"PYTHON_PREFIX={Path(sys.executable).parent.parent}",
        "READY_TIMEOUT=180", "WORKER_ON_SCHEDULER_CHUNK=auto", *more_variables,
        f"PROGRAM={sys.executable} {HERE / 'probe_devices.py'} {out}"])
    done = subprocess.run(
        ["qsub", "-W", "block=true", "-l", f"select=1:ncpus={gpus + 1}:ngpus={gpus}",
         "-l", "walltime=00:10:00", "-v", variables, str(KIT / "scripts" / "launch-dask-wordcount.pbs")],
        capture_output=True, text=True, timeout=600)
    job_output = "".join(p.read_text(errors="replace") for p in tmp_path.glob("dask-wordcount.o*"))
    assert done.returncode == 0, f"{done.stdout}{done.stderr}\n{job_output[-4000:]}"
    report = json.loads(out.read_text())
    workers = list(report["workers"].values())
    assert len(workers) == gpus, workers
    seen = [tuple(w["uuids"] or ()) for w in workers]
    assert all(len(devices) == 1 for devices in seen), workers  # each exactly one device
    assert sorted(d for (d,) in seen) == sorted(devices)        # its own: all distinct, all used
    assert all(w["resources"] == {"GPU": 1} for w in workers), workers
    assert len({w["visible"] for w in workers}) == gpus
    assert set(report["gpu_tasks_ran_on"]) <= {w["name"] for w in workers}
