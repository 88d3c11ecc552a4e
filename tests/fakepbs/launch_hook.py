"""The fake's execjob_launch hook (FAKEPBS_LAUNCH_HOOK=1): the GPU variables of the PBS
cgroup hook, and the GPU ids the fake `nvidia-smi` shows.

src/hooks/cgroups/pbs_cgroups.PY, _execjob_launch_handler -> setup_job_devices_env (runs
for the job shell and, src/resmom/start_exec.c, for every tm task): with GPUs assigned on
that host, CUDA_VISIBLE_DEVICES is their UUIDs joined by commas and CUDA_DEVICE_ORDER is
PCI_BUS_ID (v20.0 and later); v19.1 gave the device numbers ("0,1", the N of /dev/nvidiaN)
and no CUDA_DEVICE_ORDER. OFFLOAD_DEVICES is only for Intel MIC cards (nmics): their
numbers joined by commas. Without GPUs nothing is set, unless the hook's devices subsystem
is enabled (off in the shipped pbs_cgroups.CF), when CUDA_VISIBLE_DEVICES is "".
"""
from __future__ import annotations


def gpu_uuid(job_id: str, host: int, device: int) -> str:
    """A UUID-shaped id, the same for one (job, host, device), different elsewhere."""
    import hashlib  # here: every job's MoM imports this module, few need a GPU id
    digest = hashlib.sha1(f"{job_id}/{host}/{device}".encode()).hexdigest()
    return f"GPU-{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


def host_devices(chunks: list[dict], chunk_host: list[int], host: int, resource: str) -> list[int]:
    """Device numbers the job holds on that host: the chunks there, in order, from 0."""
    count = sum(c.get(resource, 0) for c, h in zip(chunks, chunk_host) if h == host)
    return list(range(count))


def gpu_ids(job: dict, host: int) -> list[str]:
    devices = host_devices(job["chunks"], job["chunk_host"], host, "ngpus")
    if job["modes"]["gpu_ids"] == "index":
        return [str(d) for d in devices]
    return [gpu_uuid(job["id"], host, d) for d in devices]


def launch_env(job: dict, host: int) -> dict:
    """What the hook adds to the environment of a process started on that host."""
    if not job["modes"]["launch_hook"]:
        return {}
    env = {}
    gpus = gpu_ids(job, host)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        if job["modes"]["gpu_ids"] == "uuid":
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    mics = host_devices(job["chunks"], job["chunk_host"], host, "nmics")
    if mics:
        env["OFFLOAD_DEVICES"] = ",".join(str(m) for m in mics)
    return env


def nvidia_smi_lines(job: dict, host: int) -> list[str]:
    """`nvidia-smi -L` on that host: the job's GPUs there (always by UUID, as nvidia-smi)."""
    devices = host_devices(job["chunks"], job["chunk_host"], host, "ngpus")
    return [f"GPU {d}: Fake GPU (UUID: {gpu_uuid(job['id'], host, d)})" for d in devices]
