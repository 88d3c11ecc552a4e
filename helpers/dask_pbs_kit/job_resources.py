"""What the job booked: chunks (select), node-file lines per chunk, walltime and time left.

The select statement (qstat -f -F json) is the truth; $NCPUS is only chunk 0's and, on
some sites, wrong (the origin cluster's bug), so it is a fallback with a warning.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Callable, Mapping, Optional

from .errors import BAD_VALUE, KitError
from .pbs_sizes import parse_size


class Chunk:
    """One chunk of the select statement and where it sits in $PBS_NODEFILE."""

    __slots__ = ("index", "ncpus", "mem", "mpiprocs", "first_line", "node")

    def __init__(self, index: int, ncpus: int, mem: Optional[int], mpiprocs: int) -> None:
        self.index, self.ncpus, self.mem, self.mpiprocs = index, ncpus, mem, mpiprocs
        self.first_line = -1
        self.node = ""

    def __repr__(self) -> str:
        return (f"Chunk({self.index}, ncpus={self.ncpus}, mem={self.mem}, "
                f"mpiprocs={self.mpiprocs}, line={self.first_line}, node={self.node!r})")


def parse_select(text: str) -> list:
    """Chunks of 'N:ncpus=C:mem=M:mpiprocs=P+...' in order (ncpus 1 and mpiprocs 1 by default)."""
    chunks: list = []
    for group in text.split("+"):
        parts = group.split(":")
        count = int(parts.pop(0)) if parts and parts[0].isdigit() else 1
        res = {}
        for part in parts:
            key, sep, value = part.partition("=")
            if not sep:
                raise KitError(f"select statement {text!r}: {part!r} is not name=value", BAD_VALUE)
            res[key] = value
        try:
            ncpus = int(res.get("ncpus", "1"))
            mpiprocs = int(res.get("mpiprocs", "1" if ncpus > 0 else "0"))
        except ValueError:
            raise KitError(f"select statement {text!r}: ncpus and mpiprocs must be integers", BAD_VALUE) from None
        mem = parse_size(res["mem"]) if "mem" in res else None
        for _ in range(count):
            chunks.append(Chunk(len(chunks), ncpus, mem, mpiprocs))
    return chunks


def parse_walltime(text: str) -> int:
    """Seconds in a PBS walltime, [[HH:]MM:]SS."""
    seconds = 0
    for part in text.split(":"):
        if not part.isdigit():
            raise KitError(f"walltime {text!r} is not [[HH:]MM:]SS", BAD_VALUE)
        seconds = seconds * 60 + int(part)
    return seconds


def qstat_attributes(jobid: str, run: Callable = subprocess.run) -> Optional[dict]:
    """The job's attributes from `qstat -f -F json`, or None when qstat cannot tell."""
    try:
        done = run(["qstat", "-f", "-F", "json", jobid], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    try:
        jobs = json.loads(done.stdout)["Jobs"]
        return next(iter(jobs.values()))
    except (ValueError, KeyError, StopIteration, AttributeError):
        return None


def read_nodefile(path: str) -> list:
    try:
        with open(path, encoding="utf-8") as fh:
            return [line.strip() for line in fh if line.strip()]
    except OSError as exc:
        raise KitError(f"cannot read $PBS_NODEFILE {path!r} ({exc.strerror}): is this a PBS job?") from None


def place_chunks(chunks: list, lines: list) -> None:
    """Give each chunk its first node-file line and node (mpiprocs lines per chunk)."""
    line = 0
    for chunk in chunks:
        chunk.first_line = line
        chunk.node = lines[line] if line < len(lines) else "?"
        line += chunk.mpiprocs


def chunks_from_nodefile(lines: list, ncpus: int) -> list:
    """Fallback: one chunk per run of identical consecutive node-file lines."""
    chunks: list = []
    for number, line in enumerate(lines):
        if chunks and chunks[-1].node == line:
            chunks[-1].mpiprocs += 1
            continue
        chunk = Chunk(len(chunks), ncpus, None, 1)
        chunk.node, chunk.first_line = line, number
        chunks.append(chunk)
    return chunks


def job_chunks(environ: Mapping[str, str], attrs: Optional[dict], warn=None) -> list:
    """The job's chunks, from the select statement when it matches the node file."""
    warn = warn or sys.stderr
    lines = read_nodefile(environ.get("PBS_NODEFILE", ""))
    select = ((attrs or {}).get("Resource_List") or {}).get("select")
    if select:
        chunks = parse_select(select)
        if sum(c.mpiprocs for c in chunks) == len(lines) and all(c.mpiprocs for c in chunks):
            place_chunks(chunks, lines)
            return chunks
        print(f"dask-pbs: warning: select {select!r} does not match the {len(lines)} lines "
              "of $PBS_NODEFILE; using the node file", file=warn)
    else:
        print("dask-pbs: warning: cannot read the select statement (qstat -f -F json "
              "$PBS_JOBID failed); one chunk per node in $PBS_NODEFILE, ncpus from $NCPUS, "
              "memory from Dask's default", file=warn)
    try:
        ncpus = int(environ.get("NCPUS", "1"))
    except ValueError:
        ncpus = 1
    return chunks_from_nodefile(lines, ncpus)


def walltime_limit(attrs: Optional[dict]) -> Optional[int]:
    text = ((attrs or {}).get("Resource_List") or {}).get("walltime")
    return parse_walltime(text) if text else None


def time_left(attrs: Optional[dict], started: float, now: Optional[float] = None) -> Optional[int]:
    """Seconds of walltime left, counting from the job script's start (or PBS's own count)."""
    limit = walltime_limit(attrs)
    if limit is None:
        return None
    elapsed = (now if now is not None else time.time()) - started
    used = ((attrs or {}).get("resources_used") or {}).get("walltime")
    if used:
        elapsed = max(elapsed, parse_walltime(used))
    return max(0, int(limit - elapsed))


def job_id(environ: Mapping[str, str] = os.environ) -> str:
    jobid = environ.get("PBS_JOBID")
    if not jobid:
        raise KitError("PBS_JOBID is not set: this command runs inside a PBS job (submit with qsub)")
    return jobid
