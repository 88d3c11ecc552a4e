"""What the job booked: its chunks in order, each chunk's host, ncpus, ngpus, mem and
first line in $PBS_NODEFILE, and its walltime.

Where the kit learns the job's chunks, first source first:
  1. `qstat -f -F json $PBS_JOBID`, read as JSON;
  2. the same output read leniently, when it is not valid JSON (every OpenPBS release
     from 18 to 23.06 writes invalid JSON for some values, e.g. those `qsub -V` brings);
  3. `qstat -f $PBS_JOBID` as text, when qstat has no -F json (PBS Pro before 18) or it
     fails;
  4. in what qstat tells: the chunks of schedselect (the select statement with the
     default_chunk resources filled in; PBS shows it to managers only), else of
     Resource_List.select; what each chunk got (its host, ncpus, ngpus and mem,
     default_chunk included) from exec_vnode, else its host and ncpus from exec_host;
  5. last, $PBS_NODEFILE and $NCPUS alone: one chunk per run of identical node-file
     lines, each with chunk 0's ncpus, no GPUs and no mem (each worker then divides its
     host's memory limit), with a warning.
A chunk's first node-file line (for `pbsdsh -n LINE`) comes from its mpiprocs (one line
each, in chunk order) when they add up to the node file's length; else from the NASA NAS
rule (mpiprocs = ncpus for a chunk that names neither mpiprocs nor ompthreads) when that
adds up; else from its host name (short names compared); else from step 5.

The walltime is Resource_List.walltime; what is left of it counts from the job script's
start, or from PBS's resources_used.walltime when that is more. When PBS tells none, the
WALLTIME knob stands in for it; when neither, it is unknown (-1) and a warning says so.

Formats read (OpenPBS source): exec_vnode is `(vnode:ncpus=N:mem=Mkb+vnode:...)+(...)`,
one parenthesised group per chunk, consumable resources only, sizes in kb
(src/scheduler/node_info.cpp create_execvnode), or `vnode:res=v+vnode:res=v` with one
chunk per '+' when an operator ran `qrun -H host+host` (src/server/node_manager.c
build_execvnode); exec_host is `host/N` or `host/N*NCPUS`, one per chunk, host being the
chunk's natural vnode (node_manager.c set_nodes); schedselect is `N:res=v:...+...`, the
count always given, sizes with a b suffix added, string values with "+:=()" quoted
(src/server/vnparse.c do_schedselect); the node file has mpiprocs lines per chunk in
chunk order, NAS builds excepted (src/resmom/start_exec.c job_nodes_inner).
"""
from __future__ import annotations

import re
import time
from collections.abc import Mapping

from .args import is_digits
from .errors import BAD_VALUE, KitError
from .pbs_sizes import parse_size

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: typing and dataclasses cost a job start ~30 ms
    from typing import Callable, List, Optional, Tuple

NODEFILE_SOURCE = "$PBS_NODEFILE and $NCPUS"


class Record:
    """A small record: fields in __slots__, compared and shown by them."""

    __slots__: tuple = ()

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and all(
            getattr(self, name) == getattr(other, name) for name in self.__slots__)

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"


class Chunk(Record):
    """One chunk of the job: what it asked for, what it got and where it sits.

    mem: bytes, None when no source tells; ngpus: its GPUs (0: none); mpiprocs /
    nas_mpiprocs: its node-file lines by PBS's rule and by NASA NAS builds'; resources: as
    the select statement names them; host: from exec_vnode / exec_host; first_line:
    0-based line of $PBS_NODEFILE (-1: none); node: that line, the host as the node file
    names it."""

    __slots__ = ("index", "ncpus", "mem", "mpiprocs", "nas_mpiprocs", "resources", "host",
                 "first_line", "node", "ngpus")

    def __init__(self, index: int, ncpus: int, mem: Optional[int], mpiprocs: int = 1,
                 nas_mpiprocs: int = 1, resources: Optional[dict] = None, ngpus: int = 0) -> None:
        self.index, self.ncpus, self.mem = index, ncpus, mem
        self.mpiprocs, self.nas_mpiprocs = mpiprocs, nas_mpiprocs
        self.resources = resources if resources is not None else {}
        self.ngpus = ngpus
        self.host: Optional[str] = None
        self.first_line = -1
        self.node = ""


class Walltime(Record):
    """limit and left in seconds (-1: unknown); source: pbs, WALLTIME or none."""

    __slots__ = ("limit", "left", "source")

    def __init__(self, limit: int = -1, left: int = -1, source: str = "none") -> None:
        self.limit, self.left, self.source = limit, left, source


class Job(Record):
    """The chunks in order, where they came from, the walltime, and warnings to show."""

    __slots__ = ("chunks", "source", "walltime", "warnings")

    def __init__(self, chunks: List[Chunk], source: str, walltime: Optional[Walltime] = None,
                 warnings: Optional[List[str]] = None) -> None:
        self.chunks, self.source = chunks, source
        self.walltime = walltime if walltime is not None else Walltime()
        self.warnings = warnings if warnings is not None else []


# ------------------------------------------------------------------ small parsers


def _split(text: str, sep: str) -> list:
    """Split at sep outside single or double quotes (as PBS's parse_plus_spec does)."""
    parts, current, quote = [], [], ""
    for char in text:
        if quote:
            if char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char == sep:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def _int(value, what: str) -> int:
    text = str(value).strip()
    if not is_digits(text):
        raise KitError(f"{what} must be a whole number, not {value!r}", BAD_VALUE)
    return int(text)


def short_name(host: str) -> str:
    """The host name without its domain, lower case: 'n01.cluster.org' -> 'n01'."""
    return host.split(".", 1)[0].lower()


def vnode_host(vnode: str) -> str:
    """The host a vnode belongs to: 'n01[3]' -> 'n01' (PBS names vnodes host[N])."""
    return re.sub(r"\[[^\]]*\]$", "", vnode)


def parse_select(text) -> List[Chunk]:
    """Chunks of 'N:ncpus=C:ngpus=G:mem=M:mpiprocs=P+...' in order; accepts 3 (JSON's
    select=3).

    ncpus is 1 when not given; mpiprocs 1 when ncpus > 0, else 0 (src/resmom/start_exec.c);
    ngpus 0 when not given.
    """
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise KitError(f"select statement {text!r} is not text", BAD_VALUE)
    text = str(text).strip()
    if not text:
        raise KitError("the select statement is empty", BAD_VALUE)
    chunks: List[Chunk] = []
    for group in _split(text, "+"):
        parts = _split(group, ":")
        count = 1
        if parts and is_digits(parts[0].strip()):
            count = int(parts.pop(0))
        if count < 1 or count > 100000:
            raise KitError(f"select statement {text!r}: a chunk count of {count}", BAD_VALUE)
        res = {}
        for part in parts:
            key, sep, value = part.partition("=")
            if not sep or not key.strip():
                raise KitError(f"select statement {text!r}: {part!r} is not name=value", BAD_VALUE)
            res[key.strip().lower()] = _unquote(value.strip())
        ncpus = _int(res.get("ncpus", "1"), f"select statement {text!r}: ncpus")
        mpiprocs = 1 if ncpus > 0 else 0
        if "mpiprocs" in res:
            mpiprocs = _int(res["mpiprocs"], f"select statement {text!r}: mpiprocs")
        nas = ncpus if ("mpiprocs" not in res and "ompthreads" not in res and ncpus > 0) else mpiprocs
        mem = parse_size(res["mem"]) if "mem" in res else None
        ngpus = _int(res.get("ngpus", "0"), f"select statement {text!r}: ngpus")
        for _ in range(count):
            chunks.append(Chunk(len(chunks), ncpus, mem, mpiprocs, nas, dict(res), ngpus))
    return chunks


def parse_exec_vnode(text) -> List[Tuple[str, Optional[int], Optional[int]]]:
    """(host, ncpus, mem) per chunk of an exec_vnode; ncpus and mem summed over the
    chunk's vnodes, None when none names them."""
    return [(host, ncpus, mem) for host, ncpus, mem, _ in exec_vnode_chunks(text)]


def exec_vnode_chunks(text) -> List[Tuple[str, Optional[int], Optional[int], Optional[int]]]:
    """(host, ncpus, mem, ngpus) per chunk of an exec_vnode; each summed over the chunk's
    vnodes (a GPU node's vnodes often hold 2 GPUs each: n1[0]:ngpus=2+n1[1]:ngpus=2), None
    when none names it."""
    if not isinstance(text, str) or not text.strip():
        raise KitError(f"exec_vnode {text!r} is not text", BAD_VALUE)
    text = text.strip()
    if "(" in text or ")" in text:
        if not re.fullmatch(r"\([^()]+\)(\+\([^()]+\))*", text):
            raise KitError(f"exec_vnode {text!r} is not (vnode:res=value...)+(...)", BAD_VALUE)
        groups = re.findall(r"\(([^()]+)\)", text)
    else:
        groups = text.split("+")  # qrun -H: one chunk per vnode
    chunks = []
    for group in groups:
        host, ncpus, mem, ngpus = None, None, None, None
        for part in group.split("+"):
            fields = part.split(":")
            name = fields[0].strip()
            if not name:
                raise KitError(f"exec_vnode {text!r}: a vnode without a name", BAD_VALUE)
            host = host or vnode_host(name)
            for item in fields[1:]:
                key, sep, value = item.partition("=")
                if not sep:
                    raise KitError(f"exec_vnode {text!r}: {item!r} is not name=value", BAD_VALUE)
                key = key.strip().lower()
                if key == "ncpus":
                    ncpus = (ncpus or 0) + _int(value, "exec_vnode ncpus")
                elif key == "mem":
                    mem = (mem or 0) + parse_size(value.strip())
                elif key == "ngpus":
                    ngpus = (ngpus or 0) + _int(value, "exec_vnode ngpus")
        chunks.append((host, ncpus, mem, ngpus))
    return chunks


def parse_exec_host(text) -> List[Tuple[str, int]]:
    """(host, ncpus) per chunk of 'host/N*C+host/N' (no '*C': one cpu)."""
    if not isinstance(text, str) or not text.strip():
        raise KitError(f"exec_host {text!r} is not text", BAD_VALUE)
    out = []
    for entry in text.strip().split("+"):
        match = re.fullmatch(r"([^/\s]+)/(\d+)(?:\*(\d+))?", entry.strip())
        if not match:
            raise KitError(f"exec_host {text!r}: {entry!r} is not host/N*NCPUS", BAD_VALUE)
        out.append((match.group(1), int(match.group(3) or 1)))
    return out


def parse_walltime(text) -> int:
    """Seconds in a PBS walltime, [[HH:]MM:]SS."""
    text = str(text).strip()
    parts = text.split(":")
    if len(parts) > 3 or not all(is_digits(part) for part in parts):
        raise KitError(f"walltime {text!r} is not [[HH:]MM:]SS", BAD_VALUE)
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + int(part)
    return seconds


# ------------------------------------------------------------------ the node file


def read_nodefile(path: str) -> list:
    if not path:
        raise KitError("PBS_NODEFILE is not set: this command runs inside a PBS job (submit with qsub)")
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return [line.strip() for line in fh if line.strip()]
    except OSError as exc:
        raise KitError(f"cannot read $PBS_NODEFILE {path!r} ({exc.strerror}): is this a PBS job?") from None


def chunks_from_nodefile(lines: list, ncpus: int) -> List[Chunk]:
    """Fallback: one chunk per run of identical consecutive node-file lines."""
    chunks: List[Chunk] = []
    for number, line in enumerate(lines):
        if chunks and chunks[-1].node == line:
            chunks[-1].mpiprocs += 1
            continue
        chunk = Chunk(len(chunks), ncpus, None)
        chunk.node, chunk.first_line, chunk.host = line, number, line
        chunks.append(chunk)
    return chunks


def place_by_counts(chunks: List[Chunk], lines: list, counts: list) -> bool:
    """First lines from per-chunk line counts, when they add up to the node file."""
    if sum(counts) != len(lines):
        return False
    line = 0
    for chunk, count in zip(chunks, counts):
        chunk.first_line = line if count > 0 else -1
        line += count
    return True


def place_by_hosts(chunks: List[Chunk], lines: list) -> bool:
    """First lines by host name (short names: a site may write FQDNs in one place only)."""
    shorts = [short_name(line) for line in lines]
    found = []
    for chunk in chunks:
        if not chunk.host or short_name(chunk.host) not in shorts:
            return False
        found.append(shorts.index(short_name(chunk.host)))
    for chunk, line in zip(chunks, found):
        chunk.first_line = line
    return True


def _line_for_lineless(chunks: List[Chunk], lines: list) -> None:
    """A chunk with no line of its own (mpiprocs=0) borrows one of its host's, if known."""
    shorts = [short_name(line) for line in lines]
    for chunk in chunks:
        if chunk.first_line < 0 and chunk.host and short_name(chunk.host) in shorts:
            chunk.first_line = shorts.index(short_name(chunk.host))


# ------------------------------------------------------------------ the job


def _text(attrs: Mapping, *path) -> Optional[str]:
    """attrs[a][b] as text when it is text or a number, else None."""
    value = attrs
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    text = str(value).strip()
    return text or None


def job_chunks(lines: list, attrs: Optional[Mapping], source: str,
               ncpus_env: Optional[str]) -> Tuple[List[Chunk], str, List[str]]:
    """(chunks, where they came from, warnings) from qstat's attributes and the node file."""
    warnings: List[str] = []
    why = source
    chunks: Optional[List[Chunk]] = None
    if isinstance(attrs, Mapping):
        how = []
        for path in (("schedselect",), ("Resource_List", "select")):
            select = _text(attrs, *path)
            if select is None:
                continue
            try:
                chunks = parse_select(select)
                how.append(f"chunks from {'.'.join(path)}")
                break
            except KitError as exc:
                warnings.append(f"cannot read {'.'.join(path)} ({exc})")
        if chunks is None:
            why = f"{source} gives no select statement I can read"
        else:
            how += _fill_from_exec(chunks, attrs, warnings)
            placed = _place(chunks, lines)
            if placed:
                how.append(f"node-file lines {placed}")
                _line_for_lineless(chunks, lines)
                for chunk in chunks:
                    chunk.node = lines[chunk.first_line] if chunk.first_line >= 0 else ""
                return chunks, f"{source}: {', '.join(how)}", warnings
            why = (f"the select statement's {len(chunks)} chunks do not match the "
                   f"{len(lines)} lines of $PBS_NODEFILE")
    elif attrs is None:
        why = f"qstat cannot tell ({source})"
    else:
        why = "qstat's answer is not a set of attributes"
    try:
        ncpus = int(ncpus_env or "1")
    except ValueError:
        ncpus = 1
    ncpus = max(ncpus, 1)
    fallback = chunks_from_nodefile(lines, ncpus)
    warnings.append(
        f"{why}: one chunk per run of identical lines of $PBS_NODEFILE ({len(fallback)} "
        f"chunks), each with ncpus={ncpus} from $NCPUS and no mem (each worker divides its "
        "host's memory limit)")
    return fallback, NODEFILE_SOURCE, warnings


def _per_chunk(attrs: Mapping, name: str, parse: Callable[[str], list], verb: str, chunks: List[Chunk],
               warnings: List[str]) -> Optional[list]:
    """The attribute name read by parse, an entry per chunk of the select statement; None
    when it is not there, or (with a warning) unreadable or of another number of chunks."""
    text = _text(attrs, name)
    if text is None:
        return None
    try:
        entries = parse(text)
    except KitError as exc:
        warnings.append(f"cannot read {name} ({exc})")
        return None
    if len(entries) != len(chunks):
        warnings.append(f"{name} {verb} {len(entries)} chunks, the select statement "
                        f"{len(chunks)}: {name} not used")
        return None
    return entries


def _fill_from_exec(chunks: List[Chunk], attrs: Mapping, warnings: List[str]) -> list:
    """Each chunk's host and what it got, from exec_vnode, else exec_host."""
    how = []
    hosts = _per_chunk(attrs, "exec_host", parse_exec_host, "names", chunks, warnings)
    groups = _per_chunk(attrs, "exec_vnode", exec_vnode_chunks, "has", chunks, warnings)
    if groups is not None:
        for chunk, (host, ncpus, mem, ngpus) in zip(chunks, groups):
            # exec_host names the chunk's natural vnode, its MoM's host: better
            # than a vnode name whose host is not in it.
            chunk.host = hosts[chunk.index][0] if hosts else host
            if ncpus is not None:
                chunk.ncpus = ncpus
            if mem is not None:
                chunk.mem = mem
            if ngpus is not None:
                chunk.ngpus = ngpus
        how.append("what each got from exec_vnode")
        return how
    if hosts is not None:
        for chunk, (host, ncpus) in zip(chunks, hosts):
            chunk.host, chunk.ncpus = host, ncpus
        how.append("hosts from exec_host")
    return how


def _place(chunks: List[Chunk], lines: list) -> str:
    """Give each chunk its first node-file line; say how, or '' if nothing fits."""
    if place_by_counts(chunks, lines, [c.mpiprocs for c in chunks]):
        return "by mpiprocs"
    if place_by_counts(chunks, lines, [c.nas_mpiprocs for c in chunks]):
        return "by mpiprocs = ncpus (NASA NAS rule)"
    if place_by_hosts(chunks, lines):
        return "by host name"
    return ""


def job_walltime(attrs: Optional[Mapping], knob: Optional[str], started: float,
                 now: float) -> Tuple[Walltime, List[str]]:
    """The walltime and what is left of it, from PBS, else the WALLTIME knob."""
    warnings: List[str] = []
    attrs = attrs if isinstance(attrs, Mapping) else {}
    elapsed = max(0.0, now - started)
    used_text = _text(attrs, "resources_used", "walltime")
    if used_text:
        try:
            elapsed = max(elapsed, parse_walltime(used_text))
        except KitError:
            pass
    limit, source = None, "none"
    text = _text(attrs, "Resource_List", "walltime")
    if text:
        try:
            limit, source = parse_walltime(text), "pbs"
        except KitError as exc:
            warnings.append(f"cannot read Resource_List.walltime ({exc})")
    if limit is None and knob:
        limit, source = parse_walltime(knob), "WALLTIME"
    if limit is None:
        warnings.append(
            "PBS does not tell this job's walltime and WALLTIME is not set: an interactive "
            "cluster is held until PBS ends the job, with no time to shut down cleanly "
            "(set WALLTIME to the -l walltime you asked for, e.g. WALLTIME=01:00:00)")
        return Walltime(), warnings
    return Walltime(limit, max(0, int(limit - elapsed)), source), warnings


def read_job(environ: Mapping[str, str], qstat: Tuple[Optional[dict], str],
             walltime_knob: Optional[str] = None, started: Optional[float] = None,
             now: Optional[float] = None) -> Job:
    """The job from qstat's (attributes, source), $PBS_NODEFILE, $NCPUS and WALLTIME."""
    attrs, source = qstat
    lines = read_nodefile(environ.get("PBS_NODEFILE", ""))
    if not lines:
        raise KitError(f"$PBS_NODEFILE {environ.get('PBS_NODEFILE')!r} is empty: is this a PBS job?")
    chunks, how, warnings = job_chunks(lines, attrs, source, environ.get("NCPUS"))
    visible = environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if how == NODEFILE_SOURCE and visible:
        warnings.append(
            f"this node has GPUs (CUDA_VISIBLE_DEVICES={visible}) but the node file does not "
            "tell which chunks asked for ngpus: every chunk runs CPU workers")
    now = time.time() if now is None else now
    walltime, more = job_walltime(attrs, walltime_knob, now if started is None else started, now)
    return Job(chunks, how, walltime, warnings + more)


def load_job(environ: Mapping[str, str], walltime_knob: Optional[str] = None,
             started: Optional[float] = None, run: Optional[Callable] = None) -> Job:
    """The job this process runs in: qstat (see qstat_reader), node file, environment."""
    from . import qstat_reader

    return read_job(environ, qstat_reader.read_job(job_id(environ), run), walltime_knob, started)


def job_id(environ: Mapping[str, str]) -> str:
    jobid = environ.get("PBS_JOBID")
    if not jobid:
        raise KitError("PBS_JOBID is not set: this command runs inside a PBS job (submit with qsub)")
    return jobid
