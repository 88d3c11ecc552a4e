"""The fake PBS's memory cgroups (FAKEPBS_CGROUP=1), as the PBS cgroup hook makes them.

src/hooks/cgroups/pbs_cgroups.PY (memory subsystem, pbs_cgroups.CF): every process of a
job on a host runs in that host's job cgroup, whose memory limit is the sum of the host's
exec_vnode mem, or memory.default (256MB) when the job asks none (enforce_default). The
fake makes <own memory cgroup>/fakepbs-<tag>-<seq>/<node> for each host (cgroup v1:
memory.limit_in_bytes; v2: memory.max) and removes them when the job ends. Needs a
writable memory controller; refuses otherwise.
"""
from __future__ import annotations

import hashlib
import os
import time

V1_ROOT = "/sys/fs/cgroup/memory"
V2_ROOT = "/sys/fs/cgroup"


class CgroupError(Exception):
    """No writable memory cgroup; str() says why."""


def wanted(environ=os.environ) -> bool:
    return environ.get("FAKEPBS_CGROUP", "").lower() in ("1", "yes", "true")


def tag_of(home: str) -> str:
    return hashlib.sha1(os.path.abspath(home).encode()).hexdigest()[:6]


def own_cgroup() -> tuple[str, str]:
    """(version, directory) of this process's memory cgroup."""
    with open("/proc/self/cgroup") as fh:
        lines = fh.read().splitlines()
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(",") and os.path.isdir(V1_ROOT):
            return "v1", os.path.join(V1_ROOT, path.lstrip("/"))
    for line in lines:
        if line.startswith("0::"):
            base = os.path.join(V2_ROOT, line[3:].lstrip("/"))
            if os.path.exists(os.path.join(base, "memory.max")) or _v2_can_enable(base):
                return "v2", base
    raise CgroupError("no memory cgroup controller here")


def _v2_can_enable(base: str) -> bool:
    try:
        with open(os.path.join(base, "cgroup.controllers")) as fh:
            return "memory" in fh.read().split()
    except OSError:
        return False


def check() -> tuple[str, str]:
    try:
        version, base = own_cgroup()
    except (OSError, CgroupError) as exc:
        raise CgroupError(f"FAKEPBS_CGROUP=1 needs a writable memory cgroup ({exc}); "
                          "unset FAKEPBS_CGROUP to run without memory limits") from None
    if os.geteuid() != 0 or not os.access(base, os.W_OK):
        raise CgroupError(f"FAKEPBS_CGROUP=1 needs a writable memory cgroup ({base} is not "
                          "writable: run as root); unset FAKEPBS_CGROUP to run without memory limits")
    return version, base


def plan(home: str, seq: int, nodes: list[str], limits: list[int]) -> dict:
    version, base = check()
    job_dir = os.path.join(base, f"fakepbs-{tag_of(home)}-{seq}")
    return {"version": version, "job": job_dir,
            "hosts": [os.path.join(job_dir, node) for node in nodes], "limits": limits}


def _write(path: str, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


def up(spec: dict) -> None:
    """Create the job's cgroups with their limits; on failure remove what was made."""
    try:
        os.makedirs(spec["job"], exist_ok=True)
        if spec["version"] == "v2":
            _write(os.path.join(os.path.dirname(spec["job"]), "cgroup.subtree_control"), "+memory")
            _write(os.path.join(spec["job"], "cgroup.subtree_control"), "+memory")
        for path, limit in zip(spec["hosts"], spec["limits"]):
            os.makedirs(path, exist_ok=True)
            name = "memory.limit_in_bytes" if spec["version"] == "v1" else "memory.max"
            _write(os.path.join(path, name), str(limit))
    except OSError as exc:
        down(spec)
        raise CgroupError(f"cannot make the job's memory cgroups: {exc}") from None


def join(spec: dict, host: int) -> None:
    """Put the calling process into host's cgroup (called in the child before exec)."""
    _write(os.path.join(spec["hosts"][host], "cgroup.procs"), str(os.getpid()))


def members(path: str) -> list[int]:
    try:
        with open(os.path.join(path, "cgroup.procs")) as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


def down(spec: dict, wait: float = 5.0) -> None:
    """Remove the job's cgroups once their processes are gone (they were SIGKILLed)."""
    remove_tree(spec["job"], wait)


def remove_tree(job_dir: str, wait: float = 5.0) -> None:
    if not os.path.isdir(job_dir):
        return
    hosts = [os.path.join(job_dir, d) for d in os.listdir(job_dir)
             if os.path.isdir(os.path.join(job_dir, d))]
    deadline = time.time() + wait
    for path in [*hosts, job_dir]:
        while True:
            try:
                os.rmdir(path)
                break
            except FileNotFoundError:
                break
            except OSError:
                if time.time() > deadline:
                    break
                time.sleep(0.02)


def clean_all(home: str, kill: bool = True) -> list:
    """Remove every cgroup of this FAKEPBS_HOME (a test's safety net)."""
    try:
        _, base = own_cgroup()
    except (OSError, CgroupError):
        return []
    prefix = f"fakepbs-{tag_of(home)}-"
    removed = []
    for name in os.listdir(base) if os.path.isdir(base) else []:
        path = os.path.join(base, name)
        if not name.startswith(prefix) or not os.path.isdir(path):
            continue
        if kill:
            for host in os.listdir(path):
                for pid in members(os.path.join(path, host)):
                    try:
                        os.kill(pid, 9)
                    except OSError:
                        pass
        remove_tree(path)
        removed.append(path)
    return removed


def mount_words(spec: dict) -> str:
    """Shell words that show the memory hierarchy at its usual path inside a node's
    private mount namespace (`ip netns exec` remounts /sys, hiding /sys/fs/cgroup)."""
    if spec["version"] == "v1":
        return ("mount -t tmpfs fakepbs-cgroup /sys/fs/cgroup && mkdir /sys/fs/cgroup/memory && "
                "mount -t cgroup -o memory cgroup /sys/fs/cgroup/memory")
    return "mount -t cgroup2 cgroup2 /sys/fs/cgroup"
