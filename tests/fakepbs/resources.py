"""Resource requests of the fake PBS: sizes, select, schedselect, placement, node file.

What the server and scheduler do with `-l select=...` before MoM sees the job:
- src/server/vnparse.c do_schedselect: schedselect = the user's chunk, then the queue's
  default_chunk, then the server's (default_chunk.ncpus=1, src/server/pbsd_init.c), each
  only for resources the chunk lacks; a size without a b/w unit gets a "b".
- src/server/svr_jobfunc.c set_resc_deflt/set_chunk_sum: the job-wide Resource_List sums
  come from schedselect; Resource_List.select keeps the user's words; place defaults to free.
- src/scheduler/node_info.cpp create_execvnode: exec_vnode has one "(vnode:res=...)" per
  chunk with the consumable resources, sizes in kb.
- src/server/node_manager.c set_nodes: exec_host is "host/index[*ncpus]", "*N" only when
  ncpus != 1, index = the job's slot on that MoM (0, 1, ... for chunks sharing a host).
- src/resmom/start_exec.c job_nodes_inner: one node-file line per mpiproc; mpiprocs is 1
  when ncpus > 0 else 0; at NASA NAS (#ifdef NAS, localmod 020) a chunk naming neither
  mpiprocs nor ompthreads gets mpiprocs = ncpus.
"""
from __future__ import annotations

import re

SIZE_RE = re.compile(r"^(\d+)([kmgtp]?)([bw]?)$", re.IGNORECASE)
WALLTIME_RE = re.compile(r"^\d+(:\d+){0,2}$")
INT_RESOURCES = {"ncpus", "mpiprocs", "ompthreads", "ngpus", "nmics", "nodect"}
SIZE_RESOURCES = {"mem", "vmem", "pmem"}
# Consumable host resources (the scheduler's exec_vnode lists only these).
CONSUMABLE = {"ncpus", "ngpus", "nmics", "mem", "vmem"}
SERVER_DEFAULT_CHUNK = [("ncpus", "1")]


def parse_size(text: str) -> int:
    """PBS size: integer, optional k/m/g/t/p (powers of 1024), optional b or w (8 bytes)."""
    m = SIZE_RE.match(text)
    if not m:
        raise ValueError(text)
    number, scale, unit = int(m.group(1)), m.group(2).lower(), m.group(3).lower()
    factor = 1024 ** "_kmgtp".index(scale) if scale else 1
    return number * factor * (8 if unit == "w" else 1)


def format_size(nbytes: int) -> str:
    for suffix, factor in (("tb", 1024**4), ("gb", 1024**3), ("mb", 1024**2), ("kb", 1024)):
        if nbytes and nbytes % factor == 0:
            return f"{nbytes // factor}{suffix}"
    return f"{nbytes}b"


def parse_walltime(text: str) -> int:
    if not WALLTIME_RE.match(text):
        raise ValueError(text)
    seconds = 0
    for part in text.split(":"):
        seconds = seconds * 60 + int(part)
    return seconds


def format_hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """'res=v:res=v' as (name, value) pairs, checked as the server checks them."""
    pairs = []
    for part in text.split(":") if text else []:
        key, sep, value = part.partition("=")
        if not sep or not key or not value:
            raise ValueError(part)
        if key in INT_RESOURCES and not value.isdigit():
            raise ValueError(part)
        if key in SIZE_RESOURCES:
            parse_size(value)
        if any(key == k for k, _ in pairs):
            raise ValueError(part)  # PBSE_DUPRESC
        pairs.append((key, value))
    return pairs


def split_select(text: str) -> list[tuple[int, list[tuple[str, str]]]]:
    """'N:res=v+...' as (count, pairs) per '+' group, in the user's words."""
    groups = []
    for group in text.split("+"):
        head, _, rest = group.partition(":")
        if head.isdigit():
            count = int(head)
        else:
            count, rest = 1, group
        if count < 1:
            raise ValueError(group)
        groups.append((count, parse_pairs(rest)))
    return groups


def schedselect(select: str, default_chunk: str) -> str:
    """The server's schedselect: each group with the defaults it lacks filled in."""
    queue = parse_pairs(default_chunk)
    out = []
    for count, pairs in split_select(select):
        names = {k.lower() for k, _ in pairs}
        full = list(pairs)
        for key, value in queue + SERVER_DEFAULT_CHUNK:
            if key.lower() not in names:
                full.append((key, value))
                names.add(key.lower())
        words = [str(count)]
        for key, value in full:
            if key in SIZE_RESOURCES and value[-1] not in "bwBW":
                value += "b"
            words.append(f"{key}={value}")
        out.append(":".join(words))
    return "+".join(out)


def chunks_of(sched: str, nas: bool = False) -> list[dict]:
    """One dict per chunk from schedselect: ints as ints, sizes in bytes, mpiprocs set."""
    chunks: list[dict] = []
    for count, pairs in split_select(sched):
        chunk: dict = {"words": pairs}
        for key, value in pairs:
            if key in INT_RESOURCES:
                chunk[key] = int(value)
            elif key in SIZE_RESOURCES:
                chunk[key] = parse_size(value)
            else:
                chunk[key] = value
        named = {k for k, _ in pairs}
        if nas and "mpiprocs" not in named and "ompthreads" not in named and chunk.get("ncpus"):
            chunk["mpiprocs"] = chunk["ncpus"]  # start_exec.c, localmod 020
        chunk.setdefault("mpiprocs", 1 if chunk.get("ncpus", 0) > 0 else 0)
        chunks.extend(dict(chunk) for _ in range(count))
    return chunks


def place_word(place: str) -> str:
    """The arrangement of -l place=arrangement[:sharing][:group=...]."""
    for word in place.split(":"):
        if word in ("free", "pack", "scatter", "vscatter"):
            return word
    return "free"


def host_of_chunks(nchunks: int, place: str) -> list[int]:
    """Host index of each chunk: pack puts every chunk on the first host, the others one
    host per chunk (the fake has as many free hosts as chunks)."""
    if place_word(place) == "pack":
        return [0] * nchunks
    return list(range(nchunks))


def exec_host(chunks: list[dict], hosts: list[str], chunk_host: list[int]) -> str:
    slots: dict[int, int] = {}
    parts = []
    for chunk, host in zip(chunks, chunk_host):
        index = slots.get(host, 0)
        slots[host] = index + 1
        ncpus = chunk.get("ncpus", 0)
        parts.append(f"{hosts[host]}/{index}" + (f"*{ncpus}" if ncpus != 1 else ""))
    return "+".join(parts)


def exec_vnode(chunks: list[dict], hosts: list[str], chunk_host: list[int]) -> str:
    parts = []
    for chunk, host in zip(chunks, chunk_host):
        words = [hosts[host]]
        for key, _ in chunk["words"]:
            if key not in CONSUMABLE:
                continue
            if key in SIZE_RESOURCES:
                words.append(f"{key}={-(-chunk[key] // 1024)}kb")
            else:
                words.append(f"{key}={chunk[key]}")
        parts.append("(" + ":".join(words) + ")")
    return "+".join(parts)


def resource_list(resources: dict, chunks: list[dict]) -> dict:
    """Resource_List as qstat shows it: the user's select, sums from schedselect."""
    out = {k: v for k, v in resources.items() if k != "walltime_s"}
    out["ncpus"] = sum(c.get("ncpus", 0) for c in chunks)
    out["nodect"] = len(chunks)
    for key in ("mem", "vmem"):
        sizes = [c[key] for c in chunks if key in c]
        if sizes:
            out[key] = format_size(sum(sizes))
    for key in ("ngpus", "nmics"):
        if any(key in c for c in chunks):
            out[key] = sum(c.get(key, 0) for c in chunks)
    out.setdefault("place", "free")
    out["walltime"] = format_hms(resources["walltime_s"])
    return {k: str(v) for k, v in sorted(out.items())}


def nodefile_lines(chunks: list[dict], chunk_host: list[int]) -> list[tuple[int, int]]:
    """(host index, chunk index) of each PBS_NODEFILE line: mpiprocs lines per chunk."""
    lines: list[tuple[int, int]] = []
    for index, chunk in enumerate(chunks):
        lines.extend([(chunk_host[index], index)] * chunk["mpiprocs"])
    return lines


def host_memory(chunks: list[dict], chunk_host: list[int], host: int) -> int | None:
    """The sum of the host's exec_vnode mem, or None when no chunk there asks any."""
    sizes = [c["mem"] for c, h in zip(chunks, chunk_host) if h == host and "mem" in c]
    return sum(sizes) if sizes else None
