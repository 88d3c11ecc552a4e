"""The memory this host lets the job's Dask processes use, and each worker's share of it.

PBS's cgroup hook limits each host of a job to the sum of the mem of that host's chunks
(`memory.default` when the job asks for none). distributed reads only the root cgroup's
limit, so a worker inside a job's cgroup believes it owns the node and is killed by the
kernel before it ever spills: each worker task (scripts/lib/task.sh) asks this module for
its --memory-limit, which never exceeds its share of what its host really grants.

The limit of this host: the smallest memory limit on the way from this process's cgroup
up to the root (v1 `memory.limit_in_bytes`, v2 `memory.max`; found through
/proc/self/cgroup and /proc/self/mountinfo), and the RAM (MemTotal).
"""
from __future__ import annotations

import os  # and no typing: its import costs a helper a fifth of its start

from .args import is_digits
from .errors import BAD_VALUE, USAGE, KitError
from .pbs_sizes import MIN_WORKER_MEMORY, format_size

# v1 writes "no limit" as the largest page-aligned 63-bit number; anything this big is none.
UNLIMITED = 1 << 60

USAGE_TEXT = """usage: kit.py host-memory --memory BYTES|auto --host-procs P [--reserve-ppm N] [--reserve-bytes N]

Print the --memory-limit (bytes) of each worker process of a task on this host, then a
tab and how it was found. --memory is the share the launch plan gives each process of the
chunk (auto: the chunk's mem is unknown); the result never exceeds (this host's limit
less the reserve) / P, P being every Dask process the job runs on this host."""


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read().strip()
    except OSError:
        return None


def _mounts(proc: str) -> list:
    """(fstype, super options, root in the hierarchy, mount point) of each cgroup mount."""
    found = []
    for line in (_read(f"{proc}/self/mountinfo") or "").splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if sep and len(fields) >= 5 and len(tail) >= 3 and tail[0] in ("cgroup", "cgroup2"):
            found.append((tail[0], tail[2].split(","), fields[3], fields[4]))
    return found


def _cgroup_dirs(proc: str) -> list:
    """(version, folder of this process's memory cgroup, mount point) for v1 and v2."""
    dirs = []
    mounts = _mounts(proc)
    for line in (_read(f"{proc}/self/cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            wanted = [m for m in mounts if m[0] == "cgroup2"]
            version = 2
        elif "memory" in controllers.split(","):
            wanted = [m for m in mounts if m[0] == "cgroup" and "memory" in m[1]]
            version = 1
        else:
            continue
        for _, _, root, point in wanted:
            # A container may mount only its own subtree: the path is then relative to it.
            rel = path[len(root):] if root != "/" and path.startswith(root) else path
            dirs.append((version, os.path.normpath(point + "/" + rel.lstrip("/")), point))
    return dirs


def cgroup_limit(proc: str = "/proc") -> int | None:
    """The smallest memory limit from this process's cgroup up to its mount's root, or None."""
    best: int | None = None
    for version, folder, point in _cgroup_dirs(proc):
        name = "memory.limit_in_bytes" if version == 1 else "memory.max"
        while True:
            text = _read(f"{folder}/{name}")
            if text and is_digits(text) and int(text) < UNLIMITED:
                best = int(text) if best is None else min(best, int(text))
            if folder == point or len(folder) <= len(point):
                break
            folder = os.path.dirname(folder)
    return best


def ram(proc: str = "/proc") -> int | None:
    """MemTotal in bytes."""
    for line in (_read(f"{proc}/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return None


def worker_limit(planned: int | None, host_procs: int, reserve_ppm: int, reserve_bytes: int,
                 cgroup: int | None, memtotal: int | None) -> tuple:
    """(bytes per worker process, how it was found): the planned share, capped by this
    host's share; with no plan (auto), the host's share. Raises KitError below 256 MiB."""
    limits = [(cgroup, "its memory cgroup allows"), (memtotal, "its RAM is")]
    host, how = min(((v, w) for v, w in limits if v), default=(None, ""))
    cap = None
    if host is not None:
        usable = host - (host * reserve_ppm // 1_000_000 if reserve_ppm else reserve_bytes)
        cap = max(0, usable) // max(1, host_procs)
    reason = f"this host: {how} {format_size(host) if host else '?'} for {host_procs} Dask processes"
    if planned is None and cap is None:
        raise KitError("cannot tell this host's memory (no memory cgroup, no /proc/meminfo): "
                       "add mem= to the select statement", BAD_VALUE)
    if planned is None:
        limit, why = cap, f"no mem= known: the share of {reason}"
    elif cap is not None and cap < planned:
        limit, why = cap, f"below the chunk's share ({planned}): {reason}"
    else:
        limit, why = planned, "the chunk's share of its mem="
    if limit < MIN_WORKER_MEMORY:
        raise KitError(
            f"each worker process would get {limit} bytes ({why}), below the "
            f"{format_size(MIN_WORKER_MEMORY)} a worker needs: ask for more mem= per chunk "
            "(the site may also limit a host's memory), or fewer NWORKERS", BAD_VALUE)
    return limit, why


def cli(argv: list) -> None:
    from . import args

    opts, operands = args.parse(argv, {"--memory": "value", "--host-procs": "value",
                                       "--reserve-ppm": "value", "--reserve-bytes": "value"},
                                USAGE_TEXT)
    if operands or "--memory" not in opts or "--host-procs" not in opts:
        raise KitError(USAGE_TEXT, USAGE)
    numbers = {}
    for name in ("--host-procs", "--reserve-ppm", "--reserve-bytes"):
        text = opts.get(name, "0")
        if not is_digits(text):
            raise KitError(f"{name} must be a whole number, not {text!r}", BAD_VALUE)
        numbers[name] = int(text)
    memory = opts["--memory"]
    if memory != "auto" and not is_digits(memory):
        raise KitError(f"--memory must be bytes or auto, not {memory!r}", BAD_VALUE)
    limit, why = worker_limit(None if memory == "auto" else int(memory), numbers["--host-procs"],
                              numbers["--reserve-ppm"], numbers["--reserve-bytes"],
                              cgroup_limit(), ram())
    print(f"{limit}\t{why}")
