"""kit.py wait-ready: wait until the job's scheduler is up and every expected worker has registered.

Reads the roll that the scheduler's plugin keeps (scripts/lib/scheduler_preload.py: one
registered worker name per line, replaced atomically), so it needs no Dask client and
starts in milliseconds. It watches the pbsdsh process of each task: a Dask process that
ends before the cluster is ready fails the wait at once, naming its role, chunk and node,
with what pbsdsh said and the end of the task's log, instead of waiting for the timeout.
"""
from __future__ import annotations

import os
import time
from collections import namedtuple  # loaded already (re needs it); typing is not
from collections.abc import Callable

from . import args
from .errors import NOT_READY, PROCESS_EXITED, USAGE, KitError

USAGE_TEXT = """usage: kit.py wait-ready --scheduler-file FILE --roll ROLL --timeout SECONDS
                        [--name-prefix PREFIX] --watch ROLE:CHUNK:NODE:PID:LOG:NPROCS [--watch ...]

Wait until FILE (the job's scheduler file) exists and ROLL (the scheduler's list of
registered workers, one name per line) holds every worker process that was launched:
NPROCS per `worker` watch, named PREFIXchunk-CHUNK (one process) or PREFIXchunk-CHUNK-K
(K = 0 .. NPROCS-1). CHUNK is the chunk's number, or N-gpuG for the worker of its GPU G.
PREFIX (default none) is a worker job's (job-SEQ-). PID is the pbsdsh that runs the task;
LOG is its Dask log and LOG.pbsdsh what pbsdsh itself printed.
exit status: 0 ready, 2 usage, 9 not ready within SECONDS, 10 a watched task ended first"""

OPTIONS = {"--scheduler-file": "value", "--roll": "value", "--timeout": "value"}
OPTIONAL = {"--name-prefix": "value"}
POLL = 0.01    # seconds between looks at the roll (a small file: the last worker is seen at once)
ALIVE_EVERY = 5  # looks between checks of the watched processes (one /proc read per task)
# A large job's roll is longer, sits on the shared file system (an open is a server round
# trip on NFS), and its start takes seconds anyway: look less often.
LARGE_JOB, LARGE_POLL = 64, 0.05  # watched tasks beyond which, and its seconds between looks
LOG_LINES = 8  # lines of a task's log quoted when it ends early


class Watch(namedtuple("Watch", "role chunk node pid log nprocs")):
    """One pbsdsh task: role (str: scheduler or worker), chunk (int, or str 'N-gpuG' for
    the worker of a chunk's GPU), node (str), pid (int), log (str: its Dask log) and nprocs
    (int: Dask processes it runs)."""

    __slots__ = ()

    def describe(self) -> str:
        return f"the {self.role} of chunk {self.chunk} (node {self.node})"


def parse_watch(spec: str) -> Watch:
    """A Watch from ROLE:CHUNK:NODE:PID:LOG:NPROCS (LOG may hold colons)."""
    parts = spec.split(":", 4)
    log, sep, nprocs = parts[-1].rpartition(":") if len(parts) == 5 else ("", "", "")
    chunk, _, gpu = parts[1].partition("-gpu") if len(parts) > 1 else ("", "", "")
    if not sep or not all(args.is_digits(p) for p in (chunk, parts[3], nprocs)) or not log or (
            parts[0] == "worker" and int(nprocs) < 1) or (_ and not args.is_digits(gpu)):
        raise KitError(f"--watch {spec!r} is not ROLE:CHUNK:NODE:PID:LOG:NPROCS (NPROCS at "
                       f"least 1 for a worker)\n{USAGE_TEXT}", USAGE)
    return Watch(parts[0], parts[1] if gpu else int(chunk), parts[2], int(parts[3]), log, int(nprocs))


def split_watches(argv: list) -> tuple:
    """([Watch ...], the other arguments): --watch repeats, which args.parse does not do."""
    watches: list = []
    rest: list = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--watch="):
            watches.append(parse_watch(arg[len("--watch="):]))
        elif arg == "--watch":
            if i + 1 == len(argv):
                raise KitError(f"option --watch needs a value\n{USAGE_TEXT}", USAGE)
            watches.append(parse_watch(argv[i + 1]))
            i += 1
        else:
            rest.append(arg)
        i += 1
    return watches, rest


def expected_names(watch: Watch, prefix: str = "") -> list:
    """The names `dask worker --name PREFIXchunk-I --nworkers N` gives its processes."""
    if watch.nprocs == 1:
        return [f"{prefix}chunk-{watch.chunk}"]
    return [f"{prefix}chunk-{watch.chunk}-{k}" for k in range(watch.nprocs)]


def connected(watches: list, names: list, prefix: str = "") -> dict:
    """{chunk: how many of its launched worker processes are on the roll}. Names that no
    worker watch launched (a worker of somebody else's) are not counted."""
    roll = set(names)
    return {w.chunk: sum(name in roll for name in expected_names(w, prefix))
            for w in watches if w.role == "worker"}


def missing(watches: list, names: list, prefix: str = "") -> list:
    """[(watch, connected processes)] for each worker chunk with fewer on the roll than launched."""
    counts = connected(watches, names, prefix)
    return [(w, counts[w.chunk]) for w in watches
            if w.role == "worker" and counts[w.chunk] < w.nprocs]


def gone(pid: int) -> bool:
    """True once pid has ended: no /proc/PID/stat, or a zombie that its parent has not reaped."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return True


def read_roll(path: str) -> list:
    """The names on the roll; none while the scheduler has not written it."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().split()
    except OSError:
        return []


def tail(path: str, lines: int = LOG_LINES) -> list | None:
    """The last lines of a file, without their newlines; None if it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return [line.rstrip("\n") for line in fh.readlines()[-lines:]]
    except OSError:
        return None


def exited_message(watch: Watch) -> str:
    """What to tell the user when a watched task has ended before the cluster was ready."""
    said = tail(watch.log + ".pbsdsh", 5)
    said_text = "; ".join(line.strip() for line in said if line.strip()) if said else ""
    log = tail(watch.log)
    text = f"{watch.describe()} exited before the cluster was ready; "
    text += f"pbsdsh said: {said_text}; " if said_text else "pbsdsh said nothing; "
    if log is None:
        return text + f"it wrote no log ({watch.log} is missing)"
    if not any(line.strip() for line in log):
        return text + f"its log {watch.log} is empty"
    return text + f"its log {watch.log} ends with:\n" + "\n".join(log)


def check_alive(watches: list, is_gone: Callable = gone) -> None:
    """Raise PROCESS_EXITED for the first watched task that has ended."""
    for watch in watches:
        if is_gone(watch.pid):
            raise KitError(exited_message(watch), PROCESS_EXITED)


def timeout_message(watches: list, names: list, timeout: float, have_file: bool,
                    prefix: str = "") -> str:
    """Why the cluster is not ready: no scheduler file, or which chunks lack processes."""
    if not have_file:
        sched = [w.log for w in watches if w.role == "scheduler"]
        where = sched[0] if sched else "the scheduler's log"
        return (f"no scheduler file after {timeout:g} s (see {where}); raise READY_TIMEOUT "
                "if the nodes are slow to start Python")
    expected = sum(w.nprocs for w in watches if w.role == "worker")
    counts = connected(watches, names, prefix)
    lines = [f"only {sum(counts.values())} of {expected} worker{'s' if expected != 1 else ''} "
             f"connected after {timeout:g} s"]
    for watch, have in missing(watches, names, prefix):
        noun = "process" if watch.nprocs == 1 else "processes"
        lines.append(f"dask-pbs:   missing: {watch.nprocs - have} of {watch.nprocs} worker "
                     f"{noun} of chunk {watch.chunk} (node {watch.node}), log {watch.log}")
    return "\n".join(lines)


def wait_ready(scheduler_file: str, roll: str, timeout: float, watches: list,
               clock: Callable = time.monotonic, sleep: Callable = time.sleep,
               is_gone: Callable = gone, prefix: str = "") -> None:
    """Return once the scheduler file exists and every launched worker process is on the
    roll; raise PROCESS_EXITED as soon as a watched task ends first, NOT_READY at timeout."""
    deadline = clock() + timeout
    looks = 0
    poll, alive_every = (POLL, ALIVE_EVERY) if len(watches) <= LARGE_JOB else (LARGE_POLL, 1)
    while True:
        if looks % alive_every == 0:
            check_alive(watches, is_gone)
        looks += 1
        names = read_roll(roll)
        # The scheduler writes its file when it listens; workers register after that.
        have_file = os.path.exists(scheduler_file)
        if have_file and not missing(watches, names, prefix):
            return
        if clock() >= deadline:
            raise KitError(timeout_message(watches, names, timeout, have_file, prefix), NOT_READY)
        sleep(poll)


def cli(argv: list) -> None:
    """kit.py wait-ready: parse, wait, print nothing on success."""
    watches, rest = split_watches(argv)
    opts, operands = args.parse(rest, {**OPTIONS, **OPTIONAL}, USAGE_TEXT)
    absent = [name for name in OPTIONS if name not in opts]
    if absent or operands:
        what = f"missing {', '.join(absent)}" if absent else f"unexpected {operands[0]!r}"
        raise KitError(f"{what}\n{USAGE_TEXT}", USAGE)
    if not any(w.role == "worker" for w in watches):
        raise KitError(f"no worker --watch: nothing to wait for\n{USAGE_TEXT}", USAGE)
    timeout = args.number(opts["--timeout"], "--timeout")
    wait_ready(opts["--scheduler-file"], opts["--roll"], timeout, watches,
               prefix=opts.get("--name-prefix", ""))
